//! The write side: one [`BatchHandler`] per topic, each decoding and
//! validating records, then writing the whole consumer batch in one
//! idempotent transaction. Invalid records are rejected (DLQ); a batch the
//! database refuses for a data reason is retried record by record so only
//! the poison record is rejected; anything else is transient.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use fleetwatch_kafka::{BatchHandler, Record, Rejection, TransientError};
use fleetwatch_proto::v1::{DetectionBatch, Frame, TelemetryBatch};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use sqlx::PgPool;

use crate::{metrics, objects};

/// Latest accepted sample time: 9999-12-31T23:59:59Z. Later (or negative)
/// times are clock garbage and would create absurd partitions.
const MAX_TIME_UNIX_US: i64 = 253_402_300_799_000_000;

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

    fn from_db(e: sqlx::Error) -> Self {
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
    fn undecodable(reason: String) -> Self {
        Self {
            label: "undecodable",
            reason,
        }
    }
    fn new(reason: impl Into<String>) -> Self {
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

fn check_vehicle(record: &Record, vehicle_id: &str) -> Result<(), Invalid> {
    if vehicle_id.is_empty() {
        return Err(Invalid::new("vehicle_id is empty"));
    }
    if !fleetwatch_db::valid_vehicle_id(vehicle_id) {
        return Err(Invalid::new(format!(
            "vehicle_id {vehicle_id:?} is not a valid vehicle id"
        )));
    }
    if record.key_str() != Some(vehicle_id) {
        return Err(Invalid::new(format!(
            "record key {:?} differs from vehicle_id {vehicle_id:?}",
            record.key_str().unwrap_or("<none>")
        )));
    }
    Ok(())
}

// The checks take the field name as `impl Display` so the hot path formats
// nothing: a name is only rendered when a value is rejected.
fn check_time(what: impl std::fmt::Display, us: i64) -> Result<DateTime<Utc>, Invalid> {
    if !(0..=MAX_TIME_UNIX_US).contains(&us) {
        return Err(Invalid::new(format!("{what} {us} is outside 1970..9999")));
    }
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| Invalid::new(format!("{what} {us} is out of range")))
}

fn check_finite(what: impl std::fmt::Display, v: Option<f64>) -> Result<Option<f64>, Invalid> {
    match v {
        Some(x) if !x.is_finite() => {
            Err(Invalid::new(format!("{what} is not a finite number ({x})")))
        }
        other => Ok(other),
    }
}

fn received_at(us: i64) -> Option<DateTime<Utc>> {
    if us > 0 {
        DateTime::from_timestamp_micros(us)
    } else {
        None
    }
}

// ------------------------------------------------------------- partitions

/// Day partitions known to exist, so the hot path calls
/// `fleetwatch_ensure_telemetry_partition` once per day, not per batch.
#[derive(Default)]
pub struct Partitions {
    known: Mutex<HashSet<NaiveDate>>,
}

impl Partitions {
    pub async fn ensure(
        &self,
        pool: &PgPool,
        days: impl IntoIterator<Item = NaiveDate>,
    ) -> Result<(), sqlx::Error> {
        let missing: BTreeSet<NaiveDate> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            days.into_iter().filter(|d| !known.contains(d)).collect()
        };
        for day in missing {
            sqlx::query("SELECT fleetwatch_ensure_telemetry_partition($1)")
                .bind(day)
                .execute(pool)
                .await?;
            metrics::PARTITIONS.with_label_values(&["ensured"]).inc();
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(day);
        }
        Ok(())
    }

    pub fn forget_all(&self) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

// -------------------------------------------------------------- telemetry

#[derive(Debug, Clone)]
pub struct Point {
    pub time: DateTime<Utc>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub alt: Option<f64>,
    pub speed: Option<f64>,
    pub heading: Option<f64>,
    pub battery: Option<f64>,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug)]
pub struct TelemetryItem {
    pub vehicle_id: String,
    pub received_at: Option<DateTime<Utc>>,
    pub points: Vec<Point>,
}

pub struct TelemetryWriter {
    pub pool: PgPool,
    pub partitions: Arc<Partitions>,
    pub max_rows: usize,
    /// Transactions per batch, on disjoint vehicles.
    pub concurrency: usize,
}

type Row<'a> = (&'a str, &'a Point, Option<DateTime<Utc>>);

/// Splits rows sorted by vehicle into at most `n` runs of about equal size,
/// cutting only between vehicles: each vehicle's points and its latest-state
/// row belong to one transaction, so concurrent transactions never touch the
/// same rows and cannot deadlock.
fn split_by_vehicle<'r, 'a>(rows: &'r [Row<'a>], n: usize) -> Vec<&'r [Row<'a>]> {
    let target = rows.len().div_ceil(n.max(1)).max(1);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < rows.len() {
        let mut end = (start + target).min(rows.len());
        while end < rows.len() && rows[end].0 == rows[end - 1].0 {
            end += 1;
        }
        out.push(&rows[start..end]);
        start = end;
    }
    out
}

impl TelemetryWriter {
    /// One transaction per run. Rows go in with a plain INSERT first: in
    /// Postgres, `ON CONFLICT DO NOTHING` costs a speculative insertion per
    /// row, about a third more server CPU on this path, while a conflict only
    /// happens on redelivery or a client retry. Those raise unique_violation,
    /// and the run is written again, whole, skipping the rows already there.
    async fn write_run(&self, rows: &[Row<'_>]) -> Result<(u64, u64), sqlx::Error> {
        match self.write_run_as(rows, INSERT_TELEMETRY).await {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                metrics::CONFLICT_RETRIES.inc();
                self.write_run_as(rows, INSERT_TELEMETRY_SKIP_EXISTING)
                    .await
            }
            other => other,
        }
    }

    /// The rows, then the latest state of their vehicles, in one transaction.
    async fn write_run_as(
        &self,
        rows: &[Row<'_>],
        insert: &'static str,
    ) -> Result<(u64, u64), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut inserted = 0;
        for chunk in rows.chunks(self.max_rows) {
            let mut c = Columns::default();
            for (v, p, r) in chunk {
                c.push(v, p, *r);
            }
            let (query, received) = c.bind_shared(sqlx::query(insert));
            inserted += query
                .bind(received)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        let latest = merge_latest(rows.iter().map(|(v, p, _)| (*v, *p)));
        let mut c = Columns::default();
        for (v, p) in &latest {
            c.push(v, p, None);
        }
        let updated = c
            .bind_shared(sqlx::query(UPSERT_LATEST))
            .0
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((inserted, updated))
    }
}

/// `points[i].name`, rendered only for an error message.
struct FieldPath(usize, &'static str);

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "points[{}].{}", self.0, self.1)
    }
}

/// Validates a decoded batch against its record.
pub fn validate_telemetry(record: &Record, b: TelemetryBatch) -> Result<TelemetryItem, Invalid> {
    check_vehicle(record, &b.vehicle_id)?;
    let mut points = Vec::with_capacity(b.points.len());
    for (i, p) in b.points.into_iter().enumerate() {
        if !p.vehicle_id.is_empty() && p.vehicle_id != b.vehicle_id {
            return Err(Invalid::new(format!(
                "points[{i}].vehicle_id {:?} differs from the batch's {:?}",
                p.vehicle_id, b.vehicle_id
            )));
        }
        let f = |name: &'static str, v| check_finite(FieldPath(i, name), v);
        let mut metrics = BTreeMap::new();
        for (k, v) in p.metrics {
            if !v.is_finite() {
                check_finite(format!("points[{i}].metrics[{k:?}]"), Some(v))?;
            }
            metrics.insert(k, v);
        }
        points.push(Point {
            time: check_time(FieldPath(i, "time_unix_us"), p.time_unix_us)?,
            lat: f("lat", p.lat)?,
            lon: f("lon", p.lon)?,
            alt: f("alt", p.alt)?,
            speed: f("speed", p.speed)?,
            heading: f("heading", p.heading)?,
            battery: f("battery", p.battery)?,
            metrics,
        });
    }
    Ok(TelemetryItem {
        vehicle_id: b.vehicle_id,
        received_at: received_at(b.received_unix_us),
        points,
    })
}

/// Per vehicle: the newest time, and for each field its newest non-null value.
pub fn merge_latest<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a Point)>,
) -> BTreeMap<&'a str, Point> {
    let mut by_vehicle: BTreeMap<&str, Vec<&Point>> = BTreeMap::new();
    for (v, p) in items {
        by_vehicle.entry(v).or_default().push(p);
    }
    let mut out = BTreeMap::new();
    for (v, mut points) in by_vehicle {
        // Newest first: each field keeps the first non-null value met, so
        // only the newest point and the metric names it lacks are copied.
        points.sort_by_key(|p| std::cmp::Reverse(p.time));
        let mut acc = points[0].clone();
        for p in &points[1..] {
            acc.lat = acc.lat.or(p.lat);
            acc.lon = acc.lon.or(p.lon);
            acc.alt = acc.alt.or(p.alt);
            acc.speed = acc.speed.or(p.speed);
            acc.heading = acc.heading.or(p.heading);
            acc.battery = acc.battery.or(p.battery);
            for (k, val) in &p.metrics {
                if !acc.metrics.contains_key(k) {
                    acc.metrics.insert(k.clone(), *val);
                }
            }
        }
        out.insert(v, acc);
    }
    out
}

fn metrics_json(m: &BTreeMap<String, f64>) -> Option<String> {
    if m.is_empty() {
        None
    } else {
        serde_json::to_string(m).ok()
    }
}

/// Column arrays for UNNEST; vehicle ids borrow from the batch.
#[derive(Default)]
struct Columns<'a> {
    vehicle: Vec<&'a str>,
    time: Vec<DateTime<Utc>>,
    lat: Vec<Option<f64>>,
    lon: Vec<Option<f64>>,
    alt: Vec<Option<f64>>,
    speed: Vec<Option<f64>>,
    heading: Vec<Option<f64>>,
    battery: Vec<Option<f64>>,
    metrics: Vec<Option<String>>,
    received: Vec<Option<DateTime<Utc>>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, vehicle: &'a str, p: &Point, received: Option<DateTime<Utc>>) {
        self.vehicle.push(vehicle);
        self.time.push(p.time);
        self.lat.push(p.lat);
        self.lon.push(p.lon);
        self.alt.push(p.alt);
        self.speed.push(p.speed);
        self.heading.push(p.heading);
        self.battery.push(p.battery);
        self.metrics.push(metrics_json(&p.metrics));
        self.received.push(received);
    }

    /// Binds the nine columns shared by INSERT_TELEMETRY and UPSERT_LATEST
    /// ($1..$9); returns `received` for the insert's $10.
    fn bind_shared(
        self,
        query: sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> (
        sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments>,
        Vec<Option<DateTime<Utc>>>,
    ) {
        let q = query
            .bind(self.vehicle)
            .bind(self.time)
            .bind(self.lat)
            .bind(self.lon)
            .bind(self.alt)
            .bind(self.speed)
            .bind(self.heading)
            .bind(self.battery)
            .bind(self.metrics);
        (q, self.received)
    }
}

macro_rules! insert_telemetry {
    ($tail:literal) => {
        concat!(
            "INSERT INTO telemetry (vehicle_id, time, lat, lon, alt, speed, heading, battery, metrics, received_at)
SELECT v, t, la, lo, al, sp, he, ba, m::jsonb, r
FROM UNNEST($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[], $6::float8[],
            $7::float8[], $8::float8[], $9::text[], $10::timestamptz[])
     AS u(v, t, la, lo, al, sp, he, ba, m, r)",
            $tail
        )
    };
}
const INSERT_TELEMETRY: &str = insert_telemetry!("");
const INSERT_TELEMETRY_SKIP_EXISTING: &str = insert_telemetry!("\nON CONFLICT DO NOTHING");

// Only moves forward: a late older point or a redelivery leaves the row
// untouched. Fields absent from the newer point keep their stored value.
const UPSERT_LATEST: &str = "\
INSERT INTO vehicle_latest AS l (vehicle_id, time, lat, lon, alt, speed, heading, battery, metrics)
SELECT v, t, la, lo, al, sp, he, ba, m::jsonb
FROM UNNEST($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[], $6::float8[],
            $7::float8[], $8::float8[], $9::text[])
     AS u(v, t, la, lo, al, sp, he, ba, m)
ON CONFLICT (vehicle_id) DO UPDATE SET
    time = EXCLUDED.time,
    lat = COALESCE(EXCLUDED.lat, l.lat),
    lon = COALESCE(EXCLUDED.lon, l.lon),
    alt = COALESCE(EXCLUDED.alt, l.alt),
    speed = COALESCE(EXCLUDED.speed, l.speed),
    heading = COALESCE(EXCLUDED.heading, l.heading),
    battery = COALESCE(EXCLUDED.battery, l.battery),
    metrics = CASE WHEN l.metrics IS NULL AND EXCLUDED.metrics IS NULL THEN NULL
                   ELSE COALESCE(l.metrics, '{}'::jsonb) || COALESCE(EXCLUDED.metrics, '{}'::jsonb) END,
    updated_at = clock_timestamp()
WHERE EXCLUDED.time > l.time";

impl Writer for TelemetryWriter {
    type Item = TelemetryItem;
    const KIND: &'static str = "telemetry";

    fn parse(&self, record: &Record) -> Result<TelemetryItem, Invalid> {
        let b: TelemetryBatch = record.decode().map_err(Invalid::undecodable)?;
        validate_telemetry(record, b)
    }

    async fn write(&self, items: &[&TelemetryItem]) -> Result<(), WriteError> {
        // Sorted so concurrent replicas lock rows in the same order.
        let mut rows: Vec<Row<'_>> = items
            .iter()
            .flat_map(|it| {
                it.points
                    .iter()
                    .map(move |p| (it.vehicle_id.as_str(), p, it.received_at))
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        rows.sort_by(|a, b| (a.0, a.1.time).cmp(&(b.0, b.1.time)));
        let days: BTreeSet<NaiveDate> = rows.iter().map(|(_, p, _)| p.time.date_naive()).collect();
        self.partitions.ensure(&self.pool, days).await?;

        // All runs must commit before the offsets are stored. If one fails,
        // the whole batch is retried; the runs that did commit are then
        // no-ops (ON CONFLICT DO NOTHING, latest only moves forward).
        let runs = split_by_vehicle(&rows, self.concurrency);
        let result = futures::future::try_join_all(runs.into_iter().map(|r| self.write_run(r)))
            .await
            .map(|done| {
                done.into_iter()
                    .fold((0, 0), |(i, u), (ri, ru)| (i + ri, u + ru))
            });
        let (inserted, updated) = match result {
            Ok(v) => v,
            Err(e) => {
                let e = WriteError::from_db(e);
                if matches!(e, WriteError::MissingPartition(_)) {
                    self.partitions.forget_all();
                }
                return Err(e);
            }
        };
        metrics::ROWS_WRITTEN
            .with_label_values(&["telemetry"])
            .inc_by(inserted);
        metrics::ROWS_DUPLICATE
            .with_label_values(&["telemetry"])
            .inc_by(rows.len() as u64 - inserted);
        metrics::ROWS_WRITTEN
            .with_label_values(&["vehicle_latest"])
            .inc_by(updated);
        let now = Utc::now();
        for it in items {
            if let Some(r) = it.received_at {
                metrics::INGEST_TO_STORED_SECONDS
                    .observe((now - r).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------- detections

pub struct DetectionsWriter {
    pub pool: PgPool,
    pub max_rows: usize,
}

#[derive(Debug)]
pub struct DetectionsItem {
    pub time: DateTime<Utc>,
    pub batch: DetectionBatch,
}

pub fn validate_detections(record: &Record, b: DetectionBatch) -> Result<DetectionsItem, Invalid> {
    check_vehicle(record, &b.vehicle_id)?;
    let time = check_time("time_unix_us", b.time_unix_us)?;
    for (i, d) in b.detections.iter().enumerate() {
        if d.class_name.is_empty() {
            return Err(Invalid::new(format!("detections[{i}].class_name is empty")));
        }
        check_finite(
            format!("detections[{i}].confidence"),
            Some(f64::from(d.confidence)),
        )?;
        if let Some(bb) = &d.bbox {
            for (n, v) in [
                ("x_min", bb.x_min),
                ("y_min", bb.y_min),
                ("x_max", bb.x_max),
                ("y_max", bb.y_max),
            ] {
                check_finite(format!("detections[{i}].bbox.{n}"), Some(f64::from(v)))?;
            }
        }
    }
    Ok(DetectionsItem { time, batch: b })
}

const INSERT_DETECTIONS: &str = "\
INSERT INTO detections (drone_id, timestamp, class, confidence, x_min, y_min, x_max, y_max,
                        frame_id, object_id, clip_s3_key, seq, model_name, model_version, source)
SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::float8[], $5::float8[], $6::float8[],
                     $7::float8[], $8::float8[], $9::text[], $10::text[], $11::text[], $12::int4[],
                     $13::text[], $14::text[], $15::text[])
ON CONFLICT DO NOTHING";

#[derive(Default)]
struct DetectionColumns {
    drone: Vec<String>,
    time: Vec<DateTime<Utc>>,
    class: Vec<String>,
    confidence: Vec<f64>,
    x_min: Vec<Option<f64>>,
    y_min: Vec<Option<f64>>,
    x_max: Vec<Option<f64>>,
    y_max: Vec<Option<f64>>,
    frame_id: Vec<String>,
    object_id: Vec<Option<String>>,
    clip_key: Vec<Option<String>>,
    seq: Vec<i32>,
    model_name: Vec<String>,
    model_version: Vec<String>,
    source: Vec<String>,
}

fn non_empty(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

impl Writer for DetectionsWriter {
    type Item = DetectionsItem;
    const KIND: &'static str = "detections";

    fn parse(&self, record: &Record) -> Result<DetectionsItem, Invalid> {
        let b: DetectionBatch = record.decode().map_err(Invalid::undecodable)?;
        validate_detections(record, b)
    }

    async fn write(&self, items: &[&DetectionsItem]) -> Result<(), WriteError> {
        let rows: Vec<(&DetectionsItem, usize)> = items
            .iter()
            .flat_map(|it| (0..it.batch.detections.len()).map(move |i| (*it, i)))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let mut inserted = 0;
        for chunk in rows.chunks(self.max_rows) {
            let mut c = DetectionColumns::default();
            for (it, i) in chunk {
                let b = &it.batch;
                let d = &b.detections[*i];
                let bb = d.bbox.as_ref();
                c.drone.push(b.vehicle_id.clone());
                c.time.push(it.time);
                c.class.push(d.class_name.clone());
                c.confidence.push(f64::from(d.confidence));
                c.x_min.push(bb.map(|b| f64::from(b.x_min)));
                c.y_min.push(bb.map(|b| f64::from(b.y_min)));
                c.x_max.push(bb.map(|b| f64::from(b.x_max)));
                c.y_max.push(bb.map(|b| f64::from(b.y_max)));
                c.frame_id.push(b.frame_id.clone());
                c.object_id.push(non_empty(&d.track_id));
                c.clip_key.push(non_empty(&b.frame_key));
                c.seq.push(i32::try_from(*i).unwrap_or(i32::MAX));
                c.model_name.push(b.model_name.clone());
                c.model_version.push(b.model_version.clone());
                c.source.push(b.source.clone());
            }
            inserted += sqlx::query(INSERT_DETECTIONS)
                .bind(c.drone)
                .bind(c.time)
                .bind(c.class)
                .bind(c.confidence)
                .bind(c.x_min)
                .bind(c.y_min)
                .bind(c.x_max)
                .bind(c.y_max)
                .bind(c.frame_id)
                .bind(c.object_id)
                .bind(c.clip_key)
                .bind(c.seq)
                .bind(c.model_name)
                .bind(c.model_version)
                .bind(c.source)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        metrics::ROWS_WRITTEN
            .with_label_values(&["detections"])
            .inc_by(inserted);
        metrics::ROWS_DUPLICATE
            .with_label_values(&["detections"])
            .inc_by(rows.len() as u64 - inserted);
        Ok(())
    }
}

// ----------------------------------------------------------------- frames

pub struct FramesWriter {
    pub pool: PgPool,
    pub store: Arc<dyn ObjectStore>,
    pub concurrency: usize,
}

#[derive(Debug)]
pub struct FrameItem {
    pub time: DateTime<Utc>,
    pub key: String,
    pub data: Bytes,
    pub frame: Frame,
}

pub fn validate_frame(record: &Record, mut f: Frame) -> Result<FrameItem, Invalid> {
    check_vehicle(record, &f.vehicle_id)?;
    let time = check_time("time_unix_us", f.time_unix_us)?;
    if f.data.is_empty() {
        return Err(Invalid::new("frame data is empty"));
    }
    if f.content_type.is_empty() {
        f.content_type = "image/jpeg".into();
    }
    let key = objects::frame_key(&f.vehicle_id, f.time_unix_us, &f.content_type)
        .ok_or_else(|| Invalid::new("time_unix_us cannot be turned into a date"))?;
    let data = Bytes::from(std::mem::take(&mut f.data));
    Ok(FrameItem {
        time,
        key,
        data,
        frame: f,
    })
}

const INSERT_FRAMES: &str = "\
INSERT INTO frames (vehicle_id, time, frame_id, object_key, content_type, size_bytes, width, height)
SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int4[],
                     $7::int4[], $8::int4[])
ON CONFLICT DO NOTHING";

impl Writer for FramesWriter {
    type Item = FrameItem;
    const KIND: &'static str = "frames";

    fn parse(&self, record: &Record) -> Result<FrameItem, Invalid> {
        let f: Frame = record.decode().map_err(Invalid::undecodable)?;
        validate_frame(record, f)
    }

    async fn write(&self, items: &[&FrameItem]) -> Result<(), WriteError> {
        // Bytes first, row second: a row never points at a missing object.
        // A crash in between leaves an object without a row, which the
        // redelivery overwrites with the same bytes and then indexes.
        let uploads: Vec<_> = items
            .iter()
            .map(|it| {
                let (store, key, data) = (self.store.clone(), it.key.clone(), it.data.clone());
                async move {
                    let path = Path::parse(&key).map_err(object_store::Error::from)?;
                    let len = data.len() as u64;
                    store.put(&path, data.into()).await?;
                    metrics::OBJECT_BYTES.inc_by(len);
                    Ok::<_, WriteError>(())
                }
            })
            .collect();
        futures::stream::iter(uploads)
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;

        let mut vehicle = Vec::new();
        let mut time = Vec::new();
        let mut frame_id = Vec::new();
        let mut key = Vec::new();
        let mut content_type = Vec::new();
        let mut size = Vec::new();
        let mut width = Vec::new();
        let mut height = Vec::new();
        let dims = |v: u32| if v == 0 { None } else { i32::try_from(v).ok() };
        for it in items {
            vehicle.push(it.frame.vehicle_id.clone());
            time.push(it.time);
            frame_id.push(it.frame.frame_id.clone());
            key.push(it.key.clone());
            content_type.push(it.frame.content_type.clone());
            size.push(i32::try_from(it.data.len()).unwrap_or(i32::MAX));
            width.push(dims(it.frame.width));
            height.push(dims(it.frame.height));
        }
        let inserted = sqlx::query(INSERT_FRAMES)
            .bind(vehicle)
            .bind(time)
            .bind(frame_id)
            .bind(key)
            .bind(content_type)
            .bind(size)
            .bind(width)
            .bind(height)
            .execute(&self.pool)
            .await?
            .rows_affected();
        metrics::ROWS_WRITTEN
            .with_label_values(&["frames"])
            .inc_by(inserted);
        metrics::ROWS_DUPLICATE
            .with_label_values(&["frames"])
            .inc_by(items.len() as u64 - inserted);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use fleetwatch_proto::v1::TelemetryPoint;

    fn record(key: &str) -> Record {
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

    fn point(t: i64) -> TelemetryPoint {
        TelemetryPoint {
            time_unix_us: t,
            lat: Some(1.0),
            ..Default::default()
        }
    }

    fn batch(v: &str, points: Vec<TelemetryPoint>) -> TelemetryBatch {
        TelemetryBatch {
            vehicle_id: v.into(),
            points,
            ..Default::default()
        }
    }

    #[test]
    fn telemetry_validation() {
        assert!(validate_telemetry(&record("d1"), batch("d1", vec![point(1)])).is_ok());
        let reason = |r: Result<TelemetryItem, Invalid>| r.unwrap_err().reason;
        assert!(reason(validate_telemetry(&record("d1"), batch("", vec![]))).contains("empty"));
        assert!(
            reason(validate_telemetry(&record("d2"), batch("d1", vec![]))).contains("record key")
        );
        assert!(
            reason(validate_telemetry(&record("a/b"), batch("a/b", vec![])))
                .contains("not a valid")
        );
        let mut p = point(1);
        p.speed = Some(f64::NAN);
        assert!(
            reason(validate_telemetry(&record("d1"), batch("d1", vec![p])))
                .contains("points[0].speed")
        );
        let mut p = point(1);
        p.metrics.insert("rssi".into(), f64::INFINITY);
        assert!(reason(validate_telemetry(&record("d1"), batch("d1", vec![p]))).contains("rssi"));
        let mut p = point(1);
        p.vehicle_id = "other".into();
        assert!(
            reason(validate_telemetry(&record("d1"), batch("d1", vec![p]))).contains("differs")
        );
        assert!(
            reason(validate_telemetry(
                &record("d1"),
                batch("d1", vec![point(-1)])
            ))
            .contains("outside")
        );
    }

    #[test]
    fn runs_split_between_vehicles_only() {
        let p = Point {
            time: Utc::now(),
            lat: None,
            lon: None,
            alt: None,
            speed: None,
            heading: None,
            battery: None,
            metrics: BTreeMap::new(),
        };
        let rows: Vec<Row<'_>> = ["a", "a", "a", "b", "c", "c", "d"]
            .iter()
            .map(|v| (*v, &p, None))
            .collect();
        let vehicles = |runs: Vec<&[Row<'_>]>| -> Vec<String> {
            runs.iter()
                .map(|r| r.iter().map(|x| x.0).collect::<String>())
                .collect()
        };
        assert_eq!(vehicles(split_by_vehicle(&rows, 1)), ["aaabccd"]);
        assert_eq!(vehicles(split_by_vehicle(&rows, 2)), ["aaab", "ccd"]);
        assert_eq!(vehicles(split_by_vehicle(&rows, 3)), ["aaa", "bcc", "d"]);
        // Never more runs than vehicles, and nothing lost.
        assert_eq!(
            vehicles(split_by_vehicle(&rows, 10)),
            ["aaa", "b", "cc", "d"]
        );
        assert!(split_by_vehicle(&rows[..0], 2).is_empty());
    }

    #[test]
    fn latest_merges_newest_non_null_per_field() {
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let p = |s, lat: Option<f64>, speed: Option<f64>, m: &[(&str, f64)]| Point {
            time: t(s),
            lat,
            lon: None,
            alt: None,
            speed,
            heading: None,
            battery: None,
            metrics: m.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        let a = p(3, None, Some(7.0), &[("rssi", -70.0)]);
        let b = p(1, Some(1.0), Some(5.0), &[("rssi", -80.0), ("temp", 20.0)]);
        let c = p(2, Some(2.0), None, &[]);
        let merged = merge_latest([("d", &a), ("d", &b), ("d", &c)]);
        let m = &merged["d"];
        assert_eq!(m.time, t(3));
        assert_eq!(m.lat, Some(2.0));
        assert_eq!(m.speed, Some(7.0));
        assert_eq!(m.metrics["rssi"], -70.0);
        assert_eq!(m.metrics["temp"], 20.0);
    }

    #[test]
    fn frame_validation() {
        let f = Frame {
            vehicle_id: "d1".into(),
            time_unix_us: 1_000_000,
            data: vec![1, 2],
            ..Default::default()
        };
        let it = validate_frame(&record("d1"), f.clone()).unwrap();
        assert_eq!(it.key, "d1/1970/01/01/frame_1000000.jpg");
        assert_eq!(it.frame.content_type, "image/jpeg");
        let empty = Frame { data: vec![], ..f };
        assert!(
            validate_frame(&record("d1"), empty)
                .unwrap_err()
                .reason
                .contains("empty")
        );
    }

    #[test]
    fn data_errors_are_classified() {
        assert!(!WriteError::Db(sqlx::Error::PoolTimedOut).is_data_error());
        assert!(!WriteError::MissingPartition("x".into()).is_data_error());
    }
}
