//! Where and how the Istio target renders ([`IstioSettings`], read once from the environment)
//! and what the proxy does when the filter's VM fails ([`FailStrategy`]).

use anyhow::Result;
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
    /// Gateway pods sharing each key's rate (`limits.gatewayReplicas`, `--gateway-replicas`).
    pub gateway_replicas: u32,
}

/// The defaults of [`IstioSettings`], which the command line shows and falls back to.
pub mod defaults {
    /// Namespace of the ingress gateway.
    pub const NAMESPACE: &str = "layergate-ingress";
    /// The ingress gateway pods' selector (a dedicated gateway), as `key=value`.
    pub const SELECTOR: &str = "istio=layergate-ingressgateway";
    /// Where Istio fetches the filter.
    pub const WASM_URL: &str = "oci://ghcr.io/layergate/layergate-filter:0.1.0";
    /// The Gateway port.
    pub const PORT: u16 = 8080;
    /// The ingress gateway Deployment.
    pub const GATEWAY_DEPLOYMENT: &str = "layergate-ingressgateway";
}

impl Default for IstioSettings {
    fn default() -> IstioSettings {
        IstioSettings {
            namespace: defaults::NAMESPACE.into(),
            selector: defaults::SELECTOR
                .split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into_iter()
                .collect(),
            wasm_url: defaults::WASM_URL.into(),
            hosts: vec!["*".into()],
            port: defaults::PORT,
            control: None,
            key_service: None,
            gateway_deployment: defaults::GATEWAY_DEPLOYMENT.into(),
            fail_strategy: FailStrategy::default(),
            gateway_replicas: 1,
        }
    }
}
