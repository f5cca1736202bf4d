//! Public halves of the access-token signing keys. The private halves never
//! enter the database (see the crate README, "Signing keys").

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use super::{StoreError, audit};
use crate::jwt::PublicKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyInfo {
    pub kid: String,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// Makes verifiers accept tokens signed by `key`. Registering a key again is
/// a no-op; a retired key cannot come back.
pub async fn register_signing_key(
    pool: &PgPool,
    key: &PublicKey,
    actor: &str,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO signing_keys (kid, public_key) VALUES ($1, $2) ON CONFLICT (kid) DO NOTHING",
    )
    .bind(&key.kid)
    .bind(key.bytes.as_slice())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        audit(&mut tx, actor, "key.register", &key.kid, json!({})).await?;
    } else {
        let retired: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT retired_at FROM signing_keys WHERE kid = $1")
                .bind(&key.kid)
                .fetch_one(&mut *tx)
                .await?;
        if retired.is_some() {
            return Err(StoreError::KeyRetired(key.kid.clone()));
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Refuses every token signed by `kid` from now on, on every replica.
pub async fn retire_signing_key(pool: &PgPool, kid: &str, actor: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        "UPDATE signing_keys SET retired_at = coalesce(retired_at, now()) WHERE kid = $1",
    )
    .bind(kid)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::NoSuchKey(kid.to_string()));
    }
    audit(&mut tx, actor, "key.retire", kid, json!({})).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn list_signing_keys(pool: &PgPool) -> Result<Vec<SigningKeyInfo>, StoreError> {
    let rows: Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT kid, created_at, retired_at FROM signing_keys ORDER BY created_at, kid",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kid, created_at, retired_at)| SigningKeyInfo {
            kid,
            created_at,
            retired_at,
        })
        .collect())
}

/// The verifier's lookup: the public key of an active (not retired) `kid`.
pub(crate) async fn lookup_key(pool: &PgPool, kid: &str) -> Result<Option<[u8; 32]>, sqlx::Error> {
    let bytes: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT public_key FROM signing_keys WHERE kid = $1 AND retired_at IS NULL",
    )
    .bind(kid)
    .fetch_optional(pool)
    .await?;
    Ok(bytes.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()))
}
