//! The control API's rules (SPEC §7 "Who may manage keys"), each an attack from issue 10 that
//! went through before: driven through the control API's router ([`Api::router`], in process)
//! over directory mode, the same code kube mode serves.
//!
//! One test binary, one room per topic; this file holds the fixture they share:
//! - `authority`: who may manage which keys, the docs/control-api.md table walked row by row;
//! - `authenticate`: `POST /v2/keys/authenticate` and the token Secrets it trusts;
//! - `writes`: mint, revoke and delete, the files they write, parallel writes;
//! - `limits`: body caps, timeouts, connection limits, the rate limit, the key service's
//!   own listener;
//! - `health`: `/healthz`;
//! - `rotate`: rotation with an overlap window, through the API and declaratively;
//! - `property`: random mint bodies (`make fuzz` runs `--test api property_`).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod authenticate;
mod authority;
mod health;
mod limits;
mod property;
mod rotate;
mod writes;

use hyper::StatusCode;
use layergate_operator::api::Api;
use layergate_operator::output::Settings;
use layergate_operator::source::{DirSource, Source};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ADMIN: &str = "demo-admin-token"; // inbound admin key of store `primary` (the default)
const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Fixture {
    dir: PathBuf,
    source: Arc<DirSource>,
    api: Arc<Api>,
    runtime: tokio::runtime::Runtime,
}

/// The demo manifests in a fresh directory, `edit` applied to each file's text.
fn fixture(tag: &str, per_minute: u32, edit: impl Fn(&str, String) -> String) -> Fixture {
    let root = std::env::temp_dir().join(format!("layergate-api-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (dir, out) = (root.join("manifests"), root.join("out"));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/demo/manifests");
    for f in [
        "vectorstores.yaml",
        "indexes.yaml",
        "apikeys.yaml",
        "secrets.yaml",
    ] {
        let text = std::fs::read_to_string(demo.join(f)).unwrap();
        std::fs::write(dir.join(f), edit(f, text)).unwrap();
    }
    let settings = Settings {
        listen: "127.0.0.1:8080".parse().unwrap(),
        admin: "127.0.0.1:9901".parse().unwrap(),
        filter: Default::default(),
        wasm_path: "filter.wasm".into(),
        control: Some(("127.0.0.1".into(), 9902)),
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        gateway_replicas: 1,
        limits: Default::default(),
        access_log_path: None,
    };
    let source = Arc::new(DirSource::new(dir.clone(), out, settings));
    source.refresh().unwrap();
    let api = Arc::new(Api::new(source.clone(), per_minute));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        dir,
        source,
        api,
        runtime,
    }
}

impl Fixture {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call_from(method, path, token, body, &[])
    }

    fn call_from(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut headers: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if let Some(t) = token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (status, v) = self.respond(method, path, &headers, body);
        (status.as_u16(), v)
    }

    /// One request through the control API's router, from [`PEER`]: (status, JSON body).
    fn respond(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        use tower::ServiceExt;
        let mut req = hyper::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let mut req = req.body(axum::body::Body::from(body)).unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(
                PEER, 40000,
            )));
        self.runtime.block_on(async {
            let r = self.api.router().oneshot(req).await.unwrap();
            let status = r.status();
            let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        })
    }

    /// Revokes `name` as the demo's admin and asserts the answer is the key, read back Revoked.
    fn revoked(&self, name: &str, what: &str) {
        let (status, body) = self.call(
            "POST",
            &format!("/v2/keys/{name}/revoke"),
            Some(ADMIN),
            Value::Null,
        );
        assert_eq!(
            (status, body["phase"].as_str()),
            (200, Some("Revoked")),
            "{what}: {body}"
        );
    }

    /// What the gateway accepts: the rendering, and the minted keys the key service serves.
    fn config(&self) -> String {
        let pass = self.source.state().last().unwrap();
        serde_json::to_string(&pass.config).unwrap() + &serde_json::to_string(&pass.keys).unwrap()
    }
}

fn key(name: &str, entitlements: Value) -> Value {
    json!({"name": name, "expiresAfter": "30d", "entitlements": entitlements})
}
