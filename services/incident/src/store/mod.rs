//! Postgres side of incidents: rule state (locked per (rule, vehicle) while
//! a batch is applied), the grouping upsert, lifecycle transitions with
//! their audit rows, and the outbox rows written in the same transaction.
//! Every statement of the service except the outbox publisher's lives here.

mod clips;
mod events;
mod operator;
mod queries;
mod row;
mod rules;
mod state;
mod triggers;

use sqlx::{Postgres, Transaction};

pub use clips::{ClipFrame, OpenClip, insert_clip_frame, open_clips};
pub use events::{Action, EventItem, record, record_many};
pub use operator::{OperatorAction, act};
pub use queries::{Filter, audit, clip_keys, clip_keys_many, get, list};
pub use row::{INCIDENT_COLS, IncidentRow, boxes_json, status_proto};
pub use rules::{create_rule, disable_rule, load_rules, update_rule};
pub use state::{StateKey, lock_states, mark_link_lost, save_states, silent_link_loss_states};
pub use triggers::{ClipWindow, TriggerItem, clear_many, seen_many, trigger, trigger_many};

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
