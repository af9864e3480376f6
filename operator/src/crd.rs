//! The `hevlayer.com` custom resources: VectorStore (`v1alpha1`), Index (`v1`), ApiKey
//! (`v1alpha1`). Manifests written for hev layer apply unchanged. Every field's doc comment
//! becomes its description in the generated CRD (`kubectl explain`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use layergate_filter::scope::Scope;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::limits::{LimitsSpec, QuotaSpec};

/// A reference to one key of a Secret in the object's own namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as the referring object).
    #[schemars(schema_with = "secret_name")]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(schema_with = "secret_key")]
    pub key: String,
}

/// A Secret's name as Kubernetes accepts it: a DNS subdomain (RFC 1123), 1-253 characters.
pub const SECRET_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A key of a Secret's data as Kubernetes accepts it.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

fn secret_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 253,
        "pattern": SECRET_NAME_PATTERN})
}

fn secret_key(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 253,
        "pattern": SECRET_KEY_PATTERN})
}

/// Store kinds the schema accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// turbopuffer (supported).
    Turbopuffer,
    /// Pinecone: reserved by the schema, rejected by the operator (`UnsupportedKind`).
    Pinecone,
}

/// Where the store's API lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Upstream API base URL, e.g. `https://aws-us-east-1.turbopuffer.com`: scheme, host and
    /// optional port, nothing else. The operator sends the store credential only to endpoints
    /// its allowlist admits (`https://*.turbopuffer.com`, loopback for local use, and what
    /// `--allow-endpoint` adds); any other is `InvalidEndpoint`.
    #[schemars(schema_with = "endpoint_url")]
    pub url: String,
    /// Operator-visible region label for this store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// turbopuffer-specific settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurbopufferSettings {
    /// The turbopuffer organization id (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
}

/// The store credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// Secret key holding the store's API key. The credential never appears in a CRD, a
    /// status, a log line or an event.
    pub secret_ref: SecretKeyRef,
}

/// What bearer tokens the gateway accepts for requests this store serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum InboundMode {
    /// Accept the default store's credential (and this store's own) as the inbound bearer;
    /// full scopes. The single-tenant BYOC shape.
    #[default]
    DeriveFromStore,
    /// Accept the listed key Secrets with their scopes.
    Keys,
    /// No inbound auth. Use only for explicitly open environments.
    Open,
}

/// One inbound key (mode `keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundKeySpec {
    /// Key name, unique within the store; logged as the principal `key:<store>/<name>`.
    pub name: String,
    /// Scopes: a subset of read, write, admin (admin satisfies read and write).
    pub scopes: Vec<Scope>,
    /// Secret key holding the token.
    pub secret_ref: SecretKeyRef,
    /// Rate limit of this key (a layergate extension); absent: the store's
    /// `inboundAuth.defaultKeyLimits`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
}

/// Inbound auth policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct InboundAuth {
    /// deriveFromStore (default), keys or open.
    #[serde(default)]
    pub mode: InboundMode,
    /// The accepted keys; only with mode `keys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<InboundKeySpec>,
    /// Limits of the keys in `keys` that declare none (a layergate extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_key_limits: Option<LimitsSpec>,
}

/// A VectorStore: the gateway's upstream connection to one turbopuffer org/region.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "hevlayer.com",
    version = "v1alpha1",
    kind = "VectorStore",
    namespaced,
    status = "VectorStoreStatus",
    shortname = "vs",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.kind"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.default"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reachable","type":"boolean","jsonPath":".status.reachable"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VectorStoreSpec {
    /// Store kind: turbopuffer. `pinecone` is reserved by the schema but rejected by the
    /// operator until implemented.
    pub kind: StoreKind,
    /// Marks the store used when an Index omits spec.backend.storeRef and for namespaces
    /// without an Index. A single store is treated as the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// Upstream API endpoint.
    pub endpoint: Endpoint,
    /// turbopuffer-specific settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turbopuffer: Option<TurbopufferSettings>,
    /// The store credential (a Secret key in the same namespace).
    pub credential: Credential,
    /// The inbound auth policy the gateway applies to requests this store serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_auth: Option<InboundAuth>,
}

/// Observed state of a VectorStore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VectorStoreStatus {
    /// True when the store answered the last probe (any HTTP answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions; `Ready` is True when the spec is valid and the probe answered 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The Index's backend: which store serves which upstream namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct IndexBackend {
    /// VectorStore serving this Index; omitted = the default store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_ref: Option<String>,
    /// Upstream namespace (turbopuffer's name); omitted = the Index name. Clients address
    /// this name; routing is keyed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "namespace_name")]
    pub namespace: Option<String>,
    /// Distance metric (accepted and preserved; layergate does not interpret it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_metric: Option<String>,
}

/// An Index: maps an upstream namespace to a VectorStore. Only `spec.backend` matters to the
/// gateway; the other fields are hev layer's and are accepted and preserved.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "hevlayer.com",
    version = "v1",
    kind = "Index",
    namespaced,
    status = "IndexStatus",
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".spec.backend.storeRef"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.backend.namespace"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IndexSpec {
    /// Where the Index lives.
    #[serde(default)]
    pub backend: IndexBackend,
    /// hev layer metadata (labels, tags); preserved, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub metadata: Option<serde_json::Value>,
    /// hev layer snapshot policy; preserved, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub snapshot: Option<serde_json::Value>,
    /// hev layer scan settings; preserved, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub scan: Option<serde_json::Value>,
    /// hev layer cache settings; preserved, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub cache: Option<serde_json::Value>,
    /// hev layer consistency level; preserved, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
}

/// Observed state of an Index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct IndexStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions; `Ready=False, reason=Conflict` names the Index that owns the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The patterns below are the operator's own checks, so `kubectl apply` refuses early what
/// the operator would refuse (SPEC §7). Each is optional in its field.
fn expires_after(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "nullable": true,
        "pattern": layergate_filter::time::duration_pattern()})
}

/// Upstream namespace names (turbopuffer's alphabet, 1-128 characters).
pub const NAMESPACE_PATTERN: &str = "^[A-Za-z0-9_.-]{1,128}$";
/// Namespace globs (the alphabet plus `*` and `?`, 1-256 characters).
pub const GLOB_PATTERN: &str = "^[A-Za-z0-9_.*?-]{1,256}$";
/// A base URL: scheme, host, optional port and trailing slash; no path, query or user.
pub const ENDPOINT_PATTERN: &str = "^https?://[A-Za-z0-9.:\\[\\]-]+/?$";

fn namespace_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "nullable": true, "pattern": NAMESPACE_PATTERN})
}

fn namespace_globs(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "array", "nullable": true, "minItems": 1,
        "items": {"type": "string", "pattern": GLOB_PATTERN}})
}

fn endpoint_url(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "pattern": ENDPOINT_PATTERN})
}

/// An object whose fields Kubernetes keeps as written.
fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// What an entitlement grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct EntitlementSpec {
    /// Scopes: read, write, admin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<Scope>,
    /// Upstream namespace globs (`*`, `?`); omitted = all namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "namespace_globs")]
    pub namespaces: Option<Vec<String>>,
    /// Opaque claims (warehouse targets); stored and echoed by authenticate only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
}

/// A minted API key (hev layer's model). The operator mints the token once, delivers it in a
/// Secret owned by the ApiKey and records only its SHA-256 lookup hash.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "hevlayer.com",
    version = "v1alpha1",
    kind = "ApiKey",
    namespaced,
    status = "ApiKeyStatus",
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"LastSeen","type":"date","jsonPath":".status.lastSeenAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Who the key is for; echoed in list and authenticate responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Target → grant. Targets: `vectorstore.<name>` (data plane of that store),
    /// `layer` (namespace-less app and control routes), `agent.<name>`, `warehouse.<name>`
    /// (claims only).
    #[serde(default)]
    pub entitlements: BTreeMap<String, EntitlementSpec>,
    /// Lifetime from creation: a whole number of days, hours, minutes or seconds (`365d`,
    /// `12h`, `30m`, `45s`), at most 100 years, or `never`. Default 365d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "expires_after")]
    pub expires_after: Option<String>,
    /// Declarative revoke: true keeps the record (phase Revoked) and removes the key from
    /// the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
    /// Use the token in this Secret instead of minting one (pre-provisioned keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// Rate limit and quotas (a layergate extension). Absent: none, unless the key was minted
    /// through the API by a limited key, whose limits it then carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
}

/// Lifecycle of a minted key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiKeyPhase {
    /// Not minted yet (or its Secret is missing).
    Pending,
    /// Usable.
    Active,
    /// Revoked; kept for the record.
    Revoked,
    /// Past `expiresAt`.
    Expired,
}

/// Observed state of an ApiKey. Never contains the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// Stable key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Pending, Active, Revoked or Expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ApiKeyPhase>,
    /// `sha256:<hex>` of the token: how the gateway recognizes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup_hash: Option<String>,
    /// When the key was minted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When it expires (RFC 3339); absent = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it was revoked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// The Secret holding the token (owned by this ApiKey).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (`Ready`, `EntitlementTargetMissing`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What the gateways saw of the key (written by the usage writer, never by a pass).
    #[serde(flatten)]
    pub observed: Observed,
}

/// What the gateways reported of a key: `lastSeenAt` (hev layer's field) and `usage` (a
/// layergate extension). Written apart from the rest of the status (its own field manager), at
/// a bounded rate; a pass's verdict neither reads nor writes it, so two statuses that differ
/// only here are the same verdict: `==` ignores it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    /// When a gateway last saw the key in use (RFC 3339); advances at most once per five
    /// minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
    /// Requests the gateways counted for the key since it was created (a layergate extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageCounts>,
    /// The key spent a quota and is refused until then (RFC 3339; a layergate extension):
    /// written by the leader when it happens, read by every replica's pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_spent_until: Option<String>,
}

impl PartialEq for Observed {
    fn eq(&self, _: &Observed) -> bool {
        true
    }
}

/// Requests counted for a key: allowed by scope, refused by status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub struct UsageCounts {
    /// Allowed requests by the scope their route required (`read`, `write`, `admin`).
    #[serde(default)]
    pub allowed: BTreeMap<String, u64>,
    /// Refused requests by HTTP status (`"403"`, …).
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
}

/// The three CRDs as YAML documents, in a stable order (what `layergate-operator crds` prints).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [VectorStore::crd(), Index::crd(), ApiKey::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// A status that carries conditions (every kind's), so status writers treat them alike.
pub trait Conditioned {
    /// The status's conditions.
    fn conditions(&self) -> &[Condition];
}

impl Conditioned for VectorStoreStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditioned for IndexStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditioned for ApiKeyStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}
