//! Prometheus metrics of verification (the default registry, served on every
//! service's `/metrics`). Labels are bounded: the credential kind and a
//! fixed result per refusal reason.

use std::sync::LazyLock;

use fleetwatch_common::metrics;
use prometheus::{IntCounter, IntCounterVec};

use crate::error::AuthError;

pub static VERIFICATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_auth_verifications_total",
        "Bearer credentials verified, by kind (access, api, none) and result (ok or the refusal)",
        &["kind", "result"],
    )
});

pub static LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_auth_cache_total",
        "Verifier cache answers: hit, refused (negative cache) or miss (a database lookup)",
        &["outcome"],
    )
});

pub static INVALIDATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::int_counter(
        "fleetwatch_auth_invalidations_total",
        "Identity-change notifications applied to the verifier caches",
    )
});

pub static LISTENER_RECONNECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::int_counter(
        "fleetwatch_auth_listener_reconnects_total",
        "Times the invalidation listener lost its connection (caches start empty after each)",
    )
});

/// The `result` label of a verification.
pub(crate) fn result_label(r: &Result<crate::Principal, AuthError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => match e {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKey => "unknown_key",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::UnknownToken => "unknown_token",
            AuthError::Disabled => "disabled",
            AuthError::SessionEnded => "session_ended",
            AuthError::BadLogin => "bad_login",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::Unavailable => "unavailable",
            AuthError::Internal => "internal",
        },
    }
}
