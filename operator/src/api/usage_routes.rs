//! The usage routes (issue 24): `POST /v2/keys/usage`, where gateways report what they counted
//! per key (the gateway credential, like the sync; only the replica that writes takes them),
//! and `GET /v2/keys/{id}/usage`, a key's usage for whoever may see the key.

use super::*;
use crate::crd::ApiKey;
use crate::usage::{report, Counts, Stored};

/// Body cap of a usage report: 2,000 keys (what a filter sends at most) of long names and
/// every count, with room to spare.
pub const USAGE_BODY_BYTES: usize = 1024 * 1024;

/// What a key's status says the gateways saw of it.
pub(super) fn stored(k: &ApiKey) -> Stored {
    let observed = k.status.as_ref().map(|s| &s.observed);
    Stored {
        last_seen: observed
            .and_then(|o| o.last_seen_at.as_deref())
            .and_then(layergate_filter::time::parse_rfc3339),
        total: observed
            .and_then(|o| o.usage.as_ref())
            .map(Counts::from_status)
            .unwrap_or_default(),
    }
}

impl Api {
    /// `POST /v2/keys/usage` from a caller presenting `bearer`, its body read.
    pub(super) fn take_usage(&self, bearer: Option<&str>, body: &[u8]) -> Reply {
        let state = self.source.state();
        if !state.keys.accepts(bearer) {
            return error(
                StatusCode::UNAUTHORIZED,
                "usage reports are taken only from gateways (the gateway credential)",
            );
        }
        if !self.source.writable() {
            // The leader adds reports up (and writes them); the gateway keeps its counts and
            // reports again, reaching the leader within a few tries.
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this operator replica does not hold the lease and does not take usage reports; retry",
            );
            r.retry_after = Some(RETRY_AFTER_SECS);
            return r;
        }
        let Some(pass) = state.last() else {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no configuration rendered yet",
            );
            r.retry_after = Some(RETRY_AFTER_SECS);
            return r;
        };
        let report = match report::read(body) {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!("a gateway's usage report was refused: {why}");
                return error(StatusCode::BAD_REQUEST, &why);
            }
        };
        if report.clamped > 0 {
            tracing::warn!(
                counts = report.clamped,
                "a gateway's usage report had counts over {} per report; they were cut to it",
                report::MAX_COUNT
            );
        }
        let index = pass.index();
        let taken = state.usage.take(&report, now(), |name| {
            let key = index.usable(&pass, name)?;
            let object = index.named(&pass, name);
            Some(crate::usage::Resolved {
                key_id: key.key_id.clone(),
                stored: object.map(stored).unwrap_or_default(),
                quotas: key
                    .limits
                    .as_ref()
                    .map(|l| l.quotas.clone())
                    .unwrap_or_default(),
            })
        });
        // A spent quota travels to every gateway like a revocation: the key is served with
        // `quotaSpentUntil` until its period ends.
        for spent in &taken.spent {
            if let Some(key) = index.usable(&pass, &spent.name) {
                tracing::info!(key = %spent.name, until = %crate::validate::rfc3339(spent.until), "a key spent its quota: refused until its period ends");
                state.quota_spent(key, spent.until);
                if let Err(e) = self.source.mark_quota_spent(&spent.name, spent.until) {
                    tracing::warn!(key = %spent.name, "recording a spent quota on the key: {e:#}");
                }
            }
        }
        if !taken.unknown.is_empty() {
            tracing::debug!(
                keys = ?taken.unknown,
                "a usage report named keys the key service does not serve (revoked, deleted or unknown): ignored"
            );
        }
        reply(
            StatusCode::OK,
            &json!({"keys": taken.keys, "unknown": taken.unknown.len()}),
        )
    }
}

/// `GET /v2/keys/{id}/usage`: the key `id` names (name or key id), if `caller` may see it.
pub(super) fn key_usage(
    pass: &Pass,
    book: &crate::usage::UsageBook,
    caller: &Caller,
    id: &str,
) -> Reply {
    let Some(view) = key_routes::find_key(pass, caller, id) else {
        return error(StatusCode::NOT_FOUND, &format!("no API key {id:?}"));
    };
    let name = view["name"].as_str().unwrap_or_default();
    let key_id = view["keyId"].as_str().unwrap_or_default();
    let stored = pass
        .index()
        .named(pass, name)
        .map(stored)
        .unwrap_or_default();
    let mut usage = book.view(key_id, &stored, now());
    usage["keyId"] = json!(key_id);
    usage["name"] = json!(name);
    reply(StatusCode::OK, &usage)
}

/// `lastSeenAt` of a key view: what this replica's book says, when it has seen the key since
/// it started, else what the key's status says.
pub(super) fn with_last_seen(book: &crate::usage::UsageBook, mut view: Value) -> Value {
    if let Some(at) = view["keyId"].as_str().and_then(|id| book.last_seen(id)) {
        view["lastSeenAt"] = json!(crate::validate::rfc3339(at));
    }
    view
}
