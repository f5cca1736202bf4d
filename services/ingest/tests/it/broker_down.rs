//! Kafka outages: vehicles get 503 + Retry-After, nothing acknowledged is
//! lost, and MQTT messages wait (unacknowledged) until Kafka is back.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;
use fleetwatch_common::Shutdown;
use fleetwatch_proto::v1::TelemetryBatch;
use fleetwatch_testkit::{OwnedBroker, wait_for};

/// Failed produce attempts (any non-ok result) on `topic`, from /metrics.
async fn failed_produces(admin: std::net::SocketAddr, topic: &str) -> u64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("fleetwatch_kafka_produced_total{")
                && l.contains(&format!("topic=\"{topic}\""))
                && !l.contains("result=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn lats(recs: &[fleetwatch_testkit::ReadRecord]) -> Vec<f64> {
    recs.iter()
        .flat_map(|r| {
            decode::<TelemetryBatch>(r)
                .points
                .into_iter()
                .map(|p| p.lat.unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gets_503_with_retry_after_and_loses_nothing() {
    let mut broker = OwnedBroker::start().await;
    let h = Harness::start_on(broker.bootstrap(), |c| {
        // Idempotence stays on (the default): after the timed-out records
        // librdkafka bumps the producer epoch, and sends must work again.
        c.kafka.producer.delivery_timeout_ms = 2_000;
    })
    .await;
    let resp = h
        .post_json(
            "/api/v1/telemetry",
            r#"[{"lat":1,"lon":1},{"lat":2,"lon":2}]"#,
        )
        .await;
    assert_eq!(resp.status(), 200);

    broker.kill();
    let resp = h
        .post_json("/api/v1/telemetry", r#"{"lat":50,"lon":50}"#)
        .await;
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, h.config.limits.retry_after_secs);
    let body = json(resp).await;
    assert_eq!(body["error"]["code"], "unavailable");

    broker.restart().await;
    // The producer reconnects on its own; the vehicle's retry succeeds.
    wait_for(
        "a 200 after the broker restart",
        Duration::from_secs(60),
        || async {
            let resp = h
                .post_json("/api/v1/telemetry", r#"{"lat":3,"lon":3}"#)
                .await;
            (resp.status() == 200).then_some(())
        },
    )
    .await;
    let n = h.count(&h.topics.telemetry).await as usize;
    let got = lats(&h.read(&h.topics.telemetry, n).await);
    assert_eq!(
        &got[..2],
        &[1.0, 2.0],
        "points acked before the outage survive it"
    );
    assert!(
        got[2..].iter().all(|l| *l == 3.0),
        "the refused point was not produced: {got:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_messages_wait_for_kafka_and_survive_an_ingest_restart() {
    let mut broker = OwnedBroker::start().await;
    let h = Harness::start_on(broker.bootstrap(), |c| {
        c.mqtt.enabled = true;
        c.kafka.producer.delivery_timeout_ms = 2_000;
    })
    .await;
    h.wait_mqtt_subscribed().await;
    let topic = "fleet/drone-01/telemetry";
    let p = h.vehicle().await;

    // 1. Kafka down: the bridge retries in-process until it is back.
    broker.kill();
    p.publish(topic, r#"{"lat":10,"lon":10}"#).await;
    let admin = h.running.admin_addr;
    let t = h.topics.telemetry.clone();
    wait_for("a failed produce", Duration::from_secs(30), || {
        let t = t.clone();
        async move { (failed_produces(admin, &t).await > 0).then_some(()) }
    })
    .await;
    broker.restart().await;
    assert_eq!(lats(&h.read(&h.topics.telemetry, 1).await), vec![10.0]);

    // 2. Kafka down and ingest stops: the message stays unacknowledged in the
    // persistent MQTT session and reaches Kafka through the next ingest.
    let failed_before = failed_produces(admin, &t).await;
    broker.kill();
    p.publish(topic, r#"{"lat":20,"lon":20}"#).await;
    wait_for("another failed produce", Duration::from_secs(30), || {
        let t = t.clone();
        async move { (failed_produces(admin, &t).await > failed_before).then_some(()) }
    })
    .await;
    let config = h.config.clone();
    let (bootstrap, topics) = (h.bootstrap.clone(), h.topics.clone());
    let db = h.db;
    h.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), h.running.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    broker.restart().await;
    let shutdown = Shutdown::new();
    let running = fleetwatch_ingest::start(config.clone(), shutdown.clone())
        .await
        .unwrap();
    let recs = fleetwatch_testkit::read_topic(&bootstrap, &topics.telemetry, 2, READ_TIMEOUT).await;
    assert_eq!(lats(&recs), vec![10.0, 20.0]);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), running.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(db);
}
