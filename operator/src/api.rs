//! The control API served by `run` (SPEC §7), in hev layer's JSON shapes: `/v2/keys` mint,
//! list (`?includeRevoked`), get, revoke (idempotent), delete, `/v2/keys/authenticate`
//! (no bearer; the token in the body is the credential; rate-limited), `/v2/vectorstores`
//! list/get with status, and `/healthz`, `/readyz`, `/metrics`.
//!
//! Callers are authenticated again with the filter crate's own decision code against the
//! configuration the operator last rendered, so the gateway and this API can never disagree:
//! admin for every `/v2/keys` route, read for `/v2/vectorstores`.
//!
//! In directory mode the API changes manifests: a minted key becomes an ApiKey file and a
//! Secret file in the directory, revoking sets `spec.revoked` in the ApiKey's document, deleting
//! removes it; the same pass that renders the gateway then picks the change up.

use crate::keys;
use crate::source::{Pass, Source, State};
use crate::status;
use crate::validate;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::StatusCode;
use layergate_filter::decision::{decide, Decision};
use layergate_filter::headers::{pairs, serialize, RequestHead};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// `POST /v2/keys/authenticate` calls allowed per minute (fixed window), as in hev layer.
pub const DEFAULT_AUTHENTICATE_PER_MINUTE: u32 = 120;

type Reply = hyper::Response<Full<Bytes>>;

/// State of the API.
pub struct Api {
    source: Arc<dyn Source>,
    authenticate_per_minute: u32,
    window: Mutex<(i64, u32)>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn reply(status: StatusCode, body: &Value) -> Reply {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Reply {
    reply(status, &json!({"status": "error", "error": message}))
}

impl Api {
    /// An API over a directory source.
    pub fn new(source: Arc<dyn Source>, authenticate_per_minute: u32) -> Api {
        Api {
            source,
            authenticate_per_minute,
            window: Mutex::new((0, 0)),
        }
    }

    /// Binds `addr` and serves until the process stops.
    pub fn serve(self: Arc<Self>, addr: SocketAddr) -> Result<()> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the control API on {addr}"))?;
        self.serve_on(listener)
    }

    /// Serves on a bound listener until the process stops.
    pub fn serve_on(self: Arc<Self>, listener: std::net::TcpListener) -> Result<()> {
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tracing::info!(addr = %listener.local_addr()?, "control API listening");
            loop {
                let (stream, _) = listener.accept().await?;
                let api = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, std::convert::Infallible>(api.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    }

    async fn handle(&self, req: hyper::Request<Incoming>) -> Reply {
        let method = req.method().as_str().to_owned();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is over 1 MiB",
                )
            }
        };
        let source = self.source.clone();
        let api = self;
        // The handlers touch files and locks: keep them off the async workers.
        let result = tokio::task::block_in_place(|| {
            api.route(source.as_ref(), &method, &path, &headers, &body)
        });
        result.unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")))
    }

    fn route(
        &self,
        source: &dyn Source,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Reply> {
        let (bare, query) = path.split_once('?').unwrap_or((path, ""));
        let segs: Vec<&str> = bare.trim_start_matches('/').split('/').collect();
        match (method, segs.as_slice()) {
            ("GET", ["healthz"]) => return Ok(reply(StatusCode::OK, &json!({"status": "ok"}))),
            ("GET", ["readyz"]) => {
                return Ok(match source.state().last() {
                    Some(_) => reply(StatusCode::OK, &json!({"status": "ready"})),
                    None => error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no configuration rendered yet",
                    ),
                })
            }
            ("GET", ["metrics"]) => return Ok(metrics(source.state())),
            _ => {}
        }
        let Some(pass) = source.state().last() else {
            return Ok(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no configuration rendered yet; see the operator's log",
            ));
        };
        if let Some(denied) = refusal(&pass, method, path, headers) {
            return Ok(denied);
        }
        match (method, segs.as_slice()) {
            ("POST", ["v2", "keys", "authenticate"]) => Ok(self.authenticate(&pass, body)),
            ("POST", ["v2", "keys"]) => mint(source, &pass, body),
            ("GET", ["v2", "keys"]) => {
                let all = query
                    .split('&')
                    .any(|kv| kv == "includeRevoked=true" || kv == "includeRevoked=1");
                let keys: Vec<Value> = key_views(&pass)
                    .into_iter()
                    .filter(|k| all || k["phase"] != "Revoked")
                    .collect();
                Ok(reply(StatusCode::OK, &json!({"keys": keys})))
            }
            ("GET", ["v2", "keys", id]) => Ok(match find_key(&pass, id) {
                Some(k) => reply(StatusCode::OK, &k),
                None => error(StatusCode::NOT_FOUND, &format!("no API key {id:?}")),
            }),
            ("POST", ["v2", "keys", id, "revoke"]) => change_key(source, &pass, id, Change::Revoke),
            ("DELETE", ["v2", "keys", id]) => change_key(source, &pass, id, Change::Delete),
            ("GET", ["v2", "vectorstores"]) => Ok(reply(
                StatusCode::OK,
                &json!({"vectorstores": store_views(source, &pass)}),
            )),
            ("GET", ["v2", "vectorstores", name]) => Ok(
                match store_views(source, &pass)
                    .into_iter()
                    .find(|s| s["name"] == *name)
                {
                    Some(s) => reply(StatusCode::OK, &s),
                    None => error(StatusCode::NOT_FOUND, &format!("no VectorStore {name:?}")),
                },
            ),
            _ => Ok(error(
                StatusCode::NOT_FOUND,
                &format!("the control API has no route {method} {bare}"),
            )),
        }
    }

    fn authenticate(&self, pass: &Pass, body: &[u8]) -> Reply {
        {
            let mut w = self
                .window
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let minute = now() / 60;
            if w.0 != minute {
                *w = (minute, 0);
            }
            w.1 += 1;
            if w.1 > self.authenticate_per_minute {
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many authenticate calls this minute; retry in a minute",
                );
            }
        }
        let Some(token) = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_owned))
        else {
            return error(StatusCode::BAD_REQUEST, "send {\"token\": \"hvl_…\"}");
        };
        let hash = format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())));
        match pass
            .config
            .api_keys
            .iter()
            .find(|k| k.lookup_hash.to_string() == hash)
        {
            Some(k) => {
                let owner = pass
                    .objects
                    .keys
                    .iter()
                    .find(|o| o.metadata.name.as_deref() == Some(k.name.as_str()))
                    .and_then(|o| o.spec.owner.clone());
                reply(
                    StatusCode::OK,
                    &json!({"keyId": k.key_id, "name": k.name, "owner": owner, "entitlements": k.entitlements, "expiresAt": k.expires_at}),
                )
            }
            None => error(
                StatusCode::UNAUTHORIZED,
                "the token is not an active API key",
            ),
        }
    }
}

/// Checks the caller exactly as the gateway does, with the filter's decision code; returns
/// the refusal, if any.
fn refusal(pass: &Pass, method: &str, path: &str, headers: &[(String, String)]) -> Option<Reply> {
    let mut all: Vec<(&str, &str)> = vec![(":method", method), (":path", path)];
    all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let buf = serialize(all.iter().copied());
    let head = RequestHead::from_pairs(pairs(&buf));
    match decide(&pass.policy, &head, now) {
        Decision::Deny(d) => {
            let mut r = reply(
                StatusCode::from_u16(d.status() as u16).unwrap_or(StatusCode::FORBIDDEN),
                &serde_json::from_str(&d.body()).unwrap_or_default(),
            );
            if let Some(w) = d
                .www_authenticate()
                .and_then(|w| hyper::header::HeaderValue::from_str(w).ok())
            {
                r.headers_mut().insert("www-authenticate", w);
            }
            Some(r)
        }
        _ => None,
    }
}

fn key_views(pass: &Pass) -> Vec<Value> {
    pass.objects
        .keys
        .iter()
        .map(|k| {
            let st = status::key(pass, k, now());
            json!({
                "keyId": st.key_id,
                "name": k.metadata.name,
                "owner": k.spec.owner,
                "description": k.spec.description,
                "entitlements": k.spec.entitlements,
                "expiresAfter": k.spec.expires_after.clone().unwrap_or_else(|| validate::DEFAULT_EXPIRES_AFTER.to_owned()),
                "phase": st.phase,
                "createdAt": st.created_at,
                "expiresAt": st.expires_at,
                "revokedAt": st.revoked_at,
                "lookupHash": st.lookup_hash,
                "secretRef": st.secret_ref,
            })
        })
        .collect()
}

fn find_key(pass: &Pass, id: &str) -> Option<Value> {
    key_views(pass)
        .into_iter()
        .find(|k| k["keyId"] == id || k["name"] == id)
}

fn store_views(source: &dyn Source, pass: &Pass) -> Vec<Value> {
    let probes = source.state().probes();
    pass.objects
        .stores
        .iter()
        .map(|s| {
            let name = s.metadata.name.clone().unwrap_or_default();
            let default = pass
                .validation
                .stores
                .iter()
                .find(|v| v.name == name)
                .and_then(|v| v.valid.as_ref())
                .is_some_and(|v| v.default);
            json!({
                "name": name,
                "kind": s.spec.kind,
                "default": default,
                "endpoint": s.spec.endpoint,
                "turbopuffer": s.spec.turbopuffer,
                "credential": s.spec.credential,
                "inboundAuth": s.spec.inbound_auth,
                "status": status::store(pass, probes.get(&name), s, now()),
            })
        })
        .collect()
}

fn mint(source: &dyn Source, pass: &Pass, body: &[u8]) -> Result<Reply> {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "send a JSON object: {\"name\": …, \"entitlements\": {…}}",
            ))
        }
    };
    let name = req["name"].as_str().unwrap_or_default().to_owned();
    if !keys::valid_key_name(&name) {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "name must be 1-63 lower-case letters, digits or '-' (a Kubernetes name)",
        ));
    }
    if pass
        .objects
        .keys
        .iter()
        .any(|k| k.metadata.name.as_deref() == Some(name.as_str()))
    {
        return Ok(error(
            StatusCode::CONFLICT,
            &format!("an API key named {name:?} exists; revoke or delete it, or pick another name"),
        ));
    }
    let mut spec = serde_json::Map::new();
    for field in ["owner", "description", "entitlements", "expiresAfter"] {
        if !req[field].is_null() {
            spec.insert(field.to_owned(), req[field].clone());
        }
    }
    let manifest = json!({"apiVersion": "hevlayer.com/v1alpha1", "kind": "ApiKey", "metadata": {"name": name, "namespace": pass.namespace}, "spec": spec});
    // Check it as the operator will, before anything is written.
    let mut trial = pass.objects.clone();
    trial.add_yaml("request", &serde_yaml::to_string(&manifest)?);
    if let Some(p) = trial
        .problems
        .last()
        .filter(|_| trial.problems.len() > pass.objects.problems.len())
    {
        return Ok(error(StatusCode::BAD_REQUEST, p));
    }
    let token = keys::mint_token()?;
    source.create_key(&pass.namespace, &name, &manifest, &token)?;
    source.refresh()?;
    let last = source.state().last();
    let Some(view) = last.as_ref().and_then(|p| find_key(p, &name)) else {
        return Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the key was written but is not in the rendering; see the operator's log",
        ));
    };
    if view["phase"] != "Active" {
        let reason = last.as_ref().and_then(|p| {
            p.validation
                .keys
                .iter()
                .find(|k| k.name == name)
                .map(|k| k.conditions.clone())
        });
        if let Some(p) = &last {
            source.delete_key(p, &name)?;
        }
        source.refresh()?;
        let msg = reason
            .and_then(|c| c.into_iter().next())
            .map_or_else(|| "invalid key".to_owned(), |c| c.message);
        return Ok(error(StatusCode::BAD_REQUEST, &msg));
    }
    let mut out = view;
    out["token"] = json!(token);
    Ok(reply(StatusCode::CREATED, &out))
}

enum Change {
    Revoke,
    Delete,
}

/// Revokes or deletes an ApiKey through the source.
fn change_key(source: &dyn Source, pass: &Pass, id: &str, change: Change) -> Result<Reply> {
    let Some(view) = find_key(pass, id) else {
        return Ok(error(StatusCode::NOT_FOUND, &format!("no API key {id:?}")));
    };
    let name = view["name"].as_str().unwrap_or_default().to_owned();
    match change {
        Change::Revoke if view["phase"] == "Revoked" => return Ok(reply(StatusCode::OK, &view)),
        Change::Revoke => source.revoke_key(pass, &name)?,
        Change::Delete => source.delete_key(pass, &name)?,
    }
    source.refresh()?;
    Ok(match change {
        Change::Revoke => reply(
            StatusCode::OK,
            &source
                .state()
                .last()
                .and_then(|p| find_key(&p, &name))
                .unwrap_or(view),
        ),
        Change::Delete => reply(
            StatusCode::OK,
            &json!({"status": "OK", "message": format!("API key {name} deleted")}),
        ),
    })
}

fn metrics(state: &State) -> Reply {
    let pass = state.last();
    let active = pass.as_ref().map_or(0, |p| p.config.api_keys.len());
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
        "API keys in the rendering.",
        active.to_string(),
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
