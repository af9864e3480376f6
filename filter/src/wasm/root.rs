//! A root context: one per configuration Envoy holds. It compiles its configuration (or
//! refuses it, keeping the previous one in force), flushes the VM's counters to Envoy stats,
//! and publishes the stale gauge as the worst of the process's VMs. Its key-service client is
//! `sync`'s.

use super::{COUNTS, REJECTED, STALE_GAUGE};
use crate::abi::{self, now, BufferType, LogLevel, MetricType};
use crate::config::{FilterConfig, CONFIG_VERSION};
use crate::keysync::KeySync;
use crate::outcome::COUNTERS;
use crate::policy::{ConfigError, Policy};
use std::rc::Rc;

// ---- the stale gauge: the worst VM of the process ----------------------------------------

thread_local! {
    /// This VM's id among the process's VMs (random; see [`crate::staleness`]).
    static VM_ID: String = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        format!("{:016x}", h.finish())
    };
}

/// Publishes this VM's staleness `own` and returns the worst of every live VM's (SPEC §6: the
/// gauge must not read 0 while a worker's table is stale). Falls back to `own` when the host
/// has no shared data.
fn worst_stale(now: i64, own: u64) -> u64 {
    use crate::staleness::{self, ENTRY_PREFIX, REGISTRY_KEY};
    VM_ID.with(|id| {
        let key = format!("{ENTRY_PREFIX}{id}");
        if !abi::set_shared_data(&key, staleness::entry(now, own).as_bytes(), 0) {
            return own;
        }
        let (registry, cas) = abi::get_shared_data(REGISTRY_KEY).unwrap_or_default();
        // Every other VM's entry, read once for both uses below.
        let entries: Vec<(&str, Option<(i64, u64)>)> = staleness::ids(&registry)
            .filter(|vm| vm != id)
            .map(|vm| {
                let entry = abi::get_shared_data(&format!("{ENTRY_PREFIX}{vm}"))
                    .and_then(|(v, _)| staleness::parse_entry(&v));
                (vm, entry)
            })
            .collect();
        // Put this VM in the registry (and forget dead ones); a lost race is retried next tick.
        let heartbeat = |vm: &str| {
            entries
                .iter()
                .find(|(other, _)| *other == vm)
                .and_then(|(_, e)| e.map(|(hb, _)| hb))
        };
        if let Some(updated) = staleness::registry_with(&registry, id, now, heartbeat) {
            abi::set_shared_data(REGISTRY_KEY, updated.as_bytes(), cas);
        }
        staleness::worst(now, own, entries.iter().filter_map(|(_, e)| *e))
    })
}

/// A root context: its compiled configuration (none until one is accepted), the Envoy
/// metrics it flushes to, and its key-service client.
#[derive(Default)]
pub(super) struct Root {
    pub(super) policy: Option<Rc<Policy>>,
    metric_ids: Vec<u32>,
    stale_gauge: Option<u32>,
    pub(super) sync: KeySync,
}

impl Root {
    pub(super) fn configure(&mut self) -> bool {
        let Some(bytes) = abi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) else {
            abi::log(
                LogLevel::Critical,
                "layergate: no plugin configuration; refusing to start",
            );
            return false;
        };
        // Parse, then free the document before compiling: linear memory never shrinks, so
        // the peak (document + parsed + compiled) is what every copy of the VM keeps.
        let parsed = FilterConfig::from_json(&bytes).map_err(ConfigError::from);
        drop(bytes);
        let policy = match parsed
            .and_then(|cfg| Policy::compile(&cfg, |var| std::env::var(var).ok()))
        {
            Ok(policy) => policy,
            Err(e) => {
                abi::log(
                        LogLevel::Critical,
                        &format!(
                            "layergate: configuration refused: {e}; this filter reads configuration version {CONFIG_VERSION} (filter {}); the previous configuration stays in force — upgrade the gateway's filter to the operator's",
                            env!("CARGO_PKG_VERSION")
                        ),
                    );
                if let Some(id) = abi::define_metric(MetricType::Counter, REJECTED) {
                    abi::increment_metric(id, 1);
                }
                return false;
            }
        };
        for s in &policy.stores {
            if let Err(var) = &s.bearer {
                abi::log(
                    LogLevel::Error,
                    &format!("layergate: store {:?}: environment variable {var} is not set; its requests get 503", s.name),
                );
            }
        }
        abi::log(LogLevel::Info, &crate::outcome::configured(&policy));
        self.policy = Some(Rc::new(policy));
        if self.metric_ids.is_empty() {
            self.metric_ids = COUNTERS
                .iter()
                .filter_map(|name| abi::define_metric(MetricType::Counter, name))
                .collect();
            self.stale_gauge = abi::define_metric(MetricType::Gauge, STALE_GAUGE);
        }
        abi::set_tick_period(std::time::Duration::from_secs(1));
        self.sync = KeySync::configured_at(now());
        true
    }

    pub(super) fn flush(&self) {
        if let (Some(policy), Some(gauge)) = (&self.policy, self.stale_gauge) {
            let now = now();
            if let Some(own) = self.sync.stale_seconds(policy, now) {
                abi::record_metric(gauge, worst_stale(now, own));
            }
        }
        COUNTS.with(|p| {
            for (cell, id) in p.iter().zip(&self.metric_ids) {
                let n = cell.replace(0);
                if n > 0 {
                    abi::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        });
    }
}
