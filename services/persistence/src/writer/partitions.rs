//! Day partitions of `telemetry` known to exist, so the hot path creates
//! each day's partition once, not per batch.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use chrono::NaiveDate;
use sqlx::PgPool;

use crate::metrics;

/// Day partitions known to exist, so the hot path calls
/// `fleetwatch_ensure_telemetry_partition` once per day, not per batch.
#[derive(Default)]
pub struct Partitions {
    known: Mutex<HashSet<NaiveDate>>,
}

impl Partitions {
    pub async fn ensure(
        &self,
        pool: &PgPool,
        days: impl IntoIterator<Item = NaiveDate>,
    ) -> Result<(), sqlx::Error> {
        let missing: BTreeSet<NaiveDate> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            days.into_iter().filter(|d| !known.contains(d)).collect()
        };
        for day in missing {
            sqlx::query("SELECT fleetwatch_ensure_telemetry_partition($1)")
                .bind(day)
                .execute(pool)
                .await?;
            metrics::PARTITIONS.with_label_values(&["ensured"]).inc();
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(day);
        }
        Ok(())
    }

    pub fn forget_all(&self) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
