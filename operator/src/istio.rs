//! The Istio target (`render --target istio`): the same validation and filter configuration
//! as the Envoy target, delivered the Istio way to an ingress gateway — by default a
//! **dedicated** one (`istio=layergate-ingressgateway` in namespace `layergate-ingress`), so
//! that no other team's traffic passes the filter and its credentials live in a namespace of
//! their own:
//!
//! - a `WasmPlugin` (phase AUTHN, `failStrategy: FAIL_RELOAD`, see [`FailStrategy`]) carrying
//!   the filter configuration
//!   as `pluginConfig`, with store credentials as `{env: LAYERGATE_CREDENTIAL_<STORE>}` read
//!   from the proxy's environment (`vmConfig.env`, `valueFrom: HOST`): credentials never
//!   appear in an Istio resource. It applies only to the gateway listener on the layergate
//!   port (`match[].ports`), and the filter acts only for the `Gateway`'s hosts
//!   (`pluginConfig.hosts`, unless they are `*`): on a shared gateway, other hosts' requests
//!   pass untouched and never receive a credential;
//! - per store, a `ServiceEntry` (MESH_EXTERNAL, DNS) and a `DestinationRule` (TLS origination
//!   with SNI, the certificate checked for the store's host in `subjectAltNames`, connection
//!   limits);
//! - a `Gateway` (the layergate port, the configured hosts) and a `VirtualService` routing on
//!   the filter's `x-layergate-cluster` header (one route per store, plus the control API),
//!   rewriting `:authority` to the store's host;
//! - an `EnvoyFilter` adding Envoy's buffer filter after the wasm filter on the layergate
//!   port's listener only, disabled on every route of this `Gateway` but the body-inspection
//!   ones (`x-layergate-inspect: 1`), as in the Envoy target;
//! - separately, a strategic-merge patch for the ingress gateway Deployment that puts each
//!   credential into the proxy's environment from its Secret.

use crate::envoy::DEFAULT_BUFFER_LIMIT_BYTES;
use crate::render::{self, credential_env, store_cluster, RenderOptions};
use crate::validate::Validation;
use anyhow::Result;
use layergate_filter::config::{Credential, KeyServiceConfig};
use layergate_filter::decision::{CLUSTER_HEADER, INSPECT_HEADER};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// What the proxy does when the filter's VM fails (a panic, a trap): the `WasmPlugin`'s
/// `failStrategy`. Requests never bypass the filter under either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailStrategy {
    /// `FAIL_RELOAD` (the default; Istio 1.27 and later): the failing request gets a 503 and
    /// the VM is reloaded for the next one — the policy the Envoy target uses.
    #[default]
    Reload,
    /// `FAIL_CLOSE`, only for meshes older than Istio 1.27, which do not accept `FAIL_RELOAD`.
    /// Consequence: after one panic the VM stays failed, and every request on that worker is
    /// answered 503 until the gateway pod restarts.
    Close,
}

impl FailStrategy {
    /// The `failStrategy` value Istio's schema names.
    pub fn as_str(self) -> &'static str {
        match self {
            FailStrategy::Reload => "FAIL_RELOAD",
            FailStrategy::Close => "FAIL_CLOSE",
        }
    }

    /// `FAIL_RELOAD` or `FAIL_CLOSE` (FAIL_OPEN is refused: it would let requests past an
    /// authentication filter that failed).
    pub fn parse(s: &str) -> Result<FailStrategy> {
        match s {
            "FAIL_RELOAD" => Ok(FailStrategy::Reload),
            "FAIL_CLOSE" => Ok(FailStrategy::Close),
            other => anyhow::bail!(
                "the fail strategy must be FAIL_RELOAD (default) or FAIL_CLOSE (Istio < 1.27), not {other:?}"
            ),
        }
    }
}

/// Where and how the Istio resources are rendered.
#[derive(Debug, Clone)]
pub struct IstioSettings {
    /// Namespace of the ingress gateway (and of every rendered resource).
    pub namespace: String,
    /// Labels selecting the ingress gateway's pods.
    pub selector: BTreeMap<String, String>,
    /// Where Istio fetches the filter (`oci://…`, `https://…` or `file://…`).
    pub wasm_url: String,
    /// Hosts the Gateway and VirtualService serve, and the filter acts for (`*`: all).
    pub hosts: Vec<String>,
    /// The Gateway server's port, which is the gateway listener's port the WasmPlugin and the
    /// buffer EnvoyFilter are scoped to. Keep it equal to the gateway Service's `targetPort`
    /// (istiod binds the listener there).
    pub port: u16,
    /// The operator's control API (host, port), routed for `/v2/keys…` and `/v2/vectorstores…`.
    pub control: Option<(String, u16)>,
    /// The ingress gateway Deployment the credential patch is for.
    pub gateway_deployment: String,
    /// The WasmPlugin's `failStrategy`.
    pub fail_strategy: FailStrategy,
    /// Timeouts and circuit breakers per store (DestinationRule, VirtualService route).
    pub limits: crate::envoy::UpstreamLimits,
}

impl Default for IstioSettings {
    fn default() -> IstioSettings {
        IstioSettings {
            namespace: "layergate-ingress".into(),
            selector: BTreeMap::from([("istio".to_owned(), "layergate-ingressgateway".to_owned())]),
            wasm_url: "oci://ghcr.io/layergate/layergate-filter:0.1.0".into(),
            hosts: vec!["*".into()],
            port: 8080,
            control: None,
            gateway_deployment: "layergate-ingressgateway".into(),
            fail_strategy: FailStrategy::default(),
            limits: crate::envoy::UpstreamLimits::default(),
        }
    }
}

/// Name of the rendered resources.
pub const NAME: &str = "layergate";

fn meta(name: &str, s: &IstioSettings) -> Value {
    json!({"name": name, "namespace": s.namespace, "labels": {"app.kubernetes.io/managed-by": "layergate"}})
}

fn route(
    name: &str,
    cluster: &str,
    inspect: bool,
    host: &str,
    port: u16,
    timeout_ms: u64,
) -> Value {
    let mut headers = json!({CLUSTER_HEADER: {"exact": cluster}});
    if inspect {
        headers[INSPECT_HEADER] = json!({"exact": "1"});
    }
    json!({
        "name": name,
        "match": [{"headers": headers}],
        "route": [{"destination": {"host": host, "port": {"number": port}}}],
        "rewrite": {"authority": host},
        "headers": {"request": {"remove": [CLUSTER_HEADER, INSPECT_HEADER]}},
        "timeout": crate::envoy::ms(timeout_ms),
    })
}

/// A Kubernetes Service host as Istio's registry names it: `<svc>.<ns>.svc` completed with
/// `.cluster.local`; other names unchanged.
fn mesh_host(host: &str) -> String {
    if host.ends_with(".svc") {
        format!("{host}.cluster.local")
    } else {
        host.to_owned()
    }
}

/// The Envoy cluster Istio gives the proxy for a mesh destination: `outbound|<port>||<host>`.
/// The key service is reached over it (the filter's `dispatch_http_call` names a cluster).
pub fn mesh_cluster(host: &str, port: u16) -> String {
    format!("outbound|{port}||{}", mesh_host(host))
}

/// The filter's host list for the Gateway's hosts: empty (every host) when they include `*`.
fn filter_hosts(hosts: &[String]) -> Vec<String> {
    if hosts.iter().any(|h| h == "*") {
        Vec::new()
    } else {
        hosts.to_vec()
    }
}

/// The Istio resources for one namespace's validation, plus the ingress gateway patch.
pub fn render(v: &Validation, s: &IstioSettings) -> Result<(Vec<Value>, Value)> {
    let options = RenderOptions {
        control_cluster: s
            .control
            .as_ref()
            .map(|_| crate::output::CONTROL_CLUSTER.to_owned()),
        app_cluster: None,
        credentials_from_env: true,
        hosts: filter_hosts(&s.hosts),
        key_service: s.control.as_ref().map(|(host, port)| KeyServiceConfig {
            cluster: mesh_cluster(host, *port),
            authority: Some(format!("{}:{port}", mesh_host(host))),
            path: crate::keyservice::SYNC_PATH.to_owned(),
            credential: Credential::Env(crate::keyservice::CREDENTIAL_ENV.to_owned()),
            max_staleness_seconds: 300,
            poll_seconds: crate::keyservice::MAX_WAIT.as_secs(),
        }),
    };
    let config = render::filter_config(v, &options)?;
    let stores: Vec<_> = v.stores.iter().filter_map(|x| x.valid.as_ref()).collect();
    let mut vm_env: Vec<Value> = stores
        .iter()
        .map(|st| json!({"name": credential_env(&st.name), "valueFrom": "HOST"}))
        .collect();
    if config.key_service.is_some() {
        vm_env.push(json!({"name": crate::keyservice::CREDENTIAL_ENV, "valueFrom": "HOST"}));
    }
    let mut out = Vec::new();
    out.push(json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": meta(NAME, s),
        "spec": {
            "selector": {"matchLabels": s.selector},
            "url": s.wasm_url,
            "imagePullPolicy": "IfNotPresent",
            "phase": "AUTHN",
            "failStrategy": s.fail_strategy.as_str(),
            "pluginName": NAME,
            "match": [{"ports": [{"number": s.port}]}],
            "pluginConfig": serde_json::to_value(&config)?,
            "vmConfig": {"env": vm_env},
        }
    }));
    let mut http = Vec::new();
    let mut unbuffered = Vec::new();
    for st in &stores {
        let host = st
            .endpoint
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = format!("{NAME}-store-{}", st.name);
        out.push(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": meta(&name, s),
            "spec": {
                "hosts": [host],
                "location": "MESH_EXTERNAL",
                "resolution": "DNS",
                "exportTo": ["."],
                // The gateway speaks HTTP to this port; the DestinationRule originates TLS.
                "ports": [{"number": st.endpoint.port, "name": "http-store", "protocol": "HTTP"}],
            }
        }));
        let l = &s.limits;
        let mut policy = json!({"connectionPool": {
            "tcp": {"maxConnections": l.max_connections, "connectTimeout": crate::envoy::ms(l.connect_timeout_ms)},
            "http": {"http1MaxPendingRequests": l.max_pending_requests, "http2MaxRequests": l.max_requests}}});
        if st.endpoint.tls {
            // The certificate must name the store's host (Istio verifies the chain against
            // the proxy's roots and the name against subjectAltNames), as in the Envoy target.
            policy["tls"] = json!({"mode": "SIMPLE", "subjectAltNames": [host]});
            if host.parse::<std::net::IpAddr>().is_err() {
                policy["tls"]["sni"] = json!(host);
            }
        }
        out.push(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": meta(&name, s),
            "spec": {"host": host, "exportTo": ["."], "trafficPolicy": policy}
        }));
        let cluster = store_cluster(&st.name);
        http.push(route(
            &format!("{name}-inspect"),
            &cluster,
            true,
            &host,
            st.endpoint.port,
            s.limits.request_timeout_ms,
        ));
        http.push(route(
            &name,
            &cluster,
            false,
            &host,
            st.endpoint.port,
            s.limits.request_timeout_ms,
        ));
        unbuffered.push(name);
    }
    if let Some((host, port)) = &s.control {
        let name = format!("{NAME}-control");
        http.push(route(
            &name,
            crate::output::CONTROL_CLUSTER,
            false,
            host,
            *port,
            s.limits.request_timeout_ms,
        ));
        unbuffered.push(name);
    }
    out.push(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": meta(NAME, s),
        "spec": {"selector": s.selector, "servers": [{"port": {"number": s.port, "name": "http-layergate", "protocol": "HTTP"}, "hosts": s.hosts}]}
    }));
    out.push(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta(NAME, s),
        "spec": {"hosts": s.hosts, "gateways": [NAME], "http": http}
    }));
    let mut patches = vec![json!({
        "applyTo": "HTTP_FILTER",
        "match": {"context": "GATEWAY", "listener": {"portNumber": s.port, "filterChain": {"filter": {
            "name": "envoy.filters.network.http_connection_manager", "subFilter": {"name": "envoy.filters.http.router"}}}}},
        "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.http.buffer", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": DEFAULT_BUFFER_LIMIT_BYTES}}},
    })];
    for name in unbuffered {
        patches.push(json!({
            "applyTo": "HTTP_ROUTE",
            // Plain-HTTP gateway route configurations are per port (`http.<port>`); Istio's
            // `gateway` field matches only HTTPS servers' route configurations.
            "match": {"context": "GATEWAY", "routeConfiguration": {"portNumber": s.port, "vhost": {"route": {"name": name}}}},
            "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": {"envoy.filters.http.buffer": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute", "disabled": true}}}},
        }));
    }
    out.push(json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter", "metadata": meta(&format!("{NAME}-buffer"), s),
        "spec": {"workloadSelector": {"labels": s.selector}, "configPatches": patches}
    }));
    let mut env: Vec<Value> = stores
        .iter()
        .map(|st| {
            json!({"name": credential_env(&st.name), "valueFrom": {"secretKeyRef": {
            "name": st.credential_ref.0, "key": st.credential_ref.1}}})
        })
        .collect();
    // The gateway credential the key service accepts, from the Secret the operator creates
    // (copied into the gateway's namespace, like the store credentials' Secrets).
    if config.key_service.is_some() {
        env.push(json!({"name": crate::keyservice::CREDENTIAL_ENV, "valueFrom": {"secretKeyRef": {
            "name": crate::keyservice::CREDENTIAL_SECRET, "key": crate::keyservice::CREDENTIAL_KEY}}}));
    }
    let gateway_patch = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": s.gateway_deployment, "namespace": s.namespace},
        "spec": {"template": {"spec": {"containers": [{"name": "istio-proxy", "env": env}]}}}
    });
    Ok((out, gateway_patch))
}
