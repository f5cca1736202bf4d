//! HTTP API against the real broker and Postgres.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use base64::Engine;
use fleetwatch_kafka::headers;
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::{DetectionBatch, Frame, TelemetryBatch};

fn check_headers(r: &fleetwatch_testkit::ReadRecord, message_type: &str) {
    assert_eq!(r.key.as_deref(), Some(VEHICLE.as_bytes()));
    assert_eq!(
        r.header(headers::MESSAGE_TYPE).as_deref(),
        Some(message_type)
    );
    assert_eq!(
        r.header(headers::CONTENT_TYPE).as_deref(),
        Some(headers::PROTOBUF)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_single_array_and_ndjson() {
    let h = Harness::start().await;
    let ts = now_rfc3339();
    let single = format!(
        r#"{{"drone_id":"drone-01","timestamp":"{ts}","lat":28.7,"lon":77.1,"alt":120.5,"battery":72,"rssi":-61,"mode":"auto"}}"#
    );
    let resp = h.post_json("/api/v1/telemetry", &single).await;
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["ignored_fields"], serde_json::json!(["mode"]));

    let array = format!(
        r#"[{{"vehicle_id":"drone-01","timestamp":"{ts}","lat":1,"lon":2}},{{"speed":3.5}}]"#
    );
    let resp = h.post_json("/api/v1/telemetry", &array).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["accepted"], 2);

    let ndjson = format!(
        "{{\"timestamp\":\"{ts}\",\"heading\":90}}\n{{\"heading\":91}}\n{{\"heading\":92}}\n"
    );
    let resp = h
        .post("/api/v1/telemetry", "application/x-ndjson", ndjson)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["accepted"], 3);

    let recs = h.read(&h.topics.telemetry, 3).await;
    assert_eq!(recs.len(), 3, "one record per request");
    for r in &recs {
        check_headers(r, message_types::TELEMETRY_BATCH);
    }
    let b: TelemetryBatch = decode(&recs[0]);
    assert_eq!(
        (b.vehicle_id.as_str(), b.source.as_str(), b.points.len()),
        (VEHICLE, "http", 1)
    );
    let p = &b.points[0];
    assert_eq!(
        (p.lat, p.lon, p.alt, p.battery),
        (Some(28.7), Some(77.1), Some(120.5), Some(72.0))
    );
    assert_eq!(p.metrics.get("rssi"), Some(&-61.0));
    assert_eq!(
        p.time_unix_us,
        chrono::DateTime::parse_from_rfc3339(&ts)
            .unwrap()
            .timestamp_micros()
    );
    let b: TelemetryBatch = decode(&recs[1]);
    assert_eq!(b.points.len(), 2);
    assert_eq!(b.points[1].speed, Some(3.5));
    assert!(
        b.points[1].time_unix_us > 0,
        "missing timestamp = receive time"
    );
    let b: TelemetryBatch = decode(&recs[2]);
    assert_eq!(
        b.points
            .iter()
            .map(|p| p.heading.unwrap())
            .collect::<Vec<_>>(),
        vec![90.0, 91.0, 92.0]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_api_data_detections_frames_and_video() {
    let h = Harness::start().await;
    let ts = now_rfc3339();
    let resp = h
        .post_json(
            "/api/data",
            &format!(r#"{{"drone_id":"drone-01","timestamp":"{ts}","lat":10,"lon":20}}"#),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["accepted"], 1);
    let resp = h.post_json("/api/data", r#"[{"lat":10,"lon":20}]"#).await;
    assert_eq!(resp.status(), 400, "/api/data takes one object");

    let det = format!(
        r#"{{"drone_id":"drone-01","timestamp":"{ts}","detections":[{{"class":"person","conf":0.92,"bbox":[0.12,0.22,0.35,0.60],"track_id":"t123"}}],"frame_id":"frame-0001","frame_s3_key":"drone-01/2025-09-24/frame-0001.jpg"}}"#
    );
    let resp = h.post_json("/api/v1/detections", &det).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["accepted"], 1);
    let recs = h.read(&h.topics.detections, 1).await;
    check_headers(&recs[0], message_types::DETECTION_BATCH);
    let b: DetectionBatch = decode(&recs[0]);
    assert_eq!(
        (b.source.as_str(), b.frame_id.as_str()),
        ("edge", "frame-0001")
    );
    assert_eq!(b.frame_key, "drone-01/2025-09-24/frame-0001.jpg");
    assert_eq!(b.detections[0].class_name, "person");
    assert_eq!(b.detections[0].track_id, "t123");

    let img = jpeg(64, 48);
    let resp = h
        .http
        .post(h.url(&format!(
            "/api/v1/frames?frame_id=f-1&timestamp={}",
            urlencode(&ts)
        )))
        .bearer_auth(&h.token)
        .header("content-type", "image/jpeg")
        .body(img.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = h
        .http
        .post(h.url("/api/video"))
        .bearer_auth(&h.token)
        .header("content-type", "image/jpeg")
        .header("x-frame-id", "f-2")
        .header("x-frame-timestamp", &ts)
        .body(img.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&img);
    let resp = h
        .post_json(
            "/api/video",
            &format!(r#"{{"frame":"{b64}","frame_id":"f-3"}}"#),
        )
        .await;
    assert_eq!(resp.status(), 200);

    let frames = h.read(&h.topics.frames, 3).await;
    let mut ids = Vec::new();
    for r in &frames {
        check_headers(r, message_types::FRAME);
        let f: Frame = decode(r);
        assert_eq!(
            (f.width, f.height, f.content_type.as_str()),
            (64, 48, "image/jpeg")
        );
        assert_eq!(f.data, img);
        ids.push(f.frame_id.clone());
        if f.frame_id != "f-3" {
            assert_eq!(
                f.time_unix_us,
                chrono::DateTime::parse_from_rfc3339(&ts)
                    .unwrap()
                    .timestamp_micros()
            );
        }
    }
    assert_eq!(ids, vec!["f-1", "f-2", "f-3"]);
    h.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_and_ids_must_match() {
    let h = Harness::start().await;
    let body = r#"{"lat":1,"lon":2}"#;
    let resp = h
        .http
        .post(h.url("/api/v1/telemetry"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(json(resp).await["error"]["code"], "unauthenticated");
    for auth in ["Bearer fw_nope", "Basic abc", "Bearer"] {
        let resp = h
            .http
            .post(h.url("/api/v1/telemetry"))
            .header("authorization", auth)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{auth}");
    }
    for path in [
        "/api/v1/detections",
        "/api/v1/frames",
        "/api/data",
        "/api/video",
    ] {
        let resp = h
            .http
            .post(h.url(path))
            .bearer_auth("fw_nope")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    let resp = h.http.get(h.url("/api/latest")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // A deactivated vehicle's token stops working (fresh token: not cached).
    let other = fleetwatch_db::add_vehicle(&h.db.pool, "drone-02", "drone", None)
        .await
        .unwrap();
    sqlx::query("UPDATE vehicles SET active = false WHERE id = 'drone-02'")
        .execute(&h.db.pool)
        .await
        .unwrap();
    let resp = h
        .http
        .post(h.url("/api/v1/telemetry"))
        .bearer_auth(&other)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let resp = h
        .post_json(
            "/api/v1/telemetry",
            r#"[{"lat":1,"lon":2},{"drone_id":"drone-02","lat":1,"lon":2}]"#,
        )
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(error_fields(&json(resp).await), vec!["[1].drone_id"]);
    let resp = h
        .post_json(
            "/api/v1/detections",
            r#"{"vehicle_id":"drone-02","detections":[]}"#,
        )
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(error_fields(&json(resp).await), vec!["vehicle_id"]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(jpeg(8, 8));
    let resp = h
        .post_json(
            "/api/video",
            &format!(r#"{{"frame":"{b64}","drone_id":"drone-02"}}"#),
        )
        .await;
    assert_eq!(resp.status(), 403);
    h.assert_nothing_produced().await;
    h.stop().await;
}

/// Every validation rule: status, field named in the body, nothing produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_rules_refuse_the_whole_request() {
    // A small body limit keeps the oversized body inside loopback socket
    // buffers: a server answering 413 before reading a multi-MB upload may
    // reset the connection under the client, which would make this flaky.
    let h = Harness::start_with(|c| {
        c.limits.max_points_per_request = 5;
        c.limits.max_json_body_bytes = 64 * 1024;
    })
    .await;
    let future = (chrono::Utc::now() + chrono::Duration::seconds(400)).to_rfc3339();
    let old = (chrono::Utc::now() - chrono::Duration::days(8)).to_rfc3339();
    let tel = "/api/v1/telemetry";
    let det = "/api/v1/detections";
    let cases: Vec<(&str, String, u16, Option<&str>, &str)> = vec![
        (
            tel,
            r#"[{"lat":1,"lon":2},{},{},{"lat":91,"lon":0}]"#.into(),
            400,
            Some("[3].lat"),
            "invalid_telemetry",
        ),
        (
            tel,
            r#"{"lat":1,"lon":-181}"#.into(),
            400,
            Some("lon"),
            "invalid_telemetry",
        ),
        (
            tel,
            r#"{"lat":1}"#.into(),
            400,
            Some("lon"),
            "invalid_telemetry",
        ),
        (
            tel,
            r#"{"battery":100.5}"#.into(),
            400,
            Some("battery"),
            "invalid_telemetry",
        ),
        (
            tel,
            r#"{"battery":-3}"#.into(),
            400,
            Some("battery"),
            "invalid_telemetry",
        ),
        (
            tel,
            r#"{"alt":"high"}"#.into(),
            400,
            Some("alt"),
            "invalid_telemetry",
        ),
        (
            tel,
            r#"{"timestamp":"24/09/2025"}"#.into(),
            400,
            Some("timestamp"),
            "invalid_telemetry",
        ),
        (
            tel,
            format!(r#"{{"timestamp":"{future}"}}"#),
            400,
            Some("timestamp"),
            "invalid_telemetry",
        ),
        (
            tel,
            format!(r#"{{"timestamp":"{old}"}}"#),
            400,
            Some("timestamp"),
            "invalid_telemetry",
        ),
        (
            tel,
            r#"{"lat":1e999,"lon":0}"#.into(),
            400,
            None,
            "malformed_json",
        ),
        (
            tel,
            r#"{"lat":1,"lon":"#.into(),
            400,
            None,
            "malformed_json",
        ),
        (tel, String::new(), 400, None, "empty_body"),
        (tel, "[]".into(), 400, None, "empty_body"),
        (
            tel,
            "[{},{},{},{},{},{}]".into(),
            413,
            None,
            "payload_too_large",
        ),
        (
            tel,
            format!("[{}]", [r#"{"lat":1,"lon":1,"battery":50}"#; 5].join(","))
                + &" ".repeat(100 * 1024),
            413,
            None,
            "payload_too_large",
        ),
        (
            "/api/data",
            r#"{"lat":-91,"lon":0}"#.into(),
            400,
            Some("lat"),
            "invalid_telemetry",
        ),
        (
            det,
            r#"{"detections":[{"class":"p","conf":1.2,"bbox":[0,0,1,1]}]}"#.into(),
            400,
            Some("detections[0].conf"),
            "invalid_detections",
        ),
        (
            det,
            r#"{"detections":[{"class":"p","conf":0.5,"bbox":[0,0,1.5,1]}]}"#.into(),
            400,
            Some("detections[0].bbox"),
            "invalid_detections",
        ),
        (
            det,
            r#"{"detections":[{"class":"p","conf":0.5,"bbox":[0.7,0,0.2,1]}]}"#.into(),
            400,
            Some("detections[0].bbox"),
            "invalid_detections",
        ),
        (
            det,
            r#"{"detections":[{"class":"p","conf":0.5}]}"#.into(),
            400,
            Some("detections[0].bbox"),
            "invalid_detections",
        ),
        (
            det,
            r#"{"frame_id":"x"}"#.into(),
            400,
            Some("detections"),
            "invalid_detections",
        ),
        (
            det,
            format!(r#"{{"timestamp":"{future}","detections":[]}}"#),
            400,
            Some("timestamp"),
            "invalid_detections",
        ),
    ];
    for (path, body, status, field, code) in cases {
        let what = format!("{path} {}", &body[..body.len().min(80)]);
        let resp = h.post_json(path, &body).await;
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let v = json(resp).await;
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        if let Some(field) = field {
            assert_eq!(error_fields(&v), vec![field.to_string()], "{what}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(field),
                "{v}"
            );
        }
    }
    // Huge exponents: the parser's message points at the column.
    let v = json(h.post_json(tel, r#"{"lat":1e999,"lon":0}"#).await).await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("column"),
        "{v}"
    );
    h.assert_nothing_produced().await;

    // Frames.
    let resp = h
        .post("/api/v1/frames", "image/jpeg", b"not a jpeg".to_vec())
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_fields(&json(resp).await), vec!["frame"]);
    let resp = h
        .post("/api/v1/frames", "image/jpeg", jpeg(16, 16)[..20].to_vec())
        .await;
    assert_eq!(resp.status(), 400, "truncated header");
    let resp = h.post("/api/v1/frames", "image/jpeg", Vec::new()).await;
    assert_eq!(resp.status(), 400, "empty frame");
    let mut zero = jpeg(16, 16);
    let sof = zero.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    zero[sof + 5..sof + 7].copy_from_slice(&[0, 0]);
    let resp = h.post("/api/v1/frames", "image/jpeg", zero).await;
    assert_eq!(resp.status(), 400, "zero height");
    let resp = h.post("/api/v1/frames", "image/png", jpeg(16, 16)).await;
    assert_eq!(resp.status(), 415);
    let resp = h
        .post(
            &format!("/api/v1/frames?timestamp={}", urlencode(&future)),
            "image/jpeg",
            jpeg(16, 16),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_fields(&json(resp).await), vec!["timestamp"]);
    let resp = h.post_json("/api/video", r#"{"frame":"***"}"#).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_fields(&json(resp).await), vec!["frame"]);
    h.assert_nothing_produced().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused() {
    let h = Harness::start_with(|c| c.limits.max_frame_bytes = 2_000).await;
    let big = jpeg(256, 256);
    assert!(big.len() > 2_000);
    let resp = h.post("/api/v1/frames", "image/jpeg", big).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(json(resp).await["error"]["code"], "payload_too_large");
    h.assert_nothing_produced().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_503_when_persistence_is_unreachable() {
    let h = Harness::start().await;
    let resp = h
        .http
        .get(h.url("/api/latest"))
        .bearer_auth(&h.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    assert_eq!(json(resp).await["error"]["code"], "unavailable");
    let resp = h.http.get(h.url("/no/such/route")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // The request metrics carry the route template and the status class.
    let metrics = h
        .http
        .get(format!("http://{}/metrics", h.running.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fleetwatch_ingest_requests_total")
                && l.contains("route=\"/api/latest\"")
                && l.contains("status=\"5xx\"")),
        "{metrics}"
    );
    h.stop().await;
}
