//! The ingest configuration (`FLEETWATCH_INGEST__SECTION__KEY` in the environment).

use std::net::SocketAddr;
use std::path::PathBuf;

use fleetwatch_common::config::Validate;
use fleetwatch_common::grpc::GrpcConfig;
use fleetwatch_common::{AdminConfig, LogConfig, Secret, ShutdownConfig};
use fleetwatch_db::DbConfig;
use fleetwatch_kafka::{KafkaConfig, TopicNames};
use serde::{Deserialize, Serialize};

/// Bytes a record needs beyond its frame data (metadata fields, key,
/// headers), so a frame of `max_frame_bytes` still fits into one record.
pub const RECORD_HEADROOM_BYTES: u32 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log format, level and OTLP export.
    pub log: LogConfig,
    /// Admin server (`/metrics`, `/healthz`, `/readyz`).
    pub admin: AdminConfig,
    /// Drain time limit (`shutdown.grace_ms`).
    pub shutdown: ShutdownConfig,
    /// Broker connection and producer tuning.
    pub kafka: KafkaConfig,
    /// Topic names produced to (telemetry, frames, detections).
    pub topics: TopicNames,
    /// Database holding the vehicle tokens.
    pub database: DbConfig,
    /// The vehicle-facing HTTP API.
    pub http: HttpConfig,
    /// The vehicle-facing gRPC API.
    pub grpc: GrpcConfig,
    /// The MQTT bridge.
    pub mqtt: MqttConfig,
    /// Validation and size limits.
    pub limits: LimitsConfig,
    /// The persistence service, asked for `GET /api/latest`.
    pub persistence: PersistenceConfig,
    /// Token lookup caching.
    pub auth: AuthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            admin: AdminConfig::on_port(9601),
            shutdown: ShutdownConfig::default(),
            kafka: KafkaConfig::default(),
            topics: TopicNames::default(),
            database: DbConfig::default(),
            http: HttpConfig::default(),
            grpc: GrpcConfig::on_port(50051),
            mqtt: MqttConfig::default(),
            limits: LimitsConfig::default(),
            persistence: PersistenceConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Run the MQTT bridge at all.
    pub enabled: bool,
    /// MQTT broker host.
    pub host: String,
    /// MQTT broker port.
    pub port: u16,
    /// Username the bridge logs in with (the shipped Mosquitto ACL names
    /// `fleetwatch-ingest`). Empty = anonymous.
    pub username: String,
    /// Password of `username`. Never logged.
    pub password: Secret,
    /// File holding the password instead (trailing newline ignored), e.g. a
    /// mounted Kubernetes Secret; read at start.
    pub password_file: Option<PathBuf>,
    /// Client id; must be stable across restarts so the broker keeps the
    /// persistent session (and its unacknowledged messages) for us, and
    /// unique per replica. Default: `fleetwatch-ingest-<hostname>` (in
    /// Kubernetes the pod name; use a StatefulSet for ids that survive a
    /// rescheduled pod).
    pub client_id: String,
    /// MQTT shared-subscription group: replicas subscribe to
    /// `$share/<group>/<filter>` and the broker spreads messages across them.
    /// Empty = plain subscriptions (every replica gets every message).
    pub shared_group: String,
    /// Topic filters carrying telemetry; the segment at the first `+` is the vehicle id.
    pub telemetry_filters: Vec<String>,
    /// Topic filters carrying detection messages; the segment at the first `+` is the vehicle id.
    pub detection_filters: Vec<String>,
    /// MQTT keep-alive interval.
    pub keep_alive_secs: u64,
    /// Messages being produced to Kafka at once; each is acknowledged to the
    /// MQTT broker, in arrival order, only after Kafka acknowledged it. This
    /// caps the bridge at max_in_flight / (Kafka ack time) messages/s: 1024
    /// at ~25 ms (10 ms linger + broker) is ~40,000/s; 256 capped it at 10,000.
    pub max_in_flight: usize,
    /// Longest wait between reconnection attempts to the MQTT broker.
    pub reconnect_max_backoff_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 1883,
            username: String::new(),
            password: Secret::default(),
            password_file: None,
            client_id: default_client_id(),
            shared_group: "fleetwatch-ingest".into(),
            telemetry_filters: vec!["fleet/+/telemetry".into()],
            detection_filters: vec!["fleet/+/detections".into(), "drone/+/detections".into()],
            keep_alive_secs: 30,
            max_in_flight: 1024,
            reconnect_max_backoff_ms: 5_000,
        }
    }
}

impl MqttConfig {
    /// The bridge's login: `None` for anonymous, else username and password
    /// (from `password` or `password_file`).
    pub fn credentials(&self) -> Result<Option<(String, Secret)>, String> {
        let password = match (&self.password_file, self.password.is_empty()) {
            (Some(_), false) => {
                return Err("mqtt.password and mqtt.password_file are both set; keep one".into());
            }
            (Some(path), true) => match std::fs::read_to_string(path) {
                Ok(s) => Secret::from(s.trim_end_matches(['\r', '\n'])),
                Err(e) => {
                    return Err(format!(
                        "mqtt.password_file: cannot read {}: {e}",
                        path.display()
                    ));
                }
            },
            (None, _) => self.password.clone(),
        };
        if self.username.is_empty() {
            if !password.is_empty() {
                return Err("mqtt.username: must be set when a password is".into());
            }
            return Ok(None);
        }
        Ok(Some((self.username.clone(), password)))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest JSON/NDJSON request body (HTTP) or MQTT payload.
    pub max_json_body_bytes: usize,
    /// Largest frame (encoded JPEG); at most `kafka.producer.max_message_bytes` minus 64 KiB.
    pub max_frame_bytes: usize,
    /// Most telemetry points in one request (HTTP), chunk (gRPC) or message (MQTT).
    pub max_points_per_request: usize,
    /// Samples further than this in the future are rejected (clock skew allowance).
    pub max_future_skew_secs: u64,
    /// Samples older than this are rejected.
    pub max_age_secs: u64,
    /// `Retry-After` sent with 503 when Kafka pushes back.
    pub retry_after_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_json_body_bytes: 1024 * 1024,
            max_frame_bytes: 3 * 1024 * 1024,
            max_points_per_request: 10_000,
            max_future_skew_secs: 300,
            max_age_secs: 7 * 24 * 3600,
            retry_after_secs: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistenceConfig {
    /// gRPC address of the persistence service.
    pub grpc_url: String,
    /// Timeout of one query, connection included.
    pub timeout_ms: u64,
    /// File holding ingest's service token (`fwt_...`, role viewer:
    /// `fleetctl tokens create --service ingest --name ingest --role viewer`),
    /// sent with every query; persistence refuses queries without one.
    pub service_token_file: Option<PathBuf>,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        Self {
            grpc_url: "http://127.0.0.1:50052".into(),
            timeout_ms: 3_000,
            service_token_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a token → vehicle (and vehicle exists) lookup is cached. A
    /// rotated or deactivated token keeps working at most this long.
    pub cache_ttl_secs: u64,
    /// How long an unknown token or vehicle is remembered as unknown.
    pub negative_cache_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            cache_ttl_secs: 60,
            negative_cache_ttl_secs: 5,
        }
    }
}

fn valid_filter(f: &str) -> Result<(), String> {
    let segments: Vec<&str> = f.split('/').collect();
    if !segments.contains(&"+") {
        return Err("needs a `+` segment at the vehicle id position".into());
    }
    for (i, s) in segments.iter().enumerate() {
        if s.contains('#') && (*s != "#" || i + 1 != segments.len()) {
            return Err("`#` may only be the whole last segment".into());
        }
        if s.contains('+') && *s != "+" {
            return Err("`+` must be a whole segment".into());
        }
    }
    Ok(())
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        let mut errs = self.kafka.validate();
        errs.extend(self.shutdown.validate());
        errs.extend(self.database.validate());
        let l = &self.limits;
        let max_frame = self
            .kafka
            .producer
            .max_message_bytes
            .saturating_sub(RECORD_HEADROOM_BYTES) as usize;
        if l.max_frame_bytes == 0 || l.max_frame_bytes > max_frame {
            errs.push(format!(
                "limits.max_frame_bytes ({}) must be between 1 and kafka.producer.max_message_bytes minus {} ({max_frame})",
                l.max_frame_bytes, RECORD_HEADROOM_BYTES
            ));
        }
        if l.max_json_body_bytes == 0 {
            errs.push("limits.max_json_body_bytes: must be at least 1".into());
        }
        if l.max_points_per_request == 0 {
            errs.push("limits.max_points_per_request: must be at least 1".into());
        }
        if l.max_age_secs == 0 {
            errs.push("limits.max_age_secs: must be at least 1".into());
        }
        if l.retry_after_secs == 0 {
            errs.push("limits.retry_after_secs: must be at least 1".into());
        }
        errs.extend(self.topics.validate());
        if !self.persistence.grpc_url.starts_with("http://")
            && !self.persistence.grpc_url.starts_with("https://")
        {
            errs.push(format!(
                "persistence.grpc_url ({:?}): must start with http:// or https://",
                self.persistence.grpc_url
            ));
        }
        if self.persistence.timeout_ms == 0 {
            errs.push("persistence.timeout_ms: must be at least 1".into());
        }
        let m = &self.mqtt;
        if m.enabled {
            if m.host.trim().is_empty() {
                errs.push("mqtt.host: must not be empty".into());
            }
            if m.port == 0 {
                errs.push("mqtt.port: must not be 0".into());
            }
            if m.client_id.trim().is_empty() {
                errs.push(
                    "mqtt.client_id: must not be empty (a stable id keeps the persistent session)"
                        .into(),
                );
            }
            if m.telemetry_filters.is_empty() && m.detection_filters.is_empty() {
                errs.push("mqtt: telemetry_filters and detection_filters are both empty; set mqtt.enabled = false instead".into());
            }
            for (section, filters) in [
                ("telemetry_filters", &m.telemetry_filters),
                ("detection_filters", &m.detection_filters),
            ] {
                for f in filters {
                    if let Err(e) = valid_filter(f) {
                        errs.push(format!("mqtt.{section}: {f:?} {e}"));
                    }
                }
            }
            if m.keep_alive_secs < 5 {
                errs.push("mqtt.keep_alive_secs: must be at least 5".into());
            }
            if m.max_in_flight == 0 {
                errs.push("mqtt.max_in_flight: must be at least 1".into());
            }
            if let Err(e) = m.credentials() {
                errs.push(e);
            }
        }
        errs
    }
}

/// `fleetwatch-ingest-<hostname>`: stable across restarts on one host, and
/// distinct per replica, so replicas do not kick each other off the broker.
fn default_client_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into());
    format!("fleetwatch-ingest-{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Vec::<String>::new());
    }

    #[test]
    fn reports_every_problem() {
        let mut c = Config::default();
        c.limits.max_frame_bytes = c.kafka.producer.max_message_bytes as usize;
        c.limits.max_points_per_request = 0;
        c.mqtt.telemetry_filters = vec!["fleet/x/telemetry".into()];
        c.mqtt.detection_filters = vec!["a/+/#/b".into()];
        c.persistence.grpc_url = "127.0.0.1:50052".into();
        c.kafka.bootstrap_servers = String::new();
        let errs = c.validate().join("\n");
        for needle in [
            "limits.max_frame_bytes",
            "limits.max_points_per_request",
            "mqtt.telemetry_filters",
            "mqtt.detection_filters",
            "persistence.grpc_url",
            "kafka.bootstrap_servers",
        ] {
            assert!(errs.contains(needle), "{needle} missing in {errs}");
        }
    }

    #[test]
    fn the_bridge_password_is_never_printed() {
        let mut c = Config::default();
        c.mqtt.username = "fleetwatch-ingest".into();
        c.mqtt.password = Secret::from("hunter2-s3cret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(
            c.mqtt
                .credentials()
                .unwrap()
                .map(|(u, p)| (u, p.expose().to_string())),
            Some(("fleetwatch-ingest".into(), "hunter2-s3cret".into()))
        );
    }

    #[test]
    fn credentials_from_a_file_or_none() {
        let mut c = MqttConfig::default();
        assert_eq!(c.credentials(), Ok(None));
        c.password = Secret::from("x");
        assert!(c.credentials().unwrap_err().contains("mqtt.username"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-file\n").unwrap();
        c.username = "bridge".into();
        c.password_file = Some(path.clone());
        assert!(c.credentials().unwrap_err().contains("both set"));
        c.password = Secret::default();
        assert_eq!(
            c.credentials()
                .unwrap()
                .map(|(_, p)| p.expose().to_string()),
            Some("from-file".into())
        );
        c.password_file = Some(dir.path().join("missing"));
        assert!(c.credentials().unwrap_err().contains("mqtt.password_file"));
    }

    #[test]
    fn a_numeric_password_is_refused_without_echoing_it() {
        let err = fleetwatch_testkit::load_config_toml::<Config>(
            "ingest",
            "[mqtt]\nusername = \"b\"\npassword = 987654321\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("password") && err.contains("must be a string"),
            "{err}"
        );
        assert!(!err.contains("987654321"), "{err}");
        let c: Config = fleetwatch_testkit::load_config_toml(
            "ingest",
            "[mqtt]\nusername = \"b\"\npassword = \"987654321\"\n",
        )
        .unwrap();
        assert_eq!(c.mqtt.password.expose(), "987654321");
    }

    #[test]
    fn disabled_mqtt_is_not_checked() {
        let mut c = Config::default();
        c.mqtt.enabled = false;
        c.mqtt.telemetry_filters.clear();
        c.mqtt.detection_filters.clear();
        assert!(c.validate().is_empty());
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
