//! What a platform team applies: `operator/deploy/` (CRDs, operator, gateway) and its example,
//! built with kubectl's kustomize exactly as the README's "Deploy to Kubernetes" does, and
//! checked against the real Kubernetes schemas (kubernetes-validate, strict) and our CRDs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_operator::cluster::DEFAULT_OUTPUT_SECRET;
use layergate_operator::crd::{ApiKey, Index, VectorStore};
use layergate_operator::{manifests, validate};
use layergate_tests::paths;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// The one OpenAPI v3 validator of the tests, the operator's tests' own.
#[path = "../../operator/tests/support/openapi.rs"]
mod openapi;

/// `kubectl kustomize DIR`, as documents.
fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new(paths::venv_bin("kubectl").unwrap())
        .args(["kustomize", dir])
        .current_dir(paths::repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n")
        .map(|d| {
            serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(d).unwrap()).unwrap()
        })
        .collect()
}

/// Runs `cmd` with `input` on its standard input.
fn piped(cmd: &mut Command, input: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `kubernetes-validate --strict` on YAML; (exit code, output).
fn kubernetes_validate(yaml: &str) -> (i32, String) {
    let out = piped(
        Command::new(paths::venv_bin("kubernetes-validate").unwrap()).args(["--strict", "-"]),
        yaml,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} in the build"))
}

#[test]
fn the_deploy_kustomization_passes_the_kubernetes_schemas_strictly() {
    let docs = kustomize("operator/deploy");
    let (code, out) = kubernetes_validate(&to_yaml(&docs));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("passed for resource").count(),
        docs.len(),
        "{out}"
    );
    // The check can fail: a misspelt field is refused.
    let mut typo = find(&docs, "Deployment", "layergate-operator").clone();
    typo["spec"]["replicass"] = 2.into();
    let (code, out) = kubernetes_validate(&serde_yaml::to_string(&typo).unwrap());
    assert_ne!(code, 0, "{out}");
}

#[test]
fn rbac_is_namespaced_and_secret_access_stays_in_the_namespace() {
    let docs = kustomize("operator/deploy");
    assert!(!docs
        .iter()
        .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"));
    for d in &docs {
        let kind = d["kind"].as_str().unwrap();
        let cluster_scoped = ["Namespace", "CustomResourceDefinition"].contains(&kind);
        assert_eq!(
            d["metadata"]["namespace"].is_null(),
            cluster_scoped,
            "{kind} {}",
            d["metadata"]["name"]
        );
    }
    let role = find(&docs, "Role", "layergate-operator");
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            !verbs.contains(&"*") && !verbs.contains(&"deletecollection"),
            "{rule}"
        );
        if rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "secrets")
        {
            // delete: a token Secret left by a deleted key of the same name (operator/src/rbac.rs).
            assert!(!verbs.contains(&"update"), "{rule}");
        }
    }
}

#[test]
fn the_manifests_agree_with_the_operators_defaults() {
    let docs = kustomize("operator/deploy");
    let operator = &find(&docs, "Deployment", "layergate-operator")["spec"]["template"]["spec"];
    let args: Vec<&str> = operator["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["run", "--source", "kube"]);
    let gateway = &find(&docs, "Deployment", "layergate-gateway")["spec"]["template"]["spec"];
    let volumes = gateway["volumes"].as_array().unwrap();
    let config = volumes.iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(config["secret"]["secretName"], DEFAULT_OUTPUT_SECRET);
    let mounts = gateway["containers"][0]["volumeMounts"].as_array().unwrap();
    let mount = |name: &str| {
        mounts.iter().find(|m| m["name"] == name).unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Where the bootstrap looks, where the rendering's listener finds the wasm.
    let bootstrap = find(&docs, "ConfigMap", "layergate-gateway-bootstrap")["data"]["envoy.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(bootstrap.contains(&format!("path: {}/lds.json", mount("config"))));
    assert_eq!(
        format!("{}/layergate_filter.wasm", mount("wasm")),
        "/etc/layergate/wasm/layergate_filter.wasm"
    );
    assert!(gateway["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| *a == format!("{}/envoy.yaml", mount("bootstrap")).as_str()));
    // The control API Service the rendering routes to (layergate-operator.<ns>.svc:9902).
    let svc = find(&docs, "Service", "layergate-operator");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9902);
    // The key service's own listener (layergate-operator.<ns>.svc:9903), which kube mode
    // renders the gateways' keyService to.
    assert_eq!(svc["spec"]["ports"][1]["port"], 9903);
    assert_eq!(svc["spec"]["ports"][1]["targetPort"], "keys");
    assert_eq!(svc["metadata"]["namespace"], "layer");
}

#[test]
fn the_example_is_valid_for_the_crds_and_the_operator() {
    use kube::CustomResourceExt;
    let docs = kustomize("operator/deploy/example");
    let mut objects = manifests::Objects::default();
    for d in &docs {
        let crd = match d["kind"].as_str().unwrap() {
            "VectorStore" => VectorStore::crd(),
            "Index" => Index::crd(),
            "ApiKey" => ApiKey::crd(),
            other => panic!("unexpected {other}"),
        };
        let crd = serde_json::to_value(crd).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut errors = Vec::new();
        openapi::validate(spec, &d["spec"], "", &mut errors);
        assert!(errors.is_empty(), "{}: {errors:?}", d["kind"]);
        objects.add_yaml("example", &serde_yaml::to_string(d).unwrap());
    }
    // With the Secret the README tells the user to create, every object is valid.
    objects.add_yaml("secret", "apiVersion: v1\nkind: Secret\nmetadata: {name: turbopuffer, namespace: layer}\nstringData: {api-key: tpuf_example}\n");
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    let v = validate::validate(&objects, "layer", 1_800_000_000);
    for (kind, name, conditions) in v.conditions() {
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        let expected = if kind == "apikey" {
            "NotMinted"
        } else {
            "Valid"
        };
        assert_eq!(ready.reason, expected, "{kind}/{name}: {}", ready.message);
    }
}

/// The Istio target's rendering: (resources, gateway patch).
fn istio_render(
    v: &validate::Validation,
    s: &layergate_operator::istio::IstioSettings,
) -> Result<(Vec<Value>, Value), anyhow::Error> {
    use layergate_operator::render::{self, Output, Target};
    let settings = layergate_operator::output::Settings {
        listen: "127.0.0.1:8080".parse()?,
        admin: "127.0.0.1:9901".parse()?,
        filter: Default::default(),
        wasm_path: "unused.wasm".into(),
        control: None,
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        gateway_replicas: 1,
        limits: Default::default(),
        access_log_path: None,
    };
    match render::render(v, &settings, &Target::Istio(s.clone()), None)?.output {
        Output::Istio {
            resources,
            gateway_patch,
            ..
        } => Ok((resources, gateway_patch)),
        Output::Envoy(_) => anyhow::bail!("the Istio target rendered Envoy files"),
    }
}

/// Istio's CRD schemas (`tests/python/istio_validate.py`) on a JSON array of resources:
/// (passed, report).
fn validate_istio(docs: &str) -> (bool, Value) {
    let out = piped(
        Command::new(paths::python().unwrap())
            .arg(paths::repo_root().join("tests/python/istio_validate.py")),
        docs,
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.success(), report)
}

/// `render --target istio` for the example (plus the Secret the README has the user create):
/// every resource passes Istio's CRD schemas (strictly: no unknown field), credentials stay
/// out of them, and the filter accepts the configuration the WasmPlugin carries.
#[test]
fn the_istio_target_passes_istios_schemas_and_keeps_credentials_out() {
    use layergate_operator::istio::{self, IstioSettings};
    let mut objects = manifests::Objects::default();
    for d in kustomize("operator/deploy/example") {
        objects.add_yaml("example", &serde_yaml::to_string(&d).unwrap());
    }
    objects.add_yaml("secret", "apiVersion: v1\nkind: Secret\nmetadata: {name: turbopuffer, namespace: layer}\nstringData: {api-key: tpuf_secret_value}\n");
    let v = validate::validate(&objects, "layer", 1_800_000_000);
    let settings = IstioSettings {
        control: Some(("layergate-operator.layer.svc.cluster.local".into(), 9902)),
        ..IstioSettings::default()
    };
    let (resources, patch) = istio_render(&v, &settings).unwrap();
    let text = serde_json::to_string(&resources).unwrap();
    assert!(
        !text.contains("tpuf_secret_value"),
        "a credential leaked into an Istio resource"
    );
    let kinds: Vec<&str> = resources
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "WasmPlugin",
            "ServiceEntry",
            "DestinationRule",
            "Gateway",
            "VirtualService",
            "EnvoyFilter"
        ]
    );

    let (ok, report) = validate_istio(&text);
    assert!(ok, "{report}");
    assert_eq!(report["checked"], 6);
    // Against Istio 1.31's schemas (the first to know FAIL_RELOAD is 1.27).
    assert!(
        report["istio_models"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.31.")),
        "validated with Istio models {} — run `make venv`",
        report["istio_models"]
    );
    // The check can fail: a misspelt field and a wrong enum are both refused.
    let mut broken = resources.clone();
    broken[0]["spec"]["failStrategy"] = "FAIL_CLOSED".into();
    broken[4]["spec"]["http"][0]["rewrite"]["authorty"] = "x".into();
    let (ok, report) = validate_istio(&serde_json::to_string(&broken).unwrap());
    assert!(!ok);
    let errors = report["errors"].to_string();
    assert!(
        errors.contains("failStrategy") && errors.contains("authorty"),
        "{errors}"
    );

    // Fail safe: a panic fails one request and reloads the VM (FAIL_CLOSE would keep the VM
    // failed, 503 for that worker until the pod restarts); credentials from the proxy's
    // environment, which the patch fills from the store's Secret.
    let plugin = &resources[0]["spec"];
    assert_eq!(plugin["failStrategy"], "FAIL_RELOAD");
    let env = &plugin["vmConfig"]["env"][0];
    assert_eq!(env["valueFrom"], "HOST");
    let var = env["name"].as_str().unwrap();
    let container = &patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "istio-proxy");
    assert_eq!(container["env"][0]["name"], var);
    assert_eq!(
        container["env"][0]["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "turbopuffer", "key": "api-key"})
    );
    // FAIL_CLOSE only when asked for (meshes before Istio 1.27); FAIL_OPEN never.
    let older = IstioSettings {
        fail_strategy: istio::FailStrategy::parse("FAIL_CLOSE").unwrap(),
        ..settings.clone()
    };
    let (closed, _) = istio_render(&v, &older).unwrap();
    assert_eq!(closed[0]["spec"]["failStrategy"], "FAIL_CLOSE");
    let (ok, report) = validate_istio(&serde_json::to_string(&closed).unwrap());
    assert!(ok, "{report}");
    assert!(istio::FailStrategy::parse("FAIL_OPEN").is_err());
    let config = serde_json::to_vec(&plugin["pluginConfig"]).unwrap();
    let policy = layergate_filter::policy::Policy::from_json(&config, |name| {
        (name == var).then(|| "tpuf_secret_value".to_owned())
    })
    .unwrap();
    assert_eq!(policy.stores.len(), 1);
    // Routes: the store (inspect and plain) and the control API; the buffer filter is
    // disabled on all but the inspect route.
    let routes: Vec<&str> = resources[4]["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        [
            "layergate-store-turbopuffer-default-inspect",
            "layergate-store-turbopuffer-default",
            "layergate-control"
        ]
    );
    let disabled: Vec<&str> = resources[5]["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["match"]["routeConfiguration"]["vhost"]["route"]["name"].as_str())
        .collect();
    assert_eq!(
        disabled,
        ["layergate-store-turbopuffer-default", "layergate-control"]
    );
}

/// Two stores whose names differ only by a separator (`prod-eu`, `prod.eu`), on a gateway that
/// also serves other teams' hosts: each store's credential has its own variable, filled from
/// its own Secret; every store's certificate must name its host; the WasmPlugin and the buffer
/// EnvoyFilter apply to the layergate port only and the filter acts only for the Gateway's
/// hosts. All of it passes Istio's schemas.
#[test]
fn the_istio_target_keeps_stores_apart_verifies_upstreams_and_is_scoped_to_its_gateway() {
    use layergate_operator::istio::IstioSettings;
    let mut objects = manifests::Objects::default();
    let store = |name: &str, secret: &str, region: &str, default: bool| {
        format!(
            "apiVersion: hevlayer.com/v1alpha1\nkind: VectorStore\nmetadata: {{name: {name}, namespace: layer}}\nspec:\n  kind: turbopuffer\n  default: {default}\n  endpoint: {{url: https://{region}.turbopuffer.com, region: {region}}}\n  credential: {{secretRef: {{name: {secret}, key: api-key}}}}\n  inboundAuth: {{mode: deriveFromStore}}\n"
        )
    };
    objects.add_yaml("a", &store("prod-eu", "org-a", "gcp-europe-west3", true));
    objects.add_yaml("b", &store("prod.eu", "org-b", "aws-eu-central-1", false));
    objects.add_yaml("s", "apiVersion: v1\nkind: Secret\nmetadata: {name: org-a, namespace: layer}\nstringData: {api-key: tpuf_org_a}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: org-b, namespace: layer}\nstringData: {api-key: tpuf_org_b}\n");
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    let v = validate::validate(&objects, "layer", 1_800_000_000);
    let settings = IstioSettings {
        hosts: vec!["vectors.example.com".into()],
        ..IstioSettings::default()
    };
    let (resources, patch) = istio_render(&v, &settings).unwrap();
    let (ok, report) = validate_istio(&serde_json::to_string(&resources).unwrap());
    assert!(ok, "{report}");
    let of =
        |kind: &str| -> Vec<&Value> { resources.iter().filter(|r| r["kind"] == kind).collect() };

    // One variable per store, each filled from that store's own Secret.
    let plugin = &of("WasmPlugin")[0]["spec"];
    let vars: Vec<&str> = plugin["vmConfig"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars.len(), 2);
    assert_ne!(vars[0], vars[1], "two stores share a credential variable");
    let env = patch["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let secret_of = |var: &str| {
        env.iter().find(|e| e["name"] == var).unwrap()["valueFrom"]["secretKeyRef"]["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let config = serde_json::to_vec(&plugin["pluginConfig"]).unwrap();
    let secrets = [("org-a", "tpuf_org_a"), ("org-b", "tpuf_org_b")];
    let policy = layergate_filter::policy::Policy::from_json(&config, |var| {
        let secret = secret_of(var);
        secrets
            .iter()
            .find(|(s, _)| *s == secret)
            .map(|(_, value)| (*value).to_owned())
    })
    .unwrap();
    assert_eq!(policy.stores.len(), 2);
    let credential_of = |store: &str| {
        plugin["pluginConfig"]["stores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == store)
            .unwrap()["credential"]["env"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(secret_of(&credential_of("prod-eu")), "org-a");
    assert_eq!(secret_of(&credential_of("prod.eu")), "org-b");

    // Each store's certificate must name its host.
    for dr in of("DestinationRule") {
        let host = dr["spec"]["host"].as_str().unwrap();
        let tls = &dr["spec"]["trafficPolicy"]["tls"];
        assert_eq!(tls["mode"], "SIMPLE");
        assert_eq!(tls["sni"], host);
        assert_eq!(tls["subjectAltNames"], serde_json::json!([host]), "{dr}");
    }

    // Scoped to the layergate port and hosts.
    assert_eq!(
        plugin["match"],
        serde_json::json!([{"ports": [{"number": settings.port}]}])
    );
    assert_eq!(
        plugin["pluginConfig"]["hosts"],
        serde_json::json!(["vectors.example.com"])
    );
    let server = &of("Gateway")[0]["spec"]["servers"][0];
    assert_eq!(server["port"]["number"], settings.port);
    assert_eq!(server["hosts"], serde_json::json!(["vectors.example.com"]));
    let patches = of("EnvoyFilter")[0]["spec"]["configPatches"]
        .as_array()
        .unwrap();
    assert!(patches.len() >= 3);
    for p in patches {
        let m = &p["match"];
        let port = if p["applyTo"] == "HTTP_FILTER" {
            &m["listener"]["portNumber"]
        } else {
            &m["routeConfiguration"]["portNumber"]
        };
        assert_eq!(*port, settings.port, "{p}");
    }
    // The default is a dedicated gateway; `*` hosts render no host list (every host).
    let defaults = IstioSettings::default();
    assert_eq!(
        defaults.selector.get("istio").map(String::as_str),
        Some("layergate-ingressgateway")
    );
    let (resources, _) = istio_render(&v, &defaults).unwrap();
    assert!(resources[0]["spec"]["pluginConfig"].get("hosts").is_none());
}

/// The control port (mint, revoke, and under `deriveFromStore` the store credential as the
/// bootstrap bearer) admits the gateway pods and nothing else: a NetworkPolicy selects exactly
/// the operator's pods, isolates their ingress, and names one peer, the gateway's pod labels
/// in the same namespace, on the control port only.
#[test]
fn only_the_gateway_pods_may_reach_the_operators_control_port() {
    let docs = kustomize("operator/deploy");
    let policies: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .collect();
    assert_eq!(policies.len(), 1, "one NetworkPolicy in operator/deploy");
    let spec = &policies[0]["spec"];
    let labels = |name: &str| {
        find(&docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"].clone()
    };
    // A selector matches a pod when every one of its labels is on the pod.
    let selects = |selector: &Value, pod: &Value| {
        selector["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| pod[k] == *v)
    };
    let (operator, gateway) = (labels("layergate-operator"), labels("layergate-gateway"));
    assert!(selects(&spec["podSelector"], &operator), "{spec}");
    assert!(!selects(&spec["podSelector"], &gateway), "{spec}");
    assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]));
    let rules = spec["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{spec}");
    let peers = rules[0]["from"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{spec}");
    // Same namespace only (no namespaceSelector, no ipBlock), the gateway's pods only.
    assert!(peers[0].get("namespaceSelector").is_none() && peers[0].get("ipBlock").is_none());
    assert!(selects(&peers[0]["podSelector"], &gateway), "{spec}");
    assert!(!selects(&peers[0]["podSelector"], &operator), "{spec}");
    // The control port and the key service's, by the container ports' names.
    let container = &find(&docs, "Deployment", "layergate-operator")["spec"]["template"]["spec"]
        ["containers"][0];
    let port = |n: u16| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["containerPort"] == n)
            .unwrap()["name"]
            .clone()
    };
    assert_eq!(
        rules[0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": port(9902)}, {"protocol": "TCP", "port": port(9903)}])
    );
}

/// The Istio target's key service (SPEC §6): the operator's Service as a mesh destination
/// (`outbound|<port>||<svc>.<ns>.svc.cluster.local`, the cluster Istio gives the proxy), the
/// gateway credential from the proxy's environment, filled from the operator's Secret. At
/// 100,000 ApiKeys the WasmPlugin stays under 64 KiB and passes Istio's schemas.
#[test]
fn the_istio_target_syncs_keys_from_the_operator_service_and_stays_small() {
    use layergate_operator::istio::IstioSettings;
    use layergate_operator::keyservice::{CREDENTIAL_ENV, CREDENTIAL_KEY, CREDENTIAL_SECRET};
    let mut objects = manifests::Objects::default();
    for d in kustomize("operator/deploy/example") {
        objects.add_yaml("example", &serde_yaml::to_string(&d).unwrap());
    }
    objects.add_yaml("secret", "apiVersion: v1\nkind: Secret\nmetadata: {name: turbopuffer, namespace: layer}\nstringData: {api-key: tpuf_secret_value}\n");
    let mut v = validate::validate(&objects, "layer", 1_800_000_000);
    for i in 0..100_000 {
        let key: layergate_filter::config::ApiKeyConfig = serde_json::from_value(serde_json::json!({
            "keyId": format!("key_{i:024x}"), "name": format!("k{i}"),
            "lookupHash": format!("sha256:{:064x}", i + 1),
            "entitlements": {"vectorstore.turbopuffer": {"scopes": ["read"], "namespaces": [format!("team-{i}-*")]}},
        }))
        .unwrap();
        v.keys.push(std::sync::Arc::new(validate::Verdict {
            name: key.name.clone(),
            conditions: Vec::new(),
            valid: Some(key),
        }));
    }
    let settings = IstioSettings {
        control: Some(("layergate-operator.layer.svc".into(), 9902)),
        ..IstioSettings::default()
    };
    let (resources, patch) = istio_render(&v, &settings).unwrap();
    let plugin = serde_json::to_string(&resources[0]).unwrap();
    eprintln!("100,000 ApiKeys: the WasmPlugin is {} bytes", plugin.len());
    assert!(plugin.len() < 64 * 1024, "{} bytes", plugin.len());
    let spec = &resources[0]["spec"];
    assert!(spec["pluginConfig"].get("apiKeys").is_none());
    assert_eq!(
        spec["pluginConfig"]["keyService"],
        serde_json::json!({"cluster": "outbound|9902||layergate-operator.layer.svc.cluster.local",
            "authority": "layergate-operator.layer.svc.cluster.local:9902", "path": "/v2/keys/sync",
            "credential": {"env": CREDENTIAL_ENV}, "maxStalenessSeconds": 300, "pollSeconds": 30})
    );
    assert!(spec["vmConfig"]["env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!({"name": CREDENTIAL_ENV, "valueFrom": "HOST"})));
    assert!(patch["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!({"name": CREDENTIAL_ENV, "valueFrom": {"secretKeyRef": {"name": CREDENTIAL_SECRET, "key": CREDENTIAL_KEY}}})));
    let (ok, report) = validate_istio(&serde_json::to_string(&resources).unwrap());
    assert!(ok, "{report}");
}

/// Issue 13: a drain could take both replicas at once, they could share a node, and minting
/// failed with 403 on clusters enforcing owner-reference permissions.
#[test]
fn both_deployments_survive_a_drain_and_minting_may_block_owner_deletion() {
    let docs = kustomize("operator/deploy");
    for name in ["layergate-gateway", "layergate-operator"] {
        let deployment = find(&docs, "Deployment", name);
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let pdb = find(&docs, "PodDisruptionBudget", name);
        assert_eq!(pdb["spec"]["minAvailable"], 1, "{name}");
        assert!(
            deployment["spec"]["replicas"].as_u64().unwrap() > 1,
            "{name}"
        );
        let selector = pdb["spec"]["selector"]["matchLabels"].as_object().unwrap();
        assert!(
            selector.iter().all(|(k, v)| labels[k] == *v),
            "{name}: the PDB selects the Deployment's pods"
        );
        let anti = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
        assert_eq!(anti["topologyKey"], "kubernetes.io/hostname", "{name}");
        let own = anti["labelSelector"]["matchLabels"].as_object().unwrap();
        assert!(own.iter().all(|(k, v)| labels[k] == *v), "{name}");
    }
    let role = find(&docs, "Role", "layergate-operator");
    assert!(
        role["rules"].as_array().unwrap().iter().any(|r| {
            r["resources"] == serde_json::json!(["apikeys/finalizers"])
                && r["verbs"] == serde_json::json!(["update"])
        }),
        "{role}"
    );
}

/// Image names live in the Makefile (IMAGE_REGISTRY, IMAGE_TAG; `make image-filter` builds
/// FILTER_IMAGE): the deploy manifests run OPERATOR_IMAGE and the Istio target's WasmPlugin
/// pulls `oci://` FILTER_IMAGE by default.
#[test]
fn image_names_come_from_the_makefile() {
    let makefile = std::fs::read_to_string(paths::repo_root().join("Makefile")).unwrap();
    let var = |name: &str| {
        makefile
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(":=")?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("{name} not in the Makefile"))
    };
    let (registry, tag) = (var("IMAGE_REGISTRY"), var("IMAGE_TAG"));
    let operator_image = format!("{registry}/layergate-operator:{tag}");
    let filter_image = format!("{registry}/layergate-filter:{tag}");
    for file in [
        "operator/deploy/operator.yaml",
        "operator/deploy/gateway.yaml",
    ] {
        let text = std::fs::read_to_string(paths::repo_root().join(file)).unwrap();
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("image: ghcr.io/layergate/"))
        {
            assert_eq!(line.trim(), format!("image: {operator_image}"), "{file}");
        }
    }
    assert_eq!(
        layergate_operator::istio::IstioSettings::default().wasm_url,
        format!("oci://{filter_image}")
    );
}

/// Issue 13: the gateway drains on shutdown. Its preStop hook, run as shipped against a real
/// Envoy started with the Deployment's drain arguments (only the admin port and the sleep
/// differ: the test's Envoy listens on a free port, and waits 0 s instead of the drain time),
/// starts a graceful drain: a keep-alive request answered before it keeps its connection, one
/// answered after it gets `connection: close`, and Envoy counts the drain close. The hook
/// waits the drain time, within the grace period, on the admin address the bootstrap sets.
/// Before, `--drain-time-s` alone did nothing: Envoy closes its listeners at once on SIGTERM.
#[test]
fn the_gateway_drains_on_shutdown_through_its_pre_stop_hook() {
    use layergate_tests::envoy::Envoy;
    use layergate_tests::http::send_raw;
    let docs = kustomize("operator/deploy");
    let pod = &find(&docs, "Deployment", "layergate-gateway")["spec"]["template"]["spec"];
    let envoy = &pod["containers"][0];
    let args: Vec<&str> = envoy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |name: &str| {
        let at = args
            .iter()
            .position(|a| *a == name)
            .unwrap_or_else(|| panic!("{name}"));
        args[at + 1]
    };
    let drain_secs: u64 = arg("--drain-time-s").parse().unwrap();
    let strategy = arg("--drain-strategy");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        drain_secs + 5 <= grace,
        "drain {drain_secs} s, grace {grace} s"
    );
    let command: Vec<&str> = envoy["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(command[..2], ["/bin/bash", "-c"]);
    let script = command[2];
    let bootstrap =
        std::fs::read_to_string(paths::repo_root().join("operator/deploy/gateway-bootstrap.yaml"))
            .unwrap();
    assert!(
        bootstrap.contains("address: 127.0.0.1") && bootstrap.contains("port_value: 9901"),
        "the admin address the hook calls"
    );
    assert!(script.contains("/dev/tcp/127.0.0.1/9901"), "{script}");
    assert!(script.contains(&format!("sleep {drain_secs}")), "{script}");

    let any = "127.0.0.1:0".parse().unwrap();
    let gw = layergate_tests::demo::gateway(
        any,
        any,
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        layergate_tests::envoy::Filter::wasm().unwrap(),
        layergate_tests::demo::filter_config().unwrap(),
    );
    let envoy = Envoy::start_yaml_args(
        &gw.render(),
        &paths::repo_root(),
        1,
        &[
            "--drain-time-s",
            &drain_secs.to_string(),
            "--drain-strategy",
            strategy,
        ],
    )
    .unwrap();
    // Keep-alive: no `connection: close` from the client.
    let ask = || {
        send_raw(
            envoy.addr,
            b"GET /v1/namespaces/shop-a/metadata HTTP/1.1\r\nhost: gw\r\n\r\n",
        )
        .unwrap()
    };
    let before = ask();
    assert_eq!(before.status, 401);
    assert_ne!(before.header("connection"), Some("close"));
    let hook = script
        .replace(
            "/dev/tcp/127.0.0.1/9901",
            &format!("/dev/tcp/127.0.0.1/{}", envoy.admin.port()),
        )
        .replace(&format!("sleep {drain_secs}"), "sleep 0");
    let ran = Command::new("/bin/bash")
        .args(["-c", &hook])
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let after = ask();
    assert_eq!(
        after.status, 401,
        "the listener still answers while it drains"
    );
    assert_eq!(
        after.header("connection"),
        Some("close"),
        "{:?}",
        after.text()
    );
    assert!(
        envoy
            .stat("http.layergate.downstream_cx_drain_close")
            .unwrap()
            .unwrap_or(0)
            >= 1
    );
}

/// `kubectl kustomize` of the base with the Istio component (`operator/deploy/istio`), as the
/// component's header says to use it: from a kustomization of one's own (here in the target
/// directory; kustomize wants relative paths).
fn kustomize_istio() -> Vec<Value> {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kustomize-istio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let up = "../".repeat(dir.components().count() - 1);
    let root = paths::repo_root();
    let rel = |p: &str| {
        format!(
            "{up}{}",
            root.join(p).to_string_lossy().trim_start_matches('/')
        )
    };
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "resources: [{}]\ncomponents: [{}]\n",
            rel("operator/deploy"),
            rel("operator/deploy/istio")
        ),
    )
    .unwrap();
    let docs = kustomize(dir.to_str().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    docs
}

/// Kube mode's Istio target: the component runs the operator with `--target istio`, leaves
/// the Envoy gateway out, admits only the Istio gateway to the control port, and gives the
/// operator a least-privilege Role in the Istio namespace; all of it passes the Kubernetes
/// schemas strictly.
#[test]
fn the_istio_component_runs_the_istio_target_with_least_privilege() {
    use layergate_operator::istio::{IstioSettings, CREDENTIALS_SECRET, KINDS};
    let docs = kustomize_istio();
    let (code, out) = kubernetes_validate(&to_yaml(&docs));
    assert_eq!(code, 0, "{out}");
    let operator = &find(&docs, "Deployment", "layergate-operator")["spec"]["template"]["spec"];
    assert_eq!(
        operator["containers"][0]["args"],
        serde_json::json!(["run", "--source", "kube", "--target", "istio"])
    );
    assert!(!docs.iter().any(|d| d["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("layergate-gateway")));
    let defaults = IstioSettings::default();
    let policy = find(&docs, "NetworkPolicy", "layergate-operator-control");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": defaults.namespace}},
                            "podSelector": {"matchLabels": defaults.selector}}])
    );
    let in_ns = |kind: &str, ns: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("a {kind} in {ns}"))
    };
    let (role, binding) = (in_ns("Role", "layer"), in_ns("RoleBinding", "layer"));
    let mesh_role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == defaults.namespace.as_str())
        .expect("a Role in the Istio namespace");
    assert_eq!(
        role["metadata"]["namespace"], "layer",
        "the base's Role stays"
    );
    let mesh_binding = docs
        .iter()
        .find(|d| {
            d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == defaults.namespace.as_str()
        })
        .unwrap();
    assert_eq!(binding["metadata"]["namespace"], "layer");
    assert_eq!(
        mesh_binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "layergate-operator", "namespace": "layer"}])
    );
    assert_eq!(
        mesh_binding["roleRef"]["name"],
        mesh_role["metadata"]["name"]
    );
    // Every Istio kind the operator writes, and nothing wider: no wildcard, no get or watch on
    // Secrets beyond the one it owns, the gateway Deployment by name.
    let rules = mesh_role["rules"].as_array().unwrap();
    for (group, _, _, plural) in KINDS {
        assert!(
            rules.iter().any(|r| r["apiGroups"][0] == group
                && r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == plural)
                && r["verbs"]
                    == serde_json::json!(["list", "create", "patch", "update", "delete"])),
            "{plural}"
        );
    }
    for r in rules {
        let text = r.to_string();
        assert!(!text.contains('*') && !text.contains("watch"), "{text}");
        let resources = r["resources"].to_string();
        if resources.contains("secrets") && r["verbs"] != serde_json::json!(["create"]) {
            assert_eq!(
                r["resourceNames"],
                serde_json::json!([CREDENTIALS_SECRET]),
                "{text}"
            );
        }
        if resources.contains("deployments") {
            assert_eq!(
                r["resourceNames"],
                serde_json::json!([defaults.gateway_deployment]),
                "{text}"
            );
            assert_eq!(r["verbs"], serde_json::json!(["get", "patch"]));
        }
    }
}

/// Issue 15: the image recipes (images/*.Containerfile), the Makefile that fills their build
/// directories and the manifests that run them agree: the operator image is FROM scratch, runs
/// the binary it copies as its entrypoint, as the non-root user operator.yaml names; the
/// gateway's initContainer copies the filter from the path the image puts it at, with the
/// binary (no `cp`: the image has no shell), into the volume Envoy reads; every file a
/// Containerfile copies is one the Makefile puts in its build directory.
#[test]
fn the_containerfiles_agree_with_the_makefile_and_the_manifests() {
    let root = paths::repo_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let makefile = read("Makefile");
    let instructions = |file: &str| -> Vec<(String, String)> {
        read(file)
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_owned(), v.trim().to_owned())
            })
            .collect()
    };
    let copies = |ins: &[(String, String)]| -> Vec<(String, String)> {
        ins.iter()
            .filter(|(k, _)| k == "COPY")
            .map(|(_, v)| {
                let (src, dst) = v.split_once(' ').unwrap();
                (src.to_owned(), dst.to_owned())
            })
            .collect()
    };
    for (file, dir) in [
        ("images/operator.Containerfile", "target/image-operator"),
        ("images/filter.Containerfile", "target/image-filter"),
    ] {
        let ins = instructions(file);
        assert_eq!(ins[0], ("FROM".into(), "scratch".into()), "{file}");
        assert!(
            !ins.iter().any(|(k, _)| k == "RUN"),
            "{file}: nothing runs at build"
        );
        for (src, _) in copies(&ins) {
            assert!(
                makefile.contains(&format!(" {dir}/{src}\n")),
                "{file} copies {src}; the Makefile does not put it in {dir}"
            );
            assert!(
                makefile.contains(&format!("-f {file} {dir}")),
                "the Makefile builds {file} from {dir}"
            );
        }
    }
    let ins = instructions("images/operator.Containerfile");
    let copied = copies(&ins);
    let dest = |src: &str| {
        copied
            .iter()
            .find(|(s, _)| s == src)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("operator.Containerfile copies no {src}"))
    };
    let (binary, wasm) = (dest("layergate-operator"), dest("layergate_filter.wasm"));
    let get = |k: &str| {
        ins.iter()
            .find(|(i, _)| i == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("ENTRYPOINT"), format!("[\"{binary}\"]"));
    let docs = kustomize("operator/deploy");
    let operator = find(&docs, "Deployment", "layergate-operator");
    let uid = operator["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        .as_u64()
        .unwrap();
    assert_ne!(uid, 0);
    assert_eq!(get("USER"), format!("{uid}:{uid}"));
    let gateway = find(&docs, "Deployment", "layergate-gateway");
    let init = &gateway["spec"]["template"]["spec"]["initContainers"][0];
    assert!(
        init["command"].is_null(),
        "the image's entrypoint runs: {init}"
    );
    let mount = init["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(
        init["args"],
        serde_json::json!(["copy-filter", wasm, mount]),
        "{init}"
    );
}
