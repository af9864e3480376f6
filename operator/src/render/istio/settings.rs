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
