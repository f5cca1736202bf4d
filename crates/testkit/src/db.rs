//! A fresh, migrated database per test on the shared PostgreSQL server.
#![allow(clippy::unwrap_used)]

use crate::*;

/// Postgres server used by tests (`FLEETWATCH_TEST_PG`, default local trust auth).
pub fn pg_server_url() -> String {
    std::env::var("FLEETWATCH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database with the Fleetwatch schema, dropped when this is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("fw_{}", unique_suffix());
        let admin_url = format!("{}/postgres", pg_server_url());
        let admin = sqlx::PgPool::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("cannot reach Postgres at {admin_url} ({e}); start it or set FLEETWATCH_TEST_PG")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{}/{name}", pg_server_url());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        fleetwatch_db::migrate(&pool).await.unwrap();
        Self { name, url, pool }
    }

    /// A database with no schema at all (for schema-check tests).
    pub async fn empty() -> Self {
        let name = format!("fw_{}", unique_suffix());
        let admin = sqlx::PgPool::connect(&format!("{}/postgres", pg_server_url()))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{}/{name}", pg_server_url());
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        Self { name, url, pool }
    }

    pub fn db_config(&self) -> fleetwatch_db::DbConfig {
        fleetwatch_db::DbConfig {
            url: self.url.clone().into(),
            ..Default::default()
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort, on a separate thread: Drop cannot be async, and a
        // leftover database only costs disk.
        let name = self.name.clone();
        let server = pg_server_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(admin) = sqlx::PgPool::connect(&format!("{server}/postgres")).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Waits until `sql` (a count) returns `n`, failing the test with `what`
/// after `timeout`.
pub async fn wait_count(pool: &sqlx::PgPool, what: &str, sql: &str, n: i64, timeout: Duration) {
    wait_for(what, timeout, || {
        let pool = pool.clone();
        async move {
            let c: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.ok()?;
            (c == n).then_some(())
        }
    })
    .await;
}
