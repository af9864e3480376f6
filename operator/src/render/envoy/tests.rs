//! The Envoy resources, checked field by field: TLS identity, listener bounds, local replies.

use super::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

fn tls_cluster(hostname: &str, address: &str) -> Cluster {
    Cluster {
        name: "store_s".into(),
        address: address.into(),
        port: 443,
        hostname: hostname.into(),
        tls: true,
        trusted_ca: None,
        label: store_label("s"),
    }
}

fn validation_context(c: &Cluster) -> Value {
    cluster(c)["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
        .clone()
}

#[test]
fn a_dns_endpoint_requires_its_name_as_a_dns_san_and_sends_it_as_sni() {
    let c = tls_cluster(
        "gcp-us-central1.turbopuffer.com",
        "gcp-us-central1.turbopuffer.com",
    );
    let v = validation_context(&c);
    assert_eq!(
        v["match_typed_subject_alt_names"],
        json!([{"san_type": "DNS", "matcher": {"exact": "gcp-us-central1.turbopuffer.com"}}])
    );
    assert_eq!(v["trusted_ca"]["filename"], SYSTEM_CA_BUNDLE);
    assert_eq!(
        cluster(&c)["transport_socket"]["typed_config"]["sni"],
        "gcp-us-central1.turbopuffer.com"
    );
    assert_eq!(
        cluster(&c)["metadata"]["filter_metadata"]["layergate"]["upstream"],
        r#"store "s""#
    );
}

#[test]
fn an_ip_endpoint_requires_its_address_as_an_ip_san_and_sends_no_sni() {
    for (hostname, address, ip) in [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1", "::1"),
    ] {
        let c = tls_cluster(hostname, address);
        assert_eq!(
            validation_context(&c)["match_typed_subject_alt_names"],
            json!([{"san_type": "IP_ADDRESS", "matcher": {"exact": ip}}])
        );
        assert!(cluster(&c)["transport_socket"]["typed_config"]
            .get("sni")
            .is_none());
    }
}

#[test]
fn a_trusted_ca_override_replaces_the_system_bundle_and_plain_http_has_no_tls() {
    let mut c = tls_cluster("store.test", "127.0.0.1");
    c.trusted_ca = Some("/tmp/ca.pem".into());
    assert_eq!(
        validation_context(&c)["trusted_ca"]["filename"],
        "/tmp/ca.pem"
    );
    c.tls = false;
    assert!(cluster(&c).get("transport_socket").is_none());
}

#[test]
fn the_listener_is_bounded_and_every_bootstrap_carries_the_overload_manager() {
    let l = listener(&Listener {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        build: FilterBuild::Wasm,
        filter_path: "f.wasm".into(),
        filter_config: None,
        vm_env: Vec::new(),
        buffer_limit_bytes: DEFAULT_BUFFER_LIMIT_BYTES,
        access_log_path: None,
    });
    assert_eq!(
        l["per_connection_buffer_limit_bytes"],
        limits::CONNECTION_BUFFER_BYTES
    );
    let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
    for (k, v) in [
        (
            "request_headers_timeout",
            json!(limits::REQUEST_HEADERS_TIMEOUT),
        ),
        ("request_timeout", json!(limits::REQUEST_TIMEOUT)),
        ("stream_idle_timeout", json!("75s")),
        (
            "max_request_headers_kb",
            json!(limits::MAX_REQUEST_HEADERS_KB),
        ),
    ] {
        assert_eq!(hcm[k], v, "{k}");
    }
    let h2 = &hcm["http2_protocol_options"];
    assert_eq!(
        h2["max_concurrent_streams"],
        limits::H2_MAX_CONCURRENT_STREAMS
    );
    assert_eq!(
        h2["initial_stream_window_size"],
        limits::H2_STREAM_WINDOW_BYTES
    );
    // Only the buffer filter (enabled on the inspection route only) buffers more.
    let buffer = hcm["http_filters"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "envoy.filters.http.buffer"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        buffer["typed_config"]["max_request_bytes"],
        DEFAULT_BUFFER_LIMIT_BYTES
    );
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], 9901));
    for bootstrap in [
        static_bootstrap(
            admin_addr,
            &Listener {
                filter_config: None,
                ..l_spec()
            },
            &[],
        ),
        dynamic_bootstrap(admin_addr, Path::new("/etc/layergate/config")),
    ] {
        let v: Value = serde_yaml::from_str(&bootstrap).unwrap_or_default();
        let om = &v["overload_manager"];
        let monitors: Vec<&str> = om["resource_monitors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str())
            .collect();
        assert_eq!(
            monitors,
            [
                "envoy.resource_monitors.fixed_heap",
                "envoy.resource_monitors.global_downstream_max_connections"
            ]
        );
        assert_eq!(om["actions"].as_array().map(Vec::len), Some(3));
    }
}

fn l_spec() -> Listener {
    Listener {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        build: FilterBuild::Wasm,
        filter_path: "f.wasm".into(),
        filter_config: None,
        vm_env: Vec::new(),
        buffer_limit_bytes: DEFAULT_BUFFER_LIMIT_BYTES,
        access_log_path: None,
    }
}

#[test]
fn only_envoys_upstream_failure_replies_are_rewritten_to_json() {
    let l = listener(&Listener {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        build: FilterBuild::Wasm,
        filter_path: "f.wasm".into(),
        filter_config: None,
        vm_env: Vec::new(),
        buffer_limit_bytes: DEFAULT_BUFFER_LIMIT_BYTES,
        access_log_path: None,
    });
    let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
    let mappers = hcm["local_reply_config"]["mappers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Upstream failures (4), then Envoy's own client-side timers: stream idle (SI) and
    // request timeouts (408, which the filter never sends).
    assert_eq!(mappers.len(), 6);
    assert_eq!(
        mappers[4]["filter"],
        json!({"response_flag_filter": {"flags": ["SI"]}})
    );
    assert_eq!(
        mappers[5]["filter"]["status_code_filter"]["comparison"]["value"]["default_value"],
        408
    );
    assert_eq!(
        mappers[0]["filter"],
        json!({"response_flag_filter": {"flags": ["UF", "UH"]}})
    );
    assert_eq!(mappers[1]["status_code"], 504);
    // No top-level body format: the filter's own JSON replies stay as they are.
    assert!(hcm["local_reply_config"].get("body_format").is_none());
    let error = mappers[0]["body_format_override"]["json_format"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.starts_with("%CLUSTER_METADATA(layergate:upstream)%"),
        "{error}"
    );
}

#[test]
fn the_native_build_is_the_dynamic_module_filter_in_the_wasm_filters_place() {
    let render = |build: FilterBuild, path: &str| {
        listener(&Listener {
            build,
            filter_path: path.into(),
            filter_config: Some(r#"{"version":1}"#.into()),
            ..l_spec()
        })
    };
    let (wasm, native) = (
        render(FilterBuild::Wasm, "f.wasm"),
        render(FilterBuild::Native, "/opt/liblayergate_native.so"),
    );
    let hcm = |l: &Value| l["filter_chains"][0]["filters"][0]["typed_config"].clone();
    let filters = hcm(&native)["http_filters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let module = &filters[0]["typed_config"];
    assert_eq!(
        module["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
    );
    assert_eq!(
        module["dynamic_module_config"],
        json!({"module": {"local": {"filename": "/opt/liblayergate_native.so"}}, "do_not_close": true})
    );
    assert_eq!(module["filter_name"], "layergate");
    assert_eq!(
        module["filter_config"],
        json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": r#"{"version":1}"#})
    );
    // The rest of the chain and the routes are the wasm build's; the access log reads the
    // record from the build's own filter-state key.
    let wasm_filters = hcm(&wasm)["http_filters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(filters.len(), 3);
    assert_eq!(filters[1..], wasm_filters[1..]);
    assert_eq!(hcm(&native)["route_config"], hcm(&wasm)["route_config"]);
    let format = |l: &Value| {
        hcm(l)["access_log"][0]["typed_config"]["log_format"]["text_format_source"]["inline_string"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(format(&native).contains("%FILTER_STATE(layergate:PLAIN)%"));
    assert!(format(&wasm).contains("%FILTER_STATE(wasm.layergate:PLAIN)%"));
}

#[test]
fn the_audit_line_goes_to_stdout_and_to_the_file_when_one_is_set() {
    let mut l = l_spec();
    let loggers = |l: &Listener| {
        listener(l)["filter_chains"][0]["filters"][0]["typed_config"]["access_log"].clone()
    };
    assert_eq!(loggers(&l).as_array().map(Vec::len), Some(1));
    l.access_log_path = Some("/var/log/layergate/audit.log".into());
    let all = loggers(&l);
    assert_eq!(
        all[1]["typed_config"]["path"],
        "/var/log/layergate/audit.log"
    );
    assert_eq!(
        all[0]["typed_config"]["log_format"],
        all[1]["typed_config"]["log_format"]
    );
    assert_eq!(
        all[1]["typed_config"]["log_format"]["omit_empty_values"],
        true
    );
    // With the filter's fragment empty (a request it did not record), the line is one object.
    let template = audit_format("layergate");
    let empty = template
        .replace("%FILTER_STATE(layergate:PLAIN)%", "")
        .replace("%START_TIME%", "2026-01-01T00:00:00.000Z")
        .replace("%DOWNSTREAM_REMOTE_ADDRESS%", "127.0.0.1:5")
        .replace(['%'], "")
        .replace("RESPONSE_CODE", "200")
        .replace("BYTES_RECEIVED", "1")
        .replace("BYTES_SENT", "2")
        .replace("DURATION", "3");
    let v: Value = serde_json::from_str(empty.trim_end()).unwrap_or_default();
    assert_eq!(v["status"], 200, "{empty}");
}
