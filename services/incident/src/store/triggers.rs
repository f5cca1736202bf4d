//! Incidents opened, re-triggered, seen and cleared by the rules, batched:
//! one statement per kind of change, with their clip windows and events.
//!
//! A consumer batch can open hundreds of incidents; one statement per kind of
//! change (instead of several per incident) keeps the batch transaction short,
//! which is what keeps detection -> event latency low at 1,000/s.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::row::qualified_cols;
use super::{Action, EventItem, INCIDENT_COLS, IncidentRow, Tx, boxes_json, record_many};
use crate::rules::{DetectionEvidence, Rule};

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

/// One trigger of a batch; keys (vehicle, rule) must be unique within a call.
pub struct TriggerItem<'a> {
    pub rule: &'a Rule,
    pub vehicle: &'a str,
    pub at_us: i64,
    pub detail: &'a str,
    pub evidence: Option<&'a DetectionEvidence>,
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
