//! End to end: a point sent over each protocol ends up in Postgres exactly
//! once and is queryable; a crashed persistence loses and duplicates nothing;
//! a broker outage gives 503 and loses nothing acknowledged.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fleetwatch_e2e::Stack;
use fleetwatch_proto::v1::ingest_service_client::IngestServiceClient;
use fleetwatch_proto::v1::persistence_query_client::PersistenceQueryClient;
use fleetwatch_proto::v1::{TelemetryChunk, TelemetryPoint, TelemetryRangeRequest};
use fleetwatch_testkit as tk;
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

/// An RFC 3339 time `offset_ms` after a whole second about a minute ago.
fn ts(offset_ms: i64) -> String {
    let base = chrono::Utc::now().timestamp() * 1000 - 60_000;
    rfc3339_ms(base + offset_ms)
}

fn rfc3339_ms(t_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn post_point(
    client: &reqwest::Client,
    stack: &Stack,
    token: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    client
        .post(stack.http("/api/v1/telemetry"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_protocol_lands_exactly_once_and_is_queryable() {
    let bootstrap = tk::shared_bootstrap().await;
    let stack = Stack::start(&bootstrap).await;
    let token = stack.add_vehicle("e2e-1").await;
    let client = reqwest::Client::new();
    let count = "SELECT count(*) FROM telemetry WHERE vehicle_id = 'e2e-1'";

    // HTTP
    let http_point = json!({"vehicle_id": "e2e-1", "timestamp": ts(0), "lat": 28.7, "lon": 77.1, "alt": 120.5, "battery": 72, "rssi": -71});
    // The caller's W3C trace continues through ingest into the Kafka record.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client
        .post(stack.http("/api/v1/telemetry"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&http_point)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let records = tk::read_topic(&stack.bootstrap, &stack.topics.telemetry, 1, MINUTE).await;
    let tp = records[0]
        .header("traceparent")
        .expect("traceparent header");
    assert!(
        tp.starts_with(&format!("00-{trace_id}-")),
        "trace continues: {tp}"
    );

    // gRPC client stream
    let mut grpc = IngestServiceClient::connect(format!("http://127.0.0.1:{}", stack.ingest_grpc))
        .await
        .unwrap();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let chunk = TelemetryChunk {
        points: vec![TelemetryPoint {
            vehicle_id: "e2e-1".into(),
            time_unix_us: (now_us / 1_000_000) * 1_000_000 - 59_000_000,
            lat: Some(28.71),
            lon: Some(77.11),
            ..Default::default()
        }],
    };
    let mut req = tonic::Request::new(tokio_stream::iter(vec![chunk]));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let ack = grpc.stream_telemetry(req).await.unwrap().into_inner();
    assert_eq!(ack.accepted, 1);

    // MQTT (QoS 1): wait for the broker's PUBACK.
    // The vehicle logs in with its id and token.
    let mut opts = stack.mqtt.options("e2e-1", &token);
    opts.set_keep_alive(Duration::from_secs(5));
    let (mqtt, mut events) = rumqttc::AsyncClient::new(opts, 10);
    let payload = json!({"drone_id": "e2e-1", "timestamp": ts(2_000), "lat": 28.72, "lon": 77.12})
        .to_string();
    mqtt.publish(
        "fleet/e2e-1/telemetry",
        rumqttc::QoS::AtLeastOnce,
        false,
        payload,
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                events.poll().await.unwrap()
            {
                break;
            }
        }
    })
    .await
    .unwrap();

    stack.wait_count(count, 3, MINUTE).await;

    // A vehicle retrying the same point (e.g. after a timeout) changes nothing;
    // a later point on the same key proves the retry was processed first.
    assert_eq!(
        post_point(&client, &stack, &token, http_point)
            .await
            .status(),
        200
    );
    let last = json!({"vehicle_id": "e2e-1", "timestamp": ts(3_000), "lat": 28.73, "lon": 77.13, "battery": 70});
    assert_eq!(
        post_point(&client, &stack, &token, last).await.status(),
        200
    );
    stack.wait_count(count, 4, MINUTE).await;

    // Custom metric kept; latest state readable through the seed's endpoint.
    let rssi: Option<f64> = sqlx::query_scalar("SELECT (metrics->>'rssi')::float8 FROM telemetry WHERE vehicle_id = 'e2e-1' AND metrics ? 'rssi'")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(rssi, Some(-71.0));
    let latest: serde_json::Value = client
        .get(stack.http("/api/latest"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = latest.to_string();
    assert!(
        text.contains("28.73") && text.contains("77.13"),
        "latest should be the newest point: {text}"
    );

    // And through the persistence query API, as an operator's automation.
    let token = stack.admin_token().await;
    let addr = format!("127.0.0.1:{}", stack.persistence_grpc)
        .parse()
        .unwrap();
    let mut q = PersistenceQueryClient::with_interceptor(
        tk::grpc_channel(addr).await,
        tk::Bearer(Some(token)),
    );
    let range = q
        .query_telemetry(TelemetryRangeRequest {
            vehicle_id: "e2e-1".into(),
            from_unix_us: 0,
            to_unix_us: (chrono::Utc::now().timestamp() + 3600) * 1_000_000,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(range.points.len(), 4);
    assert!(
        range
            .points
            .windows(2)
            .all(|w| w[0].time_unix_us < w[1].time_unix_us),
        "oldest first"
    );
}

#[tokio::test]
async fn persistence_sigkill_mid_stream_loses_and_duplicates_nothing() {
    let bootstrap = tk::shared_bootstrap().await;
    let mut stack = Stack::start(&bootstrap).await;
    let token = stack.add_vehicle("e2e-crash").await;
    let client = reqwest::Client::new();
    let count = "SELECT count(*) FROM telemetry WHERE vehicle_id = 'e2e-crash'";

    // 100 requests x 100 points, sent while persistence is killed and restarted.
    let (requests, per_request) = (100i64, 100i64);
    let url = stack.http("/api/v1/telemetry");
    let sender = {
        let client = client.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                - 3_600;
            for r in 0..requests {
                let body: String = (0..per_request)
                    .map(|i| {
                        let n = r * per_request + i;
                        // n milliseconds after base, as RFC 3339 (base is whole seconds).
                        let t = base * 1000 + n;
                        format!(
                            "{{\"vehicle_id\":\"e2e-crash\",\"timestamp\":\"{}\",\"lat\":10.0,\"lon\":20.0,\"seq\":{n}}}\n",
                            rfc3339_ms(t)
                        )
                    })
                    .collect();
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
            }
        })
    };

    let pool = stack.db.pool.clone();
    tk::wait_for("some rows before the crash", MINUTE, || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.ok()?;
            (n > 0).then_some(())
        }
    })
    .await;
    stack.persistence.as_mut().unwrap().kill9();
    let at_crash = stack.count(count).await;
    stack.start_persistence().await;
    sender.await.unwrap();
    stack
        .wait_count(count, requests * per_request, Duration::from_secs(120))
        .await;
    let distinct = stack.count("SELECT count(DISTINCT (metrics->>'seq')) FROM telemetry WHERE vehicle_id = 'e2e-crash'").await;
    assert_eq!(
        distinct,
        requests * per_request,
        "every sequence number exactly once (crash at {at_crash} rows)"
    );
}

#[tokio::test]
async fn broker_outage_gives_503_and_loses_nothing_acknowledged() {
    let mut broker = tk::OwnedBroker::start().await;
    let mut stack = Stack::start(&broker.bootstrap()).await;
    let token = stack.add_vehicle("e2e-outage").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let count = "SELECT count(*) FROM telemetry WHERE vehicle_id = 'e2e-outage'";
    let base = chrono::Utc::now().timestamp_millis() - 60_000;
    let point = |i: i64| json!({"vehicle_id": "e2e-outage", "timestamp": rfc3339_ms(base + i * 10), "lat": 1.0, "lon": 2.0});

    let mut acked = 0;
    for i in 0..5 {
        assert_eq!(
            post_point(&client, &stack, &token, point(i)).await.status(),
            200
        );
        acked += 1;
    }

    broker.kill();
    let r = post_point(&client, &stack, &token, point(100)).await;
    assert_eq!(r.status(), 503);
    let retry_after: u64 = r
        .headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    broker.restart().await;
    // Vehicles retry after Retry-After; once the producer reconnected it is 200 again.
    let mut i = 200;
    tk::wait_for("ingest to accept again", MINUTE, || {
        i += 1;
        let fut = post_point(&client, &stack, &token, point(i));
        async move { (fut.await.status() == 200).then_some(()) }
    })
    .await;
    acked += 1;
    // Every acknowledged point is there; the one refused with 503 may be too
    // (its vehicle would resend it anyway), nothing else.
    let pool = stack.db.pool.clone();
    tk::wait_for("all acknowledged points", MINUTE, || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.ok()?;
            (n >= acked).then_some(n)
        }
    })
    .await;
    let before: Vec<String> = (0..5)
        .map(|i| point(i)["timestamp"].as_str().unwrap().to_string())
        .collect();
    let survived: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM telemetry WHERE vehicle_id = 'e2e-outage' AND time = ANY($1::text[]::timestamptz[])",
    )
    .bind(&before)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(
        survived, 5,
        "the points acknowledged before the outage survive it"
    );
    stack
        .ingest
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20));
    stack
        .persistence
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20));
}
