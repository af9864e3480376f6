//! The operator's Kubernetes permissions, as one table: every (API group, resource, verb) a
//! code path of `run --source kube` calls, and why. The Role in `operator/deploy/operator.yaml`
//! grants exactly these (a test compares the two, and runs the code paths against a recording
//! API server to check that each call is in the table and each entry is called). The Istio
//! target's calls in the Istio namespace are a second table, [`istio_permissions`], which the
//! Role in `operator/deploy/istio/rbac.yaml` grants exactly (checked the same way).

/// One permission: `verb` on `resource` of `group` (`""`: the core group), limited to the
/// object `name` when set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    /// The API group (`""` for core).
    pub group: &'static str,
    /// The resource, with its subresource (`apikeys/status`).
    pub resource: &'static str,
    /// The verb.
    pub verb: &'static str,
    /// The one object it is limited to (`resourceNames`), if any.
    pub name: Option<&'static str>,
    /// The code path that needs it.
    pub why: &'static str,
}

const fn p(
    group: &'static str,
    resource: &'static str,
    verb: &'static str,
    name: Option<&'static str>,
    why: &'static str,
) -> Permission {
    Permission {
        group,
        resource,
        verb,
        name,
        why,
    }
}

const HEV: &str = "hevlayer.com";
const CORE: &str = "";
const COORDINATION: &str = "coordination.k8s.io";
const EVENTS: &str = "events.k8s.io";

/// Everything the operator calls, in its own namespace. The Lease's name is
/// [`crate::lease::DEFAULT_LEASE`]; a Lease renamed with `LAYERGATE_LEASE` needs the Role's
/// `resourceNames` renamed too.
pub const PERMISSIONS: &[Permission] = &[
    p(
        HEV,
        "vectorstores",
        "list",
        None,
        "the cache's (re)list (informer/): passes read the cache",
    ),
    p(
        HEV,
        "vectorstores",
        "watch",
        None,
        "the cache's watch, which also triggers passes",
    ),
    p(
        HEV,
        "indexes",
        "list",
        None,
        "the cache's (re)list (informer/): passes read the cache",
    ),
    p(
        HEV,
        "indexes",
        "watch",
        None,
        "the cache's watch, which also triggers passes",
    ),
    p(
        HEV,
        "apikeys",
        "list",
        None,
        "the cache's (re)list (informer/): passes read the cache",
    ),
    p(
        HEV,
        "apikeys",
        "watch",
        None,
        "the cache's watch, which also triggers passes",
    ),
    p(
        HEV,
        "apikeys",
        "create",
        None,
        "control API mint (Cluster::create_key)",
    ),
    p(
        HEV,
        "apikeys",
        "patch",
        None,
        "control API revoke (Cluster::revoke_key)",
    ),
    p(
        HEV,
        "apikeys",
        "delete",
        None,
        "control API delete (Cluster::delete_key)",
    ),
    p(
        HEV,
        "vectorstores/status",
        "patch",
        None,
        "status writes (Cluster::write_statuses)",
    ),
    p(HEV, "indexes/status", "patch", None, "status writes"),
    p(HEV, "apikeys/status", "patch", None, "status writes"),
    p(
        HEV,
        "apikeys/finalizers",
        "update",
        None,
        "token Secrets' owner references set blockOwnerDeletion, which \
         OwnerReferencesPermissionEnforcement admits only with this",
    ),
    p(
        CORE,
        "secrets",
        "list",
        None,
        "the Secrets cache's (re)list (informer/), with data: passes read it, no get",
    ),
    p(
        CORE,
        "secrets",
        "watch",
        None,
        "the Secrets cache's watch, which also triggers passes",
    ),
    p(
        CORE,
        "secrets",
        "create",
        None,
        "minted tokens (mint_missing, create_key) and the gateway credential",
    ),
    p(
        CORE,
        "secrets",
        "patch",
        None,
        "the rendering (publish, server-side apply) and adopting pre-provisioned tokens",
    ),
    p(
        CORE,
        "secrets",
        "delete",
        None,
        "a token Secret left by a deleted key of the same name, a deleted key's labelled token",
    ),
    p(
        EVENTS,
        "events",
        "create",
        None,
        "Warning Events (Cluster::event_if_new, kube's events::Recorder)",
    ),
    p(
        EVENTS,
        "events",
        "patch",
        None,
        "the Recorder counts a repeat (same reason, same object, within 6 min) in the \
         first Event's series",
    ),
    p(
        COORDINATION,
        "leases",
        "create",
        None,
        "the first replica creates the Lease",
    ),
    p(
        COORDINATION,
        "leases",
        "get",
        Some(crate::lease::DEFAULT_LEASE),
        "leader election: read before each renewal",
    ),
    p(
        COORDINATION,
        "leases",
        "update",
        Some(crate::lease::DEFAULT_LEASE),
        "leader election: renew, take over, release",
    ),
];

const APPS: &str = "apps";
const ISTIO_NETWORKING: &str = "networking.istio.io";
const ISTIO_EXTENSIONS: &str = "extensions.istio.io";

/// The Istio kinds the Istio target renders, each listed by label, server-side applied
/// (`patch`; `create` when the object does not exist yet, which the API server authorizes as
/// `create`), replaced when a field another manager added survives the apply (`update`) and
/// deleted when the rendering no longer has it.
macro_rules! istio_kind {
    ($group:expr, $resource:expr) => {
        [
            p(
                $group,
                $resource,
                "list",
                None,
                "Istio target: the managed objects present",
            ),
            p(
                $group,
                $resource,
                "create",
                None,
                "Istio target: apply of a missing object",
            ),
            p(
                $group,
                $resource,
                "patch",
                None,
                "Istio target: server-side apply",
            ),
            p(
                $group,
                $resource,
                "update",
                None,
                "Istio target: replace a drifted object",
            ),
            p(
                $group,
                $resource,
                "delete",
                None,
                "Istio target: an object no longer rendered",
            ),
        ]
    };
}

const ISTIO_KINDS: [[Permission; 5]; 6] = [
    istio_kind!(ISTIO_EXTENSIONS, "wasmplugins"),
    istio_kind!(ISTIO_NETWORKING, "serviceentries"),
    istio_kind!(ISTIO_NETWORKING, "destinationrules"),
    istio_kind!(ISTIO_NETWORKING, "gateways"),
    istio_kind!(ISTIO_NETWORKING, "virtualservices"),
    istio_kind!(ISTIO_NETWORKING, "envoyfilters"),
];

const ISTIO_OTHERS: [Permission; 5] = [
    p(
        CORE,
        "secrets",
        "create",
        None,
        "Istio target: the credentials Secret, first pass (RBAC cannot name an object to create)",
    ),
    p(
        CORE,
        "secrets",
        "get",
        Some(crate::render::istio::CREDENTIALS_SECRET),
        "Istio target: the credentials Secret, read before it is replaced",
    ),
    p(
        CORE,
        "secrets",
        "update",
        Some(crate::render::istio::CREDENTIALS_SECRET),
        "Istio target: the credentials Secret, replaced whole",
    ),
    p(
        APPS,
        "deployments",
        "get",
        Some("layergate-ingressgateway"),
        "Istio target: the gateway's credential digest, read",
    ),
    p(
        APPS,
        "deployments",
        "patch",
        Some("layergate-ingressgateway"),
        "Istio target: the gateway's credential environment and digest annotation (rolls it)",
    ),
];

/// Everything the Istio target (`run --source kube --target istio`) calls in the Istio
/// namespace, beyond [`PERMISSIONS`] in its own: the Role in `operator/deploy/istio/rbac.yaml`
/// grants exactly these. The gateway Deployment's name is the default
/// `LAYERGATE_ISTIO_GATEWAY_DEPLOYMENT`; another name needs the Role's `resourceNames` renamed.
pub fn istio_permissions() -> Vec<Permission> {
    ISTIO_KINDS
        .iter()
        .flatten()
        .chain(ISTIO_OTHERS.iter())
        .copied()
        .collect()
}
