//! The fake Kubernetes API the kube-mode tests run against, holding the real API server's rules.
//!
//! kube-fake-client 0.3 keeps objects, resourceVersions (a stale one is a 409), generations,
//! `AlreadyExists`, and on `PUT`/`PATCH` it keeps the stored `status` (or `spec`, on the status
//! subresource) of a kind registered with a status subresource. It does not limit object sizes,
//! validate custom resources against their CRD schema, drop `status` from a create, or check
//! names. [`StrictBuild::strict`], the one way these tests get a client, puts a layer in front
//! of it that refuses (or, where the real server silently drops something, drops) what a real
//! kube-apiserver would:
//!
//! - a request body over 3 MiB (the API server's limit, 413), and an object over 1.5 MiB as
//!   etcd stores it (Secret and ConfigMap values counted decoded, not as base64; 413
//!   `etcdserver: request is too large`);
//! - a Secret whose values add up to more than 1 MiB, a ConfigMap whose keys and values do
//!   (422 `Too long: must have at most 1048576 bytes`);
//! - a custom resource that does not satisfy its version's `openAPIV3Schema` in
//!   `operator/crds/hevlayer.com.yaml` (types, `required`, `enum`, `minLength`/`maxLength`,
//!   `pattern`, `minItems`/`maxItems`, `minimum`/`maximum`, `nullable`): 422 `Invalid`. A field
//!   the schema does not name is refused too, where the real server drops it with a warning: a
//!   field the operator writes and the cluster would lose is a bug either way;
//! - `status` written other than through the status subresource of a kind that has one (it is
//!   dropped, as the real server drops it), and anything but `status` written through it;
//! - a name that is not a DNS-1123 subdomain of at most 253 characters (422).
//!
//! The starting objects given to the builder are checked the same way when the client is made:
//! a real cluster could not hold one the server refuses.
#![allow(dead_code, clippy::panic)]

use kube::client::Body;
use kube::Client;
use kube_fake_client::ClientBuilder;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The API server's limit on a request body: 3 MiB.
pub const REQUEST_LIMIT: usize = 3 * 1024 * 1024;
/// etcd's limit on one request, and so on one stored object: 1.5 MiB.
pub const STORE_LIMIT: usize = 3 * 512 * 1024;
/// The API server's limit on a Secret's values, and on a ConfigMap's keys and values: 1 MiB.
pub const DATA_LIMIT: usize = 1024 * 1024;

/// How a test gets its client: the fake API server with the real one's rules in front.
pub trait StrictBuild {
    /// Builds the fake API server, checks its starting objects, and returns a client whose
    /// every write is checked first.
    async fn strict(self) -> Client;
}

impl StrictBuild for ClientBuilder {
    async fn strict(self) -> Client {
        self.strict_with_journal().await.0
    }
}

impl ClientBuilderJournal for ClientBuilder {
    async fn strict_with_journal(self) -> (Client, Journal) {
        let inner = self.build().await.expect("the fake API server builds");
        let strict = Strict {
            inner,
            journal: Journal::default(),
        };
        strict.check_seeds().await;
        // The counter after the starting objects: where lists and watches begin.
        let start = strict.next_version().await;
        strict.journal.lock().latest = start;
        strict.journal.lock().compacted = start;
        let journal = strict.journal.clone();
        (Client::new(strict, "default"), journal)
    }
}

/// [`StrictBuild`] that also hands over the fake's [`Journal`] (to compact it, or to end its
/// watches, as a restarted API server would).
pub trait ClientBuilderJournal {
    /// The strict client and the journal its watches are served from.
    async fn strict_with_journal(self) -> (Client, Journal);
}

/// A response body of the strict fake: whole, or a watch's stream of lines.
pub type StrictBody = http_body_util::combinators::UnsyncBoxBody<
    bytes::Bytes,
    Box<dyn std::error::Error + Send + Sync>,
>;

fn whole(bytes: impl Into<bytes::Bytes>) -> StrictBody {
    use http_body_util::BodyExt as _;
    http_body_util::Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

fn boxed(body: Body) -> StrictBody {
    use http_body_util::BodyExt as _;
    body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        .boxed_unsync()
}

/// One write as a watch event: the collection it belongs to, its resourceVersion, and the
/// event line as the API server sends it.
struct Logged {
    version: u64,
    /// `group/plural`.
    resource: String,
    namespace: String,
    line: bytes::Bytes,
}

/// Every write made through the strict client since the client was built (or since the last
/// [`Journal::compact`]), in resourceVersion order: what its watches serve. kube-fake-client
/// has no watch; this is the real server's watch cache in miniature (a window of events, 410
/// Gone below it).
#[derive(Clone, Default)]
pub struct Journal(std::sync::Arc<JournalInner>);

#[derive(Default)]
struct JournalInner {
    state: std::sync::Mutex<JournalState>,
    /// Writes are serialized, as etcd serializes them: the log's order is resourceVersion
    /// order, and a list's resourceVersion is exactly the writes it contains.
    writes: tokio::sync::Mutex<()>,
    /// Moves on every logged event and every compaction; open watches wait on it.
    moved: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
}

#[derive(Default)]
struct JournalState {
    events: std::collections::VecDeque<Logged>,
    /// The newest resourceVersion.
    latest: u64,
    /// Events at or below this are gone: a watch from an older resourceVersion is 410.
    compacted: u64,
    /// Bumped by [`Journal::end_watches`]: open watches end.
    epoch: u64,
    /// While set, open watches deliver nothing (a watch that lags behind the writes).
    held: bool,
    /// Lists being read a page at a time, by (path and query, resourceVersion).
    snapshots: HashMap<(String, u64), std::sync::Arc<Value>>,
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, JournalState> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn moved(&self) -> &tokio::sync::watch::Sender<u64> {
        self.0
            .moved
            .get_or_init(|| tokio::sync::watch::channel(0).0)
    }
    fn log(&self, version: u64, resource: String, namespace: String, kind: &str, object: &Value) {
        let line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON");
        let mut line = line;
        line.push(b'\n');
        let mut s = self.lock();
        s.latest = s.latest.max(version);
        s.events.push_back(Logged {
            version,
            resource,
            namespace,
            line: line.into(),
        });
        drop(s);
        self.moved().send_modify(|n| *n += 1);
    }
    fn snapshot(&self, key: &str, version: u64) -> Option<std::sync::Arc<Value>> {
        self.lock()
            .snapshots
            .get(&(key.to_owned(), version))
            .cloned()
    }
    fn keep_snapshot(&self, key: &str, version: u64, list: std::sync::Arc<Value>) {
        let mut s = self.lock();
        // A few lists at a time, as the real server keeps continuations for a while only.
        if s.snapshots.len() > 16 {
            s.snapshots.clear();
        }
        s.snapshots.insert((key.to_owned(), version), list);
    }
    fn drop_snapshot(&self, key: &str, version: u64) {
        self.lock().snapshots.remove(&(key.to_owned(), version));
    }
    /// The newest resourceVersion.
    pub fn latest(&self) -> u64 {
        self.lock().latest
    }
    /// Forgets every event so far (etcd's compaction): a watch that resumes from a version
    /// before now gets 410 Gone and must list again.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.events.clear();
        s.compacted = s.latest;
    }
    /// Ends every open watch (an API server restart); the clients watch again from the last
    /// version they saw.
    pub fn end_watches(&self) {
        self.lock().epoch += 1;
        self.moved().send_modify(|n| *n += 1);
    }
    /// Holds every open watch's events back (true) or lets them go (false): a watch that
    /// lags behind the writes, as a busy API server's may.
    pub fn hold_watches(&self, held: bool) {
        self.lock().held = held;
        self.moved().send_modify(|n| *n += 1);
    }
}

/// One custom resource kind as its CRD declares it.
struct Kind {
    kind: String,
    /// Version name → its `openAPIV3Schema`.
    schemas: HashMap<String, Value>,
    status: bool,
}

/// The CRDs in operator/crds/hevlayer.com.yaml, by `group/plural`.
fn crds() -> &'static HashMap<String, Kind> {
    static CRDS: OnceLock<HashMap<String, Kind>> = OnceLock::new();
    CRDS.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/hevlayer.com.yaml");
        let text = std::fs::read_to_string(&path).expect("operator/crds/hevlayer.com.yaml");
        let mut out = HashMap::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("CRD YAML");
            if v.is_null() {
                continue;
            }
            let spec = &v["spec"];
            let mut status = false;
            let mut schemas = HashMap::new();
            for ver in spec["versions"].as_array().expect("versions") {
                status |= ver["subresources"]["status"].is_object();
                schemas.insert(
                    ver["name"].as_str().expect("version name").to_string(),
                    ver["schema"]["openAPIV3Schema"].clone(),
                );
            }
            out.insert(
                format!(
                    "{}/{}",
                    spec["group"].as_str().expect("group"),
                    spec["names"]["plural"].as_str().expect("plural")
                ),
                Kind {
                    kind: spec["names"]["kind"].as_str().expect("kind").to_string(),
                    schemas,
                    status,
                },
            );
        }
        out
    })
}

/// A request path taken apart: `/api/v1/namespaces/ns/secrets/name` or
/// `/apis/group/version/namespaces/ns/plural/name/status`.
#[derive(Debug)]
struct Target {
    group: String,
    version: String,
    plural: String,
    name: Option<String>,
    status: bool,
    /// The path without `/status`, to read the stored object.
    object_path: String,
}

fn target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match *segs.first()? {
        "api" => ("", *segs.get(1)?, &segs[2..]),
        "apis" => (*segs.get(1)?, *segs.get(2)?, &segs[3..]),
        _ => return None,
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        &rest[2..]
    } else {
        rest
    };
    let status = rest.get(2) == Some(&"status");
    let object_path = if status {
        path.trim_end_matches("/status").to_string()
    } else {
        path.to_string()
    };
    Some(Target {
        group: group.into(),
        version: version.into(),
        plural: (*rest.first()?).into(),
        name: rest.get(1).map(|s| s.to_string()),
        status,
        object_path,
    })
}

/// A refusal as the API server words it (a `Status` object).
#[derive(Debug)]
struct Refusal {
    code: u16,
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn invalid(what: &str, errors: &[String]) -> Self {
        Refusal {
            code: 422,
            reason: "Invalid",
            message: format!("{what} is invalid: {}", errors.join(", ")),
        }
    }
    fn response(&self) -> hyper::Response<Body> {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        hyper::Response::builder()
            .status(self.code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&status).expect("JSON")))
            .expect("a response")
    }
}

/// The layer in front of the fake API server (see the module's documentation).
#[derive(Clone)]
pub struct Strict {
    inner: Client,
    journal: Journal,
}

impl tower_service::Service<hyper::Request<Body>> for Strict {
    type Response = hyper::Response<StrictBody>;
    type Error = kube::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, kube::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), kube::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: hyper::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let m = req.method().clone();
            if m == hyper::Method::GET {
                return this.read(req).await;
            }
            if m == hyper::Method::DELETE {
                return this.delete(req).await;
            }
            if m != hyper::Method::POST && m != hyper::Method::PUT && m != hyper::Method::PATCH {
                return this.inner.send(req).await.map(|r| r.map(boxed));
            }
            let (mut parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await?;
            match this.admit(&parts, &bytes).await {
                Ok(body) => {
                    parts.headers.remove(hyper::header::CONTENT_LENGTH);
                    let _serial = this.journal.0.writes.lock().await;
                    let existed = match target(parts.uri.path()) {
                        Some(t) if t.name.is_some() && parts.method != hyper::Method::POST => {
                            this.stored(&t.object_path).await.is_some()
                        }
                        _ => false,
                    };
                    let path = parts.uri.path().to_owned();
                    let response = this
                        .inner
                        .send(hyper::Request::from_parts(parts, Body::from(body)))
                        .await?;
                    let kind = if existed { "MODIFIED" } else { "ADDED" };
                    this.logged(&path, kind, response).await
                }
                Err(refusal) => Ok(refusal.response().map(boxed)),
            }
        })
    }
}

/// The query of a request as (name, value) pairs.
fn query_pairs(uri: &hyper::Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The namespace of a path (`""` for a cluster-wide collection).
fn namespace_of(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segs.iter()
        .position(|s| *s == "namespaces")
        .and_then(|i| segs.get(i + 1))
        .map_or_else(String::new, |s| (*s).to_owned())
}

impl Strict {
    /// Takes the next resourceVersion of the fake's counter (a throwaway ConfigMap is created
    /// and removed: kube-fake-client does not give a deletion a version of its own, the real
    /// server does).
    async fn next_version(&self) -> u64 {
        let path = "/api/v1/namespaces/kube-fake-journal/configmaps";
        let name = format!("v{}", std::process::id());
        let req = hyper::Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": "kube-fake-journal"}}))
                .expect("JSON"),
            ))
            .expect("a request");
        let resp = self.inner.send(req).await.expect("the fake answers");
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect_bytes().await.expect("a body"))
                .expect("JSON");
        let del = hyper::Request::delete(format!("{path}/{name}"))
            .body(Body::empty())
            .expect("a request");
        let _ = self.inner.send(del).await;
        v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("a resourceVersion")
    }

    /// A successful write's answer, logged as `kind` for the watches of its collection.
    async fn logged(
        &self,
        path: &str,
        kind: &str,
        response: hyper::Response<Body>,
    ) -> Result<hyper::Response<StrictBody>, kube::Error> {
        let (mut parts, body) = response.into_parts();
        let bytes = body.collect_bytes().await?;
        if parts.status.is_success() {
            if let (Some(t), Ok(object)) = (target(path), serde_json::from_slice::<Value>(&bytes)) {
                let version = object["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|r| r.parse::<u64>().ok());
                if let Some(version) = version {
                    let ns = object["metadata"]["namespace"]
                        .as_str()
                        .map_or_else(|| namespace_of(path), str::to_owned);
                    self.journal.log(
                        version,
                        format!("{}/{}", t.group, t.plural),
                        ns,
                        kind,
                        &object,
                    );
                }
            }
        }
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
        Ok(hyper::Response::from_parts(parts, whole(bytes)))
    }

    /// A DELETE, and a DELETED event for the object and for each dependent the fake's
    /// garbage collection took with it (each at a version of its own, as the real server
    /// gives one).
    async fn delete(
        &self,
        req: hyper::Request<Body>,
    ) -> Result<hyper::Response<StrictBody>, kube::Error> {
        let path = req.uri().path().to_owned();
        let _serial = self.journal.0.writes.lock().await;
        let Some(t) = target(&path).filter(|t| t.name.is_some()) else {
            return self.inner.send(req).await.map(|r| r.map(boxed));
        };
        let ns = namespace_of(&path);
        // Who could go with it: objects of the namespace that name it as an owner.
        let uid = self
            .stored(&t.object_path)
            .await
            .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned));
        let mut dependents = Vec::new();
        if let Some(uid) = &uid {
            for (collection, resource) in [
                (format!("/api/v1/namespaces/{ns}/secrets"), "/secrets"),
                (format!("/api/v1/namespaces/{ns}/configmaps"), "/configmaps"),
            ] {
                let Some(list) = self.stored(&collection).await else {
                    continue;
                };
                for item in list["items"].as_array().into_iter().flatten() {
                    let owned = item["metadata"]["ownerReferences"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|o| o["uid"].as_str() == Some(uid));
                    if owned {
                        let name = item["metadata"]["name"].as_str().unwrap_or_default();
                        dependents.push((format!("{collection}/{name}"), resource, item.clone()));
                    }
                }
            }
        }
        let response = self.inner.send(req).await?;
        let (mut parts, body) = response.into_parts();
        let bytes = body.collect_bytes().await?;
        if parts.status.is_success() {
            if let Ok(mut object) = serde_json::from_slice::<Value>(&bytes) {
                if object["metadata"]["name"].is_string() {
                    let v = self.next_version().await;
                    object["metadata"]["resourceVersion"] = json!(v.to_string());
                    self.journal.log(
                        v,
                        format!("{}/{}", t.group, t.plural),
                        ns.clone(),
                        "DELETED",
                        &object,
                    );
                }
            }
            for (p, resource, mut object) in dependents {
                if self.stored(&p).await.is_none() {
                    let v = self.next_version().await;
                    object["metadata"]["resourceVersion"] = json!(v.to_string());
                    self.journal
                        .log(v, resource.to_owned(), ns.clone(), "DELETED", &object);
                }
            }
        }
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
        Ok(hyper::Response::from_parts(parts, whole(bytes)))
    }

    /// GETs: a watch is served from the journal; a LIST carries the resourceVersion it was
    /// read at and, with `limit`, is answered a page at a time with a `continue` token, as
    /// the real server does (kube-fake-client cuts the list at `limit` and gives no token,
    /// which would lose every object past the first page without a sound). Other GETs pass
    /// through.
    async fn read(
        &self,
        req: hyper::Request<Body>,
    ) -> Result<hyper::Response<StrictBody>, kube::Error> {
        let pairs = query_pairs(req.uri());
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let collection = target(req.uri().path()).is_some_and(|t| t.name.is_none());
        if !collection {
            return self.inner.send(req).await.map(|r| r.map(boxed));
        }
        if get("watch").is_some_and(|w| w == "true" || w == "1") {
            return Ok(self.watch(req.uri()));
        }
        let limit = get("limit").and_then(|l| l.parse::<usize>().ok());
        // continue token: page-<offset>-<resourceVersion of the first page>
        let token = get("continue").and_then(|c| {
            let rest = c.strip_prefix("page-")?;
            let (from, version) = rest.split_once('-')?;
            Some((from.parse::<usize>().ok()?, version.parse::<u64>().ok()?))
        });
        let rest: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k != "limit" && k != "continue")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let key = format!("{path}?{}", rest.join("&"));
        // A continued list reads the snapshot its first page was cut from, as the real server
        // reads etcd at the first page's revision; a token whose snapshot is gone is 410.
        if let Some((from, version)) = token {
            let Some(snapshot) = self.journal.snapshot(&key, version) else {
                return Ok(Refusal {
                    code: 410,
                    reason: "Expired",
                    message: "The provided continue parameter is too old to display a \
                              consistent list result. You can start a new list without the \
                              continue parameter."
                        .into(),
                }
                .response()
                .map(boxed));
            };
            return Ok(self.page(&key, &snapshot, from, limit, version));
        }
        parts.uri = if rest.is_empty() {
            path
        } else {
            format!("{path}?{}", rest.join("&"))
        }
        .parse()
        .expect("a URI");
        // A list is a snapshot at one version: no write lands while it is read.
        let (response, latest) = {
            let _serial = self.journal.0.writes.lock().await;
            let r = self
                .inner
                .send(hyper::Request::from_parts(parts, body))
                .await?;
            (r, self.journal.latest())
        };
        let (parts, body) = response.into_parts();
        let bytes = body.collect_bytes().await?;
        let Ok(list) = serde_json::from_slice::<Value>(&bytes) else {
            return Ok(hyper::Response::from_parts(parts, whole(bytes)));
        };
        if !parts.status.is_success() || list.get("items").is_none() {
            return Ok(hyper::Response::from_parts(parts, whole(bytes)));
        }
        let snapshot = std::sync::Arc::new(list);
        Ok(self.page(&key, &snapshot, 0, limit, latest))
    }

    /// One page of a list snapshot taken at `version`; the snapshot is kept for the next
    /// page while there is one.
    fn page(
        &self,
        key: &str,
        snapshot: &std::sync::Arc<Value>,
        from: usize,
        limit: Option<usize>,
        version: u64,
    ) -> hyper::Response<StrictBody> {
        let items = snapshot["items"].as_array().map_or(&[][..], Vec::as_slice);
        let total = items.len();
        let take = limit.unwrap_or(total);
        let mut list = json!({
            "kind": snapshot["kind"], "apiVersion": snapshot["apiVersion"],
            "metadata": {"resourceVersion": version.to_string()},
            "items": items.iter().skip(from).take(take).collect::<Vec<_>>(),
        });
        if from + take < total {
            list["metadata"]["continue"] = json!(format!("page-{}-{version}", from + take));
            self.journal.keep_snapshot(key, version, snapshot.clone());
        } else {
            self.journal.drop_snapshot(key, version);
        }
        hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(whole(serde_json::to_vec(&list).expect("JSON")))
            .expect("a response")
    }

    /// A watch, as the real server answers one: 200 and a stream of newline-delimited
    /// `{"type","object"}` events of the collection after `resourceVersion`; an ERROR event
    /// with a 410 `Expired` Status when that version is older than the journal keeps; a
    /// BOOKMARK at the newest version before the stream ends at `timeoutSeconds` (when
    /// bookmarks were asked for). A watch from no version or "0" (the current state first)
    /// and selectors are refused: the operator sends neither, and an unfiltered answer to a
    /// filtered watch would be wrong.
    fn watch(&self, uri: &hyper::Uri) -> hyper::Response<StrictBody> {
        use futures::SinkExt as _;
        let pairs = query_pairs(uri);
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let refuse = |message: &str| {
            Refusal {
                code: 400,
                reason: "BadRequest",
                message: message.to_owned(),
            }
            .response()
            .map(boxed)
        };
        if get("labelSelector").is_some_and(|v| !v.is_empty())
            || get("fieldSelector").is_some_and(|v| !v.is_empty())
        {
            return refuse("this fake API server does not filter watches by selector");
        }
        let Some(from) = get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
        else {
            return refuse("this fake API server watches only from a list's resourceVersion");
        };
        let timeout = get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(1800);
        let bookmarks = get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let t = target(uri.path()).expect("a collection");
        let resource = format!("{}/{}", t.group, t.plural);
        let ns = namespace_of(uri.path());
        let journal = self.journal.clone();
        let (mut tx, rx) = futures::channel::mpsc::channel::<
            Result<hyper::body::Frame<bytes::Bytes>, Box<dyn std::error::Error + Send + Sync>>,
        >(64);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
            let mut moved = journal.moved().subscribe();
            let mut cursor = from;
            let epoch = journal.lock().epoch;
            let mut last_round = false;
            loop {
                let held = {
                    let s = journal.lock();
                    s.held && s.epoch == epoch
                };
                if held {
                    if moved.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let (lines, expired, ended, latest) = {
                    let s = journal.lock();
                    let expired = cursor < s.compacted;
                    let start = s.events.partition_point(|e| e.version <= cursor);
                    let lines: Vec<(u64, bytes::Bytes)> = s
                        .events
                        .iter()
                        .skip(start)
                        .filter(|e| e.resource == resource && (ns.is_empty() || e.namespace == ns))
                        .map(|e| (e.version, e.line.clone()))
                        .collect();
                    let last = s.events.back().map_or(cursor, |e| e.version.max(cursor));
                    (lines, expired, s.epoch != epoch, last)
                };
                if expired {
                    let gone = json!({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("too old resource version: {cursor}"),
                        "reason": "Expired", "code": 410}});
                    let mut line = serde_json::to_vec(&gone).expect("JSON");
                    line.push(b'\n');
                    let _ = tx.send(Ok(hyper::body::Frame::data(line.into()))).await;
                    return;
                }
                for (_, line) in lines {
                    if tx.send(Ok(hyper::body::Frame::data(line))).await.is_err() {
                        return;
                    }
                }
                cursor = latest;
                if ended {
                    return;
                }
                if last_round {
                    // Everything up to `cursor` was sent: the client may resume from there.
                    if bookmarks {
                        let mark = json!({"type": "BOOKMARK", "object": {
                            "kind": t.plural.clone(), "apiVersion": "v1",
                            "metadata": {"resourceVersion": cursor.to_string()}}});
                        let mut line = serde_json::to_vec(&mark).expect("JSON");
                        line.push(b'\n');
                        let _ = tx.send(Ok(hyper::body::Frame::data(line.into()))).await;
                    }
                    return;
                }
                tokio::select! {
                    r = moved.changed() => if r.is_err() { return },
                    () = tokio::time::sleep_until(deadline) => last_round = true,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                        if tx.is_closed() { return; }
                    }
                }
            }
        });
        use http_body_util::BodyExt as _;
        hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(http_body_util::StreamBody::new(rx).boxed_unsync())
            .expect("a response")
    }

    /// Checks one write; returns the body to forward (with `status` dropped where the real
    /// server drops it) or the refusal.
    async fn admit(
        &self,
        parts: &hyper::http::request::Parts,
        bytes: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        if bytes.len() > REQUEST_LIMIT {
            return Err(Refusal {
                code: 413,
                reason: "RequestEntityTooLarge",
                message: format!(
                    "Request entity too large: {} bytes, limit is {REQUEST_LIMIT}",
                    bytes.len()
                ),
            });
        }
        let Some(t) = target(parts.uri.path()) else {
            return Ok(bytes.to_vec());
        };
        let mut body: Value = serde_json::from_slice(bytes).map_err(|e| Refusal {
            code: 400,
            reason: "BadRequest",
            message: format!("the body is not JSON: {e}"),
        })?;
        let crd = crds().get(&format!("{}/{}", t.group, t.plural));
        let has_status = crd.is_some_and(|k| k.status);
        let content_type = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if content_type.contains("json-patch") {
            return Err(Refusal {
                code: 415,
                reason: "UnsupportedMediaType",
                message: "JSON patches are not checked by this fake API server; the operator \
                          does not send them"
                    .into(),
            });
        }
        // The status subresource: only `status` goes through it; anything else keeps `status`
        // out.
        if has_status {
            if let Some(o) = body.as_object_mut() {
                if t.status {
                    o.retain(|k, _| {
                        matches!(k.as_str(), "status" | "apiVersion" | "kind" | "metadata")
                    });
                } else {
                    o.remove("status");
                }
            }
        }
        let existing = match (&t.name, parts.method == hyper::Method::POST) {
            (Some(_), false) => self.stored(&t.object_path).await,
            _ => None,
        };
        let result = if parts.method == hyper::Method::PATCH {
            let mut base = existing.clone().unwrap_or_else(|| json!({}));
            merge(&mut base, &body);
            base
        } else {
            let mut r = body.clone();
            if let (Some(old), true) = (&existing, has_status) {
                // What the stored object keeps: its status on a main write, its spec on a
                // status write.
                let keep = if t.status { "spec" } else { "status" };
                match old.get(keep) {
                    Some(v) => r[keep] = v.clone(),
                    None => {
                        if let Some(o) = r.as_object_mut() {
                            o.remove(keep);
                        }
                    }
                }
            }
            r
        };
        let name = result["metadata"]["name"]
            .as_str()
            .or(t.name.as_deref())
            .unwrap_or_default()
            .to_string();
        check_object(&t, crd, &name, &result)?;
        serde_json::to_vec(&body).map_err(|e| Refusal {
            code: 500,
            reason: "InternalError",
            message: e.to_string(),
        })
    }

    /// The stored object at `path`, if there is one.
    async fn stored(&self, path: &str) -> Option<Value> {
        let req = hyper::Request::get(path).body(Body::empty()).ok()?;
        let resp = self.inner.send(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        serde_json::from_slice(&resp.into_body().collect_bytes().await.ok()?).ok()
    }

    /// The builder's starting objects: every one must be an object the real server would hold.
    async fn check_seeds(&self) {
        let mut lists: Vec<(String, String)> = vec![
            ("/api/v1/secrets".into(), "secrets".into()),
            ("/api/v1/configmaps".into(), "configmaps".into()),
        ];
        for (key, kind) in crds() {
            let (group, plural) = key.split_once('/').expect("group/plural");
            for version in kind.schemas.keys() {
                lists.push((format!("/apis/{group}/{version}/{plural}"), plural.into()));
            }
        }
        for (path, _) in lists {
            let Some(list) = self.stored(&path).await else {
                continue;
            };
            for item in list["items"].as_array().into_iter().flatten() {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let t = target(&format!("{path}/{name}")).expect("a list path");
                let crd = crds().get(&format!("{}/{}", t.group, t.plural));
                if let Err(r) = check_object(&t, crd, name, item) {
                    panic!(
                        "a starting object the real API server would refuse: {}",
                        r.message
                    );
                }
            }
        }
    }
}

/// JSON merge patch (RFC 7386), which is also how the fake applies strategic-merge and
/// server-side-apply patches.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (_, Some(_)) => {
            *target = json!({});
            merge(target, patch);
        }
        _ => *target = patch.clone(),
    }
}

/// Whether `name` is a DNS-1123 subdomain (what Kubernetes requires of most object names).
pub fn dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn check_object(t: &Target, crd: Option<&Kind>, name: &str, obj: &Value) -> Result<(), Refusal> {
    let what = format!(
        "{} \"{name}\"",
        crd.map(|k| k.kind.as_str()).unwrap_or(t.plural.as_str())
    );
    let mut errors = Vec::new();
    // A generated name is made valid by the server; only a given one is checked.
    if obj["metadata"]["generateName"].is_null() && !dns1123_subdomain(name) {
        errors.push(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of \
             lower case alphanumeric characters, '-' or '.', and must start and end with an \
             alphanumeric character, at most 253 characters"
        ));
    }
    match (t.group.as_str(), t.plural.as_str()) {
        ("", "secrets") => {
            let mut total = 0usize;
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                {
                    Ok(b) => total += b.len(),
                    Err(_) => errors.push(format!("data[{k}]: Invalid value: not base64")),
                }
                config_key(k, "data", &mut errors);
            }
            for (k, v) in obj["stringData"].as_object().into_iter().flatten() {
                total += v.as_str().map_or(0, str::len);
                config_key(k, "stringData", &mut errors);
            }
            if total > DATA_LIMIT {
                errors.push(format!(
                    "data: Too long: must have at most {DATA_LIMIT} bytes (has {total})"
                ));
            }
        }
        ("", "configmaps") => {
            let mut total = 0usize;
            for field in ["data", "binaryData"] {
                for (k, v) in obj[field].as_object().into_iter().flatten() {
                    total += k.len() + v.as_str().map_or(0, str::len);
                    config_key(k, field, &mut errors);
                }
            }
            if total > DATA_LIMIT {
                errors.push(format!(
                    "[]: Too long: must have at most {DATA_LIMIT} bytes (has {total})"
                ));
            }
        }
        _ => {}
    }
    if let Some(kind) = crd {
        match kind.schemas.get(&t.version) {
            Some(schema) => {
                let mut root = obj.clone();
                if let Some(o) = root.as_object_mut() {
                    // Checked by the server itself, not by the CRD's schema.
                    o.remove("metadata");
                    o.remove("apiVersion");
                    o.remove("kind");
                }
                validate(schema, &root, "", &mut errors);
            }
            None => errors.push(format!("version {} is not served", t.version)),
        }
    }
    if !errors.is_empty() {
        return Err(Refusal::invalid(&what, &errors));
    }
    // etcd stores Secret and ConfigMap bytes as bytes, not as the base64 of the JSON form.
    let mut size = serde_json::to_vec(obj).map(|v| v.len()).unwrap_or(0);
    for field in ["data", "binaryData"] {
        for v in obj[field].as_object().into_iter().flatten() {
            let b64 = v.1.as_str().map_or(0, str::len);
            if t.group.is_empty() && (t.plural == "secrets" || field == "binaryData") {
                size -= b64 - b64 / 4 * 3;
            }
        }
    }
    if size > STORE_LIMIT {
        return Err(Refusal {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!(
                "etcdserver: request is too large ({size} bytes, limit is {STORE_LIMIT})"
            ),
        });
    }
    Ok(())
}

/// A Secret or ConfigMap key: `[-._a-zA-Z0-9]+`, at most 253 characters.
fn config_key(k: &str, field: &str, errors: &mut Vec<String>) {
    if k.is_empty()
        || k.len() > 253
        || !k
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
    {
        errors.push(format!(
            "{field}[{k}]: Invalid value: {k:?}: a valid config key must consist of alphanumeric \
             characters, '-', '_' or '.'"
        ));
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Validates `v` against the subset of structural OpenAPI v3 the generated CRDs use.
pub fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if schema["nullable"].as_bool() != Some(true) {
            errors.push(format!(
                "{shown}: Invalid value: \"null\": {shown} in body must not be null"
            ));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            errors.push(format!(
                "{shown}: Unsupported value: {v}: supported values: {}",
                allowed
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    let ty = schema["type"].as_str().unwrap_or_default();
    let type_ok = match ty {
        "" => true,
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string() || (int_or_string && (v.is_i64() || v.is_u64())),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        other => {
            errors.push(format!("{shown}: the schema names an unknown type {other}"));
            return;
        }
    };
    if !type_ok {
        errors.push(format!(
            "{shown}: Invalid value: {v}: {shown} in body must be of type {ty}"
        ));
        return;
    }
    match v {
        Value::Object(o) => object(schema, o, path, errors),
        Value::Array(items) => {
            if let Some(n) = schema["maxItems"].as_u64() {
                if items.len() as u64 > n {
                    errors.push(format!(
                        "{shown}: Too many: {}: must have at most {n} items",
                        items.len()
                    ));
                }
            }
            if let Some(n) = schema["minItems"].as_u64() {
                if (items.len() as u64) < n {
                    errors.push(format!("{shown}: Invalid value: {}: {shown} in body should have at least {n} items", items.len()));
                }
            }
            if schema["items"].is_object() {
                for (i, item) in items.iter().enumerate() {
                    validate(&schema["items"], item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(n) = schema["maxLength"].as_u64() {
                if chars > n {
                    errors.push(format!("{shown}: Too long: may not be more than {n} bytes"));
                }
            }
            if let Some(n) = schema["minLength"].as_u64() {
                if chars < n {
                    errors.push(format!("{shown}: Invalid value: {s:?}: {shown} in body should be at least {n} chars long"));
                }
            }
            if let Some(p) = schema["pattern"].as_str() {
                if !compiled(p).is_match(s) {
                    errors.push(format!(
                        "{shown}: Invalid value: {s:?}: {shown} in body should match '{p}'"
                    ));
                }
            }
            if schema["format"].as_str() == Some("date-time") && !date_time(s) {
                errors.push(format!(
                    "{shown}: Invalid value: {s:?}: {shown} in body must be of type date-time"
                ));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(max) = schema["maximum"].as_f64() {
                if x > max {
                    errors.push(format!("{shown}: Invalid value: {n}: {shown} in body should be less than or equal to {max}"));
                }
            }
            if let Some(min) = schema["minimum"].as_f64() {
                if x < min {
                    errors.push(format!("{shown}: Invalid value: {n}: {shown} in body should be greater than or equal to {min}"));
                }
            }
        }
        _ => {}
    }
}

fn object(schema: &Value, o: &Map<String, Value>, path: &str, errors: &mut Vec<String>) {
    let props = schema["properties"].as_object();
    for req in schema["required"].as_array().into_iter().flatten() {
        let key = req.as_str().unwrap_or_default();
        // A null in a field that is not nullable is pruned before validation, so it is as
        // good as absent.
        let present = o.get(key).is_some_and(|x| {
            !x.is_null()
                || props
                    .and_then(|p| p.get(key))
                    .is_some_and(|s| s["nullable"] == true)
        });
        if !present {
            errors.push(format!("{}: Required value", join(path, key)));
        }
    }
    let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    for (k, x) in o {
        let child = join(path, k);
        match (
            props.and_then(|p| p.get(k)),
            &schema["additionalProperties"],
        ) {
            (Some(s), _) => {
                if !(x.is_null() && s["nullable"] != true) {
                    validate(s, x, &child, errors);
                }
            }
            (None, add) if add.is_object() => validate(add, x, &child, errors),
            (None, add) if add == &Value::Bool(true) || preserve => {}
            (None, _) => errors.push(format!(
                "{child}: unknown field (the real API server drops it, with a warning)"
            )),
        }
    }
}

/// `pattern` compiled once per process (a write at 100,000 keys was mostly compiling them).
fn compiled(pattern: &str) -> regex::Regex {
    static CACHE: OnceLock<std::sync::Mutex<HashMap<String, regex::Regex>>> = OnceLock::new();
    CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(pattern.to_owned())
        .or_insert_with(|| regex::Regex::new(pattern).expect("the pattern compiles"))
        .clone()
}

/// RFC 3339 date-time, as Kubernetes' `date-time` format takes it.
fn date_time(s: &str) -> bool {
    compiled(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$").is_match(s)
}

/// A kube client over the fake API server that records every request (method, path, query)
/// and can hold each LIST (a pass's reads) for a while: a slow API server.
#[derive(Clone)]
pub struct Tap {
    inner: Client,
    /// Every request: (method, path, query).
    pub calls: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    /// Milliseconds each LIST is held (0: not held).
    pub slow_lists_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Tap {
    /// Records what goes through to `inner`.
    pub fn new(inner: &Client) -> Tap {
        Tap {
            inner: inner.clone(),
            calls: std::sync::Arc::default(),
            slow_lists_ms: std::sync::Arc::default(),
        }
    }
    /// A client through the tap, `namespace` its default.
    pub fn client(&self, namespace: &str) -> Client {
        Client::new(self.clone(), namespace)
    }
}

impl tower_service::Service<hyper::Request<kube::client::Body>> for Tap {
    type Response = hyper::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, kube::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), kube::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: hyper::Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            this.calls
                .lock()
                .unwrap()
                .push((method.clone(), path.clone(), query.clone()));
            let segments = path.trim_start_matches('/').split('/').count();
            // A collection: /api/v1/namespaces/NS/R (5) or /apis/G/V/namespaces/NS/R (6).
            let collection = segments == if path.starts_with("/api/") { 5 } else { 6 };
            let slow = this.slow_lists_ms.load(std::sync::atomic::Ordering::SeqCst);
            if method == "GET" && collection && !query.contains("watch") && slow > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
            }
            this.inner.send(req).await
        })
    }
}

/// The Kubernetes API calls a set of recorded requests made: (group, resource, verb).
pub fn permissions_used(
    calls: &[(String, String, String)],
) -> std::collections::BTreeSet<(String, String, String)> {
    calls
        .iter()
        .map(|(method, path, query)| {
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            // api/v1/namespaces/NS/R[/NAME[/SUB]] or apis/G/V/namespaces/NS/R[/NAME[/SUB]]
            let (group, rest) = if segs[0] == "api" {
                ("", &segs[4..])
            } else {
                (segs[1], &segs[5..])
            };
            let resource = match rest {
                [r, _, sub] => format!("{r}/{sub}"),
                [r, ..] => (*r).to_owned(),
                [] => panic!("{path}"),
            };
            let verb = match (method.as_str(), rest.len()) {
                ("GET", 1) if query.contains("watch=true") => "watch",
                ("GET", 1) => "list",
                ("GET", _) => "get",
                ("POST", _) => "create",
                ("PUT", _) => "update",
                ("PATCH", _) => "patch",
                ("DELETE", _) => "delete",
                (m, _) => panic!("{m} {path}"),
            };
            (group.to_owned(), resource, verb.to_owned())
        })
        .collect()
}

/// Asserts that the first Role in the YAML file `path` grants exactly `table`: every
/// (group, resource, verb, resourceName), none twice, none more, none less.
pub fn assert_role_is(path: &std::path::Path, table: &[layergate_operator::rbac::Permission]) {
    use std::collections::BTreeSet;
    let text = std::fs::read_to_string(path).unwrap();
    let role = text
        .split("\n---")
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap())
        .find(|d| d["kind"] == "Role")
        .unwrap();
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let names = list("resourceNames");
        assert!(names.len() <= 1, "{rule}");
        for g in list("apiGroups") {
            for r in list("resources") {
                for v in list("verbs") {
                    let name = names.first().cloned();
                    assert!(
                        granted.insert((g.clone(), r.clone(), v, name)),
                        "{rule}: twice"
                    );
                }
            }
        }
    }
    let want: BTreeSet<_> = table
        .iter()
        .map(|p| {
            (
                p.group.to_owned(),
                p.resource.to_owned(),
                p.verb.to_owned(),
                p.name.map(str::to_owned),
            )
        })
        .collect();
    let none = Vec::<&(String, String, String, Option<String>)>::new();
    assert_eq!(
        granted.difference(&want).collect::<Vec<_>>(),
        none,
        "{}: the Role grants more than rbac.rs",
        path.display()
    );
    assert_eq!(
        want.difference(&granted).collect::<Vec<_>>(),
        none,
        "{}: the Role grants less than rbac.rs",
        path.display()
    );
}

/// The demo manifests as API objects; Secrets' `stringData` becomes `data`, as an API server
/// stores it.
pub fn demo_objects() -> Vec<Value> {
    use base64::Engine as _;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/demo/manifests");
    let mut out = Vec::new();
    for file in [
        "secrets.yaml",
        "vectorstores.yaml",
        "indexes.yaml",
        "apikeys.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for doc in text.split("\n---") {
            let mut v: Value = serde_yaml::from_str(doc).unwrap();
            if v.is_null() {
                continue;
            }
            if let Some(sd) = v.as_object_mut().and_then(|o| o.remove("stringData")) {
                let data: serde_json::Map<String, Value> = sd
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, x)| {
                        let b64 =
                            base64::engine::general_purpose::STANDARD.encode(x.as_str().unwrap());
                        (k.clone(), json!(b64))
                    })
                    .collect();
                v["data"] = Value::Object(data);
            }
            out.push(v);
        }
    }
    out
}

/// The gateway settings kube mode runs with in these tests: the in-cluster listener and
/// wasm path, and the operator's Service as the control API.
pub fn kube_settings() -> layergate_operator::output::Settings {
    layergate_operator::output::Settings {
        listen: "0.0.0.0:8080".parse().unwrap(),
        admin: "127.0.0.1:9901".parse().unwrap(),
        wasm_path: "/etc/layergate/wasm/layergate_filter.wasm".into(),
        control: Some(("layergate-operator.layer.svc".into(), 9902)),
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        limits: Default::default(),
    }
}

/// Waits (at most 10 s) until `c`'s caches hold every VectorStore, Index, ApiKey and Secret
/// of `namespace` at the version the API server holds (listed through `c`'s client).
pub async fn settle(c: &layergate_operator::cluster::Cluster, namespace: &str) {
    use k8s_openapi::api::core::v1::Secret;
    use layergate_operator::crd::{ApiKey, Index, VectorStore};
    async fn versions<K>(
        client: &Client,
        ns: &str,
    ) -> Option<std::collections::BTreeMap<String, String>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let list = kube::Api::<K>::namespaced(client.clone(), ns)
            .list(&Default::default())
            .await
            .ok()?;
        Some(
            list.items
                .iter()
                .map(|o| {
                    (
                        o.meta().name.clone().unwrap_or_default(),
                        o.meta().resource_version.clone().unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }
    let caches = c.caches();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let want = [
            (
                "VectorStore",
                versions::<VectorStore>(&c.client, namespace).await,
            ),
            ("Index", versions::<Index>(&c.client, namespace).await),
            ("ApiKey", versions::<ApiKey>(&c.client, namespace).await),
            ("Secret", versions::<Secret>(&c.client, namespace).await),
        ];
        // An API server that does not answer lists: nothing to wait for.
        if want.iter().any(|(_, v)| v.is_none()) {
            return;
        }
        let have = caches.versions();
        if caches.is_synced() && want.iter().all(|(k, v)| have.get(k) == v.as_ref()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// This process's resident set, in bytes (Linux; 0 elsewhere).
pub fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
