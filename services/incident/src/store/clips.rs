//! Evidence clip windows and the frames copied into them.

use std::collections::HashSet;

use sqlx::{PgPool, Row};

/// An incident's clip window and the frame times it already lists.
pub struct OpenClip {
    pub id: i64,
    pub vehicle_id: String,
    pub from_us: i64,
    pub to_us: i64,
    pub prefix: String,
    pub have: HashSet<i64>,
}

/// Clip windows of `vehicles` that end at or after `oldest_us`.
pub async fn open_clips(
    pool: &PgPool,
    vehicles: &[&str],
    oldest_us: i64,
) -> Result<Vec<OpenClip>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.id, c.vehicle_id, c.from_us, c.to_us, c.prefix, \
                COALESCE(array_agg(f.time_us) FILTER (WHERE f.time_us IS NOT NULL), '{}') \
         FROM incident_clips c LEFT JOIN incident_clip_frames f ON f.clip_id = c.id \
         WHERE c.vehicle_id = ANY($1) AND c.to_us >= $2 \
         GROUP BY c.id",
    )
    .bind(vehicles)
    .bind(oldest_us)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|c| OpenClip {
            id: c.get(0),
            vehicle_id: c.get(1),
            from_us: c.get(2),
            to_us: c.get(3),
            prefix: c.get(4),
            have: c.get::<Vec<i64>, _>(5).into_iter().collect(),
        })
        .collect())
}

/// One frame copied under a clip's prefix.
pub struct ClipFrame<'a> {
    pub clip_id: i64,
    pub time_us: i64,
    pub object_key: &'a str,
    pub content_type: &'a str,
    pub size_bytes: i32,
}

pub async fn insert_clip_frame(pool: &PgPool, f: &ClipFrame<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO incident_clip_frames (clip_id, time_us, object_key, content_type, size_bytes) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(f.clip_id)
    .bind(f.time_us)
    .bind(f.object_key)
    .bind(f.content_type)
    .bind(f.size_bytes)
    .execute(pool)
    .await?;
    Ok(())
}
