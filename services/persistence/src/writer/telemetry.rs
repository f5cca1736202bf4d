//! The `fleet.telemetry.v1` writer: validation, vehicle-disjoint concurrent
//! transactions of UNNEST inserts, and the forward-only latest-state upsert.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use fleetwatch_kafka::Record;
use fleetwatch_proto::v1::TelemetryBatch;
use sqlx::PgPool;

use super::{
    Invalid, Partitions, WriteError, Writer, check_finite, check_time, check_vehicle, received_at,
};
use crate::metrics;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::writer::tests::record;
    use fleetwatch_proto::v1::TelemetryPoint;

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
}
