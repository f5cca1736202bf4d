//! The simulator's token file: simulated vehicles keep their tokens between
//! runs, so a rerun does not need the database (or new tokens).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use fleetwatch_db::DbError;
use serde::{Deserialize, Serialize};

use crate::connect;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenFile {
    /// Vehicle id -> bearer token.
    #[serde(default)]
    pub vehicles: BTreeMap<String, String>,
}

impl TokenFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(s) => serde_json::from_str(&s).with_context(|| {
                format!(
                    "{} is not a token file: fix or delete it, then rerun with --register",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes atomically, readable only by the owner (the file holds credentials).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// Registers the vehicles that lack a working token and returns every token.
pub async fn register(
    database_url: &str,
    path: &Path,
    vehicles: &[(String, &'static str)],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut file = TokenFile::load(path)?;
    let pool = connect::db(database_url).await?;
    let (mut reused, mut added, mut rotated) = (0, 0, 0);
    for (id, kind) in vehicles {
        if let Some(t) = file.vehicles.get(id)
            && fleetwatch_db::vehicle_for_token(&pool, t).await?.as_deref() == Some(id.as_str())
        {
            reused += 1;
            continue;
        }
        let token = match fleetwatch_db::add_vehicle(&pool, id, kind, Some("simulated")).await {
            Ok(t) => {
                added += 1;
                t
            }
            Err(DbError::VehicleExists(_)) => {
                // Registered before, but this file has no working token for it.
                rotated += 1;
                let t = fleetwatch_db::rotate_token(&pool, id)
                    .await?
                    .context("vehicle vanished while rotating its token")?;
                if !fleetwatch_db::vehicle_exists(&pool, id).await? {
                    eprintln!(
                        "warning: {id} is disabled; enable it with `fleetctl vehicles enable {id}`"
                    );
                }
                t
            }
            Err(e) => return Err(e).with_context(|| format!("cannot register {id}")),
        };
        file.vehicles.insert(id.clone(), token);
    }
    pool.close().await;
    file.save(path)?;
    eprintln!(
        "vehicles: {added} registered, {rotated} given new tokens, {reused} reused from {}",
        path.display()
    );
    Ok(file.vehicles)
}

/// Gives every vehicle its MQTT login (its token) in the password file, if
/// one is configured, and reloads Mosquitto when anything changed. Returns
/// one login it wrote, to tell when the reload took effect.
pub fn write_mqtt_logins(
    args: &crate::mqtt::MqttLoginArgs,
    tokens: &BTreeMap<String, String>,
) -> anyhow::Result<Option<(String, String)>> {
    let Some(path) = &args.mqtt_password_file else {
        return Ok(None);
    };
    let mut file = crate::mqtt::PasswordFile::load(path)?;
    let mut written = None;
    let mut n = 0;
    for (id, token) in tokens {
        if file.ensure(id, token)? {
            n += 1;
            written.get_or_insert_with(|| (id.clone(), token.clone()));
        }
    }
    if n > 0 {
        eprintln!("mqtt logins: {n} written to {}", path.display());
    }
    crate::mqtt::save_and_reload(&mut file, args.mqtt_reload_pid_file.as_deref())?;
    Ok(written)
}

/// Tokens from the file; every vehicle must have one.
pub fn load_all(path: &Path, ids: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let file = TokenFile::load(path)?;
    let missing: Vec<&str> = ids
        .iter()
        .filter(|id| !file.vehicles.contains_key(*id))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "no token for {} in {}: run with --register (needs the database) to register them",
            summarize(&missing),
            path.display()
        );
    }
    Ok(file.vehicles)
}

fn summarize(ids: &[&str]) -> String {
    match ids {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., last] if ids.len() > 3 => format!("{first} .. {last} ({} vehicles)", ids.len()),
        _ => ids.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_and_missing_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/sim-tokens.json");
        assert!(TokenFile::load(&path).unwrap().vehicles.is_empty());
        let mut f = TokenFile::default();
        f.vehicles.insert("sim-001".into(), "fw_a".into());
        f.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let ids = vec!["sim-001".to_string()];
        assert_eq!(load_all(&path, &ids).unwrap()["sim-001"], "fw_a");
        let ids: Vec<String> = (1..=5).map(|i| format!("sim-{i:03}")).collect();
        let e = load_all(&path, &ids).unwrap_err().to_string();
        assert!(
            e.contains("sim-002 .. sim-005 (4 vehicles)") && e.contains("--register"),
            "{e}"
        );
        std::fs::write(&path, "not json").unwrap();
        assert!(
            load_all(&path, &ids)
                .unwrap_err()
                .to_string()
                .contains("not a token file")
        );
    }
}
