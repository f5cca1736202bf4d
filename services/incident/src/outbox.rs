//! The outbox publisher: sends committed, unpublished events to
//! `fleet.incidents.v1` (keyed by vehicle) and marks them published once the
//! broker acknowledged them. A crash between the ack and the mark sends the
//! event again with the same `event_id`, which consumers deduplicate on; a
//! crash before the ack loses nothing, because the row is still unpublished.
//!
//! One replica publishes at a time: the leader holds a session advisory lock
//! on a connection of its own, so its exit or crash (the connection closes)
//! hands the lead to the next replica that asks, within `poll`.
//!
//! The leader is pipelined, because an event's latency is what operators
//! wait on: events are put in the producer's queue as soon as they are
//! committed, in outbox order, without waiting for the acknowledgements of
//! earlier ones (the producer keeps that order per partition, so a vehicle's
//! events reach the topic in commit order); acknowledged ones are marked in
//! the same statement that fetches the next. Commits on any replica wake it
//! through Postgres `NOTIFY` (a trigger on the outbox), commits on this one
//! also through `notify`. After a failed send it stops taking new rows, lets
//! the queued ones finish, and starts over from the oldest unpublished row,
//! so order holds across failures too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleetwatch_common::Shutdown;
use fleetwatch_kafka::{OutRecord, ProduceError, Producer};
use fleetwatch_proto::message_types;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection, PgPool, Row};
use tokio::sync::Notify;

use crate::metrics;

/// Advisory lock key of the single active publisher.
const PUBLISHER_LOCK: i64 = 0x6677_696e_6369_6401;
/// The channel the outbox trigger notifies (migrations).
const CHANNEL: &str = "fleetwatch_incident_outbox";
/// How long a stopping leader may spend publishing what was committed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Publisher {
    pub pool: PgPool,
    pub producer: Producer,
    pub topic: String,
    pub notify: Arc<Notify>,
    pub poll: Duration,
    pub batch: i64,
    pub keep_published_hours: u32,
}

enum Exit {
    Shutdown,
    /// Another replica leads.
    Follower,
}

/// An event handed to the producer: its outbox seq, when it was committed,
/// and the broker's answer.
type Sent = BoxFuture<'static, (i64, DateTime<Utc>, Result<(), ProduceError>)>;

impl Publisher {
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let wait = match self.lead(&shutdown).await {
                Ok(Exit::Shutdown) => return,
                Ok(Exit::Follower) => {
                    backoff = Duration::from_millis(100);
                    // The leader's crash delays events by up to this.
                    self.poll
                }
                Err(e) => {
                    metrics::PUBLISH_FAILURES.inc();
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64,
                        "outbox publish failed; events stay queued and are retried");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff / 2
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Takes the lead if free and publishes until shutdown or an error.
    async fn lead(&self, shutdown: &Shutdown) -> anyhow::Result<Exit> {
        if shutdown.is_cancelled() {
            return Ok(Exit::Shutdown);
        }
        // Detached: the session lock must never go back into the pool; it
        // is released when this connection closes, however `lead` ends.
        let mut conn = self.pool.acquire().await?.detach();
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(PUBLISHER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if !leader {
            let _ = conn.close().await;
            return Ok(Exit::Follower);
        }
        tracing::info!("this replica now publishes the incident outbox");
        let wake = self.listen().await?;
        let result = self.publish(&mut conn, shutdown).await;
        wake.abort();
        // Unlock before closing: the server ends a closed session's backend
        // (and with it the lock) only some moments later, and a successor
        // should not wait for that. On a broken connection this fails, and
        // the session is gone anyway.
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PUBLISHER_LOCK)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        result
    }

    /// Forwards the outbox trigger's notifications to `notify` (a task, so
    /// the publisher's own wait stays a plain `Notify`).
    async fn listen(&self) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let notify = self.notify.clone();
        Ok(tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(_) => notify.notify_one(),
                    Err(e) => {
                        // The poll still finds other replicas' events.
                        tracing::debug!(error = %e, "outbox listener failed; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }))
    }

    async fn publish(&self, conn: &mut PgConnection, shutdown: &Shutdown) -> anyhow::Result<Exit> {
        let mut queued: FuturesUnordered<Sent> = FuturesUnordered::new();
        // Seqs handed to the producer and not yet marked published.
        let mut in_flight: BTreeSet<i64> = BTreeSet::new();
        let mut acked: Vec<(i64, DateTime<Utc>)> = Vec::new();
        let mut failed: Option<ProduceError> = None;
        let mut drain_until: Option<Instant> = None;
        let mut last_cleanup = Instant::now();
        loop {
            let done: Vec<i64> = acked.iter().map(|(s, _)| *s).collect();
            let take = if failed.is_none() { self.batch } else { 0 };
            let rows = self.round(conn, &done, &in_flight, take).await?;
            observe_published(&acked);
            for s in &done {
                in_flight.remove(s);
            }
            acked.clear();
            metrics::OUTBOX_PENDING.set((rows.len() + in_flight.len()) as i64);
            let fetched = rows.len();
            for (seq, vehicle, payload, created) in rows {
                match self.producer.enqueue(OutRecord {
                    topic: &self.topic,
                    key: &vehicle,
                    payload: &payload,
                    message_type: message_types::INCIDENT_EVENT,
                    traceparent: None,
                    extra_headers: &[],
                }) {
                    Ok(pending) => {
                        in_flight.insert(seq);
                        queued.push(Box::pin(async move {
                            (seq, created, pending.acked().await.map(|_| ()))
                        }));
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                        break;
                    }
                }
            }
            if queued.is_empty() {
                if let Some(e) = failed {
                    // Everything sent before the failure is marked; start
                    // over from the oldest unpublished row.
                    return Err(e.into());
                }
                if drain_until.is_some() && fetched == 0 {
                    return Ok(Exit::Shutdown);
                }
            }
            if drain_until.is_some_and(|t| Instant::now() >= t) {
                tracing::warn!(
                    queued = queued.len(),
                    "stopping before every event was acknowledged; the rest is published after the restart"
                );
                return Ok(Exit::Shutdown);
            }
            if last_cleanup.elapsed() > Duration::from_secs(600) {
                last_cleanup = Instant::now();
                self.cleanup().await;
            }
            if fetched as i64 == self.batch && failed.is_none() {
                continue; // more is waiting
            }
            tokio::select! {
                _ = shutdown.cancelled(), if drain_until.is_none() => {
                    // The consumers' last commits are in: publish them.
                    drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
                }
                Some(first) = queued.next(), if !queued.is_empty() => {
                    // Take every answer already in, to mark them together.
                    let mut answer = Some(first);
                    while let Some((seq, created, r)) = answer {
                        match r {
                            Ok(()) => acked.push((seq, created)),
                            Err(e) => {
                                in_flight.remove(&seq);
                                failed.get_or_insert(e);
                            }
                        }
                        answer = futures::FutureExt::now_or_never(queued.next()).flatten();
                    }
                }
                _ = self.notify.notified(), if failed.is_none() => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// One round trip: marks `done` published and fetches up to `take`
    /// unpublished events not already handed to the producer, oldest first.
    async fn round(
        &self,
        conn: &mut PgConnection,
        done: &[i64],
        in_flight: &BTreeSet<i64>,
        take: i64,
    ) -> Result<Vec<(i64, String, Vec<u8>, DateTime<Utc>)>, sqlx::Error> {
        if done.is_empty() && take == 0 {
            return Ok(Vec::new());
        }
        let skip: Vec<i64> = in_flight.iter().copied().collect();
        // The UPDATE and the SELECT see the same snapshot: rows marked here
        // still read as unpublished, and are in `skip` already.
        let rows = sqlx::query(
            "WITH marked AS ( \
               UPDATE incident_outbox SET published_at = clock_timestamp() WHERE seq = ANY($1)) \
             SELECT seq, vehicle_id, payload, created_at FROM incident_outbox \
             WHERE published_at IS NULL AND seq <> ALL($2) ORDER BY seq LIMIT $3",
        )
        .bind(done)
        .bind(&skip)
        .bind(take)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
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

fn observe_published(acked: &[(i64, DateTime<Utc>)]) {
    if acked.is_empty() {
        return;
    }
    let now = Utc::now();
    for (_, created) in acked {
        metrics::COMMIT_TO_PUBLISH_SECONDS
            .observe((now - *created).num_microseconds().unwrap_or(0) as f64 / 1e6);
    }
    metrics::PUBLISHED.inc_by(acked.len() as u64);
}
