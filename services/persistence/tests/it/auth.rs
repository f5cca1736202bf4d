//! Who may query: every method refuses a caller without a valid token
//! (UNAUTHENTICATED) before reading the request, and serves a viewer's
//! service token; a revoked token stops working at once.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_proto::v1 as pb;
use tonic::Code;

const METHODS: &[&str] = &[
    "GetLatest",
    "QueryTelemetry",
    "QueryTelemetryBuckets",
    "QueryDetections",
    "QueryFrames",
    "GetObject",
];

async fn call(c: &mut Client, method: &str) -> Code {
    let r = match method {
        "GetLatest" => c
            .get_latest(pb::GetLatestRequest::default())
            .await
            .map(drop),
        "QueryTelemetry" => c
            .query_telemetry(pb::TelemetryRangeRequest::default())
            .await
            .map(drop),
        "QueryTelemetryBuckets" => c
            .query_telemetry_buckets(pb::TelemetryBucketsRequest::default())
            .await
            .map(drop),
        "QueryDetections" => c
            .query_detections(pb::DetectionsRequest::default())
            .await
            .map(drop),
        "QueryFrames" => c.query_frames(pb::FramesRequest::default()).await.map(drop),
        "GetObject" => c
            .get_object(pb::GetObjectRequest::default())
            .await
            .map(drop),
        other => panic!("no such method {other}"),
    };
    match r {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_needs_a_valid_token() {
    let h = Harness::start().await;
    for (what, token) in [
        ("no token", None),
        ("garbage", Some("not-a-token".to_string())),
        ("unknown API token", Some(format!("fwt_{}", "0".repeat(64)))),
        (
            "a JWT signed by no known key",
            Some("eyJhbGciOiJFZERTQSIsImtpZCI6Ingi.e30.AAAA".to_string()),
        ),
    ] {
        let mut c = h.client_with(token).await;
        for m in METHODS {
            assert_eq!(
                call(&mut c, m).await,
                Code::Unauthenticated,
                "{m} with {what}"
            );
        }
    }
    let token = h.service_token("ingest").await;
    let mut c = h.client_with(Some(token.clone())).await;
    for m in METHODS {
        let code = call(&mut c, m).await;
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{m} with a viewer's service token: {code:?}"
        );
    }
    // Revoked: refused on the next call (the listener drops the cached entry).
    sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE service = 'ingest'")
        .execute(&h.db.pool)
        .await
        .unwrap();
    fleetwatch_testkit::wait_for("the revoked token to be refused", WAIT, || {
        let mut c = c.clone();
        async move { (call(&mut c, "GetLatest").await == Code::Unauthenticated).then_some(()) }
    })
    .await;
    h.stop().await;
}
