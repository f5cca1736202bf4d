//! Per (rule, vehicle) rule state: locked while a batch is applied, written
//! back with its changes, and scanned for silent vehicles (link loss).

use std::collections::BTreeMap;

use sqlx::Row;

use super::Tx;
use crate::rules::State;

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

/// Link-loss states whose vehicle has been silent past its rule's timeout at
/// `now_us`, as (rule, vehicle, last seen), locked; rows another replica holds
/// are skipped. A vehicle marked inactive in the registry is not expected to
/// talk.
pub async fn silent_link_loss_states(
    tx: &mut Tx<'_>,
    now_us: i64,
) -> Result<Vec<(i64, String, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT s.rule_id, s.vehicle_id, s.last_seen_us FROM incident_rule_state s \
         JOIN incident_rules r ON r.id = s.rule_id \
         LEFT JOIN vehicles v ON v.id = s.vehicle_id \
         WHERE r.kind = 'link_loss' AND r.enabled AND NOT s.active AND s.last_seen_us IS NOT NULL \
           AND s.last_seen_us < $1 - ((r.params->>'timeout_secs')::float8 * 1e6)::bigint \
           AND v.active IS NOT FALSE \
         ORDER BY s.rule_id, s.vehicle_id LIMIT 1000 FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(now_us)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Marks a (rule, vehicle) link-loss state active, so no replica opens it twice.
pub async fn mark_link_lost(
    tx: &mut Tx<'_>,
    rule_id: i64,
    vehicle: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE incident_rule_state SET active = TRUE, updated_at = clock_timestamp() \
         WHERE rule_id = $1 AND vehicle_id = $2",
    )
    .bind(rule_id)
    .bind(vehicle)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
