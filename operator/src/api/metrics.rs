//! `/metrics`: the operator's counters and gauges as Prometheus text.

use super::*;

pub(super) fn metrics(state: &State) -> hyper::Response<Full<Bytes>> {
    let pass = state.last();
    let active = pass.as_ref().map_or(0, |p| p.keys.len());
    let ready = pass.as_ref().map_or(0, |p| {
        p.validation
            .stores
            .iter()
            .filter(|s| s.valid.is_some())
            .count()
    });
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let seconds = |c: &std::sync::atomic::AtomicU64| get(c) as f64 / 1e6;
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        text.push_str(&format!(
            "# HELP layergate_operator_{name} {help}\n# TYPE layergate_operator_{name} {kind}\nlayergate_operator_{name} {value}\n"
        ));
    };
    metric(
        "renders_total",
        "counter",
        "Successful passes (reconciles) that published a rendering.",
        get(&state.renders).to_string(),
    );
    metric(
        "render_errors_total",
        "counter",
        "Passes that failed and kept the last good rendering.",
        get(&state.render_errors).to_string(),
    );
    metric(
        "render_seconds_total",
        "counter",
        "Time spent in successful passes.",
        seconds(&state.render_micros).to_string(),
    );
    metric(
        "probe_rounds_total",
        "counter",
        "Probe rounds (every valid store).",
        get(&state.probe_rounds).to_string(),
    );
    metric(
        "probe_round_seconds_total",
        "counter",
        "Time the probe rounds took.",
        seconds(&state.probe_micros).to_string(),
    );
    metric(
        "status_writes_total",
        "counter",
        "Status subresource writes (kube mode).",
        get(&state.status_writes).to_string(),
    );
    metric(
        "kube_api_errors_total",
        "counter",
        "Kubernetes API calls that failed (kube mode).",
        get(&state.api_errors).to_string(),
    );
    metric(
        "api_keys_active",
        "gauge",
        "API keys the key service serves (usable: valid, not revoked).",
        active.to_string(),
    );
    metric(
        "key_syncs_total",
        "counter",
        "Key service syncs answered (snapshots, deltas, long polls that ended).",
        get(&state.keys.answered).to_string(),
    );
    metric(
        "key_syncs_refused_total",
        "counter",
        "Key service calls refused: not the gateway credential.",
        get(&state.keys.refused).to_string(),
    );
    metric(
        "key_syncs_waiting",
        "gauge",
        "Long polls the key service holds now.",
        get(&state.keys.waiting).to_string(),
    );
    metric(
        "key_syncs_outdated_filter_total",
        "counter",
        "Key service syncs from a gateway whose filter reads an older configuration version than this operator renders (it refuses the rendering and keeps its previous one).",
        get(&state.keys.outdated).to_string(),
    );
    metric(
        "gateway_filter_outdated",
        "gauge",
        "1 when a gateway filter reported, in the last two minutes, a configuration version older than this operator renders.",
        u8::from(state.keys.outdated_reader(now()).is_some()).to_string(),
    );
    metric(
        "vectorstores_rendered",
        "gauge",
        "VectorStores in the rendering.",
        ready.to_string(),
    );
    let mut r = hyper::Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
