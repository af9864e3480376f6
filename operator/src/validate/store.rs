//! A VectorStore's verdict: kind, endpoint (and the allowlist), credential, inbound auth.

use super::*;

pub(super) fn validate_store(
    s: &VectorStore,
    ns: &str,
    objects: &Objects,
    defaults: usize,
    count: usize,
    allow: &Allowlist,
    now: i64,
) -> Verdict<ValidStore> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let generation = s.metadata.generation;
    let fail = |r: &str, m: String| Verdict {
        name: name.clone(),
        conditions: vec![condition(conditions::READY, false, r, m, generation, now)],
        valid: None,
    };
    // The filter refuses a configuration with an empty store name, and keys name stores as
    // `vectorstore.<name>`: a name the target parser refuses could never be granted.
    if !entitlement::valid_target_name(&name) {
        return fail(
            reason::INVALID_SPEC,
            format!("metadata.name {name:?} must be 1-253 characters of A-Z a-z 0-9 _ . -"),
        );
    }
    if s.spec.kind == StoreKind::Pinecone {
        return fail(
            reason::UNSUPPORTED_KIND,
            "kind pinecone is reserved but not supported yet; use kind: turbopuffer".into(),
        );
    }
    let endpoint = match crate::endpoint::admitted(&s.spec.endpoint.url, allow) {
        Ok(e) => e,
        Err(m) => return fail(reason::INVALID_ENDPOINT, m),
    };
    if let Some(region) = &s.spec.endpoint.region {
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail(
                reason::INVALID_ENDPOINT,
                format!("endpoint.region {region:?} must be lower-case letters, digits and '-'"),
            );
        }
    }
    if s.spec.default == Some(true) && defaults > 1 {
        return fail(
            reason::MULTIPLE_DEFAULTS,
            format!("{defaults} VectorStores in {ns} say default: true; keep exactly one"),
        );
    }
    let cred = &s.spec.credential.secret_ref;
    let credential = match secret(objects, ns, &cred.name, &cred.key) {
        Ok(v) => v.to_owned(),
        Err((r, m)) => return fail(r, format!("credential: {m}")),
    };
    let auth = s.spec.inbound_auth.clone().unwrap_or_default();
    if auth.mode != InboundMode::Keys && !auth.keys.is_empty() {
        return fail(
            reason::INVALID_INBOUND_AUTH,
            "inboundAuth.keys is only allowed with mode: keys".into(),
        );
    }
    let default_limits = match &auth.default_key_limits {
        None => None,
        Some(l) => match crate::limits::rate_limits(l, "inboundAuth.defaultKeyLimits") {
            Ok(l) => Some(l).filter(|l| !l.is_empty()),
            Err(m) => return fail(reason::INVALID_INBOUND_AUTH, m),
        },
    };
    let mut keys = Vec::new();
    let mut refused = Vec::new();
    let mut names = Vec::new();
    for k in &auth.keys {
        if k.name.is_empty() || names.contains(&&k.name) {
            return fail(
                reason::INVALID_INBOUND_AUTH,
                format!("inboundAuth.keys: name {:?} is empty or used twice", k.name),
            );
        }
        let mut scopes = k.scopes.clone();
        scopes.sort_by_key(|s| s.as_str());
        scopes.dedup();
        if scopes.is_empty() {
            return fail(
                reason::INVALID_INBOUND_AUTH,
                format!(
                    "inboundAuth.keys {:?}: scopes must list read, write and/or admin",
                    k.name
                ),
            );
        }
        let token = match secret(objects, ns, &k.secret_ref.name, &k.secret_ref.key) {
            Ok(v) => v,
            Err((r, m)) => return fail(r, format!("inboundAuth.keys {:?}: {m}", k.name)),
        };
        names.push(&k.name);
        // A bad limit refuses this key only: the store and its other keys publish.
        let limits = match &k.limits {
            None => default_limits.clone(),
            Some(l) => match crate::limits::rate_limits(l, "limits") {
                Ok(l) => Some(l).filter(|l| !l.is_empty()),
                Err(m) => {
                    refused.push(format!("inboundAuth.keys {:?} is left out: {m}", k.name));
                    continue;
                }
            },
        };
        keys.push((k.name.clone(), scopes, sha256_hex(token), limits));
    }
    let default = s.spec.default == Some(true) || (defaults == 0 && count == 1);
    let mut conds = vec![condition(
        conditions::READY,
        true,
        reason::VALID,
        "spec and Secrets are valid",
        generation,
        now,
    )];
    if !refused.is_empty() {
        conds.push(condition(
            conditions::INBOUND_KEY_REFUSED,
            true,
            reason::INVALID_LIMITS,
            refused.join("; "),
            generation,
            now,
        ));
    }
    Verdict {
        name: name.clone(),
        conditions: conds,
        valid: Some(ValidStore {
            name,
            default,
            endpoint,
            credential,
            credential_ref: (cred.name.clone(), cred.key.clone()),
            mode: auth.mode,
            keys,
        }),
    }
}
