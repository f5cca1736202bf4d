//! Secrets by type: a value that must never reach a log or an error message.
//!
//! `Secret` hides all of its value, `SecretUrl` the password inside a
//! connection URL. Both print `<redacted>` (or the URL without its password)
//! in `Debug` and `Display`, so `tracing::info!(?config)` and a config error
//! cannot leak them; the value is read with an explicit [`Secret::expose`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// A credential from the configuration: `Debug` never shows it, and a value
/// of the wrong type is refused without echoing it.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it (a connection).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        // The environment layer parses `12345` or `true` as a number or a
        // bool; serde's default error would print the value.
        fn refuse<E: serde::de::Error>() -> E {
            E::custom(
                "must be a string (quote a password that looks like a number or a bool, or use the _file key)",
            )
        }
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(refuse())
            }
        }
        d.deserialize_str(V)
    }
}

/// A connection URL (`postgres://user:password@host/db`) that may carry a
/// password: `Debug` and `Display` show it with the password replaced by
/// `***`, and an unparsable URL not at all.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as it may be logged.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `url` with its password (if any) replaced by `***`; an unparsable URL is
/// not shown at all, since it might be a password pasted in the wrong place.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.to_string(), "<redacted>");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_url_prints_without_its_password() {
        let u = SecretUrl::from("postgres://app:hunter2@db:5432/fleetwatch");
        assert_eq!(u.to_string(), "postgres://app:***@db:5432/fleetwatch");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(u.expose(), "postgres://app:hunter2@db:5432/fleetwatch");
        assert_eq!(
            SecretUrl::from("postgres://postgres@127.0.0.1/x").to_string(),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(SecretUrl::from("hunter2").to_string(), "<unparsable URL>");
    }
}
