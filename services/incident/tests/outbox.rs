//! The outbox: lifecycle changes made while the broker is down are
//! committed, kept, and published once it is back — none lost, none
//! duplicated, in order.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use fleetwatch_common::Shutdown;
use fleetwatch_proto::v1::{self as pb, IncidentEvent, IncidentEventType};
use fleetwatch_testkit::{
    OwnedBroker, TestDb, fresh_topics, kafka_config, read_topic, unique_suffix,
};
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_the_broker_is_down_are_published_after() {
    let mut broker = OwnedBroker::start_durable().await;
    let bootstrap = broker.bootstrap();
    let topics = fresh_topics(&bootstrap, 1).await;
    let db = TestDb::new().await;
    sqlx::raw_sql(&rules_sql(
        r#"('no_helmet', NULL, 'detection', 3, '{"classes": ["no_helmet"], "min_confidence": 0.5}')"#,
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let objects = tempfile::tempdir().unwrap();
    let config = config(
        &bootstrap,
        &topics,
        db.db_config(),
        objects.path(),
        &format!("fwo-{}", unique_suffix()),
    );
    let shutdown = Shutdown::new();
    let running = fleetwatch_incident::start(config, shutdown.clone())
        .await
        .unwrap();
    let producer = fleetwatch_kafka::Producer::new(&kafka_config(&bootstrap, ""), "t").unwrap();
    let d = detections(
        "cam",
        time_ago(10),
        vec![detection("no_helmet", 0.9, 0.5, 0.5)],
    );
    producer
        .send(fleetwatch_kafka::OutRecord {
            topic: &topics.detections,
            key: "cam",
            payload: &d.encode_to_vec(),
            message_type: fleetwatch_proto::message_types::DETECTION_BATCH,
            traceparent: None,
            extra_headers: &[],
        })
        .await
        .unwrap();
    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    fleetwatch_testkit::wait_for("opened and published", WAIT, || async {
        (count("SELECT count(*) FROM incident_outbox WHERE published_at IS NOT NULL").await == 1)
            .then_some(())
    })
    .await;
    let id = count("SELECT id FROM incidents").await;

    broker.kill();
    let mut c = pb::incident_service_client::IncidentServiceClient::connect(format!(
        "http://{}",
        running.grpc_addr
    ))
    .await
    .unwrap();
    let act = |actor: &str| pb::IncidentActionRequest {
        incident_id: id,
        actor: actor.into(),
        note: String::new(),
    };
    // Acknowledged to the operator while the broker is down.
    c.acknowledge_incident(act("alice")).await.unwrap();
    c.assign_incident(pb::AssignIncidentRequest {
        incident_id: id,
        actor: "alice".into(),
        assignee: "bob".into(),
    })
    .await
    .unwrap();
    c.resolve_incident(act("bob")).await.unwrap();
    assert_eq!(
        count("SELECT count(*) FROM incident_outbox WHERE published_at IS NULL").await,
        3,
        "the three events wait in the outbox"
    );

    broker.restart().await;
    fleetwatch_testkit::wait_for(
        "published after the outage",
        Duration::from_secs(90),
        || async {
            (count("SELECT count(*) FROM incident_outbox WHERE published_at IS NULL").await == 0)
                .then_some(())
        },
    )
    .await;
    let events: Vec<IncidentEvent> = read_topic(&bootstrap, &topics.incidents, 4, WAIT)
        .await
        .iter()
        .map(|r| IncidentEvent::decode(r.payload.as_slice()).unwrap())
        .collect();
    let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4, "no duplicates: {events:?}");
    let types: Vec<i32> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        vec![
            IncidentEventType::Opened as i32,
            IncidentEventType::Acknowledged as i32,
            IncidentEventType::Assigned as i32,
            IncidentEventType::Resolved as i32,
        ]
    );
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT event_id::text FROM incident_audit ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(ids, audit.iter().map(String::as_str).collect::<Vec<_>>());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
