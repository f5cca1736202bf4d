//! Configuration errors are reported all at once, before any port is bound.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn invalid_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.toml");
    std::fs::write(
        &path,
        r#"
[kafka]
bootstrap_servers = ""
[limits]
max_frame_bytes = 999999999
max_points_per_request = 0
[mqtt]
telemetry_filters = ["fleet/x/telemetry"]
keep_alive_secs = 1
[persistence]
grpc_url = "127.0.0.1:50052"
"#,
    )
    .unwrap();
    let err = fleetwatch_common::load_config::<fleetwatch_ingest::Config>("ingest", Some(&path))
        .unwrap_err()
        .to_string();
    for needle in [
        "kafka.bootstrap_servers",
        "limits.max_frame_bytes",
        "limits.max_points_per_request",
        "mqtt.telemetry_filters",
        "mqtt.keep_alive_secs",
        "persistence.grpc_url",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_fleetwatch-ingest"))
        .arg("--config")
        .arg(&path)
        .env("FLEETWATCH_INGEST__HTTP__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(fleetwatch_common::EXIT_CONFIG));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limits.max_frame_bytes") && stderr.contains("persistence.grpc_url"),
        "{stderr}"
    );
}

#[test]
fn unknown_keys_and_bad_types_are_errors() {
    let err = fleetwatch_testkit::load_config_toml::<fleetwatch_ingest::Config>(
        "ingest",
        "[http]\nlisten = \"not an address\"\n[mqtt]\nhots = \"x\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("hots") || err.contains("listen"), "{err}");
}
