//! The key routes: the views of keys a caller may see, mint, revoke and delete.

use super::*;

/// The keys `caller` may see (see [`authority::may_manage`]), in hev layer's shape.
pub(super) fn key_views(pass: &Pass, caller: &Caller) -> Vec<Value> {
    pass.objects
        .keys
        .iter()
        .filter(|k| may_see(pass, caller, k))
        .map(|k| key_view(pass, k))
        .collect()
}

/// Whether `caller` may see and touch `k`: judged on the key's enforced (last valid) form.
fn may_see(pass: &Pass, caller: &Caller, k: &crate::crd::ApiKey) -> bool {
    let name = k.metadata.name.as_deref().unwrap_or_default();
    let enforced = pass
        .index()
        .verdict(name)
        .and_then(|i| pass.validation.keys.get(i))
        .and_then(|v| v.valid.as_ref());
    authority::may_manage(caller, k, enforced)
}

/// One key in hev layer's shape, with its status's conditions (`Ready`, `ExpiringSoon`, …:
/// directory mode writes no status, so this is where they show).
fn key_view(pass: &Pass, k: &crate::crd::ApiKey) -> Value {
    let st = status::key(pass, k, now());
    json!({
        "keyId": st.key_id,
        "name": k.metadata.name,
        "owner": k.spec.owner,
        "description": k.spec.description,
        "entitlements": k.spec.entitlements,
        "expiresAfter": k.spec.expires_after.clone().unwrap_or_else(|| validate::DEFAULT_EXPIRES_AFTER.to_owned()),
        "limits": k.spec.limits,
        "phase": st.phase,
        "createdAt": st.created_at,
        "expiresAt": st.expires_at,
        "revokedAt": st.revoked_at,
        "lookupHash": st.lookup_hash,
        "secretRef": st.secret_ref,
        "lastSeenAt": k.status.as_ref().and_then(|s| s.observed.last_seen_at.clone()),
        "conditions": st.conditions,
    })
}

/// The key `id` names (its name, else its key id) if `caller` may see it: O(1).
pub(super) fn find_key(pass: &Pass, caller: &Caller, id: &str) -> Option<Value> {
    let index = pass.index();
    [index.named(pass, id), index.with_id(pass, id)]
        .into_iter()
        .flatten()
        .find(|k| may_see(pass, caller, k))
        .map(|k| key_view(pass, k))
}

/// The key `id` names for a write, if `caller` may see it, and the pass it was found in. A key
/// minted a moment ago may not be in the last pass yet (mint answers before the pass that
/// publishes it ends): it is looked for again after one.
pub(super) fn locate(
    source: &dyn Source,
    pass: &Arc<Pass>,
    caller: &Caller,
    id: &str,
) -> Option<(Arc<Pass>, Value)> {
    if let Some(v) = find_key(pass, caller, id) {
        return Some((Arc::clone(pass), v));
    }
    // Bounded: a missing key must not make every 404 wait for a slow pass.
    if let Err(e) = source.refresh_within(MINT_WAIT) {
        tracing::warn!("a pass before answering {id:?}: {e:#}");
    }
    let fresh = source.state().last()?;
    find_key(&fresh, caller, id).map(|v| (fresh, v))
}

/// The key named `name` as `pass` reads it, whoever may see it now: a write's answer, read
/// back after the write the caller was allowed to make.
pub(super) fn read_back(pass: &Pass, name: &str) -> Option<Value> {
    pass.index().named(pass, name).map(|k| key_view(pass, k))
}

/// The fields a mint request may carry; anything else is refused (a typo must not be ignored).
const MINT_FIELDS: [&str; 6] = [
    "name",
    "owner",
    "description",
    "entitlements",
    "expiresAfter",
    "limits",
];

pub(super) fn mint(
    source: &dyn Source,
    pass: &Pass,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply> {
    let req = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "send a JSON object: {\"name\": …, \"entitlements\": {…}}",
            ))
        }
    };
    if let Some(k) = req.keys().find(|k| !MINT_FIELDS.contains(&k.as_str())) {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unknown field {:?}; a key has {}",
                k.chars().take(64).collect::<String>(),
                MINT_FIELDS.join(", ")
            ),
        ));
    }
    let name = req
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !keys::valid_key_name(&name) {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "name must be 1-63 lower-case letters, digits or '-' (a Kubernetes name)",
        ));
    }
    let mut spec = serde_json::Map::new();
    for field in [
        "owner",
        "description",
        "entitlements",
        "expiresAfter",
        "limits",
    ] {
        if let Some(v) = req.get(field).filter(|v| !v.is_null()) {
            spec.insert(field.to_owned(), v.clone());
        }
    }
    let manifest = json!({"apiVersion": "hevlayer.com/v1alpha1", "kind": "ApiKey", "metadata": {"name": name, "namespace": pass.namespace}, "spec": spec});
    // Check it as the operator will, before anything is written: shape, every field the filter
    // would refuse, then what the caller may grant.
    let key: crate::crd::ApiKey = match serde_json::from_value(manifest.clone()) {
        Ok(k) => k,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &format!("not a valid ApiKey: {e}"),
            ))
        }
    };
    if let Some(m) = validate::key_spec_problem(&key, now()) {
        return Ok(error(StatusCode::BAD_REQUEST, &m));
    }
    if let Err(m) = authority::may_mint(caller, &authority::spec_entitlements(&key)) {
        return Ok(error(StatusCode::FORBIDDEN, &m));
    }
    // Never longer-lived than its maker: a shorter lifetime is written into the spec, so the
    // object says what the gateway enforces.
    let asked = key
        .spec
        .expires_after
        .as_deref()
        .unwrap_or(validate::DEFAULT_EXPIRES_AFTER);
    let asked = layergate_filter::time::parse_duration(asked).ok().flatten();
    let (manifest, key) = match authority::lifetime(caller, asked, now()) {
        Err(m) => return Ok(error(StatusCode::FORBIDDEN, &m)),
        Ok(l) if l == asked => (manifest, key),
        Ok(l) => {
            let mut m = manifest;
            m["spec"]["expiresAfter"] = json!(format!("{}s", l.unwrap_or_default()));
            let key = serde_json::from_value(m.clone()).context("the capped ApiKey")?;
            (m, key)
        }
    };
    // Never limited more loosely than its maker: the maker's limits, when none were asked,
    // are written into the spec, so the object says what the gateway enforces.
    let asked = match key
        .spec
        .limits
        .as_ref()
        .map(|l| crate::limits::rate_limits(l, "limits"))
    {
        Some(Err(m)) => return Ok(error(StatusCode::BAD_REQUEST, &m)),
        Some(Ok(l)) => Some(l),
        None => None,
    };
    let (manifest, key) = match authority::limits(caller, asked.as_ref()) {
        Err(m) => return Ok(error(StatusCode::FORBIDDEN, &m)),
        Ok(l) if l == asked => (manifest, key),
        Ok(l) => {
            let mut m = manifest;
            m["spec"]["limits"] = json!(l.as_ref().map(crate::limits::limits_spec));
            let key = serde_json::from_value(m.clone()).context("the limited ApiKey")?;
            (m, key)
        }
    };
    if pass
        .objects
        .keys
        .iter()
        .any(|k| k.metadata.name.as_deref() == Some(name.as_str()))
    {
        return Ok(error(
            StatusCode::CONFLICT,
            &format!("an API key named {name:?} exists; revoke or delete it, or pick another name"),
        ));
    }
    let token = keys::mint_token()?;
    // Judged as the next pass will judge it, before anything is written: a key that pass
    // would not make Active is refused here and never exists.
    let (verdict, phase) = validate::validate_new_key(
        &key,
        &pass.namespace,
        &token,
        &pass.validation.stores,
        now(),
        pass.expiring_soon,
    );
    if phase != crate::crd::ApiKeyPhase::Active {
        let msg = verdict
            .conditions
            .into_iter()
            .next()
            .map_or_else(|| "invalid key".to_owned(), |c| c.message);
        return Ok(error(StatusCode::BAD_REQUEST, &msg));
    }
    let created = match source.create_key(&pass.namespace, &name, &manifest, &token) {
        Ok(created) => created,
        Err(e) => {
            return match e.downcast_ref::<crate::state::Exists>() {
                Some(exists) => Ok(error(StatusCode::CONFLICT, &exists.0)),
                None => Err(e),
            }
        }
    };
    // The key and its token exist now: from here on the caller gets the token. The pass that
    // publishes the key is waited for only so long; a slow one (API latency, a queue of
    // passes) ends in the background and the key is enforced when it does.
    let published = match source.refresh_within(MINT_WAIT) {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(apikey = %name, "the pass after a mint failed (it is retried): {e:#}");
            false
        }
    };
    let last = source.state().last().filter(|_| published);
    let view = match last.as_ref().and_then(|p| find_key(p, caller, &name)) {
        Some(v) if v["phase"] != "Active" => {
            // The pass saw more than this request could (the objects changed meanwhile).
            let reason = last.as_ref().and_then(|p| {
                p.validation
                    .keys
                    .iter()
                    .find(|k| k.name == name)
                    .map(|k| k.conditions.clone())
            });
            if let Some(p) = &last {
                source.delete_key(p, &name)?;
            }
            source.refresh()?;
            let msg = reason
                .and_then(|c| c.into_iter().next())
                .map_or_else(|| "invalid key".to_owned(), |c| c.message);
            return Ok(error(StatusCode::BAD_REQUEST, &msg));
        }
        Some(v) => v,
        None => {
            // As the pass will show it (the keyId comes from the stored object's uid).
            let (verdict, _) = validate::validate_new_key(
                &created,
                &pass.namespace,
                &token,
                &pass.validation.stores,
                now(),
                pass.expiring_soon,
            );
            let Some(config) = verdict.valid else {
                return Err(anyhow::anyhow!(
                    "ApiKey {name} was written but no longer validates"
                ));
            };
            new_key_view(&created, &config, &verdict.conditions)
        }
    };
    let mut out = view;
    out["token"] = json!(token);
    Ok(reply(StatusCode::CREATED, &out))
}

/// A key just minted, in the shape of [`key_views`], before any pass has seen it.
fn new_key_view(
    k: &crate::crd::ApiKey,
    config: &layergate_filter::config::ApiKeyConfig,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Value {
    let created = k
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or_else(now, |t| t.0.as_second());
    json!({
        "keyId": config.key_id,
        "name": k.metadata.name,
        "owner": k.spec.owner,
        "description": k.spec.description,
        "entitlements": k.spec.entitlements,
        "expiresAfter": k.spec.expires_after.clone().unwrap_or_else(|| validate::DEFAULT_EXPIRES_AFTER.to_owned()),
        "limits": k.spec.limits,
        "phase": crate::crd::ApiKeyPhase::Active,
        "createdAt": validate::rfc3339(created),
        "expiresAt": config.expires_at,
        "revokedAt": null,
        "lookupHash": config.lookup_hash.to_string(),
        "secretRef": validate::token_source(k),
        "conditions": conditions,
    })
}

pub(super) enum Change {
    Revoke,
    Delete,
}

/// Revokes or deletes an ApiKey through the source; a key the caller could not have minted
/// is not found.
pub(super) fn change_key(
    source: &dyn Source,
    pass: &Arc<Pass>,
    caller: &Caller,
    id: &str,
    change: Change,
) -> Result<Reply> {
    let Some((pass, view)) = locate(source, pass, caller, id) else {
        return Ok(error(StatusCode::NOT_FOUND, &format!("no API key {id:?}")));
    };
    let pass = &*pass;
    let name = view["name"].as_str().unwrap_or_default().to_owned();
    match change {
        Change::Revoke if view["phase"] == "Revoked" => return Ok(reply(StatusCode::OK, &view)),
        Change::Revoke => source.revoke_key(pass, &name)?,
        Change::Delete => source.delete_key(pass, &name)?,
    }
    source.refresh()?;
    // The answer is the state read back after the write, never the one hoped for: a write
    // that changed nothing is an error.
    let after = source.state().last();
    let now_seen = after.as_ref().and_then(|p| read_back(p, &name));
    Ok(match (change, now_seen) {
        (Change::Revoke, Some(v)) if v["phase"] == "Revoked" => reply(StatusCode::OK, &v),
        (Change::Revoke, seen) => {
            return Err(anyhow::anyhow!(
                "API key {name} was written revoked, but the pass after the write reads it as {}",
                seen.map_or_else(|| "gone".to_owned(), |v| v["phase"].to_string())
            ))
        }
        (Change::Delete, None) => reply(
            StatusCode::OK,
            &json!({"status": "OK", "message": format!("API key {name} deleted")}),
        ),
        (Change::Delete, Some(_)) => {
            return Err(anyhow::anyhow!(
                "API key {name} was deleted, but the pass after the write still reads it"
            ))
        }
    })
}
