//! Token digests: the SHA-256 a token is known by (SPEC §3: lookup is SHA-256(token) → hash
//! map, never a string compare of secrets), and its `sha256:<hex>` form in configurations.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The SHA-256 of a token, as hev layer writes it: `sha256:<64 lower-case hex>`. Read straight
/// into 32 bytes, so the configuration never holds 100,000 hex strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupHash(pub [u8; 32]);

impl LookupHash {
    /// The digest of `token`.
    pub fn of(token: &str) -> LookupHash {
        use sha2::Digest as _;
        LookupHash(sha2::Sha256::digest(token.as_bytes()).into())
    }
}

impl std::fmt::Display for LookupHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LookupHash {
    type Err = String;
    fn from_str(s: &str) -> Result<LookupHash, String> {
        let hex = s
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| format!("lookupHash {s:?} must be sha256:<64 lower-case hex>"))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).map_err(|e| e.to_string())?;
        Ok(LookupHash(out))
    }
}

impl Serialize for LookupHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LookupHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LookupHash, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// SHA-256 of a token.
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}
