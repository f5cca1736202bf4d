//! Operator passwords: argon2id hashes (PHC strings), the length policy and
//! generated passwords. Hashing costs tens of milliseconds of CPU on
//! purpose; async callers run it on the blocking pool (the store does).

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;

/// Shorter passwords are refused.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longer ones too: argon2 hashes any length, but nobody types more, and a
/// bound keeps a login request's cost bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is too short: use at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("the password is too long: at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    #[error("the password contains control characters")]
    ControlCharacters,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// argon2id, version 0x13, OWASP's first recommendation (19 MiB, 2 passes,
/// 1 lane). The parameters are stored in every hash, so raising them later
/// only affects new and changed passwords.
fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// Refuses passwords outside the policy (length, no control characters).
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    if password.chars().any(char::is_control) {
        return Err(PasswordError::ControlCharacters);
    }
    Ok(())
}

/// The argon2id PHC string of `password` (checked against the policy first).
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    check_policy(password)?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the stored PHC string. A malformed stored hash
/// never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(hash) => hasher().verify_password(password.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// Spends the time of one verification and fails: a login for an unknown
/// user then costs what a wrong password costs, so timing does not tell
/// which usernames exist.
pub fn verify_dummy(password: &str) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc =
        DUMMY.get_or_init(|| hash_password("dummy password never matches").unwrap_or_default());
    let _ = verify_password(password, phc);
    false
}

/// A random password: 24 characters without look-alikes (0/O, 1/l/I), about
/// 140 bits.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_argon2id() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("correct horse battery", "not a hash"));
        let again = hash_password("correct horse battery").unwrap();
        assert_ne!(h, again, "salted");
        assert!(!verify_dummy("correct horse battery"));
    }

    #[test]
    fn policy() {
        assert_eq!(check_policy("short"), Err(PasswordError::TooShort));
        assert_eq!(
            check_policy("ääääääääääää"),
            Ok(()),
            "characters, not bytes"
        );
        assert_eq!(
            check_policy(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordError::TooLong)
        );
        assert_eq!(
            check_policy("twelve chars\n"),
            Err(PasswordError::ControlCharacters)
        );
    }

    #[test]
    fn generated_passwords_pass_the_policy() {
        let a = generate_password();
        assert_eq!(a.len(), 24);
        check_policy(&a).unwrap();
        assert_ne!(a, generate_password());
    }
}
