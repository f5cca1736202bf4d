//! Short-lived access tokens: Ed25519-signed JWTs (`alg` EdDSA) with a `kid`
//! header naming the signing key, so keys rotate without a flag day. The
//! issuer (the console) holds the private key in a file; verifiers know only
//! public keys, from the `signing_keys` table. Validation (signature, `exp`,
//! `nbf` with leeway, `iss`, `aud`, required claims) is `jsonwebtoken`'s.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::error::AuthError;
use crate::{Role, User};

/// Tokens longer than this are refused before any parsing.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read signing key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write signing key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("signing key {path} is not an Ed25519 PKCS#8 PEM private key")]
    Parse { path: String },
    #[error("auth.signing_key_file is not set")]
    NotConfigured,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The public half of a signing key and its id, as stored in `signing_keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub bytes: [u8; 32],
}

impl PublicKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self {
            kid: key_id(&bytes),
            bytes,
        }
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.kid)
    }
}

/// The key id of an Ed25519 public key: its RFC 7638 JWK thumbprint
/// (base64url SHA-256 of `{"crv":"Ed25519","kty":"OKP","x":...}`), so a
/// key file needs no separate id and two keys never share one.
pub fn key_id(public: &[u8; 32]) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// Whether `kid` has the shape of a key id (what `signing_keys.kid` accepts).
pub(crate) fn valid_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An issuer's Ed25519 private key. `Debug` shows only its id.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public.kid)
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.fill(0);
        Self::from_dalek(key)
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> Self {
        let public = PublicKey::new(key.verifying_key().to_bytes());
        Self { key, public }
    }

    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), the
    /// format `openssl genpkey -algorithm ed25519` writes too.
    pub fn from_pem(pem: &str) -> Option<Self> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .ok()
            .map(Self::from_dalek)
    }

    /// Loads the key file. A file that others can read is used, with a
    /// warning: refusing would turn a permissions slip into an outage.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %shown, "signing key file is readable by group or others; chmod 600 it");
            }
        }
        Self::from_pem(&text).ok_or(KeyError::Parse { path: shown })
    }

    /// Writes a new key to `path` (created with mode 0600; an existing file
    /// is never overwritten) and returns it.
    pub fn create_file(path: &Path) -> Result<Self, KeyError> {
        let key = Self::generate();
        let write_err = |source| KeyError::Write {
            path: path.display().to_string(),
            source,
        };
        let pem = key
            .key
            .to_pkcs8_pem(Default::default())
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(write_err)?;
        file.write_all(pem.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(write_err)?;
        Ok(key)
    }

    fn encoding_key(&self) -> Result<EncodingKey, KeyError> {
        let der = self
            .key
            .to_pkcs8_der()
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(EncodingKey::from_ed_der(der.as_bytes()))
    }
}

/// The claims of a Fleetwatch access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id, decimal.
    pub sub: String,
    /// The username when issued (informational: the verifier uses the
    /// current one).
    pub name: String,
    /// The role when issued (informational: the verifier uses the current one).
    pub role: Role,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// A random id, for audit and log correlation.
    pub jti: String,
}

/// A signed access token and when it stops working.
#[derive(Clone)]
pub struct AccessToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken(<redacted>, expires {})", self.expires_at)
    }
}

/// Signs access tokens (the console, after a password login). Its public
/// key must be in `signing_keys` (see [`crate::store::register_signing_key`])
/// for verifiers to accept what it signs.
#[derive(Debug)]
pub struct TokenIssuer {
    key: SigningKey,
    encoding: EncodingKey,
    issuer: String,
    audience: String,
    ttl_secs: i64,
}

impl TokenIssuer {
    pub fn new(key: SigningKey, config: &AuthConfig) -> Result<Self, KeyError> {
        Ok(Self {
            encoding: key.encoding_key()?,
            key,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl_secs: i64::try_from(config.access_token_ttl_secs).unwrap_or(900),
        })
    }

    /// With the key from `auth.signing_key_file`.
    pub fn from_config(config: &AuthConfig) -> Result<Self, KeyError> {
        let path = config
            .signing_key_file
            .as_deref()
            .ok_or(KeyError::NotConfigured)?;
        Self::new(SigningKey::load(path)?, config)
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// A token for `user`, valid from now for `auth.access_token_ttl_secs`.
    pub fn issue(&self, user: &User) -> Result<AccessToken, KeyError> {
        self.issue_at(user, Utc::now())
    }

    /// A token as if issued at `now` (tests, and tools that back-date).
    pub fn issue_at(&self, user: &User, now: DateTime<Utc>) -> Result<AccessToken, KeyError> {
        use rand::RngCore;
        let mut jti = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut jti);
        let iat = now.timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.id.to_string(),
            name: user.username.clone(),
            role: user.role,
            iat,
            nbf: iat,
            exp: iat + self.ttl_secs,
            jti: hex::encode(jti),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid().to_string());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(AccessToken {
            token,
            expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or(now),
        })
    }
}

/// What every access token must satisfy, apart from the key.
pub(crate) fn validation(config: &AuthConfig) -> Validation {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.leeway = config.leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[&config.issuer]);
    v.set_audience(&[&config.audience]);
    // Required, not just checked when present: a token without `nbf`
    // (or with a non-numeric one) is refused, never waved through.
    v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    v
}

/// The key id of a token that claims EdDSA, before any key is looked up.
pub(crate) fn token_kid(token: &str) -> Result<String, AuthError> {
    if token.len() > MAX_TOKEN_BYTES || token.bytes().filter(|b| *b == b'.').count() != 2 {
        return Err(AuthError::Malformed("not an access token"));
    }
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| AuthError::Malformed("unreadable access token header"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(AuthError::Malformed("access tokens are EdDSA"));
    }
    match header.kid {
        Some(kid) if valid_kid(&kid) => Ok(kid),
        Some(_) => Err(AuthError::Malformed("malformed key id")),
        None => Err(AuthError::Malformed("access token without a key id")),
    }
}

/// Checks signature and claims against one public key.
pub(crate) fn decode(
    token: &str,
    public: &[u8; 32],
    validation: &Validation,
) -> Result<AccessClaims, AuthError> {
    use jsonwebtoken::errors::ErrorKind;
    let key = DecodingKey::from_ed_der(public);
    jsonwebtoken::decode::<AccessClaims>(token, &key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                AuthError::Malformed("access token claims incomplete")
            }
            _ => AuthError::Malformed("unreadable access token"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: 7,
            username: "alice".into(),
            role: Role::Operator,
            disabled_at: None,
            created_at: Utc::now(),
            password_changed_at: Utc::now(),
        }
    }

    fn issuer(key: SigningKey) -> TokenIssuer {
        TokenIssuer::new(key, &AuthConfig::default()).unwrap()
    }

    #[test]
    fn key_ids_are_thumbprints() {
        // RFC 8037 appendix A.3: the thumbprint of its example key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let bytes: [u8; 32] = x.try_into().unwrap();
        assert_eq!(
            key_id(&bytes),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert!(valid_kid(&key_id(&bytes)));
        assert!(!valid_kid("../etc"));
        assert!(!valid_kid(""));
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_claims() {
        let key = SigningKey::generate();
        let public = key.public_key();
        let iss = issuer(key);
        let t = iss.issue(&user()).unwrap();
        assert_eq!(token_kid(&t.token).unwrap(), public.kid);
        let claims = decode(&t.token, &public.bytes, &validation(&AuthConfig::default())).unwrap();
        assert_eq!(claims.sub, "7");
        assert_eq!(claims.name, "alice");
        assert_eq!(claims.role, Role::Operator);
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(t.expires_at.timestamp(), claims.exp);
    }

    #[test]
    fn refusals() {
        let key = SigningKey::generate();
        let public = key.public_key();
        let iss = issuer(key);
        let v = validation(&AuthConfig::default());

        let other = SigningKey::generate().public_key();
        let t = iss.issue(&user()).unwrap().token;
        assert_eq!(decode(&t, &other.bytes, &v), Err(AuthError::BadSignature));

        let old = iss
            .issue_at(&user(), Utc::now() - chrono::Duration::hours(2))
            .unwrap()
            .token;
        assert_eq!(decode(&old, &public.bytes, &v), Err(AuthError::Expired));
        // Within the leeway an expired token still passes.
        let just = iss
            .issue_at(&user(), Utc::now() - chrono::Duration::seconds(910))
            .unwrap()
            .token;
        assert!(decode(&just, &public.bytes, &v).is_ok());

        let future = iss
            .issue_at(&user(), Utc::now() + chrono::Duration::hours(1))
            .unwrap()
            .token;
        assert_eq!(
            decode(&future, &public.bytes, &v),
            Err(AuthError::NotYetValid)
        );

        let elsewhere = AuthConfig {
            audience: "another".into(),
            ..Default::default()
        };
        assert_eq!(
            decode(&t, &public.bytes, &validation(&elsewhere)),
            Err(AuthError::WrongAudience)
        );

        // A tampered payload no longer matches the signature.
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["role"] = "admin".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            decode(&forged, &public.bytes, &v),
            Err(AuthError::BadSignature)
        );

        for bad in ["", "abc", "a.b", "a.b.c", "a.b.c.d"] {
            assert!(
                matches!(token_kid(bad), Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
        // alg none / HS256 are refused before any key is looked up.
        for alg in ["none", "HS256"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, public.kid));
            let t = format!("{h}.{}.", parts[1]);
            assert!(
                matches!(token_kid(&t), Err(AuthError::Malformed(_))),
                "{alg}"
            );
        }
        let no_kid = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA"}"#);
        assert!(matches!(
            token_kid(&format!("{no_kid}.{}.{}", parts[1], parts[2])),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn missing_or_non_numeric_nbf_is_refused() {
        let key = SigningKey::generate();
        let public = key.public_key();
        let enc = key.encoding_key().unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(public.kid.clone());
        let now = Utc::now().timestamp();
        let base = serde_json::json!({"iss": "fleetwatch", "aud": "fleetwatch", "sub": "7",
            "name": "alice", "role": "admin", "iat": now, "exp": now + 600, "jti": "x"});
        let v = validation(&AuthConfig::default());
        let mut without = base.clone();
        without.as_object_mut().unwrap().remove("nbf");
        let t = jsonwebtoken::encode(&header, &without, &enc).unwrap();
        assert!(matches!(
            decode(&t, &public.bytes, &v),
            Err(AuthError::Malformed(_))
        ));
        let mut stringly = base.clone();
        stringly["nbf"] = "99999999999".into();
        let t = jsonwebtoken::encode(&header, &stringly, &enc).unwrap();
        assert!(matches!(
            decode(&t, &public.bytes, &v),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        let key = SigningKey::create_file(&path).unwrap();
        let loaded = SigningKey::load(&path).unwrap();
        assert_eq!(loaded.kid(), key.kid());
        assert!(format!("{loaded:?}").contains(key.kid()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            SigningKey::create_file(&path),
            Err(KeyError::Write { .. })
        ));
        std::fs::write(dir.path().join("junk.pem"), "junk").unwrap();
        assert!(matches!(
            SigningKey::load(&dir.path().join("junk.pem")),
            Err(KeyError::Parse { .. })
        ));
    }
}
