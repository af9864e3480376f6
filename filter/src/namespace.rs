//! Namespace names as turbopuffer allows them (SPEC §3): a leaf every other module may use.

/// True for bytes turbopuffer allows in a namespace name: `[A-Za-z0-9_.-]`.
pub const fn is_namespace_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// Checks a namespace name: `[A-Za-z0-9_.-]`, 1..=128 characters.
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 128
        && ns.bytes().all(is_namespace_byte)
        && ns != "."
        && ns != ".."
}
