//! Reads for the API: incident lists and details, audit trails, clip keys.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fleetwatch_proto::v1 as pb;
use sqlx::{PgPool, Row};

use super::{INCIDENT_COLS, IncidentRow};

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub vehicle_id: Option<String>,
    pub statuses: Vec<String>,
    pub rule_id: Option<i64>,
    pub min_severity: Option<i16>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

pub async fn list(pool: &PgPool, f: &Filter) -> Result<Vec<IncidentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {INCIDENT_COLS} FROM incidents WHERE ($1::text IS NULL OR vehicle_id = $1) \
         AND (cardinality($2::text[]) = 0 OR status = ANY($2)) AND ($3::bigint IS NULL OR rule_id = $3) \
         AND ($4::smallint IS NULL OR severity >= $4) AND ($5::bigint IS NULL OR id < $5) \
         ORDER BY id DESC LIMIT $6"
    ))
    .bind(&f.vehicle_id)
    .bind(&f.statuses)
    .bind(f.rule_id)
    .bind(f.min_severity)
    .bind(f.before_id)
    .bind(f.limit)
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<IncidentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {INCIDENT_COLS} FROM incidents WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn audit(pool: &PgPool, id: i64) -> Result<Vec<pb::AuditEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT event_id::text, action, actor, at, from_status, to_status, detail \
         FROM incident_audit WHERE incident_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| pb::AuditEntry {
            event_id: r.get(0),
            action: r.get(1),
            actor: r.get(2),
            time_unix_us: r.get::<DateTime<Utc>, _>(3).timestamp_micros(),
            from_status: r.get::<Option<String>, _>(4).unwrap_or_default(),
            to_status: r.get::<Option<String>, _>(5).unwrap_or_default(),
            detail: r.get(6),
        })
        .collect())
}

/// Clip keys of many incidents at once (for list responses).
pub async fn clip_keys_many(
    pool: &PgPool,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<String>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.incident_id, f.object_key FROM incident_clip_frames f JOIN incident_clips c ON c.id = f.clip_id \
         WHERE c.incident_id = ANY($1) ORDER BY c.incident_id, f.time_us",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    Ok(out)
}

pub async fn clip_keys(
    ex: impl sqlx::PgExecutor<'_>,
    incident_id: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT f.object_key FROM incident_clip_frames f JOIN incident_clips c ON c.id = f.clip_id \
         WHERE c.incident_id = $1 ORDER BY f.time_us",
    )
    .bind(incident_id)
    .fetch_all(ex)
    .await
}
