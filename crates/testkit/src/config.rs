//! Loading a service configuration as the service does.
#![allow(clippy::unwrap_used)]

/// Loads a service's configuration the way it does at start (defaults, then
/// the file, then `FLEETWATCH_<SERVICE>__…` variables), from `toml` written
/// to a temporary file.
pub fn load_config_toml<T>(
    service: &str,
    toml: &str,
) -> Result<T, fleetwatch_common::config::ConfigError>
where
    T: serde::de::DeserializeOwned
        + serde::Serialize
        + Default
        + fleetwatch_common::config::Validate,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{service}.toml"));
    std::fs::write(&path, toml).unwrap();
    fleetwatch_common::config::load_config(service, Some(&path))
}
