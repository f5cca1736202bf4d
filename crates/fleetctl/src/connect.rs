//! Connecting to Postgres and Kafka with errors that tell the operator what to do.

use std::time::Duration;

use anyhow::anyhow;
use fleetwatch_db::{DbConfig, DbError};
use fleetwatch_kafka::KafkaConfig;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use sqlx::PgPool;

use crate::cli::Global;

pub use fleetwatch_common::secret::redact_url as redact;

/// `host:port` of a database URL, for "cannot reach" messages.
pub fn server_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or("localhost"),
                u.port().unwrap_or(5432)
            )
        })
        .unwrap_or_else(|_| redact(url))
}

pub fn db_config(url: &str) -> DbConfig {
    DbConfig {
        url: url.into(),
        max_connections: 2,
        connect_timeout_ms: 3_000,
    }
}

/// Connects without a schema check (migrate).
pub async fn db_unchecked(url: &str) -> anyhow::Result<PgPool> {
    fleetwatch_db::connect(&db_config(url))
        .await
        .map_err(|e| explain_db(url, e))
}

/// Connects and refuses a schema other than this build's.
pub async fn db(url: &str) -> anyhow::Result<PgPool> {
    fleetwatch_db::connect_checked(&db_config(url))
        .await
        .map_err(|e| explain_db(url, e))
}

pub fn explain_db(url: &str, e: DbError) -> anyhow::Error {
    let server = server_of(url);
    match &e {
        DbError::Connect(sqlx::Error::Database(d)) if d.code().as_deref() == Some("3D000") => {
            anyhow!(
                "database in {} does not exist: run `fleetctl migrate --create-database`, or fix --database-url / FLEETWATCH_DATABASE_URL",
                redact(url)
            )
        }
        DbError::Connect(sqlx::Error::Database(d))
            if matches!(d.code().as_deref(), Some("28P01" | "28000")) =>
        {
            anyhow!(
                "Postgres at {server} refused the login ({}): check the user and password in --database-url / FLEETWATCH_DATABASE_URL",
                d.message()
            )
        }
        DbError::Connect(sqlx::Error::Configuration(c)) => {
            anyhow!(
                "invalid --database-url / FLEETWATCH_DATABASE_URL {}: {c}",
                redact(url)
            )
        }
        DbError::Connect(inner) => anyhow!(
            "cannot reach Postgres at {server} ({inner}): is it running? set --database-url / FLEETWATCH_DATABASE_URL"
        ),
        _ => anyhow::Error::new(e),
    }
}

pub fn kafka_config(g: &Global) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: g.bootstrap_servers.clone(),
        ..Default::default()
    }
}

/// A librdkafka client config for the CLI's own metadata and tail clients.
pub fn rdkafka_config(g: &Global) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &g.bootstrap_servers)
        .set("client.id", "fleetctl")
        // The broker may be down: fail fast instead of librdkafka's long default.
        .set("socket.connection.setup.timeout.ms", "5000");
    c
}

/// Broker metadata (all topics or one); the error says how to fix a broker that does not answer.
pub async fn metadata(g: &Global, topic: Option<&str>) -> anyhow::Result<Metadata> {
    let consumer: BaseConsumer = rdkafka_config(g)
        .create()
        .map_err(|e| anyhow!("invalid Kafka settings for {}: {e}", g.bootstrap_servers))?;
    let topic = topic.map(str::to_string);
    let bootstrap = g.bootstrap_servers.clone();
    tokio::task::spawn_blocking(move || consumer.fetch_metadata(topic.as_deref(), Duration::from_secs(5)))
        .await?
        .map_err(|e| {
            anyhow!(
                "cannot reach the Kafka broker at {bootstrap} ({e}): is it running? set --bootstrap-servers / FLEETWATCH_KAFKA_BOOTSTRAP"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let r = redact("postgres://u:secret@db:5433/fw");
        assert!(!r.contains("secret"), "{r}");
        assert_eq!(server_of("postgres://u:secret@db:5433/fw"), "db:5433");
        assert_eq!(
            server_of("postgres://postgres@127.0.0.1/fw"),
            "127.0.0.1:5432"
        );
    }
}
