//! Frames through an s3:// object store (testkit's S3 server): the server
//! is SIGKILLed while a frames batch is being uploaded; the batch retries
//! without advancing offsets or writing rows, and once the server is back
//! every frame is stored exactly once with its bytes.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::common::*;
use fleetwatch_proto::v1::{Frame, FramesRequest, GetObjectRequest};
use fleetwatch_testkit::s3::S3Server;
use fleetwatch_testkit::wait_for;

/// Frames in the batch; uploaded one at a time, so the batch takes long
/// enough for the test to see its first objects land and kill the server.
const N: usize = 80;
const FRAME_BYTES: usize = 256 * 1024;
const PREFIX: &str = "fleet/test";

fn frame_data(i: usize) -> Vec<u8> {
    (0..FRAME_BYTES)
        .map(|j| ((j * 31 + i * 7) % 251) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_mid_batch_loses_nothing_and_does_not_advance() {
    let mut s3 = S3Server::start().await;
    let store = s3.object_store_config(PREFIX);
    let h = Harness::start_with(move |c, _| {
        c.object_store = store;
        // One failed request surfaces at once: the consumer's own retries
        // (shortened here) are what ride out the outage.
        c.object_store.max_retries = 1;
        c.object_store.retry_timeout_ms = 1_000;
        c.writer.object_store_concurrency = 1;
        // All N frames in one batch.
        c.kafka.consumer.batch_max_records = N;
        c.kafka.consumer.batch_max_wait_ms = 60_000;
        c.kafka.consumer.retry_max_ms = 500;
    })
    .await;
    let group = h.group("frames");
    let t0 = time_ago(600);
    let time = |i: usize| t0 + i as i64 * 1_000_000;
    for i in 0..N {
        h.send_frame(&Frame {
            vehicle_id: "drone-s3".into(),
            time_unix_us: time(i),
            frame_id: format!("f-{i}"),
            content_type: "image/jpeg".into(),
            data: frame_data(i),
            width: 640,
            height: 480,
            received_unix_us: time(i),
        })
        .await;
    }

    // The outage starts as soon as the batch's first object is stored. A
    // tight poll rather than wait_for's 50 ms: the uploads are quick.
    let deadline = Instant::now() + WAIT;
    while s3.stored_keys(PREFIX).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no frame reached the S3 server within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    s3.kill();
    let stored = s3.stored_keys(PREFIX).len();
    eprintln!("object store killed after {stored} of {N} frames");
    assert!(
        stored > 0 && stored < N,
        "the outage should start in the middle of the batch, but {stored} of {N} frames were stored"
    );

    // Stops early on stored offsets too, so a regression fails with the
    // message below instead of a time-out.
    let m = wait_for("failed attempts of the frames batch", WAIT, || async {
        let m = h.metrics().await;
        (metric(&m, "fleetwatch_kafka_transient_failures_total", &group) >= 3.0
            || metric(&m, "fleetwatch_kafka_records_consumed_total", &group) > 0.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        metric(&m, "fleetwatch_kafka_records_consumed_total", &group),
        0.0,
        "offsets advanced while the object store was down"
    );
    assert!(
        metric(
            &m,
            "fleetwatch_persistence_transient_write_failures_total",
            "kind=\"frames\""
        ) >= 3.0
    );
    // Bytes first, rows second: no row may point at a missing object.
    assert_eq!(h.scalar("SELECT count(*) FROM frames").await, 0);

    s3.restart().await;
    h.wait_count(
        "every frame indexed after the outage",
        "SELECT count(*) FROM frames",
        N as i64,
    )
    .await;
    let m = wait_for("the batch's offsets stored", WAIT, || async {
        let m = h.metrics().await;
        (metric(&m, "fleetwatch_kafka_records_consumed_total", &group) == N as f64).then_some(m)
    })
    .await;
    assert_eq!(
        metric(&m, "fleetwatch_kafka_dead_lettered_total", &group),
        0.0
    );
    assert_eq!(s3.stored_keys(PREFIX).len(), N);

    // Every frame reads back through persistence's API with its bytes.
    let mut c = h.client().await;
    let frames = c
        .query_frames(FramesRequest {
            vehicle_id: "drone-s3".into(),
            from_unix_us: time(0),
            to_unix_us: time(N),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .frames;
    assert_eq!(frames.len(), N);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.time_unix_us, time(i));
        assert_eq!(f.size_bytes, FRAME_BYTES as u64);
        let o = c
            .get_object(GetObjectRequest {
                key: f.object_key.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(o.data == frame_data(i), "frame {i}: wrong bytes");
    }
    h.stop().await;
}
