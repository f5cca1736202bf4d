//! `fleetctl topics` against the shared broker. The v1 topic names are fixed,
//! so creating them here is shared and idempotent by design.
#![allow(clippy::unwrap_used)]

mod common;

use common::{fleetctl, stderr, stdout};
use fleetwatch_proto::topics;
use fleetwatch_testkit::shared_bootstrap;

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
    let out = fleetctl(&["topics", "create", "--config", config], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = fleetctl(&["topics", "create", "--config", config], &env).await;
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
