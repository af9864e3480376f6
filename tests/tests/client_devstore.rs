//! The official turbopuffer Python client against `devstore` directly: proves the devstore is
//! turbopuffer-compatible before the gateway is put in front of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_tests::devstore::DevStore;
use layergate_tests::http::Request;

#[test]
fn official_client_writes_queries_lists_and_deletes() {
    let store = DevStore::start("tpuf-test-key").unwrap();
    let (code, out) = run_python(
        "tpuf_roundtrip.py",
        &[&store.url(), "tpuf-test-key", "shop-books"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["write"]["status"], "OK");
    assert_eq!(out["write"]["rows_affected"], 3);
    let ids: Vec<i64> = out["query"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 3], "scifi rows, nearest first: {out}");
    assert_eq!(out["query"][0]["title"], "Dune");
    assert_eq!(out["list"], serde_json::json!(["shop-books"]));
    assert_eq!(out["exists"], true);
    assert_eq!(out["metadata_rows"], 3);
    assert!(
        store.namespaces().is_empty(),
        "delete_all removed the namespace"
    );
    // The client's vectors arrive base64-encoded by default and every request asks for async.
    let seen = store.requests();
    assert!(seen
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer tpuf-test-key")));
}

#[test]
fn wrong_bearer_gets_turbopuffers_401_and_is_recorded() {
    let store = DevStore::start("right-key").unwrap();
    let r = Request::new("GET", "/v1/namespaces")
        .bearer("wrong-key")
        .send(store.addr())
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json().unwrap()["status"], "error");
    assert_eq!(store.request_count(), 1);
    assert_eq!(
        store.requests()[0].header("authorization"),
        Some("Bearer wrong-key")
    );
    let (code, out) = run_python("tpuf_roundtrip.py", &[&store.url(), "wrong-key", "x-1"]);
    assert_eq!((code, out["error"]["status"].as_i64()), (3, Some(401)));
}

#[test]
fn list_pages_with_prefix_and_cursor() {
    let store = DevStore::start("k").unwrap();
    for ns in ["a-1", "a-2", "a-3", "b-1"] {
        let r = Request::new("POST", &format!("/v2/namespaces/{ns}"))
            .bearer("k")
            .json(&serde_json::json!({"upsert_rows": [{"id": 1}]}))
            .send(store.addr())
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let page = Request::new("GET", "/v1/namespaces?prefix=a-&page_size=2")
        .bearer("k")
        .send(store.addr())
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        page["namespaces"],
        serde_json::json!([{"id": "a-1"}, {"id": "a-2"}])
    );
    assert_eq!(page["next_cursor"], "a-2");
    let page = Request::new("GET", "/v1/namespaces?prefix=a-&page_size=2&cursor=a-2")
        .bearer("k")
        .send(store.addr())
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["namespaces"], serde_json::json!([{"id": "a-3"}]));
    assert!(page["next_cursor"].is_null());
}

fn run_python(script: &str, args: &[&str]) -> (i32, serde_json::Value) {
    layergate_tests::python::run_script(script, args).unwrap_or_else(|e| panic!("{e:#}"))
}
