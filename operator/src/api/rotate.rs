//! `POST /v2/keys/{id}/rotate` (layergate's extension, SPEC §2): a new token for the same key —
//! keyId, entitlements, expiry and history stay — returned once; the old token is accepted
//! until the overlap ends (`{"overlap": "24h"}`, at most [`keys::MAX_OVERLAP_SECS`], never past
//! the key's own expiry; none by default) and refused from then on by the gateway's own clock.
//!
//! Who may rotate is who may revoke ([`authority::may_manage`], through [`locate`]): a key the
//! caller could not have minted is not found. A rotation never lengthens anything: the new
//! token lives exactly as long as the key already did.

use super::key_routes::{locate, read_back};
use super::*;

/// The fields a rotate request may carry.
const ROTATE_FIELDS: [&str; 1] = ["overlap"];

/// The overlap asked for, in seconds (none without a body or an `overlap`), or the 400.
fn asked_overlap(body: &[u8]) -> Result<i64, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, m);
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad(
            "send a JSON object: {\"overlap\": \"24h\"} (or no body for no overlap)",
        ));
    };
    if let Some(k) = req.keys().find(|k| !ROTATE_FIELDS.contains(&k.as_str())) {
        return Err(bad(&format!(
            "unknown field {:?}; a rotation has overlap",
            k.chars().take(64).collect::<String>()
        )));
    }
    match req.get("overlap") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => keys::parse_overlap(s).map_err(|m| bad(&m)),
        Some(_) => Err(bad(
            "overlap must be a duration string like \"24h\", \"30m\" or \"0s\"",
        )),
    }
}

/// Rotates the key `id` names.
pub(super) fn rotate(
    source: &dyn Source,
    pass: &Arc<Pass>,
    caller: &Caller,
    id: &str,
    body: &[u8],
) -> Result<Reply> {
    let overlap = match asked_overlap(body) {
        Ok(o) => o,
        Err(r) => return Ok(r),
    };
    let Some((pass, view)) = locate(source, pass, caller, id) else {
        return Ok(error(StatusCode::NOT_FOUND, &format!("no API key {id:?}")));
    };
    let name = view["name"].as_str().unwrap_or_default().to_owned();
    let conflict = |why: String| Ok(error(StatusCode::CONFLICT, &why));
    let current = pass.index().usable(&pass, &name);
    // Judged now, not at the last pass: a key that expired since is expired.
    let expired = current
        .and_then(|k| k.expires_at.as_deref())
        .and_then(layergate_filter::time::parse_rfc3339)
        .is_some_and(|at| at <= now());
    let phase = match expired {
        true => Some("Expired"),
        false => view["phase"].as_str(),
    };
    match phase {
        Some("Revoked") => {
            return conflict(format!(
                "API key {name} is revoked; a revoked key is never rotated (mint a new key)"
            ))
        }
        Some("Expired") => {
            return conflict(format!(
                "API key {name} expired at {}; an expired key is never rotated (mint a new key)",
                view["expiresAt"].as_str().unwrap_or("?")
            ))
        }
        _ => {}
    }
    let object = pass.index().named(&pass, &name);
    if let Some(r) = object.and_then(|k| k.spec.token_secret_ref.as_ref()) {
        return conflict(format!(
            "API key {name} reads its token from the Secret {} you provisioned (tokenSecretRef); rotate it by writing a new token there",
            r.name
        ));
    }
    let Some(current) = current else {
        return conflict(format!(
            "API key {name} has no working token to rotate (phase {}); see its conditions",
            view["phase"]
        ));
    };
    let token = keys::mint_token()?;
    let recorded = pass
        .objects
        .rotations
        .get(&(pass.namespace.clone(), keys::secret_name(&name)));
    let rotation = keys::Rotation::now(
        current.lookup_hash,
        overlap,
        now(),
        &current.key_id,
        recorded.and_then(|r| r.rotated_for.clone()),
    );
    source.rotate_key(&pass, &name, &token, &rotation)?;
    source.refresh()?;
    // The answer is the state read back after the write.
    let after = source.state().last();
    let usable = after.as_ref().and_then(|p| p.index().usable(p, &name));
    let new_hash = layergate_filter::config::LookupHash::of(&token);
    let (Some(p), Some(k)) = (&after, usable.filter(|k| k.lookup_hash == new_hash)) else {
        return Err(anyhow::anyhow!(
            "API key {name} was given a new token, but the pass after the write does not use it"
        ));
    };
    let mut out = read_back(p, &name).unwrap_or(view);
    out["token"] = json!(token);
    out["previousTokenValidUntil"] = json!(k.previous.as_ref().map(|p| p.until.clone()));
    Ok(reply(StatusCode::OK, &out))
}
