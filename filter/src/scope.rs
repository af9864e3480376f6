//! Scopes (`read`, `write`, `admin`) and the small bit set that holds a principal's grants.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One permission level. `admin` satisfies `read` and `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET/HEAD routes and read-shaped POSTs (query, batch fetch, scans, metrics queries).
    Read,
    /// Namespace writes and worker-queue routes.
    Write,
    /// Key management, Pipeline/Function control; implies read and write.
    Admin,
}

impl Scope {
    /// The lowercase name used in config, headers and error messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, compiled from a config list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope (store credentials, `open` mode).
    pub const ALL: Scopes = Scopes(7);

    /// Builds the set from a list of scopes.
    pub fn from_slice(scopes: &[Scope]) -> Scopes {
        Scopes(scopes.iter().fold(0, |acc, s| acc | s.bit()))
    }

    /// True when this set grants `required` (`admin` grants everything).
    pub const fn allows(self, required: Scope) -> bool {
        self.0 & (required.bit() | Scope::Admin.bit()) != 0
    }

    /// True when no scope is granted.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Comma-separated names (`read,write`), as sent in `x-layergate-scopes`.
    pub const fn as_str(self) -> &'static str {
        match self.0 & 7 {
            0 => "",
            1 => "read",
            2 => "write",
            3 => "read,write",
            4 => "admin",
            5 => "read,admin",
            6 => "write,admin",
            _ => "read,write,admin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_satisfies_read_and_write() {
        let admin = Scopes::from_slice(&[Scope::Admin]);
        assert!(
            admin.allows(Scope::Read) && admin.allows(Scope::Write) && admin.allows(Scope::Admin)
        );
    }

    #[test]
    fn read_does_not_satisfy_write() {
        let read = Scopes::from_slice(&[Scope::Read]);
        assert!(read.allows(Scope::Read));
        assert!(!read.allows(Scope::Write));
        assert!(!read.allows(Scope::Admin));
        assert_eq!(
            Scopes::from_slice(&[Scope::Read, Scope::Write]).as_str(),
            "read,write"
        );
    }
}
