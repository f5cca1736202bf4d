//! A whole Fleetwatch stack for end-to-end tests: the real `fleetwatch-ingest`,
//! `fleetwatch-persistence` (and, when started, `fleetwatch-inference`) binaries on free ports, a fresh database,
//! fresh topics, a temporary object store and a Mosquitto of its own, on
//! the shared (or an owned) Kafka broker.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fleetwatch_kafka::TopicNames;
use fleetwatch_testkit::{self as tk, ServiceProcess, TestDb};

pub struct Stack {
    pub db: TestDb,
    pub bootstrap: String,
    pub topics: TopicNames,
    pub objects: tempfile::TempDir,
    /// Unique per stack (consumer group names).
    pub mqtt_prefix: String,
    /// The stack's own Mosquitto with the shipped config: ingest's bridge
    /// logs in as `fleetwatch-ingest`, vehicles from [`Stack::add_vehicle`]
    /// with their id and token.
    pub mqtt: tk::mqtt::Mosquitto,
    pub ingest_http: u16,
    pub ingest_grpc: u16,
    pub ingest_admin: u16,
    pub persistence_grpc: u16,
    pub persistence_admin: u16,
    pub inference_grpc: u16,
    pub inference_admin: u16,
    pub ingest: Option<ServiceProcess>,
    pub persistence: Option<ServiceProcess>,
    pub incident_grpc: u16,
    pub incident_admin: u16,
    /// Started only by tests that need it ([`Stack::start_incident`]).
    pub incident: Option<ServiceProcess>,
    pub inference: Option<ServiceProcess>,
}

impl Stack {
    /// A stack on `bootstrap`; services are not started yet.
    pub async fn new(bootstrap: &str) -> Self {
        let db = TestDb::new().await;
        let topics = tk::fresh_topics(bootstrap, 3).await;
        Self {
            db,
            bootstrap: bootstrap.to_string(),
            topics,
            objects: tempfile::tempdir().unwrap(),
            mqtt_prefix: tk::unique_suffix(),
            mqtt: tk::mqtt::Mosquitto::start().await,
            ingest_http: tk::free_port(),
            ingest_grpc: tk::free_port(),
            ingest_admin: tk::free_port(),
            persistence_grpc: tk::free_port(),
            persistence_admin: tk::free_port(),
            inference_grpc: tk::free_port(),
            inference_admin: tk::free_port(),
            ingest: None,
            persistence: None,
            incident_grpc: tk::free_port(),
            incident_admin: tk::free_port(),
            incident: None,
            inference: None,
        }
    }

    /// Starts both services and waits until they are ready.
    pub async fn start(bootstrap: &str) -> Self {
        let mut s = Self::new(bootstrap).await;
        s.start_persistence().await;
        s.start_ingest().await;
        s
    }

    fn common_env(&self, service: &str) -> Vec<(String, String)> {
        let p = format!("FLEETWATCH_{}__", service.to_uppercase());
        let t = &self.topics;
        let mut env = vec![
            ("KAFKA__BOOTSTRAP_SERVERS", self.bootstrap.clone()),
            ("KAFKA__CONSUMER__MAX_POLL_INTERVAL_MS", "6000".into()),
            ("KAFKA__CONSUMER__SESSION_TIMEOUT_MS", "6000".into()),
            ("KAFKA__CONSUMER__HEARTBEAT_INTERVAL_MS", "500".into()),
            ("KAFKA__CONSUMER__COMMIT_INTERVAL_MS", "200".into()),
            ("KAFKA__PRODUCER__LINGER_MS", "1".into()),
            ("KAFKA__PRODUCER__DELIVERY_TIMEOUT_MS", "3000".into()),
            ("TOPICS__TELEMETRY", t.telemetry.clone()),
            ("TOPICS__FRAMES", t.frames.clone()),
            ("TOPICS__DETECTIONS", t.detections.clone()),
            ("TOPICS__INCIDENTS", t.incidents.clone()),
            ("TOPICS__COMMANDS", t.commands.clone()),
            ("TOPICS__COMMAND_STATUS", t.command_status.clone()),
            ("DATABASE__URL", self.db.url.clone()),
            ("LOG__LEVEL", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{p}{k}"), v))
        .collect::<Vec<_>>();
        env.push(("RUST_LOG".into(), "info".into()));
        env
    }

    pub async fn start_persistence(&mut self) {
        let mut env = self.common_env("persistence");
        let p = "FLEETWATCH_PERSISTENCE__";
        env.extend([
            (
                format!("{p}GRPC__LISTEN"),
                format!("127.0.0.1:{}", self.persistence_grpc),
            ),
            (
                format!("{p}ADMIN__LISTEN"),
                format!("127.0.0.1:{}", self.persistence_admin),
            ),
            (
                format!("{p}OBJECT_STORE__URL"),
                format!("file://{}", self.objects.path().display()),
            ),
            (
                format!("{p}KAFKA__CONSUMER__GROUP_ID"),
                format!("persistence-{}", tk::unique_suffix()),
            ),
        ]);
        self.persistence = Some(ServiceProcess::spawn("fleetwatch-persistence", &env));
        wait_ready(self.persistence_admin).await;
    }

    /// Starts `fleetwatch-inference` with the committed tiny model, model
    /// version `version`, on `runtime` (`ort` needs ORT_DYLIB_PATH, which
    /// scripts/test exports).
    pub async fn start_inference(&mut self, runtime: &str, version: &str) {
        let mut env = self.common_env("inference");
        // No database: inference only talks to Kafka (unknown keys are refused).
        env.retain(|(k, _)| !k.ends_with("__DATABASE__URL"));
        let p = "FLEETWATCH_INFERENCE__";
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../services/inference/models/tiny.onnx");
        env.extend([
            (
                format!("{p}GRPC__LISTEN"),
                format!("127.0.0.1:{}", self.inference_grpc),
            ),
            (
                format!("{p}ADMIN__LISTEN"),
                format!("127.0.0.1:{}", self.inference_admin),
            ),
            (format!("{p}MODEL__PATH"), model.display().to_string()),
            (format!("{p}MODEL__NAME"), "tiny".into()),
            (format!("{p}MODEL__VERSION"), version.into()),
            (format!("{p}MODEL__RUNTIME"), runtime.into()),
            (format!("{p}MODEL__INTRA_THREADS"), "1".into()),
            // One group per stack, so a restarted inference resumes from
            // the committed offsets.
            (
                format!("{p}KAFKA__CONSUMER__GROUP_ID"),
                format!("inference-{}", self.mqtt_prefix),
            ),
            // A slow restart must not turn the backlog into skipped frames.
            (format!("{p}PIPELINE__MAX_FRAME_AGE_MS"), "120000".into()),
        ]);
        self.inference = Some(ServiceProcess::spawn("fleetwatch-inference", &env));
        wait_ready(self.inference_admin).await;
    }

    pub async fn start_ingest(&mut self) {
        // Ingest's service identity for its queries to persistence.
        let (_, token) = fleetwatch_auth::store::create_api_token(
            &self.db.pool,
            &fleetwatch_auth::store::NewApiToken {
                owner: fleetwatch_auth::store::TokenOwner::Service("ingest".into()),
                name: format!("e2e-{}", tk::unique_suffix()),
                role: Some(fleetwatch_auth::Role::Viewer),
                expires_at: None,
            },
            "e2e",
        )
        .await
        .unwrap();
        let token_file =
            std::env::temp_dir().join(format!("fleetwatch-e2e-{}.token", tk::unique_suffix()));
        std::fs::write(&token_file, token).unwrap();
        let mut env = self.common_env("ingest");
        let p = "FLEETWATCH_INGEST__";
        let m = &self.mqtt;
        env.extend([
            (
                format!("{p}HTTP__LISTEN"),
                format!("127.0.0.1:{}", self.ingest_http),
            ),
            (
                format!("{p}GRPC__LISTEN"),
                format!("127.0.0.1:{}", self.ingest_grpc),
            ),
            (
                format!("{p}ADMIN__LISTEN"),
                format!("127.0.0.1:{}", self.ingest_admin),
            ),
            (
                format!("{p}PERSISTENCE__GRPC_URL"),
                format!("http://127.0.0.1:{}", self.persistence_grpc),
            ),
            (
                format!("{p}PERSISTENCE__SERVICE_TOKEN_FILE"),
                token_file.display().to_string(),
            ),
            (format!("{p}MQTT__HOST"), m.host()),
            (format!("{p}MQTT__PORT"), m.port().to_string()),
            (
                format!("{p}MQTT__USERNAME"),
                tk::mqtt::BRIDGE_USER.to_string(),
            ),
            (
                format!("{p}MQTT__PASSWORD"),
                m.bridge_password().to_string(),
            ),
        ]);
        self.ingest = Some(ServiceProcess::spawn("fleetwatch-ingest", &env));
        wait_ready(self.ingest_admin).await;
    }

    /// Starts `fleetwatch-incident` (same topics, database and object
    /// store) and waits until it is ready.
    pub async fn start_incident(&mut self) {
        let mut env = self.common_env("incident");
        let p = "FLEETWATCH_INCIDENT__";
        env.extend([
            (
                format!("{p}GRPC__LISTEN"),
                format!("127.0.0.1:{}", self.incident_grpc),
            ),
            (
                format!("{p}ADMIN__LISTEN"),
                format!("127.0.0.1:{}", self.incident_admin),
            ),
            (
                format!("{p}OBJECT_STORE__URL"),
                format!("file://{}", self.objects.path().display()),
            ),
            (
                format!("{p}KAFKA__CONSUMER__GROUP_ID"),
                format!("incident-{}", tk::unique_suffix()),
            ),
            (format!("{p}ENGINE__LINK_LOSS_CHECK_MS"), "200".into()),
            (format!("{p}ENGINE__RULES_REFRESH_MS"), "200".into()),
        ]);
        self.incident = Some(ServiceProcess::spawn("fleetwatch-incident", &env));
        wait_ready(self.incident_admin).await;
    }

    pub fn incident_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.incident_grpc)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ingest_http)
    }

    /// Registers a vehicle and gives it its MQTT login; returns its token.
    pub async fn add_vehicle(&self, id: &str) -> String {
        let token = fleetwatch_db::add_vehicle(&self.db.pool, id, "drone", None)
            .await
            .unwrap();
        self.mqtt.add_user(id, &token).await;
        token
    }

    /// An API token of an admin (created on first use), for the operator
    /// APIs: the incident service refuses calls without one.
    pub async fn admin_token(&self) -> String {
        use fleetwatch_auth::store;
        if store::find_user(&self.db.pool, "e2e-admin")
            .await
            .unwrap()
            .is_none()
        {
            store::create_user(
                &self.db.pool,
                "e2e-admin",
                "correct horse battery staple",
                fleetwatch_auth::Role::Admin,
                "e2e",
            )
            .await
            .unwrap();
        }
        let (_, token) = store::create_api_token(
            &self.db.pool,
            &store::NewApiToken {
                owner: store::TokenOwner::User("e2e-admin".into()),
                name: "e2e".into(),
                role: None,
                expires_at: None,
            },
            "e2e",
        )
        .await
        .unwrap();
        token
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// Waits until `sql` (a count) returns `expected`, then checks it stays
    /// there for a moment (no late duplicates).
    pub async fn wait_count(&self, sql: &str, expected: i64, timeout: Duration) {
        let pool = self.db.pool.clone();
        tk::wait_for(&format!("{sql} = {expected}"), timeout, || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.ok()?;
                assert!(
                    n <= expected,
                    "{sql} returned {n}, more than {expected}: duplicates"
                );
                (n == expected).then_some(())
            }
        })
        .await;
    }
}

/// Waits until the admin server's `/readyz` answers 200.
pub async fn wait_ready(admin_port: u16) {
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    tk::wait_for(
        &format!("{url} to be ready"),
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let r = reqwest::get(&url).await.ok()?;
                r.status().is_success().then_some(())
            }
        },
    )
    .await;
}
