//! The key table's staleness as one gauge for the whole gateway process: the worst of its VMs.
//!
//! Every worker (and the main thread) runs its own VM with its own copy of the key table and its
//! own sync. A gauge every VM sets overwrites the others' (it could read 0 while a worker's table
//! was stale), so each VM publishes its own staleness in the host's shared data, under a key of
//! its own, with a heartbeat, and every VM records the **worst** of the entries that are alive.
//! A registry key lists the VMs; entries whose heartbeat stopped (a VM reloaded or gone) are
//! dropped from it by the next VM that updates it.
//!
//! ```text
//!  layergate.keys.vms          "a1b2…,c3d4…"        the registry (CAS-updated)
//!  layergate.keys.vm.<id>      "<heartbeat> <stale>" one VM's entry (Unix seconds, seconds)
//! ```
//!
//! Pure functions here; the host calls are in `wasm/root.rs`.

/// Shared-data key of the registry of VM ids.
pub const REGISTRY_KEY: &str = "layergate.keys.vms";

/// Prefix of a VM's entry key.
pub const ENTRY_PREFIX: &str = "layergate.keys.vm.";

/// An entry counts while its heartbeat is at most this old (VMs publish once a second).
pub const ALIVE_SECS: i64 = 5;

/// An entry is dropped from the registry once its heartbeat is this old.
pub const FORGET_SECS: i64 = 60;

/// Most VMs the registry lists (a bound whatever happens to heartbeats).
pub const MAX_VMS: usize = 1024;

/// A VM's entry value.
pub fn entry(heartbeat: i64, stale: u64) -> String {
    format!("{heartbeat} {stale}")
}

/// Parses an entry value: (heartbeat, stale seconds).
pub fn parse_entry(value: &[u8]) -> Option<(i64, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (heartbeat, stale) = text.split_once(' ')?;
    Some((heartbeat.parse().ok()?, stale.parse().ok()?))
}

/// The registry's VM ids.
pub fn ids(registry: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(registry)
        .unwrap_or_default()
        .split(',')
        .filter(|id| !id.is_empty())
}

/// The registry with `own` in it and every id whose entry is older than [`FORGET_SECS`] (or
/// missing, per `heartbeat_of`) left out; `None` when it is already so.
pub fn registry_with(
    registry: &[u8],
    own: &str,
    now: i64,
    heartbeat_of: impl Fn(&str) -> Option<i64>,
) -> Option<String> {
    let mut kept: Vec<&str> = Vec::new();
    let mut changed = false;
    for id in ids(registry) {
        let alive = id == own || heartbeat_of(id).is_some_and(|hb| now - hb < FORGET_SECS);
        if alive && !kept.contains(&id) && kept.len() < MAX_VMS {
            kept.push(id);
        } else {
            changed = true;
        }
    }
    if !kept.contains(&own) {
        if kept.len() == MAX_VMS {
            kept.remove(0);
        }
        kept.push(own);
        changed = true;
    }
    changed.then(|| kept.join(","))
}

/// The worst staleness among entries alive at `now`; `own` counts whatever its heartbeat.
pub fn worst(now: i64, own: u64, entries: impl Iterator<Item = (i64, u64)>) -> u64 {
    entries
        .filter(|(heartbeat, _)| now - heartbeat <= ALIVE_SECS)
        .map(|(_, stale)| stale)
        .fold(own, u64::max)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_is_the_worst_live_vm() {
        let now = 1_000;
        let entries = [(now, 0), (now - 1, 42), (now - 30, 900)];
        assert_eq!(
            worst(now, 0, entries.into_iter()),
            42,
            "a dead VM's entry does not count"
        );
        assert_eq!(worst(now, 50, entries.into_iter()), 50);
        assert_eq!(worst(now, 0, std::iter::empty()), 0);
    }

    #[test]
    fn the_registry_adds_its_own_id_and_forgets_dead_ones() {
        let now = 1_000;
        let hb = |id: &str| match id {
            "a" => Some(now - 1),
            "dead" => Some(now - FORGET_SECS),
            _ => None,
        };
        assert_eq!(registry_with(b"", "me", now, hb).as_deref(), Some("me"));
        assert_eq!(
            registry_with(b"a,dead,gone", "me", now, hb).as_deref(),
            Some("a,me")
        );
        assert_eq!(registry_with(b"a,me", "me", now, hb), None, "unchanged");
        assert_eq!(
            registry_with(b"a,a,me", "me", now, hb).as_deref(),
            Some("a,me")
        );
    }

    #[test]
    fn the_registry_stays_bounded() {
        let full: String = (0..MAX_VMS).map(|i| format!("v{i},")).collect();
        let r = registry_with(full.as_bytes(), "me", 0, |_| Some(0)).unwrap();
        assert_eq!(ids(r.as_bytes()).count(), MAX_VMS);
        assert!(ids(r.as_bytes()).any(|id| id == "me"));
    }

    #[test]
    fn entries_round_trip_and_garbage_is_none() {
        assert_eq!(parse_entry(entry(17, 3).as_bytes()), Some((17, 3)));
        for bad in [&b""[..], b"17", b"x 3", b"17 -1", b"\xff"] {
            assert_eq!(parse_entry(bad), None);
        }
    }
}
