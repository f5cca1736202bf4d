//! The optional `--config` TOML file.

use std::path::Path;

use anyhow::Context;
use fleetwatch_kafka::config::TopicCreationConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// How `topics create` lays out topics: partitions, replication factor,
    /// `min.insync.replicas`, `max.message.bytes`, further topic configs.
    pub topics: TopicCreationConfig,
}

impl Settings {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read config file {}: check --config", path.display())
        })?;
        Self::parse(&text).with_context(|| format!("config file {} is invalid", path.display()))
    }

    /// Syntax and key names only: the values are checked together with the
    /// command-line overrides (see `topics::specs`), so a file with
    /// `replication_factor = 1` plus `--min-insync-replicas 1` is fine.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partitions() {
        let s = Settings::parse(
            "[topics]\ndefault_partitions = 3\n[topics.partitions]\n\"fleet.telemetry.v1\" = 12\n",
        )
        .unwrap();
        assert_eq!(s.topics.default_partitions, 3);
        assert_eq!(s.topics.partitions["fleet.telemetry.v1"], 12);
        assert_eq!(s.topics.dlq_partitions, 1);
        assert_eq!(s.topics.replication_factor, 3);
        assert_eq!(s.topics.min_insync_replicas, 2);
    }

    #[test]
    fn the_old_replication_key_still_works() {
        let s = Settings::parse("[topics]\nreplication = 1\nmin_insync_replicas = 1\n").unwrap();
        assert_eq!(s.topics.replication_factor, 1);
    }

    #[test]
    fn rejects_unknown_and_invalid() {
        assert!(Settings::parse("[topics]\nbogus = 1\n").is_err());
        let s = Settings::parse("[topics]\nreplication_factor = 0\n[topics.partitions]\na = 0\n")
            .unwrap();
        let msg = s.topics.validate().join("; ");
        assert!(
            msg.contains("replication_factor") && msg.contains("\"a\""),
            "{msg}"
        );
    }
}
