//! The incident row as stored, its columns, and its protobuf form.

use chrono::{DateTime, Utc};
use fleetwatch_proto::v1 as pb;

pub const INCIDENT_COLS: &str = "id, vehicle_id, rule_id, incident_type, rule_kind, severity, status, \
    title, detail, cleared, cleared_at, trigger_count, first_seen, last_seen, created_at, assigned_to, \
    acknowledged_by, acknowledged_at, resolved_by, resolved_at, frame_key, boxes, retain_until";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IncidentRow {
    pub id: i64,
    pub vehicle_id: String,
    pub rule_id: i64,
    pub incident_type: String,
    pub rule_kind: String,
    pub severity: i16,
    pub status: String,
    pub title: String,
    pub detail: String,
    pub cleared: bool,
    pub cleared_at: Option<DateTime<Utc>>,
    pub trigger_count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub assigned_to: Option<String>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub frame_key: Option<String>,
    pub boxes: Option<serde_json::Value>,
    pub retain_until: Option<DateTime<Utc>>,
}

pub(super) fn us(t: Option<DateTime<Utc>>) -> i64 {
    t.map(|t| t.timestamp_micros()).unwrap_or(0)
}

pub fn status_proto(s: &str) -> pb::IncidentStatus {
    match s {
        "open" => pb::IncidentStatus::Open,
        "acknowledged" => pb::IncidentStatus::Acknowledged,
        "resolved" => pb::IncidentStatus::Resolved,
        _ => pb::IncidentStatus::Unspecified,
    }
}

pub fn boxes_json(boxes: &[pb::BoundingBox]) -> serde_json::Value {
    serde_json::Value::Array(
        boxes
            .iter()
            .map(|b| serde_json::json!([b.x_min, b.y_min, b.x_max, b.y_max]))
            .collect(),
    )
}

fn boxes_from_json(v: Option<&serde_json::Value>) -> Vec<pb::BoundingBox> {
    let Some(serde_json::Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|b| {
            let a: [f32; 4] = serde_json::from_value(b.clone()).ok()?;
            Some(pb::BoundingBox {
                x_min: a[0],
                y_min: a[1],
                x_max: a[2],
                y_max: a[3],
            })
        })
        .collect()
}

impl IncidentRow {
    pub fn evidence(&self, clip_keys: Vec<String>) -> pb::Evidence {
        pb::Evidence {
            frame_key: self.frame_key.clone().unwrap_or_default(),
            boxes: boxes_from_json(self.boxes.as_ref()),
            clip_keys,
        }
    }

    pub fn to_proto(&self, clip_keys: Vec<String>) -> pb::Incident {
        pb::Incident {
            id: self.id,
            vehicle_id: self.vehicle_id.clone(),
            rule_id: self.rule_id,
            incident_type: self.incident_type.clone(),
            rule_kind: self.rule_kind.clone(),
            severity: i32::from(self.severity),
            status: status_proto(&self.status) as i32,
            title: self.title.clone(),
            detail: self.detail.clone(),
            cleared: self.cleared,
            cleared_unix_us: us(self.cleared_at),
            trigger_count: self.trigger_count.max(0) as u64,
            first_seen_unix_us: self.first_seen.timestamp_micros(),
            last_seen_unix_us: self.last_seen.timestamp_micros(),
            created_unix_us: self.created_at.timestamp_micros(),
            assigned_to: self.assigned_to.clone().unwrap_or_default(),
            acknowledged_by: self.acknowledged_by.clone().unwrap_or_default(),
            acknowledged_unix_us: us(self.acknowledged_at),
            resolved_by: self.resolved_by.clone().unwrap_or_default(),
            resolved_unix_us: us(self.resolved_at),
            evidence: Some(self.evidence(clip_keys)),
            retain_until_unix_us: us(self.retain_until),
        }
    }
}

pub(super) fn qualified_cols(alias: &str) -> String {
    INCIDENT_COLS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}
