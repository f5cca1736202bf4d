//! Apache Kafka for tests: the shared broker, brokers and clusters a test
//! owns (and kills), per-test topics, and Kafka's own CLI tools.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetwatch_kafka::admin::{ensure_topics, topic_specs};
use fleetwatch_kafka::config::TopicCreationConfig;
use fleetwatch_kafka::{KafkaConfig, TopicNames};

use crate::*;

/// The workspace root (where `scripts/` and `.fleetwatch/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The script that starts one Kafka node (`scripts/kafka/node.sh`): the one
/// place a broker's configuration is written, for the scripts and tests alike.
fn kafka_node_script() -> PathBuf {
    workspace_root().join("scripts/kafka/node.sh")
}

/// The Kafka jars: `KAFKA_LIBS` (scripts/test exports it), else
/// `.fleetwatch/kafka/libs` in the workspace.
pub fn kafka_libs() -> PathBuf {
    let p = std::env::var("KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".fleetwatch/kafka/libs"));
    assert!(
        p.is_dir(),
        "no Kafka jars in {}; run scripts/test once (it fetches them) or set KAFKA_LIBS",
        p.display()
    );
    p
}

/// Broker settings of every test broker (scripts/test passes the same):
/// KIP-848 consumer sessions of 6 s instead of 45 s, so a SIGKILLed
/// consumer's partitions are reassigned within seconds.
pub const TEST_BROKER_SETTINGS: &[&str] = &[
    "group.consumer.session.timeout.ms=6000",
    "group.consumer.heartbeat.interval.ms=1000",
];

/// One node of an [`OwnedCluster`]: a combined broker + controller process.
struct KafkaNode {
    id: u32,
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Apache Kafka brokers this test owns, in a temp dir: one node (see
/// [`OwnedBroker`]) or a KRaft cluster of several on this host (replication
/// factor 3 and `min.insync.replicas` 2 at three nodes). A node can be
/// SIGKILLed, stopped and restarted on the same ports and log, like a
/// crashed or rolling-restarted broker.
pub struct OwnedCluster {
    nodes: Vec<KafkaNode>,
    cluster_id: String,
    voters: String,
    _dir: tempfile::TempDir,
}

impl OwnedCluster {
    /// Starts `n` nodes and waits until every one serves.
    pub async fn start(n: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<KafkaNode> = (1..=n)
            .map(|id| KafkaNode {
                id,
                port: free_port(),
                controller_port: free_port(),
                dir: dir.path().join(format!("node{id}")),
                child: None,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        // A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
        let bytes: [u8; 16] = rand::thread_rng().r#gen();
        let cluster_id = base64_url(&bytes);
        let mut c = Self {
            nodes,
            cluster_id,
            voters,
            _dir: dir,
        };
        // All at once: each node waits for a controller quorum before it serves.
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        for i in 0..c.nodes.len() {
            c.wait_serving(i).await;
        }
        c
    }

    /// `host:port,...` of every node.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node ids are 1..=n; `index` is id - 1.
    pub fn node_id(&self, index: usize) -> u32 {
        self.nodes[index].id
    }

    /// The client port of node `index`.
    pub fn port(&self, index: usize) -> u16 {
        self.nodes[index].port
    }

    /// Is node `index` running?
    pub fn is_running(&mut self, index: usize) -> bool {
        match self.nodes[index].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs node `index`: no controlled shutdown, like a crashed host.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut c) = self.nodes[index].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: a controlled shutdown (leaders move away first), waiting up
    /// to `timeout` before it SIGKILLs.
    pub fn stop(&mut self, index: usize, timeout: Duration) {
        let Some(mut c) = self.nodes[index].child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// (Re)starts node `index` on its ports and log, and waits until it serves.
    pub async fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
        self.wait_serving(index).await;
    }

    fn spawn(&mut self, index: usize) {
        let node = &self.nodes[index];
        std::fs::create_dir_all(&node.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("stdout.log"))
            .unwrap();
        let child = Command::new("bash")
            .arg(kafka_node_script())
            .arg(&node.dir)
            .arg(node.id.to_string())
            .arg(node.port.to_string())
            .arg(&self.voters)
            .args(TEST_BROKER_SETTINGS)
            .env("KAFKA_LIBS", kafka_libs())
            .env("KAFKA_CLUSTER_ID", &self.cluster_id)
            .env(
                "KAFKA_HEAP_OPTS",
                std::env::var("FLEETWATCH_TEST_KAFKA_HEAP")
                    .unwrap_or_else(|_| "-Xms64m -Xmx384m".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[index].child = Some(child);
    }

    /// Kafka opens a broker's client port only once it is unfenced and serving.
    async fn wait_serving(&mut self, index: usize) {
        let port = self.nodes[index].port;
        let log = self.nodes[index].dir.join("stdout.log");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            if !self.is_running(index) {
                panic!(
                    "Kafka node {} exited at start:\n{}",
                    self.nodes[index].id,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "Kafka node {} did not serve within 90 s; see {}",
                    self.nodes[index].id,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the node leading `topic`'s `partition`, from the
    /// metadata of any live node.
    pub async fn leader_of(&self, topic: &str, partition: i32) -> Option<usize> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let bootstrap = self.bootstrap();
        let topic = topic.to_string();
        let leader = tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .ok()?;
            let md = c
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()?;
            let t = md.topics().first()?;
            let p = t.partitions().iter().find(|p| p.id() == partition)?;
            (p.leader() >= 0).then_some(p.leader())
        })
        .await
        .unwrap()?;
        self.nodes.iter().position(|n| n.id as i32 == leader)
    }
}

impl Drop for OwnedCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn base64_url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A single Kafka broker this test owns: it can be killed and restarted on
/// the same port and log, like a broker outage. Its log is durable, like
/// every Kafka log.
pub struct OwnedBroker {
    cluster: OwnedCluster,
}

impl OwnedBroker {
    pub async fn start() -> Self {
        Self {
            cluster: OwnedCluster::start(1).await,
        }
    }

    pub fn port(&self) -> u16 {
        self.cluster.port(0)
    }

    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap()
    }

    /// SIGKILLs the broker (no-op when already stopped).
    pub fn kill(&mut self) {
        self.cluster.kill(0);
    }

    /// (Re)starts the broker on the same port and log and waits until it serves.
    pub async fn restart(&mut self) {
        self.cluster.restart(0).await;
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

/// Kafka settings tuned for tests: short sessions (a SIGKILLed consumer's
/// partitions move on in seconds), small batches, short waits. The test
/// brokers allow these sessions ([`TEST_BROKER_SETTINGS`]).
pub fn kafka_config(bootstrap: &str, group: &str) -> KafkaConfig {
    let mut k = KafkaConfig {
        bootstrap_servers: bootstrap.into(),
        ..Default::default()
    };
    k.consumer.group_id = group.into();
    // Classic protocol only; with KIP-848 the broker's settings below rule.
    k.consumer.session_timeout_ms = 6_000;
    k.consumer.heartbeat_interval_ms = 500;
    k.consumer.stats_interval_ms = 1_000;
    k.consumer.commit_interval_ms = 200;
    k.consumer.retry_max_ms = 1_000;
    k.producer.linger_ms = 1;
    k.producer.delivery_timeout_ms = 5_000;
    k
}

/// Fresh topic names for this test, created on the broker (with their DLQs)
/// the way `fleetctl topics create` lays them out, replicated as far as the
/// broker count allows (the rule scripts/kafka/node.sh applies to internal
/// topics): RF 1 on a single broker, RF 3 / `min.insync.replicas` 2 on a
/// cluster of three or more, so a test on an [`OwnedCluster`] gets the
/// production layout.
pub async fn fresh_topics(bootstrap: &str, partitions: i32) -> TopicNames {
    let brokers = broker_count(bootstrap).await;
    let replication_factor = brokers.clamp(1, 3);
    let creation = TopicCreationConfig {
        default_partitions: partitions,
        replication_factor,
        min_insync_replicas: if replication_factor > 1 { 2 } else { 1 },
        ..TopicCreationConfig::default()
    };
    fresh_topics_with(bootstrap, &creation).await
}

/// Fresh topic names created with exactly these settings.
pub async fn fresh_topics_with(bootstrap: &str, creation: &TopicCreationConfig) -> TopicNames {
    let names = TopicNames::with_suffix(&unique_suffix());
    let specs = topic_specs(creation, &names).unwrap();
    let k = kafka_config(bootstrap, "");
    ensure_topics(&k, &specs).await.unwrap();
    names
}

/// How many brokers the cluster at `bootstrap` has.
async fn broker_count(bootstrap: &str) -> i32 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no metadata from the broker at {bootstrap}: {e}"));
        md.brokers().len() as i32
    })
    .await
    .unwrap()
}

/// Runs one of Apache Kafka's own CLI tools (main class `class`, e.g.
/// `org.apache.kafka.tools.consumer.group.ConsumerGroupCommand`) from the
/// same jars as the test brokers; returns (success, stdout, stderr).
pub async fn kafka_tool(class: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("java");
    cmd.arg("-Xmx256m")
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            workspace_root()
                .join("scripts/kafka/tools-log4j2.yaml")
                .display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()))
        .arg(class)
        .args(args)
        .stdin(Stdio::null());
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
