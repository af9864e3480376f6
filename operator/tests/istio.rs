//! Kube mode with the Istio target (`run --source kube --target istio`) against an in-process
//! Kubernetes API (kube-fake-client): each leader pass server-side applies the Istio
//! resources into the Istio namespace when they changed, deletes the managed ones a removed
//! store leaves, keeps the proxy's credentials in one Secret there and rolls the gateway when
//! they change; a follower writes nothing. The pure plan ([`istio::plan`]) is tested directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use kube_fake_client::ClientBuilder;
use layergate_operator::cluster::{Cluster, DEFAULT_OUTPUT_SECRET};
use layergate_operator::crd::{ApiKey, Index, VectorStore};
use layergate_operator::istio::{self, IstioSettings};
use layergate_operator::keyservice;
use layergate_operator::render::{credential_env, Target};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use support::StrictBuild;

const NS: &str = "layer";
const MESH: &str = "layergate-ingress";

/// Stand-ins the fake API server is told about: the CRDs' kinds with a status subresource,
/// and the six Istio kinds (group, version, kind and plural as Istio's CRDs have them).
mod kinds {
    use kube::CustomResource;
    use serde::{Deserialize, Serialize};
    macro_rules! kind {
        ($s:ident, $g:literal, $v:literal, $k:literal, $p:literal) => {
            #[derive(
                CustomResource, Default, Clone, Debug, Serialize, Deserialize, schemars::JsonSchema,
            )]
            #[kube(group = $g, version = $v, kind = $k, plural = $p, namespaced, derive = "Default")]
            pub struct $s {}
        };
    }
    kind!(S, "hevlayer.com", "v1alpha1", "VectorStore", "vectorstores");
    kind!(I, "hevlayer.com", "v1", "Index", "indexes");
    kind!(K, "hevlayer.com", "v1alpha1", "ApiKey", "apikeys");
    kind!(
        W,
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
        "wasmplugins"
    );
    kind!(
        Se,
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries"
    );
    kind!(
        Dr,
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules"
    );
    kind!(G, "networking.istio.io", "v1", "Gateway", "gateways");
    kind!(
        Vs,
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices"
    );
    kind!(
        Ef,
        "networking.istio.io",
        "v1alpha3",
        "EnvoyFilter",
        "envoyfilters"
    );
}

/// The ingress gateway Deployment as the `istio/gateway` chart makes it (abridged).
fn gateway_deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "layergate-ingressgateway", "namespace": MESH},
        "spec": {"selector": {"matchLabels": {"istio": "layergate-ingressgateway"}},
            "template": {"metadata": {"labels": {"istio": "layergate-ingressgateway"}},
                "spec": {"containers": [{"name": "istio-proxy", "image": "auto"}]}}}})
}

async fn client(with_gateway: bool) -> Client {
    let mut objects = support::demo_objects();
    if with_gateway {
        objects.push(gateway_deployment());
    }
    ClientBuilder::new()
        .with_resource::<VectorStore>()
        .with_resource::<Index>()
        .with_resource::<ApiKey>()
        .with_status_subresource::<kinds::VectorStore>()
        .with_status_subresource::<kinds::Index>()
        .with_status_subresource::<kinds::ApiKey>()
        .with_resource::<kinds::WasmPlugin>()
        .with_resource::<kinds::ServiceEntry>()
        .with_resource::<kinds::DestinationRule>()
        .with_resource::<kinds::Gateway>()
        .with_resource::<kinds::VirtualService>()
        .with_resource::<kinds::EnvoyFilter>()
        .with_runtime_objects(objects)
        .strict()
        .await
}

fn cluster(client: &Client, leader: bool) -> Cluster {
    let c = Cluster::new(
        client.clone(),
        NS,
        support::kube_settings(),
        DEFAULT_OUTPUT_SECRET,
    )
    .with_target(Target::Istio(IstioSettings::default()));
    c.set_leader(leader);
    c
}

/// A pass once the cluster's caches hold what the API server holds now (the operator's own
/// passes are started by the watch that brings a change).
async fn settled_pass(
    c: &Cluster,
) -> Result<layergate_operator::cluster::Writes, layergate_operator::cluster::StepError> {
    support::settle(c, NS).await;
    c.pass().await
}

fn dynamic(client: &Client, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), MESH, &istio::api_resource(kind).unwrap())
}

/// Every Istio object in the Istio namespace, as (kind, name) → object.
async fn mesh_objects(client: &Client) -> std::collections::BTreeMap<(String, String), Value> {
    let mut out = std::collections::BTreeMap::new();
    for (_, _, kind, _) in istio::KINDS {
        for o in dynamic(client, kind)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            let name = o.metadata.name.clone().unwrap();
            let api_version = istio::api_resource(kind).unwrap().api_version;
            out.insert(
                (kind.to_owned(), name.clone()),
                json!({"apiVersion": api_version, "kind": kind,
                    "metadata": {"name": name, "namespace": o.metadata.namespace, "labels": o.metadata.labels},
                    "spec": o.data["spec"]}),
            );
        }
    }
    out
}

fn plugin_config(objects: &std::collections::BTreeMap<(String, String), Value>) -> Value {
    objects[&("WasmPlugin".to_owned(), "layergate".to_owned())]["spec"]["pluginConfig"].clone()
}

fn store_names(config: &Value) -> BTreeSet<String> {
    config["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn credentials(client: &Client) -> std::collections::BTreeMap<String, String> {
    Api::<Secret>::namespaced(client.clone(), MESH)
        .get(istio::CREDENTIALS_SECRET)
        .await
        .unwrap()
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

async fn gateway_hash(client: &Client) -> Option<String> {
    Api::<Deployment>::namespaced(client.clone(), MESH)
        .get("layergate-ingressgateway")
        .await
        .unwrap()
        .spec?
        .template
        .metadata?
        .annotations?
        .get(istio::CREDENTIALS_HASH_ANNOTATION)
        .cloned()
}

/// Istio 1.31's CRD schemas (`tests/python/istio_validate.py`, the venv's Python) on a JSON
/// array of resources: (passed, report).
fn validate_istio(docs: &[Value]) -> (bool, Value) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("LAYERGATE_PYTHON")
        .map_or_else(|| root.join(".venv/bin/python"), Into::into);
    let mut child = Command::new(&python)
        .arg(root.join("tests/python/istio_validate.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} — run `make venv`", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(docs).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

fn store(name: &str, url: &str) -> VectorStore {
    serde_json::from_value(json!({
        "apiVersion": "hevlayer.com/v1alpha1", "kind": "VectorStore",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"kind": "turbopuffer",
                 "endpoint": {"url": url},
                 "credential": {"secretRef": {"name": "layer", "key": "archive-api-key"}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_applies_the_istio_target_and_follows_store_index_and_key_changes() {
    let client = client(true).await;
    // The operator's calls are recorded: what it does in the Istio namespace is checked
    // against the Role of operator/deploy/istio at the end.
    let tap = support::Tap::new(&client);
    let c = cluster(&tap.client(NS), true);
    // Someone else's ServiceEntry in the same namespace: never touched.
    dynamic(&client, "ServiceEntry")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": {"name": "other-team", "namespace": MESH},
                "spec": {"hosts": ["other.example.com"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]}}))
            .unwrap(),
        )
        .await
        .unwrap();

    let w = settled_pass(&c).await.unwrap();
    assert!(w.published);
    assert_eq!((w.applied, w.deleted), (8, 0), "{w:?}");
    let objects = mesh_objects(&client).await;
    let kinds: Vec<(&str, &str)> = objects
        .keys()
        .map(|(k, n)| (k.as_str(), n.as_str()))
        .collect();
    for want in [
        ("WasmPlugin", "layergate"),
        ("ServiceEntry", "layergate-store-primary"),
        ("DestinationRule", "layergate-store-primary"),
        ("ServiceEntry", "layergate-store-archive"),
        ("DestinationRule", "layergate-store-archive"),
        ("Gateway", "layergate"),
        ("VirtualService", "layergate"),
        ("EnvoyFilter", "layergate-buffer"),
        ("ServiceEntry", "other-team"),
    ] {
        assert!(kinds.contains(&want), "{want:?} in {kinds:?}");
    }
    let config = plugin_config(&objects);
    assert_eq!(
        store_names(&config),
        BTreeSet::from(["primary".into(), "archive".into()])
    );
    // Minted keys reach the mesh through the key service (the operator's Service), with the
    // gateway credential from the proxy's environment; none are inline.
    assert!(config.get("apiKeys").is_none());
    assert_eq!(
        config["keyService"]["cluster"],
        "outbound|9902||layergate-operator.layer.svc.cluster.local"
    );
    assert_eq!(
        config["keyService"]["credential"],
        json!({"env": keyservice::CREDENTIAL_ENV})
    );
    // No credential in any Istio resource; the proxy's environment comes from the one Secret.
    let text = serde_json::to_string(&objects.values().collect::<Vec<_>>()).unwrap();
    let creds = credentials(&client).await;
    assert_eq!(
        creds.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            credential_env("primary"),
            credential_env("archive"),
            keyservice::CREDENTIAL_ENV.to_owned()
        ])
    );
    let gateway_secret = Api::<Secret>::namespaced(client.clone(), NS)
        .get(keyservice::CREDENTIAL_SECRET)
        .await
        .unwrap();
    assert_eq!(
        creds[keyservice::CREDENTIAL_ENV].as_bytes(),
        gateway_secret.data.unwrap()[keyservice::CREDENTIAL_KEY].0
    );
    for value in creds.values() {
        assert!(!text.contains(value.as_str()), "a credential leaked");
    }
    // The gateway takes every variable from that Secret, and carries its digest.
    let first_hash = gateway_hash(&client)
        .await
        .expect("the gateway is annotated");
    assert_eq!(first_hash, istio::credentials_hash(&creds));
    let deployment = Api::<Deployment>::namespaced(client.clone(), MESH)
        .get("layergate-ingressgateway")
        .await
        .unwrap();
    let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(container.name, "istio-proxy");
    let env: BTreeSet<(String, String, String)> = container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let r = e
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            (e.name.clone(), r.name.clone(), r.key.clone())
        })
        .collect();
    assert_eq!(
        env,
        creds
            .keys()
            .map(|k| (k.clone(), istio::CREDENTIALS_SECRET.to_owned(), k.clone()))
            .collect()
    );
    // The Envoy target's rendering Secret is not written.
    assert!(Api::<Secret>::namespaced(client.clone(), NS)
        .get_opt(DEFAULT_OUTPUT_SECRET)
        .await
        .unwrap()
        .is_none());
    // What kube mode applies passes Istio 1.31's schemas.
    let ours: Vec<Value> = objects
        .iter()
        .filter(|((_, n), _)| n != "other-team")
        .map(|(_, v)| v.clone())
        .collect();
    let (ok, report) = validate_istio(&ours);
    assert!(ok, "{report}");
    assert_eq!(report["checked"], 8);

    // The control API checks callers against the same rendering, its credential variables
    // resolved as the proxy's environment has them (deriveFromStore needs the store's).
    let pass = c.state.last().unwrap();
    assert!(
        pass.policy.stores.iter().all(|s| s.bearer.is_ok()),
        "every store credential resolved for the control API"
    );
    assert_eq!(
        serde_json::to_value(&pass.config).unwrap(),
        config,
        "one rendering"
    );

    // Unchanged: nothing written.
    let w = settled_pass(&c).await.unwrap();
    assert_eq!((w.applied, w.deleted, w.published), (0, 0, false), "{w:?}");

    // A store added: its ServiceEntry and DestinationRule appear, the WasmPlugin names it,
    // its credential reaches the proxy's environment and the gateway rolls.
    Api::<VectorStore>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &store("eu", "https://gcp-europe-west3.turbopuffer.com"),
        )
        .await
        .unwrap();
    let w = settled_pass(&c).await.unwrap();
    assert!(w.published);
    let objects = mesh_objects(&client).await;
    let se = &objects[&("ServiceEntry".to_owned(), "layergate-store-eu".to_owned())];
    assert_eq!(
        se["spec"]["hosts"],
        json!(["gcp-europe-west3.turbopuffer.com"])
    );
    let dr = &objects[&(
        "DestinationRule".to_owned(),
        "layergate-store-eu".to_owned(),
    )];
    assert_eq!(
        dr["spec"]["trafficPolicy"]["tls"]["subjectAltNames"],
        json!(["gcp-europe-west3.turbopuffer.com"])
    );
    assert!(store_names(&plugin_config(&objects)).contains("eu"));
    assert!(credentials(&client)
        .await
        .contains_key(&credential_env("eu")));
    let second_hash = gateway_hash(&client).await.unwrap();
    assert_ne!(
        second_hash, first_hash,
        "a new credential rolls the gateway"
    );
    let all: Vec<Value> = objects
        .iter()
        .filter(|((_, n), _)| n != "other-team")
        .map(|(_, v)| v.clone())
        .collect();
    let (ok, report) = validate_istio(&all);
    assert!(ok, "{report}");

    // An Index change: the pluginConfig follows; only the WasmPlugin is written.
    let before = plugin_config(&objects);
    Api::<Index>::namespaced(client.clone(), NS)
        .patch(
            "logs",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backend": {"namespace": "logs-2027"}}})),
        )
        .await
        .unwrap();
    let w = settled_pass(&c).await.unwrap();
    assert_eq!((w.applied, w.deleted), (1, 0), "{w:?}");
    let after = plugin_config(&mesh_objects(&client).await);
    assert_ne!(before["namespaces"], after["namespaces"]);
    assert_eq!(after["namespaces"], json!({"logs-2027": "archive"}));
    assert_eq!(gateway_hash(&client).await.unwrap(), second_hash);

    // A store removed: its resources are deleted, someone else's stay.
    Api::<VectorStore>::namespaced(client.clone(), NS)
        .delete("eu", &DeleteParams::default())
        .await
        .unwrap();
    let w = settled_pass(&c).await.unwrap();
    assert_eq!(w.deleted, 2, "{w:?}");
    let objects = mesh_objects(&client).await;
    assert!(!objects.contains_key(&("ServiceEntry".to_owned(), "layergate-store-eu".to_owned())));
    assert!(!objects.contains_key(&(
        "DestinationRule".to_owned(),
        "layergate-store-eu".to_owned()
    )));
    assert!(objects.contains_key(&("ServiceEntry".to_owned(), "other-team".to_owned())));
    assert!(!store_names(&plugin_config(&objects)).contains("eu"));
    assert!(!credentials(&client)
        .await
        .contains_key(&credential_env("eu")));
    assert_eq!(
        gateway_hash(&client).await.unwrap(),
        first_hash,
        "back to the first credentials"
    );

    // Drift is undone by the next pass (the controller resyncs every minute): a namespace
    // mapping someone slipped into the WasmPlugin goes, a deleted DestinationRule returns.
    let rendered = plugin_config(&objects);
    dynamic(&client, "WasmPlugin")
        .patch(
            "layergate",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pluginConfig": {"namespaces": {"stolen": "primary"}}}})),
        )
        .await
        .unwrap();
    dynamic(&client, "DestinationRule")
        .delete("layergate-store-primary", &DeleteParams::default())
        .await
        .unwrap();
    let w = settled_pass(&c).await.unwrap();
    assert_eq!((w.applied, w.deleted), (2, 0), "{w:?}");
    let objects = mesh_objects(&client).await;
    assert_eq!(plugin_config(&objects), rendered);
    assert!(objects.contains_key(&(
        "DestinationRule".to_owned(),
        "layergate-store-primary".to_owned()
    )));

    // A revoked key: the key service stops listing it; the mesh is not written.
    let listed = |c: &Cluster| -> BTreeSet<String> {
        let r: layergate_filter::config::SyncResponse =
            serde_json::from_slice(&c.state.keys.table().answer(None)).unwrap();
        r.keys.into_iter().map(|k| k.name).collect()
    };
    assert!(listed(&c).contains("shop-reader"));
    Api::<ApiKey>::namespaced(client.clone(), NS)
        .patch(
            "shop-reader",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoked": true}})),
        )
        .await
        .unwrap();
    let w = settled_pass(&c).await.unwrap();
    assert_eq!((w.applied, w.deleted, w.published), (0, 0, false), "{w:?}");
    assert!(!listed(&c).contains("shop-reader"));

    // Least privilege in the Istio namespace: every call the passes above made there (first
    // apply, credentials created and replaced, the gateway patched, a store's objects deleted,
    // drift replaced) is in rbac.rs's Istio table; every entry was called (for the Istio
    // kinds, each verb on some kind, and `create`, which a server-side apply of a missing
    // object needs though it is recorded as a PATCH); the component's Role is the table.
    let in_mesh: Vec<_> = tap
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, path, _)| path.contains(&format!("/namespaces/{MESH}/")))
        .cloned()
        .collect();
    let used = support::permissions_used(&in_mesh);
    let table = layergate_operator::rbac::istio_permissions();
    let granted: BTreeSet<(String, String, String)> = table
        .iter()
        .map(|p| (p.group.to_owned(), p.resource.to_owned(), p.verb.to_owned()))
        .collect();
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(missing.is_empty(), "called but not in rbac.rs: {missing:?}");
    // One generic code path writes every Istio kind: a verb it used on one kind counts for all.
    let istio_verbs: BTreeSet<&str> = used
        .iter()
        .filter(|(g, _, _)| g.ends_with("istio.io"))
        .map(|(_, _, v)| v.as_str())
        .chain(["create"])
        .collect();
    let unused: Vec<_> = granted
        .difference(&used)
        .filter(|(g, _, v)| !(g.ends_with("istio.io") && istio_verbs.contains(v.as_str())))
        .collect();
    assert!(unused.is_empty(), "in rbac.rs but never called: {unused:?}");
    support::assert_role_is(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/istio/rbac.yaml"),
        &table,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_follower_writes_nothing_and_a_missing_gateway_is_filled_when_it_appears() {
    let client = client(false).await;
    let follower = cluster(&client, false);
    let w = settled_pass(&follower).await.unwrap();
    assert_eq!((w.applied, w.deleted, w.published), (0, 0, false));
    assert!(mesh_objects(&client).await.is_empty());
    assert!(Api::<Secret>::namespaced(client.clone(), MESH)
        .get_opt(istio::CREDENTIALS_SECRET)
        .await
        .unwrap()
        .is_none());
    assert!(follower.state.last().is_some(), "it answers from memory");

    // The leader publishes without a gateway Deployment; once it exists, the next pass fills
    // its environment although nothing else changed.
    let leader = cluster(&client, true);
    let w = settled_pass(&leader).await.unwrap();
    assert_eq!(w.applied, 8);
    Api::<Deployment>::namespaced(client.clone(), MESH)
        .create(
            &PostParams::default(),
            &serde_json::from_value(gateway_deployment()).unwrap(),
        )
        .await
        .unwrap();
    let w = settled_pass(&leader).await.unwrap();
    assert_eq!((w.applied, w.deleted, w.published), (0, 0, true));
    assert_eq!(
        gateway_hash(&client).await,
        Some(istio::credentials_hash(&credentials(&client).await))
    );
}

fn res(kind: &str, name: &str, spec: Value, managed: bool) -> Value {
    let mut v = json!({"kind": kind, "metadata": {"name": name, "labels": {}}, "spec": spec});
    if managed {
        v["metadata"]["labels"][istio::MANAGED_BY.0] = json!(istio::MANAGED_BY.1);
    }
    v
}

#[test]
fn the_plan_applies_what_differs_and_deletes_only_managed_leftovers() {
    let rendered = vec![
        res("WasmPlugin", "layergate", json!({"a": 1}), true),
        res(
            "ServiceEntry",
            "layergate-store-a",
            json!({"hosts": ["a"]}),
            true,
        ),
        res(
            "DestinationRule",
            "layergate-store-a",
            json!({"host": "a"}),
            true,
        ),
    ];
    // Nothing present: everything applied.
    let p = istio::plan(&rendered, &[]);
    assert_eq!(p.apply, rendered);
    assert!(p.delete.is_empty());
    // All present and equal: nothing to do.
    assert!(istio::plan(&rendered, &rendered).is_empty());
    let present = vec![
        // changed spec
        res("WasmPlugin", "layergate", json!({"a": 2}), true),
        // same spec, label missing (someone else's object of that name): taken over
        res(
            "ServiceEntry",
            "layergate-store-a",
            json!({"hosts": ["a"]}),
            false,
        ),
        res(
            "DestinationRule",
            "layergate-store-a",
            json!({"host": "a"}),
            true,
        ),
        // a removed store's resources
        res(
            "ServiceEntry",
            "layergate-store-b",
            json!({"hosts": ["b"]}),
            true,
        ),
        res(
            "DestinationRule",
            "layergate-store-b",
            json!({"host": "b"}),
            true,
        ),
        // same kind and name as nothing rendered, not ours: left alone
        res("ServiceEntry", "other", json!({}), false),
        // a name rendered under another kind does not count
        res("Gateway", "layergate-store-a", json!({}), true),
    ];
    let p = istio::plan(&rendered, &present);
    assert_eq!(p.apply, rendered[..2].to_vec());
    assert_eq!(
        p.delete,
        vec![
            ("ServiceEntry".to_owned(), "layergate-store-b".to_owned()),
            ("DestinationRule".to_owned(), "layergate-store-b".to_owned()),
            ("Gateway".to_owned(), "layergate-store-a".to_owned()),
        ]
    );
}
