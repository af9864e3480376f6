//! A pass's step timings, read from its `tracing` spans (target `layergate_operator::step`):
//! a layer that keeps each step span's name and time from creation to close.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The steps closed since the last [`Steps::take`], in the order they closed.
#[derive(Clone, Default)]
pub struct Steps(Arc<Mutex<Vec<(&'static str, Duration)>>>);

impl Steps {
    /// The steps recorded since the last call.
    pub fn take(&self) -> Vec<(&'static str, Duration)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Steps {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() == layergate_operator::pass::STEP {
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(Instant::now());
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(opened) = span.extensions().get::<Instant>().copied() else {
            return;
        };
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((span.metadata().name(), opened.elapsed()));
    }
}

/// The process's step recorder, installed as the global subscriber on first use (every
/// thread's passes report to it: run a measuring test alone).
pub fn steps() -> Steps {
    static STEPS: OnceLock<Steps> = OnceLock::new();
    STEPS
        .get_or_init(|| {
            let steps = Steps::default();
            let subscriber = tracing_subscriber::registry().with(steps.clone());
            let _ = tracing::subscriber::set_global_default(subscriber);
            steps
        })
        .clone()
}
