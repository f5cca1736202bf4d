//! Everything the load test asks PostgreSQL: registering its vehicles, the
//! cheap live "stored" probe, and the after-run counts and latency
//! percentiles computed from the stored rows themselves.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::points::SENT_METRIC;

pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))
}

/// The URL without its password.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Registers the vehicles and returns their tokens, in order.
pub async fn register(pool: &PgPool, ids: &[String]) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(ids.len());
    for id in ids {
        let t = fleetwatch_db::add_vehicle(pool, id, "drone", Some("load test"))
            .await
            .with_context(|| format!("registering vehicle {id}"))?;
        tokens.push(t);
    }
    Ok(tokens)
}

fn ts(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Newest stored sample time per vehicle (µs), in the order of `ids`. One
/// primary-key probe per vehicle, so it stays cheap however many rows exist.
pub async fn newest_times(
    pool: &PgPool,
    ids: &[String],
    since_us: i64,
) -> anyhow::Result<Vec<Option<i64>>> {
    let rows: Vec<(Option<DateTime<Utc>>,)> = sqlx::query_as(
        "SELECT (SELECT max(t.time) FROM telemetry t WHERE t.vehicle_id = v.id AND t.time >= $2)
           FROM unnest($1::text[]) WITH ORDINALITY AS v(id, n) ORDER BY v.n",
    )
    .bind(ids)
    .bind(ts(since_us))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t,)| t.map(|t| t.timestamp_micros()))
        .collect())
}

/// Rows of these vehicles stored in `[w0, w1)` (by `stored_at`), and all of them.
pub async fn stored_counts(
    pool: &PgPool,
    ids: &[String],
    since_us: i64,
    w0_us: i64,
    w1_us: i64,
) -> anyhow::Result<(i64, i64)> {
    let r: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE stored_at >= $3 AND stored_at < $4), count(*)
           FROM telemetry WHERE vehicle_id = ANY($1) AND time >= $2",
    )
    .bind(ids)
    .bind(ts(since_us))
    .bind(ts(w0_us))
    .bind(ts(w1_us))
    .fetch_one(pool)
    .await?;
    Ok(r)
}

/// Latency percentiles of the rows whose send time lies in `[w0, w1)`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoredLatency {
    /// Rows sent in the window and found stored.
    pub rows: i64,
    /// send (due time, `lt_sent_us`) → `stored_at`: what a user waits for a point to become queryable.
    pub send_to_stored: Dist,
    /// `received_at` (ingest accepted the batch) → `stored_at`: Kafka + persistence.
    pub received_to_stored: Dist,
    /// send → `received_at`: loader queueing, network, HTTP/gRPC/MQTT handling, retries.
    pub send_to_received: Dist,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Dist {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

pub async fn latency(
    pool: &PgPool,
    ids: &[String],
    since_us: i64,
    w0_us: i64,
    w1_us: i64,
) -> anyhow::Result<StoredLatency> {
    let sql = format!(
        "WITH r AS (
            SELECT (metrics->>'{SENT_METRIC}')::float8 AS sent_us,
                   extract(epoch FROM stored_at)::float8 * 1e6 AS stored_us,
                   extract(epoch FROM received_at)::float8 * 1e6 AS received_us
              FROM telemetry
             WHERE vehicle_id = ANY($1) AND time >= $2 AND metrics ? '{SENT_METRIC}'),
         w AS (SELECT (stored_us - sent_us) / 1e3 AS s2s,
                      (stored_us - received_us) / 1e3 AS r2s,
                      (received_us - sent_us) / 1e3 AS s2r
                 FROM r WHERE sent_us >= $3 AND sent_us < $4)
         SELECT count(*),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY s2s), percentile_cont(0.99) WITHIN GROUP (ORDER BY s2s), max(s2s), avg(s2s),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY r2s), percentile_cont(0.99) WITHIN GROUP (ORDER BY r2s), max(r2s), avg(r2s),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY s2r), percentile_cont(0.99) WITHIN GROUP (ORDER BY s2r), max(s2r), avg(s2r)
           FROM w"
    );
    type Row = (
        i64,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
    );
    let r: Row = sqlx::query_as(&sql)
        .bind(ids)
        .bind(ts(since_us))
        .bind(w0_us as f64)
        .bind(w1_us as f64)
        .fetch_one(pool)
        .await?;
    Ok(StoredLatency {
        rows: r.0,
        send_to_stored: Dist {
            p50_ms: r.1,
            p99_ms: r.2,
            max_ms: r.3,
            mean_ms: r.4,
        },
        received_to_stored: Dist {
            p50_ms: r.5,
            p99_ms: r.6,
            max_ms: r.7,
            mean_ms: r.8,
        },
        send_to_received: Dist {
            p50_ms: r.9,
            p99_ms: r.10,
            max_ms: r.11,
            mean_ms: r.12,
        },
    })
}
