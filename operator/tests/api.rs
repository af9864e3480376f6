//! The control API's rules (SPEC §7 "Who may manage keys"), each an attack from issue 10 that
//! went through before: driven through the control API's router ([`Api::router`], in process)
//! over directory mode, the same code kube mode serves.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use hyper::StatusCode;
use layergate_operator::api::{client_address, Api, RateLimiter, ServeLimits, MAX_RATE_CLIENTS};
use layergate_operator::output::Settings;
use layergate_operator::source::{DirSource, Source};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        wasm_path: "filter.wasm".into(),
        control: Some(("127.0.0.1".into(), 9902)),
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        limits: Default::default(),
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

/// Every key route (list, get, mint, revoke, delete, an unknown one) answers `status` to the
/// caller with `token`, and nothing changes.
fn refused_on_every_key_route(f: &Fixture, token: Option<&str>, status: u16, who: &str) {
    let before = f.config();
    for (method, path, body) in [
        ("GET", "/v2/keys", Value::Null),
        ("GET", "/v2/keys/shop-reader", Value::Null),
        (
            "POST",
            "/v2/keys",
            key(
                "intruder",
                json!({"vectorstore.primary": {"scopes": ["admin"]}}),
            ),
        ),
        ("POST", "/v2/keys/shop-reader/revoke", Value::Null),
        ("DELETE", "/v2/keys/shop-reader", Value::Null),
        ("POST", "/v2/keys/shop-reader/rotate", json!({})),
    ] {
        let (got, reply) = f.call(method, path, token, body);
        assert_eq!(got, status, "{who}: {method} {path}: {reply}");
    }
    assert!(
        !f.dir.join("intruder.apikey.yaml").exists(),
        "{who}: nothing minted"
    );
    assert_eq!(f.config(), before, "{who}: nothing changed");
}

/// The names in a `GET /v2/keys` answer, in order.
fn key_names(answer: &Value) -> Vec<&str> {
    answer["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect()
}

fn key(name: &str, entitlements: Value) -> Value {
    json!({"name": name, "expiresAfter": "30d", "entitlements": entitlements})
}

/// Issue 10: `demo-admin`, an inbound admin key of `primary`, minted a key with admin on
/// `archive` (a store it gets 401 on), and that key wrote to `archive`.
#[test]
fn an_inbound_admin_key_mints_only_keys_for_its_own_store() {
    let f = fixture("escalate", 120, |_, t| t);
    for (what, ent) in [
        (
            "another store",
            json!({"vectorstore.archive": {"scopes": ["admin"]}}),
        ),
        ("the layer", json!({"layer": {"scopes": ["admin"]}})),
        ("an agent", json!({"agent.x": {"scopes": ["read"]}})),
        ("a warehouse", json!({"warehouse.w": {"claims": ["x:*"]}})),
        (
            "its store plus another",
            json!({"vectorstore.primary": {"scopes": ["read"]}, "vectorstore.archive": {"scopes": ["read"]}}),
        ),
    ] {
        let (status, body) = f.call("POST", "/v2/keys", Some(ADMIN), key("evil", ent));
        assert_eq!(status, 403, "{what}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("worth more"),
            "{body}"
        );
    }
    assert!(!f.dir.join("evil.apikey.yaml").exists(), "nothing written");
    assert!(!f.config().contains("\"evil\""));
    // Within its own store, any scope and any globs.
    let (status, body) = f.call(
        "POST",
        "/v2/keys",
        Some(ADMIN),
        key(
            "cohort",
            json!({"vectorstore.primary": {"scopes": ["read", "write"], "namespaces": ["cohort-*"]}}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    // Non-admin inbound keys never reach key management at all.
    let (status, _) = f.call("GET", "/v2/keys", Some("demo-rw-token"), Value::Null);
    assert_eq!(status, 403);
}

/// Issue 10: list/get/revoke/delete touched every key, whoever asked.
#[test]
fn callers_see_and_touch_only_keys_they_could_have_minted() {
    let f = fixture("visibility", 120, |_, t| t);
    std::fs::write(
        f.dir.join("archive-writer.apikey.yaml"),
        "apiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {name: archive-writer, namespace: layer}\nspec:\n  entitlements: {vectorstore.archive: {scopes: [write]}}\n",
    )
    .unwrap();
    f.source.refresh().unwrap();
    assert!(f.config().contains("\"archive-writer\""), "it is active");
    let (status, body) = f.call(
        "GET",
        "/v2/keys?includeRevoked=true",
        Some(ADMIN),
        Value::Null,
    );
    assert_eq!(status, 200);
    let names = key_names(&body);
    assert_eq!(
        names,
        ["shop-reader"],
        "archive-writer is not primary's to see"
    );
    for (method, path) in [
        ("GET", "/v2/keys/archive-writer"),
        ("POST", "/v2/keys/archive-writer/revoke"),
        ("DELETE", "/v2/keys/archive-writer"),
    ] {
        let (status, _) = f.call(method, path, Some(ADMIN), Value::Null);
        assert_eq!(status, 404, "{method} {path}");
    }
    assert!(f.config().contains("\"archive-writer\""), "still active");
    assert!(f.dir.join("archive-writer.apikey.yaml").exists());
}

/// Issue 10: with the default store in `open` mode, an anonymous caller minted, listed,
/// revoked and deleted keys.
#[test]
fn open_mode_never_opens_key_management() {
    let f = fixture("open", 120, |file, t| {
        if file == "vectorstores.yaml" {
            t.replacen("    mode: keys\n    keys:\n      - {name: demo-read, scopes: [read], secretRef: {name: layer, key: layer-inbound-demo-read}}\n      - {name: demo-rw, scopes: [read, write], secretRef: {name: layer, key: layer-inbound-demo-rw}}\n      - {name: demo-admin, scopes: [admin], secretRef: {name: layer, key: layer-inbound-demo-admin}}\n", "    mode: open\n", 1)
        } else {
            t
        }
    });
    assert!(f.config().contains("\"mode\":\"open\""), "{}", f.config());
    refused_on_every_key_route(&f, None, 401, "anonymous under open");
    assert!(f.config().contains("\"shop-reader\""), "untouched");
    // A minted `layer` admin still manages keys there (tokens count for key management).
    let token = "hvl_OpenLayerAdmin0123456789abcdefABCDEF";
    std::fs::write(
        f.dir.join("root.apikey.yaml"),
        format!("apiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {{name: root, namespace: layer}}\nspec:\n  entitlements: {{layer: {{scopes: [admin]}}}}\n  tokenSecretRef: {{name: root-token, key: token}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: root-token, namespace: layer, labels: {{hevlayer.com/apikey-token: root}}}}\nstringData: {{token: {token}}}\n"),
    )
    .unwrap();
    f.source.refresh().unwrap();
    let (status, body) = f.call("GET", "/v2/keys", Some(token), Value::Null);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["keys"].as_array().unwrap().len(), 2, "{body}");
    // authenticate needs no bearer in any mode.
    let (status, _) = f.call(
        "POST",
        "/v2/keys/authenticate",
        None,
        json!({"token": "hvl_demoShopReader0123456789abcdefABCDEF"}),
    );
    assert_eq!(status, 200);
}

/// Issue 10: authenticate answered 200 for a key whose expiresAt had passed (the rendering
/// still listed it).
#[test]
fn authenticate_judges_expiry_and_revocation_at_request_time() {
    let f = fixture("authn", 120, |_, t| t);
    let (status, minted) = f.call(
        "POST",
        "/v2/keys",
        Some(ADMIN),
        json!({"name": "brief", "expiresAfter": "2s", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}),
    );
    assert_eq!(status, 201, "{minted}");
    let token = json!({"token": minted["token"]});
    assert_eq!(
        f.call("POST", "/v2/keys/authenticate", None, token.clone())
            .0,
        200
    );
    std::thread::sleep(std::time::Duration::from_millis(3100));
    // No pass ran since: the last rendering still lists the key.
    assert!(f.config().contains("\"brief\""));
    let (status, body) = f.call("POST", "/v2/keys/authenticate", None, token);
    assert_eq!(status, 401, "expired: {body}");
    // Revoked (in the manifest, before any rendering) is refused too.
    let shop = json!({"token": "hvl_demoShopReader0123456789abcdefABCDEF"});
    assert_eq!(
        f.call("POST", "/v2/keys/authenticate", None, shop.clone())
            .0,
        200
    );
    assert_eq!(
        f.call(
            "POST",
            "/v2/keys/shop-reader/revoke",
            Some(ADMIN),
            Value::Null
        )
        .0,
        200
    );
    assert_eq!(f.call("POST", "/v2/keys/authenticate", None, shop).0, 401);
}

/// Issue 10: deleting the demo's `shop-reader` (token Secret written beforehand, in
/// `secrets.yaml`) and minting a key of the same name picked the old Secret up again.
#[test]
fn a_deleted_keys_token_dies_with_it_and_a_remint_gets_a_new_token_and_id() {
    let f = fixture("remint", 120, |_, t| t);
    let old_token = "hvl_demoShopReader0123456789abcdefABCDEF";
    let (_, before) = f.call("GET", "/v2/keys/shop-reader", Some(ADMIN), Value::Null);
    let old_id = before["keyId"].as_str().unwrap().to_owned();
    let (status, body) = f.call("DELETE", "/v2/keys/shop-reader", Some(ADMIN), Value::Null);
    assert_eq!(status, 200, "{body}");
    let secrets = std::fs::read_to_string(f.dir.join("secrets.yaml")).unwrap();
    assert!(
        !secrets.contains(old_token) && secrets.contains("primary-api-key"),
        "the token Secret is gone, the store Secrets stay:\n{secrets}"
    );
    let (status, minted) = f.call(
        "POST",
        "/v2/keys",
        Some(ADMIN),
        key(
            "shop-reader",
            json!({"vectorstore.primary": {"scopes": ["read"], "namespaces": ["shop-*"]}}),
        ),
    );
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["phase"], "Active", "not born expired: {minted}");
    let new_token = minted["token"].as_str().unwrap();
    assert_ne!(new_token, old_token);
    assert_ne!(minted["keyId"].as_str().unwrap(), old_id, "a new keyId");
    assert_eq!(
        f.call(
            "POST",
            "/v2/keys/authenticate",
            None,
            json!({"token": old_token})
        )
        .0,
        401
    );
    assert_eq!(
        f.call(
            "POST",
            "/v2/keys/authenticate",
            None,
            json!({"token": new_token})
        )
        .0,
        200
    );
    // Minted token files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.dir.join("apikey-shop-reader.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

/// A Secret written by hand under a minted key's name, without the token label, is not
/// adopted (it could be anything: another key's token, a store credential).
#[test]
fn an_unmarked_or_weak_token_secret_is_refused_with_a_condition() {
    for (tag, secret, reason) in [
        (
            "unlabelled",
            "  labels: {hevlayer.com/apikey-token: shop-reader}\n",
            "",
        ),
        ("weak", "", "hvl_short"),
    ] {
        let f = fixture(tag, 120, |file, t| {
            if file != "secrets.yaml" {
                t
            } else if reason.is_empty() {
                t.replace(secret, "")
            } else {
                t.replace("hvl_demoShopReader0123456789abcdefABCDEF", reason)
            }
        });
        let pass = f.source.state().last().unwrap();
        let v = pass
            .validation
            .keys
            .iter()
            .find(|k| k.name == "shop-reader")
            .unwrap();
        assert!(v.valid.is_none(), "{tag}: left out");
        let ready = v.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            ready.reason, "InvalidTokenSecret",
            "{tag}: {}",
            ready.message
        );
        assert!(!f.config().contains("\"shop-reader\""));
    }
}

/// Issue 10: `"expiresAfter": "5日"` through the API panicked the operator.
#[test]
fn malformed_mint_bodies_are_400_never_a_panic() {
    let f = fixture("bodies", 120, |_, t| t);
    for (body, want) in [
        (
            json!({"name": "a", "expiresAfter": "5日", "entitlements": {}}),
            "expiresAfter",
        ),
        (
            json!({"name": "a", "expiresAfter": "999999999999999999d"}),
            "100 years",
        ),
        (
            json!({"name": "a", "expiresAfter": "3000000d"}),
            "100 years",
        ),
        (json!({"name": "a", "entitlements": {"bogus": {}}}), "bogus"),
        (
            json!({"name": "a", "entitlements": {"vectorstore.primary": {"namespaces": ["a/b"]}}}),
            "a/b",
        ),
        (json!({"name": "a", "expiresAftr": "1d"}), "unknown field"),
        (json!({"name": "A_b"}), "name"),
        (json!({"name": "a", "entitlements": []}), "ApiKey"),
        (json!([1, 2]), "JSON object"),
    ] {
        let (status, reply) = f.call("POST", "/v2/keys", Some(ADMIN), body.clone());
        assert_eq!(status, 400, "{body} → {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(want),
            "{body} → {reply}"
        );
    }
    assert!(!f.dir.join("a.apikey.yaml").exists());
}

/// A tiny deterministic generator, so the property test needs no crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

#[test]
fn property_random_mint_bodies_never_panic_and_never_widen_the_caller() {
    let f = fixture("fuzz", 120, |_, t| t);
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let seeds = [
        r#"{"name":"k","expiresAfter":"30d","entitlements":{"vectorstore.primary":{"scopes":["read"],"namespaces":["shop-*"]}}}"#,
        r#"{"name":"k","entitlements":{"vectorstore.archive":{"scopes":["admin"]}}}"#,
        r#"{"name":"k","entitlements":{"layer":{"scopes":["admin"]},"warehouse.w":{"claims":["a"]}}}"#,
    ];
    let pool: Vec<char> = "{}[]\":,0129dhmsazk-_.*?/ \\日é\u{0}".chars().collect();
    let mut statuses = std::collections::BTreeMap::new();
    let runs: usize = std::env::var("LAYERGATE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(400, |n: usize| n.min(20_000));
    for i in 0..runs {
        let mut chars: Vec<char> = rng.pick(&seeds).chars().collect();
        for _ in 0..=(rng.next() % 4) {
            let at = (rng.next() % (chars.len() as u64 + 1)) as usize;
            let c = *rng.pick(&pool);
            match rng.next() % 3 {
                0 if at < chars.len() => chars[at] = c,
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ => chars.insert(at, c),
            }
        }
        let body: String = chars.into_iter().collect();
        let body = body.replacen("\"k\"", &format!("\"k{i}\""), 1);
        let headers = vec![("authorization".to_owned(), format!("Bearer {ADMIN}"))];
        let (status, reply) = f.respond("POST", "/v2/keys", &headers, body.clone().into_bytes());
        assert!(
            [
                StatusCode::CREATED,
                StatusCode::BAD_REQUEST,
                StatusCode::FORBIDDEN,
                StatusCode::CONFLICT
            ]
            .contains(&status),
            "{body} → {status} {reply}"
        );
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    // Whatever was minted stays within demo-admin's own store.
    let pass = f.source.state().last().unwrap();
    assert!(
        pass.config.api_keys.is_empty(),
        "minted keys travel by the key service"
    );
    for k in &pass.keys {
        for (target, _) in &k.entitlements {
            assert!(target == "vectorstore.primary", "{} got {target}", k.name);
        }
    }
    eprintln!("mint bodies: {runs} executions, statuses {statuses:?}");
}

/// Issue 10: the authenticate limit was one global counter — one client locked out all.
#[test]
fn the_authenticate_limit_is_per_client_address() {
    let f = fixture("ratelimit", 3, |_, t| t);
    let body = json!({"token": "hvl_demoShopReader0123456789abcdefABCDEF"});
    let from = |ip: &str| {
        f.call_from(
            "POST",
            "/v2/keys/authenticate",
            None,
            body.clone(),
            &[("x-forwarded-for", ip)],
        )
        .0
    };
    for _ in 0..3 {
        assert_eq!(from("198.51.100.7"), 200);
    }
    assert_eq!(from("198.51.100.7"), 429, "the noisy client is limited");
    assert_eq!(
        from("203.0.113.9"),
        200,
        "another client through the gateway is not"
    );
    // Envoy appends the address it saw: only the last entry counts.
    assert_eq!(from("203.0.113.9, 198.51.100.7"), 429);
    assert_eq!(from("198.51.100.7, 203.0.113.10"), 200);
}

#[test]
fn the_client_address_is_the_last_forwarded_hop_else_the_peer() {
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let h = |v: &str| vec![("X-Forwarded-For".to_owned(), v.to_owned())];
    assert_eq!(client_address(&[], peer), peer);
    assert_eq!(
        client_address(&h("1.1.1.1, 2.2.2.2"), peer),
        "2.2.2.2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(client_address(&h("garbage"), peer), peer);
    assert_eq!(
        client_address(&h("::1"), peer),
        "::1".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn the_rate_limiter_table_stays_bounded() {
    let mut l = RateLimiter::new(1);
    let ip = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(i));
    for i in 0..(MAX_RATE_CLIENTS as u32 * 3) {
        assert!(l.allow(ip(i), 60) || i >= MAX_RATE_CLIENTS as u32);
    }
    assert!(l.tracked() <= MAX_RATE_CLIENTS);
    // Overflow clients share one budget this minute; a tracked client keeps its own.
    assert!(!l.allow(ip(0), 60));
    // Next minute the old entries make room again.
    assert!(l.allow(ip(u32::MAX), 120));
    assert!(l.allow(ip(u32::MAX - 1), 120));
    assert!(l.tracked() <= MAX_RATE_CLIENTS);
}

/// The API served on a real socket with `limits`; its address.
fn serve(f: &Fixture, per_minute: u32, limits: ServeLimits) -> std::net::SocketAddr {
    let api = Arc::new(Api::new(f.source.clone(), per_minute).with_limits(limits));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || api.serve_on(listener));
    addr
}

fn small_limits() -> ServeLimits {
    ServeLimits {
        max_connections: 8,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
    }
}

/// Reads until the server closes (or 10 s pass); the status line's code, and how long it took.
fn answer(s: &mut TcpStream) -> (u16, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, started.elapsed())
}

fn authenticate_head(len: &str) -> String {
    format!("POST /v2/keys/authenticate HTTP/1.1\r\nhost: control\r\ncontent-type: application/json\r\n{len}\r\n")
}

#[test]
fn a_slow_1_mib_upload_to_authenticate_is_refused_without_being_read() {
    let f = fixture("slow-upload", 120, |_, t| t);
    let addr = serve(&f, 120, small_limits());
    // Declared 1 MiB: refused on its headers, and the connection closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(authenticate_head("content-length: 1048576\r\n").as_bytes())
        .unwrap();
    s.write_all(&[b'x'; 1024]).unwrap();
    let (code, took) = answer(&mut s);
    assert_eq!(code, 413);
    assert!(took < Duration::from_millis(900), "{took:?}");
    // Chunked, 1 KiB every 20 ms: cut at the 4 KiB cap, long before 1 MiB.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(authenticate_head("transfer-encoding: chunked\r\n").as_bytes())
        .unwrap();
    let mut sent = 0;
    let reader = s.try_clone().unwrap();
    let started = Instant::now();
    while sent < 1 << 20 {
        let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
        sent += 1024;
        std::thread::sleep(Duration::from_millis(20));
        let mut probe = [0u8; 1];
        reader.set_nonblocking(true).unwrap();
        let closed = reader.peek(&mut probe).is_ok();
        reader.set_nonblocking(false).unwrap();
        if closed {
            break;
        }
    }
    let (code, _) = answer(&mut s);
    assert_eq!(code, 413);
    assert!(
        sent <= 64 * 1024,
        "the server read {sent} bytes before refusing"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // A body under the cap that never finishes: 408 after the body timeout.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(authenticate_head("content-length: 200\r\n").as_bytes())
        .unwrap();
    s.write_all(b"{\"token\": ").unwrap();
    let (code, took) = answer(&mut s);
    assert_eq!(code, 408);
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// Every route has a body cap, the methods a route does not serve and the paths no route
/// matches too (a 1 MiB body to `PUT /v2/keys` or `POST /nowhere` is refused on its headers,
/// and a chunked one is cut at 64 KiB), and every 413 is in the API's JSON shape.
#[test]
fn every_route_and_every_unknown_one_caps_its_body() {
    let f = fixture("caps", 120, |_, t| t);
    let addr = serve(&f, 120, small_limits());
    for (method, path) in [
        ("PUT", "/v2/keys"),
        ("PATCH", "/v2/keys/shop-reader"),
        ("GET", "/v2/keys/shop-reader/revoke"),
        ("POST", "/nowhere"),
        ("POST", "/v2/vectorstores"),
        ("DELETE", "/v2/keys/authenticate"),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: control\r\ncontent-length: 1048576\r\n\r\n"
        )
        .unwrap();
        let started = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 413"), "{method} {path}: {text}");
        assert!(
            text.contains("application/json") && text.contains("\"status\":\"error\""),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_millis(900));
        // Chunked: cut at the 64 KiB cap.
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: control\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .unwrap();
        let reader = s.try_clone().unwrap();
        let mut sent = 0;
        while sent < 1 << 20 {
            let chunk = format!("2000\r\n{}\r\n", "x".repeat(8 * 1024));
            if s.write_all(chunk.as_bytes()).is_err() {
                break;
            }
            sent += 8 * 1024;
            std::thread::sleep(Duration::from_millis(5));
            let mut probe = [0u8; 1];
            reader.set_nonblocking(true).unwrap();
            let answered = reader.peek(&mut probe).is_ok();
            reader.set_nonblocking(false).unwrap();
            if answered {
                break;
            }
        }
        let (code, _) = answer(&mut s);
        assert_eq!(code, 413, "{method} {path}");
        assert!(
            sent <= 96 * 1024,
            "{method} {path}: the server read {sent} bytes"
        );
    }
}

#[test]
fn the_authenticate_rate_limit_answers_before_the_body_is_read() {
    let f = fixture("rate-first", 1, |_, t| t);
    let addr = serve(&f, 1, small_limits());
    let body = r#"{"token": "hvl_nope"}"#;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!(
            "{}{body}",
            authenticate_head(&format!(
                "content-length: {}\r\nconnection: close\r\n",
                body.len()
            ))
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(answer(&mut s).0, 401);
    // Over budget: 429 on the headers alone, the body never sent.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(authenticate_head("content-length: 4000\r\n").as_bytes())
        .unwrap();
    let (code, took) = answer(&mut s);
    assert_eq!(code, 429);
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[test]
fn idle_connections_beyond_the_limit_are_refused_and_the_api_recovers() {
    let f = fixture("conn-limit", 120, |_, t| t);
    let addr = serve(&f, 120, small_limits());
    let idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // The ninth is answered 503 and closed at once.
    let mut extra = TcpStream::connect(addr).unwrap();
    let (code, took) = answer(&mut extra);
    assert_eq!(code, 503);
    assert!(took < Duration::from_millis(500), "{took:?}");
    // The idle ones are closed by the header timeout...
    for mut s in idle {
        let (_, took) = answer(&mut s);
        assert!(
            took < Duration::from_secs(3),
            "an idle connection held {took:?}"
        );
    }
    // ...and a good request works again.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: control\r\nconnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(answer(&mut s).0, 200);
}

#[test]
fn healthz_fails_while_the_controller_loop_is_stuck() {
    let f = fixture("healthz", 120, |_, t| t);
    assert_eq!(
        f.call("GET", "/healthz", None, Value::Null).0,
        200,
        "no loop to watch"
    );
    // A short threshold, so that a stuck loop shows on any machine (a monotonic clock cannot
    // be set back five minutes on a machine up for less).
    f.source.state().set_stuck_after(Duration::from_millis(200));
    f.source.state().beat();
    assert_eq!(f.call("GET", "/healthz", None, Value::Null).0, 200);
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = f.call("GET", "/healthz", None, Value::Null);
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("controller loop"),
        "{body}"
    );
    f.source.state().beat();
    assert_eq!(f.call("GET", "/healthz", None, Value::Null).0, 200);
}

// ---------------------------------------------------------------------------------------------
// Issue 21: who may manage keys, walked row by row from docs/control-api.md, and the write path.

/// Minted keys the table's rows are made of: (name, entitlements, token).
const TABLE_KEYS: [(&str, &str, &str); 5] = [
    ("boss", "{layer: {scopes: [admin]}}", "hvl_tableBoss0123456789abcdefABCDEFGHIJ"),
    ("glob-boss", "{layer: {scopes: [admin], namespaces: [\"shop-*\"]}, vectorstore.primary: {scopes: [admin], namespaces: [\"shop-*\"]}}", "hvl_tableGlobBoss0123456789abcdefABCDEF"),
    ("layer-rw", "{layer: {scopes: [read, write]}}", "hvl_tableLayerRw0123456789abcdefABCDEFG"),
    ("store-admin", "{vectorstore.primary: {scopes: [admin]}}", "hvl_tableStoreAdmin0123456789abcdefABCD"),
    ("vault-reader", "{vectorstore.archive: {scopes: [read]}}", "hvl_tableVaultReader0123456789abcdefABC"),
];

/// The demo manifests with the default store in `mode` and the table's minted keys.
fn table_fixture(tag: &str, mode: &str) -> Fixture {
    fixture(tag, 120, |file, text| match file {
        "vectorstores.yaml" => {
            let (primary, rest) = text.split_once("\n---\n").unwrap();
            let head = &primary[..primary.find("  inboundAuth:").unwrap()];
            let auth = if mode == "keys" {
                &primary[primary.find("  inboundAuth:").unwrap()..]
            } else {
                ""
            };
            if mode == "keys" {
                format!("{head}{auth}\n---\n{rest}")
            } else {
                format!("{head}  inboundAuth: {{mode: {mode}}}\n---\n{rest}")
            }
        }
        "apikeys.yaml" => {
            let mut t = text;
            for (name, ent, _) in TABLE_KEYS {
                t.push_str(&format!("\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}, namespace: layer}}\nspec:\n  entitlements: {ent}\n  expiresAfter: 30d\n"));
            }
            t
        }
        "secrets.yaml" => {
            let mut t = text;
            for (name, _, token) in TABLE_KEYS {
                t.push_str(&format!("\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: apikey-{name}\n  namespace: layer\n  labels: {{hevlayer.com/apikey-token: {name}}}\nstringData:\n  token: {token}\n"));
            }
            t
        }
        _ => text,
    })
}

/// The token a table row's caller sends, or `None` for no credential.
fn table_caller(row: &str) -> Option<&'static str> {
    let minted = |name: &str| TABLE_KEYS.iter().find(|k| k.0 == name).map(|k| k.2);
    Some(match row {
        r if r.starts_with("no credential") => return None,
        r if r.starts_with("a token the gateway does not know") => {
            "hvl_unknownUnknown0123456789abcdefABCDEF"
        }
        r if r.starts_with("the default store's credential") => "tpuf-primary-dev-key",
        r if r.starts_with("another store's credential") => "tpuf-archive-dev-key",
        r if r.starts_with("an inbound `admin` key") => ADMIN,
        r if r.starts_with("an inbound `read`/`write` key") => "demo-rw-token",
        r if r.starts_with("a minted key with `layer: {scopes: [admin]}`") => minted("boss")?,
        r if r.starts_with("a minted key with `layer` admin limited") => minted("glob-boss")?,
        r if r.starts_with("a minted key with `layer` read or write") => minted("layer-rw")?,
        r if r.starts_with("a minted key with `vectorstore.<default>") => minted("store-admin")?,
        r if r.starts_with("a minted key with no `layer` grant") => minted("vault-reader")?,
        r => panic!("docs/control-api.md names a caller the test does not know: {r:?}"),
    })
}

/// SPEC §7 / issue 21: docs/control-api.md's table of who may manage keys, every row and mode,
/// on list, get, mint, revoke and delete.
#[test]
fn the_who_may_manage_keys_table_holds_row_by_row() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/control-api.md"),
    )
    .unwrap();
    let table: Vec<Vec<String>> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| caller | deriveFromStore | keys | open |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    assert_eq!(table.len(), 11, "the table's rows: {table:?}");
    let modes = ["deriveFromStore", "keys", "open"];
    let fixtures: Vec<Fixture> = modes
        .iter()
        .map(|m| table_fixture(&format!("table-{m}"), m))
        .collect();
    let mut walked = 0;
    for row in &table {
        let token = table_caller(&row[0]);
        for (i, mode) in modes.iter().enumerate() {
            let cell = row[i + 1].as_str();
            let f = &fixtures[i];
            let what = format!("{} under {mode}", row[0]);
            match cell {
                "n/a" => continue,
                "401" | "403" => refused_on_every_key_route(f, token, cell.parse().unwrap(), &what),
                "all" | "store" => {
                    let all = cell == "all";
                    let (status, body) = f.call("GET", "/v2/keys", token, Value::Null);
                    assert_eq!(status, 200, "{what}: {body}");
                    let names = key_names(&body);
                    assert_eq!(names.contains(&"vault-reader"), all, "{what}: {names:?}");
                    assert!(names.contains(&"shop-reader"), "{what}: {names:?}");
                    let (status, _) = f.call("GET", "/v2/keys/vault-reader", token, Value::Null);
                    assert_eq!(status, if all { 200 } else { 404 }, "{what}");
                    let (status, body) = f.call(
                        "POST",
                        "/v2/keys",
                        token,
                        key(
                            &format!("vault-{walked}"),
                            json!({"vectorstore.archive": {"scopes": ["read"]}}),
                        ),
                    );
                    assert_eq!(status, if all { 201 } else { 403 }, "{what}: {body}");
                    let (status, body) = f.call(
                        "POST",
                        "/v2/keys",
                        token,
                        key(
                            &format!("shop-{walked}"),
                            json!({"vectorstore.primary": {"scopes": ["read"]}}),
                        ),
                    );
                    assert_eq!(status, 201, "{what}: {body}");
                    let (status, body) = f.call(
                        "POST",
                        &format!("/v2/keys/shop-{walked}/revoke"),
                        token,
                        Value::Null,
                    );
                    assert_eq!(
                        (status, body["phase"].as_str()),
                        (200, Some("Revoked")),
                        "{what}: {body}"
                    );
                    let (status, body) = f.call(
                        "DELETE",
                        &format!("/v2/keys/shop-{walked}"),
                        token,
                        Value::Null,
                    );
                    assert_eq!(status, 200, "{what}: {body}");
                    let (status, _) =
                        f.call("POST", "/v2/keys/vault-reader/revoke", token, Value::Null);
                    assert_eq!(status, if all { 200 } else { 404 }, "{what}");
                    if all {
                        // Put it back for the rows after this one.
                        let text = std::fs::read_to_string(f.dir.join("apikeys.yaml")).unwrap();
                        std::fs::write(
                            f.dir.join("apikeys.yaml"),
                            text.replace("revoked: true", "revoked: false"),
                        )
                        .unwrap();
                        f.source.refresh().unwrap();
                    }
                    // Unknown key routes are the control API's JSON 404, never a store's.
                    let (status, body) =
                        f.call("POST", "/v2/keys/shop-reader/rotate", token, json!({}));
                    assert_eq!(status, 404, "{what}: {body}");
                    assert!(
                        body["error"]
                            .as_str()
                            .unwrap()
                            .contains("control API has no route"),
                        "{body}"
                    );
                }
                other => panic!("unknown cell {other:?} in docs/control-api.md"),
            }
            walked += 1;
        }
    }
    assert!(walked >= 25, "walked {walked} cells");
}

/// Issue 21.3: under an `open` default store, a read-only minted key listed keys, revoked
/// another tenant's key and minted a never-expiring copy of itself.
#[test]
fn under_open_a_minted_key_without_layer_admin_manages_nothing() {
    let f = table_fixture("open-minted", "open");
    let reader = "hvl_demoShopReader0123456789abcdefABCDEF";
    for (method, path, body) in [
        ("GET", "/v2/keys", Value::Null),
        ("POST", "/v2/keys/vault-reader/revoke", Value::Null),
        (
            "POST",
            "/v2/keys",
            json!({"name": "copy", "expiresAfter": "never", "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["shop-*"]}}}),
        ),
    ] {
        let (status, reply) = f.call(method, path, Some(reader), body);
        assert_eq!(status, 403, "{method} {path}: {reply}");
    }
    assert!(!f.dir.join("copy.apikey.yaml").exists());
    assert!(f.config().contains("\"vault-reader\""), "untouched");
}

/// Issue 21.3: a key minted by a key never outlives its maker.
#[test]
fn a_key_minted_by_a_key_never_outlives_it() {
    let f = table_fixture("outlive", "keys");
    let boss = TABLE_KEYS[0].2;
    for asked in ["never", "365d"] {
        let name = format!("heir-{}", asked.trim_end_matches('d'));
        let (status, body) = f.call(
            "POST",
            "/v2/keys",
            Some(boss),
            json!({"name": name, "expiresAfter": asked, "entitlements": {"layer": {"scopes": ["admin"]}}}),
        );
        assert_eq!(status, 201, "{body}");
        let heir =
            layergate_filter::time::parse_rfc3339(body["expiresAt"].as_str().unwrap()).unwrap();
        let (_, maker) = f.call("GET", "/v2/keys/boss", Some(boss), Value::Null);
        let maker =
            layergate_filter::time::parse_rfc3339(maker["expiresAt"].as_str().unwrap()).unwrap();
        assert!(
            heir < maker,
            "{asked}: the heir expires at {heir}, its maker at {maker}"
        );
        let written = std::fs::read_to_string(f.dir.join(format!("{name}.apikey.yaml"))).unwrap();
        let line = written
            .lines()
            .find(|l| l.contains("expiresAfter: "))
            .unwrap();
        assert!(
            line.trim_end().ends_with('s') && !line.contains(asked),
            "{written}"
        );
    }
    // An inbound admin key has no end: what it asks for stands.
    let (status, body) = f.call("POST", "/v2/keys", Some(ADMIN), json!({"name": "forever", "expiresAfter": "never", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}));
    assert_eq!(
        (status, body["expiresAt"].clone()),
        (201, Value::Null),
        "{body}"
    );
}

/// Issue 21.4: with CRLF line endings or a `--- # comment` separator, revoke and delete
/// answered 200 and changed nothing (the rewriter split on a literal "\n---\n").
#[test]
fn revoke_and_delete_work_whatever_the_document_separators() {
    for (tag, edit) in [
        (
            "crlf",
            (|t: String| t.replace('\n', "\r\n")) as fn(String) -> String,
        ),
        ("comment", |t: String| {
            t.replace("\n---\n", "\n--- # next\n")
        }),
    ] {
        let f = fixture(&format!("sep-{tag}"), 120, |file, t| {
            if file == "apikeys.yaml" {
                edit(format!("{t}\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {{name: second, namespace: layer}}\nspec:\n  entitlements: {{vectorstore.primary: {{scopes: [read]}}}}\n"))
            } else {
                t
            }
        });
        let token = {
            f.source.refresh().unwrap();
            let pass = f.source.state().last().unwrap();
            assert!(
                pass.keys.iter().any(|k| k.name == "second"),
                "{tag}: minted"
            );
            "hvl_demoShopReader0123456789abcdefABCDEF"
        };
        f.revoked("shop-reader", tag);
        let (status, _) = f.call(
            "POST",
            "/v2/keys/authenticate",
            None,
            json!({"token": token}),
        );
        assert_eq!(status, 401, "{tag}: the revoked token is refused");
        let (status, body) = f.call("DELETE", "/v2/keys/second", Some(ADMIN), Value::Null);
        assert_eq!(status, 200, "{tag}: {body}");
        assert!(!f.config().contains("\"second\""), "{tag}: deleted");
        let (status, _) = f.call("GET", "/v2/keys/second", Some(ADMIN), Value::Null);
        assert_eq!(status, 404, "{tag}");
    }
}

/// Issue 21.5: a key whose spec became invalid could not be revoked (validation stopped at the
/// bad field and the last valid, Active form was carried).
#[test]
fn a_key_with_an_invalid_spec_is_still_revoked() {
    let f = fixture("invalid-revoke", 120, |_, t| t);
    let token = json!({"token": "hvl_demoShopReader0123456789abcdefABCDEF"});
    let file = f.dir.join("apikeys.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    // A mistyped target (the CRD cannot check map keys): the last valid form is carried.
    std::fs::write(
        &file,
        text.replace("vectorstore.primary:", "\"vectorstore.primary!\":"),
    )
    .unwrap();
    f.source.refresh().unwrap();
    assert_eq!(
        f.call("POST", "/v2/keys/authenticate", None, token.clone())
            .0,
        200,
        "carried"
    );
    f.revoked("shop-reader", "an invalid spec");
    assert_eq!(
        f.call("POST", "/v2/keys/authenticate", None, token.clone())
            .0,
        401
    );
    let pass = f.source.state().last().unwrap();
    assert!(
        !pass.keys.iter().any(|k| k.name == "shop-reader"),
        "no longer served"
    );
    // Written by hand beside the bad target, too.
    let f = fixture("invalid-revoke-hand", 120, |_, t| t);
    let file = f.dir.join("apikeys.yaml");
    std::fs::write(
        &file,
        text.replace("vectorstore.primary:", "\"vectorstore.primary!\":"),
    )
    .unwrap();
    f.source.refresh().unwrap();
    std::fs::write(
        &file,
        text.replace("vectorstore.primary:", "\"vectorstore.primary!\":") + "  revoked: true\n",
    )
    .unwrap();
    f.source.refresh().unwrap();
    assert_eq!(f.call("POST", "/v2/keys/authenticate", None, token).0, 401);
    let pass = f.source.state().last().unwrap();
    assert!(
        !pass.keys.iter().any(|k| k.name == "shop-reader"),
        "not served"
    );
    assert_eq!(
        pass.validation.phase("shop-reader"),
        Some(layergate_operator::crd::ApiKeyPhase::Revoked)
    );
}

/// Issue 21.6: minting `team` replaced `team.apikey.yaml` and `apikey-team.yaml`, files that
/// held other keys and their token Secret.
#[test]
fn a_mint_never_overwrites_a_file_it_did_not_make() {
    let f = fixture("overwrite", 120, |_, t| t);
    let other = "apiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {name: other, namespace: layer}\nspec:\n  entitlements: {vectorstore.primary: {scopes: [read]}}\n  tokenSecretRef: {name: other-token, key: token}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: other-token, namespace: layer, labels: {hevlayer.com/apikey-token: other}}\nstringData: {token: hvl_otherOther0123456789abcdefABCDEFGHI}\n";
    for file in ["team.apikey.yaml", "apikey-team.yaml"] {
        let _ = std::fs::remove_file(f.dir.join("team.apikey.yaml"));
        let _ = std::fs::remove_file(f.dir.join("apikey-team.yaml"));
        std::fs::write(f.dir.join(file), other).unwrap();
        f.source.refresh().unwrap();
        assert!(f.config().contains("\"other\""), "{file}: other is active");
        let (status, body) = f.call(
            "POST",
            "/v2/keys",
            Some(ADMIN),
            key("team", json!({"vectorstore.primary": {"scopes": ["read"]}})),
        );
        assert_eq!(status, 409, "{file}: {body}");
        assert_eq!(
            std::fs::read_to_string(f.dir.join(file)).unwrap(),
            other,
            "{file} untouched"
        );
        f.source.refresh().unwrap();
        assert!(
            f.config().contains("\"other\""),
            "{file}: other still active"
        );
        assert!(!f.config().contains("\"team\""));
    }
}

/// Issue 21.7: parallel mints of one name answered 201 with tokens the gateway refused, or 500.
#[test]
fn parallel_mints_of_one_name_have_one_winner_whose_token_works() {
    let f = Arc::new(fixture("parallel", 120, |_, t| t));
    for round in 0..3 {
        let name = format!("race-{round}");
        let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..6)
                .map(|_| {
                    let (f, name) = (f.clone(), name.clone());
                    s.spawn(move || {
                        f.call(
                            "POST",
                            "/v2/keys",
                            Some(ADMIN),
                            key(&name, json!({"vectorstore.primary": {"scopes": ["read"]}})),
                        )
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let won: Vec<&Value> = answers
            .iter()
            .filter(|a| a.0 == 201)
            .map(|a| &a.1)
            .collect();
        assert_eq!(won.len(), 1, "{answers:?}");
        assert!(
            answers.iter().all(|a| a.0 == 201 || a.0 == 409),
            "{answers:?}"
        );
        f.source.refresh().unwrap();
        let (status, body) = f.call(
            "POST",
            "/v2/keys/authenticate",
            None,
            json!({"token": won[0]["token"]}),
        );
        assert_eq!(
            (status, body["name"].as_str()),
            (200, Some(name.as_str())),
            "{body}"
        );
    }
}

/// Issue 21.8: ~320 slow requests through the public gateway held the control API's
/// connections, and key syncs failed with them. The key service has a listener of its own:
/// with every control connection taken, a sync still answers at once.
#[test]
fn the_key_service_keeps_its_capacity_when_the_control_api_is_full() {
    let f = fixture("keys-capacity", 120, |_, t| t);
    let limits = ServeLimits {
        header_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
        ..small_limits()
    };
    let api = Arc::new(Api::new(f.source.clone(), 120).with_limits(limits));
    let (control, keys) = (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (control_addr, keys_addr) = (control.local_addr().unwrap(), keys.local_addr().unwrap());
    let key_service = api.clone();
    std::thread::spawn(move || api.serve_on(control));
    std::thread::spawn(move || key_service.serve_keys_until(keys, std::future::pending()));
    // Every control connection held by a request whose body trickles.
    let held: Vec<TcpStream> = (0..limits.max_connections)
        .map(|_| {
            let mut s = TcpStream::connect(control_addr).unwrap();
            s.write_all(authenticate_head("content-length: 100\r\n").as_bytes())
                .unwrap();
            s.write_all(b"{").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = TcpStream::connect(control_addr).unwrap();
    assert_eq!(answer(&mut refused).0, 503, "the control API is full");
    let out = f.source.state().last().unwrap();
    let credential = match &out.config.key_service.as_ref().unwrap().credential {
        layergate_filter::config::Credential::Inline(c) => c.clone(),
        other => panic!("{other:?}"),
    };
    let started = Instant::now();
    let mut s = TcpStream::connect(keys_addr).unwrap();
    s.write_all(format!("GET /v2/keys/sync HTTP/1.1\r\nhost: keys\r\nauthorization: Bearer {credential}\r\nconnection: close\r\n\r\n").as_bytes()).unwrap();
    assert_eq!(answer(&mut s).0, 200, "the key service answers");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The key service's listener serves nothing else.
    let mut s = TcpStream::connect(keys_addr).unwrap();
    s.write_all(b"GET /v2/keys HTTP/1.1\r\nhost: keys\r\nconnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(answer(&mut s).0, 404);
    drop(held);
}

/// Helper report on issue 21: two revokes of keys in one hand-written file, at once, each read
/// the file and wrote it back: the second write undid the first revocation. Writes are
/// serialized.
#[test]
fn parallel_revokes_in_one_file_both_hold() {
    let f = Arc::new(fixture("parallel-revoke", 120, |file, t| {
        if file == "apikeys.yaml" {
            let mut t = t;
            for i in 0..6 {
                t.push_str(&format!("\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {{name: many-{i}, namespace: layer}}\nspec:\n  entitlements: {{vectorstore.primary: {{scopes: [read]}}}}\n"));
            }
            t
        } else {
            t
        }
    }));
    f.source.refresh().unwrap();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let f = f.clone();
                s.spawn(move || {
                    f.call(
                        "POST",
                        &format!("/v2/keys/many-{i}/revoke"),
                        Some(ADMIN),
                        Value::Null,
                    )
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| a.0 == 200), "{answers:?}");
    f.source.refresh().unwrap();
    let pass = f.source.state().last().unwrap();
    for i in 0..6 {
        assert_eq!(
            pass.validation.phase(&format!("many-{i}")),
            Some(layergate_operator::crd::ApiKeyPhase::Revoked),
            "many-{i}"
        );
    }
}

/// Helper report on issue 21: deleting key `x` removed the Secret `apikey-x` even when it was
/// labelled as another key's token.
#[test]
fn a_delete_leaves_a_secret_labelled_for_another_key() {
    let f = fixture("delete-other-secret", 120, |file, t| {
        match file {
        "apikeys.yaml" => t + "\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {name: x, namespace: layer}\nspec:\n  entitlements: {vectorstore.primary: {scopes: [read]}}\n  tokenSecretRef: {name: x-token, key: token}\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {name: other, namespace: layer}\nspec:\n  entitlements: {vectorstore.primary: {scopes: [read]}}\n  tokenSecretRef: {name: apikey-x, key: token}\n",
        "secrets.yaml" => t + "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: apikey-x, namespace: layer, labels: {hevlayer.com/apikey-token: other}}\nstringData: {token: hvl_otherOther0123456789abcdefABCDEFGHI}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: x-token, namespace: layer, labels: {hevlayer.com/apikey-token: x}}\nstringData: {token: hvl_xxxxXxxx0123456789abcdefABCDEFGHIJKL}\n",
        _ => t,
    }
    });
    f.source.refresh().unwrap();
    assert!(f.config().contains("\"other\"") && f.config().contains("\"x\""));
    let (status, body) = f.call("DELETE", "/v2/keys/x", Some(ADMIN), Value::Null);
    assert_eq!(status, 200, "{body}");
    let secrets = std::fs::read_to_string(f.dir.join("secrets.yaml")).unwrap();
    assert!(
        secrets.contains("hvl_otherOther"),
        "other's token stays:\n{secrets}"
    );
    assert!(!secrets.contains("hvl_xxxxXxxx"), "x's own token goes");
    assert!(f.config().contains("\"other\""), "other still works");
}
