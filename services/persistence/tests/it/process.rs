//! The real binary: crash safety under SIGKILL, refusing a wrong schema,
//! and the config-error exit code.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::common::*;
use fleetwatch_kafka::{OutRecord, Producer};
use fleetwatch_proto::message_types;
use fleetwatch_testkit::{
    ServiceProcess, TestDb, fresh_topics, kafka_config, shared_bootstrap, unique_suffix,
};
use prost::Message;

const VEHICLES: i64 = 10;
const PER_VEHICLE: i64 = 2_000;
const PER_RECORD: i64 = 20;

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (format!("FLEETWATCH_PERSISTENCE__{k}"), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_and_duplicates_nothing() {
    let bootstrap = shared_bootstrap().await;
    let topics = fresh_topics(&bootstrap, 4).await;
    let db = TestDb::new().await;
    let objects = tempfile::tempdir().unwrap();

    // 10 vehicles x 2,000 points in records of 20: 1,000 records.
    let producer = Producer::new(&kafka_config(&bootstrap, ""), "crash-test").unwrap();
    let base = time_ago(7_200);
    let mut payloads = Vec::new();
    for v in 0..VEHICLES {
        for r in 0..PER_VEHICLE / PER_RECORD {
            let points = (0..PER_RECORD).map(|i| {
                let mut p = point(base + (r * PER_RECORD + i) * 1_000);
                p.speed = Some(i as f64);
                p
            });
            payloads.push((
                format!("crash-{v}"),
                batch(&format!("crash-{v}"), points.collect()).encode_to_vec(),
            ));
        }
    }
    let sends = payloads.iter().map(|(key, payload)| {
        producer.send(OutRecord {
            topic: &topics.telemetry,
            key,
            payload,
            message_type: message_types::TELEMETRY_BATCH,
            traceparent: None,
            extra_headers: &[],
        })
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    let expected = VEHICLES * PER_VEHICLE;

    let vars = env(&[
        ("DATABASE__URL", db.url.clone()),
        ("KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("KAFKA__CONSUMER__MAX_POLL_INTERVAL_MS", "6000".into()),
        ("KAFKA__CONSUMER__SESSION_TIMEOUT_MS", "6000".into()),
        ("KAFKA__CONSUMER__HEARTBEAT_INTERVAL_MS", "500".into()),
        ("KAFKA__CONSUMER__RETRY_MAX_MS", "1000".into()),
        // Small batches, so the kill lands between many commits.
        ("KAFKA__CONSUMER__BATCH_MAX_RECORDS", "4".into()),
        ("TOPICS__TELEMETRY", topics.telemetry.clone()),
        ("TOPICS__DETECTIONS", topics.detections.clone()),
        ("TOPICS__FRAMES", topics.frames.clone()),
        (
            "OBJECT_STORE__URL",
            format!("file://{}", objects.path().display()),
        ),
        ("GRPC__LISTEN", "127.0.0.1:0".into()),
        ("ADMIN__LISTEN", "127.0.0.1:0".into()),
        (
            "KAFKA__CONSUMER__GROUP_ID",
            format!("crash-{}", unique_suffix()),
        ),
        ("LOG__LEVEL", "warn".into()),
    ]);
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM telemetry")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };

    let mut first = ServiceProcess::spawn("fleetwatch-persistence", &vars);
    let deadline = Instant::now() + WAIT;
    let at_kill = loop {
        let n = count().await;
        if n > 0 {
            first.kill9();
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "nothing was stored by the first process"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        at_kill < expected,
        "all {expected} rows were in before the kill; the test proved nothing"
    );
    let after_kill = count().await;
    assert!(after_kill < expected);

    let mut second = ServiceProcess::spawn("fleetwatch-persistence", &vars);
    let deadline = Instant::now() + Duration::from_secs(90);
    while count().await != expected {
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} rows after the restart",
            count().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT DISTINCT vehicle_id, time FROM telemetry) d",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(distinct, expected);
    // No gaps: every vehicle has exactly its 2,000 expected sample times.
    let per_vehicle: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT vehicle_id, count(*),
                (extract(epoch FROM min(time)) * 1000000)::int8, (extract(epoch FROM max(time)) * 1000000)::int8
         FROM telemetry GROUP BY vehicle_id ORDER BY vehicle_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(per_vehicle.len(), VEHICLES as usize);
    for (v, n, min, max) in per_vehicle {
        assert_eq!(
            (n, min, max),
            (PER_VEHICLE, base, base + (PER_VEHICLE - 1) * 1_000),
            "vehicle {v}"
        );
    }
    let latest_ok: i64 =
        sqlx::query_scalar("SELECT count(*) FROM vehicle_latest WHERE time = $1 AND speed = $2")
            .bind(
                chrono::DateTime::from_timestamp_micros(base + (PER_VEHICLE - 1) * 1_000).unwrap(),
            )
            .bind((PER_RECORD - 1) as f64)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(latest_ok, VEHICLES);
    // A clean SIGTERM exits 0.
    assert_eq!(second.terminate(Duration::from_secs(30)), Some(0));
    eprintln!("rows at kill: {at_kill}, after: {after_kill}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_run_on_a_wrong_schema() {
    let bootstrap = shared_bootstrap().await;
    let topics = fresh_topics(&bootstrap, 1).await;
    let empty = TestDb::empty().await;
    let objects = tempfile::tempdir().unwrap();

    let c = config(&bootstrap, &topics, empty.db_config(), objects.path());
    let err = match fleetwatch_persistence::start(c, fleetwatch_common::Shutdown::new()).await {
        Ok(_) => panic!("started on an empty database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("schema") && err.contains("fleetctl migrate"),
        "{err}"
    );

    let mut p = ServiceProcess::spawn(
        "fleetwatch-persistence",
        &env(&[
            ("DATABASE__URL", empty.url.clone()),
            ("KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
            (
                "OBJECT_STORE__URL",
                format!("file://{}", objects.path().display()),
            ),
            ("GRPC__LISTEN", "127.0.0.1:0".into()),
            ("ADMIN__LISTEN", "127.0.0.1:0".into()),
        ]),
    );
    assert_eq!(p.wait_exit(Duration::from_secs(30)), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_exits_64_before_doing_anything() {
    let mut p = ServiceProcess::spawn(
        "fleetwatch-persistence",
        &env(&[
            ("RETENTION__TELEMETRY_DAYS", "0".into()),
            ("OBJECT_STORE__URL", "ftp://nowhere".into()),
            ("DATABASE__URL", "postgres://127.0.0.1:1/none".into()),
        ]),
    );
    assert_eq!(
        p.wait_exit(Duration::from_secs(30)),
        Some(fleetwatch_common::EXIT_CONFIG)
    );
}
