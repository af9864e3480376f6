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
//!
//! The room: [`translate`] (this target's half of [`crate::render::render`]) and the resources
//! it writes; its settings ([`IstioSettings`]) and kube mode's apply vocabulary ([`plan`],
//! [`credentials`], [`gateway_apply`]) in rooms of their own. It builds on the shared render
//! vocabulary below it (`render::filter`, `render::upstream`) and `settings`, never on
//! `render`'s entry point or on the Envoy translator.

mod apply;
mod settings;

pub use self::apply::{
    api_resource, credentials, credentials_hash, gateway_apply, plan, Plan,
    CREDENTIALS_HASH_ANNOTATION, CREDENTIALS_SECRET, KINDS,
};
pub use self::settings::{defaults, FailStrategy, IstioSettings};

use crate::render::filter::{credential_env, filter_config, key_service, RenderOptions};
use crate::render::upstream::{ms, Upstream, CONTROL_BODY_BYTES, DEFAULT_BUFFER_LIMIT_BYTES};
use crate::settings::UpstreamLimits;
use crate::validate::Validation;
use anyhow::Result;
use layergate_filter::config::{Credential, FilterConfig};
use layergate_filter::decision::{CLUSTER_HEADER, INSPECT_HEADER};
use serde_json::{json, Value};

/// Name of the rendered resources.
pub const NAME: &str = "layergate";

/// The label every rendered resource carries; kube mode deletes only resources that have it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "layergate");

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
/// gateway patch (the strategic-merge patch for the gateway Deployment).
pub fn translate(
    v: &Validation,
    upstreams: &[Upstream],
    s: &IstioSettings,
) -> Result<(FilterConfig, Vec<Value>, Value)> {
    let options = RenderOptions {
        control_cluster: s
            .control
            .as_ref()
            .map(|_| crate::settings::CONTROL_CLUSTER.to_owned()),
        app_cluster: None,
        credentials_from_env: true,
        hosts: filter_hosts(&s.hosts),
        gateway_replicas: s.gateway_replicas,
        key_service: s.control.as_ref().map(|control| {
            let (host, port) = s.key_service.as_ref().unwrap_or(control);
            key_service(
                mesh_cluster(host, *port),
                Some(format!("{}:{port}", mesh_host(host))),
                Credential::Env(crate::keyservice::CREDENTIAL_ENV.to_owned()),
                crate::settings::DEFAULT_MAX_STALENESS_SECONDS,
            )
        }),
    };
    let config = filter_config(v, &options)?;
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
                "buffer": {"max_request_bytes": CONTROL_BODY_BYTES}}}}},
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
    Ok((config, out, gateway_patch))
}
