//! Namespace globs (`shop-*`, `cohort-??`, `*`).
//!
//! Hand-written instead of `globset`: a key's globs are a handful of short patterns over the
//! namespace alphabet `[A-Za-z0-9_.-]`, and 100,000 keys each compiling a regex-backed
//! `GlobSet` would blow the reload (< 200 ms) and memory (< 64 MiB per VM) budgets. Matching
//! here is allocation-free and linear in practice.

use std::fmt;

/// A compiled namespace glob: `*` matches any run of characters, `?` exactly one; every other
/// character matches itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
            .all(|b| b == b'*' || b == b'?' || crate::namespace::is_namespace_byte(b))
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

impl NamespaceGlob {
    /// True when every namespace `inner` matches is also matched by `self` (language
    /// containment), judged conservatively: `true` is always right; a few contained pairs that
    /// need reasoning about lengths (`*?` ⊇ `?*`) answer `false`. Used where a key may only be
    /// as wide as its maker's (SPEC §7), so "not contained" is the safe answer when unsure.
    ///
    /// `inner` is read as a string of tokens: a literal is matched by the same literal, `?` or
    /// `*` of `self`; its `?` by `?` or `*`; its `*` only by a `*` of `self`.
    pub fn contains(&self, inner: &NamespaceGlob) -> bool {
        let (p, q) = (self.pattern.as_bytes(), inner.pattern.as_bytes());
        // next[j]: does p[i+1..] cover q[j..]; cur[j]: does p[i..]. Filled from the end.
        let mut next = vec![false; q.len() + 1];
        next[q.len()] = true;
        let mut cur = vec![false; q.len() + 1];
        for &c in p.iter().rev() {
            for j in (0..=q.len()).rev() {
                cur[j] = match (c, q.get(j)) {
                    (b'*', Some(_)) => next[j] || cur[j + 1],
                    (b'*', None) => next[j],
                    (b'?', Some(&t)) => t != b'*' && next[j + 1],
                    (lit, Some(&t)) => t == lit && next[j + 1],
                    (_, None) => false,
                };
            }
            std::mem::swap(&mut cur, &mut next);
        }
        next[0]
    }
}

/// True when the namespaces `inner` allows are all allowed by `outer`; an empty list means
/// every namespace (a grant without `namespaces`). Conservative like
/// [`NamespaceGlob::contains`]: each inner glob must lie inside one outer glob.
pub fn globs_contain(outer: &[NamespaceGlob], inner: &[NamespaceGlob]) -> bool {
    let any = |globs: &[NamespaceGlob]| globs.is_empty() || globs.iter().any(NamespaceGlob::is_any);
    if any(outer) {
        return true;
    }
    !any(inner) && inner.iter().all(|i| outer.iter().any(|o| o.contains(i)))
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

    fn contains(outer: &str, inner: &str) -> bool {
        g(outer).contains(&g(inner))
    }

    #[test]
    fn star_contains_everything_and_only_star_contains_star() {
        for inner in ["*", "a", "shop-*", "?", "a*b?c", "**"] {
            assert!(contains("*", inner), "* ⊇ {inner}");
            assert!(contains("**", inner), "** ⊇ {inner}");
        }
        for outer in ["a*", "*a", "?*", "shop-*", "a", "?"] {
            assert!(!contains(outer, "*"), "{outer} ⊉ *");
        }
    }

    #[test]
    fn prefix_globs_contain_narrower_prefixes_and_literals_only() {
        assert!(contains("shop-*", "shop-*"));
        assert!(contains("shop-*", "shop-eu-*"));
        assert!(contains("shop-*", "shop-??"));
        assert!(contains("shop-*", "shop-"));
        assert!(contains("shop-*", "shop-x"));
        assert!(contains("shop-*", "shop-*-x*"));
        assert!(!contains("shop-*", "shop*"), "shop* also matches shopx");
        assert!(!contains("shop-*", "sho?-*"), "sho?-* also matches shoX-");
        assert!(!contains("shop-*", "*shop-*"));
        assert!(!contains("shop-*", "shop"));
        assert!(!contains("shop-*", "logs-*"));
        assert!(!contains("shop-eu-*", "shop-*"), "wider is never contained");
    }

    #[test]
    fn question_marks_match_one_character_of_any_kind_but_never_a_star() {
        assert!(contains("shop-?", "shop-a"));
        assert!(contains("shop-?", "shop-?"));
        assert!(!contains("shop-?", "shop-*"));
        assert!(!contains("shop-?", "shop-ab"));
        assert!(!contains("shop-?", "shop-"));
        assert!(contains("??", "a?"));
        assert!(!contains("a?", "??"));
        assert!(contains("*?", "?"));
        assert!(!contains("?", "*?"));
    }

    #[test]
    fn literals_contain_only_themselves() {
        assert!(contains("exact", "exact"));
        assert!(!contains("exact", "exact2"));
        assert!(!contains("exact", "exac?"));
        assert!(!contains("exact", "exac*"));
        assert!(!contains("exac", "exact"));
    }

    #[test]
    fn inner_stars_need_outer_stars_on_both_sides() {
        assert!(contains("a*b", "a*xb"));
        assert!(contains("a*b", "ab"));
        assert!(!contains("a*b", "a*"));
        assert!(!contains("a*b", "*b"));
        assert!(contains("*a*", "x*a*y"));
        assert!(contains("*a*", "*a*a*"));
        assert!(!contains("*a*", "*b*"));
        assert!(!contains("a*a", "a"), "a*a needs two a's");
        assert!(contains("a*a", "aa"));
    }

    #[test]
    fn conservative_where_lengths_would_have_to_be_reasoned_about() {
        // Both are "one or more characters"; the token reading says no, which is safe.
        assert!(!contains("*?", "?*"));
    }

    #[test]
    fn brackets_never_compile_so_they_are_never_contained() {
        for p in ["[ab]*", "shop-[0-9]", "shop-[!x]", "{a,b}"] {
            assert!(NamespaceGlob::new(p).is_err(), "{p}");
        }
    }

    #[test]
    fn lists_an_empty_list_is_every_namespace() {
        let list = |v: &[&str]| v.iter().map(|p| g(p)).collect::<Vec<_>>();
        assert!(globs_contain(&[], &[]));
        assert!(globs_contain(&[], &list(&["shop-*"])));
        assert!(globs_contain(&list(&["*"]), &[]));
        assert!(!globs_contain(&list(&["shop-*"]), &[]), "all ⊄ shop-*");
        assert!(!globs_contain(&list(&["shop-*"]), &list(&["*"])));
        assert!(globs_contain(
            &list(&["shop-*", "logs-*"]),
            &list(&["logs-2026", "shop-a*"])
        ));
        assert!(!globs_contain(
            &list(&["shop-*", "logs-*"]),
            &list(&["logs-2026", "cohort-*"])
        ));
    }

    /// Draws a pattern over a small alphabet so that overlaps are common.
    fn random_glob(rng: &mut u64, max: usize) -> String {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let len = 1 + (next() as usize) % max;
        (0..len)
            .map(|_| ['a', 'b', '-', '*', '?'][(next() % 5) as usize])
            .collect()
    }

    /// Every string of up to `len` characters over the alphabet the patterns use (and one more).
    fn strings(len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..len {
            frontier = frontier
                .iter()
                .flat_map(|s| ['a', 'b', '-', 'c'].map(|c| format!("{s}{c}")))
                .collect();
            all.extend(frontier.iter().cloned());
        }
        all
    }

    #[test]
    fn property_containment_is_sound_on_every_short_name() {
        let names = strings(6);
        let mut rng = 0x1234_5678_9ABC_DEF1u64;
        let (mut said_yes, mut pairs) = (0, 0);
        for _ in 0..3_000 {
            let (o, i) = (random_glob(&mut rng, 4), random_glob(&mut rng, 4));
            let (outer, inner) = (g(&o), g(&i));
            pairs += 1;
            if outer.contains(&inner) {
                said_yes += 1;
                for n in names.iter().filter(|n| inner.matches(n)) {
                    assert!(outer.matches(n), "{o} ⊇ {i} claimed, but {n:?} breaks it");
                }
            }
            // Reflexive: a glob always contains itself.
            assert!(inner.contains(&inner), "{i} ⊇ {i}");
        }
        assert!(
            said_yes > 100,
            "only {said_yes} of {pairs} pairs contained: weak test"
        );
    }
}
