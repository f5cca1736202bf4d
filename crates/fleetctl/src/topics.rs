//! `fleetctl topics`: create the v1 topics (and their dead-letter topics), list topics.

use anyhow::Context;
use fleetwatch_kafka::TopicNames;
use fleetwatch_kafka::admin::{Created, TopicSpec, ensure_topics, topic_specs};

use crate::cli::{Global, TopicsCommand};
use crate::connect;
use crate::settings::Settings;

pub async fn run(g: &Global, cmd: TopicsCommand) -> anyhow::Result<()> {
    match cmd {
        TopicsCommand::Create {
            partitions,
            replication_factor,
            min_insync_replicas,
        } => {
            let overrides = Overrides {
                partitions,
                replication_factor,
                min_insync_replicas,
            };
            create(g, &overrides).await
        }
        TopicsCommand::List => list(g).await,
    }
}

/// Command-line values that replace the config file's.
#[derive(Debug, Default)]
pub struct Overrides {
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    pub min_insync_replicas: Option<i32>,
}

/// Every v1 topic and its `.dlq`, laid out by the settings and the overrides.
pub fn specs(settings: &Settings, o: &Overrides) -> anyhow::Result<Vec<TopicSpec>> {
    let mut t = settings.topics.clone();
    if let Some(p) = o.partitions {
        anyhow::ensure!(p >= 1, "--partitions must be at least 1");
        t.default_partitions = p;
    }
    if let Some(r) = o.replication_factor {
        t.replication_factor = r;
    }
    if let Some(m) = o.min_insync_replicas {
        t.min_insync_replicas = m;
    }
    topic_specs(&t, &TopicNames::default())
        .map_err(|e| anyhow::anyhow!("{e} (from --config and the topics create options)"))
}

async fn create(g: &Global, overrides: &Overrides) -> anyhow::Result<()> {
    let settings = Settings::load(g.config.as_deref())?;
    let specs = specs(&settings, overrides)?;
    // A metadata round-trip first turns an absent broker into a clear error
    // instead of the admin request's long timeout, and tells how many
    // brokers there are: the broker's own refusal of a too-large
    // replication factor does not say how to fix it.
    let md = connect::metadata(g, None).await?;
    let brokers = md.brokers().len() as i32;
    // Only topics still to be made need the brokers: re-running on a
    // cluster whose topics exist (an upgrade) creates nothing.
    let rf = specs
        .iter()
        .filter(|s| replicas_of(&md, &s.name).is_none())
        .map(|s| s.replication_factor)
        .max()
        .unwrap_or(0);
    anyhow::ensure!(
        rf <= brokers,
        "replication factor {rf} needs at least {rf} brokers, but {} has {brokers}: \
         for a single-node broker pass --replication-factor 1 --min-insync-replicas 1 \
         (or set topics.replication_factor and topics.min_insync_replicas in --config)",
        g.bootstrap_servers
    );
    let results = ensure_topics(&connect::kafka_config(g), &specs)
        .await
        .with_context(|| format!("creating topics on {} failed", g.bootstrap_servers))?;
    let (mut new, mut existed) = (0, 0);
    for (name, outcome) in &results {
        let Some(spec) = specs.iter().find(|s| &s.name == name) else {
            continue;
        };
        match outcome {
            Created::New => {
                new += 1;
                let configs = spec.topic_configs();
                println!(
                    "created         {name} ({} partitions, replication factor {}, min.insync.replicas {}, max.message.bytes {})",
                    spec.partitions,
                    spec.replication_factor,
                    configs
                        .get("min.insync.replicas")
                        .map_or("default", String::as_str),
                    configs
                        .get("max.message.bytes")
                        .map_or("default", String::as_str),
                );
            }
            Created::AlreadyExisted => {
                existed += 1;
                println!("already existed {name}");
                // Existing topics are never altered, but an operator who
                // asked for RF 3 must learn that an old topic has fewer.
                if let Some(have) = replicas_of(&md, name)
                    && have != spec.replication_factor
                {
                    eprintln!(
                        "warning: {name} has replication factor {have}, not {}; \
                         fleetctl does not change existing topics (use kafka-reassign-partitions)",
                        spec.replication_factor
                    );
                }
            }
        }
    }
    eprintln!(
        "{new} created, {existed} already existed on {}",
        g.bootstrap_servers
    );
    Ok(())
}

/// Replicas of a topic's first partition, from metadata fetched before it.
fn replicas_of(md: &rdkafka::metadata::Metadata, topic: &str) -> Option<i32> {
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    Some(t.partitions().first()?.replicas().len() as i32)
}

async fn list(g: &Global) -> anyhow::Result<()> {
    let md = connect::metadata(g, None).await?;
    let mut rows: Vec<(String, usize, usize)> = md
        .topics()
        .iter()
        .map(|t| {
            let replicas = t.partitions().first().map_or(0, |p| p.replicas().len());
            (t.name().to_string(), t.partitions().len(), replicas)
        })
        .collect();
    rows.sort();
    let width = rows.iter().map(|(n, ..)| n.len()).max().unwrap_or(5).max(5);
    println!("{:<width$}  PARTITIONS  REPLICAS", "TOPIC");
    for (name, partitions, replicas) in rows {
        println!("{name:<width$}  {partitions:<10}  {replicas}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fleetwatch_proto::topics;

    use super::*;

    fn partitions(p: i32) -> Overrides {
        Overrides {
            partitions: Some(p),
            ..Overrides::default()
        }
    }

    #[test]
    fn specs_use_config_and_defaults() {
        let s = Settings::parse(
            "[topics.partitions]\n\"fleet.telemetry.v1\" = 12\n\"fleet.frames.v1.dlq\" = 2\n",
        )
        .unwrap();
        let specs = specs(&s, &partitions(3)).unwrap();
        assert_eq!(specs.len(), topics::ALL.len() * 2);
        let p = |n: &str| specs.iter().find(|s| s.name == n).unwrap().partitions;
        assert_eq!(p("fleet.telemetry.v1"), 12);
        assert_eq!(p("fleet.frames.v1"), 3);
        assert_eq!(p("fleet.frames.v1.dlq"), 2);
        assert_eq!(p("fleet.telemetry.v1.dlq"), 1);
        // Production defaults unless told otherwise.
        assert!(
            specs
                .iter()
                .all(|s| s.replication_factor == 3
                    && s.topic_configs()["min.insync.replicas"] == "2")
        );
    }

    #[test]
    fn flags_override_the_file_and_are_checked_together() {
        let s = Settings::parse("[topics]\nreplication_factor = 1\n").unwrap();
        // The file alone asks for min ISR 2 on one replica: refused, saying what to do.
        let e = specs(&s, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("min_insync_replicas (2) exceeds"), "{e}");
        let single = Overrides {
            min_insync_replicas: Some(1),
            ..Overrides::default()
        };
        let specs = specs(&s, &single).unwrap();
        assert!(
            specs
                .iter()
                .all(|s| s.replication_factor == 1
                    && s.topic_configs()["min.insync.replicas"] == "1")
        );
        let frames = specs.iter().find(|s| s.name == "fleet.frames.v1").unwrap();
        assert_eq!(frames.topic_configs()["max.message.bytes"], "8388608");
    }

    #[test]
    fn unknown_topic_in_config_is_an_error() {
        let s = Settings::parse("[topics.partitions]\n\"fleet.telemetri.v1\" = 12\n").unwrap();
        let e = specs(&s, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("fleet.telemetri.v1"), "{e}");
        assert!(specs(&Settings::default(), &partitions(0)).is_err());
    }
}
