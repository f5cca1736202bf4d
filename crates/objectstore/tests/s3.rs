//! The s3:// path of `open` against a real S3 server (testkit's versitygw):
//! frames, clip frames and models round-trip under the configured prefix,
//! and the errors callers branch on (NotFound, refused credentials) come
//! back as they do from AWS.
#![allow(clippy::unwrap_used)]

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use fleetwatch_objectstore::{content_type_for, frame_key, open};
use fleetwatch_testkit::s3::S3Server;

/// `len` bytes that differ per `seed` (xorshift), so a mixed-up object
/// cannot pass for another.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn put_get(store: &dyn ObjectStore, key: &str, data: &[u8]) {
    let path = Path::parse(key).unwrap();
    store
        .put(&path, PutPayload::from(data.to_vec()))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    let got = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert!(
        got == data,
        "{key}: read back {} bytes differing from the {} written",
        got.len(),
        data.len()
    );
    assert_eq!(store.head(&path).await.unwrap().size, data.len());
}

#[tokio::test]
async fn frames_clips_and_models_round_trip() {
    let s3 = S3Server::start().await;
    let (store, shown) = open(&s3.object_store_config("fleet/prod")).unwrap();
    assert_eq!(shown, s3.url("fleet/prod"));

    // 2026-03-04T05:06:07.000008Z, the layout persistence and incident use.
    let us = 1_772_600_767_000_008_i64;
    let frame = frame_key("drone-1", us, "image/jpeg").unwrap();
    let png = frame_key("drone-1", us + 1, "image/png").unwrap();
    let clip_frame = format!("drone-1/2026/03/04/clip_{us}/frame_{us}.jpg");
    // The inference model source: a version's model and the pointer to it.
    // 6 MiB: more than S3's 5 MiB multipart threshold, still one PUT.
    let model = "models/yolov8n/2026-03-01/model.onnx";
    let pointer = "models/yolov8n/current";
    let objects: Vec<(String, Vec<u8>)> = vec![
        (frame.clone(), bytes(1, 300 * 1024)),
        (png.clone(), bytes(2, 64 * 1024)),
        (clip_frame.clone(), bytes(3, 300 * 1024)),
        (model.to_string(), bytes(4, 6 * 1024 * 1024)),
        (pointer.to_string(), b"2026-03-01\n".to_vec()),
    ];
    for (key, data) in &objects {
        put_get(store.as_ref(), key, data).await;
    }
    // A redelivered frame overwrites its object with the same bytes.
    put_get(store.as_ref(), &frame, &objects[0].1).await;
    assert_eq!(content_type_for(&clip_frame), "image/jpeg");

    // The prefix is a real key prefix in the bucket, not a second bucket.
    let mut want: Vec<String> = objects
        .iter()
        .map(|(k, _)| format!("fleet/prod/{k}"))
        .collect();
    want.sort();
    assert_eq!(s3.stored_keys("fleet/prod"), want);
    let (bucket_root, _) = open(&s3.object_store_config("")).unwrap();
    let mut listed: Vec<String> = bucket_root
        .list(Some(&Path::from("fleet/prod/models")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            format!("fleet/prod/{model}"),
            format!("fleet/prod/{pointer}")
        ]
    );
    let got = bucket_root
        .get(&Path::from(format!("fleet/prod/{model}")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == objects[3].1);
}

#[tokio::test]
async fn missing_keys_and_bad_credentials() {
    let s3 = S3Server::start().await;
    let (store, _) = open(&s3.object_store_config("p")).unwrap();
    // persistence's GetObject answers NOT_FOUND only for this variant.
    let err = store
        .get(&Path::from("drone-1/2026/03/04/frame_1.jpg"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::NotFound { .. }),
        "{err:?}"
    );

    let mut wrong = s3.object_store_config("p");
    wrong.secret_access_key = "not-the-secret".into();
    wrong.max_retries = 0;
    let (store, _) = open(&wrong).unwrap();
    let err = store
        .put(&Path::from("k"), PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert!(s3.stored_keys("p").is_empty());

    let mut zero = s3.object_store_config("p");
    zero.timeout_ms = 0;
    let err = open(&zero).err().unwrap();
    assert!(err.to_string().contains("timeout_ms"), "{err}");
}
