//! The configuration's route rules ([`RouteRule`]): compiled once from `routes[]`, tried in
//! order before the default table.

use super::table::{ADMIN, READ, WRITE};
use super::Target;
use crate::config::{RouteRuleConfig, RouteTargetConfig, ScopeRequirement};
use crate::scope::Scope;

/// One segment of a config route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    Literal(Box<str>),
    /// `{ns}`: the namespace.
    Namespace,
    /// `*`: any one segment.
    Any,
    /// `**` (last only): any remaining segments, including none.
    Rest,
}

/// A compiled route rule from config, tried before the default table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    method: Option<Box<str>>,
    pattern: Vec<PatternSegment>,
    pub(super) scope: Option<Scope>,
    pub(super) target: Target,
}

impl RouteRule {
    /// Compiles a config rule; see [`RouteRuleConfig`] for the pattern syntax.
    pub fn compile(rule: &RouteRuleConfig) -> Result<RouteRule, String> {
        let path = rule.path.as_str();
        if !path.starts_with('/') || path.contains('?') {
            return Err(format!(
                "route path {path:?} must start with '/' and carry no query string"
            ));
        }
        let raw: Vec<&str> = if path == "/" {
            Vec::new()
        } else {
            path[1..].split('/').collect()
        };
        let mut pattern = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            pattern.push(match *seg {
                "{ns}" => PatternSegment::Namespace,
                "*" => PatternSegment::Any,
                "**" if i + 1 == raw.len() => PatternSegment::Rest,
                "**" => {
                    return Err(format!(
                        "route path {path:?}: '**' is only allowed as the last segment"
                    ))
                }
                s if s.is_empty() || s.contains(['{', '}', '*']) => {
                    return Err(format!(
                    "route path {path:?}: segment {s:?} is not a literal, '{{ns}}', '*' or '**'"
                ))
                }
                s => PatternSegment::Literal(s.into()),
            });
        }
        let method = match rule.method.as_deref() {
            None | Some("*") => None,
            Some(m) if m.bytes().all(|b| b.is_ascii_uppercase()) && !m.is_empty() => {
                Some(if m == "HEAD" { "GET".into() } else { m.into() })
            }
            Some(m) => {
                return Err(format!(
                    "route method {m:?} must be an upper-case HTTP method or '*'"
                ))
            }
        };
        let scope = match rule.scope {
            ScopeRequirement::None => None,
            ScopeRequirement::Read => READ,
            ScopeRequirement::Write => WRITE,
            ScopeRequirement::Admin => ADMIN,
        };
        let target = match rule.target {
            RouteTargetConfig::Store => Target::Store,
            RouteTargetConfig::App => Target::App,
            RouteTargetConfig::Control => Target::Control,
        };
        Ok(RouteRule {
            method,
            pattern,
            scope,
            target,
        })
    }

    pub(super) fn matches(&self, method: &str, segs: &[&str]) -> bool {
        if self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        let mut i = 0;
        for p in &self.pattern {
            match p {
                PatternSegment::Rest => return true,
                _ if i >= segs.len() => return false,
                PatternSegment::Literal(l) if **l != *segs[i] => return false,
                _ => {}
            }
            i += 1;
        }
        i == segs.len()
    }
}
