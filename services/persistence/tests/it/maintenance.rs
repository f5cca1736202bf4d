//! Partition upkeep against a real database: ahead creation and retention.
#![allow(clippy::unwrap_used)]

use chrono::{Days, Utc};
use fleetwatch_persistence::config::RetentionConfig;
use fleetwatch_persistence::maintenance::run_once;
use fleetwatch_persistence::writer::Partitions;
use fleetwatch_testkit::TestDb;

async fn exists(db: &TestDb, name: &str) -> bool {
    sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .is_some()
}

fn part(days_from_today: i64) -> String {
    let today = Utc::now().date_naive();
    let d = if days_from_today >= 0 {
        today
            .checked_add_days(Days::new(days_from_today as u64))
            .unwrap()
    } else {
        today
            .checked_sub_days(Days::new((-days_from_today) as u64))
            .unwrap()
    };
    format!("telemetry_{}", d.format("%Y%m%d"))
}

#[tokio::test]
async fn creates_ahead_and_drops_past_retention() {
    let db = TestDb::new().await;
    for d in [-40i32, -31, -29] {
        sqlx::query("SELECT fleetwatch_ensure_telemetry_partition(current_date + $1::int)")
            .bind(d)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let config = RetentionConfig {
        telemetry_days: 30,
        partitions_ahead_days: 10,
        maintenance_interval_secs: 60,
    };
    let partitions = Partitions::default();
    let mut dropped = run_once(&db.pool, &partitions, &config).await.unwrap();
    dropped.sort();
    assert_eq!(dropped, vec![part(-40), part(-31)]);
    assert!(!exists(&db, &part(-40)).await);
    assert!(
        exists(&db, &part(-29)).await,
        "a partition inside retention was dropped"
    );
    for d in 0..=10 {
        assert!(exists(&db, &part(d)).await, "{} missing", part(d));
    }
    assert!(!exists(&db, &part(11)).await);
    // Nothing left to drop.
    assert!(
        run_once(&db.pool, &partitions, &config)
            .await
            .unwrap()
            .is_empty()
    );
}
