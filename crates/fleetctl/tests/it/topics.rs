//! `fleetctl topics` against the shared broker (the v1 topic names are fixed,
//! so creating them there is shared and idempotent by design), and with its
//! production defaults on a three-node cluster of its own.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{fleetctl, stderr, stdout};
use fleetwatch_proto::topics;
use fleetwatch_testkit::{OwnedBroker, OwnedCluster, shared_bootstrap};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

/// The shared broker is a single node: topics there need one replica.
const SINGLE_NODE: &[&str] = &["--replication-factor", "1", "--min-insync-replicas", "1"];

#[tokio::test]
async fn create_is_idempotent_and_list_shows_them() {
    let bootstrap = shared_bootstrap().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleetctl.toml");
    std::fs::write(
        &config,
        "[topics]\ndefault_partitions = 3\n[topics.partitions]\n\"fleet.telemetry.v1\" = 6\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let env = [("FLEETWATCH_KAFKA_BOOTSTRAP", bootstrap.as_str())];

    // The first run may or may not create them (other tests share the broker).
    let mut args = vec!["topics", "create", "--config", config];
    args.extend(SINGLE_NODE);
    let out = fleetctl(&args, &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // The same through the environment, as scripts pass it.
    let single_node_env = [
        env[0],
        ("FLEETCTL_TOPICS_REPLICATION_FACTOR", "1"),
        ("FLEETCTL_TOPICS_MIN_INSYNC_REPLICAS", "1"),
    ];
    let out = fleetctl(&["topics", "create", "--config", config], &single_node_env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for t in topics::ALL {
        assert!(
            text.lines().any(|l| l == format!("already existed {t}")),
            "{t} missing in:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == format!("already existed {t}.dlq")),
            "{t}.dlq missing in:\n{text}"
        );
    }
    assert!(
        stderr(&out).contains("0 created, 12 already existed"),
        "{}",
        stderr(&out)
    );

    let out = fleetctl(&["topics", "list", "--bootstrap-servers", &bootstrap], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    for t in topics::ALL {
        let row = list
            .lines()
            .find(|l| l.split_whitespace().next() == Some(t))
            .unwrap_or_else(|| panic!("{t} not listed"));
        let partitions: i32 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(partitions >= 1);
        let replicas: i32 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(replicas, 1, "{row}");
        let dlq = format!("{t}.dlq");
        assert!(
            list.lines()
                .any(|l| l.split_whitespace().next() == Some(dlq.as_str())),
            "{dlq} not listed"
        );
    }
}

#[tokio::test]
async fn bad_config_and_unreachable_broker_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[topics.partitions]\n\"fleet.telemetri.v1\" = 3\n").unwrap();
    let out = fleetctl(
        &["topics", "create", "--config", config.to_str().unwrap()],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fleet.telemetri.v1"),
        "{}",
        stderr(&out)
    );

    let out = fleetctl(
        &["topics", "create", "--config", "/nonexistent/fleetctl.toml"],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read config file"),
        "{}",
        stderr(&out)
    );

    let port = fleetwatch_testkit::free_port();
    let out = fleetctl(
        &[
            "topics",
            "list",
            "--bootstrap-servers",
            &format!("127.0.0.1:{port}"),
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the Kafka broker")
            && stderr(&out).contains("--bootstrap-servers"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn production_defaults_on_a_single_broker_fail_with_the_fix() {
    // A broker of its own: whether the v1 topics exist decides the outcome.
    let broker = OwnedBroker::start().await;
    let bootstrap = broker.bootstrap();
    let create = |extra: &'static [&'static str]| {
        let bootstrap = bootstrap.clone();
        async move {
            let mut args = vec!["topics", "create", "--bootstrap-servers", &bootstrap];
            args.extend(extra);
            fleetctl(&args, &[]).await
        }
    };

    let out = create(&[]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("replication factor 3 needs at least 3 brokers")
            && err.contains("--replication-factor 1 --min-insync-replicas 1"),
        "{err}"
    );
    // Refused before anything was created.
    assert!(!stdout(&out).contains("created"), "{}", stdout(&out));

    // One replica but still min ISR 2 would refuse every write: caught before
    // the broker is asked.
    let out = create(&["--replication-factor", "1"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("min_insync_replicas (2) exceeds topics.replication_factor (1)"),
        "{}",
        stderr(&out)
    );

    let out = create(SINGLE_NODE).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("12 created, 0 already existed"),
        "{}",
        stderr(&out)
    );
    let (replicas, configs) = describe(&bootstrap, topics::TELEMETRY).await;
    assert_eq!(replicas, 1);
    assert_eq!(configs["min.insync.replicas"], "1");

    // Re-run with the defaults (an upgrade that forgot the override): there
    // is nothing to create, so it succeeds, and says the replicas differ.
    let out = create(&[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "warning: fleet.telemetry.v1 has replication factor 1, not 3; fleetctl does not change existing topics"
        ),
        "{}",
        stderr(&out)
    );
}

/// Replicas, `min.insync.replicas`, `max.message.bytes` and `retention.ms`
/// of `topic`, as the cluster reports them.
async fn describe(bootstrap: &str, topic: &str) -> (usize, BTreeMap<String, String>) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let resources = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let resource = resources.into_iter().next().unwrap().unwrap();
    let configs = resource
        .entries
        .into_iter()
        .filter(|e| {
            matches!(
                e.name.as_str(),
                "min.insync.replicas" | "max.message.bytes" | "retention.ms"
            )
        })
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    let md = tokio::task::spawn_blocking({
        let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
        move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .unwrap();
            let md = c
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .unwrap();
            md.topics()[0]
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .min()
                .unwrap()
        }
    })
    .await
    .unwrap();
    (md, configs)
}

#[tokio::test]
async fn production_defaults_on_a_three_node_cluster() {
    let cluster = OwnedCluster::start(3).await;
    let bootstrap = cluster.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleetctl.toml");
    // Only a topic config on top of the defaults: RF, min ISR and sizes come
    // from fleetctl's production defaults.
    std::fs::write(
        &config,
        "[topics.configs.\"fleet.telemetry.v1\"]\n\"retention.ms\" = \"86400000\"\n",
    )
    .unwrap();
    let out = fleetctl(
        &[
            "topics",
            "create",
            "--bootstrap-servers",
            &bootstrap,
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("12 created, 0 already existed"),
        "{}",
        stderr(&out)
    );

    for t in topics::ALL {
        for name in [t.to_string(), format!("{t}.dlq")] {
            let (replicas, configs) = describe(&bootstrap, &name).await;
            assert_eq!(replicas, 3, "{name}");
            assert_eq!(configs["min.insync.replicas"], "2", "{name}");
            let max: u32 = configs["max.message.bytes"].parse().unwrap();
            if *t == topics::FRAMES {
                assert_eq!(max, 8 * 1024 * 1024, "{name}: sized for frames");
            } else {
                assert_eq!(max, 4 * 1024 * 1024 + 64 * 1024, "{name}");
            }
        }
    }
    let (_, telemetry) = describe(&bootstrap, topics::TELEMETRY).await;
    assert_eq!(telemetry["retention.ms"], "86400000");

    let out = fleetctl(&["topics", "list", "--bootstrap-servers", &bootstrap], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    let row = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(topics::TELEMETRY))
        .unwrap();
    assert_eq!(row.split_whitespace().collect::<Vec<_>>()[1..], ["6", "3"]);
}
