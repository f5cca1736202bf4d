//! The optional `--config` TOML file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub topics: TopicSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSettings {
    /// Partitions of a v1 topic not named in `partitions`.
    pub default_partitions: i32,
    /// Partitions of every `.dlq` topic not named in `partitions`.
    pub dlq_partitions: i32,
    /// Replication factor of every topic.
    pub replication: i32,
    /// Per-topic partition counts, e.g. `"fleet.telemetry.v1" = 12`.
    pub partitions: BTreeMap<String, i32>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            default_partitions: 6,
            dlq_partitions: 1,
            replication: 1,
            partitions: BTreeMap::new(),
        }
    }
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

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let s: Self = toml::from_str(text)?;
        let mut problems = Vec::new();
        let t = &s.topics;
        if t.default_partitions < 1 {
            problems.push("topics.default_partitions must be at least 1".to_string());
        }
        if t.dlq_partitions < 1 {
            problems.push("topics.dlq_partitions must be at least 1".to_string());
        }
        if t.replication < 1 {
            problems.push("topics.replication must be at least 1".to_string());
        }
        for (name, n) in &t.partitions {
            if *n < 1 {
                problems.push(format!("topics.partitions.{name:?} must be at least 1"));
            }
        }
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(s)
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
    }

    #[test]
    fn rejects_unknown_and_invalid() {
        assert!(Settings::parse("[topics]\nbogus = 1\n").is_err());
        let e =
            Settings::parse("[topics]\nreplication = 0\n[topics.partitions]\na = 0\n").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("replication") && msg.contains("\"a\""),
            "{msg}"
        );
    }
}
