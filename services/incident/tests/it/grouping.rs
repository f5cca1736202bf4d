//! Grouping: one unresolved incident per (vehicle, rule) under redelivery,
//! two replicas consuming at once, and concurrent writers racing the
//! database directly.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_proto::v1::IncidentEventType;

const HELMET: &str = r#"('no_helmet', NULL, 'detection', 3, '{"classes": ["no_helmet"], "min_confidence": 0.5, "min_consecutive_frames": 1, "clear_after_secs": 30}')"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_records_change_nothing() {
    let h = Harness::start(&rules_sql(&format!("{BATTERY_RULE}, {HELMET}"))).await;
    let t0 = time_ago(60);
    let s = |i: i64| t0 + i * 1_000_000;
    let tele = batch("v1", (0..=10).map(|i| battery_point(s(i), 10.0)).collect());
    let det = detections("v1", s(3), vec![detection("no_helmet", 0.9, 0.5, 0.5)]);
    h.send_telemetry(&tele).await;
    h.send_detections(&det).await;
    h.wait_count("two incidents", "SELECT count(*) FROM incidents", 2)
        .await;
    // The same records again (what a consumer sees after a crash before its
    // offset commit), also split and reordered.
    h.send_telemetry(&tele).await;
    h.send_telemetry(&batch(
        "v1",
        (5..=10).rev().map(|i| battery_point(s(i), 10.0)).collect(),
    ))
    .await;
    h.send_detections(&det).await;
    h.send_detections(&det).await;
    h.wait_consumed("telemetry", &h.topics.telemetry.clone())
        .await;
    h.wait_consumed("detections", &h.topics.detections.clone())
        .await;
    assert_eq!(h.scalar("SELECT count(*) FROM incidents").await, 2);
    assert_eq!(
        h.scalar("SELECT count(*) FROM incidents WHERE trigger_count = 1")
            .await,
        2
    );
    assert_eq!(h.scalar("SELECT count(*) FROM incident_audit").await, 2);
    h.wait_count(
        "all published",
        "SELECT count(*) FROM incident_outbox WHERE published_at IS NOT NULL",
        2,
    )
    .await;
    let events = h.events(2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.event_type == IncidentEventType::Opened as i32)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_the_same_groups_open_each_incident_once() {
    let h = Harness::start(&rules_sql(HELMET)).await;
    let second = h.spawn().await;
    let t0 = time_ago(30);
    let vehicles: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    // Every vehicle: 5 matching frames, each also redelivered, while both
    // replicas join, rebalance and consume.
    for round in 0..5 {
        for v in &vehicles {
            let d = detections(
                v,
                t0 + round * 100_000,
                vec![detection("no_helmet", 0.9, 0.5, 0.5)],
            );
            h.send_detections(&d).await;
            h.send_detections(&d).await;
        }
    }
    h.wait_count("40 incidents", "SELECT count(*) FROM incidents", 40)
        .await;
    h.wait_consumed("detections", &h.topics.detections.clone())
        .await;
    assert_eq!(h.scalar("SELECT count(*) FROM incidents").await, 40);
    assert_eq!(
        h.scalar("SELECT count(*) FROM incident_audit WHERE action = 'opened'")
            .await,
        40
    );
    assert_eq!(
        h.scalar("SELECT count(*) FROM incident_audit WHERE action <> 'opened'")
            .await,
        0
    );
    h.wait_count(
        "all published",
        "SELECT count(*) FROM incident_outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    let events = h.events(40).await;
    let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40, "one OPENED event per incident");
    second.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_merge_into_one_incident() {
    // No service: many transactions trigger the same (vehicle, rule) at once;
    // the partial unique index and the upsert leave one incident.
    let h = Harness::prepare(&rules_sql(BATTERY_RULE)).await;
    let rules = fleetwatch_incident::store::load_rules(&h.db.pool)
        .await
        .unwrap();
    let rule = rules[0].clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&h.db.url)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (pool, rule) = (pool.clone(), rule.clone());
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                fleetwatch_incident::store::trigger(
                    &mut tx,
                    &rule,
                    "racer",
                    1_000_000 + i,
                    "race",
                    None,
                    None,
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(h.scalar("SELECT count(*) FROM incidents").await, 1);
    assert_eq!(h.scalar("SELECT trigger_count FROM incidents").await, 16);
    assert_eq!(
        h.scalar("SELECT count(*) FROM incident_audit WHERE action = 'opened'")
            .await,
        1
    );
    assert_eq!(h.scalar("SELECT count(*) FROM incident_outbox").await, 16);
    // A resolved incident frees the slot: the next trigger opens a new one.
    sqlx::query("UPDATE incidents SET status = 'resolved'")
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let (_, new) = fleetwatch_incident::store::trigger(
        &mut tx, &rule, "racer", 5_000_000, "again", None, None,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(new);
    assert_eq!(h.scalar("SELECT count(*) FROM incidents").await, 2);
}
