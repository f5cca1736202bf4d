//! Layered configuration: defaults < TOML file < environment.
//!
//! The environment layer uses `FLEETWATCH_<SERVICE>__SECTION__KEY`, e.g.
//! `FLEETWATCH_INGEST__HTTP__LISTEN=0.0.0.0:8080`. The file comes from
//! `FLEETWATCH_CONFIG` or the `--config` flag of the binary.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    MissingFile { path: String },
    /// Every problem found, one per line, so an operator fixes them in one go.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// A config type checks its own cross-field rules after loading.
pub trait Validate {
    /// Returns every problem found; empty when the config is usable.
    fn validate(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Loads `T` for `service` ("ingest", "persistence", ...).
pub fn load_config<T>(service: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    let env_file = std::env::var("FLEETWATCH_CONFIG").ok();
    let file = file.map(Path::to_path_buf).or(env_file.map(Into::into));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile {
                path: path.display().to_string(),
            });
        }
        figment = figment.merge(Toml::file(path));
    }
    let prefix = format!("FLEETWATCH_{}__", service.to_uppercase());
    figment = figment.merge(Env::prefixed(&prefix).split("__"));
    let config: T = figment
        .extract()
        .map_err(|e| ConfigError::Invalid(e.into_iter().map(|e| e.to_string()).collect()))?;
    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

#[cfg(test)]
// figment::Jail's closure signature is fixed; its error type is large.
#[allow(clippy::unwrap_used, clippy::result_large_err)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        name: String,
        port: u16,
        nested: Nested,
    }
    #[derive(Debug, Serialize, Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Nested {
        depth: u32,
    }
    impl Default for Sample {
        fn default() -> Self {
            Self {
                name: "default".into(),
                port: 1,
                nested: Nested::default(),
            }
        }
    }
    impl Validate for Sample {
        fn validate(&self) -> Vec<String> {
            if self.port == 0 {
                vec!["port: must not be 0".into()]
            } else {
                vec![]
            }
        }
    }

    #[test]
    fn layers_defaults_file_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "name = \"file\"\nport = 2\n[nested]\ndepth = 3\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLEETWATCH_SAMPLETEST__PORT", "7");
            jail.set_env("FLEETWATCH_SAMPLETEST__NESTED__DEPTH", "9");
            let c: Sample = load_config("sampletest", Some(&path)).unwrap();
            assert_eq!(c.name, "file");
            assert_eq!(c.port, 7);
            assert_eq!(c.nested.depth, 9);
            Ok(())
        });
    }

    #[test]
    fn reports_type_errors_and_validation() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLEETWATCH_SAMPLETEST2__PORT", "notaport");
            let err = load_config::<Sample>("sampletest2", None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("port"), "{err}");
            jail.set_env("FLEETWATCH_SAMPLETEST2__PORT", "0");
            let err = load_config::<Sample>("sampletest2", None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("port: must not be 0"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load_config::<Sample>("x", Some(Path::new("/nonexistent/fw.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile { .. }));
    }
}
