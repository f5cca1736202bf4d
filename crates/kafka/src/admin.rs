//! Topic administration for `fleetctl topics` and tests.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create admin client: {0}")]
    Client(#[source] KafkaError),
    #[error("creating topics failed: {0}")]
    Request(#[source] KafkaError),
    #[error("topic {topic}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
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
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(s.replication),
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
