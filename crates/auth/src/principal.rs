//! Who is calling: the role ladder and the verified principal every edge
//! hands its handlers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::AuthError;

/// What a caller may do. Ordered: a higher role can do everything a lower
/// one can (`Viewer < Operator < Admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: fleet state, telemetry, incidents, frames.
    Viewer,
    /// Acts: acknowledges and resolves incidents, sends commands.
    Operator,
    /// Manages: rules, users, vehicles, tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The spelling in the database, tokens, config and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: use viewer, operator or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrincipalKind {
    /// An operator with a short-lived signed access token (a console login).
    User,
    /// A service (ingest, persistence, ...) with its service token.
    Service,
    /// An operator's long-lived API token (automation acting for a user).
    ApiToken,
}

impl PrincipalKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Service => "service",
            Self::ApiToken => "api-token",
        }
    }
}

/// A verified caller. Only a [`crate::Verifier`] makes these from a request;
/// handlers read it from the request's extensions and never trust an
/// `actor` string the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// Stable id: the user id (decimal) for `User` and `ApiToken`, the
    /// service name for `Service`.
    pub subject: String,
    /// The username, or the service name.
    pub name: String,
    /// What this caller may do now (an API token never exceeds its owner's
    /// current role).
    pub role: Role,
    /// The API token used (`ApiToken`, `Service`), for audit.
    pub token_id: Option<i64>,
}

impl Principal {
    /// Whether this caller holds at least `role`.
    pub fn has(&self, role: Role) -> bool {
        self.role >= role
    }

    /// `Ok` if this caller holds at least `role`, else [`AuthError::Forbidden`]
    /// (403 / `PERMISSION_DENIED`).
    pub fn require(&self, role: Role) -> Result<(), AuthError> {
        if self.has(role) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                needed: role,
                actual: self.role,
            })
        }
    }

    /// Whether this is a service identity (e.g. for calls only services may
    /// make, like inference `publish=true`).
    pub fn is_service(&self) -> bool {
        self.kind == PrincipalKind::Service
    }

    /// The actor to write into audit rows: `alice`, `alice [token 12]` or
    /// `service:ingest`. Usernames and service names contain neither spaces
    /// nor `:`, so the forms cannot be confused.
    pub fn actor(&self) -> String {
        match (self.kind, self.token_id) {
            (PrincipalKind::Service, _) => format!("service:{}", self.name),
            (PrincipalKind::ApiToken, Some(id)) => format!("{} [token {id}]", self.name),
            _ => self.name.clone(),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.actor(), self.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
        assert!("Admin".parse::<Role>().is_err(), "one spelling only");
    }

    #[test]
    fn principals() {
        let p = Principal {
            kind: PrincipalKind::ApiToken,
            subject: "7".into(),
            name: "alice".into(),
            role: Role::Operator,
            token_id: Some(12),
        };
        assert!(p.has(Role::Viewer) && p.has(Role::Operator) && !p.has(Role::Admin));
        assert_eq!(p.actor(), "alice [token 12]");
        let s = Principal {
            kind: PrincipalKind::Service,
            subject: "ingest".into(),
            name: "ingest".into(),
            role: Role::Viewer,
            token_id: Some(3),
        };
        assert!(s.is_service());
        assert_eq!(s.actor(), "service:ingest");
    }
}
