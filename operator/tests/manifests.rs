//! Manifests as users keep them: a kustomize directory (the shipped `operator/deploy/example`)
//! read the way `kubectl apply -k` reads it, and other kinds of object beside ours skipped
//! with a note on stderr instead of failing `check` and `render`.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::manifests;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("layergate-manifests-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn operator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_layergate-operator"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The shipped example is a kustomization (`namespace: layer`, three resources): it reads as
/// kubectl would apply it — every object in `layer`, nothing refused, nothing skipped.
#[test]
fn the_shipped_example_reads_as_kubectl_apply_k_would() {
    let objects = manifests::load_dir(&repo().join("operator/deploy/example")).unwrap();
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    assert!(objects.skipped.is_empty(), "{:?}", objects.skipped);
    assert_eq!(objects.stores.len(), 1);
    assert_eq!(objects.indexes.len(), 1);
    assert_eq!(objects.keys.len(), 1);
    let namespaces: Vec<_> = objects
        .stores
        .iter()
        .map(|o| o.metadata.namespace.clone())
        .chain(objects.indexes.iter().map(|o| o.metadata.namespace.clone()))
        .chain(objects.keys.iter().map(|o| o.metadata.namespace.clone()))
        .collect();
    assert!(
        namespaces.iter().all(|ns| ns.as_deref() == Some("layer")),
        "{namespaces:?}"
    );
}

/// `check -f` and `render -f` on the example as a user keeps it: the example's kustomization
/// plus the Secret the README has the user create, and a Deployment of their own beside it.
/// Both succeed; the Deployment and the kustomize feature that is not applied are named on
/// stderr; a misspelt kind of ours is still an error.
#[test]
fn check_and_render_work_on_a_kustomize_directory_and_skip_other_kinds() {
    let dir = scratch("kustomize");
    for f in ["vectorstore.yaml", "index.yaml", "apikey.yaml"] {
        std::fs::copy(repo().join("operator/deploy/example").join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("secret.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: turbopuffer}\nstringData: {api-key: tpuf_example}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {name: apikey-shop-reader, labels: {hevlayer.com/apikey-token: shop-reader}}\nstringData: {token: hvl_Example0Token1Example2Token3Example4Token5}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("app.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop}\nspec: {}\n",
    )
    .unwrap();
    let example =
        std::fs::read_to_string(repo().join("operator/deploy/example/kustomization.yaml")).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!("{example}  - secret.yaml\n  - app.yaml\ncommonLabels: {{team: shop}}\n"),
    )
    .unwrap();
    // A file kustomize does not list is not read (kubectl apply -k would not apply it).
    std::fs::write(
        dir.join("notes.yaml"),
        "apiVersion: hevlayer.com/v1alpha1\nkind: VectorStor\nmetadata: {name: x}\n",
    )
    .unwrap();

    let d = dir.to_str().unwrap();
    let check = operator(&["check", "-f", d]);
    let (stdout, stderr) = (text(&check.stdout), text(&check.stderr));
    assert!(check.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("apps/v1 Deployment shop skipped"),
        "{stderr}"
    );
    assert!(stderr.contains("`commonLabels` is not applied"), "{stderr}");
    assert!(stdout.contains("(namespace layer)"), "{stdout}");

    let out = dir.join("out");
    let render = operator(&["render", "-f", d, "-o", out.to_str().unwrap()]);
    assert!(
        render.status.success(),
        "{}\n{}",
        text(&render.stdout),
        text(&render.stderr)
    );
    let config = std::fs::read_to_string(out.join("layergate.json")).unwrap();
    assert!(config.contains("turbopuffer-default"), "{config}");
    let istio = operator(&[
        "render",
        "-f",
        d,
        "-o",
        dir.join("istio").to_str().unwrap(),
        "--target",
        "istio",
    ]);
    assert!(istio.status.success(), "{}", text(&istio.stderr));

    // Without a kustomization every YAML file is read: the Deployment is skipped with a note,
    // a misspelt kind of ours is an error.
    std::fs::remove_file(dir.join("kustomization.yaml")).unwrap();
    let check = operator(&["check", "-f", d]);
    let (stdout, stderr) = (text(&check.stdout), text(&check.stderr));
    assert!(!check.status.success());
    assert!(stderr.contains("Deployment shop skipped"), "{stderr}");
    assert!(
        stdout.contains("notes.yaml") && stdout.contains("unsupported object"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: the store clusters' timeouts and circuit breakers are the operator's to set
/// (`LAYERGATE_UPSTREAM_*`), and reach both targets: the Envoy clusters (`connect_timeout`,
/// `circuit_breakers`) and routes (`timeout`), and the Istio DestinationRules
/// (`connectionPool`) and VirtualService routes (`timeout`). A value out of bounds is refused.
#[test]
fn upstream_limits_from_the_environment_reach_the_envoy_and_istio_renderings() {
    let dir = scratch("limits");
    let manifests = repo().join("envoy/demo/manifests");
    let limits = [
        ("LAYERGATE_UPSTREAM_CONNECT_TIMEOUT_MS", "750"),
        ("LAYERGATE_UPSTREAM_REQUEST_TIMEOUT_MS", "2500"),
        ("LAYERGATE_UPSTREAM_MAX_CONNECTIONS", "7"),
        ("LAYERGATE_UPSTREAM_MAX_PENDING_REQUESTS", "5"),
        ("LAYERGATE_UPSTREAM_MAX_REQUESTS", "9"),
    ];
    let render = |target: &str, out: &Path, env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_layergate-operator"))
            .args(["render", "-f", manifests.to_str().unwrap(), "-o"])
            .arg(out)
            .args(["--target", target])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let envoy = dir.join("envoy");
    let r = render("envoy", &envoy, &limits);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let json = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(envoy.join(f)).unwrap()).unwrap()
    };
    let clusters = json("cds.json");
    let clusters = clusters["resources"].as_array().unwrap();
    assert!(!clusters.is_empty());
    for c in clusters {
        assert_eq!(c["connect_timeout"], "0.750s", "{c}");
        let t = &c["circuit_breakers"]["thresholds"][0];
        assert_eq!(
            (
                &t["max_connections"],
                &t["max_pending_requests"],
                &t["max_requests"]
            ),
            (&7.into(), &5.into(), &9.into()),
            "{c}"
        );
    }
    // Every route action's timeout.
    fn route_timeouts(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                if o.contains_key("cluster_header") || o.contains_key("cluster") {
                    if let Some(t) = o.get("timeout") {
                        out.push(t.to_string());
                    }
                }
                o.values().for_each(|x| route_timeouts(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| route_timeouts(x, out)),
            _ => {}
        }
    }
    let mut timeouts = Vec::new();
    route_timeouts(&json("lds.json"), &mut timeouts);
    assert!(!timeouts.is_empty());
    assert!(timeouts.iter().all(|t| t == "\"2.500s\""), "{timeouts:?}");

    let istio = dir.join("istio");
    let r = render("istio", &istio, &limits);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let yaml = std::fs::read_to_string(istio.join("istio.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .filter_map(|d| serde_yaml::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d.is_object())
        .collect();
    let rules: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"] == "DestinationRule")
        .collect();
    assert!(!rules.is_empty());
    for d in rules {
        let pool = &d["spec"]["trafficPolicy"]["connectionPool"];
        assert_eq!(pool["tcp"]["connectTimeout"], "0.750s", "{d}");
        assert_eq!(pool["tcp"]["maxConnections"], 7, "{d}");
        assert_eq!(pool["http"]["http1MaxPendingRequests"], 5, "{d}");
        assert_eq!(pool["http"]["http2MaxRequests"], 9, "{d}");
    }
    let vs = docs.iter().find(|d| d["kind"] == "VirtualService").unwrap();
    for route in vs["spec"]["http"].as_array().unwrap() {
        assert_eq!(route["timeout"], "2.500s", "{route}");
    }

    for (var, bad) in [
        ("LAYERGATE_UPSTREAM_CONNECT_TIMEOUT_MS", "0"),
        ("LAYERGATE_UPSTREAM_REQUEST_TIMEOUT_MS", "1h"),
        ("LAYERGATE_UPSTREAM_MAX_REQUESTS", "100001"),
    ] {
        let r = render("envoy", &dir.join("bad"), &[(var, bad)]);
        assert!(!r.status.success());
        assert!(text(&r.stderr).contains(var), "{}", text(&r.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The command line is declared once (clap): every setting has its flag and its `LAYERGATE_*`
/// variable in `--help`, `--allow-endpoint` is accepted wherever it stands, and the
/// combinations one mode has no use for are refused with the reason, not ignored.
#[test]
fn the_command_line_names_every_setting_and_refuses_what_a_mode_cannot_use() {
    let run_help = text(&operator(&["run", "--help"]).stdout);
    for var in [
        "LAYERGATE_LISTEN",
        "LAYERGATE_ADMIN",
        "LAYERGATE_WASM",
        "LAYERGATE_CONTROL",
        "LAYERGATE_KEY_SERVICE",
        "LAYERGATE_CONTROL_UPSTREAM",
        "LAYERGATE_KEY_SERVICE_UPSTREAM",
        "LAYERGATE_AUTHENTICATE_PER_MINUTE",
        "LAYERGATE_LOG",
        "LAYERGATE_LOG_LEVEL",
        "LAYERGATE_OUTPUT_SECRET",
        "LAYERGATE_LEASE",
        "LAYERGATE_ISTIO_NAMESPACE",
        "LAYERGATE_ISTIO_SELECTOR",
        "LAYERGATE_ISTIO_GATEWAY_DEPLOYMENT",
        "LAYERGATE_ISTIO_PORT",
        "LAYERGATE_ISTIO_FAIL_STRATEGY",
        "LAYERGATE_WASM_URL",
        "LAYERGATE_HOSTS",
        "POD_NAME",
        "LAYERGATE_FILTER",
        "LAYERGATE_ENVOY_VERSION",
        "LAYERGATE_EXPIRING_SOON",
    ]
    .into_iter()
    .chain(layergate_operator::settings::UpstreamLimits::VARS.map(|(v, _, _)| v))
    {
        assert!(
            run_help.contains(&format!("[env: {var}=")),
            "{var} missing from run --help"
        );
    }

    // --allow-endpoint before or after the command's own flags.
    let manifests = repo().join("envoy/demo/manifests");
    let dir = manifests.to_str().unwrap();
    for args in [
        vec![
            "--allow-endpoint",
            "https://*.example.com",
            "check",
            "-f",
            dir,
        ],
        vec![
            "check",
            "-f",
            dir,
            "--allow-endpoint",
            "https://*.example.com",
        ],
    ] {
        let r = operator(&args);
        assert!(r.status.success(), "{args:?}: {}", text(&r.stderr));
    }
    let r = operator(&["check", "-f", dir, "--allow-endpoint", "ftp://x"]);
    assert!(!r.status.success());

    // The ExpiringSoon window: a duration or off, wherever it stands; a bad one names the
    // flag and the variable, from the flag as from the environment.
    for window in ["36h", "off"] {
        let r = operator(&["check", "-f", dir, "--expiring-soon", window]);
        assert!(r.status.success(), "{window}: {}", text(&r.stderr));
    }
    let r = operator(&["--expiring-soon", "never", "check", "-f", dir]);
    assert!(!r.status.success());
    let e = text(&r.stderr);
    assert!(
        e.contains("--expiring-soon") && e.contains("LAYERGATE_EXPIRING_SOON") && e.contains("off"),
        "{e}"
    );
    let r = Command::new(env!("CARGO_BIN_EXE_layergate-operator"))
        .args(["check", "-f", dir])
        .env("LAYERGATE_EXPIRING_SOON", "7 days")
        .output()
        .unwrap();
    assert!(!r.status.success());
    let e = text(&r.stderr);
    assert!(
        e.contains("--expiring-soon") && e.contains("LAYERGATE_EXPIRING_SOON"),
        "{e}"
    );

    for (args, reason) in [
        (
            vec!["run", "--source", "kube", "--out", "/tmp/x"],
            "--out is directory mode's",
        ),
        (vec!["run", "--source", "dir:/tmp/x"], "needs --out"),
        (
            vec![
                "run",
                "--source",
                "dir:/tmp/x",
                "--out",
                "/tmp/y",
                "--target",
                "istio",
            ],
            "kube mode's",
        ),
        (vec!["run", "--source", "files"], "must be kube or dir:PATH"),
        (
            vec!["render", "-f", dir, "-o", "/tmp/x", "--target", "nginx"],
            "nginx",
        ),
    ] {
        let r = operator(&args);
        assert!(!r.status.success(), "{args:?}");
        assert!(
            text(&r.stderr).contains(reason),
            "{args:?}: {}",
            text(&r.stderr)
        );
    }
    let r = Command::new(env!("CARGO_BIN_EXE_layergate-operator"))
        .args(["render", "-f", dir, "-o", "/tmp/x", "--target", "istio"])
        .env("LAYERGATE_ISTIO_SELECTOR", "istio")
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(text(&r.stderr).contains("key=value"), "{}", text(&r.stderr));
}

/// `--filter native` renders the dynamic-module filter, and only for an Envoy that loads it:
/// 1.39.x and 1.40.x (the build is pinned to 1.39's ABI), never for Istio, never without the
/// Envoy version to judge; the reason is said.
#[test]
fn the_native_build_is_rendered_only_for_an_envoy_that_can_load_it() {
    let dir = scratch("native");
    let manifests = repo().join("envoy/demo/manifests");
    let manifests = manifests.to_str().unwrap();
    let render = |out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut args = vec!["render", "-f", manifests, "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        (operator(&args), out)
    };
    for version in ["1.39.0", "1.39.3", "1.40.0", "v1.40"] {
        let (r, out) = render(version, &["--filter", "native", "--envoy-version", version]);
        assert!(r.status.success(), "{version}: {}", text(&r.stderr));
        let lds = std::fs::read_to_string(out.join("lds.json")).unwrap();
        assert!(lds.contains("envoy.filters.http.dynamic_modules"), "{lds}");
        assert!(lds.contains("liblayergate_native.so"), "{lds}");
        assert!(!lds.contains("envoy.filters.http.wasm"), "{lds}");
    }
    for (args, reason) in [
        (
            vec!["--filter", "native", "--envoy-version", "1.38.2"],
            "only Envoy 1.39.x and 1.40.x",
        ),
        (
            vec!["--filter", "native", "--envoy-version", "1.41.0"],
            "only Envoy 1.39.x and 1.40.x",
        ),
        (
            vec!["--filter", "native", "--envoy-version", "latest"],
            "not an Envoy version",
        ),
        (vec!["--filter", "native"], "needs --envoy-version"),
        (
            vec![
                "--filter",
                "native",
                "--envoy-version",
                "1.40.0",
                "--target",
                "istio",
            ],
            "WasmPlugin",
        ),
        (vec!["--envoy-version", "1.35.0"], "1.36 to 1.40"),
    ] {
        let (r, _) = render("refused", &args);
        assert!(!r.status.success(), "{args:?}");
        assert!(
            text(&r.stderr).contains(reason),
            "{args:?}: {}",
            text(&r.stderr)
        );
    }
    // The wasm build stays the default, for any Envoy from 1.36.
    let (r, out) = render("wasm", &["--envoy-version", "1.36.4"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let lds = std::fs::read_to_string(out.join("lds.json")).unwrap();
    assert!(lds.contains("envoy.filters.http.wasm"), "{lds}");
    let _ = std::fs::remove_dir_all(&dir);
}
