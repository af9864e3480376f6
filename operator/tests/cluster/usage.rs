//! Usage in kube mode (issue 24): reports from many gateway VMs taken by the leader, the
//! usage writer's status writes bounded per second and oldest first, its fields kept by the
//! passes that write the rest of the status, and counts that survive a new leader.

use base64::Engine as _;
use layergate_operator::cluster::Cluster;
use layergate_operator::crd::ApiKey;
use layergate_operator::keyservice::GatewayCredential;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::support::StrictBuild as _;
use super::{api, control_api, kinds, leader, pass, support, NS};

const CREDENTIAL: &str = "lgw_usageTest0123456789abcdefABCDEFGH";

/// `keys` minted ApiKeys with their token Secrets, beside the demo objects.
fn objects(keys: usize) -> Vec<Value> {
    let mut objects = support::demo_objects();
    for i in 0..keys {
        let name = format!("k{i}");
        objects.push(json!({
            "apiVersion": "hevlayer.com/v1alpha1", "kind": "ApiKey",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{i}"), "generation": 1,
                         "creationTimestamp": "2026-11-01T00:00:00Z"},
            "spec": {"expiresAfter": "never",
                     "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}
        }));
        objects.push(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("apikey-{name}"), "namespace": NS,
                         "labels": {"hevlayer.com/apikey-token": name},
                         "ownerReferences": [{"apiVersion": "hevlayer.com/v1alpha1", "kind": "ApiKey",
                                              "name": name, "uid": format!("uid-{i}")}]},
            "data": {"token": base64::engine::general_purpose::STANDARD.encode(format!("hvl_{:0>40}", i))}
        }));
    }
    objects
}

fn post(addr: std::net::SocketAddr, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "POST /v2/keys/usage HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CREDENTIAL}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out[9..12].parse().unwrap()
}

/// Every key in use, reported by 3 gateways × 16 workers (48 VMs, each report at most 2,000
/// keys, as the filter sends them), taken over HTTP by the leader; then the usage writer drains
/// what is due at `WRITES` a second at most, oldest first. `LAYERGATE_KUBE_PASS_KEYS` sets the
/// number of keys (default 2,000; the scale figure is 100,000, release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_from_every_vm_is_taken_and_written_at_a_bounded_rate_and_kept_by_passes() {
    const WRITES: usize = 20;
    const VMS: usize = 48;
    let keys: usize = std::env::var("LAYERGATE_KUBE_PASS_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let client = kinds().with_runtime_objects(objects(keys)).strict().await;
    let c = Arc::new(leader(&client));
    assert!(c.caches().synced_within(Duration::from_secs(600)).await);
    pass(&c).await.unwrap();
    c.state
        .keys
        .set_credential(GatewayCredential::of(CREDENTIAL));
    let addr = control_api(c.clone());

    // Each VM reports every key once (one read each), in reports of 2,000 keys.
    let names: Vec<String> = (0..keys).map(|i| format!("k{i}")).collect();
    let bodies: Vec<String> = names
        .chunks(2_000)
        .map(|chunk| {
            let keys: serde_json::Map<String, Value> = chunk
                .iter()
                .map(|n| (n.clone(), json!({"read": 1})))
                .collect();
            json!({"keys": keys, "dropped": 0}).to_string()
        })
        .collect();
    let started = Instant::now();
    let mut reports = 0;
    for _ in 0..VMS {
        for body in &bodies {
            assert_eq!(post(addr, body), 200);
            reports += 1;
        }
    }
    let took = started.elapsed();
    eprintln!(
        "usage: {reports} reports ({keys} keys × {VMS} VMs) taken in {took:?}: {:.1} ms a report",
        took.as_secs_f64() * 1e3 / reports as f64
    );
    // A gateway VM reports every 5 s: 48 VMs' reports of every key must be taken well within it.
    assert!(
        took < Duration::from_secs(5) * u32::try_from(bodies.len()).unwrap(),
        "{took:?}"
    );

    // The writer: at most WRITES a turn (one turn a second in the operator), each turn well
    // under a second, until nothing is due; the writes land on the API server.
    let mut turns = 0;
    let mut slowest = Duration::ZERO;
    let turns_measured = (keys / WRITES).min(50);
    for _ in 0..turns_measured {
        let started = Instant::now();
        let written = c.write_usage(WRITES).await.unwrap();
        slowest = slowest.max(started.elapsed());
        assert!(written <= WRITES, "{written}");
        assert!(written > 0, "keys are due");
        turns += 1;
    }
    eprintln!("usage writer: {turns} turns of {WRITES} writes, the slowest {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a turn of {WRITES} writes took {slowest:?}"
    );
    assert_eq!(
        c.state.metrics.usage_writes.get(),
        (turns * WRITES) as u64,
        "every turn wrote its {WRITES}"
    );
    // Every write landed with what the 48 VMs counted; nothing else was written.
    let with_usage = |all: Vec<ApiKey>| -> Vec<(String, u64)> {
        all.into_iter()
            .filter_map(|k| {
                let o = k.status?.observed;
                o.last_seen_at?;
                let reads = o.usage?.allowed.get("read").copied().unwrap_or(0);
                Some((k.metadata.name?, reads))
            })
            .collect()
    };
    let listed = || async {
        api::<ApiKey>(&client)
            .list(&Default::default())
            .await
            .unwrap()
            .items
    };
    let written = with_usage(listed().await);
    assert_eq!(written.len(), turns * WRITES);
    assert!(
        written.iter().all(|(_, reads)| *reads == VMS as u64),
        "{written:?}"
    );

    // A pass writes statuses without these fields: it neither removes them (the writer has
    // its own field manager) nor rewrites a status that differs only in them.
    let status_writes = c.state.metrics.status_writes.get();
    pass(&c).await.unwrap();
    assert_eq!(
        c.state.metrics.status_writes.get(),
        status_writes,
        "usage fields alone do not make a pass write"
    );
    assert_eq!(with_usage(listed().await), written);

    // A new leader (a restart, a hand-over) starts from what the statuses hold.
    c.set_leader(false);
    let next = Arc::new(leader(&client));
    assert!(next.caches().synced_within(Duration::from_secs(600)).await);
    pass(&next).await.unwrap();
    next.state
        .keys
        .set_credential(GatewayCredential::of(CREDENTIAL));
    let next_addr = control_api(next.clone());
    let (name, reads) = &written[0];
    assert_eq!(
        post(next_addr, &json!({"keys": {name: {"read": 1}}}).to_string()),
        200
    );
    let (status, _, usage) =
        super::http_head(next_addr, "GET", &format!("/v2/keys/{name}/usage"), "");
    assert_eq!(status, 200, "{usage}");
    assert_eq!(
        usage["sinceCreation"]["allowed"]["read"],
        reads + 1,
        "{usage}"
    );
    // The old leader takes no report and writes nothing (its credential set again: its
    // passes rendered their own).
    c.state
        .keys
        .set_credential(GatewayCredential::of(CREDENTIAL));
    assert_eq!(
        post(addr, &json!({"keys": {name: {"read": 1}}}).to_string()),
        503
    );
    assert_eq!(c.write_usage(WRITES).await.unwrap(), 0);
}

/// A quota spent (issue 25) in kube mode with two operator replicas: the leader takes the
/// report that spends it, serves the key refused at once, and records the mark on the key's
/// status; the follower's pass reads it and serves the key refused too, so a gateway syncing
/// from either replica holds the quota. Passes on either keep the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_quota_is_served_by_every_replica() {
    let client = kinds().with_runtime_objects(objects(0)).strict().await;
    let c = Arc::new(leader(&client));
    pass(&c).await.unwrap();
    let key = super::key_json(
        "metered",
        json!({"limits": {"quotas": [{"requests": 10, "per": "day"}]}}),
    );
    api::<ApiKey>(&client)
        .create(&Default::default(), &key)
        .await
        .unwrap();
    pass(&c).await.unwrap();
    let follower = Arc::new(leader(&client));
    follower.set_leader(false);
    assert!(
        follower
            .caches()
            .synced_within(Duration::from_secs(30))
            .await
    );
    pass(&follower).await.unwrap();
    let mark = |cluster: &Cluster| {
        super::served(cluster)
            .keys
            .into_iter()
            .find(|k| k.name == "metered")
            .map(|k| k.quota_spent_until)
    };
    assert_eq!(mark(&c), Some(None), "served, not spent");
    assert_eq!(mark(&follower), Some(None));

    c.state
        .keys
        .set_credential(GatewayCredential::of(CREDENTIAL));
    let addr = control_api(c.clone());
    assert_eq!(
        post(addr, &json!({"keys": {"metered": {"read": 6}}}).to_string()),
        200
    );
    assert_eq!(mark(&c), Some(None), "6 of 10");
    assert_eq!(
        post(addr, &json!({"keys": {"metered": {"read": 4}}}).to_string()),
        200
    );
    let until = mark(&c)
        .flatten()
        .expect("the leader serves it spent at once");
    let stored = api::<ApiKey>(&client).get("metered").await.unwrap();
    assert_eq!(
        stored.status.unwrap().observed.quota_spent_until.as_deref(),
        Some(until.as_str()),
        "recorded on the key for every replica"
    );
    // The follower's next pass (its watch asks for one) serves it spent too.
    pass(&follower).await.unwrap();
    assert_eq!(mark(&follower).flatten().as_deref(), Some(until.as_str()));
    // Passes keep the mark on both.
    pass(&c).await.unwrap();
    assert_eq!(mark(&c).flatten().as_deref(), Some(until.as_str()));
}
