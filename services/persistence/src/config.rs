//! The persistence service's configuration (`FLEETWATCH_PERSISTENCE__...`).

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
    /// Admin server (`/metrics`, `/healthz`, `/readyz`), default port 9602.
    pub admin: AdminConfig,
    /// Drain time limit (`shutdown.grace_ms`).
    pub shutdown: ShutdownConfig,
    /// Broker connection and consumer tuning. The consumer groups are
    /// `<kafka.consumer.group_id>-telemetry`, `-detections` and `-frames`.
    pub kafka: KafkaConfig,
    /// Topic names (telemetry, detections and frames are consumed).
    pub topics: TopicNames,
    /// PostgreSQL connection; the schema must be at this build's version.
    pub database: DbConfig,
    /// gRPC query server.
    pub grpc: GrpcConfig,
    /// Who may query: every call carries an API token (ingest's service
    /// token, automation) or an operator's access token, role viewer or above.
    pub auth: AuthConfig,
    /// Where frame bytes are stored.
    pub object_store: ObjectStoreConfig,
    /// Telemetry partition upkeep and retention.
    pub retention: RetentionConfig,
    /// Consumer groups and write batching.
    pub writer: WriterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            admin: AdminConfig::on_port(9602),
            shutdown: ShutdownConfig::default(),
            kafka: {
                let mut k = KafkaConfig::default();
                k.consumer.group_id = "fleetwatch-persistence".into();
                k
            },
            topics: TopicNames::default(),
            database: DbConfig::default(),
            grpc: GrpcConfig::on_port(50052),
            auth: AuthConfig::default(),
            object_store: ObjectStoreConfig::default(),
            retention: RetentionConfig::default(),
            writer: WriterConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Telemetry day partitions older than this many days are dropped.
    pub telemetry_days: u32,
    /// Day partitions are created this many days ahead of today.
    pub partitions_ahead_days: u32,
    /// How often partitions are created ahead and old ones dropped.
    pub maintenance_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            telemetry_days: 30,
            partitions_ahead_days: 3,
            maintenance_interval_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    /// Most rows per INSERT statement; larger consumer batches are split
    /// into several statements of one transaction.
    pub max_rows_per_statement: usize,
    /// Transactions one telemetry batch is written in at once, each on its
    /// own connection and its own set of vehicles. One Postgres backend
    /// inserts on one core; two let a batch use two.
    pub telemetry_write_concurrency: usize,
    /// Frame uploads to the object store in flight at once.
    pub object_store_concurrency: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_rows_per_statement: 10_000,
            telemetry_write_concurrency: 2,
            object_store_concurrency: 8,
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
        if self.retention.telemetry_days == 0 {
            errs.push("retention.telemetry_days: must be at least 1".into());
        }
        if self.retention.partitions_ahead_days > 366 {
            errs.push("retention.partitions_ahead_days: must be at most 366".into());
        }
        if self.retention.maintenance_interval_secs == 0 {
            errs.push("retention.maintenance_interval_secs: must be at least 1".into());
        }
        if self.writer.max_rows_per_statement == 0 {
            errs.push("writer.max_rows_per_statement: must be at least 1".into());
        }
        if self.writer.telemetry_write_concurrency == 0 {
            errs.push("writer.telemetry_write_concurrency: must be at least 1".into());
        }
        if self.writer.object_store_concurrency == 0 {
            errs.push("writer.object_store_concurrency: must be at least 1".into());
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
        assert!(
            Config::default().validate().is_empty(),
            "{:?}",
            Config::default().validate()
        );
        assert_eq!(Config::default().admin.listen.port(), 9602);
        assert_eq!(Config::default().grpc.listen.port(), 50052);
    }

    #[test]
    fn reports_every_problem() {
        let mut c = Config::default();
        c.retention.telemetry_days = 0;
        c.object_store.url = "ftp://x".into();
        c.kafka.consumer.group_id = String::new();
        let errs = c.validate().join("\n");
        for field in [
            "retention.telemetry_days",
            "object_store.url",
            "kafka.consumer.group_id",
        ] {
            assert!(errs.contains(field), "{field} missing in {errs}");
        }
    }

    #[test]
    fn debug_hides_secret() {
        let c = ObjectStoreConfig {
            secret_access_key: "hunter2".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
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
