//! A cheap hasher for the maps a request looks up: token digests (SHA-256 output, already
//! uniform), Envoy's context ids (small integers Envoy chooses) and configured namespace names.
//!
//! The standard `HashMap` hashes with SipHash-1-3 under a random seed, which defends a map
//! that untrusted input *inserts* into. None of these maps takes an insert from a request:
//! they are built from the configuration (or keyed by Envoy's ids), and a request only looks
//! up, which cannot lengthen a probe sequence. In the wasm VM, SipHash was a few hundred
//! instructions per lookup, several lookups per request; this is a multiply and a rotate per
//! eight bytes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// An empty [`FastMap`] with room for `n` entries.
pub fn with_capacity<K, V>(n: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(n, BuildHasherDefault::default())
}

/// Multiply-rotate hashing, eight bytes at a time (the constant is 2^64 ÷ φ, odd).
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes the bucket from the low bits and a tag from the top 7: fold the
        // well-mixed high half down so both are spread.
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash<T: Hash + ?Sized>(t: &T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(t)
    }

    #[test]
    fn equal_keys_hash_equal_and_near_keys_apart() {
        assert_eq!(hash(&"shop-a"), hash(&"shop-a"));
        assert_ne!(hash(&"shop-a"), hash(&"shop-b"));
        // A trailing partial word still counts, and a length difference too.
        assert_ne!(hash(&"abcdefgh1"), hash(&"abcdefgh2"));
        assert_ne!(hash(&[0u8; 31][..]), hash(&[0u8; 32][..]));
        assert_ne!(hash(&7u32), hash(&8u32));
    }

    #[test]
    fn sequential_context_ids_spread_over_buckets() {
        // Envoy numbers contexts 1, 2, 3, …: the low 7 bits (a 128-bucket table) must not
        // collapse onto a few buckets.
        let buckets: std::collections::HashSet<u64> =
            (1u32..=128).map(|i| hash(&i) & 127).collect();
        assert!(buckets.len() > 64, "{} buckets", buckets.len());
    }

    #[test]
    fn a_map_of_digests_finds_what_it_holds() {
        let mut m: FastMap<[u8; 32], u32> = with_capacity(1000);
        for i in 0..1000u32 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_le_bytes());
            d[31] = 0x5a;
            m.insert(d, i);
        }
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&500u32.to_le_bytes());
        d[31] = 0x5a;
        assert_eq!(m.get(&d), Some(&500));
        d[31] = 0;
        assert_eq!(m.get(&d), None);
    }
}
