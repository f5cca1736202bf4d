//! `fleetctl incidents` and the incidents scenario without a token: a clear
//! error saying how to get one, before anything is contacted.
#![allow(clippy::unwrap_used)]

use crate::common::{fleetctl, stderr};

#[tokio::test]
async fn incidents_without_a_token_say_how_to_get_one() {
    let out = fleetctl(
        &[
            "incidents",
            "--incident-grpc-url",
            "http://127.0.0.1:9",
            "list",
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--token or set FLEETWATCH_TOKEN"), "{err}");
    assert!(err.contains("fleetctl tokens create"), "{err}");
}
