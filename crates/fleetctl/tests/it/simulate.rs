//! `fleetctl simulate` against a fake ingest (HTTP, gRPC) and the real
//! Mosquitto and Postgres. Simulating against the real ingest is covered by
//! the end-to-end tests.
//! One file of ~600 lines: every transport and flag of one command, sharing
//! the fake ingest of `common`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{FakeIngest, Mode, fleetctl, stderr, stdout, write_tokens};
use fleetwatch_proto::v1::ingest_service_server::{IngestService, IngestServiceServer};
use fleetwatch_proto::v1::{DetectionBatch, Frame, IngestAck, TelemetryChunk, TelemetryPoint};
use fleetwatch_testkit::{TestDb, unique_suffix, wait_for};
use serde_json::Value;
use tonic::{Request, Response, Status, Streaming};

fn time_us(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

#[tokio::test]
async fn http_honours_retry_after_and_resends_the_same_points() {
    let ingest = FakeIngest::start(Mode::BusyFirst(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    write_tokens(&tokens, &[("h-001", "tok-1"), ("h-002", "tok-2")]);
    let out = fleetctl(
        &[
            "simulate",
            "--vehicles",
            "2",
            "--prefix",
            "h",
            "--kind",
            "mixed",
            "--rate",
            "20",
            "--batch",
            "5",
            "--duration",
            "3",
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--ingest-url",
            &ingest.url(),
            "--frames-fps",
            "2",
            "--frame-size",
            "160x120",
            "--detections",
            "--seed",
            "1",
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let summary = stdout(&out);
    assert!(summary.contains("503 2"), "{summary}");

    let seen = ingest.seen();
    let telemetry: Vec<_> = seen
        .iter()
        .filter(|r| r.path == "/api/v1/telemetry")
        .collect();
    // Every body answered 503 came again, byte for byte.
    for busy in telemetry.iter().filter(|r| r.status == 503) {
        assert!(
            telemetry
                .iter()
                .any(|r| r.status == 200 && r.body == busy.body),
            "a 503'd batch was not resent"
        );
    }
    let mut per_vehicle: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in telemetry.iter().filter(|r| r.status == 200) {
        assert_eq!(r.content_type, "application/json");
        let batch: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(batch.len(), 5, "--batch 5 sends arrays of 5");
        for p in &batch {
            let id = p["vehicle_id"].as_str().unwrap().to_string();
            let want = if id == "h-001" {
                "Bearer tok-1"
            } else {
                "Bearer tok-2"
            };
            assert_eq!(r.auth, want);
            for f in ["lat", "lon", "alt", "speed", "heading", "battery"] {
                assert!(p[f].is_number(), "{f} missing in {p}");
            }
            per_vehicle.entry(id).or_default().push(time_us(p));
        }
    }
    assert_eq!(per_vehicle.len(), 2);
    let total: usize = per_vehicle.values().map(Vec::len).sum();
    // 2 vehicles x 20 points/s x 3 s, less the second lost to Retry-After.
    assert!((60..=130).contains(&total), "{total} points accepted");
    for (id, times) in &per_vehicle {
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "{id}: times not strictly increasing"
        );
    }

    let frames: Vec<_> = seen.iter().filter(|r| r.path == "/api/v1/frames").collect();
    assert!(frames.len() >= 4, "{} frames", frames.len());
    for f in &frames {
        assert_eq!(f.content_type, "image/jpeg");
        assert!(
            f.query.contains("timestamp=") && f.query.contains("frame_id="),
            "{}",
            f.query
        );
        let img = image::load_from_memory_with_format(&f.body, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (160, 120));
    }
    for d in seen.iter().filter(|r| r.path == "/api/v1/detections") {
        let v: Value = serde_json::from_slice(&d.body).unwrap();
        assert!(
            v["frame_id"]
                .as_str()
                .unwrap()
                .starts_with(v["vehicle_id"].as_str().unwrap())
        );
        assert_eq!(v["detections"][0]["bbox"].as_array().unwrap().len(), 4);
    }
}

#[tokio::test]
async fn exits_non_zero_when_nothing_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    write_tokens(&tokens, &[("r-001", "bad")]);
    let base = [
        "simulate",
        "--vehicles",
        "1",
        "--prefix",
        "r",
        "--rate",
        "10",
        "--duration",
        "1",
        "--tokens-file",
    ];

    let ingest = FakeIngest::start(Mode::Always(401)).await;
    let url = ingest.url();
    let mut args = base.to_vec();
    args.extend([tokens.to_str().unwrap(), "--ingest-url", &url]);
    let out = fleetctl(&args, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("first 4xx") && stdout(&out).contains("401"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("nothing was acknowledged"),
        "{}",
        stderr(&out)
    );
    // A 4xx is never retried: one request per tick at most.
    assert!(
        ingest.seen().len() <= 12,
        "{} requests",
        ingest.seen().len()
    );

    let url = format!("http://127.0.0.1:{}", fleetwatch_testkit::free_port());
    let mut args = base.to_vec();
    args.extend([tokens.to_str().unwrap(), "--ingest-url", &url]);
    let out = fleetctl(&args, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("connection"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("is ingest running"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn missing_tokens_and_bad_options_fail_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("none.json");
    let out = fleetctl(
        &[
            "simulate",
            "--duration",
            "1",
            "--tokens-file",
            tokens.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--register"), "{}", stderr(&out));

    for bad in [
        ["--rate", "0"],
        ["--batch", "0"],
        ["--prefix", "a/b"],
        ["--frame-size", "10"],
    ] {
        let mut args = vec!["simulate", "--duration", "1"];
        args.extend(bad);
        let out = fleetctl(&args, &[]).await;
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            stderr(&out).contains(bad[0]) || stderr(&out).contains("WxH"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn register_creates_tokens_once_and_reuses_them() {
    let db = TestDb::new().await;
    let ingest = FakeIngest::start(Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join(".fleetwatch/sim-tokens.json");
    let args = [
        "simulate",
        "--register",
        "--vehicles",
        "3",
        "--kind",
        "mixed",
        "--duration",
        "0.5",
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--ingest-url",
        &ingest.url(),
        "--database-url",
        &db.url,
    ];
    let out = fleetctl(&args, &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("3 registered"), "{}", stderr(&out));
    let read = || -> BTreeMap<String, String> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&tokens).unwrap()).unwrap();
        serde_json::from_value(v["vehicles"].clone()).unwrap()
    };
    let first = read();
    assert_eq!(first.len(), 3);
    for (id, token) in &first {
        assert_eq!(
            fleetwatch_db::vehicle_for_token(&db.pool, token)
                .await
                .unwrap()
                .as_deref(),
            Some(id.as_str())
        );
    }
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM vehicles ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(kinds, ["drone", "drone", "vessel"]);

    let out = fleetctl(&args, &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("3 reused"), "{}", stderr(&out));
    assert_eq!(read(), first);

    // A token that stopped working (rotated elsewhere) is replaced.
    fleetwatch_db::rotate_token(&db.pool, "sim-002")
        .await
        .unwrap();
    let out = fleetctl(&args, &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 given new tokens"),
        "{}",
        stderr(&out)
    );
    let third = read();
    assert_ne!(third["sim-002"], first["sim-002"]);
    assert_eq!(
        fleetwatch_db::vehicle_for_token(&db.pool, &third["sim-002"])
            .await
            .unwrap()
            .as_deref(),
        Some("sim-002")
    );
    // Every request carried one of the registered tokens.
    assert!(
        ingest
            .seen()
            .iter()
            .all(|r| r.auth.starts_with("Bearer fw_"))
    );
}

#[tokio::test]
async fn mqtt_vehicles_log_in_as_themselves_and_publish_to_their_topics() {
    use fleetwatch_testkit::mqtt::{BRIDGE_USER, Mosquitto};
    let db = TestDb::new().await;
    let broker = Mosquitto::start().await;
    // The bridge's view: everything the ACL lets vehicles send.
    let mut opts = broker.options(BRIDGE_USER, broker.bridge_password());
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
    client
        .subscribe("fleet/+/telemetry", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let subscribed = Arc::new(tokio::sync::Notify::new());
    {
        let (got, subscribed) = (got.clone(), subscribed.clone());
        tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                match ev {
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => subscribed.notify_one(),
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                        got.lock()
                            .unwrap()
                            .push((p.topic.clone(), serde_json::from_slice(&p.payload).unwrap()));
                    }
                    _ => {}
                }
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(10), subscribed.notified())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    let prefix = format!("m{}", unique_suffix());
    let (mqtt, passwd, pid) = (
        broker.addr(),
        broker.password_file().display().to_string(),
        broker.pid_file().display().to_string(),
    );
    let out = fleetctl(
        &[
            "simulate",
            "--register",
            "--database-url",
            &db.url,
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--mqtt-password-file",
            &passwd,
            "--mqtt-reload-pid-file",
            &pid,
            "--protocol",
            "mqtt",
            "--mqtt",
            &mqtt,
            "--vehicles",
            "2",
            "--prefix",
            &prefix,
            "--rate",
            "10",
            "--batch",
            "2",
            "--duration",
            "2",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("mqtt logins: 2 written"),
        "{}",
        stderr(&out)
    );
    let summary = stdout(&out);
    let errors = summary
        .lines()
        .find(|l| l.trim_start().starts_with("errors"))
        .unwrap();
    assert!(
        errors.contains("connection 0"),
        "no refused logins: {summary}"
    );
    let points = summary
        .lines()
        .find(|l| l.trim_start().starts_with("points"))
        .unwrap();
    let n: usize = points
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(',')
        .parse()
        .unwrap();
    assert!((30..=44).contains(&n), "{points}");
    assert!(
        points.contains(&format!("acked {n} ")),
        "every publish acknowledged: {points}"
    );

    let got = wait_for("the published points", Duration::from_secs(10), || {
        let got = got.clone();
        async move {
            let g = got.lock().unwrap();
            (g.len() >= n).then(|| g.clone())
        }
    })
    .await;
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (topic, v) in &got {
        let id = v["vehicle_id"].as_str().unwrap();
        assert_eq!(topic, &format!("fleet/{id}/telemetry"));
        assert!(v["lat"].is_number() && v["battery"].is_number());
        let t = time_us(v);
        if let Some(prev) = last.insert(id.to_string(), t) {
            assert!(t > prev, "{id}: times not increasing");
        }
    }
    assert_eq!(last.len(), 2);

    // A rerun reuses the tokens and the logins; without a login the
    // vehicles are refused, and the summary says why.
    let out = fleetctl(
        &[
            "simulate",
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--protocol",
            "mqtt",
            "--mqtt",
            &mqtt,
            "--vehicles",
            "2",
            "--prefix",
            "other",
            "--duration",
            "1",
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no token for other-001"),
        "{}",
        stderr(&out)
    );
    let other: BTreeMap<&str, &str> = [("zz-001", "fw_unknown")].into();
    write_tokens(&tokens, &other.into_iter().collect::<Vec<_>>());
    let out = fleetctl(
        &[
            "simulate",
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--protocol",
            "mqtt",
            "--mqtt",
            &mqtt,
            "--vehicles",
            "1",
            "--prefix",
            "zz",
            "--duration",
            "1.5",
        ],
        &[],
    )
    .await;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("refused zz-001's login"),
        "{}",
        stdout(&out)
    );
}

/// A gRPC ingest that refuses the first stream as busy, then accepts.
#[derive(Default, Clone)]
struct FakeGrpc(Arc<FakeGrpcState>);

#[derive(Default)]
struct FakeGrpcState {
    calls: Mutex<u32>,
    accepted: Mutex<Vec<TelemetryPoint>>,
    auth: Mutex<Vec<String>>,
}

#[tonic::async_trait]
impl IngestService for FakeGrpc {
    async fn stream_telemetry(
        &self,
        req: Request<Streaming<TelemetryChunk>>,
    ) -> Result<Response<IngestAck>, Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.0.auth.lock().unwrap().push(auth);
        let mut stream = req.into_inner();
        let mut points = Vec::new();
        while let Some(chunk) = stream.message().await? {
            points.extend(chunk.points);
        }
        let first = {
            let mut c = self.0.calls.lock().unwrap();
            *c += 1;
            *c == 1
        };
        if first {
            return Err(Status::unavailable("ingest is busy"));
        }
        let n = points.len() as u64;
        self.0.accepted.lock().unwrap().extend(points);
        Ok(Response::new(IngestAck { accepted: n }))
    }
    async fn send_detections(
        &self,
        _: Request<DetectionBatch>,
    ) -> Result<Response<IngestAck>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn send_frame(&self, _: Request<Frame>) -> Result<Response<IngestAck>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

#[tokio::test]
async fn grpc_streams_chunks_and_resends_a_refused_stream() {
    let fake = FakeGrpc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = IngestServiceServer::new(fake.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    write_tokens(&tokens, &[("g-001", "tok-g")]);
    let out = fleetctl(
        &[
            "simulate",
            "--protocol",
            "grpc",
            "--grpc-url",
            &format!("http://{addr}"),
            "--vehicles",
            "1",
            "--prefix",
            "g",
            "--kind",
            "vessel",
            "--rate",
            "20",
            "--batch",
            "4",
            "--duration",
            "2.5",
            "--stream-window",
            "0.5",
            "--tokens-file",
            tokens.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("503 1"), "{}", stdout(&out));
    let points = fake.0.accepted.lock().unwrap().clone();
    assert!(
        fake.0
            .auth
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "Bearer tok-g")
    );
    assert!(*fake.0.calls.lock().unwrap() >= 3, "one stream per window");
    let times: Vec<i64> = points.iter().map(|p| p.time_unix_us).collect();
    // The refused first stream was resent, then later windows followed in order.
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert!((25..=55).contains(&points.len()), "{} points", points.len());
    assert!(
        points
            .iter()
            .all(|p| p.vehicle_id == "g-001" && p.alt == Some(0.0))
    );
    let summary = stdout(&out);
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("points"))
        .unwrap();
    assert!(line.contains(&format!("acked {} ", points.len())), "{line}");
}
