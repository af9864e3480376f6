//! `/metrics`: the operator's metrics ([`crate::metrics`]) as OpenMetrics text.

use super::*;
use crate::metrics::{exposition, KeySyncs, Now, CONTENT_TYPE};

pub(super) fn metrics(state: &State) -> axum::response::Response {
    let pass = state.last();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let now = Now {
        api_keys_active: pass.as_ref().map_or(0, |p| count(p.keys.len())),
        vectorstores_rendered: pass.as_ref().map_or(0, |p| {
            count(
                p.validation
                    .stores
                    .iter()
                    .filter(|s| s.valid.is_some())
                    .count(),
            )
        }),
        gateway_filter_outdated: state.keys.outdated_reader(super::now()).is_some(),
    };
    let keys = KeySyncs {
        answered: &state.keys.answered,
        refused: &state.keys.refused,
        waiting: &state.keys.waiting,
        outdated: &state.keys.outdated,
        usage: &state.usage,
    };
    axum::response::IntoResponse::into_response((
        [(hyper::header::CONTENT_TYPE, CONTENT_TYPE)],
        exposition(&state.metrics, keys, now),
    ))
}
