//! Shared harness: a persistence instance in-process against the real
//! broker (fresh topics), a fresh database and a temp object directory.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use fleetwatch_common::Shutdown;
use fleetwatch_kafka::{OutRecord, Producer, TopicNames};
use fleetwatch_persistence::{Config, Running};
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::persistence_query_client::PersistenceQueryClient;

/// A query client with credentials (see [`Harness::client_with`]).
pub type Client = PersistenceQueryClient<
    tonic::service::interceptor::InterceptedService<Channel, fleetwatch_testkit::Bearer>,
>;
use fleetwatch_proto::v1::{DetectionBatch, Frame, TelemetryBatch, TelemetryPoint};
use fleetwatch_testkit::{TestDb, fresh_topics, kafka_config, shared_bootstrap, unique_suffix};
use prost::Message;
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn config(
    bootstrap: &str,
    topics: &TopicNames,
    db: fleetwatch_db::DbConfig,
    objects: &std::path::Path,
) -> Config {
    let mut c = Config {
        kafka: kafka_config(bootstrap, ""),
        topics: topics.clone(),
        database: db,
        ..Default::default()
    };
    c.object_store.url = format!("file://{}", objects.display());
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.kafka.consumer.group_id = format!("fwp-{}", unique_suffix());
    c
}

pub struct Harness {
    pub bootstrap: String,
    pub topics: TopicNames,
    pub db: TestDb,
    pub objects: tempfile::TempDir,
    pub shutdown: Shutdown,
    pub running: Running,
    pub producer: Producer,
    pub config: Config,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_, _| {}).await
    }

    /// `tweak` may change the config; it also gets the test database.
    pub async fn start_with(tweak: impl FnOnce(&mut Config, &TestDb)) -> Self {
        let bootstrap = shared_bootstrap().await;
        let topics = fresh_topics(&bootstrap, 1).await;
        let db = TestDb::new().await;
        let objects = tempfile::tempdir().unwrap();
        let mut config = config(&bootstrap, &topics, db.db_config(), objects.path());
        tweak(&mut config, &db);
        let shutdown = Shutdown::new();
        let running = fleetwatch_persistence::start(config.clone(), shutdown.clone())
            .await
            .unwrap();
        let producer = Producer::new(&kafka_config(&bootstrap, ""), "persistence-test").unwrap();
        Self {
            bootstrap,
            topics,
            db,
            objects,
            shutdown,
            running,
            producer,
            config,
        }
    }

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
        self.send(
            &self.topics.telemetry,
            &b.vehicle_id,
            &b.encode_to_vec(),
            message_types::TELEMETRY_BATCH,
        )
        .await;
    }

    pub async fn send_detections(&self, b: &DetectionBatch) {
        self.send(
            &self.topics.detections,
            &b.vehicle_id,
            &b.encode_to_vec(),
            message_types::DETECTION_BATCH,
        )
        .await;
    }

    pub async fn send_frame(&self, f: &Frame) {
        self.send(
            &self.topics.frames,
            &f.vehicle_id,
            &f.encode_to_vec(),
            message_types::FRAME,
        )
        .await;
    }

    /// A client calling with a viewer's service token, as ingest does.
    pub async fn client(&self) -> Client {
        let token = self.service_token("tests").await;
        self.client_with(Some(token)).await
    }

    /// A new service token of `service`, role viewer.
    pub async fn service_token(&self, service: &str) -> String {
        let (_, token) = fleetwatch_auth::store::create_api_token(
            &self.db.pool,
            &fleetwatch_auth::store::NewApiToken {
                owner: fleetwatch_auth::store::TokenOwner::Service(service.into()),
                name: "tests".into(),
                role: Some(fleetwatch_auth::Role::Viewer),
                expires_at: None,
            },
            "test",
        )
        .await
        .unwrap();
        token
    }

    /// A client sending `token` as it is (or no credentials at all).
    pub async fn client_with(&self, token: Option<String>) -> Client {
        let channel = fleetwatch_testkit::grpc_channel(self.running.grpc_addr).await;
        PersistenceQueryClient::with_interceptor(channel, fleetwatch_testkit::Bearer(token))
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

    pub async fn metrics(&self) -> String {
        fleetwatch_testkit::scrape_metrics(self.running.admin_addr).await
    }

    pub fn group(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.config.kafka.consumer.group_id)
    }

    pub async fn stop(self) {
        fleetwatch_testkit::stop_service(&self.shutdown, self.running.handle).await;
    }
}

pub use fleetwatch_testkit::metric;

/// Now, rounded down to the second, minus `secs_ago` seconds, in µs.
pub fn time_ago(secs_ago: i64) -> i64 {
    (fleetwatch_common::now_unix_us() / 1_000_000 - secs_ago) * 1_000_000
}

pub fn point(t: i64) -> TelemetryPoint {
    TelemetryPoint {
        time_unix_us: t,
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
