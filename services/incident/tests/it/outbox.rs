//! The outbox: lifecycle changes made while the broker is down are
//! committed, kept, and published once it is back — none lost, none
//! duplicated, in order.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;
use fleetwatch_common::Shutdown;
use fleetwatch_proto::v1::{self as pb, IncidentEvent, IncidentEventType};
use fleetwatch_testkit::{
    OwnedBroker, TestDb, fresh_topics, kafka_config, read_topic, unique_suffix,
};
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_the_broker_is_down_are_published_after() {
    let mut broker = OwnedBroker::start().await;
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
    // An operator's API token (automation acting for them).
    fleetwatch_auth::store::create_user(
        &db.pool,
        "alice",
        "correct horse battery staple",
        fleetwatch_auth::Role::Operator,
        "test",
    )
    .await
    .unwrap();
    let (_, token) = fleetwatch_auth::store::create_api_token(
        &db.pool,
        &fleetwatch_auth::store::NewApiToken {
            owner: fleetwatch_auth::store::TokenOwner::User("alice".into()),
            name: "outbox test".into(),
            role: None,
            expires_at: None,
        },
        "test",
    )
    .await
    .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = pb::incident_service_client::IncidentServiceClient::with_interceptor(
        channel,
        Bearer(Some(token)),
    );
    let act = || pb::IncidentActionRequest {
        incident_id: id,
        actor: String::new(),
        note: String::new(),
    };
    // Acknowledged to the operator while the broker is down.
    c.acknowledge_incident(act()).await.unwrap();
    c.assign_incident(pb::AssignIncidentRequest {
        incident_id: id,
        actor: String::new(),
        assignee: "bob".into(),
    })
    .await
    .unwrap();
    c.resolve_incident(act()).await.unwrap();
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

/// Two replicas' publishers: one leads, and publishes events committed
/// anywhere (the outbox trigger's NOTIFY wakes it, long before its poll);
/// when it crashes the other takes over; every event is on the topic once,
/// in commit order, with many sent before the first acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_publishes_wakes_on_any_commit_and_hands_over_when_it_dies() {
    use fleetwatch_incident::outbox::Publisher;
    use std::sync::Arc;
    use tokio::sync::Notify;

    let bootstrap = fleetwatch_testkit::shared_bootstrap().await;
    let topics = fresh_topics(&bootstrap, 1).await;
    let db = TestDb::new().await;
    let producer = fleetwatch_kafka::Producer::new(&kafka_config(&bootstrap, ""), "t").unwrap();
    let publisher = |poll_ms: u64| Publisher {
        pool: db.pool.clone(),
        producer: producer.clone(),
        topic: topics.incidents.clone(),
        notify: Arc::new(Notify::new()),
        poll: Duration::from_millis(poll_ms),
        batch: 50,
        keep_published_hours: 24,
    };
    let leaders = || async {
        sqlx::query_scalar::<_, i64>(
            // Advisory locks are per database; other tests' services hold theirs.
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    // Commits made by "another replica": plain inserts, no local wake-up.
    let commit = |from: i64, to: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO incident_outbox (event_id, vehicle_id, payload) \
                 SELECT gen_random_uuid(), 'v1', convert_to(g::text, 'UTF8') \
                 FROM generate_series($1::bigint, $2::bigint) g",
            )
            .bind(from)
            .bind(to)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let unpublished = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM incident_outbox WHERE published_at IS NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };

    // A polls only every 10 minutes: anything it publishes sooner came
    // through the NOTIFY.
    let a = tokio::spawn(publisher(600_000).run(Shutdown::new()));
    fleetwatch_testkit::wait_for("A to lead", WAIT, || async {
        (leaders().await == 1).then_some(())
    })
    .await;
    let b_stop = Shutdown::new();
    let b = tokio::spawn(publisher(300).run(b_stop.clone()));
    fleetwatch_testkit::stays_for(
        "B follows while A leads",
        Duration::from_millis(500),
        || async { leaders().await == 1 },
    )
    .await;

    let started = std::time::Instant::now();
    for i in 0..10 {
        commit(i * 30 + 1, i * 30 + 30).await;
    }
    fleetwatch_testkit::wait_for("A to publish 300 events", WAIT, || async {
        (unpublished().await == 0).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "published in {:?}: woken by the commits, not the 10-minute poll",
        started.elapsed()
    );

    // A crashes: its lock connection closes with it, and B takes over.
    a.abort();
    let _ = a.await;
    fleetwatch_testkit::wait_for("B to lead", WAIT, || async {
        (leaders().await == 1).then_some(())
    })
    .await;
    commit(301, 400).await;
    fleetwatch_testkit::wait_for("B to publish the rest", WAIT, || async {
        (unpublished().await == 0).then_some(())
    })
    .await;

    let got: Vec<i64> = read_topic(&bootstrap, &topics.incidents, 400, WAIT)
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).parse().unwrap())
        .collect();
    assert_eq!(
        got,
        (1..=400).collect::<Vec<i64>>(),
        "once each, in commit order"
    );
    b_stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), b)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leaders().await, 0, "a stopped leader lets go of the lock");
}
