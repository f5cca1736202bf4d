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

/// Every configuration key of `config` (dotted paths of its leaf fields, as
/// `FLEETWATCH_<SERVICE>__A__B` spells them with `__`) that none of `docs`
/// names in backquotes. A key counts as named by its full path
/// (`` `writer.max_rows_per_statement` ``) or by a `` `section.*` ``
/// wildcard of a prefix (`` `kafka.consumer.*` ``).
pub fn undocumented_keys<T: serde::Serialize>(config: &T, docs: &[&str]) -> Vec<String> {
    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&p, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut keys = Vec::new();
    leaves("", &serde_json::to_value(config).unwrap(), &mut keys);
    keys.into_iter()
        .filter(|key| {
            let mut prefixes = Vec::new();
            let mut at = 0;
            while let Some(i) = key[at..].find('.') {
                prefixes.push(&key[..at + i]);
                at += i + 1;
            }
            !docs.iter().any(|d| {
                d.contains(&format!("`{key}`"))
                    || prefixes.iter().any(|p| d.contains(&format!("`{p}.*`")))
            })
        })
        .collect()
}

/// Fails the test naming every key of `config` that neither the service's
/// README (in `manifest_dir`, its `CARGO_MANIFEST_DIR`) nor
/// `docs/configuration.md` (the shared sections) names.
pub fn assert_config_documented<T: serde::Serialize>(config: &T, manifest_dir: &str) {
    let dir = std::path::Path::new(manifest_dir);
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let shared =
        std::fs::read_to_string(crate::workspace_root().join("docs/configuration.md")).unwrap();
    let missing = undocumented_keys(config, &[&readme, &shared]);
    assert!(
        missing.is_empty(),
        "keys missing from {}/README.md (or docs/configuration.md for the shared sections): {missing:?}",
        dir.display()
    );
}
