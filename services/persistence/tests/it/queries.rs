//! The gRPC query API over data written through Kafka: results, bucket
//! math, limits, and every INVALID_ARGUMENT / NOT_FOUND path.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_proto::v1::*;
use tonic::Code;

async fn seed(h: &Harness) -> (i64, Vec<u8>, String) {
    // q1: 12 points 10 s apart: speed = k, rssi = -k on even k only.
    let base = time_ago(3_600);
    let points: Vec<TelemetryPoint> = (0..12)
        .map(|k| {
            let mut p = point(base + k * 10_000_000);
            p.speed = Some(k as f64);
            p.lat = Some(50.0 + k as f64);
            if k % 2 == 0 {
                p.metrics.insert("rssi".into(), -(k as f64));
            }
            p
        })
        .collect();
    h.send_telemetry(&batch("q1", points)).await;
    let mut other = point(base);
    other.battery = Some(42.0);
    h.send_telemetry(&batch("q2", vec![other])).await;

    let det = DetectionBatch {
        vehicle_id: "q1".into(),
        time_unix_us: base + 5_000_000,
        frame_id: "fr".into(),
        frame_key: "q1/x/frame_1.jpg".into(),
        detections: vec![
            Detection {
                class_name: "person".into(),
                confidence: 0.9,
                bbox: Some(BoundingBox {
                    x_min: 0.1,
                    y_min: 0.2,
                    x_max: 0.3,
                    y_max: 0.4,
                }),
                track_id: "t1".into(),
            },
            Detection {
                class_name: "person".into(),
                confidence: 0.3,
                ..Default::default()
            },
            Detection {
                class_name: "boat".into(),
                confidence: 0.8,
                ..Default::default()
            },
        ],
        model_name: "m".into(),
        model_version: "v".into(),
        ..Default::default()
    };
    h.send_detections(&det).await;
    let data = vec![9u8; 1234];
    let frame = Frame {
        vehicle_id: "q1".into(),
        time_unix_us: base + 7_000_000,
        frame_id: "fr".into(),
        content_type: "image/jpeg".into(),
        data: data.clone(),
        width: 8,
        height: 6,
        ..Default::default()
    };
    h.send_frame(&frame).await;
    h.wait_count("telemetry", "SELECT count(*) FROM telemetry", 13)
        .await;
    h.wait_count("detections", "SELECT count(*) FROM detections", 3)
        .await;
    h.wait_count("frames", "SELECT count(*) FROM frames", 1)
        .await;
    let key =
        fleetwatch_persistence::objects::frame_key("q1", frame.time_unix_us, "image/jpeg").unwrap();
    (base, data, key)
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().starts_with(field),
        "message {:?} should name {field}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_answers_from_stored_data() {
    let h = Harness::start().await;
    let (base, data, key) = seed(&h).await;
    let mut c = h.client().await;
    let end = base + 120_000_000;

    // GetLatest: all vehicles, or the listed ones.
    let all = c
        .get_latest(GetLatestRequest {
            vehicle_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.vehicles
            .iter()
            .map(|v| v.vehicle_id.as_str())
            .collect::<Vec<_>>(),
        ["q1", "q2"]
    );
    let q1 = &all.vehicles[0];
    let p = q1.point.as_ref().unwrap();
    assert_eq!(p.time_unix_us, base + 110_000_000);
    assert_eq!(p.speed, Some(11.0));
    assert_eq!(p.metrics["rssi"], -10.0);
    assert!(q1.updated_unix_us > 0);
    let only = c
        .get_latest(GetLatestRequest {
            vehicle_ids: vec!["q2".into(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only.vehicles.len(), 1);
    assert_eq!(only.vehicles[0].point.as_ref().unwrap().battery, Some(42.0));

    // QueryTelemetry: oldest first, [from, to), limit and truncation.
    let r = c
        .query_telemetry(TelemetryRangeRequest {
            vehicle_id: "q1".into(),
            from_unix_us: base,
            to_unix_us: end,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.points.len(), 12);
    assert!(!r.truncated);
    assert!(
        r.points
            .windows(2)
            .all(|w| w[0].time_unix_us < w[1].time_unix_us)
    );
    assert_eq!(r.points[2].metrics["rssi"], -2.0);
    assert_eq!(r.points[2].lat, Some(52.0));
    assert_eq!(r.points[0].vehicle_id, "q1");
    let r = c
        .query_telemetry(TelemetryRangeRequest {
            vehicle_id: "q1".into(),
            from_unix_us: base + 10_000_000,
            to_unix_us: base + 110_000_000,
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.points.len(), 5);
    assert!(r.truncated);
    assert_eq!(r.points[0].time_unix_us, base + 10_000_000);
    let r = c
        .query_telemetry(TelemetryRangeRequest {
            vehicle_id: "q1".into(),
            from_unix_us: base + 10_000_000,
            to_unix_us: base + 110_000_000,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.points.len(), 10, "to is exclusive");
    assert!(!r.truncated);

    // Buckets of 60 s from `base`: k 0..5 and 6..11.
    let r = c
        .query_telemetry_buckets(TelemetryBucketsRequest {
            vehicle_id: "q1".into(),
            from_unix_us: base,
            to_unix_us: end,
            bucket_seconds: 60,
            fields: vec!["speed".into(), "rssi".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.buckets.len(), 2);
    let (b0, b1) = (&r.buckets[0], &r.buckets[1]);
    assert_eq!(b0.start_unix_us, base);
    assert_eq!(b1.start_unix_us, base + 60_000_000);
    assert_eq!((b0.points, b1.points), (6, 6));
    let s = &b0.fields["speed"];
    assert_eq!((s.avg, s.min, s.max, s.count), (2.5, 0.0, 5.0, 6));
    let s = &b1.fields["speed"];
    assert_eq!((s.avg, s.min, s.max, s.count), (8.5, 6.0, 11.0, 6));
    let s = &b0.fields["rssi"];
    assert_eq!((s.avg, s.min, s.max, s.count), (-2.0, -4.0, 0.0, 3));
    let s = &b1.fields["rssi"];
    assert_eq!((s.avg, s.min, s.max, s.count), (-8.0, -10.0, -6.0, 3));
    // Default fields: the six standard ones; a bucket origin inside the data.
    let r = c
        .query_telemetry_buckets(TelemetryBucketsRequest {
            vehicle_id: "q1".into(),
            from_unix_us: base + 5_000_000,
            to_unix_us: base + 45_000_000,
            bucket_seconds: 20,
            fields: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.buckets
            .iter()
            .map(|b| b.start_unix_us - base)
            .collect::<Vec<_>>(),
        [5_000_000, 25_000_000]
    );
    assert_eq!(
        r.buckets.iter().map(|b| b.points).collect::<Vec<_>>(),
        [2, 2]
    );
    let b = &r.buckets[0];
    assert_eq!(b.fields.len(), 6);
    assert_eq!((b.fields["speed"].avg, b.fields["lat"].max), (1.5, 52.0));
    assert_eq!(b.fields["battery"].count, 0);

    // Detections: filters and limit.
    let det = |class: &str, min: f32, limit: u32| DetectionsRequest {
        vehicle_id: "q1".into(),
        from_unix_us: base,
        to_unix_us: end,
        class_name: class.into(),
        min_confidence: min,
        limit,
    };
    let r = c
        .query_detections(det("", 0.0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.detections.len(), 3);
    let first = &r.detections[0];
    assert_eq!(first.vehicle_id, "q1");
    assert_eq!(first.time_unix_us, base + 5_000_000);
    assert_eq!(first.frame_key, "q1/x/frame_1.jpg");
    assert_eq!(
        (
            first.model_name.as_str(),
            first.model_version.as_str(),
            first.frame_id.as_str()
        ),
        ("m", "v", "fr")
    );
    let d = first.detection.as_ref().unwrap();
    assert_eq!(
        (d.class_name.as_str(), d.confidence, d.track_id.as_str()),
        ("person", 0.9, "t1")
    );
    assert_eq!(d.bbox.as_ref().unwrap().x_max, 0.3);
    let r = c
        .query_detections(det("person", 0.0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.detections.len(), 2);
    let r = c
        .query_detections(det("", 0.5, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.detections
            .iter()
            .map(|d| d.detection.as_ref().unwrap().class_name.as_str())
            .collect::<Vec<_>>(),
        ["person", "boat"]
    );
    let r = c
        .query_detections(det("", 0.0, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.detections.len(), 1);
    let r = c
        .query_detections(DetectionsRequest {
            vehicle_id: "q2".into(),
            ..det("", 0.0, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.detections.is_empty());

    // Frames and their bytes.
    let r = c
        .query_frames(FramesRequest {
            vehicle_id: "q1".into(),
            from_unix_us: base,
            to_unix_us: end,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.frames.len(), 1);
    let f = &r.frames[0];
    assert_eq!(
        (f.object_key.as_str(), f.size_bytes, f.width, f.height),
        (key.as_str(), 1234, 8, 6)
    );
    assert_eq!(f.content_type, "image/jpeg");
    let o = c
        .get_object(GetObjectRequest {
            key: f.object_key.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(o.data, data);
    assert_eq!(o.content_type, "image/jpeg");
    let missing = c
        .get_object(GetObjectRequest {
            key: "q1/2020/01/01/frame_1.jpg".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Health and reflection are served next to the API.
    assert_eq!(
        fleetwatch_testkit::grpc_health(h.running.grpc_addr, "fleetwatch.v1.PersistenceQuery")
            .await,
        fleetwatch_testkit::ServingStatus::Serving
    );

    let m = h.metrics().await;
    assert!(
        metric(
            &m,
            "fleetwatch_persistence_grpc_requests_total",
            "method=\"QueryTelemetryBuckets\""
        ) >= 2.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_invalid_argument_naming_the_field() {
    let h = Harness::start().await;
    let base = time_ago(60);
    let mut p = point(base);
    p.metrics.insert("rssi".into(), 1.0);
    h.send_telemetry(&batch("v1", vec![p])).await;
    h.wait_count("latest", "SELECT count(*) FROM vehicle_latest", 1)
        .await;
    let mut c = h.client().await;
    let end = base + 1_000_000;

    assert_invalid(
        c.get_latest(GetLatestRequest {
            vehicle_ids: vec!["".into()],
        })
        .await,
        "vehicle_ids",
    );

    let tr = |v: &str, from, to| TelemetryRangeRequest {
        vehicle_id: v.into(),
        from_unix_us: from,
        to_unix_us: to,
        limit: 0,
    };
    assert_invalid(c.query_telemetry(tr("", base, end)).await, "vehicle_id");
    assert_invalid(c.query_telemetry(tr("v1", end, base)).await, "to_unix_us");
    assert_invalid(c.query_telemetry(tr("v1", base, base)).await, "to_unix_us");
    assert_invalid(
        c.query_telemetry(tr("v1", i64::MIN, end)).await,
        "from_unix_us",
    );

    let bk = |secs, fields: &[&str]| TelemetryBucketsRequest {
        vehicle_id: "v1".into(),
        from_unix_us: base,
        to_unix_us: end,
        bucket_seconds: secs,
        fields: fields.iter().map(|s| s.to_string()).collect(),
    };
    assert_invalid(
        c.query_telemetry_buckets(bk(0, &[])).await,
        "bucket_seconds",
    );
    assert_invalid(
        c.query_telemetry_buckets(bk(1, &["altitude"])).await,
        "fields",
    );
    assert_invalid(
        c.query_telemetry_buckets(TelemetryBucketsRequest {
            to_unix_us: base + 200_000 * 1_000_000,
            ..bk(1, &[])
        })
        .await,
        "bucket_seconds",
    );
    assert_invalid(
        c.query_telemetry_buckets(TelemetryBucketsRequest {
            vehicle_id: "".into(),
            ..bk(1, &[])
        })
        .await,
        "vehicle_id",
    );
    // A metric the vehicle reported is a known field.
    let ok = c
        .query_telemetry_buckets(bk(1, &["rssi"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.buckets[0].fields["rssi"].avg, 1.0);

    let det = |min: f32| DetectionsRequest {
        vehicle_id: "v1".into(),
        from_unix_us: base,
        to_unix_us: end,
        class_name: String::new(),
        min_confidence: min,
        limit: 0,
    };
    assert_invalid(c.query_detections(det(1.5)).await, "min_confidence");
    assert_invalid(c.query_detections(det(f32::NAN)).await, "min_confidence");
    assert_invalid(
        c.query_detections(DetectionsRequest {
            vehicle_id: "".into(),
            ..det(0.0)
        })
        .await,
        "vehicle_id",
    );
    assert_invalid(
        c.query_detections(DetectionsRequest {
            to_unix_us: base,
            ..det(0.0)
        })
        .await,
        "to_unix_us",
    );

    assert_invalid(
        c.query_frames(FramesRequest {
            vehicle_id: "".into(),
            from_unix_us: base,
            to_unix_us: end,
            limit: 0,
        })
        .await,
        "vehicle_id",
    );
    assert_invalid(
        c.query_frames(FramesRequest {
            vehicle_id: "v1".into(),
            from_unix_us: end,
            to_unix_us: base,
            limit: 0,
        })
        .await,
        "to_unix_us",
    );

    for bad in [
        "",
        "../secret",
        "v1/../../etc/passwd",
        "/etc/passwd",
        "a//b",
    ] {
        assert_invalid(
            c.get_object(GetObjectRequest { key: bad.into() }).await,
            "key",
        );
    }
    let m = h.metrics().await;
    assert!(
        metric(
            &m,
            "fleetwatch_persistence_grpc_requests_total",
            "code=\"invalid_argument\""
        ) >= 18.0
    );
    h.stop().await;
}
