//! Test-only helpers shared by every crate's integration tests: the real
//! broker (shared, or one a test owns and can kill), a fresh migrated
//! database per test, per-test topic names, service processes, and waiting
//! on a condition with a deadline instead of sleeping.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetwatch_kafka::admin::{TopicSpec, ensure_topics};
use fleetwatch_kafka::{KafkaConfig, TopicNames};
use rand::Rng;

pub mod mqtt;

pub mod s3;

/// Postgres server used by tests (`FLEETWATCH_TEST_PG`, default local trust auth).
pub fn pg_server_url() -> String {
    std::env::var("FLEETWATCH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// MQTT broker used by tests (`FLEETWATCH_TEST_MQTT`, default 127.0.0.1:1883).
pub fn mqtt_addr() -> (String, u16) {
    let v = std::env::var("FLEETWATCH_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let (h, p) = v.rsplit_once(':').unwrap();
    (h.to_string(), p.parse().unwrap())
}

/// A short random suffix for names that must not collide between tests.
pub fn unique_suffix() -> String {
    let n: u64 = rand::thread_rng().r#gen();
    format!("t{:012x}", n & 0xffff_ffff_ffff)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some`, failing the test with `what`
/// after `timeout`. Use this instead of sleeps.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- database

/// A fresh database with the Fleetwatch schema, dropped when this is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("fw_{}", unique_suffix());
        let admin_url = format!("{}/postgres", pg_server_url());
        let admin = sqlx::PgPool::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("cannot reach Postgres at {admin_url} ({e}); start it or set FLEETWATCH_TEST_PG")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{}/{name}", pg_server_url());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        fleetwatch_db::migrate(&pool).await.unwrap();
        Self { name, url, pool }
    }

    /// A database with no schema at all (for schema-check tests).
    pub async fn empty() -> Self {
        let name = format!("fw_{}", unique_suffix());
        let admin = sqlx::PgPool::connect(&format!("{}/postgres", pg_server_url()))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{}/{name}", pg_server_url());
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        Self { name, url, pool }
    }

    pub fn db_config(&self) -> fleetwatch_db::DbConfig {
        fleetwatch_db::DbConfig {
            url: self.url.clone(),
            ..Default::default()
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort, on a separate thread: Drop cannot be async, and a
        // leftover database only costs disk.
        let name = self.name.clone();
        let server = pg_server_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(admin) = sqlx::PgPool::connect(&format!("{server}/postgres")).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
    }
}

// ------------------------------------------------------------------ broker

/// Path of the `nisshi` binary: `NISSHI_BIN`, `PATH`, or `~/.cargo/bin`.
pub fn nisshi_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NISSHI_BIN") {
        return p.into();
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("nisshi");
            if c.is_file() {
                return c;
            }
        }
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = Path::new(&home).join(".cargo/bin/nisshi");
    assert!(
        p.is_file(),
        "nisshi not found; run scripts/test (it installs it) or set NISSHI_BIN"
    );
    p
}

/// A broker process this test owns: it can be killed and restarted on the
/// same port and storage, like a broker outage.
pub struct OwnedBroker {
    pub port: u16,
    pub storage: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl OwnedBroker {
    /// Starts a broker with durable SQLite storage in a temp dir.
    pub async fn start_durable() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // nisshi resolves a sqlite path against its working directory (an
        // absolute one too), so the broker runs inside the temp dir.
        let storage = "sqlite://broker.db".to_string();
        let mut b = Self {
            port: free_port(),
            storage,
            child: None,
            _dir: Some(dir),
        };
        b.restart().await;
        b
    }

    /// Starts a broker with the memory engine.
    pub async fn start_memory() -> Self {
        let mut b = Self {
            port: free_port(),
            storage: "memory://nisshi/".into(),
            child: None,
            _dir: None,
        };
        b.restart().await;
        b
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the broker (no-op when already stopped).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the broker on the same port and storage and waits until
    /// it accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new(nisshi_bin())
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--storage-engine")
            .arg(&self.storage)
            .current_dir(
                self._dir
                    .as_ref()
                    .map(|d| d.path().to_path_buf())
                    .unwrap_or_else(std::env::temp_dir),
            )
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for(
            "the broker to listen",
            Duration::from_secs(30),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }
}

impl Drop for OwnedBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The broker shared by tests: `FLEETWATCH_TEST_BOOTSTRAP` (scripts/test
/// starts one), else the dev broker on 127.0.0.1:9092 if it answers.
pub async fn shared_bootstrap() -> String {
    if let Ok(b) = std::env::var("FLEETWATCH_TEST_BOOTSTRAP") {
        return b;
    }
    let default = "127.0.0.1:9092";
    if tokio::net::TcpStream::connect(default).await.is_ok() {
        return default.into();
    }
    panic!("no Kafka broker: run the tests with scripts/test, or set FLEETWATCH_TEST_BOOTSTRAP");
}

/// Kafka settings tuned for tests: fast group joins (the rebalance timeout
/// is max.poll.interval.ms on some brokers), small batches, short waits.
pub fn kafka_config(bootstrap: &str, group: &str) -> KafkaConfig {
    let mut k = KafkaConfig {
        bootstrap_servers: bootstrap.into(),
        ..Default::default()
    };
    k.consumer.group_id = group.into();
    k.consumer.max_poll_interval_ms = 6_000;
    k.consumer.session_timeout_ms = 6_000;
    k.consumer.heartbeat_interval_ms = 500;
    k.consumer.stats_interval_ms = 1_000;
    k.consumer.commit_interval_ms = 200;
    k.consumer.retry_max_ms = 1_000;
    k.producer.linger_ms = 1;
    k.producer.delivery_timeout_ms = 5_000;
    k
}

/// Fresh topic names for this test, created on the broker (with their DLQs).
pub async fn fresh_topics(bootstrap: &str, partitions: i32) -> TopicNames {
    let names = TopicNames::with_suffix(&unique_suffix());
    let mut specs = Vec::new();
    for t in names.all() {
        specs.push(TopicSpec {
            name: t.to_string(),
            partitions,
            replication: 1,
        });
        specs.push(TopicSpec {
            name: format!("{t}.dlq"),
            partitions: 1,
            replication: 1,
        });
    }
    let k = kafka_config(bootstrap, "");
    ensure_topics(&k, &specs).await.unwrap();
    names
}

// ---------------------------------------------------------------- services

/// Path of a workspace binary built by `cargo build` (scripts/test builds
/// them before running tests).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let profile = std::env::var("FLEETWATCH_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = dir.join(profile).join(name);
    assert!(
        p.is_file(),
        "{} is not built; run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A running service binary, killed when dropped.
pub struct ServiceProcess {
    pub name: String,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Spawns `binary` with env overrides; its output goes to the test's.
    pub fn spawn(binary_name: &str, env: &[(String, String)]) -> Self {
        let mut cmd = Command::new(binary(binary_name));
        // fleetwatch-ingest reads FLEETWATCH_INGEST__..., and so on.
        let service = binary_name.trim_start_matches("fleetwatch-").to_uppercase();
        cmd.stdin(Stdio::null())
            .env(format!("FLEETWATCH_{service}__LOG__FORMAT"), "pretty");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Self {
            name: binary_name.into(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILL: no chance to commit or flush, like a crashed pod.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not stop within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit on its own; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ------------------------------------------------------------ reading topics

/// A record read back from a topic by [`read_topic`].
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReadRecord {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads every partition of `topic` from the beginning until at least
/// `expected` records arrived (panics after `timeout`). Uses manual
/// assignment, so there is no consumer-group join to wait for.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<ReadRecord> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("reader-{}", unique_suffix()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        assert!(partitions > 0, "topic {topic} has no partitions");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < expected {
            assert!(
                Instant::now() < deadline,
                "timed out reading {topic}: got {} of {expected} records",
                out.len()
            );
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        out
    })
    .await
    .unwrap()
}

// -------------------------------------------------------------- tcp proxy

/// A TCP proxy in front of a dependency (e.g. Postgres) that a test can take
/// down and bring back, like a network partition: while down it closes the
/// connections it carries and drops new ones at once.
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free local port and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = tokio::sync::watch::channel(true);
        let up_rx = up.subscribe();
        let target = target.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut down = up_rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, task }
    }

    /// `127.0.0.1:<port>` to connect to instead of the target.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Brings the proxy up, or takes it down (closing every carried connection).
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub use tonic_health::pb::health_check_response::ServingStatus;

/// What the gRPC health service at `addr` says about `service`
/// (e.g. `fleetwatch.v1.IngestService`).
pub async fn grpc_health(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("the gRPC server accepts connections");
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("the health check answers")
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
}

// ------------------------------------------------------------------ benches

/// What the latency benchmarks (`harness = false`) share.
pub mod bench {
    use std::time::Duration;

    use super::OwnedBroker;

    /// `cargo bench` passes `--bench`; `cargo test --benches` runs the bench
    /// binaries without it, and they must then do nothing.
    pub fn invoked_as_bench() -> bool {
        std::env::args().any(|a| a == "--bench")
    }

    /// A numeric setting from the environment, or `default`.
    pub fn env_u64(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The broker a bench runs against: a fresh nisshi memory broker of its
    /// own, or `BENCH_BOOTSTRAP` (e.g. a real Kafka). Fresh, because
    /// nisshi's costs grow with what it holds, so a long-lived dev broker
    /// makes each run slower than the last.
    pub struct BenchBroker {
        pub bootstrap: String,
        _owned: Option<OwnedBroker>,
    }

    impl BenchBroker {
        pub async fn start() -> Self {
            match std::env::var("BENCH_BOOTSTRAP") {
                Ok(bootstrap) => Self {
                    bootstrap,
                    _owned: None,
                },
                Err(_) => {
                    let owned = OwnedBroker::start_memory().await;
                    Self {
                        bootstrap: owned.bootstrap(),
                        _owned: Some(owned),
                    }
                }
            }
        }
    }

    /// The `p` quantile (0..=1) of `sorted` in milliseconds (NaN if empty).
    pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
        sorted
            .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN)
    }
}

// ------------------------------------------------------------------- config

/// Loads a service's configuration the way it does at start (defaults, then
/// the file, then `FLEETWATCH_<SERVICE>__…` variables), from `toml` written
/// to a temporary file.
pub fn load_config_toml<T>(
    service: &str,
    toml: &str,
) -> Result<T, fleetwatch_common::config::ConfigError>
where
    T: serde::de::DeserializeOwned
        + serde::Serialize
        + Default
        + fleetwatch_common::config::Validate,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{service}.toml"));
    std::fs::write(&path, toml).unwrap();
    fleetwatch_common::config::load_config(service, Some(&path))
}
