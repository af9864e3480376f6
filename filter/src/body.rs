//! Body inspection for namespace-restricted keys (SPEC §5): decompress (bounded), read only
//! the top-level fields that name namespaces, and check each against the key's grants.

use crate::decision::{
    namespace_denied, too_large, Denial, DenialKind, Encoding, Inspection, Plan, Principal,
};
use crate::policy::{Grant, Policy};
use crate::route::{valid_namespace, BodyRule};
use crate::scope::Scope;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;
use std::io::Read;

/// Most namespaces a federated query may name.
pub const MAX_FEDERATED_NAMESPACES: usize = 512;

/// `copy_from_namespace` / `branch_from_namespace`: a name, or an object naming the source.
#[derive(Deserialize)]
#[serde(untagged)]
enum SourceRef<'a> {
    Name(#[serde(borrow)] Cow<'a, str>),
    Object {
        #[serde(borrow)]
        source_namespace: Cow<'a, str>,
        #[serde(default)]
        source_api_key: Option<IgnoredAny>,
    },
}

/// The top-level fields that can name namespaces; everything else is skipped unparsed.
#[derive(Deserialize, Default)]
struct Fields<'a> {
    #[serde(borrow, default)]
    copy_from_namespace: Option<SourceRef<'a>>,
    #[serde(borrow, default)]
    branch_from_namespace: Option<SourceRef<'a>>,
    #[serde(borrow, default)]
    source_namespace: Option<Cow<'a, str>>,
    #[serde(default)]
    source_api_key: Option<IgnoredAny>,
    #[serde(borrow, default)]
    namespaces: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    target_namespace: Option<Cow<'a, str>>,
}

fn forbidden(message: String) -> Denial {
    Denial {
        kind: DenialKind::InsufficientScope(Scope::Read),
        message: message.into(),
    }
}

/// Checks a fully buffered body. `body` is the raw (possibly gzip) bytes.
pub fn check(
    policy: &Policy,
    plan: &Plan,
    inspection: Inspection,
    body: &[u8],
) -> Result<(), Denial> {
    let limit = policy.inspect_body_bytes;
    if body.len() as u64 > limit {
        return Err(too_large(policy));
    }
    let inflated;
    let json = match inspection.encoding {
        Encoding::Identity => body,
        Encoding::Gzip => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(limit + 1)
                .read_to_end(&mut out)
                .map_err(|_| {
                    Denial::bad_request(
                        "the request body is not valid gzip (Content-Encoding: gzip)",
                    )
                })?;
            if out.len() as u64 > limit {
                return Err(too_large(policy));
            }
            inflated = out;
            &inflated
        }
    };
    let fields: Fields<'_> = serde_json::from_slice(json).map_err(|e| {
        Denial::bad_request(format!(
            "the request body must be a JSON object (it is inspected for namespaces): {e}"
        ))
    })?;
    let Principal::Token(Grant::Minted(k)) = plan.principal else {
        return Ok(());
    };
    let key = &policy.keys[k];
    let store_grant = || key.stores[plan.store].as_ref();
    let check_source = |field: &str, ns: &str, api_key: bool| -> Result<(), Denial> {
        if api_key {
            return Err(forbidden(format!(
                "{field} names a source_api_key; API key {:?} is limited to some namespaces and may not copy with another key",
                key.name()
            )));
        }
        check_name(field, ns)?;
        match store_grant() {
            Some(g) if g.allows_namespace(ns) => Ok(()),
            _ => Err(namespace_denied(
                key.name(),
                ns,
                Scope::Read,
                &format!("vectorstore.{}", policy.stores[plan.store].name),
            )),
        }
    };
    match inspection.rule {
        BodyRule::NamespaceWrite => {
            for (field, src) in [
                ("copy_from_namespace", &fields.copy_from_namespace),
                ("branch_from_namespace", &fields.branch_from_namespace),
            ] {
                match src {
                    None => {}
                    Some(SourceRef::Name(ns)) => check_source(field, ns, false)?,
                    Some(SourceRef::Object {
                        source_namespace,
                        source_api_key,
                    }) => check_source(field, source_namespace, source_api_key.is_some())?,
                }
            }
        }
        BodyRule::AsyncCopy => {
            if let Some(ns) = &fields.source_namespace {
                check_source("source_namespace", ns, fields.source_api_key.is_some())?;
            } else if fields.source_api_key.is_some() {
                check_source("source_api_key", "", true)?;
            }
        }
        BodyRule::FederatedQuery => {
            let Some(list) = fields.namespaces.as_deref().filter(|l| !l.is_empty()) else {
                return Err(forbidden(format!(
                    "a federated query with API key {:?} must list its namespaces in \"namespaces\"",
                    key.name()
                )));
            };
            if list.len() > MAX_FEDERATED_NAMESPACES {
                return Err(Denial::bad_request(format!(
                    "a federated query may name at most {MAX_FEDERATED_NAMESPACES} namespaces; it names {}",
                    list.len()
                )));
            }
            for ns in list {
                check_name("namespaces[]", ns)?;
                let store = policy.store_for(Some(ns)).unwrap_or(plan.store);
                let target = format!("vectorstore.{}", policy.stores[store].name);
                match key.stores[store].as_ref() {
                    Some(g) if g.scopes.allows(Scope::Read) && g.allows_namespace(ns) => {}
                    Some(g) if !g.scopes.allows(Scope::Read) => {
                        return Err(forbidden(format!("API key {:?} lacks the read scope on {target}", key.name())))
                    }
                    Some(_) => return Err(namespace_denied(key.name(), ns, Scope::Read, &target)),
                    None => {
                        return Err(forbidden(format!(
                            "API key {:?} has no {target} entitlement (namespace {ns:?}); add it to the key's spec.entitlements",
                            key.name()
                        )))
                    }
                }
            }
        }
        BodyRule::PipelineCreate => {
            if let Some(ns) = &fields.target_namespace {
                check_name("target_namespace", ns)?;
                if !key.layer.as_ref().is_some_and(|g| g.allows_namespace(ns)) {
                    return Err(namespace_denied(key.name(), ns, Scope::Admin, "layer"));
                }
            }
        }
        BodyRule::None | BodyRule::NamespaceList => {}
    }
    Ok(())
}

fn check_name(field: &str, ns: &str) -> Result<(), Denial> {
    if valid_namespace(ns) {
        Ok(())
    } else {
        Err(Denial::bad_request(format!(
            "{field} {ns:?} is not a valid namespace name: use 1 to 128 characters from A-Z a-z 0-9 _ - ."
        )))
    }
}
