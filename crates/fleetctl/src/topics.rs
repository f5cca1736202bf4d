//! `fleetctl topics`: create the v1 topics (and their dead-letter topics), list topics.

use anyhow::Context;
use fleetwatch_kafka::admin::{Created, TopicSpec, ensure_topics};
use fleetwatch_proto::topics;

use crate::cli::{Global, TopicsCommand};
use crate::connect;
use crate::settings::Settings;

pub async fn run(g: &Global, cmd: TopicsCommand) -> anyhow::Result<()> {
    match cmd {
        TopicsCommand::Create {
            partitions,
            replication,
        } => create(g, partitions, replication).await,
        TopicsCommand::List => list(g).await,
    }
}

/// Every v1 topic and its `.dlq`, with partition counts from the settings.
pub fn specs(
    settings: &Settings,
    partitions: Option<i32>,
    replication: Option<i32>,
) -> anyhow::Result<Vec<TopicSpec>> {
    let t = &settings.topics;
    let default = partitions.unwrap_or(t.default_partitions);
    let replication = replication.unwrap_or(t.replication);
    anyhow::ensure!(default >= 1, "--partitions must be at least 1");
    anyhow::ensure!(replication >= 1, "--replication must be at least 1");
    let mut out = Vec::new();
    for topic in topics::ALL {
        let dlq = topics::dlq(topic);
        out.push(TopicSpec {
            name: topic.to_string(),
            partitions: t.partitions.get(*topic).copied().unwrap_or(default),
            replication,
        });
        out.push(TopicSpec {
            partitions: t.partitions.get(&dlq).copied().unwrap_or(t.dlq_partitions),
            name: dlq,
            replication,
        });
    }
    let known: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
    if let Some(unknown) = t.partitions.keys().find(|k| !known.contains(&k.as_str())) {
        anyhow::bail!(
            "config names unknown topic {unknown:?} in [topics.partitions]; known: {}",
            known.join(", ")
        );
    }
    Ok(out)
}

async fn create(
    g: &Global,
    partitions: Option<i32>,
    replication: Option<i32>,
) -> anyhow::Result<()> {
    let settings = Settings::load(g.config.as_deref())?;
    let specs = specs(&settings, partitions, replication)?;
    // A metadata round-trip first turns an absent broker into a clear error
    // instead of the admin request's long timeout.
    connect::metadata(g, None).await?;
    let results = ensure_topics(&connect::kafka_config(g), &specs)
        .await
        .with_context(|| format!("creating topics on {} failed", g.bootstrap_servers))?;
    let (mut new, mut existed) = (0, 0);
    for (name, outcome) in &results {
        let partitions = specs
            .iter()
            .find(|s| &s.name == name)
            .map(|s| s.partitions)
            .unwrap_or(0);
        match outcome {
            Created::New => {
                new += 1;
                println!("created         {name} ({partitions} partitions)");
            }
            Created::AlreadyExisted => {
                existed += 1;
                println!("already existed {name}");
            }
        }
    }
    eprintln!(
        "{new} created, {existed} already existed on {}",
        g.bootstrap_servers
    );
    Ok(())
}

async fn list(g: &Global) -> anyhow::Result<()> {
    let md = connect::metadata(g, None).await?;
    let mut rows: Vec<(String, usize)> = md
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    rows.sort();
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(5).max(5);
    println!("{:<width$}  PARTITIONS", "TOPIC");
    for (name, partitions) in rows {
        println!("{name:<width$}  {partitions}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_use_config_and_defaults() {
        let s = Settings::parse(
            "[topics.partitions]\n\"fleet.telemetry.v1\" = 12\n\"fleet.frames.v1.dlq\" = 2\n",
        )
        .unwrap();
        let specs = specs(&s, Some(3), None).unwrap();
        assert_eq!(specs.len(), topics::ALL.len() * 2);
        let p = |n: &str| specs.iter().find(|s| s.name == n).unwrap().partitions;
        assert_eq!(p("fleet.telemetry.v1"), 12);
        assert_eq!(p("fleet.frames.v1"), 3);
        assert_eq!(p("fleet.frames.v1.dlq"), 2);
        assert_eq!(p("fleet.telemetry.v1.dlq"), 1);
        assert!(specs.iter().all(|s| s.replication == 1));
    }

    #[test]
    fn unknown_topic_in_config_is_an_error() {
        let s = Settings::parse("[topics.partitions]\n\"fleet.telemetri.v1\" = 12\n").unwrap();
        let e = specs(&s, None, None).unwrap_err().to_string();
        assert!(e.contains("fleet.telemetri.v1"), "{e}");
        assert!(specs(&Settings::default(), Some(0), None).is_err());
    }
}
