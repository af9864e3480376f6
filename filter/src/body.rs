//! Body inspection (SPEC §5): decompress (bounded), read only the top-level fields that name
//! namespaces, and judge each with the same [`auth::check`] the header decision uses, on the
//! store the namespace is read from.

use crate::auth;
use crate::auth::{Access, Namespaces, On};
use crate::decision::{Encoding, Inspection, Plan};
use crate::denial::Denial;
use crate::namespace::valid_namespace;
use crate::policy::Policy;
use crate::route::BodyRule;
use crate::scope::Scope;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;
use std::io::Read;

/// Most namespaces a federated query may name.
pub const MAX_FEDERATED_NAMESPACES: usize = 512;

/// Largest inflation of a gzip body inspected: `inflated ≤ compressed × ratio` (and the
/// inspection limit). JSON with base64 vectors compresses a few times; a body that inflates
/// beyond this is a bomb, refused before it grows the VM's memory (which never shrinks).
pub const MAX_INFLATE_RATIO: u64 = 64;

/// `namespaces[]`, read no further than one past [`MAX_FEDERATED_NAMESPACES`]: a longer list
/// is refused while it is parsed, never held whole.
struct NamespaceList<'a>(Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for NamespaceList<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = NamespaceList<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of namespace names")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(ns) = seq.next_element::<Cow<'de, str>>()? {
                    if out.len() == MAX_FEDERATED_NAMESPACES {
                        return Err(serde::de::Error::custom(format!(
                            "namespaces names more than {MAX_FEDERATED_NAMESPACES} namespaces; a federated query may name at most {MAX_FEDERATED_NAMESPACES}"
                        )));
                    }
                    out.push(ns);
                }
                Ok(NamespaceList(out))
            }
        }
        d.deserialize_seq(Visit(std::marker::PhantomData))
    }
}

/// `copy_from_namespace` / `branch_from_namespace`: a name, or an object naming the source.
/// Read as it streams (an untagged enum would first buffer the whole value, every field the
/// filter ignores included: a 16 MiB padding field grew a VM by hundreds of MiB).
enum SourceRef<'a> {
    Name(Cow<'a, str>),
    Object {
        source_namespace: Cow<'a, str>,
        source_api_key: bool,
        source_region: bool,
    },
}

impl<'de: 'a, 'a> Deserialize<'de> for SourceRef<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = SourceRef<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a namespace name, or an object with source_namespace")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(SourceRef::Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(SourceRef::Name(Cow::Owned(v.to_owned())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let (mut ns, mut api_key, mut region) = (None, false, false);
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "source_namespace" if ns.is_some() => {
                            return Err(serde::de::Error::duplicate_field("source_namespace"))
                        }
                        "source_namespace" => ns = Some(map.next_value::<Cow<'de, str>>()?),
                        "source_api_key" => {
                            api_key |= map.next_value::<Option<IgnoredAny>>()?.is_some();
                        }
                        "source_region" => {
                            region |= map.next_value::<Option<IgnoredAny>>()?.is_some();
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let source_namespace =
                    ns.ok_or_else(|| serde::de::Error::missing_field("source_namespace"))?;
                Ok(SourceRef::Object {
                    source_namespace,
                    source_api_key: api_key,
                    source_region: region,
                })
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
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
    #[serde(default)]
    source_region: Option<IgnoredAny>,
    #[serde(borrow, default)]
    namespaces: Option<NamespaceList<'a>>,
    #[serde(borrow, default)]
    target_namespace: Option<Cow<'a, str>>,
}

/// Checks a fully buffered body. `body` is the raw (possibly gzip) bytes; `now` the host clock
/// in Unix seconds.
pub fn check(
    policy: &Policy,
    plan: &Plan,
    inspection: Inspection,
    body: &[u8],
    now: impl Fn() -> i64,
) -> Result<(), Denial> {
    check_noting(policy, plan, inspection, body, now, &mut |_| {})
}

/// [`check`], telling `note` each namespace the body names as it is read (for the audit line,
/// [`crate::audit::Touched`]), invalid ones included, up to the one that refuses the body.
pub fn check_noting(
    policy: &Policy,
    plan: &Plan,
    inspection: Inspection,
    body: &[u8],
    now: impl Fn() -> i64,
    note: &mut dyn FnMut(&str),
) -> Result<(), Denial> {
    let note = std::cell::RefCell::new(note);
    let note = |ns: &str| {
        if let Ok(mut n) = note.try_borrow_mut() {
            n(ns);
        }
    };
    let limit = policy.inspect_body_bytes;
    if body.len() as u64 > limit {
        return Err(Denial::too_large(limit));
    }
    let inflated;
    let json = match inspection.encoding {
        Encoding::Identity => body,
        Encoding::Gzip => {
            let cap = limit.min((body.len() as u64).saturating_mul(MAX_INFLATE_RATIO));
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(cap + 1)
                .read_to_end(&mut out)
                .map_err(|_| {
                    Denial::bad_request(
                        "the request body is not valid gzip (Content-Encoding: gzip)",
                    )
                })?;
            if out.len() as u64 > cap {
                return Err(if cap == limit {
                    Denial::too_large(limit)
                } else {
                    Denial::too_large_inflation(MAX_INFLATE_RATIO)
                });
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
    let name = plan.principal.name(policy);
    // A namespace the body names, judged on `store` with the request's own credential.
    let allowed = |field: &str, ns: &str, scope: Scope, on: On<'_>, store| {
        note(ns);
        if !valid_namespace(ns) {
            return Err(Denial::bad_request(format!(
                "{field} {ns:?} is not a valid namespace name: use 1 to 128 characters from A-Z a-z 0-9 _ - ."
            )));
        }
        let access = Access {
            scope,
            on,
            namespaces: Namespaces::Named(ns),
        };
        auth::check(policy, plan.credential, store, &access, &now).map(|_| ())
    };
    // A copy reads its source with the credential of the store the request goes to, inside
    // that store's organisation (and, with `source_region`, another region of it): the source
    // is judged on the store its Index assigns it, and a source that is not the destination
    // store's — or a region the gateway cannot map to a store — is refused for every caller.
    // Only a `source_api_key` (another organisation's key) reads elsewhere, which restricted
    // callers may not do.
    let copy_source = |field: &str, ns: &str, api_key: bool, region: bool| {
        note(ns);
        if api_key && plan.restricted {
            return Err(Denial::insufficient(
                Scope::Read,
                format!(
                    "{field} names a source_api_key; {name} is limited to some namespaces and may not copy with another key"
                ),
            ));
        }
        if region && !api_key {
            return Err(Denial::insufficient(
                Scope::Read,
                format!(
                    "{field} names a source_region; the gateway cannot tell which of its stores a region is, so it copies only within the destination's store"
                ),
            ));
        }
        if api_key {
            return allowed(field, ns, Scope::Read, On::Store, plan.store);
        }
        let source = policy.store_for(Some(ns)).unwrap_or(plan.store);
        if source != plan.store {
            return Err(Denial::insufficient(
                Scope::Read,
                format!(
                    "{field} {ns:?} is served by store {:?}, and this request writes to store {:?}; a copy reads its source with the destination store's credential, so copies across stores are refused",
                    &*policy.stores[source].name, &*policy.stores[plan.store].name
                ),
            ));
        }
        allowed(field, ns, Scope::Read, On::Store, source)
    };
    // Every field that names a namespace is judged on every inspected route, whichever the
    // route's own fields are: a store that reads a field on more routes than documented
    // must not find an unjudged name in it.
    for (field, src) in [
        ("copy_from_namespace", &fields.copy_from_namespace),
        ("branch_from_namespace", &fields.branch_from_namespace),
    ] {
        match src {
            None => {}
            Some(SourceRef::Name(ns)) => copy_source(
                field,
                ns,
                fields.source_api_key.is_some(),
                fields.source_region.is_some(),
            )?,
            Some(SourceRef::Object {
                source_namespace,
                source_api_key,
                source_region,
            }) => copy_source(
                field,
                source_namespace,
                *source_api_key || fields.source_api_key.is_some(),
                *source_region || fields.source_region.is_some(),
            )?,
        }
    }
    let (api_key, region) = (
        fields.source_api_key.is_some(),
        fields.source_region.is_some(),
    );
    match &fields.source_namespace {
        Some(ns) => copy_source("source_namespace", ns, api_key, region)?,
        None if api_key => copy_source("source_api_key", "", true, region)?,
        None if region => copy_source("source_region", "", false, true)?,
        None => {}
    }
    if let Some(ns) = &fields.target_namespace {
        allowed("target_namespace", ns, Scope::Admin, On::Layer, plan.store)?;
    }
    match fields.namespaces.as_ref().map(|l| l.0.as_slice()) {
        Some(list) if !list.is_empty() => {
            for ns in list {
                let store = policy.store_for(Some(ns)).unwrap_or(plan.store);
                allowed("namespaces[]", ns, Scope::Read, On::Store, store)?;
            }
        }
        _ if inspection.rule == BodyRule::FederatedQuery => {
            // No list: the query may touch any namespace of any store, which only a
            // caller holding every store whole may do.
            let access = Access {
                scope: Scope::Read,
                on: On::Store,
                namespaces: Namespaces::Unidentified,
            };
            let every_store = (0..policy.stores.len())
                .all(|store| auth::check(policy, plan.credential, store, &access, &now).is_ok());
            if !every_store {
                return Err(Denial::insufficient(
                    Scope::Read,
                    format!("{name} may not read every store, so its federated queries must list their namespaces in \"namespaces\""),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}
