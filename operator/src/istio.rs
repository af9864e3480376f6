//! The Istio target (`render --target istio`, kube mode's `--target istio`): the same
//! validation, filter configuration and store upstreams ([`crate::render::upstreams`])
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
//!   credential into the proxy's environment from its Secret (offline `render`).
//!
//! Kube mode (`run --source kube --target istio`) applies the same resources live: [`plan`]
//! decides what to apply and what to delete, [`credentials`] is the one Secret the proxy's
//! environment reads in the Istio namespace, and [`gateway_apply`] points the gateway
//! Deployment at it with a digest that rolls the pods when it changes
//! (`cluster::Cluster::publish_istio` writes them).

use crate::envoy::{ms, DEFAULT_BUFFER_LIMIT_BYTES};
use crate::render::{self, credential_env, Output, RenderOptions, Rendering, Upstream};
use crate::settings::UpstreamLimits;
use crate::validate::Validation;
use anyhow::Result;
use layergate_filter::config::Credential;
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
    /// The operator's key service listener (host, port) the filter syncs from; `None`: the
    /// control API's.
    pub key_service: Option<(String, u16)>,
    /// The ingress gateway Deployment the credential patch is for.
    pub gateway_deployment: String,
    /// The WasmPlugin's `failStrategy`.
    pub fail_strategy: FailStrategy,
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
            key_service: None,
            gateway_deployment: "layergate-ingressgateway".into(),
            fail_strategy: FailStrategy::default(),
        }
    }
}

impl IstioSettings {
    /// The settings from the environment (`LAYERGATE_ISTIO_NAMESPACE`,
    /// `LAYERGATE_ISTIO_SELECTOR`, `LAYERGATE_WASM_URL`, `LAYERGATE_HOSTS`,
    /// `LAYERGATE_ISTIO_PORT`, `LAYERGATE_ISTIO_GATEWAY_DEPLOYMENT`,
    /// `LAYERGATE_ISTIO_FAIL_STRATEGY`), each defaulting as [`IstioSettings::default`]; the
    /// control API is the caller's (`render` reads `LAYERGATE_CONTROL_UPSTREAM`, kube mode
    /// always has its own Service). The same for the offline render and kube mode.
    pub fn from_env(
        control: Option<(String, u16)>,
        key_service: Option<(String, u16)>,
    ) -> Result<IstioSettings> {
        use anyhow::Context;
        let d = IstioSettings::default();
        let var = |name: &str| std::env::var(name).ok();
        let selector = match var("LAYERGATE_ISTIO_SELECTOR") {
            Some(s) => s
                .split(',')
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                })
                .collect::<Option<_>>()
                .context("LAYERGATE_ISTIO_SELECTOR must be key=value[,key=value]")?,
            None => d.selector,
        };
        Ok(IstioSettings {
            namespace: var("LAYERGATE_ISTIO_NAMESPACE").unwrap_or(d.namespace),
            selector,
            wasm_url: var("LAYERGATE_WASM_URL").unwrap_or(d.wasm_url),
            hosts: var("LAYERGATE_HOSTS").map_or(d.hosts, |h| {
                h.split(',').map(|x| x.trim().to_owned()).collect()
            }),
            port: match var("LAYERGATE_ISTIO_PORT") {
                Some(p) => p
                    .parse()
                    .context("LAYERGATE_ISTIO_PORT must be a port number")?,
                None => d.port,
            },
            control,
            key_service,
            gateway_deployment: var("LAYERGATE_ISTIO_GATEWAY_DEPLOYMENT")
                .unwrap_or(d.gateway_deployment),
            fail_strategy: match var("LAYERGATE_ISTIO_FAIL_STRATEGY") {
                Some(v) => FailStrategy::parse(&v)?,
                None => d.fail_strategy,
            },
        })
    }
}

/// Name of the rendered resources.
pub const NAME: &str = "layergate";

/// The label every rendered resource carries; kube mode deletes only resources that have it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "layergate");

/// Kube mode's Secret in the Istio namespace holding what the gateway's proxy reads from its
/// environment: one key per `LAYERGATE_CREDENTIAL_<STORE>` variable (the store's credential)
/// plus [`crate::keyservice::CREDENTIAL_ENV`] (the gateway credential of the key service).
pub const CREDENTIALS_SECRET: &str = "layergate-istio-credentials";

/// The gateway pod template's annotation carrying a digest of [`CREDENTIALS_SECRET`]'s data:
/// a proxy reads its environment only when it starts, so a changed credential must roll the
/// gateway's pods, and a changed annotation does.
pub const CREDENTIALS_HASH_ANNOTATION: &str = "layergate.hevlayer.com/credentials-sha256";

/// The Istio kinds the target renders: (group, version, kind, plural).
pub const KINDS: [(&str, &str, &str, &str); 6] = [
    (
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
        "wasmplugins",
    ),
    (
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    ("networking.istio.io", "v1", "Gateway", "gateways"),
    (
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    (
        "networking.istio.io",
        "v1alpha3",
        "EnvoyFilter",
        "envoyfilters",
    ),
];

/// The API resource of one of [`KINDS`] (for a dynamic client).
pub fn api_resource(kind: &str) -> Option<kube::core::ApiResource> {
    KINDS
        .iter()
        .find(|k| k.2 == kind)
        .map(|(group, version, kind, plural)| kube::core::ApiResource {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
            api_version: format!("{group}/{version}"),
            kind: (*kind).to_owned(),
            plural: (*plural).to_owned(),
        })
}

/// What kube mode must write to bring the Istio namespace to a rendering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Rendered resources that are absent or differ (labels or spec) from what is present:
    /// server-side applied.
    pub apply: Vec<Value>,
    /// (kind, name) of resources labelled [`MANAGED_BY`] that the rendering no longer has.
    pub delete: Vec<(String, String)>,
}

impl Plan {
    /// True when nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

fn kind_and_name(v: &Value) -> (String, String) {
    (
        v["kind"].as_str().unwrap_or_default().to_owned(),
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Pure: what to apply and what to delete, given the rendered resources and those present in
/// the Istio namespace (any objects of [`KINDS`]). A rendered resource is applied when no
/// present object has its kind and name, or that object's labels or `spec` differ; a present
/// object is deleted only when it carries [`MANAGED_BY`] and the rendering has no resource of
/// its kind and name (a removed store), so nothing someone else made is ever touched.
pub fn plan(rendered: &[Value], present: &[Value]) -> Plan {
    let present_by: BTreeMap<(String, String), &Value> =
        present.iter().map(|p| (kind_and_name(p), p)).collect();
    let apply = rendered
        .iter()
        .filter(|r| {
            present_by.get(&kind_and_name(r)).is_none_or(|p| {
                p["spec"] != r["spec"]
                    || r["metadata"]["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .any(|(k, v)| p["metadata"]["labels"][k] != *v)
            })
        })
        .cloned()
        .collect();
    let wanted: std::collections::BTreeSet<(String, String)> =
        rendered.iter().map(kind_and_name).collect();
    let delete = present
        .iter()
        .filter(|p| p["metadata"]["labels"][MANAGED_BY.0] == MANAGED_BY.1)
        .map(kind_and_name)
        .filter(|id| !wanted.contains(id))
        .collect();
    Plan { apply, delete }
}

/// Kube mode's [`CREDENTIALS_SECRET`] data: each valid store's credential under its
/// [`credential_env`] variable, and the gateway credential under
/// [`crate::keyservice::CREDENTIAL_ENV`].
pub fn credentials(v: &Validation, gateway: &str) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = v
        .stores
        .iter()
        .filter_map(|s| s.valid.as_ref())
        .map(|s| (credential_env(&s.name), s.credential.clone()))
        .collect();
    data.insert(
        crate::keyservice::CREDENTIAL_ENV.to_owned(),
        gateway.to_owned(),
    );
    data
}

/// The digest [`CREDENTIALS_HASH_ANNOTATION`] carries: SHA-256 over the Secret's keys and
/// values. The gateway credential (256 random bits) is among them, so the digest is no oracle
/// for guessing a store credential.
pub fn credentials_hash(data: &BTreeMap<String, String>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (k, v) in data {
        for part in [k.as_bytes(), v.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    hex::encode(h.finalize())
}

/// Kube mode's server-side apply patch for the gateway Deployment: the `istio-proxy`
/// container's environment, each variable from [`CREDENTIALS_SECRET`] (only the keys in
/// `data`), and the pod template's [`CREDENTIALS_HASH_ANNOTATION`] = `hash`, so a changed
/// credential rolls the pods (their environment is read at start).
pub fn gateway_apply(s: &IstioSettings, data: &BTreeMap<String, String>, hash: &str) -> Value {
    let env: Vec<Value> = data
        .keys()
        .map(|var| {
            json!({"name": var, "valueFrom": {"secretKeyRef": {"name": CREDENTIALS_SECRET, "key": var}}})
        })
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": s.gateway_deployment, "namespace": s.namespace},
        "spec": {"template": {
            "metadata": {"annotations": {CREDENTIALS_HASH_ANNOTATION: hash}},
            "spec": {"containers": [{"name": "istio-proxy", "env": env}]}}}
    })
}

fn meta(name: &str, s: &IstioSettings) -> Value {
    json!({"name": name, "namespace": s.namespace, "labels": {MANAGED_BY.0: MANAGED_BY.1}})
}

fn route(name: &str, cluster: &str, inspect: bool, host: &str, port: u16, timeout: &str) -> Value {
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
        "timeout": timeout,
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

/// The Istio target's translation ([`crate::render::render`]): the filter configuration
/// (credentials from the proxy's environment, the Gateway's hosts, `keyService` over the
/// operator's Service when `s.control` is set), the Istio resources, and the offline ingress
/// gateway patch.
pub fn translate(v: &Validation, upstreams: &[Upstream], s: &IstioSettings) -> Result<Rendering> {
    let options = RenderOptions {
        control_cluster: s
            .control
            .as_ref()
            .map(|_| crate::settings::CONTROL_CLUSTER.to_owned()),
        app_cluster: None,
        credentials_from_env: true,
        hosts: filter_hosts(&s.hosts),
        key_service: s.control.as_ref().map(|control| {
            let (host, port) = s.key_service.as_ref().unwrap_or(control);
            render::key_service(
                mesh_cluster(host, *port),
                Some(format!("{}:{port}", mesh_host(host))),
                Credential::Env(crate::keyservice::CREDENTIAL_ENV.to_owned()),
                crate::settings::DEFAULT_MAX_STALENESS_SECONDS,
            )
        }),
    };
    let config = render::filter_config(v, &options)?;
    let mut vm_env: Vec<Value> = upstreams
        .iter()
        .map(|u| json!({"name": credential_env(&u.store), "valueFrom": "HOST"}))
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
    let mut control_route = None;
    for u in upstreams {
        let host = u.host.as_str();
        let name = format!("{NAME}-store-{}", u.store);
        out.push(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": meta(&name, s),
            "spec": {
                "hosts": [host],
                "location": "MESH_EXTERNAL",
                "resolution": "DNS",
                "exportTo": ["."],
                // The gateway speaks HTTP to this port; the DestinationRule originates TLS.
                "ports": [{"number": u.port, "name": "http-store", "protocol": "HTTP"}],
            }
        }));
        let l = &u.limits;
        let mut policy = json!({"connectionPool": {"tcp": {"maxConnections": l.max_connections, "connectTimeout": ms(l.connect_timeout_ms)},
                                                   "http": {"http1MaxPendingRequests": l.max_pending_requests, "http2MaxRequests": l.max_requests}}});
        if u.tls {
            // The certificate must name the store's host (Istio verifies the chain against
            // the proxy's roots and the name against subjectAltNames), as in the Envoy target.
            policy["tls"] = json!({"mode": "SIMPLE", "subjectAltNames": [host]});
            if let Some(sni) = u.sni() {
                policy["tls"]["sni"] = json!(sni);
            }
        }
        out.push(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": meta(&name, s),
            "spec": {"host": host, "exportTo": ["."], "trafficPolicy": policy}
        }));
        let timeout = ms(l.request_timeout_ms);
        http.push(route(
            &format!("{name}-inspect"),
            &u.cluster,
            true,
            host,
            u.port,
            &timeout,
        ));
        http.push(route(&name, &u.cluster, false, host, u.port, &timeout));
        unbuffered.push(name);
    }
    if let Some((host, port)) = &s.control {
        let name = format!("{NAME}-control");
        let timeout = ms(UpstreamLimits::default().request_timeout_ms);
        http.push(route(
            &name,
            crate::settings::CONTROL_CLUSTER,
            false,
            host,
            *port,
            &timeout,
        ));
        control_route = Some(name);
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
    // The control API's body is held by the gateway (up to the control API's own largest
    // cap) and sent on only once complete: a client trickling a body never holds one of the
    // operator's connections (issue 21).
    if let Some(name) = control_route {
        patches.push(json!({
            "applyTo": "HTTP_ROUTE",
            "match": {"context": "GATEWAY", "routeConfiguration": {"portNumber": s.port, "vhost": {"route": {"name": name}}}},
            "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": {"envoy.filters.http.buffer": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                "buffer": {"max_request_bytes": crate::envoy::CONTROL_BODY_BYTES}}}}},
        }));
    }
    out.push(json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter", "metadata": meta(&format!("{NAME}-buffer"), s),
        "spec": {"workloadSelector": {"labels": s.selector}, "configPatches": patches}
    }));
    let mut env: Vec<Value> = v
        .stores
        .iter()
        .filter_map(|x| x.valid.as_ref())
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
    Ok(Rendering {
        config,
        output: Output::Istio {
            resources: out,
            gateway_patch,
        },
    })
}
