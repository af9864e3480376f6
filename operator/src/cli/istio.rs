//! The Istio target's settings on the command line.

use clap::Args;
use layergate_operator::istio::{defaults, FailStrategy, IstioSettings};
use std::collections::BTreeMap;

/// The Istio target's settings.
#[derive(Debug, Args)]
pub struct IstioArgs {
    /// Namespace of the ingress gateway and of every rendered resource.
    #[arg(
        long,
        env = "LAYERGATE_ISTIO_NAMESPACE",
        value_name = "NS",
        default_value = "layergate-ingress"
    )]
    pub istio_namespace: String,
    /// Labels selecting the ingress gateway's pods (a dedicated gateway).
    #[arg(long, env = "LAYERGATE_ISTIO_SELECTOR", value_name = "KEY=VALUE[,KEY=VALUE]",
          default_value = defaults::SELECTOR, value_parser = selector)]
    pub istio_selector: BTreeMap<String, String>,
    /// The ingress gateway Deployment the credential patch is for (kube mode rolls it).
    #[arg(
        long,
        env = "LAYERGATE_ISTIO_GATEWAY_DEPLOYMENT",
        value_name = "NAME",
        default_value = "layergate-ingressgateway"
    )]
    pub istio_gateway_deployment: String,
    /// The Gateway port the WasmPlugin and EnvoyFilter are scoped to.
    #[arg(
        long,
        env = "LAYERGATE_ISTIO_PORT",
        value_name = "PORT",
        default_value_t = 8080
    )]
    pub istio_port: u16,
    /// Where Istio fetches the filter (oci://, https:// or file://).
    #[arg(
        long,
        env = "LAYERGATE_WASM_URL",
        value_name = "URL",
        default_value = "oci://ghcr.io/layergate/layergate-filter:0.1.0"
    )]
    pub wasm_url: String,
    /// The hosts served, comma-separated; the filter acts only for these.
    #[arg(
        long,
        env = "LAYERGATE_HOSTS",
        value_name = "HOST[,HOST]",
        default_value = "*",
        value_delimiter = ','
    )]
    pub hosts: Vec<String>,
    /// FAIL_RELOAD: a filter panic fails that request and reloads the VM. FAIL_CLOSE only for
    /// Istio < 1.27: one panic turns that worker's requests into 503s until the pod restarts.
    #[arg(long, env = "LAYERGATE_ISTIO_FAIL_STRATEGY", value_name = "STRATEGY", default_value = "FAIL_RELOAD",
          value_parser = |s: &str| FailStrategy::parse(s).map_err(|e| e.to_string()))]
    pub istio_fail_strategy: FailStrategy,
}

fn selector(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, _)| !k.is_empty())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| "must be key=value[,key=value]".into())
}

impl IstioArgs {
    /// The Istio settings, routing to the control API and key service given.
    pub fn settings(
        &self,
        control: Option<(String, u16)>,
        key_service: Option<(String, u16)>,
    ) -> IstioSettings {
        IstioSettings {
            namespace: self.istio_namespace.clone(),
            selector: self.istio_selector.clone(),
            wasm_url: self.wasm_url.clone(),
            hosts: self.hosts.iter().map(|h| h.trim().to_owned()).collect(),
            port: self.istio_port,
            control,
            key_service,
            gateway_deployment: self.istio_gateway_deployment.clone(),
            fail_strategy: self.istio_fail_strategy,
            gateway_replicas: 1,
        }
    }
}
