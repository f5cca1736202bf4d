//! `fleetctl migrate`: create the database if asked, apply the embedded schema.

use anyhow::{Context, anyhow};

use crate::cli::Global;
use crate::connect;

pub async fn run(g: &Global, create_database: bool) -> anyhow::Result<()> {
    if create_database {
        create_database_if_missing(&g.database_url).await?;
    }
    let pool = connect::db_unchecked(&g.database_url).await?;
    let applied = fleetwatch_db::migrate(&pool)
        .await
        .with_context(|| format!("migrating {} failed", connect::redact(&g.database_url)))?;
    if applied.is_empty() {
        println!("no pending migrations");
    } else {
        for v in &applied {
            println!("applied migration {v}");
        }
    }
    fleetwatch_db::check_schema(&pool)
        .await
        .context("schema check after migrating failed")?;
    println!("schema version {}", fleetwatch_db::expected_version());
    pool.close().await;
    Ok(())
}

/// The database name of a URL and the URL of the `postgres` database on the same server.
fn split_database(url: &str) -> anyhow::Result<(String, String)> {
    let mut u = url::Url::parse(url).map_err(|e| {
        anyhow!(
            "invalid --database-url / FLEETWATCH_DATABASE_URL {}: {e}",
            connect::redact(url)
        )
    })?;
    let name = u.path().trim_start_matches('/').to_string();
    anyhow::ensure!(
        !name.is_empty() && !name.contains('/'),
        "--database-url {} names no database: end it with /fleetwatch",
        connect::redact(url)
    );
    anyhow::ensure!(
        !name.contains('%'),
        "database names with escaped characters are not supported: {name}"
    );
    u.set_path("/postgres");
    Ok((name, u.to_string()))
}

async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let (name, admin_url) = split_database(url)?;
    let admin = connect::db_unchecked(&admin_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .context("cannot list databases")?;
    if exists {
        println!("database {name} already exists");
    } else {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&admin)
            .await
        {
            Ok(_) => println!("created database {name}"),
            // 42P04: created concurrently by someone else, which is what we wanted.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {
                println!("database {name} already exists")
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot create database {name}: does the user in --database-url have CREATEDB?")
                });
            }
        }
    }
    admin.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_url_keeps_server_and_credentials() {
        let (name, admin) =
            split_database("postgres://u:p@db:5433/fleet_x?sslmode=disable").unwrap();
        assert_eq!(name, "fleet_x");
        assert_eq!(admin, "postgres://u:p@db:5433/postgres?sslmode=disable");
        assert!(split_database("postgres://db:5432").is_err());
        assert!(split_database("postgres://db:5432/").is_err());
    }
}
