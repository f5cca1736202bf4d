//! Postgres side of incidents: rule state (locked per (rule, vehicle) while
//! a batch is applied), the grouping upsert, lifecycle transitions with
//! their audit rows, and the outbox rows written in the same transaction.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use fleetwatch_proto::v1 as pb;
use prost::Message as _;
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::rules::{DetectionEvidence, Params, Rule, State};

pub type Tx<'a> = Transaction<'a, Postgres>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("incident {0} not found")]
    NotFound(i64),
    #[error("rule {0} not found")]
    RuleNotFound(i64),
    /// An illegal lifecycle transition (resolving twice, acknowledging a resolved incident).
    #[error("{0}")]
    Precondition(String),
    /// The database refused the values (duplicate rule name, ...).
    #[error("{0}")]
    Conflict(String),
}

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

fn us(t: Option<DateTime<Utc>>) -> i64 {
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

// ------------------------------------------------------------------ rules

fn rule_from_row(r: &sqlx::postgres::PgRow) -> Result<Rule, String> {
    let kind: String = r.get("kind");
    let params: serde_json::Value = r.get("params");
    let created: DateTime<Utc> = r.get("created_at");
    let updated: DateTime<Utc> = r.get("updated_at");
    Ok(Rule {
        id: r.get("id"),
        name: r.get("name"),
        vehicle_id: r.get("vehicle_id"),
        severity: r.get("severity"),
        enabled: r.get("enabled"),
        description: r.get("description"),
        params: Params::from_json(&kind, &params)?,
        created_us: created.timestamp_micros(),
        updated_us: updated.timestamp_micros(),
    })
}

const RULE_COLS: &str =
    "id, name, vehicle_id, kind, severity, enabled, params, description, created_at, updated_at";

/// Every rule; a row whose params no longer parse is skipped with a warning.
pub async fn load_rules(pool: &PgPool) -> Result<Vec<Rule>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {RULE_COLS} FROM incident_rules ORDER BY id"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| match rule_from_row(r) {
            Ok(rule) => Some(rule),
            Err(e) => {
                let id: i64 = r.get("id");
                tracing::warn!(rule = id, error = %e, "skipping a rule with unusable params");
                None
            }
        })
        .collect())
}

fn map_rule_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        match db.code().as_deref() {
            Some("23505") => {
                return StoreError::Conflict(
                    "rule.name: a rule with this name already exists in this scope".into(),
                );
            }
            _ if fleetwatch_db::classify(&e) == fleetwatch_db::ErrorClass::Data => {
                return StoreError::Conflict(format!(
                    "rule: refused by the database ({})",
                    db.message()
                ));
            }
            _ => {}
        }
    }
    StoreError::Db(e)
}

pub async fn create_rule(pool: &PgPool, r: &Rule) -> Result<Rule, StoreError> {
    let row = sqlx::query(&format!(
        "INSERT INTO incident_rules (name, vehicle_id, kind, severity, enabled, params, description) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {RULE_COLS}"
    ))
    .bind(&r.name)
    .bind(&r.vehicle_id)
    .bind(r.params.kind())
    .bind(r.severity)
    .bind(r.enabled)
    .bind(r.params.to_json())
    .bind(&r.description)
    .fetch_one(pool)
    .await
    .map_err(map_rule_err)?;
    rule_from_row(&row).map_err(StoreError::Conflict)
}

/// Replaces a rule's definition. A changed kind resets its per-vehicle state.
pub async fn update_rule(pool: &PgPool, r: &Rule) -> Result<Rule, StoreError> {
    let mut tx = pool.begin().await?;
    let old_kind: Option<String> =
        sqlx::query_scalar("SELECT kind FROM incident_rules WHERE id = $1 FOR UPDATE")
            .bind(r.id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(old_kind) = old_kind else {
        return Err(StoreError::RuleNotFound(r.id));
    };
    let row = sqlx::query(&format!(
        "UPDATE incident_rules SET name = $2, vehicle_id = $3, kind = $4, severity = $5, enabled = $6, \
         params = $7, description = $8, updated_at = now() WHERE id = $1 RETURNING {RULE_COLS}"
    ))
    .bind(r.id)
    .bind(&r.name)
    .bind(&r.vehicle_id)
    .bind(r.params.kind())
    .bind(r.severity)
    .bind(r.enabled)
    .bind(r.params.to_json())
    .bind(&r.description)
    .fetch_one(&mut *tx)
    .await
    .map_err(map_rule_err)?;
    if old_kind != r.params.kind() {
        sqlx::query("DELETE FROM incident_rule_state WHERE rule_id = $1")
            .bind(r.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    rule_from_row(&row).map_err(StoreError::Conflict)
}

pub async fn disable_rule(pool: &PgPool, id: i64) -> Result<Rule, StoreError> {
    let row = sqlx::query(&format!(
        "UPDATE incident_rules SET enabled = FALSE, updated_at = now() WHERE id = $1 RETURNING {RULE_COLS}"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::RuleNotFound(id))?;
    rule_from_row(&row).map_err(StoreError::Conflict)
}

// ------------------------------------------------------------- rule state

pub type StateKey = (i64, String);

/// Creates missing state rows and locks all of `keys` (in key order, so
/// two replicas briefly sharing a vehicle during a rebalance cannot deadlock).
pub async fn lock_states(
    tx: &mut Tx<'_>,
    keys: &[StateKey],
) -> Result<BTreeMap<StateKey, State>, sqlx::Error> {
    let mut sorted: Vec<&StateKey> = keys.iter().collect();
    sorted.sort();
    sorted.dedup();
    let rule_ids: Vec<i64> = sorted.iter().map(|k| k.0).collect();
    let vehicles: Vec<&str> = sorted.iter().map(|k| k.1.as_str()).collect();
    // One statement: create missing rows and lock all of them. DO UPDATE
    // (a no-op assignment) is what makes existing rows come back locked.
    let rows = sqlx::query(
        "INSERT INTO incident_rule_state AS s (rule_id, vehicle_id) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[]) ORDER BY 1, 2 \
         ON CONFLICT (rule_id, vehicle_id) DO UPDATE SET rule_id = s.rule_id \
         RETURNING s.rule_id, s.vehicle_id, s.active, s.pending_since_us, s.consecutive, s.last_match_us, \
                   s.last_point_us, s.last_seen_us",
    )
    .bind(&rule_ids)
    .bind(&vehicles)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                (r.get::<i64, _>(0), r.get::<String, _>(1)),
                State {
                    active: r.get(2),
                    pending_since_us: r.get(3),
                    consecutive: r.get(4),
                    last_match_us: r.get(5),
                    last_point_us: r.get(6),
                    last_seen_us: r.get(7),
                },
            )
        })
        .collect())
}

pub async fn save_states(
    tx: &mut Tx<'_>,
    states: &BTreeMap<StateKey, State>,
) -> Result<(), sqlx::Error> {
    if states.is_empty() {
        return Ok(());
    }
    let mut rule_ids = Vec::new();
    let mut vehicles = Vec::new();
    let mut active = Vec::new();
    let mut pending = Vec::new();
    let mut consecutive = Vec::new();
    let mut last_match = Vec::new();
    let mut last_point = Vec::new();
    let mut last_seen = Vec::new();
    for ((rule, vehicle), s) in states {
        rule_ids.push(*rule);
        vehicles.push(vehicle.as_str());
        active.push(s.active);
        pending.push(s.pending_since_us);
        consecutive.push(s.consecutive);
        last_match.push(s.last_match_us);
        last_point.push(s.last_point_us);
        last_seen.push(s.last_seen_us);
    }
    sqlx::query(
        "UPDATE incident_rule_state s SET active = u.active, pending_since_us = u.pending, \
            consecutive = u.consecutive, last_match_us = u.last_match, last_point_us = u.last_point, \
            last_seen_us = u.last_seen, updated_at = clock_timestamp() \
         FROM UNNEST($1::bigint[], $2::text[], $3::bool[], $4::bigint[], $5::int[], $6::bigint[], $7::bigint[], $8::bigint[]) \
            AS u(rule_id, vehicle_id, active, pending, consecutive, last_match, last_point, last_seen) \
         WHERE s.rule_id = u.rule_id AND s.vehicle_id = u.vehicle_id",
    )
    .bind(&rule_ids)
    .bind(&vehicles)
    .bind(&active)
    .bind(&pending)
    .bind(&consecutive)
    .bind(&last_match)
    .bind(&last_point)
    .bind(&last_seen)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

// ------------------------------------------------------------ transitions

/// Clip window for a new incident; `None` disables clips.
#[derive(Debug, Clone, Copy)]
pub struct ClipWindow {
    pub before_us: i64,
    pub after_us: i64,
}

fn ts(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Opens the (vehicle, rule) incident or merges the trigger into the
/// unresolved one. Returns the incident and whether it is new.
pub async fn trigger(
    tx: &mut Tx<'_>,
    rule: &Rule,
    vehicle: &str,
    at_us: i64,
    detail: &str,
    evidence: Option<&DetectionEvidence>,
    clip: Option<ClipWindow>,
) -> Result<(IncidentRow, bool), sqlx::Error> {
    let mut out = trigger_many(
        tx,
        &[TriggerItem {
            rule,
            vehicle,
            at_us,
            detail,
            evidence,
        }],
        clip,
    )
    .await?;
    out.pop().ok_or(sqlx::Error::RowNotFound)
}

// --------------------------------------------------------- operator actions

#[derive(Debug, Clone)]
pub enum OperatorAction {
    Acknowledge { note: String },
    Assign { assignee: String },
    Comment { text: String },
    Resolve { note: String },
}

/// Applies an operator action under the incident's row lock.
pub async fn act(
    pool: &PgPool,
    id: i64,
    actor: &str,
    action: &OperatorAction,
    retention_days: u32,
) -> Result<IncidentRow, StoreError> {
    let mut tx = pool.begin().await?;
    let cur: Option<IncidentRow> = sqlx::query_as(&format!(
        "SELECT {INCIDENT_COLS} FROM incidents WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let cur = cur.ok_or(StoreError::NotFound(id))?;
    let update = |set: &str| {
        format!(
            "UPDATE incidents SET {set}, updated_at = clock_timestamp() WHERE id = $1 RETURNING {INCIDENT_COLS}"
        )
    };
    let (inc, a, detail): (IncidentRow, Action, String) = match action {
        OperatorAction::Acknowledge { note } => {
            if cur.status != "open" {
                return Err(StoreError::Precondition(format!(
                    "incident {id} is {}; only an open incident can be acknowledged",
                    cur.status
                )));
            }
            let inc = sqlx::query_as(&update(
                "status = 'acknowledged', acknowledged_by = $2, acknowledged_at = clock_timestamp()",
            ))
            .bind(id)
            .bind(actor)
            .fetch_one(&mut *tx)
            .await?;
            (inc, Action::Acknowledged, note.clone())
        }
        OperatorAction::Assign { assignee } => {
            if cur.status == "resolved" {
                return Err(StoreError::Precondition(format!(
                    "incident {id} is resolved; it cannot be assigned"
                )));
            }
            let to = (!assignee.is_empty()).then(|| assignee.clone());
            let inc = sqlx::query_as(&update("assigned_to = $2"))
                .bind(id)
                .bind(to)
                .fetch_one(&mut *tx)
                .await?;
            let detail = if assignee.is_empty() {
                "unassigned".to_string()
            } else {
                format!("assigned to {assignee}")
            };
            (inc, Action::Assigned, detail)
        }
        OperatorAction::Comment { text } => (cur.clone(), Action::Commented, text.clone()),
        OperatorAction::Resolve { note } => {
            if cur.status == "resolved" {
                return Err(StoreError::Precondition(format!(
                    "incident {id} is already resolved"
                )));
            }
            let inc = sqlx::query_as(&update(
                "status = 'resolved', resolved_by = $2, resolved_at = clock_timestamp(), \
                 retain_until = clock_timestamp() + make_interval(days => $3)",
            ))
            .bind(id)
            .bind(actor)
            .bind(retention_days as i32)
            .fetch_one(&mut *tx)
            .await?;
            (inc, Action::Resolved, note.clone())
        }
    };
    record(&mut tx, &inc, a, actor, Some(&cur.status), &detail).await?;
    tx.commit().await?;
    Ok(inc)
}

// ---------------------------------------------------------------- queries

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

// ------------------------------------------------------- batched transitions
//
// A consumer batch can open hundreds of incidents; one statement per kind of
// change (instead of several per incident) keeps the batch transaction short,
// which is what keeps detection -> event latency low at 1,000/s.

/// One trigger of a batch; keys (vehicle, rule) must be unique within a call.
pub struct TriggerItem<'a> {
    pub rule: &'a Rule,
    pub vehicle: &'a str,
    pub at_us: i64,
    pub detail: &'a str,
    pub evidence: Option<&'a DetectionEvidence>,
}

/// One audited change and its event.
pub struct EventItem<'a> {
    pub inc: &'a IncidentRow,
    pub action: Action,
    pub actor: &'a str,
    pub from_status: Option<&'a str>,
    pub detail: &'a str,
}

fn qualified_cols(alias: &str) -> String {
    INCIDENT_COLS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
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

/// Opens or re-triggers many incidents in one upsert; audits and queues
/// their events. Returns each incident and whether it is new.
pub async fn trigger_many(
    tx: &mut Tx<'_>,
    items: &[TriggerItem<'_>],
    clip: Option<ClipWindow>,
) -> Result<Vec<(IncidentRow, bool)>, sqlx::Error> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = items.iter().map(|i| i.rule.name.as_str()).collect();
    let severities: Vec<i16> = items.iter().map(|i| i.rule.severity).collect();
    let vehicles: Vec<&str> = items.iter().map(|i| i.vehicle).collect();
    let rule_ids: Vec<i64> = items.iter().map(|i| i.rule.id).collect();
    let kinds: Vec<&str> = items.iter().map(|i| i.rule.params.kind()).collect();
    let titles: Vec<String> = items
        .iter()
        .map(|i| format!("{} on {}", i.rule.name, i.vehicle))
        .collect();
    let details: Vec<&str> = items.iter().map(|i| i.detail).collect();
    let ats: Vec<DateTime<Utc>> = items.iter().map(|i| ts(i.at_us)).collect();
    let keys: Vec<Option<&str>> = items
        .iter()
        .map(|i| i.evidence.map(|e| e.frame_key.as_str()))
        .collect();
    let boxes: Vec<Option<String>> = items
        .iter()
        .map(|i| i.evidence.map(|e| boxes_json(&e.boxes).to_string()))
        .collect();
    let confs: Vec<Option<f32>> = items
        .iter()
        .map(|i| i.evidence.map(|e| e.confidence))
        .collect();
    let etimes: Vec<Option<i64>> = items
        .iter()
        .map(|i| i.evidence.map(|e| e.time_us))
        .collect();
    let better = "EXCLUDED.evidence_confidence > COALESCE(incidents.evidence_confidence, -1)";
    let rows = sqlx::query(&format!(
        "INSERT INTO incidents (incident_type, severity, vehicle_id, rule_id, rule_kind, title, detail, \
            first_seen, last_seen, frame_key, boxes, evidence_confidence, evidence_time_us) \
         SELECT u.name, u.severity, u.vehicle_id, u.rule_id, u.kind, u.title, u.detail, u.at, u.at, \
            u.frame_key, u.boxes::jsonb, u.conf, u.etime \
         FROM UNNEST($1::text[], $2::smallint[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], \
            $8::timestamptz[], $9::text[], $10::text[], $11::real[], $12::bigint[]) WITH ORDINALITY \
            AS u(name, severity, vehicle_id, rule_id, kind, title, detail, at, frame_key, boxes, conf, etime, n) \
         ORDER BY u.n \
         ON CONFLICT (vehicle_id, rule_id) WHERE status <> 'resolved' DO UPDATE SET \
            trigger_count = incidents.trigger_count + 1, \
            last_seen = GREATEST(incidents.last_seen, EXCLUDED.last_seen), \
            cleared = FALSE, cleared_at = NULL, detail = EXCLUDED.detail, severity = EXCLUDED.severity, \
            frame_key = CASE WHEN {better} THEN EXCLUDED.frame_key ELSE incidents.frame_key END, \
            boxes = CASE WHEN {better} THEN EXCLUDED.boxes ELSE incidents.boxes END, \
            evidence_time_us = CASE WHEN {better} THEN EXCLUDED.evidence_time_us ELSE incidents.evidence_time_us END, \
            evidence_confidence = GREATEST(incidents.evidence_confidence, EXCLUDED.evidence_confidence), \
            updated_at = clock_timestamp() \
         RETURNING {INCIDENT_COLS}, (xmax = 0) AS inserted"
    ))
    .bind(&names)
    .bind(&severities)
    .bind(&vehicles)
    .bind(&rule_ids)
    .bind(&kinds)
    .bind(&titles)
    .bind(&details)
    .bind(&ats)
    .bind(&keys)
    .bind(&boxes)
    .bind(&confs)
    .bind(&etimes)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let inserted: bool = row.get("inserted");
        out.push((<IncidentRow as sqlx::FromRow<_>>::from_row(row)?, inserted));
    }
    if let Some(w) = clip {
        let new: Vec<&IncidentRow> = out.iter().filter(|(_, n)| *n).map(|(i, _)| i).collect();
        if !new.is_empty() {
            let ids: Vec<i64> = new.iter().map(|i| i.id).collect();
            let vs: Vec<&str> = new.iter().map(|i| i.vehicle_id.as_str()).collect();
            let centers: Vec<i64> = new
                .iter()
                .map(|i| i.first_seen.timestamp_micros())
                .collect();
            let prefixes: Vec<String> = new
                .iter()
                .map(|i| {
                    format!(
                        "{}/{}/clip_{}/",
                        i.vehicle_id,
                        i.first_seen.format("%Y/%m/%d"),
                        i.first_seen.timestamp_micros()
                    )
                })
                .collect();
            sqlx::query(
                "INSERT INTO incident_clips (incident_id, vehicle_id, center_us, from_us, to_us, prefix) \
                 SELECT u.id, u.v, u.c, u.c - $5, u.c + $6, u.p \
                 FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS u(id, v, c, p) \
                 ON CONFLICT (incident_id) DO NOTHING",
            )
            .bind(&ids)
            .bind(&vs)
            .bind(&centers)
            .bind(&prefixes)
            .bind(w.before_us)
            .bind(w.after_us)
            .execute(&mut **tx)
            .await?;
        }
    }
    let events: Vec<EventItem> = out
        .iter()
        .map(|(inc, new)| EventItem {
            inc,
            action: if *new {
                Action::Opened
            } else {
                Action::Retriggered
            },
            actor: "system",
            from_status: None,
            detail: inc.detail.as_str(),
        })
        .collect();
    record_many(tx, &events).await?;
    Ok(out)
}

/// Newer sightings of many active incidents (no events).
pub async fn seen_many(
    tx: &mut Tx<'_>,
    items: &[(i64, &str, i64, Option<&DetectionEvidence>)],
) -> Result<(), sqlx::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let rule_ids: Vec<i64> = items.iter().map(|i| i.0).collect();
    let vehicles: Vec<&str> = items.iter().map(|i| i.1).collect();
    let ats: Vec<DateTime<Utc>> = items.iter().map(|i| ts(i.2)).collect();
    let confs: Vec<Option<f32>> = items.iter().map(|i| i.3.map(|e| e.confidence)).collect();
    let keys: Vec<Option<&str>> = items
        .iter()
        .map(|i| i.3.map(|e| e.frame_key.as_str()))
        .collect();
    let boxes: Vec<Option<String>> = items
        .iter()
        .map(|i| i.3.map(|e| boxes_json(&e.boxes).to_string()))
        .collect();
    let etimes: Vec<Option<i64>> = items.iter().map(|i| i.3.map(|e| e.time_us)).collect();
    let better = "u.conf > COALESCE(i.evidence_confidence, -1)";
    sqlx::query(&format!(
        "UPDATE incidents i SET last_seen = GREATEST(i.last_seen, u.at), \
            frame_key = CASE WHEN {better} THEN u.frame_key ELSE i.frame_key END, \
            boxes = CASE WHEN {better} THEN u.boxes::jsonb ELSE i.boxes END, \
            evidence_time_us = CASE WHEN {better} THEN u.etime ELSE i.evidence_time_us END, \
            evidence_confidence = GREATEST(i.evidence_confidence, u.conf), updated_at = clock_timestamp() \
         FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[], $4::real[], $5::text[], $6::text[], $7::bigint[]) \
            AS u(rule_id, vehicle_id, at, conf, frame_key, boxes, etime) \
         WHERE i.vehicle_id = u.vehicle_id AND i.rule_id = u.rule_id AND i.status <> 'resolved'"
    ))
    .bind(&rule_ids)
    .bind(&vehicles)
    .bind(&ats)
    .bind(&confs)
    .bind(&keys)
    .bind(&boxes)
    .bind(&etimes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks many unresolved incidents cleared; audits and queues the events.
pub async fn clear_many(
    tx: &mut Tx<'_>,
    items: &[(i64, &str, i64, &str)],
) -> Result<usize, sqlx::Error> {
    if items.is_empty() {
        return Ok(0);
    }
    let rule_ids: Vec<i64> = items.iter().map(|i| i.0).collect();
    let vehicles: Vec<&str> = items.iter().map(|i| i.1).collect();
    let ats: Vec<DateTime<Utc>> = items.iter().map(|i| ts(i.2)).collect();
    let rows: Vec<IncidentRow> = sqlx::query_as(&format!(
        "UPDATE incidents i SET cleared = TRUE, cleared_at = u.at, updated_at = clock_timestamp() \
         FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[]) AS u(rule_id, vehicle_id, at) \
         WHERE i.vehicle_id = u.vehicle_id AND i.rule_id = u.rule_id AND i.status <> 'resolved' AND NOT i.cleared \
         RETURNING {}",
        qualified_cols("i")
    ))
    .bind(&rule_ids)
    .bind(&vehicles)
    .bind(&ats)
    .fetch_all(&mut **tx)
    .await?;
    let details: HashMap<(i64, &str), &str> = items.iter().map(|i| ((i.0, i.1), i.3)).collect();
    let events: Vec<EventItem> = rows
        .iter()
        .map(|inc| EventItem {
            inc,
            action: Action::Cleared,
            actor: "system",
            from_status: None,
            detail: details
                .get(&(inc.rule_id, inc.vehicle_id.as_str()))
                .copied()
                .unwrap_or(""),
        })
        .collect();
    record_many(tx, &events).await?;
    Ok(rows.len())
}
