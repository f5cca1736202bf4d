//! The write side: one [`BatchHandler`] per topic, each decoding and
//! validating records, then writing the whole consumer batch in one
//! idempotent transaction. Invalid records are rejected (DLQ); a batch the
//! database refuses for a data reason is retried record by record so only
//! the poison record is rejected; anything else is transient.

mod detections;
mod frames;
mod partitions;
mod telemetry;

use std::future::Future;
use std::time::Instant;

use chrono::{DateTime, Utc};
use fleetwatch_kafka::{BatchHandler, Record, Rejection, TransientError, envelope};

use crate::metrics;

pub use detections::{DetectionsItem, DetectionsWriter, validate_detections};
pub use frames::{FrameItem, FramesWriter, validate_frame};
pub use partitions::Partitions;
pub use telemetry::{Point, TelemetryItem, TelemetryWriter, merge_latest, validate_telemetry};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("object store: {0}")]
    Objects(#[from] object_store::Error),
    /// A day partition vanished after we cached it (retention on another
    /// replica); the retry re-creates it.
    #[error("telemetry partition missing: {0}")]
    MissingPartition(String),
}

impl WriteError {
    /// Whether the database refused the data itself ([`fleetwatch_db::classify`]):
    /// retrying the same rows can never succeed, unlike a connection or
    /// server problem.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Db(e) => fleetwatch_db::classify(e) == fleetwatch_db::ErrorClass::Data,
            _ => false,
        }
    }

    pub(crate) fn from_db(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.code().as_deref() == Some("23514")
            && db.message().contains("no partition")
        {
            return Self::MissingPartition(db.message().to_string());
        }
        Self::Db(e)
    }
}

/// A record that can never succeed: metric label and DLQ reason.
#[derive(Debug)]
pub struct Invalid {
    label: &'static str,
    reason: String,
}

impl Invalid {
    pub(crate) fn undecodable(reason: String) -> Self {
        Self {
            label: "undecodable",
            reason,
        }
    }
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            label: "invalid",
            reason: reason.into(),
        }
    }
}

/// What one topic's writer does with its records.
pub trait Writer: Send + Sync {
    type Item: Send + Sync;
    /// `telemetry`, `detections` or `frames`: metric label and log field.
    const KIND: &'static str;
    fn parse(&self, record: &Record) -> Result<Self::Item, Invalid>;
    /// Writes the items durably and idempotently, all or nothing.
    fn write(&self, items: &[&Self::Item]) -> impl Future<Output = Result<(), WriteError>> + Send;
}

/// Adapts a [`Writer`] to the consumer: rejection, poison isolation and
/// transient classification are the same for every topic.
pub struct Handler<W>(pub W);

impl<W: Writer> BatchHandler for Handler<W> {
    async fn handle(&self, batch: &[Record]) -> Result<Vec<Rejection>, TransientError> {
        let started = Instant::now();
        let kind = W::KIND;
        let mut rejected: Vec<(Rejection, &'static str)> = Vec::new();
        let mut items = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            match self.0.parse(record) {
                Ok(item) => items.push((index, item)),
                Err(inv) => rejected.push((
                    Rejection {
                        index,
                        reason: inv.reason,
                    },
                    inv.label,
                )),
            }
        }
        if !items.is_empty() {
            let all: Vec<&W::Item> = items.iter().map(|(_, it)| it).collect();
            match self.0.write(&all).await {
                Ok(()) => {}
                Err(e) if e.is_data_error() => {
                    tracing::warn!(kind, error = %e, records = items.len(),
                        "database refused the batch; writing records one by one to isolate the bad ones");
                    for (index, item) in &items {
                        match self.0.write(&[item]).await {
                            Ok(()) => {}
                            Err(e) if e.is_data_error() => rejected.push((
                                Rejection {
                                    index: *index,
                                    reason: format!("refused by the database: {e}"),
                                },
                                "database",
                            )),
                            Err(e) => return Err(transient(kind, e)),
                        }
                    }
                }
                Err(e) => return Err(transient(kind, e)),
            }
        }
        // Counted only once the batch succeeded: a retried batch would
        // otherwise count its rejections again.
        for (_, label) in &rejected {
            metrics::REJECTED.with_label_values(&[kind, label]).inc();
        }
        metrics::WRITE_SECONDS
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        Ok(rejected.into_iter().map(|(r, _)| r).collect())
    }
}

fn transient(kind: &str, e: WriteError) -> TransientError {
    metrics::WRITE_FAILURES.with_label_values(&[kind]).inc();
    // Retried like a transient failure, but only a fix makes it pass.
    if let WriteError::Db(db) = &e
        && fleetwatch_db::classify(db) == fleetwatch_db::ErrorClass::Bug
    {
        tracing::error!(kind, error = %db, "the database rejects the statement itself; retrying until the schema or release is fixed");
    }
    TransientError::new(e)
}

pub(crate) fn check_vehicle(record: &Record, vehicle_id: &str) -> Result<(), Invalid> {
    envelope::check_vehicle(record, vehicle_id).map_err(Invalid::new)
}

// The checks take the field name as `impl Display` so the hot path formats
// nothing: a name is only rendered when a value is rejected.
pub(crate) fn check_time(what: impl std::fmt::Display, us: i64) -> Result<DateTime<Utc>, Invalid> {
    envelope::check_time(&what, us).map_err(Invalid::new)?;
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| Invalid::new(format!("{what} {us} is out of range")))
}

pub(crate) fn check_finite(
    what: impl std::fmt::Display,
    v: Option<f64>,
) -> Result<Option<f64>, Invalid> {
    match v {
        Some(x) if !x.is_finite() => {
            Err(Invalid::new(format!("{what} is not a finite number ({x})")))
        }
        other => Ok(other),
    }
}

pub(crate) fn received_at(us: i64) -> Option<DateTime<Utc>> {
    if us > 0 {
        DateTime::from_timestamp_micros(us)
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(key: &str) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: Some(key.as_bytes().to_vec()),
            payload: None,
            headers: vec![],
            timestamp_ms: None,
        }
    }

    #[test]
    fn data_errors_are_classified() {
        assert!(!WriteError::Db(sqlx::Error::PoolTimedOut).is_data_error());
        assert!(!WriteError::MissingPartition("x".into()).is_data_error());
    }
}
