//! Operator actions on an incident (acknowledge, assign, comment, resolve)
//! under its row lock, with their audit rows and events.

use sqlx::PgPool;

use super::{Action, INCIDENT_COLS, IncidentRow, StoreError, record};

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
