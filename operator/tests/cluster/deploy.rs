//! What `operator/deploy/` ships: the Deployments' arguments, the gateway's init container, and
//! the Role, which grants exactly what the code calls.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams};
use layergate_operator::crd::VectorStore;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

use super::support;
use super::support::StrictBuild as _;
use super::{api, control_api, http_head, key_json, kinds, running, store_json, NS};

/// The Deployment in `operator/deploy/FILE`, as JSON.
fn deployment_in(file: &str) -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(file),
    )
    .unwrap();
    text.split("\n---\n")
        .map(|d| {
            serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(d).unwrap()).unwrap()
        })
        .find(|d| d["kind"] == "Deployment")
        .unwrap()
}

/// The Deployment in `operator/deploy/` starts exactly this mode (here it stops where a
/// cluster is missing, after parsing its arguments and settings).
#[test]
fn the_deployments_arguments_start_kube_mode() {
    let deployment = deployment_in("operator.yaml");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_layergate-operator"));
    cmd.args(&args)
        .env("KUBECONFIG", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST");
    for e in container["env"].as_array().unwrap() {
        if let Some(v) = e["value"].as_str() {
            cmd.env(e["name"].as_str().unwrap(), v);
        }
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("connecting to the Kubernetes API"), "{err}");
}

/// Issue 15: the operator image has no shell and no `cp`; the gateway's initContainer runs
/// the binary's `copy-filter` with the arguments deploy/gateway.yaml gives it (the paths moved
/// into a scratch directory). A file that is not wasm is refused and nothing is written.
#[test]
fn the_gateways_init_container_copies_the_filter_with_the_binary() {
    let deployment = deployment_in("gateway.yaml");
    let args: Vec<String> = serde_json::from_value(
        deployment["spec"]["template"]["spec"]["initContainers"][0]["args"].clone(),
    )
    .unwrap();
    assert_eq!(args.len(), 3, "{args:?}");
    let scratch = std::env::temp_dir().join(format!("lg-copy-filter-{}", std::process::id()));
    let (from, to) = (
        scratch.join(args[1].trim_start_matches('/')),
        scratch.join(args[2].trim_start_matches('/')),
    );
    std::fs::create_dir_all(from.parent().unwrap()).unwrap();
    std::fs::create_dir_all(&to).unwrap();
    let run = |from: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_layergate-operator"))
            .args([
                args[0].as_str(),
                from.to_str().unwrap(),
                to.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    std::fs::write(&from, b"not wasm").unwrap();
    assert!(!run(&from).status.success());
    assert!(std::fs::read_dir(&to).unwrap().next().is_none());
    let module = b"\0asm\x01\0\0\0".to_vec();
    std::fs::write(&from, &module).unwrap();
    let out = run(&from);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = to.join(from.file_name().unwrap());
    assert_eq!(std::fs::read(copied).unwrap(), module);
    assert_eq!(
        std::fs::read_dir(&to).unwrap().count(),
        1,
        "no temporary file left"
    );
    std::fs::remove_dir_all(scratch).unwrap();
}

/// Issue 13: the Role grants exactly what the code calls. The table in `rbac.rs` names each
/// (group, resource, verb); this runs every code path that calls the API (the controller's
/// watches, passes that mint, adopt, replace a stale token, publish, write statuses and
/// Events and count a repeat in one's series, the Lease taken and released, the control API's
/// mint, revoke and delete) against a recording API server: each call is in the table and
/// each entry is called, and the
/// deployed Role is the table. Before, the Role lacked `delete` on Secrets (a stale token and a
/// deleted key's labelled token) and granted `get` and `patch` that nothing used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_grants_exactly_what_the_code_calls() {
    use layergate_operator::rbac::PERMISSIONS;
    let mut objects = support::demo_objects();
    // A token Secret left by a deleted key of the same name as a live one: replaced.
    objects.push(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "apikey-stale", "namespace": NS,
            "ownerReferences": [{"apiVersion": "hevlayer.com/v1alpha1", "kind": "ApiKey", "name": "stale", "uid": "0000-gone"}]},
        "data": {"token": base64::engine::general_purpose::STANDARD.encode("hvl_oldTokenOldTokenOldToken0123456789")}}));
    objects.push(serde_json::to_value(key_json("stale", json!({}))).unwrap());
    // A store whose Secret is missing: a Warning Event.
    objects.push(serde_json::to_value(store_json("broken", false, "missing")).unwrap());
    // A pre-provisioned token labelled for its key, deleted with it through the control API
    // before any pass adopts it.
    let client = kinds().with_runtime_objects(objects).strict().await;
    let tap = support::Tap::new(&client);
    let (c, stop, task) = running(&tap).await;
    let addr = control_api(c.clone());
    let call = move |m: &'static str, p: &'static str, b: &'static str| {
        tokio::task::spawn_blocking(move || http_head(addr, m, p, b))
    };
    let (s, _, v) = call(
        "POST",
        "/v2/keys",
        r#"{"name": "cohort", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{v}");
    let (s, _, v) = call("POST", "/v2/keys/cohort/revoke", "").await.unwrap();
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = call("DELETE", "/v2/keys/cohort", "").await.unwrap();
    assert_eq!(s, 200, "{v}");
    // A labelled, not yet owned token Secret goes with its key.
    let mut marks = (*c.state.last().unwrap()).clone();
    marks.objects.secret_marks.insert(
        (NS.into(), "apikey-shop-reader".into()),
        layergate_operator::manifests::SecretMarks {
            token_label: Some("shop-reader".into()),
            apikey_owners: vec![],
        },
    );
    {
        use layergate_operator::source::Source;
        let c = c.clone();
        tokio::task::spawn_blocking(move || c.delete_key(&marks, "shop-reader"))
            .await
            .unwrap()
            .unwrap();
    }
    // The broken store names another missing Secret: the same reason with a new message, a
    // repeat the Recorder counts in the first Event's series (a patch).
    let patch = json!({"spec": {"credential": {"secretRef": {"name": "missing-too"}}}});
    api::<VectorStore>(&client)
        .patch("broken", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        // Read through the untapped client: listing Events is the test's, not the code's.
        let events = api::<Event>(&client)
            .list(&Default::default())
            .await
            .unwrap()
            .items;
        let repeated = events.iter().any(|e| {
            e.reason.as_deref() == Some("SecretNotFound")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
                && e.series.as_ref().map(|s| s.count) == Some(2)
        });
        if repeated {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no repeat counted: {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let secret = api::<Secret>(&client).get("apikey-stale").await.unwrap();
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_ne!(owner.uid, "0000-gone", "the stale token was replaced");
    assert_eq!(
        owner.block_owner_deletion,
        Some(true),
        "owner references need apikeys/finalizers"
    );

    let used = support::permissions_used(&tap.calls.lock().unwrap());
    let table: BTreeSet<(String, String, String)> = PERMISSIONS
        .iter()
        .map(|p| (p.group.to_owned(), p.resource.to_owned(), p.verb.to_owned()))
        .collect();
    let implied = (
        "hevlayer.com".to_owned(),
        "apikeys/finalizers".to_owned(),
        "update".to_owned(),
    );
    let missing: Vec<_> = used.difference(&table).collect();
    assert!(missing.is_empty(), "called but not in rbac.rs: {missing:?}");
    let unused: Vec<_> = table.difference(&used).filter(|p| **p != implied).collect();
    assert!(unused.is_empty(), "in rbac.rs but never called: {unused:?}");

    // The deployed Role is the table: every (group, resource, verb, resourceName).
    support::assert_role_is(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/operator.yaml"),
        PERMISSIONS,
    );
}
