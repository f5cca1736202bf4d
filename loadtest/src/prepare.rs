//! `prepare`: the load-test database (optionally dropped first) with the
//! schema, and every v1 topic on the load-test broker.

use anyhow::Context;
use fleetwatch_kafka::admin::{TopicSpec, ensure_topics};
use fleetwatch_kafka::{KafkaConfig, TopicNames};

use crate::cli::PrepareArgs;
use crate::db::{connect, redact};

/// `postgres://h/db` → (`db`, `postgres://h/postgres`).
pub fn split_database(url: &str) -> anyhow::Result<(String, String)> {
    let mut u = url::Url::parse(url).with_context(|| format!("{} is not a URL", redact(url)))?;
    let name = u.path().trim_start_matches('/').to_string();
    anyhow::ensure!(!name.is_empty(), "{} names no database", redact(url));
    u.set_path("/postgres");
    Ok((name, u.to_string()))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub async fn run(a: &PrepareArgs) -> anyhow::Result<()> {
    let (name, admin_url) = split_database(&a.database_url)?;
    let admin = connect(&admin_url).await?;
    if a.reset {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&name)
        ))
        .execute(&admin)
        .await
        .with_context(|| format!("dropping database {name}"))?;
        eprintln!("dropped database {name}");
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .execute(&admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        eprintln!("created database {name}");
    }
    admin.close().await;
    let pool = connect(&a.database_url).await?;
    fleetwatch_db::migrate(&pool).await.context("migrating")?;
    fleetwatch_db::check_schema(&pool).await?;
    pool.close().await;

    let kafka = KafkaConfig {
        bootstrap_servers: a.bootstrap_servers.clone(),
        ..KafkaConfig::default()
    };
    let topics = TopicNames::default();
    let mut specs = Vec::new();
    for t in topics.all() {
        specs.push(TopicSpec::single_replica(t, a.partitions));
        specs.push(TopicSpec::single_replica(format!("{t}.dlq"), 1));
    }
    let created = ensure_topics(&kafka, &specs)
        .await
        .context("creating topics")?;
    eprintln!(
        "topics ready on {} ({} topics)",
        a.bootstrap_servers,
        created.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_database_from_url() {
        let (n, admin) =
            split_database("postgres://postgres@127.0.0.1:5432/fleetwatch_loadtest").unwrap();
        assert_eq!(n, "fleetwatch_loadtest");
        assert_eq!(admin, "postgres://postgres@127.0.0.1:5432/postgres");
        assert!(split_database("postgres://h:5432").is_err());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
