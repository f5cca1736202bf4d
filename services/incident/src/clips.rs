//! Evidence clips: frames from `fleet.frames.v1` within a window around an
//! incident's trigger, copied under the incident's own clip prefix
//! (`<vehicle>/YYYY/MM/DD/clip_<trigger_us>/frame_<us>.<ext>`) so frame
//! retention never removes them, and listed in `incident_clip_frames`.
//!
//! Frames and the incident that wants them arrive on different topics in
//! any order, so recent frames are buffered in memory (bounded) and every
//! batch, plus a 1 s tick, matches the buffer against open clip windows.
//! Copies are idempotent (deterministic keys, `ON CONFLICT DO NOTHING`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetwatch_common::Shutdown;
use fleetwatch_kafka::{BatchHandler, Record, Rejection, TransientError};
use fleetwatch_proto::v1::Frame;
use object_store::ObjectStore;
use object_store::path::Path;
use sqlx::PgPool;

use crate::{metrics, store};

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("object store: {0}")]
    Objects(#[from] object_store::Error),
    #[error("bad clip key: {0}")]
    Key(String),
}

struct Buffered {
    time_us: i64,
    content_type: String,
    data: Bytes,
}

#[derive(Default)]
struct Buffer {
    frames: BTreeMap<String, VecDeque<Buffered>>,
    bytes: usize,
}

pub struct Clips {
    pub pool: PgPool,
    pub store: Arc<dyn ObjectStore>,
    /// How long (sample time) frames stay buffered behind a vehicle's newest.
    pub keep_us: i64,
    pub max_bytes: usize,
    buffer: Mutex<Buffer>,
}

impl Clips {
    pub fn new(pool: PgPool, store: Arc<dyn ObjectStore>, keep_us: i64, max_bytes: usize) -> Self {
        Self {
            pool,
            store,
            keep_us,
            max_bytes,
            buffer: Mutex::new(Buffer::default()),
        }
    }

    fn add(&self, f: Frame) {
        let Ok(mut b) = self.buffer.lock() else {
            return;
        };
        let size = f.data.len();
        let q = b.frames.entry(f.vehicle_id.clone()).or_default();
        let pos = q.partition_point(|x| x.time_us < f.time_unix_us);
        if q.get(pos).is_some_and(|x| x.time_us == f.time_unix_us) {
            return; // redelivered
        }
        q.insert(
            pos,
            Buffered {
                time_us: f.time_unix_us,
                content_type: f.content_type,
                data: Bytes::from(f.data),
            },
        );
        let newest = q.back().map(|x| x.time_us).unwrap_or(0);
        let mut freed = 0;
        while q.front().is_some_and(|x| x.time_us < newest - self.keep_us) {
            if let Some(x) = q.pop_front() {
                freed += x.data.len();
            }
        }
        b.bytes = b.bytes + size - freed;
        // Over budget: drop the oldest frames of the fullest vehicle.
        while b.bytes > self.max_bytes {
            let Some(v) = b
                .frames
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(v, _)| v.clone())
            else {
                break;
            };
            let Some(x) = b.frames.get_mut(&v).and_then(|q| q.pop_front()) else {
                break;
            };
            b.bytes -= x.data.len();
        }
        b.frames.retain(|_, q| !q.is_empty());
        metrics::FRAME_BUFFER_BYTES.set(b.bytes as i64);
    }

    /// Copies buffered frames into every clip window they fall in; frames
    /// the database refuses are logged and dropped from the buffer.
    pub async fn sync(&self) -> Result<usize, ClipError> {
        let (copied, refused) = self.sync_isolating().await?;
        for r in refused {
            tracing::warn!(vehicle = %r.vehicle, time_us = r.time_us, error = %r.reason,
                "database refused a buffered frame; dropped it from the clip buffer");
        }
        Ok(copied)
    }

    /// [`Self::sync`], returning the frames the database refused (a data
    /// error) instead of failing on them: retrying could never list them,
    /// and they would stay buffered and fail every sync until they age out.
    async fn sync_isolating(&self) -> Result<(usize, Vec<Refused>), ClipError> {
        // (vehicle, oldest, newest) of the buffer.
        let spans: Vec<(String, i64, i64)> = {
            let Ok(b) = self.buffer.lock() else {
                return Ok((0, Vec::new()));
            };
            b.frames
                .iter()
                .filter_map(|(v, q)| Some((v.clone(), q.front()?.time_us, q.back()?.time_us)))
                .collect()
        };
        if spans.is_empty() {
            return Ok((0, Vec::new()));
        }
        let vehicles: Vec<&str> = spans.iter().map(|s| s.0.as_str()).collect();
        let oldest = spans.iter().map(|s| s.1).min().unwrap_or(0);
        let clips = store::open_clips(&self.pool, &vehicles, oldest).await?;
        let mut todo: Vec<(i64, String, &str, i64, String, Bytes)> = Vec::new();
        {
            let Ok(b) = self.buffer.lock() else {
                return Ok((0, Vec::new()));
            };
            for c in &clips {
                let (id, vehicle, prefix) = (c.id, c.vehicle_id.as_str(), &c.prefix);
                let (from, to, have) = (c.from_us, c.to_us, &c.have);
                let Some(q) = b.frames.get(vehicle) else {
                    continue;
                };
                for f in q
                    .iter()
                    .filter(|f| (from..=to).contains(&f.time_us) && !have.contains(&f.time_us))
                {
                    let key = format!(
                        "{prefix}frame_{}.{}",
                        f.time_us,
                        fleetwatch_objectstore::extension_for(&f.content_type)
                    );
                    todo.push((
                        id,
                        key,
                        vehicle,
                        f.time_us,
                        f.content_type.clone(),
                        f.data.clone(),
                    ));
                }
            }
        }
        let mut refused: Vec<Refused> = Vec::new();
        let mut copied = 0;
        for (clip, key, vehicle, time_us, content_type, data) in &todo {
            if refused
                .iter()
                .any(|r| r.vehicle == *vehicle && r.time_us == *time_us)
            {
                continue;
            }
            let path = Path::parse(key).map_err(|e| ClipError::Key(e.to_string()))?;
            let size = data.len() as i32;
            self.store.put(&path, data.clone().into()).await?;
            let inserted = store::insert_clip_frame(
                &self.pool,
                &store::ClipFrame {
                    clip_id: *clip,
                    time_us: *time_us,
                    object_key: key,
                    content_type,
                    size_bytes: size,
                },
            )
            .await;
            match inserted {
                Ok(_) => {
                    metrics::CLIP_FRAMES.inc();
                    copied += 1;
                }
                Err(e) if fleetwatch_db::classify(&e) == fleetwatch_db::ErrorClass::Data => {
                    self.drop_buffered(vehicle, *time_us);
                    refused.push(Refused {
                        vehicle: vehicle.to_string(),
                        time_us: *time_us,
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((copied, refused))
    }

    fn drop_buffered(&self, vehicle: &str, time_us: i64) {
        let Ok(mut b) = self.buffer.lock() else {
            return;
        };
        let Some(q) = b.frames.get_mut(vehicle) else {
            return;
        };
        let Some(pos) = q.iter().position(|x| x.time_us == time_us) else {
            return;
        };
        let freed = q.remove(pos).map_or(0, |x| x.data.len());
        if q.is_empty() {
            b.frames.remove(vehicle);
        }
        b.bytes -= freed;
        metrics::FRAME_BUFFER_BYTES.set(b.bytes as i64);
    }
}

/// A buffered frame the database refused to list in a clip.
struct Refused {
    vehicle: String,
    time_us: i64,
    reason: String,
}

/// The frames consumer: buffer, then match against clip windows. Offsets
/// advance once matching frames are copied; frames matched later (their
/// incident was committed after them) come from the buffer.
pub struct FramesHandler(pub Arc<Clips>);

impl BatchHandler for FramesHandler {
    async fn handle(&self, batch: &[Record]) -> Result<Vec<Rejection>, TransientError> {
        const KIND: &str = "frames";
        let started = Instant::now();
        let mut rejected = Vec::new();
        // (index, vehicle, time) of the frames this batch buffered.
        let mut added: Vec<(usize, String, i64)> = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let f: Frame = match record.decode() {
                Ok(f) => f,
                Err(e) => {
                    metrics::REJECTED
                        .with_label_values(&[KIND, "undecodable"])
                        .inc();
                    rejected.push(Rejection { index, reason: e });
                    continue;
                }
            };
            if !fleetwatch_proto::valid_vehicle_id(&f.vehicle_id)
                || record.key_str() != Some(f.vehicle_id.as_str())
                || f.time_unix_us < 0
            {
                metrics::REJECTED
                    .with_label_values(&[KIND, "invalid"])
                    .inc();
                rejected.push(Rejection {
                    index,
                    reason: format!(
                        "invalid frame: vehicle_id {:?} (record key {:?}), time_unix_us {}",
                        f.vehicle_id,
                        record.key_str().unwrap_or("<none>"),
                        f.time_unix_us
                    ),
                });
                continue;
            }
            added.push((index, f.vehicle_id.clone(), f.time_unix_us));
            self.0.add(f);
        }
        let refused = match self.0.sync_isolating().await {
            Ok((_, refused)) => refused,
            Err(e) => {
                metrics::TRANSIENT_FAILURES.with_label_values(&[KIND]).inc();
                return Err(TransientError::new(e));
            }
        };
        for r in refused {
            match added
                .iter()
                .find(|(_, v, t)| *v == r.vehicle && *t == r.time_us)
            {
                Some((index, _, _)) => {
                    metrics::REJECTED
                        .with_label_values(&[KIND, "database"])
                        .inc();
                    rejected.push(Rejection {
                        index: *index,
                        reason: format!("refused by the database: {}", r.reason),
                    });
                }
                None => {
                    tracing::warn!(vehicle = %r.vehicle, time_us = r.time_us, error = %r.reason,
                    "database refused a buffered frame; dropped it from the clip buffer")
                }
            }
        }
        metrics::BATCH_SECONDS
            .with_label_values(&[KIND])
            .observe(started.elapsed().as_secs_f64());
        Ok(rejected)
    }
}

/// Catches incidents committed after their frames were consumed.
pub async fn tick(clips: Arc<Clips>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = clips.sync().await {
            tracing::warn!(error = %e, "clip collection failed; retrying");
        }
    }
}
