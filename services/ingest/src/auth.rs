//! Bearer token → vehicle, and "is this a registered vehicle", both cached in
//! memory with a TTL so the database sees one lookup per vehicle per TTL, not
//! one per request.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::config::AuthConfig;
use crate::error::IngestError;

/// Entries kept at most; beyond it expired ones are purged, and if that is
/// not enough the cache starts over (a flood of random tokens must not grow
/// memory without bound).
const MAX_ENTRIES: usize = 100_000;

struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(k)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn put(&self, k: K, v: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(k, (v, Instant::now() + ttl));
    }
}

pub struct Authenticator {
    pool: PgPool,
    ttl: Duration,
    negative_ttl: Duration,
    retry_after_secs: u64,
    // Keyed by the token's hash so plaintext tokens do not linger in memory.
    tokens: TtlCache<[u8; 32], Option<String>>,
    vehicles: TtlCache<String, bool>,
}

impl Authenticator {
    pub fn new(pool: PgPool, config: &AuthConfig, retry_after_secs: u64) -> Self {
        Self {
            pool,
            ttl: Duration::from_secs(config.cache_ttl_secs),
            negative_ttl: Duration::from_secs(
                config.negative_cache_ttl_secs.min(config.cache_ttl_secs),
            ),
            retry_after_secs,
            tokens: TtlCache::new(),
            vehicles: TtlCache::new(),
        }
    }

    /// A failed registry lookup: the vehicle may retry only what can heal.
    fn db_unavailable(&self, e: fleetwatch_db::DbError) -> IngestError {
        match e.class() {
            fleetwatch_db::ErrorClass::Transient => {
                tracing::warn!(error = %e, "vehicle lookup failed");
                IngestError::Unavailable {
                    reason: "vehicle registry unavailable".into(),
                    retry_after_secs: self.retry_after_secs,
                }
            }
            class => {
                tracing::error!(error = %e, class = class.label(), "vehicle lookup refused by the database");
                IngestError::Internal("vehicle registry lookup failed".into())
            }
        }
    }

    /// The vehicle an `Authorization` header value (`Bearer <token>`) belongs to.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<String, IngestError> {
        let token = bearer_token(authorization)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let vehicle = match self.tokens.get(&key) {
            Some(v) => v,
            None => {
                let v = fleetwatch_db::vehicle_for_token(&self.pool, token)
                    .await
                    .map_err(|e| self.db_unavailable(e))?;
                let ttl = if v.is_some() {
                    self.ttl
                } else {
                    self.negative_ttl
                };
                self.tokens.put(key, v.clone(), ttl);
                v
            }
        };
        vehicle.ok_or(IngestError::Unauthenticated("unknown or inactive token"))
    }

    /// Whether `id` is a registered, active vehicle (the MQTT bridge's check).
    pub async fn vehicle_exists(&self, id: &str) -> Result<bool, IngestError> {
        if let Some(v) = self.vehicles.get(&id.to_string()) {
            return Ok(v);
        }
        if !fleetwatch_proto::valid_vehicle_id(id) {
            return Ok(false);
        }
        let v = fleetwatch_db::vehicle_exists(&self.pool, id)
            .await
            .map_err(|e| self.db_unavailable(e))?;
        self.vehicles.put(
            id.to_string(),
            v,
            if v { self.ttl } else { self.negative_ttl },
        );
        Ok(v)
    }
}

/// Extracts the token of `Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, IngestError> {
    let value = authorization.ok_or(IngestError::Unauthenticated(
        "missing Authorization: Bearer <token>",
    ))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(IngestError::Unauthenticated(
            "malformed Authorization header; expected Bearer <token>",
        ))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(IngestError::Unauthenticated(
            "malformed Authorization header; expected Bearer <token>",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_tokens() {
        assert_eq!(bearer_token(Some("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")).ok(), Some("abc"));
        assert!(bearer_token(None).is_err());
        assert!(bearer_token(Some("Basic abc")).is_err());
        assert!(bearer_token(Some("Bearer")).is_err());
        assert!(bearer_token(Some("Bearer   ")).is_err());
    }

    #[test]
    fn cache_expires() {
        let c: TtlCache<u8, u8> = TtlCache::new();
        c.put(1, 7, Duration::from_secs(60));
        c.put(2, 8, Duration::ZERO);
        assert_eq!(c.get(&1), Some(7));
        assert_eq!(c.get(&2), None);
        assert_eq!(c.get(&3), None);
    }
}
