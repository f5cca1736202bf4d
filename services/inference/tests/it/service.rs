//! The service against the real broker: frames in, detections out, bad
//! frames dead-lettered with their reason, stale frames skipped, gRPC Detect,
//! and a model version switch without a restart.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_inference::config::{ModelSource, RuntimeKind};
use fleetwatch_inference::source::{model_key, pointer_key};
use fleetwatch_proto::v1::inference_service_client::InferenceServiceClient;
use fleetwatch_proto::v1::{DetectRequest, DetectionBatch, GetModelRequest};
use fleetwatch_testkit::{read_topic, wait_for};
use prost::Message;

fn decode_batches(records: &[fleetwatch_testkit::ReadRecord]) -> Vec<DetectionBatch> {
    records
        .iter()
        .map(|r| DetectionBatch::decode(r.payload.as_slice()).unwrap())
        .collect()
}

#[tokio::test]
async fn frames_become_detections_and_bad_frames_go_to_the_dlq() {
    let h = Harness::start(RuntimeKind::Ort, |c| {
        c.pipeline.max_frame_pixels = 200 * 100;
        c.pipeline.max_frame_bytes = 20_000;
    })
    .await;
    let t0 = 1_700_000_000_000_000i64;
    h.send_frame(&frame("drone-1", t0, "f1", two_objects()))
        .await;
    // Never inferable, each for its own reason.
    h.send_raw("drone-1", b"\xff\xff not protobuf").await;
    h.send_frame(&frame("drone-1", t0 + 1, "bad-magic", b"GIF89a".to_vec()))
        .await;
    let good = two_objects();
    h.send_frame(&frame(
        "drone-1",
        t0 + 2,
        "truncated",
        good[..good.len() / 2].to_vec(),
    ))
    .await;
    h.send_frame(&frame("drone-1", t0 + 3, "empty", vec![]))
        .await;
    h.send_frame(&frame("drone-1", t0 + 4, "huge", jpeg(300, 100, &[])))
        .await;
    let mut padded = two_objects();
    padded.extend(vec![0u8; 30_000]);
    h.send_frame(&frame("drone-1", t0 + 5, "heavy", padded))
        .await;
    // The service keeps going: later frames are inferred.
    h.send_frame(&frame("drone-1", t0 + 6, "blank", jpeg(128, 64, &[])))
        .await;
    h.send_frame(&frame("drone-1", t0 + 7, "f2", two_objects()))
        .await;

    let out = decode_batches(&read_topic(&h.bootstrap, &h.topics.detections, 3, WAIT).await);
    let ids: Vec<&str> = out.iter().map(|b| b.frame_id.as_str()).collect();
    assert_eq!(ids, vec!["f1", "blank", "f2"]);
    let b = &out[0];
    assert_eq!(b.vehicle_id, "drone-1");
    assert_eq!(b.time_unix_us, t0);
    assert_eq!(
        (b.model_name.as_str(), b.model_version.as_str()),
        ("tiny", "t1")
    );
    assert_eq!(b.source, "inference");
    assert_eq!(
        b.frame_key,
        fleetwatch_objectstore::frame_key("drone-1", t0, "image/jpeg").unwrap()
    );
    assert_eq!(b.detections.len(), 2);
    assert_eq!(b.detections[0].class_name, "red");
    let bb = b.detections[0].bbox.unwrap();
    assert_box([bb.x_min, bb.y_min, bb.x_max, bb.y_max], RED_BOX);
    assert!(
        out[1].detections.is_empty(),
        "a blank frame publishes an empty batch"
    );

    let dlq = read_topic(&h.bootstrap, &format!("{}.dlq", h.topics.frames), 6, WAIT).await;
    let reasons: Vec<String> = dlq.iter().map(|r| r.header("dlq-error").unwrap()).collect();
    for (i, want) in [
        "undecodable",
        "not a JPEG",
        "undecodable JPEG",
        "frame data is empty",
        "20000-pixel limit",
        "20000-byte limit",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            reasons[i].contains(want),
            "dlq[{i}] = {:?}, expected {want:?}",
            reasons[i]
        );
    }
    assert_eq!(
        dlq[0].header("dlq-source-topic").as_deref(),
        Some(h.topics.frames.as_str())
    );
    h.stop().await;
}

#[tokio::test]
async fn stale_frames_are_skipped_and_fresh_ones_are_not_blocked() {
    let h = Harness::start(RuntimeKind::Tract, |c| c.pipeline.max_frame_age_ms = 10_000).await;
    let now = fleetwatch_common::now_unix_us();
    let mut stale = frame("vessel-1", now - 120_000_000, "old", two_objects());
    stale.received_unix_us = now - 60_000_000;
    h.send_frame(&stale).await;
    h.send_frame(&frame("vessel-1", now, "fresh", two_objects()))
        .await;
    let out = decode_batches(&read_topic(&h.bootstrap, &h.topics.detections, 1, WAIT).await);
    assert_eq!(
        out[0].frame_id, "fresh",
        "the stale frame came first and was skipped"
    );
    // Same partition, in order: the fresh frame's batch was acked after the
    // stale one was handled, so nothing more can come for it.
    let skipped = fleetwatch_inference::metrics::SKIPPED
        .with_label_values(&["stale"])
        .get();
    assert!(skipped >= 1, "skipped frames are counted");
    let again = read_topic(&h.bootstrap, &h.topics.detections, 1, WAIT).await;
    assert_eq!(again.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn grpc_detect_and_get_model() {
    let h = Harness::start(RuntimeKind::Tract, |_| {}).await;
    let mut client = InferenceServiceClient::connect(format!("http://{}", h.running.grpc_addr))
        .await
        .unwrap();
    let r = client
        .detect(DetectRequest {
            image: two_objects(),
            vehicle_id: "drone-9".into(),
            time_unix_us: 42,
            frame_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.width, r.height), (128, 64));
    let b = r.batch.unwrap();
    assert_eq!((b.vehicle_id.as_str(), b.time_unix_us), ("drone-9", 42));
    let names: Vec<&str> = b.detections.iter().map(|d| d.class_name.as_str()).collect();
    assert_eq!(names, vec!["red", "blue"]);

    let err = client
        .detect(DetectRequest {
            image: b"nope".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("image:"), "{}", err.message());
    let err = client
        .detect(DetectRequest {
            image: two_objects(),
            publish: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("vehicle_id:"),
        "{}",
        err.message()
    );
    let err = client
        .detect(DetectRequest {
            image: two_objects(),
            content_type: "image/png".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("content_type:"),
        "{}",
        err.message()
    );

    // publish: answered after Kafka acknowledged the batch.
    client
        .detect(DetectRequest {
            image: two_objects(),
            vehicle_id: "drone-9".into(),
            time_unix_us: 43,
            frame_id: "pub".into(),
            publish: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let out = decode_batches(&read_topic(&h.bootstrap, &h.topics.detections, 1, WAIT).await);
    assert_eq!(
        (out[0].frame_id.as_str(), out[0].detections.len()),
        ("pub", 2)
    );

    let m = client
        .get_model(GetModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (m.name.as_str(), m.version.as_str(), m.runtime.as_str()),
        ("tiny", "t1", "tract")
    );
    assert_eq!((m.input_width, m.input_height), (64, 64));
    assert_eq!(m.class_names, vec!["red", "green", "blue", "dark"]);

    assert_eq!(
        fleetwatch_testkit::grpc_health(h.running.grpc_addr, "fleetwatch.v1.InferenceService")
            .await,
        fleetwatch_testkit::ServingStatus::Serving
    );
    h.stop().await;
}

#[tokio::test]
async fn model_version_switches_without_a_restart() {
    let store = tempfile::tempdir().unwrap();
    let put = |key: &str, bytes: &[u8]| {
        let p = store.path().join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Write then rename, as an uploader should, so a poll never reads half a file.
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    };
    let tiny = std::fs::read(tiny_model()).unwrap();
    put(&model_key("tiny", "v1"), &tiny);
    put(&model_key("tiny", "v2"), &tiny);
    put(&pointer_key("tiny"), b"v1\n");
    let url = format!("file://{}", store.path().display());
    let h = Harness::start(RuntimeKind::Tract, |c| {
        c.model.source = ModelSource::ObjectStore;
        c.model.version = String::new();
        c.model.poll_interval_secs = 1;
        c.object_store.url = url;
    })
    .await;
    let mut client = InferenceServiceClient::connect(format!("http://{}", h.running.grpc_addr))
        .await
        .unwrap();
    let version = |c: &mut InferenceServiceClient<_>| {
        let mut c = c.clone();
        async move {
            c.get_model(GetModelRequest {})
                .await
                .unwrap()
                .into_inner()
                .version
        }
    };
    assert_eq!(version(&mut client).await, "v1");

    put(&pointer_key("tiny"), b"v2");
    wait_for("the switch to v2", WAIT, || {
        let c = client.clone();
        async move {
            let mut c = c;
            let v = c
                .get_model(GetModelRequest {})
                .await
                .ok()?
                .into_inner()
                .version;
            (v == "v2").then_some(())
        }
    })
    .await;
    let now = fleetwatch_common::now_unix_us();
    h.send_frame(&frame("drone-2", now, "after-switch", two_objects()))
        .await;
    let out = decode_batches(&read_topic(&h.bootstrap, &h.topics.detections, 1, WAIT).await);
    assert_eq!(out[0].model_version, "v2");

    // A version that cannot be loaded leaves the running one in place.
    let errors_before = fleetwatch_inference::metrics::MODEL_LOADS
        .with_label_values(&["error"])
        .get();
    put(&pointer_key("tiny"), b"v3");
    wait_for("the failed load of v3", WAIT, || async {
        (fleetwatch_inference::metrics::MODEL_LOADS
            .with_label_values(&["error"])
            .get()
            > errors_before)
            .then_some(())
    })
    .await;
    assert_eq!(version(&mut client).await, "v2");
    h.stop().await;
}
