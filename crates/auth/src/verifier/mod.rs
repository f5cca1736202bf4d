//! [`Verifier`]: `Authorization: Bearer ...` → [`Principal`]. Accepts both
//! kinds of credential: an access token (EdDSA JWT: signature by an active
//! key, `exp`/`nbf`/`iss`/`aud`, then the user must still be active and not
//! have changed password since) and an API token (`fwt_...`, by hash: not
//! revoked, not expired, owner active; never above the owner's role).
//! What it learns from the database is cached (see `cache`) and dropped by
//! LISTEN/NOTIFY the moment a revoke, disable or role change commits.

mod cache;
mod listen;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use chrono::Utc;
use jsonwebtoken::Validation;
use sqlx::PgPool;

use crate::api_token::{API_TOKEN_PREFIX, api_token_hash, is_api_token};
use crate::config::AuthConfig;
use crate::error::AuthError;
use crate::store::{self, TokenRow, UserState};
use crate::{Principal, PrincipalKind, jwt, metrics};
use cache::{Caches, kid_key};

/// Verifies bearer credentials. Cheap to clone (one shared cache); build one
/// per process and run [`Verifier::listen`] as a task, or every request goes
/// to the database (correct, only slower).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    validation: Validation,
    touch_every: Duration,
    caches: Mutex<Caches>,
    listening: tokio::sync::watch::Sender<bool>,
    hits: AtomicU64,
    misses: AtomicU64,
    refused_from_cache: AtomicU64,
    invalidations: AtomicU64,
}

/// Cache sizes and counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Entries now in the positive caches.
    pub tokens: usize,
    pub users: usize,
    pub keys: usize,
    /// Entries now in the negative cache.
    pub refused: usize,
    /// Answers served from the positive caches.
    pub hits: u64,
    /// Database lookups.
    pub misses: u64,
    /// Refusals served from the negative cache.
    pub refused_from_cache: u64,
    /// Notifications applied.
    pub invalidations: u64,
    pub listening: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("stats", &self.stats())
            .finish()
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed(
        "expected Authorization: Bearer <token>",
    ))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed(
            "expected Authorization: Bearer <token>",
        ));
    }
    Ok(token)
}

/// A database failure as the caller sees it: retry for a transient one.
pub(crate) fn db_failure(what: &'static str, e: &sqlx::Error) -> AuthError {
    match fleetwatch_db::classify(e) {
        fleetwatch_db::ErrorClass::Transient => {
            tracing::warn!(error = %e, what, "identity lookup failed");
            AuthError::Unavailable
        }
        class => {
            tracing::error!(error = %e, what, class = class.label(), "identity lookup refused by the database");
            AuthError::Internal
        }
    }
}

impl Verifier {
    pub fn new(pool: PgPool, config: &AuthConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                validation: jwt::validation(config),
                touch_every: Duration::from_secs(config.last_used_interval_secs),
                caches: Mutex::new(Caches::new(
                    config.cache_capacity,
                    config.negative_cache_capacity,
                    Duration::from_secs(config.cache_max_age_secs),
                )),
                listening: tokio::sync::watch::Sender::new(false),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                refused_from_cache: AtomicU64::new(0),
                invalidations: AtomicU64::new(0),
            }),
        }
    }

    /// Verifies the `Authorization` header of a request (HTTP or gRPC metadata).
    pub async fn verify_headers(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let value = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| AuthError::Malformed("Authorization is not ASCII"))?,
            ),
        };
        self.verify_authorization(value).await
    }

    /// Verifies an `Authorization` value (`Bearer <token>`).
    pub async fn verify_authorization(
        &self,
        authorization: Option<&str>,
    ) -> Result<Principal, AuthError> {
        match bearer_token(authorization) {
            Ok(token) => self.verify_token(token).await,
            Err(e) => {
                let r = Err(e);
                metrics::VERIFICATIONS
                    .with_label_values(&["none", metrics::result_label(&r)])
                    .inc();
                r
            }
        }
    }

    /// Verifies a bare token: an API token (`fwt_...`) or an access token.
    pub async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        let (kind, result) = if token.starts_with(API_TOKEN_PREFIX) {
            let r = if is_api_token(token) {
                self.verify_api_token(token).await
            } else {
                Err(AuthError::Malformed("malformed API token"))
            };
            ("api", r)
        } else {
            ("access", self.verify_access_token(token).await)
        };
        metrics::VERIFICATIONS
            .with_label_values(&[kind, metrics::result_label(&result)])
            .inc();
        if let Err(e) = &result {
            tracing::debug!(reason = %e, kind, "credentials refused");
        }
        result
    }

    fn caches(&self) -> MutexGuard<'_, Caches> {
        self.inner.caches.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hit(&self) {
        metrics::LOOKUPS.with_label_values(&["hit"]).inc();
        self.inner.hits.fetch_add(1, Ordering::Relaxed);
    }

    fn miss(&self) {
        metrics::LOOKUPS.with_label_values(&["miss"]).inc();
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
    }

    fn refused_from_cache(&self) {
        metrics::LOOKUPS.with_label_values(&["refused"]).inc();
        self.inner
            .refused_from_cache
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn verify_api_token(&self, token: &str) -> Result<Principal, AuthError> {
        let hash = api_token_hash(token);
        let (generation, cached) = {
            let mut c = self.caches();
            if c.is_refused(&hash) {
                drop(c);
                self.refused_from_cache();
                return Err(AuthError::UnknownToken);
            }
            (c.generation(), c.token(&hash, self.inner.touch_every))
        };
        let (row, owner) = match cached {
            Some((row, touch_due)) => {
                self.hit();
                if touch_due {
                    self.touch(row.id);
                }
                (row, None)
            }
            None => {
                self.miss();
                let found = store::lookup_token(&self.inner.pool, &hash)
                    .await
                    .map_err(|e| db_failure("api token lookup", &e))?;
                let Some((row, owner)) = found else {
                    self.caches().refuse(generation, hash);
                    return Err(AuthError::UnknownToken);
                };
                if !row.revoked && !expired(&row) {
                    let mut c = self.caches();
                    c.put_token(generation, hash, row.clone());
                    if let Some(user) = &owner {
                        c.put_user(generation, user.clone());
                    }
                    drop(c);
                    self.touch(row.id);
                }
                (row, owner)
            }
        };
        if row.revoked || expired(&row) {
            let mut c = self.caches();
            c.forget_token(&hash);
            c.refuse(generation, hash);
            return Err(AuthError::UnknownToken);
        }
        match (&row.service, row.user_id) {
            (Some(service), _) => Ok(Principal {
                kind: PrincipalKind::Service,
                subject: service.clone(),
                name: service.clone(),
                role: row.role,
                token_id: Some(row.id),
            }),
            (None, Some(user_id)) => {
                let user = match owner {
                    Some(user) => Some(user),
                    None => self.user(user_id).await?,
                };
                let user = user.ok_or(AuthError::UnknownToken)?;
                if !user.is_active() {
                    return Err(AuthError::Disabled);
                }
                Ok(Principal {
                    kind: PrincipalKind::ApiToken,
                    subject: user.id.to_string(),
                    name: user.username,
                    role: row.role.min(user.role),
                    token_id: Some(row.id),
                })
            }
            (None, None) => Err(AuthError::Internal),
        }
    }

    async fn verify_access_token(&self, token: &str) -> Result<Principal, AuthError> {
        let kid = jwt::token_kid(token)?;
        let public = self.key(&kid).await?;
        let claims = jwt::decode(token, &public, &self.inner.validation)?;
        let id: i64 = claims
            .sub
            .parse()
            .map_err(|_| AuthError::Malformed("access token subject is not a user id"))?;
        let user = self.user(id).await?.ok_or(AuthError::Disabled)?;
        if !user.is_active() {
            return Err(AuthError::Disabled);
        }
        // Whole seconds, as `iat` is: a token issued in the second of the
        // change itself still passes, one from any earlier second does not.
        if claims.iat < user.password_changed_at.timestamp() {
            return Err(AuthError::SessionEnded);
        }
        Ok(Principal {
            kind: PrincipalKind::User,
            subject: user.id.to_string(),
            name: user.username,
            role: user.role,
            token_id: None,
        })
    }

    /// The current state of user `id` (cached).
    async fn user(&self, id: i64) -> Result<Option<UserState>, AuthError> {
        let generation = {
            let mut c = self.caches();
            if let Some(user) = c.user(id) {
                drop(c);
                self.hit();
                return Ok(Some(user));
            }
            c.generation()
        };
        self.miss();
        let user = store::lookup_user(&self.inner.pool, id)
            .await
            .map_err(|e| db_failure("user lookup", &e))?;
        if let Some(user) = &user {
            self.caches().put_user(generation, user.clone());
        }
        Ok(user)
    }

    /// The public key of an active `kid` (cached; unknown ones too).
    async fn key(&self, kid: &str) -> Result<[u8; 32], AuthError> {
        let neg = kid_key(kid);
        let generation = {
            let mut c = self.caches();
            if c.is_refused(&neg) {
                drop(c);
                self.refused_from_cache();
                return Err(AuthError::UnknownKey);
            }
            if let Some(public) = c.key(kid) {
                drop(c);
                self.hit();
                return Ok(public);
            }
            c.generation()
        };
        self.miss();
        let public = store::lookup_key(&self.inner.pool, kid)
            .await
            .map_err(|e| db_failure("signing key lookup", &e))?;
        let mut c = self.caches();
        match public {
            Some(public) => {
                c.put_key(generation, kid, public);
                Ok(public)
            }
            None => {
                c.refuse(generation, neg);
                Err(AuthError::UnknownKey)
            }
        }
    }

    /// Writes `last_used_at` in the background: a slow or failing write must
    /// not delay or fail the request it records.
    fn touch(&self, id: i64) {
        let pool = self.inner.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = store::touch_token(&pool, id).await {
                tracing::debug!(error = %e, token = id, "recording api token use failed");
            }
        });
    }

    /// Whether the invalidation listener is connected (caches in use).
    pub fn is_listening(&self) -> bool {
        *self.inner.listening.borrow()
    }

    /// Resolves once the invalidation listener is connected.
    pub async fn listening(&self) {
        let mut rx = self.inner.listening.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    pub fn stats(&self) -> CacheStats {
        let c = self.caches();
        CacheStats {
            tokens: c.tokens.len(),
            users: c.users.len(),
            keys: c.keys.len(),
            refused: c.negative.len(),
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            refused_from_cache: self.inner.refused_from_cache.load(Ordering::Relaxed),
            invalidations: self.inner.invalidations.load(Ordering::Relaxed),
            listening: c.listening,
        }
    }
}

fn expired(row: &TokenRow) -> bool {
    row.expires_at.is_some_and(|e| e <= Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_headers() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        for bad in ["Basic abc", "Bearer", "Bearer   ", "abc"] {
            assert!(
                matches!(bearer_token(Some(bad)), Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
