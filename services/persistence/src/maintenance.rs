//! Partition upkeep: creates telemetry day partitions ahead of time (so the
//! hot path rarely has to) and drops those past retention.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, Utc};
use fleetwatch_common::Shutdown;
use sqlx::PgPool;

use crate::config::RetentionConfig;
use crate::metrics;
use crate::writer::Partitions;

/// One maintenance pass; returns the partitions dropped.
pub async fn run_once(
    pool: &PgPool,
    partitions: &Partitions,
    config: &RetentionConfig,
) -> Result<Vec<String>, sqlx::Error> {
    let today = Utc::now().date_naive();
    let days = (0..=u64::from(config.partitions_ahead_days))
        .filter_map(|d| today.checked_add_days(Days::new(d)));
    partitions.ensure(pool, days).await?;
    let keep_days = i32::try_from(config.telemetry_days).unwrap_or(i32::MAX);
    let dropped: Vec<String> =
        sqlx::query_scalar("SELECT fleetwatch_drop_telemetry_partitions($1)")
            .bind(keep_days)
            .fetch_all(pool)
            .await?;
    if !dropped.is_empty() {
        metrics::PARTITIONS
            .with_label_values(&["dropped"])
            .inc_by(dropped.len() as u64);
        // A late point for a dropped day would otherwise be routed to a
        // partition we still believe exists.
        partitions.forget_all();
        tracing::info!(dropped = ?dropped, keep_days, "dropped telemetry partitions past retention");
    }
    Ok(dropped)
}

/// Runs [`run_once`] now and then every interval until shutdown.
pub async fn run(
    pool: PgPool,
    partitions: Arc<Partitions>,
    config: RetentionConfig,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(config.maintenance_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = run_once(&pool, &partitions, &config).await {
            tracing::warn!(error = %e, "partition maintenance failed; retrying at the next interval");
        }
    }
}
