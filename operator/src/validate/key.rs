//! An ApiKey's verdict: revoked first, then its name, targets, lifetime, token and its Secret; and
//! the same judgement of a key about to be minted.

use super::*;

/// A key's id: from its uid in a cluster (a new object, a new id); in directory mode from
/// namespace, name and its token (a re-minted key of the same name gets a new id, and a
/// revoked key, whose token Secret stays, keeps its id).
pub fn key_id(k: &ApiKey, ns: &str, token: Option<&str>) -> String {
    let name = k.metadata.name.as_deref().unwrap_or_default();
    match (&k.metadata.uid, token) {
        (Some(uid), _) => format!("key_{}", uid.replace('-', "")),
        (None, Some(t)) => format!(
            "key_{}",
            &sha256_hex(&format!("{ns}/{name}/{}", sha256_hex(t)))[..24]
        ),
        (None, None) => format!("key_{}", &sha256_hex(&format!("{ns}/{name}"))[..24]),
    }
}

/// A key's id among `objects` (see [`key_id`]): its token Secret is read only when the id
/// needs it (no uid: directory mode).
pub fn key_id_in(k: &ApiKey, ns: &str, objects: &Objects) -> String {
    if let Some(pinned) = pinned_key_id(k, ns, objects) {
        return pinned.to_owned();
    }
    let token = match k.metadata.uid {
        Some(_) => None,
        None => token_of(k, ns, objects),
    };
    key_id(k, ns, token)
}

/// A directory-mode key's id kept across rotations by its token Secret (see
/// [`crate::keys::KEY_ID_ANNOTATION`]); never in a cluster, where the uid is the id.
fn pinned_key_id<'a>(k: &ApiKey, ns: &str, objects: &'a Objects) -> Option<&'a str> {
    if k.metadata.uid.is_some() {
        return None;
    }
    objects
        .rotations
        .get(&(ns.to_owned(), token_source(k).name))?
        .key_id
        .as_deref()
}

/// The Secret (name, key) an ApiKey's token is read from: `tokenSecretRef`, else the minted
/// `apikey-<name>`/`token`.
pub fn token_source(k: &ApiKey) -> crate::crd::SecretKeyRef {
    k.spec
        .token_secret_ref
        .clone()
        .unwrap_or_else(|| crate::crd::SecretKeyRef {
            name: crate::keys::secret_name(k.metadata.name.as_deref().unwrap_or_default()),
            key: crate::keys::TOKEN_KEY.into(),
        })
}

/// The token an ApiKey would use, when its Secret is one the key may use (see
/// [`token_secret_refusal`]) and holds a token.
pub fn token_of<'a>(k: &ApiKey, ns: &str, objects: &'a Objects) -> Option<&'a str> {
    let source = token_source(k);
    let t = secret(objects, ns, &source.name, &source.key).ok()?;
    token_secret_refusal(k, ns, objects).is_none().then_some(t)
}

/// Why the Secret an ApiKey names may not serve as its token, if it may not. A token Secret is
/// either owned by this very ApiKey (its uid: a Secret left by a deleted key of the same name
/// is refused) or labelled `hevlayer.com/apikey-token: <key name>` (what the operator writes
/// in directory mode and what a pre-provisioned Secret must carry; `"true"` for a Secret
/// holding many keys' tokens), so an ApiKey cannot adopt an arbitrary Secret — a store
/// credential, another key's token — as its token.
pub fn token_secret_refusal(k: &ApiKey, ns: &str, objects: &Objects) -> Option<String> {
    let name = k.metadata.name.as_deref().unwrap_or_default();
    let source = token_source(k);
    let id = (ns.to_owned(), source.name.clone());
    if objects.duplicate_secrets.contains(&id) {
        return Some(format!(
            "Secret {ns}/{} is defined by more than one document; keep one",
            source.name
        ));
    }
    let marks = objects.secret_marks.get(&id)?;
    if !marks.apikey_owners.is_empty() {
        return match &k.metadata.uid {
            Some(uid) if marks.apikey_owners.contains(uid) => None,
            Some(_) => Some(format!(
                "Secret {ns}/{} belongs to another (deleted) ApiKey; it is not reused and will be replaced",
                source.name
            )),
            None => None,
        };
    }
    // `true` marks a Secret holding many keys' tokens (one data key each), for bulk
    // provisioning; it is never deleted with one of them.
    let marked = matches!(marks.token_label.as_deref(), Some(l) if l == name || l == "true");
    (!marked).then(|| {
        format!(
            "Secret {ns}/{} is not marked as this key's token: label it {}={name} (or let the operator mint one)",
            source.name,
            crate::keys::TOKEN_LABEL
        )
    })
}

/// The declarative rotations due among the ApiKeys of `ns` ([`crate::keys::rotation_asked`]),
/// for keys whose minted token is there to rotate: each key's name and the record of rotating
/// it `now` (both sources write the new token and the record into its Secret). An overlap
/// that does not read rotates nothing, and the log says why.
pub fn rotations_due(
    objects: &Objects,
    ns: &str,
    now: i64,
) -> Vec<(String, crate::keys::Rotation)> {
    let mut due = Vec::new();
    for k in &objects.keys {
        let name = k.metadata.name.as_deref().unwrap_or_default();
        let id = (ns.to_owned(), crate::keys::secret_name(name));
        if !in_namespace(&k.metadata, ns) {
            continue;
        }
        let Some((value, overlap)) = crate::keys::rotation_asked(k, objects.rotations.get(&id))
        else {
            continue;
        };
        let overlap = match overlap {
            Ok(o) => o,
            Err(m) => {
                tracing::warn!(apikey = %format!("{ns}/{name}"), "not rotating: {}: {m}", crate::keys::ROTATE_OVERLAP_ANNOTATION);
                continue;
            }
        };
        let Some(token) = token_of(k, ns, objects) else {
            continue;
        };
        let key_id = key_id_in(k, ns, objects);
        let hash = layergate_filter::config::LookupHash::of(token);
        due.push((
            name.to_owned(),
            crate::keys::Rotation::now(hash, overlap, now, &key_id, Some(value)),
        ));
    }
    due
}

/// Checks a token's strength: `hvl_` + at least 32 base62 characters (hev layer's format,
/// about 190 bits), or at least 32 base62 characters without the prefix; 256 characters at most.
pub fn token_strength(token: &str) -> Result<(), String> {
    let body = token
        .strip_prefix(crate::keys::TOKEN_PREFIX)
        .unwrap_or(token);
    if body.len() < crate::keys::TOKEN_CHARS
        || token.len() > 256
        || !body.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!(
            "the token is too weak or malformed: it must be hvl_ followed by at least {} letters and digits \
             (about 190 random bits); let the operator mint one",
            crate::keys::TOKEN_CHARS
        ));
    }
    Ok(())
}

/// What the filter (or the operator) would refuse in an ApiKey's spec, before any token exists:
/// its name, entitlement targets and globs, and its lifetime counted from now. The control API
/// refuses such a mint with 400 instead of writing it.
pub fn key_spec_problem(k: &ApiKey, now: i64) -> Option<String> {
    let name = k.metadata.name.as_deref().unwrap_or_default();
    if !crate::keys::valid_key_name(name) {
        return Some(
            "name must be 1-63 lower-case letters, digits or '-' (a Kubernetes name)".into(),
        );
    }
    for (target, e) in &k.spec.entitlements {
        let grant = Entitlement {
            scopes: e.scopes.clone(),
            namespaces: e.namespaces.clone(),
            claims: e.claims.clone(),
        };
        if let Err(m) = entitlement::parse_target(target)
            .map(|_| ())
            .and_then(|()| entitlement::grant_globs(target, &grant).map(|_| ()))
        {
            return Some(m);
        }
    }
    if let Some(Err(m)) = k.spec.limits.as_ref().map(key_limits) {
        return Some(m);
    }
    let after = k
        .spec
        .expires_after
        .as_deref()
        .unwrap_or(DEFAULT_EXPIRES_AFTER);
    match parse_duration(after) {
        Err(e) => Some(e.to_string()),
        Ok(l) => layergate_filter::time::expiry(now, l)
            .err()
            .map(|m| format!("expiresAfter {after:?}: {m}")),
    }
}

/// An ApiKey's `spec.limits` in the filter's form, or what is wrong with it.
fn key_limits(
    l: &crate::crd::LimitsSpec,
) -> Result<layergate_filter::ratelimit::RateLimits, String> {
    crate::limits::rate_limits(l, "spec.limits")
}

/// Judges a key about to be minted with `token` exactly as the next pass will (against the
/// last pass's `stores`), without reading anything: the control API answers a mint from this
/// instead of waiting for a pass that may be slow (issue 13).
pub fn validate_new_key(
    k: &ApiKey,
    ns: &str,
    token: &str,
    stores: &[Verdict<ValidStore>],
    now: i64,
    expiring_soon: Option<i64>,
) -> (Verdict<ApiKeyConfig>, ApiKeyPhase) {
    let source = token_source(k);
    let mut objects = Objects::default();
    let id = (ns.to_owned(), source.name);
    objects.secrets.insert(
        id.clone(),
        Arc::new(BTreeMap::from([(source.key, token.to_owned())])),
    );
    objects.minted_at.insert(id, now);
    validate_key(k, ns, &objects, stores, now, expiring_soon)
}

/// One key's verdict; an Active key also gets its `ExpiringSoon` condition (`expiring_soon`:
/// the window in seconds, `None`: off).
pub(super) fn validate_key(
    k: &ApiKey,
    ns: &str,
    objects: &Objects,
    stores: &[Verdict<ValidStore>],
    now: i64,
    expiring_soon: Option<i64>,
) -> (Verdict<ApiKeyConfig>, ApiKeyPhase) {
    let name = k.metadata.name.clone().unwrap_or_default();
    let generation = k.metadata.generation;
    let out = |phase, r: &str, m: String, extra: Vec<Condition>, valid: Option<ApiKeyConfig>| {
        let mut conditions = vec![condition(
            conditions::READY,
            valid.is_some(),
            r,
            m,
            generation,
            now,
        )];
        conditions.extend(extra);
        (
            Verdict {
                name: name.clone(),
                conditions,
                valid,
            },
            phase,
        )
    };
    // Revoked wins over everything (SPEC §7): whatever else is wrong with the spec, a key that
    // says revoked is Revoked, and a Revoked verdict never gets a last valid form.
    if k.spec.revoked == Some(true) {
        return out(
            ApiKeyPhase::Revoked,
            reason::REVOKED,
            "revoked; the gateway no longer accepts this key".into(),
            vec![],
            None,
        );
    }
    // Being deleted (a finalizer holds the object): gone for the gateway from the moment the
    // delete was accepted, so a delete that answers 200 never leaves the token working.
    if k.metadata.deletion_timestamp.is_some() {
        return out(
            ApiKeyPhase::Revoked,
            reason::REVOKED,
            "being deleted; the gateway no longer accepts this key".into(),
            vec![],
            None,
        );
    }
    if !crate::keys::valid_object_name(&name) {
        return out(
            ApiKeyPhase::Pending,
            reason::INVALID_SPEC,
            "metadata.name must be 1-246 lower-case letters, digits, '-' or '.' (a Kubernetes name that leaves room for the apikey- prefix of its Secret)".into(),
            vec![],
            None,
        );
    }
    let mut entitlements = BTreeMap::new();
    let mut missing = Vec::new();
    for (target, e) in &k.spec.entitlements {
        // The filter's own parser (one validation).
        let store = match entitlement::parse_target(target) {
            Ok(Target::VectorStore(s)) => Some(s),
            Ok(_) => None,
            Err(m) => return out(ApiKeyPhase::Pending, reason::INVALID_SPEC, m, vec![], None),
        };
        if let Some(s) = store {
            if !stores.iter().any(|v| v.name == s) {
                missing.push(target.clone());
            }
        }
        entitlements.insert(
            target.clone(),
            Entitlement {
                scopes: e.scopes.clone(),
                namespaces: e.namespaces.clone(),
                claims: e.claims.clone(),
            },
        );
    }
    let extra = if missing.is_empty() {
        vec![condition(
            conditions::ENTITLEMENT_TARGET_MISSING,
            false,
            reason::VALID,
            "every entitlement target exists",
            generation,
            now,
        )]
    } else {
        vec![condition(
            conditions::ENTITLEMENT_TARGET_MISSING,
            true,
            reason::TARGET_MISSING,
            format!(
                "{} name stores that do not exist; they grant nothing",
                missing.join(", ")
            ),
            generation,
            now,
        )]
    };
    let lifetime = match parse_duration(
        k.spec
            .expires_after
            .as_deref()
            .unwrap_or(DEFAULT_EXPIRES_AFTER),
    ) {
        Ok(l) => l,
        Err(m) => {
            return out(
                ApiKeyPhase::Pending,
                reason::INVALID_SPEC,
                m.to_string(),
                extra,
                None,
            )
        }
    };
    // Everything else the filter checks per key, before any token is looked at: a key the
    // filter would refuse is left out here, never in the rendering (one bad key must not
    // freeze every other change).
    let limits = match k.spec.limits.as_ref().map(key_limits).transpose() {
        Ok(l) => l.filter(|l| !l.is_empty()),
        Err(m) => return out(ApiKeyPhase::Pending, reason::INVALID_SPEC, m, extra, None),
    };
    let shape = ApiKeyConfig {
        key_id: String::new(),
        name: name.clone(),
        owner: k.spec.owner.clone(),
        lookup_hash: layergate_filter::config::LookupHash([0; 32]),
        expires_at: None,
        entitlements: entitlements.into_iter().collect(),
        previous: None,
        limits,
        quota_spent_until: None,
    };
    if let Err(m) = entitlement::check_api_key(&shape) {
        return out(ApiKeyPhase::Pending, reason::INVALID_SPEC, m, extra, None);
    }
    let source = token_source(k);
    // Creation time: the object's, else when the operator minted its token (directory mode),
    // else now (a pre-provisioned token without either: its lifetime starts at every start).
    let created = match &k.metadata.creation_timestamp {
        Some(t) => t.0.as_second(),
        None => objects
            .minted_at
            .get(&(ns.to_owned(), source.name.clone()))
            .copied()
            .unwrap_or(now),
    };
    let expires = match layergate_filter::time::expiry(created, lifetime) {
        Ok(e) => e,
        Err(m) => {
            return out(
                ApiKeyPhase::Pending,
                reason::INVALID_SPEC,
                format!("expiresAfter: {m}; use a shorter lifetime or never"),
                extra,
                None,
            )
        }
    };
    if let Some(at) = expires.filter(|e| *e <= now) {
        return out(
            ApiKeyPhase::Expired,
            reason::EXPIRED,
            format!("expired at {}; mint a new key", rfc3339(at)),
            extra,
            None,
        );
    }
    let token = match secret(objects, ns, &source.name, &source.key) {
        Ok(t) => t,
        Err((r, m)) if r != reason::SECRET_NOT_FOUND && r != reason::SECRET_KEY_MISSING => {
            return out(ApiKeyPhase::Pending, r, m, extra, None)
        }
        Err((_, m)) => {
            return out(
                ApiKeyPhase::Pending,
                reason::NOT_MINTED,
                format!("no token yet: {m}"),
                extra,
                None,
            )
        }
    };
    if let Some(m) = token_secret_refusal(k, ns, objects) {
        return out(ApiKeyPhase::Pending, reason::INVALID_TOKEN, m, extra, None);
    }
    if let Err(m) = token_strength(token) {
        let m = format!("Secret {ns}/{} key {:?}: {m}", source.name, source.key);
        return out(ApiKeyPhase::Pending, reason::INVALID_TOKEN, m, extra, None);
    }
    let mut config = shape;
    config.key_id =
        pinned_key_id(k, ns, objects).map_or_else(|| key_id(k, ns, Some(token)), str::to_owned);
    config.lookup_hash = layergate_filter::config::LookupHash::of(token);
    config.expires_at = expires.map(rfc3339);
    // A rotation's previous token, while its overlap runs (the filter's clock ends it too).
    config.previous = objects
        .rotations
        .get(&(ns.to_owned(), source.name.clone()))
        .and_then(|r| r.previous)
        .filter(|(hash, until)| *until > now && *hash != config.lookup_hash)
        .map(
            |(lookup_hash, until)| layergate_filter::config::PreviousToken {
                lookup_hash,
                until: rfc3339(expires.map_or(until, |e| e.min(until))),
            },
        );
    if let Err(m) = entitlement::check_api_key(&config) {
        return out(ApiKeyPhase::Pending, reason::INVALID_SPEC, m, extra, None);
    }
    let mut extra = extra;
    extra.extend(super::expiring::condition_of(
        expires,
        now,
        expiring_soon,
        generation,
    ));
    out(
        ApiKeyPhase::Active,
        reason::VALID,
        "active".into(),
        extra,
        Some(config),
    )
}
