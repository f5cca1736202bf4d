//! MQTT bridge against the real Mosquitto, broker and Postgres.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use fleetwatch_kafka::headers;
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::{DetectionBatch, TelemetryBatch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_detections_reach_kafka() {
    let h = Harness::start_with(|c| c.mqtt.enabled = true).await;
    h.wait_mqtt_subscribed().await;
    let s = &h.suffix;
    let p = MqttPublisher::connect().await;
    let ts = now_rfc3339();
    p.publish(&format!("{s}/fleet/drone-01/telemetry"), format!(r#"{{"drone_id":"drone-01","timestamp":"{ts}","lat":28.7,"lon":77.1,"alt":120.5,"battery":72}}"#)).await;
    p.publish(
        &format!("{s}/fleet/drone-01/telemetry"),
        r#"[{"lat":1,"lon":2},{"lat":3,"lon":4,"rpm":5000}]"#,
    )
    .await;
    p.publish(
        &format!("{s}/drone/drone-01/detections"),
        format!(r#"{{"drone_id":"drone-01","timestamp":"{ts}","detections":[{{"class":"person","conf":0.92,"bbox":[0.12,0.22,0.35,0.60],"track_id":"t123"}}],"frame_id":"frame-0001"}}"#),
    )
    .await;

    let recs = h.read(&h.topics.telemetry, 2).await;
    let mut lats = Vec::new();
    for r in &recs {
        assert_eq!(r.key.as_deref(), Some(VEHICLE.as_bytes()));
        assert_eq!(
            r.header(headers::MESSAGE_TYPE).as_deref(),
            Some(message_types::TELEMETRY_BATCH)
        );
        let b: TelemetryBatch = decode(r);
        assert_eq!(
            (b.source.as_str(), b.vehicle_id.as_str()),
            ("mqtt", VEHICLE)
        );
        lats.extend(b.points.iter().map(|p| p.lat.unwrap()));
    }
    assert_eq!(lats, vec![28.7, 1.0, 3.0], "arrival order is kept");
    let b: TelemetryBatch = decode(&recs[1]);
    assert_eq!(b.points[1].metrics.get("rpm"), Some(&5000.0));

    let recs = h.read(&h.topics.detections, 1).await;
    assert_eq!(recs[0].key.as_deref(), Some(VEHICLE.as_bytes()));
    assert_eq!(
        recs[0].header(headers::MESSAGE_TYPE).as_deref(),
        Some(message_types::DETECTION_BATCH)
    );
    let d: DetectionBatch = decode(&recs[0]);
    assert_eq!(
        (d.source.as_str(), d.frame_id.as_str(), d.detections.len()),
        ("edge", "frame-0001", 1)
    );
    let client_id = h.config.mqtt.client_id.clone();
    h.stop().await;
    forget_mqtt_session(&client_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vehicles_and_invalid_payloads_are_dead_lettered() {
    let h = Harness::start_with(|c| c.mqtt.enabled = true).await;
    h.wait_mqtt_subscribed().await;
    let s = &h.suffix;
    let p = MqttPublisher::connect().await;
    let ghost_topic = format!("{s}/fleet/ghost-7/telemetry");
    let ghost = r#"{"lat":1,"lon":2}"#;
    p.publish(&ghost_topic, ghost).await;
    let bad_topic = format!("{s}/fleet/drone-01/telemetry");
    p.publish(&bad_topic, r#"{"lat":91,"lon":2}"#).await;
    p.publish(&bad_topic, "not json").await;
    let det_topic = format!("{s}/fleet/drone-01/detections");
    p.publish(
        &det_topic,
        r#"{"detections":[{"class":"p","conf":2,"bbox":[0,0,1,1]}]}"#,
    )
    .await;
    // A valid message after the bad ones still flows.
    p.publish(&bad_topic, r#"{"lat":5,"lon":6}"#).await;

    let dlq = h.read(&format!("{}.dlq", h.topics.telemetry), 3).await;
    assert_eq!(dlq.len(), 3);
    assert_eq!(dlq[0].payload, ghost.as_bytes());
    assert_eq!(
        dlq[0].header(headers::DLQ_SOURCE_TOPIC).as_deref(),
        Some(ghost_topic.as_str())
    );
    assert!(
        dlq[0]
            .header(headers::DLQ_ERROR)
            .unwrap()
            .contains("ghost-7"),
        "{:?}",
        dlq[0].header(headers::DLQ_ERROR)
    );
    assert_eq!(
        dlq[0].header(headers::CONTENT_TYPE).as_deref(),
        Some("application/json")
    );
    assert_eq!(
        dlq[0].header("dlq-source-protocol").as_deref(),
        Some("mqtt")
    );
    assert_eq!(
        dlq[0].header("dlq-target-topic").as_deref(),
        Some(h.topics.telemetry.as_str())
    );
    assert!(dlq[0].header(headers::DLQ_TIME_UNIX_US).is_some());
    assert!(
        dlq[1].header(headers::DLQ_ERROR).unwrap().contains("lat"),
        "{:?}",
        dlq[1].header(headers::DLQ_ERROR)
    );
    assert_eq!(dlq[2].payload, b"not json");
    assert!(dlq[2].header(headers::DLQ_ERROR).unwrap().contains("JSON"));

    let det_dlq = h.read(&format!("{}.dlq", h.topics.detections), 1).await;
    assert_eq!(
        det_dlq[0].header(headers::DLQ_SOURCE_TOPIC).as_deref(),
        Some(det_topic.as_str())
    );
    assert!(
        det_dlq[0]
            .header(headers::DLQ_ERROR)
            .unwrap()
            .contains("detections[0].conf")
    );

    let ok = h.read(&h.topics.telemetry, 1).await;
    let b: TelemetryBatch = decode(&ok[0]);
    assert_eq!(b.points[0].lat, Some(5.0));
    assert_eq!(h.count(&h.topics.telemetry).await, 1);
    assert_eq!(h.count(&h.topics.detections).await, 0);

    let metrics = reqwest::get(format!("http://{}/metrics", h.running.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("outcome=\"dlq_unknown_vehicle\""),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"dlq_invalid\""), "{metrics}");
    let client_id = h.config.mqtt.client_id.clone();
    h.stop().await;
    forget_mqtt_session(&client_id).await;
}
