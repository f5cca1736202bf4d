//! The schema against a real Postgres: version check, vehicles/tokens,
//! partition creation and retention.
#![allow(clippy::unwrap_used)]

use fleetwatch_db::{
    DbError, add_vehicle, check_schema, rotate_token, vehicle_exists, vehicle_for_token,
};
use fleetwatch_testkit::TestDb;

#[tokio::test]
async fn schema_check_refuses_empty_and_newer() {
    let empty = TestDb::empty().await;
    let err = check_schema(&empty.pool).await.unwrap_err();
    assert!(matches!(err, DbError::WrongSchema { .. }), "{err}");
    assert!(err.to_string().contains("fleetctl migrate"), "{err}");

    let db = TestDb::new().await;
    check_schema(&db.pool).await.unwrap();
    // A schema from a newer release is refused too.
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99990101000000, 'future', true, '\\x00', 0)")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = check_schema(&db.pool).await.unwrap_err();
    assert!(err.to_string().contains("99990101000000"), "{err}");
}

#[tokio::test]
async fn migrate_is_idempotent() {
    let db = TestDb::new().await;
    assert!(fleetwatch_db::migrate(&db.pool).await.unwrap().is_empty());
}

#[tokio::test]
async fn vehicles_and_tokens() {
    let db = TestDb::new().await;
    let token = add_vehicle(&db.pool, "drone-01", "drone", Some("Alpha"))
        .await
        .unwrap();
    assert_eq!(
        vehicle_for_token(&db.pool, &token)
            .await
            .unwrap()
            .as_deref(),
        Some("drone-01")
    );
    assert_eq!(vehicle_for_token(&db.pool, "fw_wrong").await.unwrap(), None);
    assert!(vehicle_exists(&db.pool, "drone-01").await.unwrap());
    assert!(!vehicle_exists(&db.pool, "drone-02").await.unwrap());
    assert!(matches!(
        add_vehicle(&db.pool, "drone-01", "drone", None).await,
        Err(DbError::VehicleExists(_))
    ));
    assert!(matches!(
        add_vehicle(&db.pool, "bad/id", "drone", None).await,
        Err(DbError::InvalidVehicleId(_))
    ));
    // The kind is constrained by the schema.
    assert!(
        add_vehicle(&db.pool, "x-1", "submarine", None)
            .await
            .is_err()
    );

    let new = rotate_token(&db.pool, "drone-01").await.unwrap().unwrap();
    assert_eq!(
        vehicle_for_token(&db.pool, &token).await.unwrap(),
        None,
        "old token stops working"
    );
    assert_eq!(
        vehicle_for_token(&db.pool, &new).await.unwrap().as_deref(),
        Some("drone-01")
    );
    assert_eq!(rotate_token(&db.pool, "nope").await.unwrap(), None);
}

#[tokio::test]
async fn partitions_are_created_on_demand_and_dropped_by_retention() {
    let db = TestDb::new().await;
    // Migration created yesterday..+7 days.
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'telemetry'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(n, 9);
    // A point 40 days old needs its partition first.
    let old = "now() - interval '40 days'";
    let insert =
        format!("INSERT INTO telemetry (vehicle_id, time, lat, lon) VALUES ('v', {old}, 1, 2)");
    assert!(
        sqlx::query(&insert).execute(&db.pool).await.is_err(),
        "no partition yet"
    );
    sqlx::query(&format!(
        "SELECT fleetwatch_ensure_telemetry_partition(({old})::date)"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    // Idempotent.
    sqlx::query(&format!(
        "SELECT fleetwatch_ensure_telemetry_partition(({old})::date)"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(&insert).execute(&db.pool).await.unwrap();
    sqlx::query("INSERT INTO telemetry (vehicle_id, time, lat, lon) VALUES ('v', now(), 1, 2)")
        .execute(&db.pool)
        .await
        .unwrap();

    let dropped: Vec<String> =
        sqlx::query_scalar("SELECT fleetwatch_drop_telemetry_partitions(30)")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        left, 1,
        "today's point stays, the old one went with its partition"
    );
}

/// The two poison cases of issue 12 raise what `classify` calls data errors.
#[tokio::test]
async fn refused_values_classify_as_data_errors() {
    use fleetwatch_db::{ErrorClass, classify};
    let db = TestDb::new().await;
    let nul = sqlx::query("SELECT $1::text")
        .bind("frame\u{0}key")
        .execute(&db.pool)
        .await
        .unwrap_err();
    let code = |e: &sqlx::Error| {
        e.as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.to_string())
    };
    assert_eq!(code(&nul).as_deref(), Some("22021"), "{nul}");
    assert_eq!(classify(&nul), ErrorClass::Data);
    // Incompressible, so the index row cannot shrink below the btree limit.
    let long: String =
        rand::Rng::sample_iter(rand::thread_rng(), &rand::distributions::Alphanumeric)
            .take(8000)
            .map(char::from)
            .collect();
    let big = sqlx::query(
        "INSERT INTO detections (drone_id, timestamp, class, confidence, frame_id, seq, model_name) \
         VALUES ('d1', now(), 'person', 0.9, 'f1', 0, $1)",
    )
    .bind(&long)
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert_eq!(code(&big).as_deref(), Some("54000"), "{big}");
    assert_eq!(classify(&big), ErrorClass::Data);
}
