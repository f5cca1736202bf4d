//! gRPC API against the real broker and Postgres.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_kafka::headers;
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::ingest_service_client::IngestServiceClient;
use fleetwatch_proto::v1::{
    BoundingBox, Detection, DetectionBatch, Frame, TelemetryBatch, TelemetryChunk, TelemetryPoint,
};
use tonic::Request;
use tonic::transport::Channel;

async fn client(h: &Harness) -> IngestServiceClient<Channel> {
    IngestServiceClient::connect(format!("http://{}", h.running.grpc_addr))
        .await
        .unwrap()
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn point(i: usize) -> TelemetryPoint {
    TelemetryPoint {
        time_unix_us: fleetwatch_common::now_unix_us() - 1_000_000 + i as i64,
        lat: Some(10.0 + i as f64 / 1000.0),
        lon: Some(20.0),
        battery: Some(80.0),
        ..Default::default()
    }
}

fn chunks(sizes: &[usize]) -> Vec<TelemetryChunk> {
    let mut n = 0;
    sizes
        .iter()
        .map(|s| {
            let c = TelemetryChunk {
                points: (n..n + s).map(point).collect(),
            };
            n += s;
            c
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_telemetry_in_chunks() {
    let h = Harness::start().await;
    let mut c = client(&h).await;
    let ack = c
        .stream_telemetry(authed(tokio_stream::iter(chunks(&[3, 0, 5, 2])), &h.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.accepted, 10);
    let recs = h.read(&h.topics.telemetry, 3).await;
    assert_eq!(recs.len(), 3, "one record per non-empty chunk");
    let mut lats = Vec::new();
    for r in &recs {
        assert_eq!(r.key.as_deref(), Some(VEHICLE.as_bytes()));
        assert_eq!(
            r.header(headers::MESSAGE_TYPE).as_deref(),
            Some(message_types::TELEMETRY_BATCH)
        );
        let b: TelemetryBatch = decode(r);
        assert_eq!(b.source, "grpc");
        for p in b.points {
            assert_eq!(p.vehicle_id, VEHICLE);
            lats.push(p.lat.unwrap());
        }
    }
    let expected: Vec<f64> = (0..10).map(|i| 10.0 + i as f64 / 1000.0).collect();
    assert_eq!(lats, expected, "chunk order is kept");

    // Health and reflection are served next to the API.
    assert_eq!(
        fleetwatch_testkit::grpc_health(h.running.grpc_addr, "fleetwatch.v1.IngestService").await,
        fleetwatch_testkit::ServingStatus::Serving
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_map_to_codes() {
    let h = Harness::start().await;
    let mut c = client(&h).await;
    let err = c
        .stream_telemetry(Request::new(tokio_stream::iter(chunks(&[1]))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = c
        .stream_telemetry(authed(tokio_stream::iter(chunks(&[1])), "fw_bad"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // The bad value is in the first chunk: valid chunks before a bad one
    // are produced as they arrive (the stream errors, the client retries, the
    // stored copies dedupe), so only a bad first chunk guarantees nothing
    // reached Kafka for the check at the end.
    let mut bad = chunks(&[2, 2]);
    bad[0].points[1].lat = Some(f64::NAN);
    let err = c
        .stream_telemetry(authed(tokio_stream::iter(bad), &h.token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("chunk[0].points[1].lat"),
        "{}",
        err.message()
    );

    let mut bad = chunks(&[1]);
    bad[0].points[0].battery = Some(120.0);
    let err = c
        .stream_telemetry(authed(tokio_stream::iter(bad), &h.token))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("chunk[0].points[0].battery"),
        "{}",
        err.message()
    );

    let mut other = chunks(&[1]);
    other[0].points[0].vehicle_id = "drone-02".into();
    let err = c
        .stream_telemetry(authed(tokio_stream::iter(other), &h.token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let err = c
        .stream_telemetry(authed(tokio_stream::iter(chunks(&[10_001])), &h.token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let det = DetectionBatch {
        detections: vec![Detection {
            class_name: "person".into(),
            confidence: 1.5,
            bbox: Some(BoundingBox {
                x_min: 0.0,
                y_min: 0.0,
                x_max: 1.0,
                y_max: 1.0,
            }),
            track_id: String::new(),
        }],
        ..Default::default()
    };
    let err = c.send_detections(authed(det, &h.token)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("detections[0].conf"),
        "{}",
        err.message()
    );

    let err = c
        .send_frame(authed(
            Frame {
                data: b"nope".to_vec(),
                ..Default::default()
            },
            &h.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("frame"), "{}", err.message());
    let err = c
        .send_frame(authed(
            Frame {
                data: jpeg(8, 8),
                vehicle_id: "drone-02".into(),
                ..Default::default()
            },
            &h.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    h.assert_nothing_produced().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_detections_and_frame() {
    let h = Harness::start().await;
    let mut c = client(&h).await;
    let det = DetectionBatch {
        frame_id: "frame-9".into(),
        detections: vec![Detection {
            class_name: "no_helmet".into(),
            confidence: 0.8,
            bbox: Some(BoundingBox {
                x_min: 0.1,
                y_min: 0.2,
                x_max: 0.3,
                y_max: 0.4,
            }),
            track_id: "t1".into(),
        }],
        ..Default::default()
    };
    assert_eq!(
        c.send_detections(authed(det, &h.token))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        1
    );
    let recs = h.read(&h.topics.detections, 1).await;
    assert_eq!(recs[0].key.as_deref(), Some(VEHICLE.as_bytes()));
    assert_eq!(
        recs[0].header(headers::MESSAGE_TYPE).as_deref(),
        Some(message_types::DETECTION_BATCH)
    );
    let b: DetectionBatch = decode(&recs[0]);
    assert_eq!(
        (
            b.vehicle_id.as_str(),
            b.source.as_str(),
            b.frame_id.as_str()
        ),
        (VEHICLE, "edge", "frame-9")
    );
    assert!(b.time_unix_us > 0 && b.received_unix_us > 0);

    let img = jpeg(32, 24);
    let ack = c
        .send_frame(authed(
            Frame {
                data: img.clone(),
                frame_id: "f".into(),
                ..Default::default()
            },
            &h.token,
        ))
        .await
        .unwrap();
    assert_eq!(ack.into_inner().accepted, 1);
    let recs = h.read(&h.topics.frames, 1).await;
    assert_eq!(
        recs[0].header(headers::MESSAGE_TYPE).as_deref(),
        Some(message_types::FRAME)
    );
    let f: Frame = decode(&recs[0]);
    assert_eq!((f.width, f.height, f.data.len()), (32, 24, img.len()));
    assert_eq!(f.vehicle_id, VEHICLE);
    h.stop().await;
}
