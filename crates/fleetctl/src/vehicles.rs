//! `fleetctl vehicles`: register vehicles, rotate tokens, disable/enable.
//! With `--mqtt-password-file`, `add` and `rotate-token` also write the
//! vehicle's Mosquitto login (its id and token). `disable` leaves the login:
//! the bridge dead-letters a disabled vehicle's messages, and `enable` needs
//! no new token.
//!
//! Tools rely on `add` and `rotate-token` printing the token alone on the last
//! line of stdout; everything else goes to stderr.

use anyhow::Context;
use chrono::{DateTime, Utc};
use fleetwatch_db::DbError;

use crate::cli::{Global, VehiclesCommand};
use crate::{connect, mqtt};

type VehicleRow = (String, String, Option<String>, bool, DateTime<Utc>);

pub async fn run(g: &Global, cmd: VehiclesCommand) -> anyhow::Result<()> {
    let pool = connect::db(&g.database_url).await?;
    match cmd {
        VehiclesCommand::Add {
            id,
            kind,
            name,
            mqtt: login,
        } => {
            mqtt::check_new_vehicle_login(&login, &id)?;
            let token = match fleetwatch_db::add_vehicle(&pool, &id, kind.as_str(), name.as_deref())
                .await
            {
                Ok(t) => t,
                Err(DbError::VehicleExists(_)) => anyhow::bail!(
                    "vehicle {id} already exists: use `fleetctl vehicles rotate-token {id}` for a new token"
                ),
                Err(e @ DbError::InvalidVehicleId(_)) => return Err(e.into()),
                Err(e) => {
                    return Err(e).with_context(|| format!("registering vehicle {id} failed"));
                }
            };
            mqtt::set_vehicle_login(&login, &id, &token).with_context(|| {
                format!("{id} is registered, but its MQTT login is not written: run `fleetctl vehicles rotate-token {id} --mqtt-password-file ...`")
            })?;
            eprintln!(
                "registered {} {id}; its token is shown only now:",
                kind.as_str()
            );
            println!("{token}");
        }
        VehiclesCommand::List => {
            let rows: Vec<VehicleRow> = sqlx::query_as(
                "SELECT id, kind, name, active, created_at FROM vehicles ORDER BY id",
            )
            .fetch_all(&pool)
            .await
            .context("listing vehicles failed")?;
            let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(2).max(2);
            println!(
                "{:<width$}  {:<6}  {:<8}  {:<20}  NAME",
                "ID", "KIND", "STATUS", "CREATED"
            );
            for (id, kind, name, active, created) in &rows {
                let status = if *active { "active" } else { "disabled" };
                let created = created.format("%Y-%m-%d %H:%M:%S");
                println!(
                    "{id:<width$}  {kind:<6}  {status:<8}  {created:<20}  {}",
                    name.as_deref().unwrap_or("")
                );
            }
            eprintln!("{} vehicles", rows.len());
        }
        VehiclesCommand::RotateToken { id, mqtt: login } => {
            if login.mqtt_password_file.is_some() {
                mqtt::check_username(&id)?;
            }
            let token = fleetwatch_db::rotate_token(&pool, &id)
                .await
                .with_context(|| format!("rotating the token of {id} failed"))?
                .with_context(|| {
                    format!("no vehicle {id}: register it with `fleetctl vehicles add {id}`")
                })?;
            mqtt::set_vehicle_login(&login, &id, &token).with_context(|| {
                format!("{id} has a new token, but its MQTT login is not updated: rotate again")
            })?;
            eprintln!("new token for {id} (the old one no longer works):");
            println!("{token}");
        }
        VehiclesCommand::Disable { id } => set_active(&pool, &id, false).await?,
        VehiclesCommand::Enable { id } => set_active(&pool, &id, true).await?,
    }
    pool.close().await;
    Ok(())
}

async fn set_active(pool: &sqlx::PgPool, id: &str, active: bool) -> anyhow::Result<()> {
    let n = sqlx::query("UPDATE vehicles SET active = $2 WHERE id = $1")
        .bind(id)
        .bind(active)
        .execute(pool)
        .await
        .with_context(|| format!("updating vehicle {id} failed"))?
        .rows_affected();
    anyhow::ensure!(n == 1, "no vehicle {id}: see `fleetctl vehicles list`");
    println!("{} {id}", if active { "enabled" } else { "disabled" });
    Ok(())
}
