//! Topic administration for `fleetctl topics` and tests.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{KafkaConfig, TopicCreationConfig, TopicNames};

/// One topic to create. `None` leaves a setting to the broker's default.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// `min.insync.replicas`.
    pub min_insync_replicas: Option<i32>,
    /// `max.message.bytes`: the largest record batch the topic accepts.
    pub max_message_bytes: Option<u32>,
    /// Further topic configs, set after the typed ones (so they win).
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// One replica, for a single-node broker. `min.insync.replicas` is set
    /// to 1 explicitly: a broker whose default is 2 would otherwise refuse
    /// every `acks=all` write to it.
    pub fn single_replica(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor: 1,
            min_insync_replicas: Some(1),
            max_message_bytes: None,
            configs: BTreeMap::new(),
        }
    }

    /// The topic configs sent with CreateTopics.
    pub fn topic_configs(&self) -> BTreeMap<String, String> {
        let mut c = BTreeMap::new();
        if let Some(n) = self.min_insync_replicas {
            c.insert("min.insync.replicas".to_string(), n.to_string());
        }
        if let Some(n) = self.max_message_bytes {
            c.insert("max.message.bytes".to_string(), n.to_string());
        }
        c.extend(self.configs.clone());
        c
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create admin client: {0}")]
    Client(#[source] KafkaError),
    #[error("creating topics failed: {0}")]
    Request(#[source] KafkaError),
    #[error("topic {topic}: {code}{}", hint(*code))]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("invalid topic settings: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// What to do about the refusals an operator can fix in the settings.
fn hint(code: RDKafkaErrorCode) -> &'static str {
    match code {
        RDKafkaErrorCode::InvalidReplicationFactor => {
            " (the cluster has fewer brokers than the replication factor: lower topics.replication_factor / --replication-factor, and topics.min_insync_replicas with it; 1 and 1 for a single-node broker)"
        }
        RDKafkaErrorCode::InvalidConfig | RDKafkaErrorCode::PolicyViolation => {
            " (the broker refused a topic config: check min_insync_replicas, max_message_bytes and [topics.configs])"
        }
        _ => "",
    }
}

/// Every topic of `names` and its `.dlq`, laid out by `config`: the one
/// place that decides partitions, replication and topic configs, for
/// fleetctl and tests alike. Fails on invalid settings and on settings that
/// name a topic not in `names` (a typo would otherwise go unnoticed).
pub fn topic_specs(
    config: &TopicCreationConfig,
    names: &TopicNames,
) -> Result<Vec<TopicSpec>, AdminError> {
    let mut problems = config.validate();
    let frames_dlq = format!("{}.dlq", names.frames);
    let mut out = Vec::new();
    for topic in names.all() {
        let dlq = format!("{topic}.dlq");
        for (name, default_partitions) in [
            (topic.to_string(), config.default_partitions),
            (dlq, config.dlq_partitions),
        ] {
            let max_message_bytes = if name == names.frames || name == frames_dlq {
                config.frames_max_message_bytes
            } else {
                config.max_message_bytes
            };
            out.push(TopicSpec {
                partitions: config
                    .partitions
                    .get(&name)
                    .copied()
                    .unwrap_or(default_partitions),
                replication_factor: config.replication_factor,
                min_insync_replicas: Some(config.min_insync_replicas),
                max_message_bytes: Some(max_message_bytes),
                configs: config.configs.get(&name).cloned().unwrap_or_default(),
                name,
            });
        }
    }
    let known: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
    for (table, keys) in [
        ("partitions", config.partitions.keys().collect::<Vec<_>>()),
        ("configs", config.configs.keys().collect()),
    ] {
        for k in keys {
            if !known.contains(&k.as_str()) {
                problems.push(format!(
                    "[topics.{table}] names unknown topic {k:?}; known: {}",
                    known.join(", ")
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(AdminError::Invalid(problems))
    }
}

/// Outcome per topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New,
    AlreadyExisted,
}

/// Creates the topics that do not exist yet; existing ones are left alone.
pub async fn ensure_topics(
    config: &KafkaConfig,
    specs: &[TopicSpec],
) -> Result<Vec<(String, Created)>, AdminError> {
    let admin: AdminClient<DefaultClientContext> = config
        .with_properties(config.base())
        .create()
        .map_err(AdminError::Client)?;
    let configs: Vec<BTreeMap<String, String>> =
        specs.iter().map(TopicSpec::topic_configs).collect();
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&configs)
        .map(|(s, c)| {
            c.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication_factor),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(AdminError::Request)?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(t) => out.push((t, Created::New)),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                out.push((t, Created::AlreadyExisted))
            }
            Err((topic, code)) => return Err(AdminError::Topic { topic, code }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_defaults_replicate_and_size_frames() {
        let specs = topic_specs(&TopicCreationConfig::default(), &TopicNames::default()).unwrap();
        assert_eq!(specs.len(), 12);
        let get = |n: &str| specs.iter().find(|s| s.name == n).unwrap();
        for s in &specs {
            assert_eq!(s.replication_factor, 3, "{}", s.name);
            assert_eq!(s.topic_configs()["min.insync.replicas"], "2", "{}", s.name);
        }
        let frames: u32 = get("fleet.frames.v1").topic_configs()["max.message.bytes"]
            .parse()
            .unwrap();
        let frames_dlq: u32 = get("fleet.frames.v1.dlq").topic_configs()["max.message.bytes"]
            .parse()
            .unwrap();
        let telemetry: u32 = get("fleet.telemetry.v1").topic_configs()["max.message.bytes"]
            .parse()
            .unwrap();
        let producer_max = crate::ProducerConfig::default().max_message_bytes;
        assert!(
            telemetry >= producer_max,
            "a topic must take the largest record ingest sends"
        );
        assert!(frames >= producer_max && frames_dlq == frames);
        assert_eq!(get("fleet.telemetry.v1").partitions, 6);
        assert_eq!(get("fleet.telemetry.v1.dlq").partitions, 1);
    }

    #[test]
    fn per_topic_settings_and_their_typos() {
        let mut c = TopicCreationConfig::single_node();
        c.partitions.insert("fleet.telemetry.v1".into(), 12);
        c.configs.insert(
            "fleet.telemetry.v1".into(),
            BTreeMap::from([
                ("retention.ms".to_string(), "1000".to_string()),
                ("min.insync.replicas".to_string(), "1".to_string()),
            ]),
        );
        let specs = topic_specs(&c, &TopicNames::default()).unwrap();
        let t = specs
            .iter()
            .find(|s| s.name == "fleet.telemetry.v1")
            .unwrap();
        assert_eq!(t.partitions, 12);
        assert_eq!(t.replication_factor, 1);
        assert_eq!(t.topic_configs()["retention.ms"], "1000");

        c.partitions.insert("fleet.telemetri.v1".into(), 3);
        c.configs.insert("fleet.frame.v1".into(), BTreeMap::new());
        let e = topic_specs(&c, &TopicNames::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fleet.telemetri.v1") && e.contains("fleet.frame.v1"),
            "{e}"
        );
    }

    #[test]
    fn min_isr_above_replication_is_refused_with_the_fix() {
        let c = TopicCreationConfig {
            replication_factor: 1,
            ..TopicCreationConfig::default()
        };
        let e = topic_specs(&c, &TopicNames::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("min_insync_replicas (2) exceeds"), "{e}");
        assert!(e.contains("single-node"), "{e}");
    }
}
