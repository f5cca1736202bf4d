//! The write side end to end: records produced to the real broker land in
//! Postgres and the object store exactly once; bad records go to the DLQ.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use chrono::{DateTime, Utc};
use fleetwatch_kafka::headers;
use fleetwatch_proto::v1::{BoundingBox, Detection, DetectionBatch, Frame, TelemetryPoint};
use fleetwatch_testkit::read_topic;
use sqlx::Row;

fn ts(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_lands_with_every_field_and_latest_merges() {
    let h = Harness::start().await;
    let t1 = time_ago(600);
    let t2 = t1 + 1_000_000;
    // Older than the partitions the migration creates: made on demand.
    let t_old = time_ago(20 * 86_400);
    let p1 = TelemetryPoint {
        vehicle_id: "drone-1".into(),
        time_unix_us: t1,
        lat: Some(59.91),
        lon: Some(10.75),
        alt: Some(120.5),
        speed: Some(12.25),
        heading: Some(270.0),
        battery: Some(87.0),
        metrics: [("rssi".to_string(), -71.0), ("temp".to_string(), 21.5)].into(),
    };
    // Only some fields: latest keeps the others from p1.
    let p2 = TelemetryPoint {
        time_unix_us: t2,
        lat: Some(59.92),
        metrics: [("rssi".to_string(), -65.0)].into(),
        ..Default::default()
    };
    let b = batch("drone-1", vec![p1, p2, point(t_old)]);
    h.send_telemetry(&b).await;
    h.wait_count(
        "3 points",
        "SELECT count(*) FROM telemetry WHERE vehicle_id = 'drone-1'",
        3,
    )
    .await;

    let row = sqlx::query(
        "SELECT lat, lon, alt, speed, heading, battery, metrics, received_at, stored_at
         FROM telemetry WHERE vehicle_id = 'drone-1' AND time = $1",
    )
    .bind(ts(t1))
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<Option<f64>, _>("lat"), Some(59.91));
    assert_eq!(row.get::<Option<f64>, _>("lon"), Some(10.75));
    assert_eq!(row.get::<Option<f64>, _>("alt"), Some(120.5));
    assert_eq!(row.get::<Option<f64>, _>("speed"), Some(12.25));
    assert_eq!(row.get::<Option<f64>, _>("heading"), Some(270.0));
    assert_eq!(row.get::<Option<f64>, _>("battery"), Some(87.0));
    assert_eq!(
        row.get::<serde_json::Value, _>("metrics"),
        serde_json::json!({"rssi": -71.0, "temp": 21.5})
    );
    assert_eq!(
        row.get::<Option<DateTime<Utc>>, _>("received_at"),
        Some(ts(b.received_unix_us))
    );
    assert!(row.get::<DateTime<Utc>, _>("stored_at") >= ts(b.received_unix_us));

    let row = sqlx::query(
        "SELECT lon, speed, metrics FROM telemetry WHERE vehicle_id = 'drone-1' AND time = $1",
    )
    .bind(ts(t_old))
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<Option<f64>, _>("lon"), None);
    assert_eq!(row.get::<Option<serde_json::Value>, _>("metrics"), None);

    let latest = sqlx::query("SELECT time, lat, lon, speed, battery, metrics FROM vehicle_latest WHERE vehicle_id = 'drone-1'")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(latest.get::<DateTime<Utc>, _>("time"), ts(t2));
    assert_eq!(latest.get::<Option<f64>, _>("lat"), Some(59.92));
    assert_eq!(latest.get::<Option<f64>, _>("lon"), Some(10.75));
    assert_eq!(latest.get::<Option<f64>, _>("speed"), Some(12.25));
    assert_eq!(latest.get::<Option<f64>, _>("battery"), Some(87.0));
    assert_eq!(
        latest.get::<serde_json::Value, _>("metrics"),
        serde_json::json!({"rssi": -65.0, "temp": 21.5})
    );

    let m = h.metrics().await;
    assert!(
        metric(
            &m,
            "fleetwatch_kafka_records_consumed_total",
            &h.group("telemetry")
        ) >= 1.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_late_records_change_nothing() {
    let h = Harness::start().await;
    let t = time_ago(300);
    let mut p1 = point(t);
    p1.lat = Some(1.0);
    p1.speed = Some(5.0);
    let mut p2 = point(t + 1_000_000);
    p2.lat = Some(2.0);
    let a = batch("drone-2", vec![p1, p2]);
    h.send_telemetry(&a).await;
    h.wait_count(
        "first delivery",
        "SELECT count(*) FROM telemetry WHERE vehicle_id = 'drone-2'",
        2,
    )
    .await;
    let updated_before: DateTime<Utc> =
        sqlx::query_scalar("SELECT updated_at FROM vehicle_latest WHERE vehicle_id = 'drone-2'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();

    // The same record again, a late older point with other values, and a
    // marker after them on the same (single) partition.
    h.send_telemetry(&a).await;
    let mut late = point(t - 60_000_000);
    late.lat = Some(-1.0);
    late.speed = Some(99.0);
    late.metrics.insert("late".into(), 1.0);
    h.send_telemetry(&batch("drone-2", vec![late])).await;
    h.send_telemetry(&batch("marker", vec![point(t)])).await;
    h.wait_count(
        "the marker",
        "SELECT count(*) FROM telemetry WHERE vehicle_id = 'marker'",
        1,
    )
    .await;

    assert_eq!(
        h.scalar("SELECT count(*) FROM telemetry WHERE vehicle_id = 'drone-2'")
            .await,
        3
    );
    let latest = sqlx::query("SELECT time, lat, speed, metrics, updated_at FROM vehicle_latest WHERE vehicle_id = 'drone-2'")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(
        latest.get::<DateTime<Utc>, _>("time"),
        ts(t + 1_000_000),
        "latest moved backwards"
    );
    assert_eq!(latest.get::<Option<f64>, _>("lat"), Some(2.0));
    assert_eq!(latest.get::<Option<f64>, _>("speed"), Some(5.0));
    assert_eq!(latest.get::<Option<serde_json::Value>, _>("metrics"), None);
    assert_eq!(
        latest.get::<DateTime<Utc>, _>("updated_at"),
        updated_before,
        "a redelivery touched the latest row"
    );
    // The plain insert met the redelivered rows and the run was written
    // again skipping them; the late point still went in.
    let m = h.metrics().await;
    assert!(
        metric(
            &m,
            "fleetwatch_persistence_telemetry_conflict_retries_total",
            ""
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "fleetwatch_persistence_rows_duplicate_total",
            "table=\"telemetry\""
        ) >= 2.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_dead_lettered_and_consumption_moves_on() {
    let h = Harness::start_with(|c, _| c.kafka.consumer.batch_max_wait_ms = 300).await;
    let t = time_ago(120);
    let garbage = [0xffu8, 0xff, 0xff, 0xff];
    h.send(
        &h.topics.telemetry,
        "drone-3",
        &garbage,
        "fleetwatch.v1.TelemetryBatch",
    )
    .await;
    // Valid protobuf but the key names another vehicle.
    let mismatched = batch("drone-3", vec![point(t)]);
    h.send(
        &h.topics.telemetry,
        "drone-9",
        &prost::Message::encode_to_vec(&mismatched),
        "fleetwatch.v1.TelemetryBatch",
    )
    .await;
    let mut nan = point(t);
    nan.heading = Some(f64::NAN);
    h.send_telemetry(&batch("drone-3", vec![nan])).await;
    // Passes validation, but Postgres refuses a NUL in a jsonb key: the
    // poison record alone is rejected, its neighbours are stored.
    let mut poison = point(t + 2_000_000);
    poison.metrics.insert("bad\u{0}name".into(), 1.0);
    h.send_telemetry(&batch("drone-3", vec![point(t + 1_000_000)]))
        .await;
    h.send_telemetry(&batch("drone-3", vec![poison])).await;
    h.send_telemetry(&batch("drone-3", vec![point(t + 3_000_000)]))
        .await;

    h.wait_count(
        "the valid records",
        "SELECT count(*) FROM telemetry WHERE vehicle_id = 'drone-3'",
        2,
    )
    .await;
    let dlq = read_topic(
        &h.bootstrap,
        &format!("{}.dlq", h.topics.telemetry),
        4,
        WAIT,
    )
    .await;
    assert_eq!(dlq.len(), 4);
    let group = h.group("telemetry");
    for r in &dlq {
        assert_eq!(
            r.header(headers::DLQ_SOURCE_TOPIC).as_deref(),
            Some(h.topics.telemetry.as_str())
        );
        assert_eq!(
            r.header(headers::DLQ_SOURCE_PARTITION).as_deref(),
            Some("0")
        );
        assert_eq!(
            r.header(headers::DLQ_CONSUMER_GROUP).as_deref(),
            Some(group.as_str())
        );
        assert!(r.header(headers::DLQ_TIME_UNIX_US).is_some());
    }
    let by_offset = |o: i64| {
        dlq.iter()
            .find(|r| r.header(headers::DLQ_SOURCE_OFFSET) == Some(o.to_string()))
            .unwrap()
    };
    assert_eq!(by_offset(0).payload, garbage);
    assert!(
        by_offset(0)
            .header(headers::DLQ_ERROR)
            .unwrap()
            .contains("undecodable")
    );
    assert!(
        by_offset(1)
            .header(headers::DLQ_ERROR)
            .unwrap()
            .contains("record key")
    );
    assert!(
        by_offset(2)
            .header(headers::DLQ_ERROR)
            .unwrap()
            .contains("points[0].heading")
    );
    assert!(
        by_offset(4)
            .header(headers::DLQ_ERROR)
            .unwrap()
            .contains("refused by the database")
    );

    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "fleetwatch_kafka_dead_lettered_total", &group),
        4.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_land_once_with_the_seed_columns() {
    let h = Harness::start().await;
    let t = time_ago(60) + 123_456;
    let b = DetectionBatch {
        vehicle_id: "drone-4".into(),
        time_unix_us: t,
        frame_id: "frame-0001".into(),
        frame_key: "drone-4/2026/01/01/frame_1.jpg".into(),
        detections: vec![
            Detection {
                class_name: "person".into(),
                confidence: 0.5,
                bbox: Some(BoundingBox {
                    x_min: 0.25,
                    y_min: 0.5,
                    x_max: 0.75,
                    y_max: 1.0,
                }),
                track_id: "7".into(),
            },
            Detection {
                class_name: "no_helmet".into(),
                confidence: 0.75,
                bbox: None,
                track_id: String::new(),
            },
            Detection {
                class_name: "person".into(),
                confidence: 0.25,
                ..Default::default()
            },
        ],
        model_name: "yolov8n".into(),
        model_version: "1".into(),
        source: "inference".into(),
        received_unix_us: t,
    };
    h.send_detections(&b).await;
    h.send_detections(&b).await;
    let mut poison = b.clone();
    poison.time_unix_us = t + 1;
    poison.detections[0].class_name = "x".repeat(65);
    h.send_detections(&poison).await;
    let mut next = b.clone();
    next.time_unix_us = t + 2;
    next.detections.truncate(1);
    h.send_detections(&next).await;
    h.wait_count("the later batch", "SELECT count(*) FROM detections WHERE timestamp > (SELECT min(timestamp) FROM detections) + interval '1 microsecond'", 1).await;
    assert_eq!(h.scalar("SELECT count(*) FROM detections").await, 4);

    let rows = sqlx::query(
        "SELECT drone_id, timestamp, class, confidence, x_min, y_min, x_max, y_max, frame_id, object_id,
                clip_s3_key, seq, model_name, model_version, source
         FROM detections WHERE timestamp = $1 ORDER BY seq",
    )
    .bind(ts(t))
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let r = &rows[0];
    assert_eq!(r.get::<String, _>("drone_id"), "drone-4");
    assert_eq!(r.get::<String, _>("class"), "person");
    assert_eq!(r.get::<f64, _>("confidence"), 0.5);
    assert_eq!(r.get::<Option<f64>, _>("x_min"), Some(0.25));
    assert_eq!(r.get::<Option<f64>, _>("y_max"), Some(1.0));
    assert_eq!(r.get::<String, _>("frame_id"), "frame-0001");
    assert_eq!(
        r.get::<Option<String>, _>("object_id").as_deref(),
        Some("7")
    );
    assert_eq!(
        r.get::<Option<String>, _>("clip_s3_key").as_deref(),
        Some("drone-4/2026/01/01/frame_1.jpg")
    );
    assert_eq!(r.get::<String, _>("model_name"), "yolov8n");
    assert_eq!(r.get::<String, _>("model_version"), "1");
    assert_eq!(r.get::<String, _>("source"), "inference");
    assert_eq!(
        rows.iter()
            .map(|r| r.get::<i32, _>("seq"))
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(rows[1].get::<Option<f64>, _>("x_min"), None);
    assert_eq!(rows[1].get::<Option<String>, _>("object_id"), None);

    let dlq = read_topic(
        &h.bootstrap,
        &format!("{}.dlq", h.topics.detections),
        1,
        WAIT,
    )
    .await;
    assert!(
        dlq[0]
            .header(headers::DLQ_ERROR)
            .unwrap()
            .contains("refused by the database")
    );
    assert_eq!(
        dlq[0].header(headers::DLQ_SOURCE_OFFSET).as_deref(),
        Some("2")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_stored_in_the_object_store_then_indexed() {
    let h = Harness::start().await;
    let t = time_ago(30) + 42;
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let f = Frame {
        vehicle_id: "drone-5".into(),
        time_unix_us: t,
        frame_id: "f-1".into(),
        content_type: "image/jpeg".into(),
        data: data.clone(),
        width: 640,
        height: 480,
        received_unix_us: t,
    };
    h.send_frame(&f).await;
    h.send_frame(&f).await;
    h.send_frame(&Frame {
        data: vec![],
        time_unix_us: t + 1,
        ..f.clone()
    })
    .await;
    h.send_frame(&Frame {
        time_unix_us: t + 2,
        ..f.clone()
    })
    .await;
    h.wait_count("two frames", "SELECT count(*) FROM frames", 2)
        .await;

    let day = ts(t).format("%Y/%m/%d").to_string();
    let key = format!("drone-5/{day}/frame_{t}.jpg");
    let row = sqlx::query("SELECT object_key, content_type, size_bytes, width, height, frame_id FROM frames WHERE time = $1")
        .bind(ts(t))
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("object_key"), key);
    assert_eq!(row.get::<String, _>("content_type"), "image/jpeg");
    assert_eq!(row.get::<i32, _>("size_bytes"), data.len() as i32);
    assert_eq!(row.get::<Option<i32>, _>("width"), Some(640));
    assert_eq!(row.get::<Option<i32>, _>("height"), Some(480));
    assert_eq!(row.get::<String, _>("frame_id"), "f-1");
    assert_eq!(std::fs::read(h.objects.path().join(&key)).unwrap(), data);

    let dlq = read_topic(&h.bootstrap, &format!("{}.dlq", h.topics.frames), 1, WAIT).await;
    assert!(
        dlq[0]
            .header(headers::DLQ_ERROR)
            .unwrap()
            .contains("frame data is empty")
    );
    // Nothing was written for the rejected frame.
    let files = std::fs::read_dir(h.objects.path().join(format!("drone-5/{day}")))
        .unwrap()
        .count();
    assert_eq!(files, 2);
    h.stop().await;
}

/// Issue 12: an index row too large for the natural key's btree (SQLSTATE
/// 54000, from a long model_name) is the record's fault, not the database's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_name_too_long_for_the_index_is_dead_lettered_without_stalling() {
    let h = Harness::start().await;
    let t = time_ago(60);
    let b = |us: i64, model_name: String| DetectionBatch {
        vehicle_id: "drone-5".into(),
        time_unix_us: us,
        frame_id: "frame-1".into(),
        detections: vec![Detection {
            class_name: "person".into(),
            confidence: 0.5,
            ..Default::default()
        }],
        model_name,
        source: "inference".into(),
        ..Default::default()
    };
    // Pseudo-random letters: a repetitive name would compress below the limit.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let long: String = (0..8000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    h.send_detections(&b(t, "yolov8n".into())).await;
    h.send_detections(&b(t + 1, long)).await;
    h.send_detections(&b(t + 2, "yolov8n".into())).await;
    h.wait_count(
        "the record after the poison one",
        "SELECT count(*) FROM detections WHERE drone_id = 'drone-5'",
        2,
    )
    .await;
    let dlq = read_topic(
        &h.bootstrap,
        &format!("{}.dlq", h.topics.detections),
        1,
        WAIT,
    )
    .await;
    assert_eq!(dlq.len(), 1);
    let error = dlq[0].header(headers::DLQ_ERROR).unwrap();
    assert!(error.contains("refused by the database"), "{error}");
    assert!(error.contains("index row"), "{error}");
    assert_eq!(
        dlq[0].header(headers::DLQ_SOURCE_OFFSET).as_deref(),
        Some("1")
    );
    assert_eq!(
        h.scalar("SELECT count(*) FROM detections WHERE length(model_name) > 100")
            .await,
        0
    );
    h.stop().await;
}
