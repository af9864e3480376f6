//! Minting API keys (hev layer's format): `hvl_` + 32 base62 characters from the OS CSPRNG
//! (≥ 190 random bits), delivered in a Secret; only its SHA-256 is ever recorded elsewhere.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;

/// Token prefix.
pub const TOKEN_PREFIX: &str = "hvl_";
/// Random base62 characters per token: 32 × log2(62) ≈ 190.5 bits.
pub const TOKEN_CHARS: usize = 32;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new token from the OS CSPRNG (rejection sampling keeps every character uniform).
pub fn mint_token() -> Result<String> {
    let mut out = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_CHARS);
    out.push_str(TOKEN_PREFIX);
    let mut buf = [0u8; 64];
    while out.len() < TOKEN_PREFIX.len() + TOKEN_CHARS {
        getrandom::fill(&mut buf)
            .map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
        for &b in &buf {
            // 248 = 4 × 62: bytes at or above it would bias the low characters.
            if b < 248 && out.len() < TOKEN_PREFIX.len() + TOKEN_CHARS {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// Annotation on a minted Secret recording when the token was minted (RFC 3339). In directory
/// mode ApiKey manifests carry no creationTimestamp; expiry counts from this instead.
pub const MINTED_AT_ANNOTATION: &str = "hevlayer.com/minted-at";

/// Label marking a Secret as the token of the ApiKey named in its value. The operator puts it
/// on every token it mints; a pre-provisioned token Secret (`tokenSecretRef`, or a Secret named
/// `apikey-<name>` written beforehand) must carry it, or be owned by the ApiKey.
pub const TOKEN_LABEL: &str = "hevlayer.com/apikey-token";

/// True for a name an ApiKey may have: 1-63 lower-case letters, digits or `-`, not at either
/// end (a Kubernetes name that is also a file name and a Secret name suffix).
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// True for a name an ApiKey manifest may have: a Kubernetes object name (lower-case letters,
/// digits, `-` and `.`, starting and ending with a letter or digit) short enough that
/// `apikey-<name>` is one too (246 characters).
pub fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 246
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Name of the Secret holding an ApiKey's minted token.
pub fn secret_name(api_key: &str) -> String {
    format!("apikey-{api_key}")
}

/// Annotation on a rotated token Secret: the previous token's `lookupHash`, accepted until
/// [`PREVIOUS_UNTIL_ANNOTATION`].
pub const PREVIOUS_HASH_ANNOTATION: &str = "hevlayer.com/previous-lookup-hash";
/// Annotation on a rotated token Secret: when the previous token's overlap ends (RFC 3339).
pub const PREVIOUS_UNTIL_ANNOTATION: &str = "hevlayer.com/previous-until";
/// Annotation on a rotated token Secret: the key's id from before its first rotation. In
/// directory mode a key's id is derived from its token (no uid); this keeps it across
/// rotations. (In a cluster the id comes from the ApiKey's uid and this is not read.)
pub const KEY_ID_ANNOTATION: &str = "hevlayer.com/key-id";
/// Annotation on a token Secret: the last value of the ApiKey's [`ROTATE_ANNOTATION`] acted
/// upon, so a declarative rotation happens once per value.
pub const ROTATED_FOR_ANNOTATION: &str = "hevlayer.com/rotated-for";
/// Annotation on an ApiKey asking for a rotation: any new value rotates the token once.
pub const ROTATE_ANNOTATION: &str = "hevlayer.com/rotate";
/// Annotation on an ApiKey: the overlap of a declarative rotation (a duration; default none).
pub const ROTATE_OVERLAP_ANNOTATION: &str = "hevlayer.com/rotate-overlap";
/// The longest overlap a rotation may ask for: 7 days.
pub const MAX_OVERLAP_SECS: i64 = 7 * 86_400;

/// What a token Secret records of its key's rotations (its annotations, read the same way in
/// both modes): durable where the token is, so a restart keeps a running overlap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotation {
    /// The previous token's digest and the end of its overlap (Unix seconds).
    pub previous: Option<(layergate_filter::config::LookupHash, i64)>,
    /// The key's id from before its first rotation (directory mode).
    pub key_id: Option<String>,
    /// The last value of the ApiKey's rotate annotation acted upon.
    pub rotated_for: Option<String>,
}

impl Rotation {
    /// The record in a Secret's annotations; `None` when it holds none. An overlap whose
    /// hash or end does not read is no overlap (the previous token is refused).
    pub fn of(annotations: &BTreeMap<String, String>) -> Option<Rotation> {
        let previous = annotations
            .get(PREVIOUS_HASH_ANNOTATION)
            .and_then(|h| h.parse().ok())
            .zip(
                annotations
                    .get(PREVIOUS_UNTIL_ANNOTATION)
                    .and_then(|t| layergate_filter::time::parse_rfc3339(t)),
            );
        let r = Rotation {
            previous,
            key_id: annotations.get(KEY_ID_ANNOTATION).cloned(),
            rotated_for: annotations.get(ROTATED_FOR_ANNOTATION).cloned(),
        };
        (r != Rotation::default()).then_some(r)
    }

    /// The annotations that record this rotation (every one of them, empty when unset, so a
    /// merge patch also clears what an earlier rotation set).
    pub fn annotations(&self) -> BTreeMap<String, Option<String>> {
        BTreeMap::from([
            (
                PREVIOUS_HASH_ANNOTATION.to_owned(),
                self.previous.map(|(h, _)| h.to_string()),
            ),
            (
                PREVIOUS_UNTIL_ANNOTATION.to_owned(),
                self.previous
                    .and_then(|(_, t)| layergate_filter::time::format_rfc3339(t)),
            ),
            (KEY_ID_ANNOTATION.to_owned(), self.key_id.clone()),
            (ROTATED_FOR_ANNOTATION.to_owned(), self.rotated_for.clone()),
        ])
    }
}

impl Rotation {
    /// The record of a rotation made `now` away from the token whose digest is `current`:
    /// accepted `overlap` seconds more (none: refused at once), the key's id pinned, the
    /// declarative value acted upon kept.
    pub fn now(
        current: layergate_filter::config::LookupHash,
        overlap: i64,
        now: i64,
        key_id: &str,
        rotated_for: Option<String>,
    ) -> Rotation {
        Rotation {
            previous: (overlap > 0).then_some((current, now + overlap)),
            key_id: Some(key_id.to_owned()),
            rotated_for,
        }
    }
}

/// A declarative rotation an ApiKey asks for: the value of its [`ROTATE_ANNOTATION`] when
/// `recorded` (its token Secret's record) has not acted on it yet, and the overlap of its
/// [`ROTATE_OVERLAP_ANNOTATION`] (none when absent; `Err` when it does not read). A revoked
/// key, one being deleted, or one whose token the user provisioned (`tokenSecretRef`) asks for
/// nothing.
pub fn rotation_asked(
    k: &crate::crd::ApiKey,
    recorded: Option<&Rotation>,
) -> Option<(String, Result<i64, String>)> {
    let annotations = k.metadata.annotations.as_ref()?;
    let value = annotations.get(ROTATE_ANNOTATION)?;
    if k.spec.revoked == Some(true)
        || k.metadata.deletion_timestamp.is_some()
        || k.spec.token_secret_ref.is_some()
        || recorded.and_then(|r| r.rotated_for.as_ref()) == Some(value)
    {
        return None;
    }
    let overlap = annotations
        .get(ROTATE_OVERLAP_ANNOTATION)
        .map_or(Ok(0), |o| parse_overlap(o));
    Some((value.clone(), overlap))
}

/// An overlap as asked (`"24h"`, `"90s"`, `"0s"`), in seconds: refused when it does not
/// read, is `never`, or is over [`MAX_OVERLAP_SECS`].
pub fn parse_overlap(asked: &str) -> Result<i64, String> {
    if matches!(asked, "0s" | "0m" | "0h" | "0d") {
        return Ok(0);
    }
    match layergate_filter::time::parse_duration(asked) {
        Ok(Some(s)) if (0..=MAX_OVERLAP_SECS).contains(&s) => Ok(s),
        Ok(_) => Err(format!(
            "overlap {asked:?} is over the longest overlap, 7d (an old token is accepted at most a week after a rotation)"
        )),
        Err(e) => Err(format!("overlap {asked:?}: {e}")),
    }
}

/// The key under which a minted Secret holds the token.
pub const TOKEN_KEY: &str = "token";

/// The Secret delivering a token. In a cluster it is owned by its ApiKey (`owner`), so
/// Kubernetes deletes it with the key. `rotate` is the key's [`ROTATE_ANNOTATION`] value at
/// the mint: recorded as acted upon, so a new key is not rotated at once.
pub fn token_secret(
    namespace: &str,
    api_key: &str,
    token: &str,
    minted_at: &str,
    owner: Option<OwnerReference>,
    rotate: Option<&str>,
) -> Secret {
    let mut annotations = BTreeMap::from([
        ("hevlayer.com/apikey".to_owned(), api_key.to_owned()),
        (MINTED_AT_ANNOTATION.to_owned(), minted_at.to_owned()),
    ]);
    if let Some(v) = rotate {
        annotations.insert(ROTATED_FOR_ANNOTATION.to_owned(), v.to_owned());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(api_key)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "layergate".to_owned(),
                ),
                (TOKEN_LABEL.to_owned(), api_key.to_owned()),
            ])),
            annotations: Some(annotations),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_owned(), token.to_owned())])),
        ..Secret::default()
    }
}

/// The value of an ApiKey's [`ROTATE_ANNOTATION`], if any.
pub fn rotate_value(k: &crate::crd::ApiKey) -> Option<&str> {
    k.metadata
        .annotations
        .as_ref()?
        .get(ROTATE_ANNOTATION)
        .map(String::as_str)
}

/// The Secret manifest delivering a token (directory mode writes it beside the ApiKey).
pub fn secret_manifest(
    namespace: &str,
    api_key: &str,
    token: &str,
    minted_at: &str,
    rotate: Option<&str>,
) -> Result<String> {
    let doc = token_secret(namespace, api_key, token, minted_at, None, rotate);
    Ok(format!(
        "# Minted by layergate-operator for ApiKey {api_key}. Keep it secret; a lost token is re-minted, never recovered.\n{}",
        serde_yaml::to_string(&doc).context("serializing the Secret")?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_hev_layers_format_and_do_not_repeat() {
        let a = mint_token().unwrap_or_default();
        let b = mint_token().unwrap_or_default();
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("hvl_") && a[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn characters_are_spread_over_the_alphabet() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.extend(mint_token().unwrap_or_default()[4..].chars());
        }
        assert_eq!(
            seen.len(),
            62,
            "6,400 draws should hit every base62 character"
        );
    }

    #[test]
    fn the_secret_carries_the_token_under_key_token() {
        let yaml = secret_manifest("layer", "k", "hvl_x", "2026-11-24T00:00:00Z", None)
            .unwrap_or_default();
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap_or_default();
        assert_eq!(v["metadata"]["name"].as_str(), Some("apikey-k"));
        assert_eq!(v["apiVersion"].as_str(), Some("v1"));
        assert_eq!(v["kind"].as_str(), Some("Secret"));
        assert_eq!(v["stringData"]["token"].as_str(), Some("hvl_x"));
    }
}
