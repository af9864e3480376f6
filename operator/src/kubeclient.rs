//! The Kubernetes API clients of `run --source kube`, each with bounds on every call (issue
//! 13): an API server that accepts a connection and never answers must fail the call, never
//! hang a pass, a mint or a Lease renewal.
//!
//! Two clients over one configuration: calls (every GET, LIST, create, patch, delete; a pass,
//! the control API, the Lease) have connect, read and write timeouts; watches keep only the
//! connect and write timeouts, since a quiet watch reads nothing for minutes and kube's
//! watcher has its own idle timeout. The Lease's calls are also cut off by
//! [`crate::lease`] at one renewal period.

use std::time::Duration;

/// Time to open a connection to the API server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence of the API server while a call's answer is awaited (between reads; a
/// large list that keeps arriving is not cut off).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a request.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// `config` bounded for calls: connect, read and write timeouts.
pub fn for_calls(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.write_timeout = Some(WRITE_TIMEOUT);
    config
}

/// `config` bounded for watches: connect and write timeouts; reads are left to the watcher's
/// idle timeout.
pub fn for_watches(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = None;
    config.write_timeout = Some(WRITE_TIMEOUT);
    config
}
