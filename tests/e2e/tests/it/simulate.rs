//! End to end: `fleetctl simulate` against the real services produces
//! telemetry, frames (stored as objects) and detections that are queryable.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use fleetwatch_e2e::Stack;
use fleetwatch_testkit as tk;

#[tokio::test]
async fn simulated_fleet_is_queryable_with_frames_and_detections() {
    let bootstrap = tk::shared_bootstrap().await;
    let stack = Stack::start(&bootstrap).await;
    let tokens = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let db = stack.db.url.clone();
        let http = stack.http("");
        let grpc = format!("http://127.0.0.1:{}", stack.ingest_grpc);
        let tokens_file = tokens.path().join("tokens.json");
        move || {
            Command::new(tk::binary("fleetctl"))
                .args([
                    "--database-url",
                    &db,
                    "simulate",
                    "--register",
                    "--prefix",
                    "e2esim",
                    "--vehicles",
                    "3",
                ])
                .args([
                    "--rate",
                    "5",
                    "--batch",
                    "5",
                    "--frames-fps",
                    "2",
                    "--frame-size",
                    "320x240",
                    "--detections",
                ])
                .args([
                    "--duration",
                    "4",
                    "--ingest-url",
                    &http,
                    "--grpc-url",
                    &grpc,
                ])
                .arg("--tokens-file")
                .arg(&tokens_file)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate failed: {stderr}");

    // ~3 vehicles x 5 points/s x 4 s, all acknowledged, so all must arrive.
    let pool = stack.db.pool.clone();
    let n = tk::wait_for("simulated telemetry in postgres", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let (vehicles, points): (i64, i64) = sqlx::query_as(
                "SELECT count(DISTINCT vehicle_id), count(*) FROM telemetry WHERE vehicle_id LIKE 'e2esim-%'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (vehicles == 3 && points >= 45).then_some(points)
        }
    })
    .await;
    assert!(n <= 3 * 5 * 5, "no more points than were sent: {n}");

    let frames = tk::wait_for("stored frames", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT object_key FROM frames WHERE vehicle_id LIKE 'e2esim-%'",
            )
            .fetch_all(&pool)
            .await
            .ok()?;
            (keys.len() >= 3).then_some(keys)
        }
    })
    .await;
    for key in &frames {
        let bytes = std::fs::read(stack.objects.path().join(key)).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8], "{key} is a JPEG");
    }
    // The simulator reports its object on ~30% of ~24 frames (P(none) < 0.1%).
    let with_detections = stack
        .count("SELECT count(*) FROM detections WHERE drone_id LIKE 'e2esim-%'")
        .await;
    assert!(with_detections > 0, "detections from the simulated fleet");
    let bad = stack
        .count("SELECT count(*) FROM detections WHERE drone_id LIKE 'e2esim-%' AND NOT (x_min >= 0 AND x_max <= 1 AND x_min < x_max)")
        .await;
    assert_eq!(bad, 0, "boxes are normalised");
}
