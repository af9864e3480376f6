//! The operator's metrics, with `prometheus-client`: the counters each part of the operator
//! increments where the event happens ([`Metrics`], held in [`crate::state::State`]; the key
//! service keeps its own in [`crate::keyservice::KeyService`]), and [`exposition`], what
//! `GET /metrics` answers (OpenMetrics text). Per-key figures never become labels here: one
//! series per key would be 100,000 series.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// A counter of seconds.
pub type Seconds = Counter<f64, AtomicU64>;

/// The Prometheus content type of [`exposition`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The passes', probes' and Kubernetes API's counters of one running operator.
#[derive(Default, Debug)]
pub struct Metrics {
    /// Successful passes.
    pub renders: Counter,
    /// Failed passes (the last good rendering stayed).
    pub render_errors: Counter,
    /// Time spent in successful passes.
    pub render_seconds: Seconds,
    /// Probe rounds made (every valid store, at most 4 at once).
    pub probe_rounds: Counter,
    /// Time the probe rounds took.
    pub probe_round_seconds: Seconds,
    /// Status writes made (kube mode).
    pub status_writes: Counter,
    /// Usage status writes made (kube mode: `lastSeenAt` and `usage`).
    pub usage_writes: Counter,
    /// Calls to the Kubernetes API that failed (kube mode).
    pub kube_api_errors: Counter,
}

impl Metrics {
    /// Counts a successful pass that took `took`.
    pub fn rendered(&self, took: Duration) {
        self.renders.inc();
        self.render_seconds.inc_by(took.as_secs_f64());
    }

    /// Counts a probe round that took `took`.
    pub fn probed(&self, took: Duration) {
        self.probe_rounds.inc();
        self.probe_round_seconds.inc_by(took.as_secs_f64());
    }
}

/// What is read at scrape time rather than counted: the last pass's figures and the key
/// service's view of the gateways.
#[derive(Debug, Clone, Copy, Default)]
pub struct Now {
    /// API keys the key service serves (usable: valid, not revoked).
    pub api_keys_active: i64,
    /// VectorStores in the rendering.
    pub vectorstores_rendered: i64,
    /// Whether a gateway filter reported, in the last two minutes, a configuration version
    /// older than this operator renders.
    pub gateway_filter_outdated: bool,
}

/// The key service's counters (see [`crate::keyservice::KeyService`]).
#[derive(Debug)]
pub struct KeySyncs<'a> {
    /// Syncs answered.
    pub answered: &'a Counter,
    /// Syncs refused: not the gateway credential.
    pub refused: &'a Counter,
    /// Long polls held now.
    pub waiting: &'a Gauge,
    /// Syncs from a gateway whose filter is older than this operator's rendering.
    pub outdated: &'a Counter,
    /// The gateways' usage reports.
    pub usage: &'a crate::usage::UsageBook,
}

/// `GET /metrics`: every metric as OpenMetrics text (`layergate_operator_*`).
pub fn exposition(m: &Metrics, keys: KeySyncs<'_>, now: Now) -> String {
    let mut r = Registry::with_prefix("layergate_operator");
    r.register(
        "renders",
        "Successful passes (reconciles) that published a rendering",
        m.renders.clone(),
    );
    r.register(
        "render_errors",
        "Passes that failed and kept the last good rendering",
        m.render_errors.clone(),
    );
    r.register_with_unit(
        "render",
        "Time spent in successful passes",
        Unit::Seconds,
        m.render_seconds.clone(),
    );
    r.register(
        "probe_rounds",
        "Probe rounds (every valid store)",
        m.probe_rounds.clone(),
    );
    r.register_with_unit(
        "probe_round",
        "Time the probe rounds took",
        Unit::Seconds,
        m.probe_round_seconds.clone(),
    );
    r.register(
        "status_writes",
        "Status subresource writes (kube mode)",
        m.status_writes.clone(),
    );
    r.register(
        "usage_writes",
        "Usage status writes (lastSeenAt, usage; kube mode, at most --usage-writes-per-second)",
        m.usage_writes.clone(),
    );
    r.register(
        "usage_reports",
        "Usage reports taken from gateways",
        keys.usage.reports.clone(),
    );
    r.register(
        "usage_unknown_keys",
        "Keys named in usage reports that the key service does not serve (ignored)",
        keys.usage.unknown_keys.clone(),
    );
    r.register(
        "usage_clamped_counts",
        "Counts in usage reports over the most one report may say (cut to it)",
        keys.usage.clamped.clone(),
    );
    r.register(
        "usage_dropped_requests",
        "Requests gateways could not attribute to a key (their tally was full)",
        keys.usage.dropped.clone(),
    );
    r.register(
        "kube_api_errors",
        "Kubernetes API calls that failed (kube mode)",
        m.kube_api_errors.clone(),
    );
    r.register(
        "key_syncs",
        "Key service syncs answered (snapshots, deltas, long polls that ended)",
        keys.answered.clone(),
    );
    r.register(
        "key_syncs_refused",
        "Key service calls refused: not the gateway credential",
        keys.refused.clone(),
    );
    r.register(
        "key_syncs_waiting",
        "Long polls the key service holds now",
        keys.waiting.clone(),
    );
    r.register(
        "key_syncs_outdated_filter",
        "Key service syncs from a gateway whose filter reads an older configuration version than this operator renders (it refuses the rendering and keeps its previous one)",
        keys.outdated.clone(),
    );
    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    r.register(
        "api_keys_active",
        "API keys the key service serves (usable: valid, not revoked)",
        gauge(now.api_keys_active),
    );
    r.register(
        "gateway_filter_outdated",
        "1 when a gateway filter reported, in the last two minutes, a configuration version older than this operator renders",
        gauge(i64::from(now.gateway_filter_outdated)),
    );
    r.register(
        "vectorstores_rendered",
        "VectorStores in the rendering",
        gauge(now.vectorstores_rendered),
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &r);
    text
}
