//! The scripted tour of the demo fixture (`make demo`): each step is a request with the outcome
//! the README documents. The same steps run in an end-to-end test, so the README, the demo and
//! the filter cannot drift apart.

use crate::http::Request;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The demo's minted key `shop-reader` (vectorstore.primary: read, `shop-*`).
pub const SHOP_READER_TOKEN: &str = "hvl_demoShopReader0123456789abcdefABCDEF";

/// Which devstore a forwarded step must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Refused by the gateway: no store may see it.
    None,
    /// The `primary` devstore (key `tpuf-primary-dev-key`).
    Primary,
    /// The `archive` devstore (key `tpuf-archive-dev-key`).
    Archive,
}

/// One request of the tour and its documented outcome.
#[derive(Debug, Clone)]
pub struct Step {
    /// What the step shows.
    pub what: &'static str,
    /// HTTP method.
    pub method: &'static str,
    /// Path and query.
    pub path: &'static str,
    /// Bearer token, if any.
    pub token: Option<&'static str>,
    /// JSON body, if any.
    pub body: Option<serde_json::Value>,
    /// Expected status.
    pub status: u16,
    /// Where it must have gone.
    pub store: Store,
}

fn step(
    what: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<&'static str>,
    status: u16,
    store: Store,
) -> Step {
    Step {
        what,
        method,
        path,
        token,
        body: None,
        status,
        store,
    }
}

/// The tour, in order (later steps read what earlier ones wrote).
pub fn steps() -> Vec<Step> {
    let vector_write = json!({
        "upsert_rows": [{"id": 1, "vector": [0.1, 0.2], "title": "Dune"}, {"id": 2, "vector": [0.9, 0.1], "title": "Emma"}],
        "distance_metric": "cosine_distance"
    });
    let query =
        json!({"rank_by": ["vector", "ANN", [0.1, 0.2]], "top_k": 2, "include_attributes": true});
    let with = |mut s: Step, body: serde_json::Value| {
        s.body = Some(body);
        s
    };
    use Store::{Archive, None as Nowhere, Primary};
    vec![
        with(
            step(
                "demo-rw writes shop-books on primary",
                "POST",
                "/v2/namespaces/shop-books",
                Some("demo-rw-token"),
                200,
                Primary,
            ),
            vector_write.clone(),
        ),
        with(
            step(
                "demo-read queries shop-books",
                "POST",
                "/v2/namespaces/shop-books/query",
                Some("demo-read-token"),
                200,
                Primary,
            ),
            query.clone(),
        ),
        with(
            step(
                "demo-read may not write (403)",
                "POST",
                "/v2/namespaces/shop-books",
                Some("demo-read-token"),
                403,
                Nowhere,
            ),
            json!({"deletes": [1]}),
        ),
        step(
            "no token (401)",
            "GET",
            "/v1/namespaces/shop-books/metadata",
            None,
            401,
            Nowhere,
        ),
        step(
            "unknown token (401)",
            "GET",
            "/v1/namespaces/shop-books/metadata",
            Some("not-a-key"),
            401,
            Nowhere,
        ),
        with(
            step(
                "archive key writes logs-2026 via Index logs",
                "POST",
                "/v2/namespaces/logs-2026",
                Some("tpuf-archive-dev-key"),
                200,
                Archive,
            ),
            vector_write.clone(),
        ),
        with(
            step(
                "default store key is accepted by archive (deriveFromStore)",
                "POST",
                "/v2/namespaces/logs-2026/query",
                Some("tpuf-primary-dev-key"),
                200,
                Archive,
            ),
            query.clone(),
        ),
        step(
            "demo-admin is not a key of archive (401)",
            "GET",
            "/v1/namespaces/logs-2026/metadata",
            Some("demo-admin-token"),
            401,
            Nowhere,
        ),
        with(
            step(
                "shop-reader queries shop-books",
                "POST",
                "/v2/namespaces/shop-books/query",
                Some(SHOP_READER_TOKEN),
                200,
                Primary,
            ),
            query.clone(),
        ),
        with(
            step(
                "shop-reader outside shop-* (403)",
                "POST",
                "/v2/namespaces/blog/query",
                Some(SHOP_READER_TOKEN),
                403,
                Nowhere,
            ),
            query.clone(),
        ),
        with(
            step(
                "shop-reader on store archive (403)",
                "POST",
                "/v2/namespaces/logs-2026/query",
                Some(SHOP_READER_TOKEN),
                403,
                Nowhere,
            ),
            query,
        ),
        step(
            "shop-reader lists namespaces (prefix=shop- added)",
            "GET",
            "/v1/namespaces",
            Some(SHOP_READER_TOKEN),
            200,
            Primary,
        ),
        with(
            step(
                "shop-reader may not write (403)",
                "POST",
                "/v2/namespaces/shop-books",
                Some(SHOP_READER_TOKEN),
                403,
                Nowhere,
            ),
            vector_write,
        ),
        step(
            "demo-admin deletes shop-books",
            "DELETE",
            "/v2/namespaces/shop-books",
            Some("demo-admin-token"),
            200,
            Primary,
        ),
        step(
            "app route without an app upstream (404)",
            "POST",
            "/v2/namespaces/shop-books/documents",
            Some("demo-read-token"),
            404,
            Nowhere,
        ),
    ]
}

/// The outcome of one step.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The step.
    pub step: Step,
    /// Status received (0: no response).
    pub status: u16,
    /// Where it went, when the caller can observe the stores.
    pub reached: Option<Store>,
    /// The gateway's error message, if any.
    pub message: String,
    /// True when status (and store, if observed) are as documented.
    pub ok: bool,
}

/// Runs the tour against a gateway. `observe` returns the request counts of (primary,
/// archive) when the caller can see the devstores; the tour then also checks where each
/// request went.
pub fn run(gateway: SocketAddr, observe: Option<&dyn Fn() -> (usize, usize)>) -> Vec<Outcome> {
    steps()
        .into_iter()
        .map(|step| {
            let before = observe.map(|f| f());
            let mut req = Request::new(step.method, step.path);
            if let Some(t) = step.token {
                req = req.bearer(t);
            }
            if let Some(b) = &step.body {
                req = req.json(b);
            }
            let (status, message) = match req.send(gateway) {
                Ok(r) => (
                    r.status,
                    r.json()
                        .ok()
                        .and_then(|j| j["error"].as_str().map(str::to_owned))
                        .unwrap_or_default(),
                ),
                Err(e) => (0, format!("{e:#}")),
            };
            let reached = observe.zip(before).map(|(f, (p0, a0))| {
                let (p1, a1) = f();
                match (p1 > p0, a1 > a0) {
                    (false, false) => Store::None,
                    (true, false) => Store::Primary,
                    (false, true) => Store::Archive,
                    (true, true) => Store::None, // both: never expected; reported as a mismatch below
                }
            });
            let ok = status == step.status && reached.is_none_or(|r| r == step.store);
            Outcome {
                step,
                status,
                reached,
                message,
                ok,
            }
        })
        .collect()
}

/// Formats outcomes as a table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{:<4} {:<60} {:<7} {:<6} {}\n",
        "ok", "step", "expect", "got", "gateway says"
    );
    for o in outcomes {
        let mark = if o.ok { "ok" } else { "FAIL" };
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "{:<4} {:<60} {:<7} {:<6} {}\n",
                mark, o.step.what, o.step.status, o.status, o.message
            ),
        );
    }
    out
}

/// How long a key took to take effect at the gateway (`make demo`'s last two rows).
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    /// From sending the mint request until the new token's first 200.
    pub minted_works: Duration,
    /// From sending the revocation until the token's first 401.
    pub revoked_refused: Duration,
}

/// How long [`key_lifecycle`] waits for each change before it calls the change lost.
const LIFECYCLE_WAIT: Duration = Duration::from_secs(10);

/// Mints a key through the gateway's control API (`demo-admin-token`), times until its token
/// lists namespaces (200), revokes it and times until the token is refused (401), then
/// deletes the key. The key's name is unique per run, so the tour can run again.
pub fn key_lifecycle(gateway: SocketAddr) -> Result<Lifecycle> {
    let admin = "demo-admin-token";
    let name = format!(
        "tour-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let send = |req: Request| req.send(gateway);
    // Polls `token` on a route its grant allows until the gateway answers `want`.
    let until = |token: &str, want: u16, since: Instant| -> Result<Duration> {
        loop {
            let got = send(Request::new("GET", "/v1/namespaces").bearer(token))?.status;
            if got == want {
                return Ok(since.elapsed());
            }
            if since.elapsed() > LIFECYCLE_WAIT {
                bail!("key {name}: still {got}, not {want}, after {LIFECYCLE_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let minting = Instant::now();
    let minted = send(Request::new("POST", "/v2/keys").bearer(admin).json(&json!({
        "name": name,
        "owner": "make-demo",
        "expiresAfter": "1h",
        "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["tour-*"]}}
    })))?;
    if minted.status != 201 {
        bail!("minting {name}: {} {}", minted.status, minted.text());
    }
    let token = minted.json()?["token"]
        .as_str()
        .context("the mint answer has no token")?
        .to_owned();
    let minted_works = until(&token, 200, minting)?;
    let revoking = Instant::now();
    let revoked = send(Request::new("POST", &format!("/v2/keys/{name}/revoke")).bearer(admin))?;
    if revoked.status != 200 {
        bail!("revoking {name}: {} {}", revoked.status, revoked.text());
    }
    let revoked_refused = until(&token, 401, revoking)?;
    let deleted = send(Request::new("DELETE", &format!("/v2/keys/{name}")).bearer(admin))?;
    if !(200..300).contains(&deleted.status) {
        bail!("deleting {name}: {} {}", deleted.status, deleted.text());
    }
    Ok(Lifecycle {
        minted_works,
        revoked_refused,
    })
}

/// What [`rotation`] saw of a key rotated with a short overlap.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The overlap asked for.
    pub overlap: Duration,
    /// From the rotate answer until the new token's first 200.
    pub new_works: Duration,
    /// The old token still answered 200 right after the rotation.
    pub old_works_during: bool,
    /// When the old token's first 401 came, in milliseconds after the overlap's end (negative:
    /// before it; the overlap ends on a whole second of the gateway's clock, so up to a
    /// second early).
    pub old_refused_ms: i64,
}

/// Mints a key, rotates it with a 3 s overlap, and times the new token working, the old one
/// working during the overlap and refused after it; then deletes the key.
pub fn rotation(gateway: SocketAddr) -> Result<Rotation> {
    let admin = "demo-admin-token";
    let overlap = Duration::from_secs(3);
    let name = format!(
        "tour-rotate-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let send = |req: Request| req.send(gateway);
    let status = |token: &str| -> Result<u16> {
        Ok(send(Request::new("GET", "/v1/namespaces").bearer(token))?.status)
    };
    let until = |token: &str, want: u16| -> Result<Instant> {
        let since = Instant::now();
        loop {
            let got = status(token)?;
            if got == want {
                return Ok(Instant::now());
            }
            if since.elapsed() > LIFECYCLE_WAIT {
                bail!("key {name}: still {got}, not {want}, after {LIFECYCLE_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let minted = send(Request::new("POST", "/v2/keys").bearer(admin).json(&json!({
        "name": name, "owner": "make-demo", "expiresAfter": "1h",
        "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["tour-*"]}}
    })))?;
    if minted.status != 201 {
        bail!("minting {name}: {} {}", minted.status, minted.text());
    }
    let old = minted.json()?["token"]
        .as_str()
        .context("the mint answer has no token")?
        .to_owned();
    until(&old, 200)?;
    let rotating = Instant::now();
    let rotated = send(
        Request::new("POST", &format!("/v2/keys/{name}/rotate"))
            .bearer(admin)
            .json(&json!({"overlap": format!("{}s", overlap.as_secs())})),
    )?;
    if rotated.status != 200 {
        bail!("rotating {name}: {} {}", rotated.status, rotated.text());
    }
    let answered = Instant::now();
    let new = rotated.json()?["token"]
        .as_str()
        .context("the rotate answer has no token")?
        .to_owned();
    let new_works = until(&new, 200)?.duration_since(answered);
    let old_works_during = status(&old)? == 200;
    let refused = until(&old, 401)?;
    let deleted = send(Request::new("DELETE", &format!("/v2/keys/{name}")).bearer(admin))?;
    if !(200..300).contains(&deleted.status) {
        bail!("deleting {name}: {} {}", deleted.status, deleted.text());
    }
    Ok(Rotation {
        overlap,
        new_works,
        old_works_during,
        old_refused_ms: match refused.checked_duration_since(rotating + overlap) {
            Some(late) => late.as_millis() as i64,
            None => -((rotating + overlap - refused).as_millis() as i64),
        },
    })
}

/// `lastSeenAt` and usage of the demo's minted key `shop-reader`, once the gateway has reported
/// what the tour sent with it (reports go every 5 s): one line.
pub fn usage_line(gateway: SocketAddr) -> Result<String> {
    std::thread::sleep(Duration::from_secs(6));
    let r = Request::new("GET", "/v2/keys/shop-reader/usage")
        .bearer("demo-admin-token")
        .send(gateway)?;
    if r.status != 200 {
        bail!("usage of shop-reader: {} {}", r.status, r.text());
    }
    let u = r.json()?;
    if !u["lastSeenAt"].is_string() {
        bail!("shop-reader has no lastSeenAt after the tour used it: {u}");
    }
    Ok(format!(
        "shop-reader: lastSeenAt {}, {} requests since creation (allowed {}, refused {}), {} in the last hour",
        u["lastSeenAt"].as_str().unwrap_or("-"),
        u["sinceCreation"]["requests"],
        u["sinceCreation"]["allowed"],
        u["sinceCreation"]["refused"],
        u["lastHour"]["requests"],
    ))
}
