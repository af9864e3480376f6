//! Randomness from the OS, for what needs no more than spreading out: temporary file names,
//! error references, probe jitter. (Tokens and credentials use `getrandom` directly, in full.)

/// 16 random bits from the OS (0 if it has none to give).
pub fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).map_or(0, |()| u16::from_le_bytes(b))
}
