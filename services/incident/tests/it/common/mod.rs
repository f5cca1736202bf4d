//! Shared harness: incident service instances in-process against the real
//! broker (fresh topics), a fresh database and a temp object directory.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use fleetwatch_auth::{Role, SigningKey, TokenIssuer};
use fleetwatch_common::Shutdown;
use fleetwatch_incident::{Config, Running};
use fleetwatch_kafka::{OutRecord, Producer, TopicNames};
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::incident_service_client::IncidentServiceClient;
use fleetwatch_proto::v1::{
    BoundingBox, Detection, DetectionBatch, Frame, IncidentEvent, TelemetryBatch, TelemetryPoint,
};
use fleetwatch_testkit::{
    TestDb, fresh_topics, kafka_config, read_topic, send_proto, shared_bootstrap, unique_suffix,
    wait_for,
};
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client sending `authorization: Bearer <token>` (or nothing) with every call.
pub type Client = IncidentServiceClient<InterceptedService<Channel, Bearer>>;

pub use fleetwatch_testkit::Bearer;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn config(
    bootstrap: &str,
    topics: &TopicNames,
    db: fleetwatch_db::DbConfig,
    objects: &std::path::Path,
    group_prefix: &str,
) -> Config {
    let mut c = Config {
        kafka: kafka_config(bootstrap, ""),
        topics: topics.clone(),
        database: db,
        ..Default::default()
    };
    // The service's latency settings, on top of the tests' broker tuning.
    let service = Config::default().kafka.consumer;
    c.kafka.consumer.batch_max_wait_ms = service.batch_max_wait_ms;
    c.kafka.consumer.fetch_wait_max_ms = service.fetch_wait_max_ms;
    c.object_store.url = format!("file://{}", objects.display());
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.kafka.consumer.group_id = group_prefix.into();
    c.engine.link_loss_check_ms = 200;
    c.engine.rules_refresh_ms = 200;
    c.evidence.clip_before_secs = 2.0;
    c.evidence.clip_after_secs = 2.0;
    c
}

pub struct Instance {
    pub shutdown: Shutdown,
    pub running: Running,
}

impl Instance {
    pub async fn stop(self) {
        fleetwatch_testkit::stop_service(&self.shutdown, self.running.handle).await;
    }
}

pub struct Harness {
    pub bootstrap: String,
    pub topics: TopicNames,
    pub db: TestDb,
    pub objects: tempfile::TempDir,
    pub producer: Producer,
    pub config: Config,
    pub instance: Option<Instance>,
    /// Signs operators' access tokens with a key registered in `db`.
    pub issuer: TokenIssuer,
}

impl Harness {
    /// Broker topics and database, with rules replaced by `setup_sql`
    /// (run before the service starts), and one instance running.
    pub async fn start(setup_sql: &str) -> Self {
        let h = Self::prepare(setup_sql).await;
        h.with_instance().await
    }

    pub async fn prepare(setup_sql: &str) -> Self {
        let bootstrap = shared_bootstrap().await;
        let topics = fresh_topics(&bootstrap, 2).await;
        let db = TestDb::new().await;
        if !setup_sql.is_empty() {
            sqlx::raw_sql(setup_sql).execute(&db.pool).await.unwrap();
        }
        let objects = tempfile::tempdir().unwrap();
        let config = config(
            &bootstrap,
            &topics,
            db.db_config(),
            objects.path(),
            &format!("fwi-{}", unique_suffix()),
        );
        let producer = Producer::new(&kafka_config(&bootstrap, ""), "incident-test").unwrap();
        let key = SigningKey::generate();
        fleetwatch_auth::store::register_signing_key(&db.pool, &key.public_key(), "test")
            .await
            .unwrap();
        let issuer = TokenIssuer::new(key, &config.auth).unwrap();
        Self {
            bootstrap,
            topics,
            db,
            objects,
            producer,
            config,
            instance: None,
            issuer,
        }
    }

    pub async fn with_instance(mut self) -> Self {
        self.instance = Some(self.spawn().await);
        self
    }

    /// Another instance on the same groups (a second replica).
    pub async fn spawn(&self) -> Instance {
        let shutdown = Shutdown::new();
        let running = fleetwatch_incident::start(self.config.clone(), shutdown.clone())
            .await
            .unwrap();
        Instance { shutdown, running }
    }

    pub fn running(&self) -> &Running {
        &self.instance.as_ref().unwrap().running
    }

    /// Raw bytes (poison records).
    pub async fn send(&self, topic: &str, key: &str, payload: &[u8], message_type: &str) {
        self.producer
            .send(OutRecord {
                topic,
                key,
                payload,
                message_type,
                traceparent: None,
                extra_headers: &[],
            })
            .await
            .unwrap();
    }

    pub async fn send_telemetry(&self, b: &TelemetryBatch) {
        let t = &self.topics.telemetry;
        send_proto(
            &self.producer,
            t,
            &b.vehicle_id,
            b,
            message_types::TELEMETRY_BATCH,
        )
        .await;
    }

    pub async fn send_detections(&self, b: &DetectionBatch) {
        let t = &self.topics.detections;
        send_proto(
            &self.producer,
            t,
            &b.vehicle_id,
            b,
            message_types::DETECTION_BATCH,
        )
        .await;
    }

    pub async fn send_frame(&self, f: &Frame) {
        send_proto(
            &self.producer,
            &self.topics.frames,
            &f.vehicle_id,
            f,
            message_types::FRAME,
        )
        .await;
    }

    /// A client signed in as the admin `admin`.
    pub async fn client(&self) -> Client {
        self.client_as("admin", Role::Admin).await
    }

    /// A client signed in as `user` (created with `role` on first use).
    pub async fn client_as(&self, user: &str, role: Role) -> Client {
        let token = self.access_token(user, role).await;
        self.client_with(Some(token)).await
    }

    /// An access token of `user` (created with `role` on first use).
    pub async fn access_token(&self, user: &str, role: Role) -> String {
        let u = match fleetwatch_auth::store::find_user(&self.db.pool, user)
            .await
            .unwrap()
        {
            Some(u) => u,
            None => fleetwatch_auth::store::create_user(
                &self.db.pool,
                user,
                "correct horse battery staple",
                role,
                "test",
            )
            .await
            .unwrap(),
        };
        self.issuer.issue(&u).unwrap().token
    }

    /// A client sending `token` as it is (or no credentials at all).
    pub async fn client_with(&self, token: Option<String>) -> Client {
        let channel = fleetwatch_testkit::grpc_channel(self.running().grpc_addr).await;
        IncidentServiceClient::with_interceptor(channel, Bearer(token))
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// Waits until `sql` (a count) returns `n`.
    pub async fn wait_count(&self, what: &str, sql: &str, n: i64) {
        fleetwatch_testkit::wait_count(&self.db.pool, what, sql, n, WAIT).await;
    }

    /// Waits until the consumer group `<prefix>-<suffix>` committed offsets
    /// covering everything produced to `topic` so far.
    pub async fn wait_consumed(&self, suffix: &str, topic: &str) {
        let group = format!("{}-{suffix}", self.config.kafka.consumer.group_id);
        let bootstrap = self.bootstrap.clone();
        let topic = topic.to_string();
        wait_for(&format!("{group} caught up on {topic}"), WAIT, || {
            let (b, g, t) = (bootstrap.clone(), group.clone(), topic.clone());
            async move {
                tokio::task::spawn_blocking(move || caught_up(&b, &g, &t))
                    .await
                    .unwrap()
                    .then_some(())
            }
        })
        .await;
    }

    /// Every event published so far, at least `n`.
    pub async fn events(&self, n: usize) -> Vec<IncidentEvent> {
        read_topic(&self.bootstrap, &self.topics.incidents, n, WAIT)
            .await
            .iter()
            .map(|r| IncidentEvent::decode(r.payload.as_slice()).unwrap())
            .collect()
    }

    pub async fn stop(mut self) {
        if let Some(i) = self.instance.take() {
            i.stop().await;
        }
    }
}

fn caught_up(bootstrap: &str, group: &str, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return false;
    };
    let n = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition(topic, p);
    }
    let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(5)) else {
        return false;
    };
    for p in 0..n as i32 {
        let Ok((_, high)) = c.fetch_watermarks(topic, p, Duration::from_secs(5)) else {
            return false;
        };
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o >= high,
            _ => high == 0,
        };
        if !done {
            return false;
        }
    }
    true
}

/// Now, rounded down to the second, minus `secs_ago` seconds, in µs.
pub fn time_ago(secs_ago: i64) -> i64 {
    (fleetwatch_common::now_unix_us() / 1_000_000 - secs_ago) * 1_000_000
}

pub fn battery_point(t: i64, battery: f64) -> TelemetryPoint {
    TelemetryPoint {
        time_unix_us: t,
        battery: Some(battery),
        ..Default::default()
    }
}

pub fn position(t: i64, lat: f64, lon: f64) -> TelemetryPoint {
    TelemetryPoint {
        time_unix_us: t,
        lat: Some(lat),
        lon: Some(lon),
        ..Default::default()
    }
}

pub fn batch(vehicle: &str, points: Vec<TelemetryPoint>) -> TelemetryBatch {
    TelemetryBatch {
        vehicle_id: vehicle.into(),
        points,
        source: "test".into(),
        received_unix_us: fleetwatch_common::now_unix_us(),
    }
}

pub fn detection(class: &str, confidence: f32, cx: f32, cy: f32) -> Detection {
    Detection {
        class_name: class.into(),
        confidence,
        bbox: Some(BoundingBox {
            x_min: cx - 0.05,
            y_min: cy - 0.05,
            x_max: cx + 0.05,
            y_max: cy + 0.05,
        }),
        track_id: String::new(),
    }
}

pub fn detections(vehicle: &str, t: i64, dets: Vec<Detection>) -> DetectionBatch {
    DetectionBatch {
        vehicle_id: vehicle.into(),
        time_unix_us: t,
        frame_id: format!("f{t}"),
        detections: dets,
        source: "test".into(),
        received_unix_us: fleetwatch_common::now_unix_us(),
        ..Default::default()
    }
}

pub fn frame(vehicle: &str, t: i64) -> Frame {
    Frame {
        vehicle_id: vehicle.into(),
        time_unix_us: t,
        frame_id: format!("f{t}"),
        content_type: "image/jpeg".into(),
        data: format!("jpeg-bytes-{t}").into_bytes(),
        width: 4,
        height: 4,
        received_unix_us: fleetwatch_common::now_unix_us(),
    }
}

/// SQL replacing the shipped rules with the given INSERT values
/// `(name, vehicle_id, kind, severity, params)`.
pub fn rules_sql(values: &str) -> String {
    format!(
        "DELETE FROM incident_rules; INSERT INTO incident_rules (name, vehicle_id, kind, severity, params) VALUES {values};"
    )
}

pub const BATTERY_RULE: &str = r#"('battery_low', NULL, 'threshold', 3, '{"field": "battery", "op": "below", "trigger": 20, "clear": 25, "for_secs": 10}')"#;
