//! The one Fleetwatch schema (`migrations/`, embedded here), the check every
//! service runs at start so it never works on a wrong schema, pool setup, the
//! database readiness watch, vehicle registration/token lookup, and the one
//! classification of database errors.

mod classify;

pub use classify::{ErrorClass, classify, classify_sqlstate};

use std::time::Duration;

use fleetwatch_common::{Readiness, SecretUrl, Shutdown, Stage, Supervisor};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error(
        "database schema is at version {found}, this build needs {expected}; run `fleetctl migrate`{hint}"
    )]
    WrongSchema {
        found: String,
        expected: i64,
        hint: &'static str,
    },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "vehicle id {0:?} is invalid: use 1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"
    )]
    InvalidVehicleId(String),
    #[error("vehicle {0} already exists")]
    VehicleExists(String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

impl DbError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Connect(e) | Self::Sql(e) => classify(e),
            Self::InvalidVehicleId(_) | Self::VehicleExists(_) => ErrorClass::Data,
            Self::WrongSchema { .. } | Self::Migrate(_) => ErrorClass::Bug,
        }
    }
}

/// The `[database]` section of service configs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbConfig {
    /// `postgres://user@host:port/db`. The password, if any, is never logged.
    pub url: SecretUrl,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/fleetwatch".into(),
            max_connections: 8,
            connect_timeout_ms: 5_000,
        }
    }
}

impl DbConfig {
    /// Problems with the section, as `database.<field>: reason` lines.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        match url::Url::parse(self.url.expose()) {
            _ if self.url.expose().trim().is_empty() => {
                errs.push("database.url: must not be empty".into())
            }
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {}
            Ok(_) => errs.push("database.url: must start with postgres://".into()),
            // The parser's message may quote the URL, password included.
            Err(_) => errs.push(
                "database.url: not a URL (postgres://user:password@host:port/database)".into(),
            ),
        }
        if self.max_connections == 0 {
            errs.push("database.max_connections: must be at least 1".into());
        }
        if self.connect_timeout_ms == 0 {
            errs.push("database.connect_timeout_ms: must be at least 1".into());
        }
        errs
    }
}

/// Opens a pool without checking the schema (for `fleetctl migrate`).
pub async fn connect(config: &DbConfig) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.connect_timeout_ms))
        .connect(config.url.expose())
        .await
        .map_err(DbError::Connect)
}

/// Opens a pool and refuses a schema other than the one this build embeds.
pub async fn connect_checked(config: &DbConfig) -> Result<PgPool, DbError> {
    let pool = connect(config).await?;
    check_schema(&pool).await?;
    Ok(pool)
}

pub fn expected_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

pub async fn check_schema(pool: &PgPool) -> Result<(), DbError> {
    let expected = expected_version();
    let found: Option<i64> = match sqlx::query_scalar::<_, Option<i64>>(
        "SELECT max(version) FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(pool)
    .await
    {
        Ok(v) => v,
        // 42P01: the migrations table does not exist, nothing was ever applied.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => None,
        Err(e) => return Err(e.into()),
    };
    match found {
        Some(v) if v == expected => Ok(()),
        Some(v) if v > expected => Err(DbError::WrongSchema {
            found: v.to_string(),
            expected,
            hint: " from an older release, or upgrade this service",
        }),
        Some(v) => Err(DbError::WrongSchema {
            found: v.to_string(),
            expected,
            hint: "",
        }),
        None => Err(DbError::WrongSchema {
            found: "none (empty database)".into(),
            expected,
            hint: "",
        }),
    }
}

/// Applies pending migrations; returns the versions applied now.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>, DbError> {
    let before: Vec<i64> = applied_versions(pool).await;
    MIGRATOR.run(pool).await?;
    let after = applied_versions(pool).await;
    Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
}

async fn applied_versions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

/// SHA-256 of a bearer token, the form stored in `vehicles.token_sha256`.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Registers a vehicle and returns its new bearer token (shown once).
pub async fn add_vehicle(
    pool: &PgPool,
    id: &str,
    kind: &str,
    name: Option<&str>,
) -> Result<String, DbError> {
    if !fleetwatch_proto::valid_vehicle_id(id) {
        return Err(DbError::InvalidVehicleId(id.to_string()));
    }
    let token = new_token();
    let r =
        sqlx::query("INSERT INTO vehicles (id, kind, name, token_sha256) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(kind)
            .bind(name)
            .bind(token_hash(&token))
            .execute(pool)
            .await;
    match r {
        Ok(_) => Ok(token),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            Err(DbError::VehicleExists(id.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Replaces a vehicle's token (the old one stops working at once).
pub async fn rotate_token(pool: &PgPool, id: &str) -> Result<Option<String>, DbError> {
    let token = new_token();
    let n = sqlx::query("UPDATE vehicles SET token_sha256 = $2 WHERE id = $1")
        .bind(id)
        .bind(token_hash(&token))
        .execute(pool)
        .await?
        .rows_affected();
    Ok((n == 1).then_some(token))
}

/// The active vehicle a token belongs to.
pub async fn vehicle_for_token(pool: &PgPool, token: &str) -> Result<Option<String>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM vehicles WHERE token_sha256 = $1 AND active")
            .bind(token_hash(token))
            .fetch_optional(pool)
            .await?,
    )
}

/// Whether `id` is a registered, active vehicle.
pub async fn vehicle_exists(pool: &PgPool, id: &str) -> Result<bool, DbError> {
    Ok(
        sqlx::query_scalar::<_, i32>("SELECT 1 FROM vehicles WHERE id = $1 AND active")
            .bind(id)
            .fetch_optional(pool)
            .await?
            .is_some(),
    )
}

fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("fw_{}", hex::encode(bytes))
}

/// Puts `pool` under the supervisor: readiness follows the database (a
/// `"database"` part, see [`watch_readiness`]) until the servers stage, and
/// the pool closes in the last stage, after everything that uses it.
pub fn supervise(sup: &mut Supervisor, pool: &PgPool, readiness: &Readiness) {
    let database = readiness.part("database");
    let p = pool.clone();
    sup.spawn(Stage::Servers, "database readiness", |stop| {
        watch_readiness(p, database, stop)
    });
    let p = pool.clone();
    sup.on_drain(
        Stage::Pools,
        "close the database pool",
        move |_| async move {
            p.close().await;
            Ok(())
        },
    );
}

/// Keeps `readiness` true while the database answers a ping (each second,
/// 2 s timeout), so a service whose consumers are running but whose database
/// is gone drops out of its Service until it comes back. Not ready on exit.
pub async fn watch_readiness(pool: PgPool, readiness: Readiness, shutdown: Shutdown) {
    loop {
        let ok = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&pool),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if ok != readiness.is_ready() {
            if ok {
                tracing::info!("ready");
            } else {
                tracing::warn!("database unreachable; not ready");
            }
        }
        readiness.set(ok);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    readiness.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with("fw_"));
        assert_eq!(token_hash(&a).len(), 32);
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
