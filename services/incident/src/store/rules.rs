//! Rule definitions: load, create, update and disable `incident_rules`.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::StoreError;
use crate::rules::{Params, Rule};

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
