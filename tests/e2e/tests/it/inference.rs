//! End to end: frames from `fleetctl simulate` go through ingest, the
//! inference service (the committed tiny model on onnxruntime) and
//! persistence, and come back as detections in Postgres carrying the model
//! name and version and the key of the stored frame. Then inference is
//! killed (SIGKILL) and restarted while frames keep coming: every frame
//! stored still gets its detections, and none is stored twice.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use fleetwatch_e2e::Stack;
use fleetwatch_testkit as tk;

fn simulate(stack: &Stack, prefix: &str, secs: u32) -> std::process::Child {
    let tokens = std::env::temp_dir().join(format!("tokens-{}.json", tk::unique_suffix()));
    Command::new(tk::binary("fleetctl"))
        .args(["--database-url", &stack.db.url, "simulate", "--register"])
        .args(["--prefix", prefix, "--vehicles", "2", "--rate", "1"])
        .args(["--frames-fps", "4", "--frame-size", "320x240"])
        .args([
            "--duration",
            &secs.to_string(),
            "--ingest-url",
            &stack.http(""),
        ])
        .arg("--grpc-url")
        .arg(format!("http://127.0.0.1:{}", stack.ingest_grpc))
        .arg("--tokens-file")
        .arg(tokens)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn simulated_frames_come_back_as_detections_with_the_model_version() {
    let bootstrap = tk::shared_bootstrap().await;
    let mut stack = Stack::new(&bootstrap).await;
    stack.start_persistence().await;
    stack.start_inference("ort", "e2e-v1").await;
    stack.start_ingest().await;

    let sim = simulate(&stack, "e2einf", 3);
    let out = tokio::task::spawn_blocking(move || sim.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pool = stack.db.pool.clone();
    let frames: i64 = tk::wait_for("stored frames", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM frames WHERE vehicle_id LIKE 'e2einf-%'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n >= 4).then_some(n)
        }
    })
    .await;
    // Every stored frame gets detections: the tiny model's `dark` class
    // fires on the black time stamp the simulator burns into each frame.
    tk::wait_for("detections of every frame", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT (drone_id, timestamp)) FROM detections
                 WHERE drone_id LIKE 'e2einf-%' AND source = 'inference'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (n >= frames).then_some(())
        }
    })
    .await;
    let (model, version, bad_links, bad_boxes): (String, String, i64, i64) = sqlx::query_as(
        "SELECT min(d.model_name), min(d.model_version),
                count(*) FILTER (WHERE f.object_key IS NULL),
                count(*) FILTER (WHERE NOT (d.x_min >= 0 AND d.x_max <= 1 AND d.x_min < d.x_max
                                        AND d.y_min >= 0 AND d.y_max <= 1 AND d.y_min < d.y_max))
         FROM detections d
         LEFT JOIN frames f ON f.vehicle_id = d.drone_id AND f.object_key = d.clip_s3_key
         WHERE d.drone_id LIKE 'e2einf-%' AND d.source = 'inference'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!((model.as_str(), version.as_str()), ("tiny", "e2e-v1"));
    assert_eq!(
        bad_links, 0,
        "every detection links to its stored frame by key"
    );
    assert_eq!(bad_boxes, 0, "boxes are normalised");
}

#[tokio::test]
async fn inference_killed_mid_stream_loses_and_duplicates_nothing() {
    let bootstrap = tk::shared_bootstrap().await;
    let mut stack = Stack::new(&bootstrap).await;
    stack.start_persistence().await;
    stack.start_inference("tract", "e2e-kill").await;
    stack.start_ingest().await;

    let sim = simulate(&stack, "e2ekill", 6);
    let pool = stack.db.pool.clone();
    tk::wait_for("first detections", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM detections WHERE drone_id LIKE 'e2ekill-%'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (n > 0).then_some(())
        }
    })
    .await;
    stack.inference.as_mut().unwrap().kill9();
    stack.start_inference("tract", "e2e-kill").await;
    let out = tokio::task::spawn_blocking(move || sim.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let frames: i64 = stack
        .count("SELECT count(*) FROM frames WHERE vehicle_id LIKE 'e2ekill-%'")
        .await;
    assert!(frames >= 8, "frames stored: {frames}");
    tk::wait_for("detections of every frame after the restart", Duration::from_secs(90), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT (drone_id, timestamp)) FROM detections WHERE drone_id LIKE 'e2ekill-%'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (n >= frames).then_some(())
        }
    })
    .await;
    let dup: i64 = stack
        .count(
            "SELECT count(*) FROM (SELECT 1 FROM detections WHERE drone_id LIKE 'e2ekill-%'
             GROUP BY drone_id, timestamp, frame_id, model_name, model_version, seq HAVING count(*) > 1) d",
        )
        .await;
    assert_eq!(dup, 0, "no detection stored twice");
}
