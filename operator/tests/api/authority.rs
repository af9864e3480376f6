//! Who may manage which keys (SPEC §7, docs/control-api.md): issue 10's escalations, and
//! issue 21's table of callers and modes walked row by row.

use crate::{fixture, key, Fixture, ADMIN};
use serde_json::{json, Value};
use std::path::Path;

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
        ("GET", "/v2/keys/shop-reader/usage", Value::Null),
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
        ("POST", "/v2/keys/archive-writer/rotate"),
        ("GET", "/v2/keys/archive-writer/usage"),
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
                        f.call("POST", "/v2/keys/shop-reader/suspend", token, json!({}));
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

/// Issue 25: a key minted by a limited key is limited no more loosely: looser limits are
/// refused (403), none asked inherits the maker's, and the views show them.
#[test]
fn a_key_minted_by_a_limited_key_is_never_limited_more_loosely() {
    let f = table_fixture("limits", "keys");
    let boss = TABLE_KEYS[0].2;
    let admin = json!({"layer": {"scopes": ["admin"]}});
    let (status, heir) = f.call("POST", "/v2/keys", Some(boss), json!({"name": "heir", "entitlements": admin, "limits": {"requestsPerSecond": 5, "burst": 8}}));
    assert_eq!(status, 201, "{heir}");
    assert_eq!(heir["limits"], json!({"requestsPerSecond": 5, "burst": 8}));
    let token = heir["token"].as_str().unwrap().to_owned();
    let (status, body) = f.call(
        "POST",
        "/v2/keys",
        Some(&token),
        json!({"name": "greedy", "entitlements": admin, "limits": {"requestsPerSecond": 6}}),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("requestsPerSecond 6 is over yours (5)"),
        "{body}"
    );
    let (status, body) = f.call(
        "POST",
        "/v2/keys",
        Some(&token),
        json!({"name": "modest", "entitlements": admin}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["limits"],
        json!({"requestsPerSecond": 5, "burst": 8}),
        "the maker's limits"
    );
    let (_, got) = f.call("GET", "/v2/keys/modest", Some(boss), Value::Null);
    assert_eq!(got["limits"], json!({"requestsPerSecond": 5, "burst": 8}));
    let (status, body) = f.call(
        "POST",
        "/v2/keys",
        Some(boss),
        json!({"name": "zero", "entitlements": admin, "limits": {"requestsPerSecond": 0}}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("between 1 and 1000000"),
        "{body}"
    );
}
