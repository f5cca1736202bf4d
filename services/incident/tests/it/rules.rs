//! Every rule kind against the real broker and Postgres: trigger, no
//! trigger at the boundary, clear; evidence for detections; DLQ for poison.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_proto::v1::{IncidentEventType, IncidentStatus, ListIncidentsRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_triggers_after_duration_not_at_boundary_and_clears_with_hysteresis() {
    let h = Harness::start(&rules_sql(BATTERY_RULE)).await;
    let t0 = time_ago(120);
    let s = |i: i64| t0 + i * 1_000_000;
    // "drain": below 20 for 10 s -> opens at t0+10s.
    h.send_telemetry(&batch(
        "drain",
        (0..=10).map(|i| battery_point(s(i), 19.0)).collect(),
    ))
    .await;
    // "edge": exactly 20 (not below) for 30 s, and 9 s below: neither opens.
    h.send_telemetry(&batch(
        "edge",
        (0..30).map(|i| battery_point(s(i), 20.0)).collect(),
    ))
    .await;
    h.send_telemetry(&batch(
        "edge",
        (30..40).map(|i| battery_point(s(i), 5.0)).collect(),
    ))
    .await;
    h.wait_count(
        "drain incident",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'drain'",
        1,
    )
    .await;
    h.wait_consumed("telemetry", &h.topics.telemetry.clone())
        .await;
    assert_eq!(
        h.scalar("SELECT count(*) FROM incidents WHERE vehicle_id = 'edge'")
            .await,
        0
    );
    let first_seen = h
        .scalar("SELECT (extract(epoch FROM first_seen) * 1e6)::bigint FROM incidents WHERE vehicle_id = 'drain'")
        .await;
    assert_eq!(first_seen, s(10), "opens when the 10 s window completes");

    // Hysteresis: 22 and 25 keep it uncleared, 25.5 clears; it stays open.
    h.send_telemetry(&batch(
        "drain",
        vec![battery_point(s(11), 22.0), battery_point(s(12), 25.0)],
    ))
    .await;
    h.wait_consumed("telemetry", &h.topics.telemetry.clone())
        .await;
    assert_eq!(
        h.scalar("SELECT count(*) FROM incidents WHERE vehicle_id = 'drain' AND cleared")
            .await,
        0
    );
    h.send_telemetry(&batch("drain", vec![battery_point(s(13), 25.5)]))
        .await;
    h.wait_count(
        "drain cleared",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'drain' AND cleared AND status = 'open'",
        1,
    )
    .await;
    let events = h.events(2).await;
    let kinds: Vec<i32> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        kinds,
        vec![
            IncidentEventType::Opened as i32,
            IncidentEventType::Cleared as i32
        ]
    );
    assert_eq!(events[0].vehicle_id, "drain");
    assert_eq!(events[0].incident_type, "battery_low");
    assert_ne!(events[0].event_id, events[1].event_id);

    // A new 10 s violation re-triggers the same (unresolved) incident.
    h.send_telemetry(&batch(
        "drain",
        (20..=30).map(|i| battery_point(s(i), 10.0)).collect(),
    ))
    .await;
    h.wait_count(
        "re-trigger merged",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'drain' AND trigger_count = 2 AND NOT cleared",
        1,
    )
    .await;
    assert_eq!(h.scalar("SELECT count(*) FROM incidents").await, 1);
    let list = h
        .client()
        .await
        .list_incidents(ListIncidentsRequest {
            vehicle_id: "drain".into(),
            statuses: vec![IncidentStatus::Open as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.incidents.len(), 1);
    assert_eq!(list.incidents[0].trigger_count, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geofence_keep_in_exit_and_keep_out_enter() {
    // Unit square around (0.5, 0.5); keep-in for "roamer", keep-out for everyone.
    let h = Harness::start(&rules_sql(
        r#"('stay_home', 'roamer', 'geofence', 2, '{"polygon": [[0,0],[0,1],[1,1],[1,0]], "mode": "keep_in"}'),
           ('no_fly', NULL, 'geofence', 4, '{"polygon": [[10,10],[10,11],[11,11],[11,10]], "mode": "keep_out"}')"#,
    ))
    .await;
    let t0 = time_ago(60);
    let s = |i: i64| t0 + i * 1_000_000;
    // On the boundary edge of the keep-in zone counts as inside (ray casting
    // puts the lower-left edges inside): no incident.
    h.send_telemetry(&batch(
        "roamer",
        vec![
            position(s(0), 0.5, 0.5),
            position(s(1), 0.5, 0.0),
            position(s(2), 0.999, 0.999),
        ],
    ))
    .await;
    h.wait_consumed("telemetry", &h.topics.telemetry.clone())
        .await;
    assert_eq!(h.scalar("SELECT count(*) FROM incidents").await, 0);
    h.send_telemetry(&batch("roamer", vec![position(s(3), 1.2, 0.5)]))
        .await;
    h.wait_count(
        "exit incident",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'roamer' AND incident_type = 'stay_home'",
        1,
    )
    .await;
    h.send_telemetry(&batch("roamer", vec![position(s(4), 0.5, 0.5)]))
        .await;
    h.wait_count(
        "back inside clears",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'roamer' AND cleared",
        1,
    )
    .await;
    // Keep-out: "intruder" enters, "passer" stays outside.
    h.send_telemetry(&batch(
        "passer",
        vec![position(s(0), 9.9, 10.5), position(s(1), 11.1, 10.5)],
    ))
    .await;
    h.send_telemetry(&batch(
        "intruder",
        vec![position(s(0), 9.9, 10.5), position(s(1), 10.5, 10.5)],
    ))
    .await;
    h.wait_count(
        "enter incident",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'intruder' AND incident_type = 'no_fly' AND severity = 4",
        1,
    )
    .await;
    h.wait_consumed("telemetry", &h.topics.telemetry.clone())
        .await;
    assert_eq!(
        h.scalar("SELECT count(*) FROM incidents WHERE vehicle_id = 'passer'")
            .await,
        0
    );
    // The keep-in rule applies to "roamer" only.
    assert_eq!(h.scalar("SELECT count(*) FROM incidents").await, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_loss_opens_for_silent_vehicles_and_clears_on_recovery() {
    let h = Harness::start(&rules_sql(
        r#"('link_loss', NULL, 'link_loss', 3, '{"timeout_secs": 2}')"#,
    ))
    .await;
    let started = fleetwatch_common::now_unix_us();
    // "chatty" keeps talking every 300 ms until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chatter = {
        let stop = stop.clone();
        let producer = h.producer.clone();
        let topic = h.topics.telemetry.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let b = batch(
                    "chatty",
                    vec![battery_point(fleetwatch_common::now_unix_us(), 80.0)],
                );
                producer
                    .send(fleetwatch_kafka::OutRecord {
                        topic: &topic,
                        key: "chatty",
                        payload: &prost::Message::encode_to_vec(&b),
                        message_type: fleetwatch_proto::message_types::TELEMETRY_BATCH,
                        traceparent: None,
                        extra_headers: &[],
                    })
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        })
    };
    // "silent" was heard 10 s ago (ingest clock) and never again.
    let mut b = batch("silent", vec![battery_point(started - 10_000_000, 80.0)]);
    b.received_unix_us = started - 10_000_000;
    h.send_telemetry(&b).await;
    h.wait_count(
        "silent link loss",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'silent' AND incident_type = 'link_loss'",
        1,
    )
    .await;
    // chatty has been heard for longer than the timeout, checked every 200 ms.
    h.wait_count(
        "chatty heard for 3 s",
        &format!("SELECT count(*) FROM incident_rule_state WHERE vehicle_id = 'chatty' AND last_seen_us > {}", started + 3_000_000),
        1,
    )
    .await;
    assert_eq!(
        h.scalar("SELECT count(*) FROM incidents WHERE vehicle_id = 'chatty'")
            .await,
        0,
        "a vehicle heard within the timeout has no link loss"
    );
    // Opened once, however often the check ran.
    assert_eq!(
        h.scalar("SELECT count(*) FROM incident_audit WHERE action = 'opened'")
            .await,
        1
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    chatter.await.unwrap();
    // A redelivered old batch does not count as recovery; a new one does.
    h.send_telemetry(&b).await;
    h.wait_consumed("telemetry", &h.topics.telemetry.clone())
        .await;
    assert_eq!(
        h.scalar("SELECT count(*) FROM incidents WHERE vehicle_id = 'silent' AND cleared")
            .await,
        0
    );
    h.send_telemetry(&batch(
        "silent",
        vec![battery_point(fleetwatch_common::now_unix_us(), 79.0)],
    ))
    .await;
    h.wait_count(
        "recovery clears",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'silent' AND cleared AND status = 'open'",
        1,
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_class_in_zone_with_consecutive_frames_and_evidence_clip() {
    // person in the left half of the image, conf >= 0.6, 2 frames in a row.
    let h = Harness::start(&rules_sql(
        r#"('person_zone', NULL, 'detection', 4, '{"classes": ["person", "intrusion"], "min_confidence": 0.6, "min_consecutive_frames": 2, "zone": [[0,0],[0.5,0],[0.5,1],[0,1]], "clear_after_secs": 3}')"#,
    ))
    .await;
    let t0 = time_ago(60);
    let s = |ms: i64| t0 + ms * 1000;
    let cam = "cam1";
    // Frames every 500 ms from -3 s to +3 s around the trigger at 1000 ms.
    for ms in (-3000..=4000).step_by(500) {
        h.send_frame(&frame(cam, s(ms))).await;
    }
    // Not enough: low confidence, outside the zone, one frame only, wrong class.
    h.send_detections(&detections(
        cam,
        s(0),
        vec![detection("person", 0.59, 0.25, 0.5)],
    ))
    .await;
    h.send_detections(&detections(
        cam,
        s(200),
        vec![detection("person", 0.9, 0.75, 0.5)],
    ))
    .await;
    h.send_detections(&detections(
        cam,
        s(300),
        vec![detection("person", 0.9, 0.25, 0.5)],
    ))
    .await;
    h.send_detections(&detections(
        cam,
        s(400),
        vec![detection("car", 0.9, 0.25, 0.5)],
    ))
    .await;
    h.wait_consumed("detections", &h.topics.detections.clone())
        .await;
    assert_eq!(h.scalar("SELECT count(*) FROM incidents").await, 0);
    // Two in a row: triggers at 1000 ms; 1500 ms has the better box.
    h.send_detections(&detections(
        cam,
        s(500),
        vec![detection("person", 0.7, 0.25, 0.5)],
    ))
    .await;
    h.send_detections(&detections(
        cam,
        s(1000),
        vec![detection("intrusion", 0.8, 0.2, 0.4)],
    ))
    .await;
    h.send_detections(&detections(
        cam,
        s(1500),
        vec![detection("person", 0.95, 0.3, 0.6)],
    ))
    .await;
    h.wait_count(
        "incident",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'cam1' AND incident_type = 'person_zone'",
        1,
    )
    .await;
    h.wait_count(
        "best evidence",
        "SELECT count(*) FROM incidents WHERE evidence_confidence > 0.94",
        1,
    )
    .await;
    let id = h.scalar("SELECT id FROM incidents").await;
    let detail = h
        .client()
        .await
        .get_incident(fleetwatch_proto::v1::GetIncidentRequest { id })
        .await
        .unwrap()
        .into_inner();
    let inc = detail.incident.unwrap();
    let ev = inc.evidence.clone().unwrap();
    assert_eq!(
        ev.frame_key,
        fleetwatch_objectstore::frame_key(cam, s(1500), "image/jpeg").unwrap()
    );
    assert_eq!(ev.boxes.len(), 1);
    assert!((ev.boxes[0].x_min - 0.25).abs() < 1e-6);
    assert_eq!(
        inc.trigger_count, 1,
        "sightings while active do not count as triggers"
    );
    // Clip: frames from trigger-2 s to trigger+2 s (config), i.e. -1000..=3000 ms.
    h.wait_count(
        "clip frames",
        "SELECT count(*) FROM incident_clip_frames",
        9,
    )
    .await;
    let detail = h
        .client()
        .await
        .get_incident(fleetwatch_proto::v1::GetIncidentRequest { id })
        .await
        .unwrap()
        .into_inner();
    let clips = detail.incident.unwrap().evidence.unwrap().clip_keys;
    assert_eq!(clips.len(), 9);
    let day = chrono::DateTime::from_timestamp_micros(s(1000))
        .unwrap()
        .format("%Y/%m/%d");
    assert_eq!(
        clips[0],
        format!("cam1/{day}/clip_{}/frame_{}.jpg", s(1000), s(-1000))
    );
    for k in &clips {
        let bytes = std::fs::read(h.objects.path().join(k)).unwrap();
        assert!(bytes.starts_with(b"jpeg-bytes-"));
    }
    assert_eq!(detail.audit.len(), 1);
    assert_eq!(detail.audit[0].action, "opened");
    // No match for 3 s -> cleared.
    h.send_detections(&detections(cam, s(4600), vec![])).await;
    h.wait_count("cleared", "SELECT count(*) FROM incidents WHERE cleared", 1)
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dlq_and_do_not_block() {
    let h = Harness::start(&rules_sql(BATTERY_RULE)).await;
    h.send(&h.topics.telemetry, "v1", b"\xff\xff not protobuf", "x")
        .await;
    // Key differs from the body's vehicle.
    let b = batch("v2", vec![battery_point(time_ago(5), 50.0)]);
    h.send(
        &h.topics.telemetry,
        "someone-else",
        &prost::Message::encode_to_vec(&b),
        "x",
    )
    .await;
    h.send_detections(&detections("v3", -5, vec![])).await;
    let dlq = fleetwatch_testkit::read_topic(
        &h.bootstrap,
        &format!("{}.dlq", h.topics.telemetry),
        2,
        WAIT,
    )
    .await;
    assert!(dlq.iter().any(|r| {
        r.header("dlq-error")
            .is_some_and(|e| e.contains("differs from vehicle_id"))
    }));
    let dlq = fleetwatch_testkit::read_topic(
        &h.bootstrap,
        &format!("{}.dlq", h.topics.detections),
        1,
        WAIT,
    )
    .await;
    assert!(dlq[0].header("dlq-error").unwrap().contains("time_unix_us"));
    h.stop().await;
}

const PERSON_RULE: &str = r#"('person', NULL, 'detection', 4, '{"classes": ["person"], "min_confidence": 0.5, "min_consecutive_frames": 1, "clear_after_secs": 60}')"#;

/// Issue 12: a value the database refuses (a NUL byte in a vehicle-supplied
/// frame key, SQLSTATE 22021) dead-letters its record instead of being
/// retried forever, and the records after it on the partition still count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_key_the_database_refuses_is_dead_lettered_without_stalling() {
    let h = Harness::start(&rules_sql(PERSON_RULE)).await;
    let t0 = time_ago(60);
    let mut poison = detections("cam9", t0, vec![detection("person", 0.9, 0.5, 0.5)]);
    poison.frame_key = "cam9/2026/01/01/frame\u{0}.jpg".into();
    h.send_detections(&poison).await;
    let mut next = detections("cam9", t0 + 1_000, vec![detection("person", 0.8, 0.5, 0.5)]);
    next.frame_key = "cam9/2026/01/01/frame_1.jpg".into();
    h.send_detections(&next).await;
    h.wait_count(
        "the incident of the record after the poison one",
        "SELECT count(*) FROM incidents WHERE vehicle_id = 'cam9' AND frame_key = 'cam9/2026/01/01/frame_1.jpg'",
        1,
    )
    .await;
    let dlq = fleetwatch_testkit::read_topic(
        &h.bootstrap,
        &format!("{}.dlq", h.topics.detections),
        1,
        WAIT,
    )
    .await;
    assert_eq!(dlq.len(), 1);
    let error = dlq[0].header("dlq-error").unwrap();
    assert!(error.contains("refused by the database"), "{error}");
    assert_eq!(dlq[0].header("dlq-source-offset").as_deref(), Some("0"));
    h.wait_consumed("detections", &h.topics.detections.clone())
        .await;
    h.stop().await;
}

/// The same for evidence clips: a frame whose content type the database
/// refuses is dead-lettered and the next frame still lands in the clip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_frame_the_database_refuses_is_dead_lettered_without_stalling() {
    let h = Harness::start(&rules_sql(PERSON_RULE)).await;
    let t0 = time_ago(60);
    h.send_detections(&detections(
        "cam8",
        t0,
        vec![detection("person", 0.9, 0.5, 0.5)],
    ))
    .await;
    h.wait_count(
        "clip window",
        "SELECT count(*) FROM incident_clips WHERE vehicle_id = 'cam8'",
        1,
    )
    .await;
    let mut poison = frame("cam8", t0 - 500_000);
    poison.content_type = "image/jpeg\u{0}".into();
    h.send_frame(&poison).await;
    h.send_frame(&frame("cam8", t0 + 500_000)).await;
    h.wait_count(
        "the frame after the poison one",
        "SELECT count(*) FROM incident_clip_frames",
        1,
    )
    .await;
    let dlq =
        fleetwatch_testkit::read_topic(&h.bootstrap, &format!("{}.dlq", h.topics.frames), 1, WAIT)
            .await;
    assert_eq!(dlq.len(), 1);
    let error = dlq[0].header("dlq-error").unwrap();
    assert!(error.contains("refused by the database"), "{error}");
    h.wait_consumed("frames", &h.topics.frames.clone()).await;
    h.stop().await;
}
