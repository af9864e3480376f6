//! What the code calls of the Kubernetes API: a recording client ([`Tap`]), the permissions a
//! set of recorded calls used, and the Role a manifest grants.

use kube::Client;
use serde_json::Value;

/// A kube client over the fake API server that records every request (method, path, query)
/// and can hold each LIST (a pass's reads) for a while: a slow API server.
#[derive(Clone)]
pub struct Tap {
    inner: Client,
    /// Every request: (method, path, query).
    pub calls: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    /// Milliseconds each LIST is held (0: not held).
    pub slow_lists_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Tap {
    /// Records what goes through to `inner`.
    pub fn new(inner: &Client) -> Tap {
        Tap {
            inner: inner.clone(),
            calls: std::sync::Arc::default(),
            slow_lists_ms: std::sync::Arc::default(),
        }
    }
    /// A client through the tap, `namespace` its default.
    pub fn client(&self, namespace: &str) -> Client {
        Client::new(self.clone(), namespace)
    }
}

impl tower_service::Service<hyper::Request<kube::client::Body>> for Tap {
    type Response = hyper::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, kube::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), kube::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: hyper::Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            this.calls
                .lock()
                .unwrap()
                .push((method.clone(), path.clone(), query.clone()));
            let segments = path.trim_start_matches('/').split('/').count();
            // A collection: /api/v1/namespaces/NS/R (5) or /apis/G/V/namespaces/NS/R (6).
            let collection = segments == if path.starts_with("/api/") { 5 } else { 6 };
            let slow = this.slow_lists_ms.load(std::sync::atomic::Ordering::SeqCst);
            if method == "GET" && collection && !query.contains("watch") && slow > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
            }
            this.inner.send(req).await
        })
    }
}

/// The Kubernetes API calls a set of recorded requests made: (group, resource, verb).
pub fn permissions_used(
    calls: &[(String, String, String)],
) -> std::collections::BTreeSet<(String, String, String)> {
    calls
        .iter()
        .map(|(method, path, query)| {
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            // api/v1/namespaces/NS/R[/NAME[/SUB]] or apis/G/V/namespaces/NS/R[/NAME[/SUB]]
            let (group, rest) = if segs[0] == "api" {
                ("", &segs[4..])
            } else {
                (segs[1], &segs[5..])
            };
            let resource = match rest {
                [r, _, sub] => format!("{r}/{sub}"),
                [r, ..] => (*r).to_owned(),
                [] => panic!("{path}"),
            };
            let verb = match (method.as_str(), rest.len()) {
                ("GET", 1) if query.contains("watch=true") => "watch",
                ("GET", 1) => "list",
                ("GET", _) => "get",
                ("POST", _) => "create",
                ("PUT", _) => "update",
                ("PATCH", _) => "patch",
                ("DELETE", _) => "delete",
                (m, _) => panic!("{m} {path}"),
            };
            (group.to_owned(), resource, verb.to_owned())
        })
        .collect()
}

/// Asserts that the first Role in the YAML file `path` grants exactly `table`: every
/// (group, resource, verb, resourceName), none twice, none more, none less.
pub fn assert_role_is(path: &std::path::Path, table: &[layergate_operator::rbac::Permission]) {
    use std::collections::BTreeSet;
    let text = std::fs::read_to_string(path).unwrap();
    let role = text
        .split("\n---")
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap())
        .find(|d| d["kind"] == "Role")
        .unwrap();
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let names = list("resourceNames");
        assert!(names.len() <= 1, "{rule}");
        for g in list("apiGroups") {
            for r in list("resources") {
                for v in list("verbs") {
                    let name = names.first().cloned();
                    assert!(
                        granted.insert((g.clone(), r.clone(), v, name)),
                        "{rule}: twice"
                    );
                }
            }
        }
    }
    let want: BTreeSet<_> = table
        .iter()
        .map(|p| {
            (
                p.group.to_owned(),
                p.resource.to_owned(),
                p.verb.to_owned(),
                p.name.map(str::to_owned),
            )
        })
        .collect();
    let none = Vec::<&(String, String, String, Option<String>)>::new();
    assert_eq!(
        granted.difference(&want).collect::<Vec<_>>(),
        none,
        "{}: the Role grants more than rbac.rs",
        path.display()
    );
    assert_eq!(
        want.difference(&granted).collect::<Vec<_>>(),
        none,
        "{}: the Role grants less than rbac.rs",
        path.display()
    );
}
