//! Kube mode's statuses and Events: each object's status written only when it changed, and a
//! Warning Event once per reason and message for what needs the user (a `Ready` the user must
//! fix, an ApiKey `ExpiringSoon`).

use super::*;
use kube::runtime::events::{Event, EventType};

/// The `action` of every Event the operator records: what it was doing when it found what
/// the user must fix.
const EVENT_ACTION: &str = "Reconcile";

/// The Events API's limit on a note, in bytes.
const NOTE_LIMIT: usize = 1024;

/// A condition's message as an Event's note: cut to [`NOTE_LIMIT`] bytes on a character
/// boundary, ending in `…` when cut.
fn note(message: &str) -> String {
    if message.len() <= NOTE_LIMIT {
        return message.to_owned();
    }
    format!("{}…", cut(message, NOTE_LIMIT - '…'.len_utf8()))
}

/// The longest start of `s` of at most `limit` bytes that ends on a character boundary.
pub(super) fn cut(s: &str, limit: usize) -> &str {
    let mut end = limit.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Cluster {
    /// Writes `new` as `obj`'s status unless `old` is it already: `None` when nothing was
    /// written, else what the cache holds after the write (`Some(None)` when the watch saw
    /// the object deleted meanwhile).
    async fn apply_status<K, S>(
        &self,
        obj: &K,
        new: &S,
        old: Option<&S>,
    ) -> Result<Option<Option<Arc<K::Kept>>>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Cached
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: Serialize + PartialEq,
    {
        if old == Some(new) {
            return Ok(None);
        }
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": new,
        });
        let name = obj.name_any();
        self.ensure_leader()?;
        let written = self
            .api::<K>()
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .with_context(|| format!("writing the status of {} {name}", K::kind(&())))?;
        // The next pass compares with this status, not the one before it.
        let cached = self.caches().merge(written);
        self.state.metrics.status_writes.inc();
        Ok(Some(cached))
    }

    /// Writes every status that changed; records an Event when an object's `Ready` turns to a
    /// reason the user must fix. Returns (statuses written, events recorded, the pass's
    /// `settled`). An ApiKey that is unchanged since the last pass, whose verdict was taken
    /// over and whose status that pass found as written, is not looked at. One object's
    /// refused write (an admission policy, a conflict) does not stop the others'; the first
    /// error is returned after all were tried, so the step is retried.
    pub async fn write_statuses(
        &self,
        pass: &Pass,
        earlier: Option<&Earlier<'_>>,
        probes: &BTreeMap<String, ProbeResult>,
    ) -> Result<(usize, usize, Vec<Option<Arc<ApiKey>>>)> {
        let at = now();
        let (mut written, mut events) = (0, 0);
        let mut first_error: Option<anyhow::Error> = None;
        // Counts a write; what the cache holds after it, if it was made.
        let mut tally = |r: Result<(usize, usize, _)>| match r {
            Ok((w, e, cached)) => {
                written += w;
                events += e;
                cached
            }
            Err(e) => {
                first_error.get_or_insert(e);
                None
            }
        };
        for o in &pass.objects.stores {
            let new = status::store(pass, probes.get(&o.name_any()), o, at);
            let r = self.status_and_event(&**o, &new, o.status.as_ref()).await;
            tally(r.map(|(w, e, _)| (w, e, None)));
        }
        for o in &pass.objects.indexes {
            let new = status::index(pass, o);
            let r = self.status_and_event(&**o, &new, o.status.as_ref()).await;
            tally(r.map(|(w, e, _)| (w, e, None)));
        }
        let mut settled = vec![None; pass.objects.keys.len()];
        // Verdicts are by key of the namespace (every cached key is).
        let mut verdict = 0;
        for (i, o) in pass.objects.keys.iter().enumerate() {
            if !validate::in_namespace(&o.metadata, &self.namespace) {
                continue;
            }
            let taken_over = pass.validation.taken_over.get(verdict) == Some(&true);
            verdict += 1;
            if taken_over && earlier.is_some_and(|e| e.settled(i, o).is_some()) {
                settled[i] = Some(Arc::clone(o));
                continue;
            }
            let new = status::key(pass, o, at);
            settled[i] = if o.status.as_ref() == Some(&new) {
                Some(Arc::clone(o))
            } else {
                tally(self.status_and_event(&**o, &new, o.status.as_ref()).await)
            };
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((written, events, settled)),
        }
    }

    /// One object's status (when changed) and its Event (when new): (written, recorded, the
    /// object whose status is now `new`: what the cache holds after a write).
    async fn status_and_event<K, S>(
        &self,
        obj: &K,
        new: &S,
        old: Option<&S>,
    ) -> Result<(usize, usize, Option<Arc<K::Kept>>)>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: Serialize + PartialEq + Conditioned,
        K: Cached,
    {
        let Some(cached) = self.apply_status(obj, new, old).await? else {
            return Ok((0, 0, None));
        };
        let events = self
            .event_if_new(obj, new.conditions(), old.map(Conditioned::conditions))
            .await?;
        Ok((1, events, cached))
    }

    /// Records a Warning Event for a condition that needs attention (`Ready` refused,
    /// `ExpiringSoon`: see `needs_attention`) and is new (a different reason or message than
    /// before), through the cluster's [`Recorder`]: an
    /// events.k8s.io/v1 Event, or, when the same reason on the same object was recorded in
    /// the last 6 minutes, that Event's `series` counted up (the API server keeps its note).
    ///
    /// [`Recorder`]: kube::runtime::events::Recorder
    async fn event_if_new<K>(
        &self,
        obj: &K,
        new: &[Condition],
        old: Option<&[Condition]>,
    ) -> Result<usize>
    where
        K: Resource<DynamicType = ()>,
    {
        let Some(c) = new.iter().find(|c| needs_attention(c)) else {
            return Ok(0);
        };
        let seen = old
            .unwrap_or_default()
            .iter()
            .any(|o| o.type_ == c.type_ && o.reason == c.reason && o.message == c.message);
        if seen {
            return Ok(0);
        }
        // The object (kind, name, namespace, uid; no resourceVersion, which every status write
        // moves): what the Recorder counts repeats by, with the reason.
        let mut regarding = obj.object_ref(&());
        regarding
            .namespace
            .get_or_insert_with(|| self.namespace.clone());
        let event = Event {
            type_: EventType::Warning,
            reason: c.reason.clone(),
            note: Some(note(&c.message)),
            action: EVENT_ACTION.into(),
            secondary: None,
        };
        self.ensure_leader()?;
        self.recorder
            .publish(&event, &regarding)
            .await
            .context("recording an Event")?;
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::{cut, note, NOTE_LIMIT};

    #[test]
    fn a_note_is_the_message_cut_to_the_events_limit_on_a_character_boundary() {
        assert_eq!(note("short"), "short");
        let exact = "x".repeat(NOTE_LIMIT);
        assert_eq!(note(&exact), exact);
        // Three-byte characters: the cut falls inside one unless it is moved back.
        let long = "€".repeat(NOTE_LIMIT);
        let n = note(&long);
        assert!(n.len() <= NOTE_LIMIT, "{}", n.len());
        assert!(n.ends_with('…'));
        assert!(n.trim_end_matches('…').chars().all(|c| c == '€'));
        assert_eq!(n.len(), NOTE_LIMIT - 1, "as much of the message as fits");
        assert_eq!(cut("ab€", 4), "ab");
        assert_eq!(cut("ab€", 5), "ab€");
        assert_eq!(cut("ab", 128), "ab");
    }
}
