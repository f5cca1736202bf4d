//! Connection and tuning settings, shared by every service's `[kafka]` section.

use std::collections::BTreeMap;

use fleetwatch_common::Secret;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of any Kafka-protocol broker.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties passed through verbatim, e.g.
    /// `security.protocol`, `sasl.mechanism`. Values are never logged. Keys
    /// that would break the delivery contract (acks, idempotence, offset
    /// storage) or that a typed field above owns are refused at start.
    pub properties: BTreeMap<String, Secret>,
    pub producer: ProducerConfig,
    pub consumer: ConsumerConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
            producer: ProducerConfig::default(),
            consumer: ConsumerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// How long records wait to be batched (`linger.ms`).
    pub linger_ms: u32,
    /// Max bytes per partition batch (`batch.size`).
    pub batch_size: u32,
    /// Local queue bound (`queue.buffering.max.messages`); beyond it sends are
    /// refused with back-pressure instead of blocking.
    pub queue_max_messages: u32,
    /// Local queue bound in KiB (`queue.buffering.max.kbytes`).
    pub queue_max_kbytes: u32,
    /// A record not acknowledged within this time fails (`message.timeout.ms`);
    /// ingest turns that into 503 for the vehicle.
    pub delivery_timeout_ms: u32,
    /// Largest record accepted (`message.max.bytes`).
    pub max_message_bytes: u32,
    /// `none`, `lz4`, `zstd`, `snappy` or `gzip`.
    pub compression: String,
    /// Idempotent producer (no duplicates from internal retries).
    pub idempotence: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            // Brokers pay per produce request more than per record, so a
            // little lingering batches the many small records of a fleet;
            // 10 ms keeps the ack (the HTTP round trip) short.
            linger_ms: 10,
            batch_size: 1_000_000,
            queue_max_messages: 100_000,
            queue_max_kbytes: 256 * 1024,
            delivery_timeout_ms: 10_000,
            max_message_bytes: 4 * 1024 * 1024,
            compression: "lz4".into(),
            idempotence: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Consumer group; every replica of a service shares it.
    pub group_id: String,
    /// Group membership protocol (`group.protocol`): `consumer` (KIP-848,
    /// Kafka 4.0+: the broker assigns partitions incrementally, no
    /// stop-the-world rebalance) or `classic` (JoinGroup/SyncGroup, for
    /// brokers before 4.0). With `consumer`, session and heartbeat timing
    /// are the broker's (`group.consumer.*`) and the two settings below are
    /// not sent.
    pub group_protocol: String,
    /// Longest gap between two polls before the member is removed
    /// (`max.poll.interval.ms`).
    pub max_poll_interval_ms: u32,
    /// `session.timeout.ms` (classic protocol only); must not exceed
    /// `max_poll_interval_ms`.
    pub session_timeout_ms: u32,
    /// `heartbeat.interval.ms` (classic protocol only).
    pub heartbeat_interval_ms: u32,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// Records handed to the handler at once.
    pub batch_max_records: usize,
    /// How long to wait filling a batch once its first record arrived.
    pub batch_max_wait_ms: u64,
    /// First and largest backoff between retries of a transient failure.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    pub commit_interval_ms: u32,
    /// How often lag metrics are refreshed (`statistics.interval.ms`).
    pub stats_interval_ms: u32,
    /// Longest the broker may hold a fetch with no new data
    /// (`fetch.wait.max.ms`). Kafka answers a waiting fetch as soon as data
    /// arrives, so this is not latency (send -> handler p50 5.3 ms at 500 ms
    /// against 5.5 ms at 1 ms, `benches/roundtrip.rs`); it only bounds idle
    /// polling. librdkafka's 500 ms.
    pub fetch_wait_max_ms: u32,
    /// Bytes per fetch response over all partitions (`fetch.max.bytes`).
    pub fetch_max_bytes: u32,
    /// Bytes per partition per fetch (`max.partition.fetch.bytes`); a larger
    /// record (a frame) still comes through alone. librdkafka's 1 MiB.
    pub partition_fetch_max_bytes: u32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            group_id: String::new(),
            group_protocol: "consumer".into(),
            max_poll_interval_ms: 300_000,
            session_timeout_ms: 30_000,
            heartbeat_interval_ms: 3_000,
            auto_offset_reset: "earliest".into(),
            batch_max_records: 500,
            batch_max_wait_ms: 10,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            commit_interval_ms: 1_000,
            stats_interval_ms: 5_000,
            fetch_wait_max_ms: 500,
            fetch_max_bytes: 16 * 1024 * 1024,
            partition_fetch_max_bytes: 1024 * 1024,
        }
    }
}

/// Why `key` may not be set through `kafka.properties`, if it may not: the
/// keys the delivery contract rests on (DESIGN.md "Kafka contracts") and the
/// ones a typed field sets, so a config cannot quietly override either.
pub fn reserved_property(key: &str) -> Option<&'static str> {
    // librdkafka treats these names as aliases of each other.
    Some(match key {
        "acks" | "request.required.acks" => {
            "refused: producers always use acks=all, which the delivery contract rests on"
        }
        "enable.idempotence" => {
            "refused: set kafka.producer.idempotence instead (and leave it on outside tests)"
        }
        "enable.auto.offset.store" | "enable.auto.commit" | "auto.commit.enable" => {
            "refused: offsets are stored only after the effect is durable; commit timing is kafka.consumer.commit_interval_ms"
        }
        "enable.partition.eof" | "transactional.id" | "isolation.level" => {
            "refused: the consumer and producer discipline depends on its fixed value"
        }
        "group.id" => "refused: set the consumer group in the service's own config",
        "bootstrap.servers" | "metadata.broker.list" => "refused: set kafka.bootstrap_servers",
        "group.protocol" => "refused: set kafka.consumer.group_protocol",
        "auto.offset.reset" => "refused: set kafka.consumer.auto_offset_reset",
        "linger.ms" | "queue.buffering.max.ms" => "refused: set kafka.producer.linger_ms",
        "message.timeout.ms" | "delivery.timeout.ms" => {
            "refused: set kafka.producer.delivery_timeout_ms"
        }
        "message.max.bytes" => "refused: set kafka.producer.max_message_bytes",
        "compression.type" | "compression.codec" => "refused: set kafka.producer.compression",
        "max.poll.interval.ms" => "refused: set kafka.consumer.max_poll_interval_ms",
        _ => return None,
    })
}

impl KafkaConfig {
    /// Problems a service should report at start, before connecting.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
            errs.push("kafka.bootstrap_servers: must not be empty".into());
        }
        for key in self.properties.keys() {
            if let Some(why) = reserved_property(key) {
                errs.push(format!("kafka.properties.{key}: {why}"));
            }
        }
        let c = &self.consumer;
        if c.session_timeout_ms > c.max_poll_interval_ms {
            errs.push(format!(
                "kafka.consumer.session_timeout_ms ({}) must not exceed kafka.consumer.max_poll_interval_ms ({})",
                c.session_timeout_ms, c.max_poll_interval_ms
            ));
        }
        if !matches!(c.group_protocol.as_str(), "consumer" | "classic") {
            errs.push(
                "kafka.consumer.group_protocol: must be `consumer` (KIP-848) or `classic`".into(),
            );
        }
        if !matches!(c.auto_offset_reset.as_str(), "earliest" | "latest") {
            errs.push("kafka.consumer.auto_offset_reset: must be `earliest` or `latest`".into());
        }
        if c.batch_max_records == 0 {
            errs.push("kafka.consumer.batch_max_records: must be at least 1".into());
        }
        if !matches!(
            self.producer.compression.as_str(),
            "none" | "lz4" | "zstd" | "snappy" | "gzip"
        ) {
            errs.push(
                "kafka.producer.compression: must be one of none, lz4, zstd, snappy, gzip".into(),
            );
        }
        errs
    }

    pub(crate) fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c
    }

    /// `properties` go last so an explicit librdkafka setting wins over the
    /// typed fields above it.
    pub(crate) fn with_properties(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v.expose());
        }
        c
    }

    pub(crate) fn producer_client_config(&self, client_id: &str) -> ClientConfig {
        let p = &self.producer;
        let mut c = self.base();
        c.set("client.id", client_id)
            .set("acks", "all")
            .set("enable.idempotence", p.idempotence.to_string())
            .set("linger.ms", p.linger_ms.to_string())
            .set("batch.size", p.batch_size.to_string())
            .set(
                "queue.buffering.max.messages",
                p.queue_max_messages.to_string(),
            )
            .set("queue.buffering.max.kbytes", p.queue_max_kbytes.to_string())
            .set("message.timeout.ms", p.delivery_timeout_ms.to_string())
            .set("message.max.bytes", p.max_message_bytes.to_string())
            .set("compression.type", &p.compression);
        self.with_properties(c)
    }

    pub(crate) fn consumer_client_config(&self, client_id: &str) -> ClientConfig {
        let k = &self.consumer;
        let mut c = self.base();
        c.set("client.id", client_id)
            .set("group.id", &k.group_id)
            // Offsets are stored by hand after the effect is durable, and the
            // stored ones committed in the background.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", k.commit_interval_ms.to_string())
            .set("auto.offset.reset", &k.auto_offset_reset)
            .set("max.poll.interval.ms", k.max_poll_interval_ms.to_string())
            .set("group.protocol", &k.group_protocol)
            .set("statistics.interval.ms", k.stats_interval_ms.to_string())
            .set("fetch.wait.max.ms", k.fetch_wait_max_ms.to_string())
            .set("fetch.max.bytes", k.fetch_max_bytes.to_string())
            .set(
                "max.partition.fetch.bytes",
                k.partition_fetch_max_bytes.to_string(),
            )
            .set("enable.partition.eof", "false");
        // librdkafka refuses these with the consumer protocol: the broker
        // owns the session there.
        if k.group_protocol == "classic" {
            c.set("session.timeout.ms", k.session_timeout_ms.to_string())
                .set("heartbeat.interval.ms", k.heartbeat_interval_ms.to_string());
        }
        self.with_properties(c)
    }
}

/// How topics are created (`fleetctl topics create`, the Helm job, tests):
/// the `[topics]` section of fleetctl's config. The defaults suit a
/// production cluster of three or more brokers; a single-node dev broker
/// needs `replication_factor = 1` and `min_insync_replicas = 1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicCreationConfig {
    /// Partitions of a v1 topic not named in `partitions`.
    pub default_partitions: i32,
    /// Partitions of every `.dlq` topic not named in `partitions`.
    pub dlq_partitions: i32,
    /// Replicas of every partition. 3 survives one broker lost while a
    /// second is restarted.
    #[serde(alias = "replication")]
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic: with `acks=all` a write is
    /// acknowledged only once this many replicas have it, so an acknowledged
    /// point survives losing `min_insync_replicas - 1` brokers. At most
    /// `replication_factor`, or no write ever succeeds.
    pub min_insync_replicas: i32,
    /// `max.message.bytes` of every topic except frames: at least
    /// `kafka.producer.max_message_bytes` (4 MiB), because ingest splits
    /// telemetry into records of up to that size, and a broker's default
    /// (1 MiB) would refuse the large ones.
    pub max_message_bytes: u32,
    /// `max.message.bytes` of the frames topic and its `.dlq`: a frame is up
    /// to ingest's `limits.max_frame_bytes` (3 MiB) plus metadata, and its
    /// dead-letter copy carries error headers on top; the headroom lets
    /// frames grow without altering the topics.
    pub frames_max_message_bytes: u32,
    /// Per-topic partition counts, e.g. `"fleet.telemetry.v1" = 12`.
    pub partitions: BTreeMap<String, i32>,
    /// Further topic configs per topic, applied last (they win over the keys
    /// above), e.g. `[topics.configs."fleet.telemetry.v1"] "retention.ms" = "604800000"`.
    pub configs: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for TopicCreationConfig {
    fn default() -> Self {
        Self {
            default_partitions: 6,
            dlq_partitions: 1,
            replication_factor: 3,
            min_insync_replicas: 2,
            max_message_bytes: 4 * 1024 * 1024 + 64 * 1024,
            frames_max_message_bytes: 8 * 1024 * 1024,
            partitions: BTreeMap::new(),
            configs: BTreeMap::new(),
        }
    }
}

impl TopicCreationConfig {
    /// For one broker: a single replica, so writes need only that one.
    pub fn single_node() -> Self {
        Self {
            replication_factor: 1,
            min_insync_replicas: 1,
            ..Self::default()
        }
    }

    /// Problems to report before any topic is created, all at once.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.default_partitions < 1 {
            errs.push("topics.default_partitions must be at least 1".into());
        }
        if self.dlq_partitions < 1 {
            errs.push("topics.dlq_partitions must be at least 1".into());
        }
        if self.replication_factor < 1 {
            errs.push("topics.replication_factor must be at least 1".into());
        }
        if self.min_insync_replicas < 1 {
            errs.push("topics.min_insync_replicas must be at least 1".into());
        } else if self.min_insync_replicas > self.replication_factor.max(1) {
            errs.push(format!(
                "topics.min_insync_replicas ({}) exceeds topics.replication_factor ({}): every acks=all write would be refused; lower it (1 for a single-node broker)",
                self.min_insync_replicas, self.replication_factor
            ));
        }
        for (key, v) in [
            ("max_message_bytes", self.max_message_bytes),
            ("frames_max_message_bytes", self.frames_max_message_bytes),
        ] {
            if v < 1024 {
                errs.push(format!("topics.{key} ({v}) must be at least 1024"));
            }
        }
        for (name, n) in &self.partitions {
            if *n < 1 {
                errs.push(format!("topics.partitions.{name:?} must be at least 1"));
            }
        }
        errs
    }
}

/// Topic names a service uses; tests give each run its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicNames {
    pub telemetry: String,
    pub frames: String,
    pub detections: String,
    pub incidents: String,
    pub commands: String,
    pub command_status: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        use fleetwatch_proto::topics;
        Self {
            telemetry: topics::TELEMETRY.into(),
            frames: topics::FRAMES.into(),
            detections: topics::DETECTIONS.into(),
            incidents: topics::INCIDENTS.into(),
            commands: topics::COMMANDS.into(),
            command_status: topics::COMMAND_STATUS.into(),
        }
    }
}

impl TopicNames {
    /// Problems with the names, as `topics.<field>: reason` lines: Kafka's
    /// own rules (1 to 249 of `[A-Za-z0-9._-]`), checked before connecting.
    pub fn validate(&self) -> Vec<String> {
        let fields = [
            ("telemetry", &self.telemetry),
            ("frames", &self.frames),
            ("detections", &self.detections),
            ("incidents", &self.incidents),
            ("commands", &self.commands),
            ("command_status", &self.command_status),
        ];
        let mut errs = Vec::new();
        for (field, name) in fields {
            if name.is_empty() {
                errs.push(format!("topics.{field}: must not be empty"));
            } else if name.len() > 249 {
                errs.push(format!(
                    "topics.{field}: longer than Kafka's 249 characters"
                ));
            } else if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                errs.push(format!(
                    "topics.{field}: may contain only letters, digits, '.', '_' and '-'"
                ));
            }
        }
        errs
    }

    /// Every topic with a suffix, e.g. `fleet.telemetry.v1.t1a2b`.
    pub fn with_suffix(suffix: &str) -> Self {
        let d = Self::default();
        Self {
            telemetry: format!("{}.{suffix}", d.telemetry),
            frames: format!("{}.{suffix}", d.frames),
            detections: format!("{}.{suffix}", d.detections),
            incidents: format!("{}.{suffix}", d.incidents),
            commands: format!("{}.{suffix}", d.commands),
            command_status: format!("{}.{suffix}", d.command_status),
        }
    }

    pub fn all(&self) -> [&str; 6] {
        [
            &self.telemetry,
            &self.frames,
            &self.detections,
            &self.incidents,
            &self.commands,
            &self.command_status,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_keys_are_refused_naming_the_key() {
        let mut c = KafkaConfig::default();
        for key in [
            "acks",
            "enable.idempotence",
            "enable.auto.offset.store",
            "linger.ms",
        ] {
            c.properties.insert(key.into(), Secret::from("x"));
        }
        c.properties
            .insert("sasl.mechanism".into(), Secret::from("SCRAM-SHA-512"));
        let errs = c.validate();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("kafka.properties.acks: refused"))
        );
        assert!(errs.iter().any(|e| {
            e.starts_with("kafka.properties.linger.ms: refused: set kafka.producer.linger_ms")
        }));
        assert!(!errs.iter().any(|e| e.contains("sasl.mechanism")));
    }

    #[test]
    fn property_values_never_print() {
        let mut c = KafkaConfig::default();
        c.properties
            .insert("sasl.password".into(), Secret::from("hunter2"));
        let shown = format!("{c:?}");
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let client = c.producer_client_config("t");
        assert_eq!(client.get("sasl.password"), Some("hunter2"));
    }
}
