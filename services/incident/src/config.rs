//! The incident service's configuration (`FLEETWATCH_INCIDENT__...`).

use fleetwatch_auth::AuthConfig;
use fleetwatch_common::config::Validate;
use fleetwatch_common::grpc::GrpcConfig;
use fleetwatch_common::{AdminConfig, LogConfig, ShutdownConfig};
use fleetwatch_db::DbConfig;
use fleetwatch_kafka::{KafkaConfig, TopicNames};
use fleetwatch_objectstore::ObjectStoreConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log format, level and OTLP export.
    pub log: LogConfig,
    /// Admin server (`/metrics`, `/healthz`, `/readyz`), default port 9604.
    pub admin: AdminConfig,
    /// Drain time limit (`shutdown.grace_ms`).
    pub shutdown: ShutdownConfig,
    /// Broker connection and consumer tuning. The consumer groups are
    /// `<kafka.consumer.group_id>-telemetry`, `-detections` and `-frames`.
    pub kafka: KafkaConfig,
    /// Topic names: telemetry, detections and frames are consumed, incidents produced.
    pub topics: TopicNames,
    /// PostgreSQL connection; the schema must be at this build's version.
    pub database: DbConfig,
    /// gRPC API server.
    pub grpc: GrpcConfig,
    /// Who may call: every call carries an operator's access token or an API
    /// token (`Authorization: Bearer ...`), verified against `database`.
    pub auth: AuthConfig,
    /// Where evidence clips are stored (the same store persistence writes frames to).
    pub object_store: ObjectStoreConfig,
    /// Rule evaluation.
    pub engine: EngineConfig,
    /// Evidence clips and their retention.
    pub evidence: EvidenceConfig,
    /// The event outbox publisher.
    pub outbox: OutboxConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            admin: AdminConfig::on_port(9604),
            shutdown: ShutdownConfig::default(),
            kafka: {
                // Incidents are latency-bound: a batch starts at once with
                // what has arrived instead of lingering 10 ms for more.
                let mut k = KafkaConfig::default();
                k.consumer.group_id = "fleetwatch-incident".into();
                k.consumer.batch_max_wait_ms = 1;
                k
            },
            topics: TopicNames::default(),
            database: DbConfig::default(),
            grpc: GrpcConfig::on_port(50054),
            auth: AuthConfig::default(),
            object_store: ObjectStoreConfig::default(),
            engine: EngineConfig::default(),
            evidence: EvidenceConfig::default(),
            outbox: OutboxConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// How often rules are reloaded from the database (changes made through
    /// this replica's API apply at once).
    pub rules_refresh_ms: u64,
    /// How often silent vehicles are checked against link-loss rules.
    pub link_loss_check_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            rules_refresh_ms: 2_000,
            link_loss_check_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Collect a clip for each new incident (needs the frames topic).
    pub clips: bool,
    /// Seconds of frames before the trigger kept in the clip.
    pub clip_before_secs: f64,
    /// Seconds of frames after the trigger kept in the clip.
    pub clip_after_secs: f64,
    /// Recent frames buffered in memory per replica (for the part of a clip
    /// before its trigger), at most this many MiB in all.
    pub buffer_max_mib: u64,
    /// A resolved incident's evidence is kept this many days after resolution
    /// (`retain_until`); unresolved incidents' evidence is always kept.
    pub retention_days: u32,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            clips: true,
            clip_before_secs: 5.0,
            clip_after_secs: 5.0,
            buffer_max_mib: 256,
            retention_days: 90,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// How often a follower replica checks whether the publisher lead is
    /// free (a crashed leader's events wait up to this), and the leader's
    /// fallback poll (commits on any replica wake it through NOTIFY).
    pub poll_interval_ms: u64,
    /// Most unpublished events read per statement.
    pub batch_size: i64,
    /// Published rows are deleted after this many hours.
    pub keep_published_hours: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 500,
            batch_size: 500,
            keep_published_hours: 24,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        let mut errs = self.kafka.validate();
        errs.extend(self.shutdown.validate());
        if self.kafka.consumer.group_id.trim().is_empty() {
            errs.push("kafka.consumer.group_id: must not be empty".into());
        }
        errs.extend(self.topics.validate());
        errs.extend(self.database.validate());
        errs.extend(self.auth.validate());
        errs.extend(self.object_store.validate());
        if self.engine.rules_refresh_ms == 0 {
            errs.push("engine.rules_refresh_ms: must be at least 1".into());
        }
        if self.engine.link_loss_check_ms == 0 {
            errs.push("engine.link_loss_check_ms: must be at least 1".into());
        }
        for (name, v) in [
            ("evidence.clip_before_secs", self.evidence.clip_before_secs),
            ("evidence.clip_after_secs", self.evidence.clip_after_secs),
        ] {
            if !v.is_finite() || !(0.0..=600.0).contains(&v) {
                errs.push(format!("{name}: must be within 0..600"));
            }
        }
        if self.evidence.buffer_max_mib == 0 {
            errs.push("evidence.buffer_max_mib: must be at least 1".into());
        }
        if self.evidence.retention_days == 0 {
            errs.push("evidence.retention_days: must be at least 1".into());
        }
        if self.outbox.poll_interval_ms == 0 {
            errs.push("outbox.poll_interval_ms: must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.outbox.batch_size) {
            errs.push("outbox.batch_size: must be within 1..10000".into());
        }
        errs
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.admin.listen.port(), 9604);
        assert_eq!(c.grpc.listen.port(), 50054);
    }

    #[test]
    fn latency_defaults_survive_a_partial_kafka_section() {
        let c: Config = fleetwatch_testkit::load_config_toml(
            "incident",
            "[kafka]\nbootstrap_servers = \"kafka:9092\"\n[kafka.consumer]\nmax_poll_interval_ms = 60000\n",
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "kafka:9092");
        assert_eq!(c.kafka.consumer.max_poll_interval_ms, 60_000);
        assert_eq!(c.kafka.consumer.batch_max_wait_ms, 1);
    }

    #[test]
    fn reports_every_problem() {
        let mut c = Config::default();
        c.evidence.clip_before_secs = -1.0;
        c.outbox.batch_size = 0;
        c.kafka.consumer.group_id = String::new();
        c.topics.incidents = String::new();
        let errs = c.validate().join("\n");
        for field in [
            "evidence.clip_before_secs",
            "outbox.batch_size",
            "kafka.consumer.group_id",
            "topics.incidents",
        ] {
            assert!(errs.contains(field), "{field} missing in {errs}");
        }
    }
}

#[cfg(test)]
mod documented {
    #[test]
    fn every_key_is_documented() {
        fleetwatch_testkit::assert_config_documented(
            &super::Config::default(),
            env!("CARGO_MANIFEST_DIR"),
        );
    }
}
