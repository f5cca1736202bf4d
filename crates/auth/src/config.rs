//! The `[auth]` section every service config embeds: what the verifier
//! accepts, how big its caches are, and (for the console) where the signing
//! key lives and how long access tokens last.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::api_token::{ServiceToken, ServiceTokenError};

/// `[auth]`. Every key has a default; services embed it as `auth: AuthConfig`
/// and add `self.auth.validate()` to their own checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `iss` of the access tokens this deployment issues and accepts.
    pub issuer: String,
    /// `aud` of the access tokens this deployment issues and accepts.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Lifetime of an access token the issuer signs, in seconds.
    pub access_token_ttl_secs: u64,
    /// The issuer's Ed25519 private key (PKCS#8 PEM, mode 0600; a mounted
    /// Secret in Kubernetes). Only the service that signs tokens (the
    /// console) sets it; verifiers read public keys from the database.
    pub signing_key_file: Option<PathBuf>,
    /// The service's own token (`fwt_...`) for calls to other services, in a
    /// file (a mounted Secret). Unset: the service calls nobody.
    pub service_token_file: Option<PathBuf>,
    /// Verified API tokens, users and signing keys kept in memory (LRU).
    pub cache_capacity: usize,
    /// Refused API tokens and unknown key ids kept in memory (LRU), apart
    /// from the positive cache, so a flood of bad tokens never evicts good ones.
    pub negative_cache_capacity: usize,
    /// A cached entry is looked up again after this many seconds even when
    /// no invalidation arrived: a bound, not the mechanism (revocation
    /// arrives by LISTEN/NOTIFY at once).
    pub cache_max_age_secs: u64,
    /// How often an API token's `last_used_at` is written while it is in
    /// use, in seconds.
    pub last_used_interval_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "fleetwatch".into(),
            audience: "fleetwatch".into(),
            leeway_secs: 30,
            access_token_ttl_secs: 900,
            signing_key_file: None,
            service_token_file: None,
            cache_capacity: 10_000,
            negative_cache_capacity: 10_000,
            cache_max_age_secs: 600,
            last_used_interval_secs: 300,
        }
    }
}

impl AuthConfig {
    /// The service's own token from `auth.service_token_file`, if set (read
    /// at start, so a missing or malformed file fails before any port is bound).
    pub fn service_token(&self) -> Result<Option<ServiceToken>, ServiceTokenError> {
        self.service_token_file
            .as_deref()
            .map(ServiceToken::from_file)
            .transpose()
    }
}

impl fleetwatch_common::Validate for AuthConfig {
    fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.issuer.trim().is_empty() {
            errs.push("auth.issuer must not be empty".into());
        }
        if self.audience.trim().is_empty() {
            errs.push("auth.audience must not be empty".into());
        }
        if self.leeway_secs > 300 {
            errs.push("auth.leeway_secs must be at most 300".into());
        }
        if !(60..=86_400).contains(&self.access_token_ttl_secs) {
            errs.push("auth.access_token_ttl_secs must be 60..86400".into());
        }
        if self.cache_capacity == 0 {
            errs.push("auth.cache_capacity must be at least 1".into());
        }
        if self.negative_cache_capacity == 0 {
            errs.push("auth.negative_cache_capacity must be at least 1".into());
        }
        if self.cache_max_age_secs == 0 {
            errs.push("auth.cache_max_age_secs must be at least 1".into());
        }
        if self.last_used_interval_secs == 0 {
            errs.push("auth.last_used_interval_secs must be at least 1".into());
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwatch_common::Validate;

    #[test]
    fn defaults_are_valid_and_bad_values_are_all_named() {
        assert!(AuthConfig::default().validate().is_empty());
        let bad = AuthConfig {
            issuer: " ".into(),
            access_token_ttl_secs: 5,
            cache_capacity: 0,
            ..Default::default()
        };
        let errs = bad.validate().join("\n");
        assert!(errs.contains("auth.issuer"), "{errs}");
        assert!(errs.contains("auth.access_token_ttl_secs"), "{errs}");
        assert!(errs.contains("auth.cache_capacity"), "{errs}");
    }

    #[test]
    fn the_service_token_comes_from_its_file() {
        assert!(AuthConfig::default().service_token().unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let token = crate::generate_api_token();
        std::fs::write(&path, format!("{token}\n")).unwrap();
        let config = AuthConfig {
            service_token_file: Some(path),
            ..Default::default()
        };
        assert_eq!(config.service_token().unwrap().unwrap().expose(), token);
        let missing = AuthConfig {
            service_token_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        assert!(missing.service_token().is_err());
    }

    /// The README documents every key (the house rule for config).
    #[test]
    fn readme_documents_every_key() {
        let readme = include_str!("../README.md");
        let json = serde_json::to_value(AuthConfig::default()).unwrap_or_default();
        let keys: Vec<&String> = json
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert!(!keys.is_empty());
        for key in keys {
            assert!(
                readme.contains(&format!("`auth.{key}`")),
                "README.md does not document auth.{key}"
            );
        }
    }
}
