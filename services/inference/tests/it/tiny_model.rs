//! The committed tiny model through the whole pipeline (decode, letterbox,
//! micro-batched inference, NMS, mapping back), on both runtimes: frames with
//! known objects give exactly the predicted boxes.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_inference::config::RuntimeKind;
use fleetwatch_inference::model;
use fleetwatch_inference::pipeline::{DetectError, WhenFull};
use fleetwatch_inference::preprocess::FrameError;

async fn known_boxes(runtime: RuntimeKind) {
    let p = pipeline(runtime, |_| {}).await;
    let d = p.detect(two_objects(), WhenFull::Wait).await.unwrap();
    assert_eq!((d.width, d.height), (128, 64));
    assert_eq!(d.model.version, "t1");
    let got = boxes(&d);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "red");
    assert_box(got[0].1, RED_BOX);
    assert_eq!(got[1].0, "blue");
    assert_box(got[1].1, BLUE_BOX);
    assert!(d.found.iter().all(|f| f.confidence > 0.99), "{:?}", d.found);

    // A blank frame (white, grey padding) yields nothing.
    let blank = p.detect(jpeg(128, 64, &[]), WhenFull::Wait).await.unwrap();
    assert!(blank.found.is_empty(), "{:?}", blank.found);
}

#[tokio::test]
async fn tract_finds_exactly_the_known_boxes() {
    known_boxes(RuntimeKind::Tract).await;
}

#[tokio::test]
async fn ort_finds_exactly_the_known_boxes() {
    known_boxes(RuntimeKind::Ort).await;
}

/// A red rectangle over cell (3,2) and three quarters of cell (3,3): both
/// anchors fire (0.99995 and ~0.993), their boxes overlap with IoU 1/3.
fn overlapping() -> Vec<u8> {
    jpeg(128, 64, &[(32, 16, 60, 32, RED)])
}

async fn nms(runtime: RuntimeKind) {
    let loose = pipeline(runtime, |c| c.iou_threshold = 0.45).await;
    let d = loose.detect(overlapping(), WhenFull::Wait).await.unwrap();
    assert_eq!(
        boxes(&d).len(),
        2,
        "IoU 1/3 < 0.45 keeps both: {:?}",
        d.found
    );

    let strict = pipeline(runtime, |c| c.iou_threshold = 0.3).await;
    let d = strict.detect(overlapping(), WhenFull::Wait).await.unwrap();
    let got = boxes(&d);
    assert_eq!(got.len(), 1, "IoU 1/3 > 0.3 keeps the better one: {got:?}");
    assert_box(got[0].1, RED_BOX);
}

#[tokio::test]
async fn tract_nms_suppresses_overlaps_of_a_class() {
    nms(RuntimeKind::Tract).await;
}

#[tokio::test]
async fn ort_nms_suppresses_overlaps_of_a_class() {
    nms(RuntimeKind::Ort).await;
}

/// Frames submitted together are batched and each gets its own result.
async fn batched(runtime: RuntimeKind) {
    let p = pipeline(runtime, |c| {
        c.max_batch = 4;
        c.max_wait_ms = 50;
    })
    .await;
    let frames: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                two_objects()
            } else {
                jpeg(128, 64, &[])
            }
        })
        .collect();
    let results =
        futures::future::join_all(frames.into_iter().map(|f| p.detect(f, WhenFull::Wait))).await;
    for (i, r) in results.into_iter().enumerate() {
        let d = r.unwrap();
        assert_eq!(d.found.len(), if i % 2 == 0 { 2 } else { 0 }, "frame {i}");
    }
}

#[tokio::test]
async fn tract_batches_frames() {
    batched(RuntimeKind::Tract).await;
}

#[tokio::test]
async fn ort_batches_frames() {
    batched(RuntimeKind::Ort).await;
}

/// Several model instances (`model.sessions`), one inference thread each,
/// share the queue: every frame still gets its own, correct result.
async fn parallel_instances(runtime: RuntimeKind) {
    let mut mc = model_config(runtime);
    mc.sessions = 3;
    let loader = fleetwatch_inference::source::ModelLoader::new(mc, None);
    let model = loader.load(&loader.marker().await.unwrap()).await.unwrap();
    assert_eq!(model.sessions(), 3);
    let pc = fleetwatch_inference::config::PipelineConfig {
        max_batch: 2,
        max_wait_ms: 20,
        ..Default::default()
    };
    let p = fleetwatch_inference::pipeline::Pipeline::start(model, &pc);
    let results = futures::future::join_all((0..12).map(|i| {
        let frame = if i % 3 == 0 {
            two_objects()
        } else {
            jpeg(128, 64, &[])
        };
        p.detect(frame, WhenFull::Wait)
    }))
    .await;
    for (i, r) in results.into_iter().enumerate() {
        let d = r.unwrap();
        if i % 3 == 0 {
            let got = boxes(&d);
            assert_eq!(got.len(), 2, "frame {i}: {got:?}");
            assert_box(got[0].1, RED_BOX);
            assert_box(got[1].1, BLUE_BOX);
        } else {
            assert!(d.found.is_empty(), "frame {i}: {:?}", d.found);
        }
    }
}

#[tokio::test]
async fn tract_instances_share_the_queue() {
    parallel_instances(RuntimeKind::Tract).await;
}

#[tokio::test]
async fn ort_instances_share_the_queue() {
    parallel_instances(RuntimeKind::Ort).await;
}

#[tokio::test]
async fn bad_frames_are_refused_with_the_reason() {
    let p = pipeline(RuntimeKind::Tract, |c| c.max_frame_pixels = 200 * 100).await;
    let good = two_objects();
    type Case = (Vec<u8>, fn(&FrameError) -> bool);
    let cases: Vec<Case> = vec![
        (vec![], |e| matches!(e, FrameError::Empty)),
        (b"not a jpeg".to_vec(), |e| matches!(e, FrameError::NotJpeg)),
        (good[..good.len() / 2].to_vec(), |e| {
            matches!(e, FrameError::Decode(_))
        }),
        (jpeg(300, 100, &[]), |e| {
            matches!(e, FrameError::TooManyPixels { .. })
        }),
    ];
    for (data, check) in cases {
        match p.detect(data, WhenFull::Wait).await {
            Err(DetectError::Frame(e)) => assert!(check(&e), "unexpected reason {e}"),
            other => panic!("expected a frame error, got {other:?}"),
        }
    }
    // Still working afterwards.
    assert_eq!(p.detect(good, WhenFull::Wait).await.unwrap().found.len(), 2);
}

#[test]
fn tiny_model_interface_and_names() {
    let bytes = std::fs::read(tiny_model()).unwrap();
    let info = model::inspect(&bytes, None).unwrap();
    assert_eq!((info.width, info.height, info.rows), (64, 64, 8));
    assert_eq!(info.anchors, Some(64));
    assert_eq!(info.names, vec!["red", "green", "blue", "dark"]);
    let renamed = model::inspect(
        &bytes,
        Some(vec!["a".into(), "b".into(), "c".into(), "d".into()]),
    )
    .unwrap();
    assert_eq!(renamed.names[0], "a");
    let err = model::inspect(&bytes, Some(vec!["a".into()])).unwrap_err();
    assert!(err.to_string().contains("1 class names"), "{err}");
    let err = model::inspect(b"\x08\x07garbage", None).unwrap_err();
    assert!(
        matches!(
            err,
            model::ModelError::NotOnnx(_) | model::ModelError::Layout(_)
        ),
        "{err}"
    );
}

#[test]
fn ort_without_a_library_says_how_to_get_one() {
    let err = model::ort_dylib_path(Some(std::path::Path::new("/nonexistent/libonnxruntime.so")))
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}
