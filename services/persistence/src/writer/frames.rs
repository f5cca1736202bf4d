//! The `fleet.frames.v1` writer: bytes to the object store first, then the
//! `frames` index rows.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use fleetwatch_kafka::Record;
use fleetwatch_proto::v1::Frame;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use sqlx::PgPool;

use super::{Invalid, WriteError, Writer, check_time, check_vehicle};
use crate::{metrics, objects};

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
    use crate::writer::tests::record;

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
}
