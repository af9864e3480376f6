//! The strict fake's reads: a journal of every write (the real server's watch cache in
//! miniature) that serves watches, and lists read a page at a time.

use super::strict::{boxed, namespace_of, target, whole, Refusal, Strict, StrictBody};
use kube::client::Body;
use serde_json::{json, Value};
use std::collections::HashMap;

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
pub struct Journal(pub(super) std::sync::Arc<JournalInner>);

#[derive(Default)]
pub(super) struct JournalInner {
    state: std::sync::Mutex<JournalState>,
    /// Writes are serialized, as etcd serializes them: the log's order is resourceVersion
    /// order, and a list's resourceVersion is exactly the writes it contains.
    pub(super) writes: tokio::sync::Mutex<()>,
    /// Moves on every logged event and every compaction; open watches wait on it.
    moved: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
}

#[derive(Default)]
pub(super) struct JournalState {
    events: std::collections::VecDeque<Logged>,
    /// The newest resourceVersion.
    pub(super) latest: u64,
    /// Events at or below this are gone: a watch from an older resourceVersion is 410.
    pub(super) compacted: u64,
    /// Bumped by [`Journal::end_watches`]: open watches end.
    epoch: u64,
    /// While set, open watches deliver nothing (a watch that lags behind the writes).
    held: bool,
    /// Lists being read a page at a time, by (path and query, resourceVersion).
    snapshots: HashMap<(String, u64), std::sync::Arc<Value>>,
}

impl Journal {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, JournalState> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn moved(&self) -> &tokio::sync::watch::Sender<u64> {
        self.0
            .moved
            .get_or_init(|| tokio::sync::watch::channel(0).0)
    }
    pub(super) fn log(
        &self,
        version: u64,
        resource: String,
        namespace: String,
        kind: &str,
        object: &Value,
    ) {
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

impl Strict {
    /// GETs: a watch is served from the journal; a LIST carries the resourceVersion it was
    /// read at and, with `limit`, is answered a page at a time with a `continue` token, as
    /// the real server does (kube-fake-client cuts the list at `limit` and gives no token,
    /// which would lose every object past the first page without a sound). Other GETs pass
    /// through.
    pub(super) async fn read(
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
}
