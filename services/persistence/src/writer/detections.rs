//! The `fleet.detections.v1` writer: validation and one UNNEST insert per
//! chunk of detections, keyed on the seed's natural key.

use chrono::{DateTime, Utc};
use fleetwatch_kafka::Record;
use fleetwatch_proto::v1::DetectionBatch;
use sqlx::PgPool;

use super::{Invalid, WriteError, Writer, check_finite, check_time, check_vehicle};
use crate::metrics;

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
