//! What happened to an incident: the audit row and the outbox event of
//! every change, written in the caller's transaction.

use std::collections::HashMap;

use chrono::Utc;
use fleetwatch_proto::v1 as pb;
use prost::Message as _;
use sqlx::Row;

use super::{IncidentRow, Tx, status_proto};

/// What happened to an incident: audit action and event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Opened,
    Retriggered,
    Cleared,
    Acknowledged,
    Assigned,
    Commented,
    Resolved,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Retriggered => "retriggered",
            Self::Cleared => "cleared",
            Self::Acknowledged => "acknowledged",
            Self::Assigned => "assigned",
            Self::Commented => "commented",
            Self::Resolved => "resolved",
        }
    }

    fn event_type(self) -> pb::IncidentEventType {
        match self {
            Self::Opened => pb::IncidentEventType::Opened,
            Self::Retriggered => pb::IncidentEventType::Updated,
            Self::Cleared => pb::IncidentEventType::Cleared,
            Self::Acknowledged => pb::IncidentEventType::Acknowledged,
            Self::Assigned => pb::IncidentEventType::Assigned,
            Self::Commented => pb::IncidentEventType::Commented,
            Self::Resolved => pb::IncidentEventType::Resolved,
        }
    }
}

/// One audited change and its event.
pub struct EventItem<'a> {
    pub inc: &'a IncidentRow,
    pub action: Action,
    pub actor: &'a str,
    pub from_status: Option<&'a str>,
    pub detail: &'a str,
}

/// Audits the change and queues its event, in the caller's transaction.
pub async fn record(
    tx: &mut Tx<'_>,
    inc: &IncidentRow,
    action: Action,
    actor: &str,
    from_status: Option<&str>,
    detail: &str,
) -> Result<(), sqlx::Error> {
    record_many(
        tx,
        &[EventItem {
            inc,
            action,
            actor,
            from_status,
            detail,
        }],
    )
    .await
}

/// A random (version 4) UUID in text form.
fn new_event_id() -> String {
    let b: [u8; 16] = rand::random();
    let hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let lo = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    let hi = (hi & !0xF000) | 0x4000;
    let lo = (lo & !(0xC000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// Audits every change and queues its event, in two statements.
pub async fn record_many(tx: &mut Tx<'_>, items: &[EventItem<'_>]) -> Result<(), sqlx::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let at = Utc::now();
    // A just-opened incident has no clip frames yet.
    let later: Vec<i64> = items
        .iter()
        .filter(|i| i.action != Action::Opened)
        .map(|i| i.inc.id)
        .collect();
    let mut clips: HashMap<i64, Vec<String>> = HashMap::new();
    if !later.is_empty() {
        let rows = sqlx::query(
            "SELECT c.incident_id, f.object_key FROM incident_clip_frames f JOIN incident_clips c ON c.id = f.clip_id \
             WHERE c.incident_id = ANY($1) ORDER BY c.incident_id, f.time_us",
        )
        .bind(&later)
        .fetch_all(&mut **tx)
        .await?;
        for r in rows {
            clips.entry(r.get(0)).or_default().push(r.get(1));
        }
    }
    let n = items.len();
    let mut ids = Vec::with_capacity(n);
    let mut event_ids = Vec::with_capacity(n);
    let mut actions = Vec::with_capacity(n);
    let mut actors = Vec::with_capacity(n);
    let mut from = Vec::with_capacity(n);
    let mut to = Vec::with_capacity(n);
    let mut details = Vec::with_capacity(n);
    let mut vehicles = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    for it in items {
        let inc = it.inc;
        let event_id = new_event_id();
        let ev = pb::IncidentEvent {
            event_id: event_id.clone(),
            incident_id: inc.id,
            vehicle_id: inc.vehicle_id.clone(),
            rule_id: inc.rule_id,
            incident_type: inc.incident_type.clone(),
            severity: i32::from(inc.severity),
            status: status_proto(&inc.status) as i32,
            event_type: it.action.event_type() as i32,
            time_unix_us: at.timestamp_micros(),
            actor: it.actor.to_string(),
            title: inc.title.clone(),
            detail: if it.detail.is_empty() {
                inc.detail.clone()
            } else {
                it.detail.to_string()
            },
            cleared: inc.cleared,
            trigger_count: inc.trigger_count.max(0) as u64,
            first_seen_unix_us: inc.first_seen.timestamp_micros(),
            last_seen_unix_us: inc.last_seen.timestamp_micros(),
            assigned_to: inc.assigned_to.clone().unwrap_or_default(),
            evidence: Some(inc.evidence(clips.remove(&inc.id).unwrap_or_default())),
        };
        ids.push(inc.id);
        event_ids.push(event_id);
        actions.push(it.action.name());
        actors.push(it.actor);
        from.push(it.from_status);
        to.push(inc.status.as_str());
        details.push(it.detail);
        vehicles.push(inc.vehicle_id.as_str());
        payloads.push(ev.encode_to_vec());
        crate::metrics::EVENTS
            .with_label_values(&[it.action.name()])
            .inc();
    }
    sqlx::query(
        "WITH u AS ( \
           SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $9::text[], $10::bytea[]) WITH ORDINALITY \
             AS u(id, eid, action, actor, from_status, to_status, detail, vehicle_id, payload, n)), \
         a AS ( \
           INSERT INTO incident_audit (incident_id, event_id, action, actor, at, from_status, to_status, detail) \
           SELECT id, eid::uuid, action, actor, $8, from_status, to_status, detail FROM u ORDER BY n) \
         INSERT INTO incident_outbox (event_id, vehicle_id, payload) \
         SELECT eid::uuid, vehicle_id, payload FROM u ORDER BY n",
    )
    .bind(&ids)
    .bind(&event_ids)
    .bind(&actions)
    .bind(&actors)
    .bind(&from)
    .bind(&to)
    .bind(&details)
    .bind(at)
    .bind(&vehicles)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
