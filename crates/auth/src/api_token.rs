//! Long-lived API tokens (automation, and services calling each other):
//! `fwt_` + 64 hex digits of randomness, shown once, stored as SHA-256.
//! The prefix makes them recognisable to secret scanners and lets the
//! verifier tell them from access tokens without trying both.

use std::path::Path;

use sha2::{Digest, Sha256};

/// Every API token starts with this.
pub const API_TOKEN_PREFIX: &str = "fwt_";
const SECRET_HEX: usize = 64;

/// A new random API token (256 bits).
pub fn generate_api_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; SECRET_HEX / 2];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{API_TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Whether `token` has the shape of an API token (checked before any lookup,
/// so garbage never reaches the database).
pub fn is_api_token(token: &str) -> bool {
    token.strip_prefix(API_TOKEN_PREFIX).is_some_and(|s| {
        s.len() == SECRET_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// SHA-256 of the whole token: the form in `api_tokens.secret_sha256`. The
/// secret is 256 random bits, so a fast hash is enough (no salt, no argon2):
/// nothing can be guessed from the hash.
pub fn api_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A service's own token for calling other services. `Debug` never shows it.
#[derive(Clone)]
pub struct ServiceToken(String);

#[derive(Debug, thiserror::Error)]
pub enum ServiceTokenError {
    #[error("cannot read the service token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the service token in {path} is not an API token (fwt_ + 64 hex digits)")]
    Malformed { path: String },
}

impl ServiceToken {
    /// Reads `auth.service_token_file` (one line, a trailing newline is fine).
    pub fn from_file(path: &Path) -> Result<Self, ServiceTokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServiceTokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let token = text.trim();
        if !is_api_token(token) {
            return Err(ServiceTokenError::Malformed {
                path: path.display().to_string(),
            });
        }
        Ok(Self(token.to_string()))
    }

    /// From a string already in hand (tests, a secret store client).
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        is_api_token(&token).then_some(Self(token))
    }

    /// `Bearer fwt_...`, the `Authorization` value.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.0)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_shape_and_differ() {
        let a = generate_api_token();
        assert!(is_api_token(&a), "{a}");
        assert_eq!(a.len(), 68);
        assert_ne!(a, generate_api_token());
        assert_ne!(api_token_hash(&a), api_token_hash(&generate_api_token()));
        for bad in [
            "",
            "fwt_",
            "fw_0123",
            &a.to_uppercase(),
            &format!("{a}0"),
            &a[..67],
        ] {
            assert!(!is_api_token(bad), "{bad}");
        }
    }

    #[test]
    fn service_tokens_hide_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let t = generate_api_token();
        std::fs::write(&path, format!("{t}\n")).unwrap();
        let st = ServiceToken::from_file(&path).unwrap();
        assert_eq!(st.expose(), t);
        assert_eq!(st.authorization(), format!("Bearer {t}"));
        assert!(!format!("{st:?}").contains(&t[4..]));
        std::fs::write(&path, "hunter2").unwrap();
        let e = ServiceToken::from_file(&path).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(ServiceToken::new("nope").is_none());
    }
}
