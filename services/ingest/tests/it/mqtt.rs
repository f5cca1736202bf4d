//! MQTT bridge against the real Mosquitto (a fresh one per test, with the
//! shipped password file + ACL configuration), Kafka and Postgres.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_kafka::headers;
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::{DetectionBatch, TelemetryBatch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_detections_reach_kafka() {
    // The bridge logs in as fleetwatch-ingest with its own password.
    let h = Harness::start_with(|c| c.mqtt.enabled = true).await;
    h.wait_mqtt_subscribed().await;
    wait_ready(&h, true).await;
    let p = h.vehicle().await;
    let ts = now_rfc3339();
    p.publish("fleet/drone-01/telemetry", format!(r#"{{"drone_id":"drone-01","timestamp":"{ts}","lat":28.7,"lon":77.1,"alt":120.5,"battery":72}}"#)).await;
    p.publish(
        "fleet/drone-01/telemetry",
        r#"[{"lat":1,"lon":2},{"lat":3,"lon":4,"rpm":5000}]"#,
    )
    .await;
    p.publish(
        "drone/drone-01/detections",
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
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vehicles_and_invalid_payloads_are_dead_lettered() {
    let h = Harness::start_with(|c| c.mqtt.enabled = true).await;
    h.wait_mqtt_subscribed().await;
    // ghost-7 has a broker login but no registration (e.g. a password file
    // entry left behind): the broker lets it in, the bridge dead-letters it.
    h.broker().add_user("ghost-7", "stale-password").await;
    let ghost_vehicle = MqttPublisher::connect(h.broker(), "ghost-7", "stale-password").await;
    let ghost_topic = "fleet/ghost-7/telemetry".to_string();
    let ghost = r#"{"lat":1,"lon":2}"#;
    ghost_vehicle.publish(&ghost_topic, ghost).await;
    // The next messages come from another connection: wait for the ghost's
    // dead letter first, so the order of the DLQ is known.
    let dlq_topic = format!("{}.dlq", h.topics.telemetry);
    h.read(&dlq_topic, 1).await;
    let p = h.vehicle().await;
    let bad_topic = "fleet/drone-01/telemetry".to_string();
    p.publish(&bad_topic, r#"{"lat":91,"lon":2}"#).await;
    p.publish(&bad_topic, "not json").await;
    let det_topic = "fleet/drone-01/detections".to_string();
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
    h.stop().await;
}

/// `/readyz` of the harness's ingest answers 200 (`true`) or 503.
async fn wait_ready(h: &Harness, ready: bool) {
    let url = format!("http://{}/readyz", h.running.admin_addr);
    fleetwatch_testkit::wait_for(&format!("/readyz ready={ready}"), READ_TIMEOUT, || {
        let url = url.clone();
        async move {
            let status = reqwest::get(&url).await.ok()?.status();
            (status.is_success() == ready).then_some(())
        }
    })
    .await;
}

/// Records in every topic the bridge writes to, DLQs included.
async fn counts(h: &Harness) -> Vec<(String, i64)> {
    let t = &h.topics;
    let mut out = Vec::new();
    for topic in [
        t.telemetry.clone(),
        t.detections.clone(),
        format!("{}.dlq", t.telemetry),
        format!("{}.dlq", t.detections),
    ] {
        let n = h.count(&topic).await;
        out.push((topic, n));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_cannot_publish_under_another_vehicles_id() {
    let h = Harness::start_with(|c| c.mqtt.enabled = true).await;
    h.wait_mqtt_subscribed().await;
    h.add_vehicle("drone-02").await;
    let p = h.vehicle().await;
    // drone-01 speaking for drone-02, on every topic the bridge reads.
    let detection = r#"{"detections":[{"class":"person","conf":0.9,"bbox":[0.1,0.1,0.2,0.2]}]}"#;
    p.publish("fleet/drone-02/telemetry", r#"{"lat":1,"lon":2}"#)
        .await;
    p.publish("fleet/drone-02/detections", detection).await;
    p.publish("drone/drone-02/detections", detection).await;
    // Markers after the forbidden messages, on the same connection: once
    // they are in Kafka, anything the broker had let through would be too.
    p.publish("fleet/drone-01/telemetry", r#"{"lat":7,"lon":7}"#)
        .await;
    p.publish("fleet/drone-01/detections", detection).await;
    let tel = h.read(&h.topics.telemetry, 1).await;
    let det = h.read(&h.topics.detections, 1).await;
    assert_eq!(tel[0].key.as_deref(), Some(VEHICLE.as_bytes()));
    assert_eq!(decode::<TelemetryBatch>(&tel[0]).points[0].lat, Some(7.0));
    assert_eq!(det[0].key.as_deref(), Some(VEHICLE.as_bytes()));
    let counts = counts(&h).await;
    assert_eq!(
        counts.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![1, 1, 0, 0],
        "only the markers reached Kafka, and nothing was even dead-lettered: {counts:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_reads_only_its_own_commands() {
    use fleetwatch_testkit::mqtt::{BRIDGE_USER, Mosquitto};
    let broker = Mosquitto::start().await;
    broker.add_user("drone-01", "fw_one").await;
    broker.add_user("drone-02", "fw_two").await;
    let spy = MqttPublisher::connect(&broker, "drone-01", "fw_one").await;
    for filter in [
        "#",
        "fleet/+/telemetry",
        "fleet/drone-02/commands",
        "fleet/drone-01/commands",
    ] {
        spy.subscribe(filter).await;
    }
    let bridge = MqttPublisher::connect(&broker, BRIDGE_USER, broker.bridge_password()).await;
    bridge.subscribe("fleet/+/telemetry").await;
    let other = MqttPublisher::connect(&broker, "drone-02", "fw_two").await;
    other
        .publish("fleet/drone-02/telemetry", r#"{"lat":1,"lon":1}"#)
        .await;
    bridge
        .publish("fleet/drone-02/commands", "for drone-02")
        .await;
    bridge
        .publish("fleet/drone-01/commands", "for drone-01")
        .await;
    // The bridge saw drone-02's telemetry, so the broker did route it.
    assert_eq!(
        bridge.wait_received(1).await[0].0,
        "fleet/drone-02/telemetry"
    );
    // drone-01's own command comes last: anything else would have come before it.
    let got = spy.wait_received(1).await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["fleet/drone-01/commands"], "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_unknown_password_is_refused_at_connect() {
    let broker = fleetwatch_testkit::mqtt::Mosquitto::start().await;
    broker.add_user("drone-01", "fw_right-token").await;
    fn refused(r: &Result<(), rumqttc::ConnectionError>) -> bool {
        matches!(
            r,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::NotAuthorized
                    | rumqttc::ConnectReturnCode::BadUserNamePassword
            ))
        )
    }
    let wrong = broker.try_connect("drone-01", "fw_wrong-token").await;
    assert!(refused(&wrong), "{wrong:?}");
    let unknown = broker.try_connect("drone-99", "fw_right-token").await;
    assert!(refused(&unknown), "{unknown:?}");
    let anonymous = broker.try_connect_anonymous().await;
    assert!(refused(&anonymous), "{anonymous:?}");
    // The bridge's user with a vehicle's password is refused too.
    let bridge = broker
        .try_connect(fleetwatch_testkit::mqtt::BRIDGE_USER, "fw_right-token")
        .await;
    assert!(refused(&bridge), "{bridge:?}");
    broker
        .try_connect("drone-01", "fw_right-token")
        .await
        .unwrap();
}

/// Lines a child process writes to stdout and stderr, collected by threads.
fn collect_output(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for s in streams {
        let out = out.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(s).lines().map_while(Result::ok) {
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_with_wrong_credentials_is_not_ready_and_says_why() {
    use fleetwatch_testkit::mqtt::{BRIDGE_USER, Mosquitto};
    let broker = Mosquitto::start().await;
    let db = fleetwatch_testkit::TestDb::new().await;
    let bootstrap = fleetwatch_testkit::shared_bootstrap().await;
    let topics = fleetwatch_testkit::fresh_topics(&bootstrap, 1).await;
    let admin = fleetwatch_testkit::free_port();
    let password = "not-the-bridge-password";
    let p = "FLEETWATCH_INGEST__";
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetwatch-ingest"))
        .envs([
            (format!("{p}KAFKA__BOOTSTRAP_SERVERS"), bootstrap.clone()),
            (format!("{p}DATABASE__URL"), db.url.clone()),
            (format!("{p}TOPICS__TELEMETRY"), topics.telemetry.clone()),
            (format!("{p}TOPICS__FRAMES"), topics.frames.clone()),
            (format!("{p}TOPICS__DETECTIONS"), topics.detections.clone()),
            (format!("{p}HTTP__LISTEN"), "127.0.0.1:0".into()),
            (format!("{p}GRPC__LISTEN"), "127.0.0.1:0".into()),
            (format!("{p}ADMIN__LISTEN"), format!("127.0.0.1:{admin}")),
            (format!("{p}LOG__FORMAT"), "pretty".into()),
            (format!("{p}MQTT__HOST"), broker.host()),
            (format!("{p}MQTT__PORT"), broker.port().to_string()),
            (format!("{p}MQTT__USERNAME"), BRIDGE_USER.into()),
            (format!("{p}MQTT__PASSWORD"), password.into()),
            (format!("{p}MQTT__RECONNECT_MAX_BACKOFF_MS"), "500".into()),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = collect_output(&mut child);
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = KillOnDrop(child);

    let log = fleetwatch_testkit::wait_for("ingest to log the refused login", READ_TIMEOUT, || {
        let output = output.clone();
        async move {
            let o = output.lock().unwrap().clone();
            o.contains("mqtt broker refused the connection")
                .then_some(o)
        }
    })
    .await;
    for needle in [
        "ERROR",
        "fleetwatch-ingest",
        "mqtt.password",
        "fleetctl mqtt passwd",
    ] {
        assert!(log.contains(needle), "{needle:?} missing from:\n{log}");
    }
    assert!(!log.contains(password), "the password was logged:\n{log}");
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    let healthz = format!("http://127.0.0.1:{admin}/healthz");
    assert_eq!(reqwest::get(&healthz).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 503);

    // The operator fixes the password file; the bridge heals without a restart.
    broker.add_user(BRIDGE_USER, password).await;
    fleetwatch_testkit::wait_for("ingest to become ready", READ_TIMEOUT, || {
        let readyz = readyz.clone();
        async move {
            let s = reqwest::get(&readyz).await.ok()?.status();
            s.is_success().then_some(())
        }
    })
    .await;
    let log = output.lock().unwrap().clone();
    assert!(log.contains("mqtt connected"), "{log}");
    assert_eq!(
        log.matches("mqtt broker refused the connection;").count(),
        1,
        "one ERROR per streak of refusals:\n{log}"
    );
}
