//! The real binary under SIGKILL: a restart in the middle of a 10 s battery
//! window neither misses nor doubles the incident, and the config-error
//! exit code.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;
use fleetwatch_proto::v1::IncidentEventType;
use fleetwatch_testkit::{ServiceProcess, free_port};

fn env(h: &Harness) -> Vec<(String, String)> {
    let pairs: Vec<(&str, String)> = vec![
        ("DATABASE__URL", h.db.url.clone()),
        ("KAFKA__BOOTSTRAP_SERVERS", h.bootstrap.clone()),
        ("KAFKA__CONSUMER__MAX_POLL_INTERVAL_MS", "6000".into()),
        ("KAFKA__CONSUMER__SESSION_TIMEOUT_MS", "6000".into()),
        ("KAFKA__CONSUMER__HEARTBEAT_INTERVAL_MS", "500".into()),
        ("KAFKA__CONSUMER__RETRY_MAX_MS", "1000".into()),
        ("KAFKA__CONSUMER__COMMIT_INTERVAL_MS", "200".into()),
        ("KAFKA__PRODUCER__LINGER_MS", "1".into()),
        ("TOPICS__TELEMETRY", h.topics.telemetry.clone()),
        ("TOPICS__DETECTIONS", h.topics.detections.clone()),
        ("TOPICS__FRAMES", h.topics.frames.clone()),
        ("TOPICS__INCIDENTS", h.topics.incidents.clone()),
        (
            "OBJECT_STORE__URL",
            format!("file://{}", h.objects.path().display()),
        ),
        (
            "KAFKA__CONSUMER__GROUP_ID",
            h.config.kafka.consumer.group_id.clone(),
        ),
        ("GRPC__LISTEN", format!("127.0.0.1:{}", free_port())),
        ("ADMIN__LISTEN", format!("127.0.0.1:{}", free_port())),
    ];
    pairs
        .into_iter()
        .map(|(k, v)| (format!("FLEETWATCH_INCIDENT__{k}"), v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_window_neither_misses_nor_doubles() {
    let h = Harness::prepare(&rules_sql(BATTERY_RULE)).await;
    let t0 = time_ago(120);
    let s = |i: i64| t0 + i * 1_000_000;

    // A: the first 6 s of the window are processed AND their offsets
    // committed, then the process dies. The rest arrives after the restart:
    // only state kept in Postgres can complete the window.
    let mut p = ServiceProcess::spawn("fleetwatch-incident", &env(&h));
    h.send_telemetry(&batch(
        "a",
        (0..=5).map(|i| battery_point(s(i), 12.0)).collect(),
    ))
    .await;
    h.wait_count(
        "a's window pending",
        &format!(
            "SELECT count(*) FROM incident_rule_state WHERE vehicle_id = 'a' AND pending_since_us = {} AND last_point_us = {}",
            s(0),
            s(5)
        ),
        1,
    )
    .await;
    h.wait_consumed("telemetry", &h.topics.telemetry.clone())
        .await;
    p.kill9();

    // B: a whole window whose incident is committed, killed right away
    // (before its offsets are likely committed): the restart redelivers it.
    let mut p = ServiceProcess::spawn("fleetwatch-incident", &env(&h));
    h.send_telemetry(&batch(
        "a",
        (6..=10).map(|i| battery_point(s(i), 12.0)).collect(),
    ))
    .await;
    h.send_telemetry(&batch(
        "b",
        (0..=10).map(|i| battery_point(s(i), 12.0)).collect(),
    ))
    .await;
    h.wait_count(
        "b's incident",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'b'",
        1,
    )
    .await;
    p.kill9();

    let mut p = ServiceProcess::spawn("fleetwatch-incident", &env(&h));
    h.wait_count(
        "a's incident",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'a'",
        1,
    )
    .await;
    h.wait_consumed("telemetry", &h.topics.telemetry.clone())
        .await;
    h.wait_count(
        "outbox drained",
        "SELECT count(*) FROM incident_outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    for v in ["a", "b"] {
        assert_eq!(
            h.scalar(&format!(
                "SELECT count(*) FROM incidents WHERE vehicle_id = '{v}' AND trigger_count = 1"
            ))
            .await,
            1,
            "{v}: exactly one incident, triggered once"
        );
    }
    assert_eq!(
        h.scalar("SELECT (extract(epoch FROM first_seen) * 1e6)::bigint FROM incidents WHERE vehicle_id = 'a'")
            .await,
        s(10),
        "a opens when its 10 s window completes"
    );
    assert_eq!(h.scalar("SELECT count(*) FROM incident_audit").await, 2);
    let events = h.events(2).await;
    for v in ["a", "b"] {
        let mut ids: Vec<&str> = events
            .iter()
            .filter(|e| e.vehicle_id == v && e.event_type == IncidentEventType::Opened as i32)
            .map(|e| e.event_id.as_str())
            .collect();
        ids.dedup();
        assert_eq!(ids.len(), 1, "{v}: one OPENED event id in {events:?}");
    }
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_error_exits_64_naming_the_field() {
    let mut p = ServiceProcess::spawn(
        "fleetwatch-incident",
        &[(
            "FLEETWATCH_INCIDENT__OUTBOX__BATCH_SIZE".to_string(),
            "0".to_string(),
        )],
    );
    assert_eq!(p.wait_exit(Duration::from_secs(30)), Some(64));
}
