//! `fleetctl tail` against the shared broker, on fresh topics.
#![allow(clippy::unwrap_used)]

use crate::common::{fleetctl, stderr, stdout};
use fleetwatch_kafka::{OutRecord, Producer, headers};
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::{TelemetryBatch, TelemetryPoint};
use fleetwatch_testkit::{fresh_topics, kafka_config, shared_bootstrap};
use prost::Message;

fn lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn prints_decoded_records_and_dead_letters() {
    let bootstrap = shared_bootstrap().await;
    let topics = fresh_topics(&bootstrap, 2).await;
    let producer = Producer::new(&kafka_config(&bootstrap, ""), "tail-test").unwrap();
    let batch = TelemetryBatch {
        vehicle_id: "d-1".into(),
        points: vec![TelemetryPoint {
            vehicle_id: "d-1".into(),
            time_unix_us: 1_758_705_015_123_456,
            lat: Some(59.5),
            battery: Some(80.0),
            ..Default::default()
        }],
        source: "http".into(),
        received_unix_us: 1_758_705_015_200_000,
    };
    let payload = batch.encode_to_vec();
    for _ in 0..2 {
        producer
            .send(OutRecord {
                topic: &topics.telemetry,
                key: "d-1",
                payload: &payload,
                message_type: message_types::TELEMETRY_BATCH,
                traceparent: None,
                extra_headers: &[],
            })
            .await
            .unwrap();
    }
    let dlq = format!("{}.dlq", topics.telemetry);
    producer
        .send(OutRecord {
            topic: &dlq,
            key: "d-2",
            payload: b"\xff\x00garbage",
            message_type: message_types::TELEMETRY_BATCH,
            traceparent: None,
            extra_headers: &[
                (headers::DLQ_ERROR, b"undecodable"),
                (headers::DLQ_SOURCE_OFFSET, b"7"),
            ],
        })
        .await
        .unwrap();

    let env = [("FLEETWATCH_KAFKA_BOOTSTRAP", bootstrap.as_str())];
    let out = fleetctl(
        &[
            "tail",
            &topics.telemetry,
            "--from-beginning",
            "--limit",
            "2",
        ],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = lines(&stdout(&out));
    assert_eq!(recs.len(), 2);
    let r = &recs[0];
    assert_eq!(r["topic"], topics.telemetry.as_str());
    assert_eq!(r["key"], "d-1");
    assert_eq!(r["type"], message_types::TELEMETRY_BATCH);
    assert_eq!(
        r["headers"][headers::MESSAGE_TYPE],
        message_types::TELEMETRY_BATCH
    );
    assert_eq!(r["value"]["vehicle_id"], "d-1");
    assert_eq!(
        r["value"]["points"][0]["time_unix_us"],
        1_758_705_015_123_456i64
    );
    assert_eq!(r["value"]["points"][0]["lat"], 59.5);
    assert!(
        r.get("payload_hex").is_none(),
        "decoded records need no hex"
    );

    let out = fleetctl(&["tail", &dlq, "--from-beginning", "--limit", "1"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = lines(&stdout(&out));
    let r = &recs[0];
    assert_eq!(r["headers"]["dlq-error"], "undecodable");
    assert_eq!(r["headers"]["dlq-source-offset"], "7");
    assert_eq!(r["payload_hex"], hex::encode(b"\xff\x00garbage"));
    assert!(
        r["decode_error"].as_str().unwrap().contains("not a valid"),
        "{r}"
    );
}

#[tokio::test]
async fn unknown_topic_is_an_error() {
    let bootstrap = shared_bootstrap().await;
    let topic = format!("no.such.topic.{}", fleetwatch_testkit::unique_suffix());
    let out = fleetctl(&["tail", &topic, "--bootstrap-servers", &bootstrap], &[]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}
