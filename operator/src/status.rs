//! Each object's `status` as the operator publishes it, computed from a pass (and the latest
//! probes) by pure functions: the control API shows these, and kube mode writes them with
//! server-side apply when they differ from what the object already carries.

use crate::conditions::READY;
use crate::crd::{
    ApiKey, ApiKeyPhase, ApiKeyStatus, Index, IndexStatus, SecretKeyRef, VectorStore,
    VectorStoreStatus,
};
use crate::pass::Pass;
use crate::probe::ProbeResult;
use crate::state::REVOKED_AT_ANNOTATION;
use crate::validate;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Keeps `lastTransitionTime` of every condition whose status did not change, as Kubernetes
/// conventions ask; without this every pass would look like a change.
pub fn settle(new: &mut [Condition], old: &[Condition]) {
    for c in new {
        if let Some(o) = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}

fn name_of(meta: &kube::core::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// A VectorStore's status: its validation conditions, with `Ready` from the latest probe when
/// the store is valid and has been probed.
pub fn store(
    pass: &Pass,
    probe: Option<&ProbeResult>,
    obj: &VectorStore,
    now: i64,
) -> VectorStoreStatus {
    let name = name_of(&obj.metadata);
    let generation = obj.metadata.generation;
    let verdict = pass.validation.stores.iter().find(|v| v.name == name);
    let mut conditions = verdict.map(|v| v.conditions.clone()).unwrap_or_default();
    if let (true, Some(p)) = (verdict.is_some_and(|v| v.valid.is_some()), probe) {
        conditions.retain(|c| c.type_ != READY);
        conditions.push(p.condition(&name, generation, now));
    }
    let mut status = VectorStoreStatus {
        reachable: probe.map(ProbeResult::reachable),
        observed_generation: generation,
        conditions,
    };
    if let Some(old) = &obj.status {
        settle(&mut status.conditions, &old.conditions);
    }
    status
}

/// An Index's status.
pub fn index(pass: &Pass, obj: &Index) -> IndexStatus {
    let name = name_of(&obj.metadata);
    let mut status = IndexStatus {
        observed_generation: obj.metadata.generation,
        conditions: pass
            .validation
            .indexes
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.conditions.clone())
            .unwrap_or_default(),
    };
    if let Some(old) = &obj.status {
        settle(&mut status.conditions, &old.conditions);
    }
    status
}

/// An ApiKey's status (O(1): the pass's [`crate::pass::KeyIndex`]). `createdAt` is the object's creation (else when its token was minted,
/// in directory mode, else now); `revokedAt` is the API's annotation, else the time the
/// operator first saw the key revoked.
pub fn key(pass: &Pass, obj: &ApiKey, now: i64) -> ApiKeyStatus {
    let name = name_of(&obj.metadata);
    let lookup = pass.index();
    let rendered = lookup.usable(pass, &name);
    let index = lookup.verdict(&name);
    let verdict = index.map(|i| &pass.validation.keys[i]);
    let phase = index
        .and_then(|i| pass.validation.phases.get(i).copied())
        .unwrap_or(ApiKeyPhase::Pending);
    let secret_ref: SecretKeyRef = validate::token_source(obj);
    let created = obj.metadata.creation_timestamp.as_ref().map_or_else(
        || {
            let minted = pass
                .objects
                .minted_at
                .get(&(pass.namespace.clone(), secret_ref.name.clone()));
            validate::rfc3339(minted.copied().unwrap_or(now))
        },
        |t| validate::rfc3339(t.0.as_second()),
    );
    let old = obj.status.clone().unwrap_or_default();
    let revoked_at = (phase == ApiKeyPhase::Revoked).then(|| {
        obj.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVOKED_AT_ANNOTATION).cloned())
            .or(old.revoked_at.clone())
            .unwrap_or_else(|| validate::rfc3339(now))
    });
    // A key that was active keeps its hash and expiry on record once revoked or expired.
    let lookup_hash = rendered
        .map(|r| r.lookup_hash.to_string())
        .or_else(|| old.lookup_hash.clone());
    let expires_at = rendered
        .and_then(|r| r.expires_at.clone())
        .or_else(|| old.expires_at.clone());
    let mut status = ApiKeyStatus {
        key_id: Some(validate::key_id_in(obj, &pass.namespace, &pass.objects)),
        phase: Some(phase),
        lookup_hash,
        created_at: Some(created),
        expires_at,
        revoked_at,
        // Only a Secret that can exist: the CRD caps `secretRef.name` at 253 characters, as
        // the API server caps names, and refuses the whole status write over a longer one.
        secret_ref: (secret_ref.name.len() <= 253).then_some(secret_ref),
        observed_generation: obj.metadata.generation,
        conditions: verdict.map(|v| v.conditions.clone()).unwrap_or_default(),
        // The usage writer's fields: a pass leaves them as they are.
        observed: Default::default(),
    };
    settle(&mut status.conditions, &old.conditions);
    status
}
