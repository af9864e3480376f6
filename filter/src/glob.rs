//! Namespace globs (`shop-*`, `cohort-??`, `*`).
//!
//! Hand-written instead of `globset`: a key's globs are a handful of short patterns over the
//! namespace alphabet `[A-Za-z0-9_.-]`, and 100,000 keys each compiling a regex-backed
//! `GlobSet` would blow the reload (< 200 ms) and memory (< 64 MiB per VM) budgets. Matching
//! here is allocation-free and linear in practice.

use std::fmt;

/// A compiled namespace glob: `*` matches any run of characters, `?` exactly one; every other
/// character matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceGlob {
    pattern: Box<str>,
}

/// Why a glob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace glob {pattern:?} is invalid: {reason}")]
pub struct GlobError {
    /// The offending pattern.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl NamespaceGlob {
    /// Compiles a pattern; only the namespace alphabet plus `*` and `?` are allowed.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let err = |reason| GlobError {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(err("it is empty"));
        }
        if pattern.len() > 256 {
            return Err(err("it is longer than 256 characters"));
        }
        if !pattern
            .bytes()
            .all(|b| b == b'*' || b == b'?' || crate::route::is_namespace_byte(b))
        {
            return Err(err(
                "only A-Z a-z 0-9 _ . - and the wildcards * ? are allowed",
            ));
        }
        Ok(NamespaceGlob {
            pattern: pattern.into(),
        })
    }

    /// True for the catch-all `*`.
    pub fn is_any(&self) -> bool {
        self.pattern.bytes().all(|b| b == b'*')
    }

    /// `Some("shop-")` for a pure prefix glob like `shop-*` (no other wildcard).
    pub fn literal_prefix(&self) -> Option<&str> {
        let stem = self.pattern.strip_suffix('*')?;
        (!stem.contains(['*', '?'])).then_some(stem)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Matches a namespace name (iterative wildcard matching with one backtrack point).
    pub fn matches(&self, name: &str) -> bool {
        let (p, n) = (self.pattern.as_bytes(), name.as_bytes());
        let (mut pi, mut ni) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, ni));
                    pi += 1;
                }
                Some(&c) if c == b'?' || c == n[ni] => {
                    pi += 1;
                    ni += 1;
                }
                _ => match star {
                    Some((sp, sn)) => {
                        pi = sp + 1;
                        ni = sn + 1;
                        star = Some((sp, sn + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for NamespaceGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str) -> NamespaceGlob {
        NamespaceGlob::new(p).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn prefix_glob_matches_only_its_prefix() {
        assert!(g("shop-*").matches("shop-a"));
        assert!(g("shop-*").matches("shop-"));
        assert!(!g("shop-*").matches("shopx"));
        assert!(!g("shop-*").matches("logs-2026"));
        assert_eq!(g("shop-*").literal_prefix(), Some("shop-"));
        assert_eq!(g("a*b*").literal_prefix(), None);
    }

    #[test]
    fn star_and_question_mark_backtrack() {
        assert!(g("*").matches("anything") && g("*").is_any());
        assert!(g("a*b*c").matches("axxbyyc"));
        assert!(g("a*b*c").matches("abbc"));
        assert!(!g("a*b*c").matches("abcx"));
        assert!(g("cohort-??").matches("cohort-12"));
        assert!(!g("cohort-??").matches("cohort-1"));
        assert!(g("exact").matches("exact") && !g("exact").matches("exact2"));
    }

    #[test]
    fn rejects_globs_outside_the_namespace_alphabet() {
        assert!(NamespaceGlob::new("").is_err());
        assert!(NamespaceGlob::new("shop/*").is_err());
        assert!(NamespaceGlob::new("[ab]*").is_err());
    }
}
