//! `fleetctl migrate` against the real Postgres.
#![allow(clippy::unwrap_used)]

use crate::common::{fleetctl, stderr, stdout};
use fleetwatch_testkit::{TestDb, pg_server_url, unique_suffix};

#[tokio::test]
async fn migrates_an_empty_database_then_is_idempotent() {
    let db = TestDb::empty().await;
    assert!(
        fleetwatch_db::check_schema(&db.pool).await.is_err(),
        "starts without a schema"
    );

    let out = fleetctl(&["migrate", "--database-url", &db.url], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let version = fleetwatch_db::expected_version();
    assert!(
        stdout(&out).contains(&format!("applied migration {version}")),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(&format!("schema version {version}")));
    fleetwatch_db::check_schema(&db.pool).await.unwrap();

    // Again, via the environment variable: nothing to do, same version.
    let out = fleetctl(&["migrate"], &[("FLEETWATCH_DATABASE_URL", &db.url)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("no pending migrations"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(&format!("schema version {version}")));
}

#[tokio::test]
async fn creates_the_database_only_when_asked() {
    let name = format!("fw_{}", unique_suffix());
    let url = format!("{}/{name}", pg_server_url());

    let out = fleetctl(&["migrate", "--database-url", &url], &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--create-database"),
        "{}",
        stderr(&out)
    );

    let out = fleetctl(
        &["migrate", "--create-database", "--database-url", &url],
        &[],
    )
    .await;
    let ok = out.status.success();
    let text = stdout(&out);
    let out2 = fleetctl(
        &["migrate", "--create-database", "--database-url", &url],
        &[],
    )
    .await;

    // Clean up before asserting, so a failure leaves no database behind.
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", pg_server_url()))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();

    assert!(ok, "{}", stderr(&out));
    assert!(text.contains(&format!("created database {name}")), "{text}");
    assert!(text.contains("applied migration"), "{text}");
    assert!(out2.status.success(), "{}", stderr(&out2));
    assert!(
        stdout(&out2).contains("already exists") && stdout(&out2).contains("no pending migrations")
    );
}

#[tokio::test]
async fn unreachable_postgres_tells_what_to_do() {
    let port = fleetwatch_testkit::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/fleetwatch");
    let out = fleetctl(&["migrate", "--database-url", &url], &[]).await;
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&format!("cannot reach Postgres at 127.0.0.1:{port}")),
        "{e}"
    );
    assert!(e.contains("FLEETWATCH_DATABASE_URL"), "{e}");
}
