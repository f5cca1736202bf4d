//! The outbox publisher: sends committed, unpublished events to
//! `fleet.incidents.v1` (keyed by vehicle) and marks them published once the
//! broker acknowledged them. A crash between the ack and the mark sends the
//! event again with the same `event_id`, which consumers deduplicate on; a
//! crash before the ack loses nothing, because the row is still unpublished.
//!
//! One replica publishes at a time (transaction-scoped advisory lock), in
//! outbox order, so a vehicle's events reach the topic in commit order.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetwatch_common::Shutdown;
use fleetwatch_kafka::{OutRecord, Producer};
use fleetwatch_proto::message_types;
use futures::future::join_all;
use sqlx::{PgPool, Row};
use tokio::sync::Notify;

use crate::metrics;

/// Advisory lock key of the single active publisher.
const PUBLISHER_LOCK: i64 = 0x6677_696e_6369_6401;

pub struct Publisher {
    pub pool: PgPool,
    pub producer: Producer,
    pub topic: String,
    pub notify: Arc<Notify>,
    pub poll: Duration,
    pub batch: i64,
    pub keep_published_hours: u32,
}

enum Round {
    /// Sent this many events (0: nothing pending).
    Sent(usize),
    /// Another replica holds the publisher lock.
    Busy,
}

impl Publisher {
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        let mut last_cleanup = std::time::Instant::now();
        loop {
            match self.round().await {
                Ok(Round::Sent(n)) if n > 0 => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(Round::Sent(_)) => backoff = Duration::from_millis(100),
                Ok(Round::Busy) => {
                    // The other publisher may have just missed our rows:
                    // look again soon rather than after a full poll.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                    }
                }
                Err(e) => {
                    metrics::PUBLISH_FAILURES.inc();
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "outbox publish failed; events stay queued and are retried");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            if last_cleanup.elapsed() > Duration::from_secs(600) {
                last_cleanup = std::time::Instant::now();
                self.cleanup().await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
        // Publish what was committed before shutdown, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Round::Sent(n)) = self.round().await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    async fn round(&self) -> anyhow::Result<Round> {
        let mut tx = self.pool.begin().await?;
        // Lock and read in one round trip; `locked` is false (and no rows)
        // while another replica publishes.
        let rows = sqlx::query(
            "WITH l AS (SELECT pg_try_advisory_xact_lock($2) AS locked) \
             SELECT l.locked, o.seq, o.vehicle_id, o.payload, o.created_at FROM l \
             LEFT JOIN LATERAL (SELECT seq, vehicle_id, payload, created_at FROM incident_outbox \
                WHERE l.locked AND published_at IS NULL ORDER BY seq LIMIT $1) o ON TRUE",
        )
        .bind(self.batch)
        .bind(PUBLISHER_LOCK)
        .fetch_all(&mut *tx)
        .await?;
        if !rows.first().is_some_and(|r| r.get::<bool, _>(0)) {
            return Ok(Round::Busy);
        }
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|r| r.get::<Option<i64>, _>(1).is_some())
            .collect();
        metrics::OUTBOX_PENDING.set(rows.len() as i64);
        if rows.is_empty() {
            return Ok(Round::Sent(0));
        }
        let sends = rows.iter().map(|r| {
            let vehicle: &str = r.get(2);
            let payload: &[u8] = r.get(3);
            self.producer.send(OutRecord {
                topic: &self.topic,
                key: vehicle,
                payload,
                message_type: message_types::INCIDENT_EVENT,
                traceparent: None,
                extra_headers: &[],
            })
        });
        for r in join_all(sends).await {
            r?;
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        sqlx::query(
            "UPDATE incident_outbox SET published_at = clock_timestamp() WHERE seq = ANY($1)",
        )
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let now = Utc::now();
        for r in &rows {
            let created: DateTime<Utc> = r.get(4);
            metrics::COMMIT_TO_PUBLISH_SECONDS
                .observe((now - created).num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        metrics::PUBLISHED.inc_by(rows.len() as u64);
        Ok(Round::Sent(rows.len()))
    }

    async fn cleanup(&self) {
        let r = sqlx::query(
            "DELETE FROM incident_outbox WHERE published_at < now() - make_interval(hours => $1)",
        )
        .bind(self.keep_published_hours as i32)
        .execute(&self.pool)
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot delete old published outbox rows");
        }
    }
}
