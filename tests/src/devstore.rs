//! `devstore`: a small turbopuffer-compatible in-memory server (SPEC §8).
//!
//! Enough of turbopuffer's API for the official Python client 3.1 to write, query, list,
//! inspect and delete namespaces. It accepts exactly one bearer — its own key — and answers
//! anything else with turbopuffer's 401, so tests prove which credential reached which store.
//! Every request, accepted or not, is recorded for tests to inspect ([`DevStore::requests`]).
//!
//! Supported: `POST /v2/namespaces/{ns}` (upsert_rows, upsert_columns, patch_rows, deletes,
//! delete_by_filter, copy_from_namespace, branch_from_namespace), `POST …/{ns}/query` (vector
//! ANN or attribute order, filters, `queries` multi-query), `GET /v1/namespaces` (prefix, cursor,
//! page_size), `GET /v1|v2/namespaces/{ns}/metadata`, `GET /v1/namespaces/{ns}/schema`,
//! `DELETE /v2/namespaces/{ns}`, `POST …/{ns}/async` (202 + relative `Location`),
//! `GET /v1/namespaces/{ns}/operations/{id}`. Vectors as float lists or base64 little-endian
//! f32; gzip request bodies.

use anyhow::{Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// A request as the devstore received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body size as received (before any decompression).
    pub body_len: usize,
}

impl SeenRequest {
    /// First header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Namespace {
    /// Rows by id key (the id's JSON text), each holding `id`, attributes and `vector`.
    rows: BTreeMap<String, Map<String, Value>>,
    distance_metric: Option<String>,
}

#[derive(Default)]
struct State {
    namespaces: BTreeMap<String, Namespace>,
    seen: Vec<SeenRequest>,
    operations: u64,
    /// TLS handshakes that did not complete (the client refused the certificate, or left).
    failed_handshakes: usize,
}

/// A running devstore on a background thread; stops on drop.
pub struct DevStore {
    addr: SocketAddr,
    tls: bool,
    api_key: String,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DevStore {
    /// Starts on `127.0.0.1:0` with the given API key.
    pub fn start(api_key: &str) -> Result<DevStore> {
        DevStore::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), api_key)
    }

    /// Starts on a given address.
    pub fn start_on(addr: SocketAddr, api_key: &str) -> Result<DevStore> {
        DevStore::start_with(addr, api_key, None)
    }

    /// Starts on `127.0.0.1:0` serving HTTPS with the given certificate: what a real store
    /// is, for tests of the gateway's and the probe's upstream identity checks.
    pub fn start_tls(api_key: &str, cert: &crate::tls::ServerCert) -> Result<DevStore> {
        DevStore::start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key,
            Some(tokio_rustls::TlsAcceptor::from(cert.server_config()?)),
        )
    }

    fn start_with(
        addr: SocketAddr,
        api_key: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<DevStore> {
        let is_tls = tls.is_some();
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("devstore: binding {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (key, st) = (api_key.to_owned(), state.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("devstore-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(serve(listener, key, st, tls, rx));
            })?;
        Ok(DevStore {
            addr,
            tls: is_tls,
            api_key: api_key.to_owned(),
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, or `https://addr` for a TLS devstore.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// TLS handshakes that did not complete: a client that refused the certificate shows
    /// here, and sent nothing ([`DevStore::requests`] stays empty).
    pub fn failed_handshakes(&self) -> usize {
        lock(&self.state).failed_handshakes
    }

    /// The key it accepts.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.state).seen.clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.state).seen.len()
    }

    /// Names of the namespaces it holds.
    pub fn namespaces(&self) -> Vec<String> {
        lock(&self.state).namespaces.keys().cloned().collect()
    }

    /// Blocks until Ctrl-C / SIGTERM (for the `devstore` binary and `make run`).
    pub fn wait_for_signal() -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        })?;
        Ok(())
    }
}

impl Drop for DevStore {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    key: String,
    state: Arc<Mutex<State>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let key: Arc<str> = key.into();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (key, state, tls) = (key.clone(), state.clone(), tls.clone());
                tokio::spawn(async move {
                    let st = state.clone();
                    let service = hyper::service::service_fn(move |req| handle(req, key.clone(), st.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                            }
                            Err(_) => lock(&state).failed_handshakes += 1,
                        },
                    }
                });
            }
        }
    }
}

type Reply = hyper::Response<Full<Bytes>>;

fn reply(status: StatusCode, body: &Value) -> Reply {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A turbopuffer-shaped error: `{"status":"error","error":"…"}`.
struct ApiError(StatusCode, String);

impl ApiError {
    fn reply(&self) -> Reply {
        reply(self.0, &json!({"status": "error", "error": self.1}))
    }
}

fn error(status: StatusCode, message: &str) -> ApiError {
    ApiError(status, message.to_owned())
}

async fn handle(
    req: hyper::Request<Incoming>,
    key: Arc<str>,
    state: Arc<Mutex<State>>,
) -> Result<Reply, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
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
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {key}"));
    let raw = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(error(StatusCode::BAD_REQUEST, "could not read the request body").reply())
        }
    };
    let mut st = lock(&state);
    st.seen.push(SeenRequest {
        method: method.to_string(),
        path: path.clone(),
        headers,
        body_len: raw.len(),
    });
    if !authorized {
        let message = "unauthorized: invalid or missing API key for this devstore";
        return Ok(error(StatusCode::UNAUTHORIZED, message).reply());
    }
    let body = if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return Ok(error(StatusCode::BAD_REQUEST, "invalid gzip body").reply());
        }
        out
    } else {
        raw.to_vec()
    };
    Ok(route(&mut st, &method, &path, &body))
}

fn route(st: &mut State, method: &Method, path_and_query: &str, body: &[u8]) -> Reply {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let json_body = || -> Result<Value, ApiError> {
        if body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
    };
    let result = match (method.as_str(), segs.as_slice()) {
        ("GET", ["v1", "namespaces"]) => Ok(list(st, query)),
        ("POST", ["v2", "namespaces", ns]) => json_body().and_then(|b| write(st, ns, &b)),
        ("POST", ["v2" | "v1", "namespaces", ns, "query"]) => {
            json_body().and_then(|b| query_ns(st, ns, &b))
        }
        ("GET", ["v1" | "v2", "namespaces", ns, "metadata"]) => metadata(st, ns),
        ("GET", ["v1", "namespaces", ns, "schema"]) => schema(st, ns),
        ("DELETE", ["v2", "namespaces", ns]) => match st.namespaces.remove(*ns) {
            Some(_) => Ok(reply(StatusCode::OK, &json!({"status": "OK"}))),
            None => Err(not_found(ns)),
        },
        ("POST", ["v2", "namespaces", ns, "async"]) => {
            json_body().and_then(|b| start_copy(st, ns, &b))
        }
        ("GET", ["v1", "namespaces", _, "operations", _]) => {
            Ok(reply(StatusCode::OK, &json!({"status": "complete"})))
        }
        ("POST", ["v1", "namespaces", ns, "_debug", "recall"]) => {
            if st.namespaces.contains_key(*ns) {
                Ok(reply(
                    StatusCode::OK,
                    &json!({"avg_recall": 1.0, "avg_exhaustive_count": 0.0, "avg_ann_count": 0.0}),
                ))
            } else {
                Err(not_found(ns))
            }
        }
        _ => Err(error(
            StatusCode::NOT_FOUND,
            &format!("devstore has no route {method} {path}"),
        )),
    };
    result.unwrap_or_else(|e| e.reply())
}

fn not_found(ns: &str) -> ApiError {
    error(
        StatusCode::NOT_FOUND,
        &format!("namespace '{ns}' was not found"),
    )
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn list(st: &State, query: &str) -> Reply {
    let prefix = query_param(query, "prefix").unwrap_or("");
    let cursor = query_param(query, "cursor").unwrap_or("");
    let page_size = query_param(query, "page_size")
        .and_then(|p| p.parse().ok())
        .unwrap_or(100usize)
        .clamp(1, 1000);
    let names: Vec<&String> = st
        .namespaces
        .keys()
        .filter(|n| n.starts_with(prefix) && n.as_str() > cursor)
        .take(page_size + 1)
        .collect();
    let next = (names.len() > page_size).then(|| names[page_size - 1].clone());
    let page: Vec<Value> = names
        .iter()
        .take(page_size)
        .map(|n| json!({"id": n}))
        .collect();
    reply(
        StatusCode::OK,
        &json!({"namespaces": page, "next_cursor": next}),
    )
}

fn decode_vector(v: &Value) -> Option<Vec<f32>> {
    match v {
        Value::Array(items) => items.iter().map(|x| x.as_f64().map(|f| f as f32)).collect(),
        Value::String(s) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
            Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        _ => None,
    }
}

fn id_key(id: &Value) -> String {
    id.to_string()
}

fn normalize_row(mut row: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    if !row.contains_key("id") {
        return Err(error(StatusCode::BAD_REQUEST, "every row needs an id"));
    }
    if let Some(v) = row.get("vector") {
        let floats = decode_vector(v).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "vector must be a list of numbers or base64 f32",
            )
        })?;
        row.insert("vector".into(), json!(floats));
    }
    Ok(row)
}

fn columns_to_rows(cols: &Map<String, Value>) -> Result<Vec<Map<String, Value>>, ApiError> {
    let ids = cols
        .get("id")
        .and_then(Value::as_array)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "upsert_columns needs an id column"))?;
    Ok((0..ids.len())
        .map(|i| {
            cols.iter()
                .filter_map(|(k, col)| {
                    col.as_array()
                        .and_then(|c| c.get(i))
                        .map(|v| (k.clone(), v.clone()))
                })
                .collect()
        })
        .collect())
}

fn source_name(v: &Value) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("source_namespace").and_then(Value::as_str))
}

fn write(st: &mut State, ns: &str, body: &Value) -> Result<Reply, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "write body must be an object"))?;
    let mut upserted = 0usize;
    let mut deleted = 0usize;
    let mut patched = 0usize;
    for field in ["copy_from_namespace", "branch_from_namespace"] {
        if let Some(src) = obj.get(field) {
            let src = source_name(src).ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    &format!("{field} must name a namespace"),
                )
            })?;
            let rows = st
                .namespaces
                .get(src)
                .ok_or_else(|| not_found(src))?
                .rows
                .clone();
            upserted += rows.len();
            st.namespaces
                .entry(ns.to_owned())
                .or_default()
                .rows
                .extend(rows);
        }
    }
    let mut rows = Vec::new();
    if let Some(list) = obj.get("upsert_rows").and_then(Value::as_array) {
        for r in list {
            rows.push(normalize_row(r.as_object().cloned().unwrap_or_default())?);
        }
    }
    if let Some(cols) = obj.get("upsert_columns").and_then(Value::as_object) {
        for r in columns_to_rows(cols)? {
            rows.push(normalize_row(r)?);
        }
    }
    let target = st.namespaces.entry(ns.to_owned()).or_default();
    if let Some(m) = obj.get("distance_metric").and_then(Value::as_str) {
        target.distance_metric = Some(m.to_owned());
    }
    for r in rows {
        let key = id_key(&r["id"]);
        target.rows.insert(key, r);
        upserted += 1;
    }
    if let Some(list) = obj.get("patch_rows").and_then(Value::as_array) {
        for p in list {
            let Some(p) = p.as_object() else { continue };
            if let Some(row) = p.get("id").and_then(|id| target.rows.get_mut(&id_key(id))) {
                row.extend(p.clone());
                patched += 1;
            }
        }
    }
    if let Some(ids) = obj.get("deletes").and_then(Value::as_array) {
        for id in ids {
            deleted += usize::from(target.rows.remove(&id_key(id)).is_some());
        }
    }
    if let Some(filter) = obj.get("delete_by_filter") {
        let before = target.rows.len();
        target.rows.retain(|_, r| !matches_filter(r, filter));
        deleted += before - target.rows.len();
    }
    Ok(reply(
        StatusCode::OK,
        &json!({"status": "OK", "message": "write applied", "rows_affected": upserted + deleted + patched,
                "rows_upserted": upserted, "rows_deleted": deleted, "rows_patched": patched,
                "billing": {"billable_logical_bytes_written": 0}}),
    ))
}

/// `POST …/{ns}/async`: the source as turbopuffer's client 3.1 sends it (nested,
/// `{"copy_from_namespace": {"source_namespace": …}}`) or top-level `source_namespace`.
fn start_copy(st: &mut State, ns: &str, body: &Value) -> Result<Reply, ApiError> {
    let src = body
        .get("copy_from_namespace")
        .and_then(source_name)
        .or_else(|| body.get("source_namespace").and_then(Value::as_str))
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "copy_from_namespace (or source_namespace) is required",
            )
        })?;
    let rows = st
        .namespaces
        .get(src)
        .ok_or_else(|| not_found(src))?
        .rows
        .clone();
    st.namespaces
        .entry(ns.to_owned())
        .or_default()
        .rows
        .extend(rows);
    st.operations += 1;
    let location = format!("/v1/namespaces/{ns}/operations/op_{}", st.operations);
    let mut r = reply(StatusCode::ACCEPTED, &json!({"status": "ACCEPTED"}));
    if let Ok(v) = hyper::header::HeaderValue::from_str(&location) {
        r.headers_mut().insert("location", v);
    }
    Ok(r)
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// turbopuffer filters: `[attr, op, value]`, `["And"|"Or", [...]]`, `["Not", f]`.
fn matches_filter(row: &Map<String, Value>, f: &Value) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let Some(items) = f.as_array() else {
        return true;
    };
    match items.as_slice() {
        [Value::String(op), Value::Array(subs)] if op == "And" => {
            subs.iter().all(|s| matches_filter(row, s))
        }
        [Value::String(op), Value::Array(subs)] if op == "Or" => {
            subs.iter().any(|s| matches_filter(row, s))
        }
        [Value::String(op), sub] if op == "Not" => !matches_filter(row, sub),
        [Value::String(attr), Value::String(op), value] => {
            let have = row.get(attr.as_str()).unwrap_or(&Value::Null);
            let ord = compare(have, value);
            match op.as_str() {
                "Eq" => have == value,
                "NotEq" => have != value,
                "In" => value.as_array().is_some_and(|vs| vs.contains(have)),
                "NotIn" => !value.as_array().is_some_and(|vs| vs.contains(have)),
                "Lt" => ord == Some(Less),
                "Lte" => matches!(ord, Some(Less | Equal)),
                "Gt" => ord == Some(Greater),
                "Gte" => matches!(ord, Some(Greater | Equal)),
                "Contains" => have.as_array().is_some_and(|a| a.contains(value)),
                _ => false,
            }
        }
        _ => true,
    }
}

fn distance(metric: &str, a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    if metric == "euclidean_squared" {
        return a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum();
    }
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        1.0
    } else {
        1.0 - dot / (na * nb)
    }
}

fn query_ns(st: &State, ns: &str, body: &Value) -> Result<Reply, ApiError> {
    let space = st.namespaces.get(ns).ok_or_else(|| not_found(ns))?;
    if let Some(queries) = body.get("queries").and_then(Value::as_array) {
        let results = queries
            .iter()
            .map(|q| run_query(space, q))
            .collect::<Result<Vec<_>, _>>()?;
        let results: Vec<Value> = results
            .into_iter()
            .map(|rows| json!({"rows": rows}))
            .collect();
        return Ok(reply(
            StatusCode::OK,
            &json!({"results": results, "billing": billing(), "performance": performance()}),
        ));
    }
    let rows = run_query(space, body)?;
    Ok(reply(
        StatusCode::OK,
        &json!({"rows": rows, "billing": billing(), "performance": performance()}),
    ))
}

fn billing() -> Value {
    json!({"billable_logical_bytes_queried": 0, "billable_logical_bytes_returned": 0})
}

fn performance() -> Value {
    json!({"approx_namespace_size": 0, "cache_hit_ratio": 1.0, "cache_temperature": "hot", "exhaustive_search_count": 0,
           "query_execution_ms": 0, "server_total_ms": 0})
}

fn run_query(space: &Namespace, q: &Value) -> Result<Vec<Value>, ApiError> {
    let limit = q
        .get("top_k")
        .or_else(|| q.get("limit"))
        .and_then(|l| {
            l.as_u64()
                .or_else(|| l.get("total").and_then(Value::as_u64))
        })
        .unwrap_or(10) as usize;
    let filters = q.get("filters");
    let mut hits: Vec<(Option<f64>, &Map<String, Value>)> = space
        .rows
        .values()
        .filter(|r| filters.is_none_or(|f| matches_filter(r, f)))
        .map(|r| (None, r))
        .collect();
    match q
        .get("rank_by")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([Value::String(field), Value::String(kind), target])
            if kind == "ANN" || kind == "kNN" =>
        {
            let target = decode_vector(target).ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "rank_by vector must be numbers or base64",
                )
            })?;
            let metric = space
                .distance_metric
                .as_deref()
                .unwrap_or("cosine_distance");
            for hit in &mut hits {
                let v = hit
                    .1
                    .get(field.as_str())
                    .and_then(decode_vector)
                    .unwrap_or_default();
                hit.0 = Some(if v.len() == target.len() {
                    distance(metric, &v, &target)
                } else {
                    f64::MAX
                });
            }
            hits.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        }
        Some([Value::String(attr), Value::String(dir)]) => {
            hits.sort_by(|a, b| {
                compare(
                    a.1.get(attr.as_str()).unwrap_or(&Value::Null),
                    b.1.get(attr.as_str()).unwrap_or(&Value::Null),
                )
                .unwrap_or(std::cmp::Ordering::Equal)
            });
            if dir.eq_ignore_ascii_case("desc") {
                hits.reverse();
            }
        }
        Some(_) => return Err(error(StatusCode::BAD_REQUEST, "unsupported rank_by")),
        None => {}
    }
    let include = q.get("include_attributes");
    Ok(hits
        .into_iter()
        .take(limit)
        .map(|(dist, row)| {
            let mut out = Map::new();
            out.insert("id".into(), row["id"].clone());
            if let Some(d) = dist {
                out.insert("$dist".into(), json!(d));
            }
            for (k, v) in row {
                let wanted = match include {
                    Some(Value::Bool(true)) => k != "vector",
                    Some(Value::Array(names)) => names.iter().any(|n| n.as_str() == Some(k)),
                    _ => false,
                };
                if wanted && k != "id" {
                    out.insert(k.clone(), v.clone());
                }
            }
            Value::Object(out)
        })
        .collect())
}

fn infer_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::Array(_) => "[]string",
        _ => "string",
    }
}

fn schema_of(space: &Namespace) -> Map<String, Value> {
    let mut schema = Map::new();
    for row in space.rows.values() {
        for (k, v) in row {
            let ty = if k == "vector" {
                format!("[{}]f32", v.as_array().map_or(0, Vec::len))
            } else {
                infer_type(v).to_owned()
            };
            schema
                .entry(k.clone())
                .or_insert_with(|| json!({"type": ty}));
        }
    }
    schema
}

fn schema(st: &State, ns: &str) -> Result<Reply, ApiError> {
    let space = st.namespaces.get(ns).ok_or_else(|| not_found(ns))?;
    Ok(reply(StatusCode::OK, &Value::Object(schema_of(space))))
}

fn metadata(st: &State, ns: &str) -> Result<Reply, ApiError> {
    let space = st.namespaces.get(ns).ok_or_else(|| not_found(ns))?;
    Ok(reply(
        StatusCode::OK,
        &json!({"approx_logical_bytes": 0, "approx_row_count": space.rows.len(), "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z", "encryption": {"sse": true}, "index": {"status": "up-to-date"},
                "schema": schema_of(space)}),
    ))
}
