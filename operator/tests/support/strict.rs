//! The fake Kubernetes API the kube-mode tests run against, holding the real API server's rules:
//! the tower Service in front of kube-fake-client and the writes it checks and logs.
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
//! - a name that is not a DNS-1123 subdomain of at most 253 characters (422);
//! - an events.k8s.io/v1 Event the Events API refuses (422): no `eventTime`, a `type` other
//!   than Normal or Warning, the deprecated core/v1 fields set, a `series` under 2,
//!   `reportingController`, `reportingInstance`, `action` or `reason` missing or over 128
//!   bytes, a `note` over 1 kB; and a write over a stored Event that changes anything but its
//!   `series` (its note, reason, regarding object… are immutable).
//!
//! The starting objects given to the builder are checked the same way when the client is made:
//! a real cluster could not hold one the server refuses.

use super::rules::{check_object, crds, merge, REQUEST_LIMIT};
use super::watch::Journal;
use kube::client::Body;
use kube::Client;
use kube_fake_client::ClientBuilder;
use serde_json::{json, Value};

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

pub(super) fn whole(bytes: impl Into<bytes::Bytes>) -> StrictBody {
    use http_body_util::BodyExt as _;
    http_body_util::Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub(super) fn boxed(body: Body) -> StrictBody {
    use http_body_util::BodyExt as _;
    body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        .boxed_unsync()
}

/// A request path taken apart: `/api/v1/namespaces/ns/secrets/name` or
/// `/apis/group/version/namespaces/ns/plural/name/status`.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) group: String,
    pub(super) version: String,
    pub(super) plural: String,
    pub(super) name: Option<String>,
    pub(super) status: bool,
    /// The path without `/status`, to read the stored object.
    pub(super) object_path: String,
}

pub(super) fn target(path: &str) -> Option<Target> {
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
pub(super) struct Refusal {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl Refusal {
    pub(super) fn invalid(what: &str, errors: &[String]) -> Self {
        Refusal {
            code: 422,
            reason: "Invalid",
            message: format!("{what} is invalid: {}", errors.join(", ")),
        }
    }
    pub(super) fn response(&self) -> hyper::Response<Body> {
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
    pub(super) inner: Client,
    pub(super) journal: Journal,
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

/// The namespace of a path (`""` for a cluster-wide collection).
pub(super) fn namespace_of(path: &str) -> String {
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
        check_object(&t, crd, &name, &result, existing.as_ref())?;
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
            ("/apis/events.k8s.io/v1/events".into(), "events".into()),
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
                if let Err(r) = check_object(&t, crd, name, item, None) {
                    panic!(
                        "a starting object the real API server would refuse: {}",
                        r.message
                    );
                }
            }
        }
    }
}
