//! Database outages: writes retry without advancing offsets and land exactly
//! once when the database is back; queries answer UNAVAILABLE meanwhile;
//! readiness follows the database.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_proto::v1::TelemetryRangeRequest;
use fleetwatch_testkit::{TcpProxy, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_retries_and_loses_nothing() {
    let pg = fleetwatch_testkit::pg_server_url();
    let pg_addr = pg
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let proxy = TcpProxy::start(&pg_addr).await;
    let proxy_addr = proxy.addr();
    let h = Harness::start_with(move |c, db| {
        c.database.url = format!("postgres://postgres@{proxy_addr}/{}", db.name).into();
        c.database.connect_timeout_ms = 1_000;
    })
    .await;
    let group = h.group("telemetry");
    let admin = h.running.admin_addr;
    let ready = |want: bool| async move {
        wait_for("readiness", WAIT, || async move {
            let s = reqwest::get(format!("http://{admin}/readyz"))
                .await
                .ok()?
                .status();
            (s.is_success() == want).then_some(())
        })
        .await
    };
    ready(true).await;

    proxy.set_up(false);
    let t = time_ago(900);
    let points: Vec<_> = (0..50).map(|i| point(t + i * 1_000_000)).collect();
    h.send_telemetry(&batch("drone-t", points[..25].to_vec()))
        .await;
    h.send_telemetry(&batch("drone-t", points[25..].to_vec()))
        .await;

    let m = wait_for("transient failures", WAIT, || async {
        let m = h.metrics().await;
        (metric(&m, "fleetwatch_kafka_transient_failures_total", &group) >= 2.0).then_some(m)
    })
    .await;
    assert_eq!(
        metric(&m, "fleetwatch_kafka_records_consumed_total", &group),
        0.0,
        "offsets advanced while down"
    );
    assert!(
        metric(
            &m,
            "fleetwatch_persistence_transient_write_failures_total",
            "kind=\"telemetry\""
        ) >= 2.0
    );
    assert_eq!(
        h.scalar("SELECT count(*) FROM telemetry WHERE vehicle_id = 'drone-t'")
            .await,
        0
    );
    ready(false).await;
    let mut c = h.client().await;
    let err = c
        .query_telemetry(TelemetryRangeRequest {
            vehicle_id: "drone-t".into(),
            from_unix_us: t,
            to_unix_us: t + 60_000_000,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    proxy.set_up(true);
    h.wait_count(
        "all points after the outage",
        "SELECT count(*) FROM telemetry WHERE vehicle_id = 'drone-t'",
        50,
    )
    .await;
    ready(true).await;
    let m = wait_for("offsets stored", WAIT, || async {
        let m = h.metrics().await;
        (metric(&m, "fleetwatch_kafka_records_consumed_total", &group) == 2.0).then_some(m)
    })
    .await;
    assert_eq!(
        metric(&m, "fleetwatch_kafka_dead_lettered_total", &group),
        0.0
    );
    assert_eq!(
        h.scalar("SELECT count(DISTINCT time) FROM telemetry WHERE vehicle_id = 'drone-t'")
            .await,
        50
    );
    let latest: i64 = h
        .scalar("SELECT (extract(epoch FROM time) * 1000000)::int8 FROM vehicle_latest WHERE vehicle_id = 'drone-t'")
        .await;
    assert_eq!(latest, t + 49_000_000);
    let r = c
        .query_telemetry(TelemetryRangeRequest {
            vehicle_id: "drone-t".into(),
            from_unix_us: t,
            to_unix_us: t + 60_000_000,
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().points.len(), 50);
    h.stop().await;
}

/// A half-alive pod is worse than a dead one: when the gRPC server dies, the
/// whole service drains and ends with an error naming it (`run` returns it,
/// so the process exits non-zero), instead of consuming on without an API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_grpc_server_stops_the_service_non_zero() {
    let h = Harness::start().await;
    let admin = h.running.admin_addr;
    wait_for("readiness", WAIT, || async move {
        reqwest::get(format!("http://{admin}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
            .then_some(())
    })
    .await;
    assert!(h.running.tasks.abort("grpc server"));
    let err = tokio::time::timeout(WAIT, h.running.handle)
        .await
        .expect("the service stops by itself")
        .unwrap()
        .expect_err("a dead gRPC server is a failure");
    let text = format!("{err:#}");
    assert!(
        text.contains("task `grpc server` stopped unexpectedly"),
        "{text}"
    );
    assert!(!h.running.readiness.is_ready());
    assert!(
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .is_err(),
        "the admin server is drained too"
    );
    assert!(
        !h.shutdown.is_cancelled(),
        "nobody asked it to stop: it stopped on its own"
    );
}
