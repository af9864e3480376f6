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

/// The key under which a minted Secret holds the token.
pub const TOKEN_KEY: &str = "token";

/// The Secret delivering a token. In a cluster it is owned by its ApiKey (`owner`), so
/// Kubernetes deletes it with the key.
pub fn token_secret(
    namespace: &str,
    api_key: &str,
    token: &str,
    minted_at: &str,
    owner: Option<OwnerReference>,
) -> Secret {
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
            annotations: Some(BTreeMap::from([
                ("hevlayer.com/apikey".to_owned(), api_key.to_owned()),
                (MINTED_AT_ANNOTATION.to_owned(), minted_at.to_owned()),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_owned(), token.to_owned())])),
        ..Secret::default()
    }
}

/// The Secret manifest delivering a token (directory mode writes it beside the ApiKey).
pub fn secret_manifest(
    namespace: &str,
    api_key: &str,
    token: &str,
    minted_at: &str,
) -> Result<String> {
    let doc = token_secret(namespace, api_key, token, minted_at, None);
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
        let yaml =
            secret_manifest("layer", "k", "hvl_x", "2026-11-24T00:00:00Z").unwrap_or_default();
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap_or_default();
        assert_eq!(v["metadata"]["name"].as_str(), Some("apikey-k"));
        assert_eq!(v["apiVersion"].as_str(), Some("v1"));
        assert_eq!(v["kind"].as_str(), Some("Secret"));
        assert_eq!(v["stringData"]["token"].as_str(), Some("hvl_x"));
    }
}
