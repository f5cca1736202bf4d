//! fleetctl, the operator and data-engineer CLI: schema migrations, Kafka
//! topics, vehicle registration and MQTT logins, operators, API tokens and
//! signing keys, a simulated fleet, and tailing topics.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
mod connect;
pub mod incidents;
pub mod migrate;
pub mod mqtt;
pub mod settings;
pub mod signing_keys;
pub mod simulate;
pub mod tail;
pub mod tokens;
pub mod topics;
pub mod users;
pub mod vehicles;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs one command; the exit code is the command's verdict (e.g. a
/// simulation where every request failed).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = cli.global;
    match cli.command {
        Command::Migrate { create_database } => migrate::run(&g, create_database).await?,
        Command::Topics(cmd) => topics::run(&g, cmd).await?,
        Command::Vehicles(cmd) => vehicles::run(&g, cmd).await?,
        Command::Users(cmd) => users::run(&g, cmd).await?,
        Command::Tokens(cmd) => tokens::run(&g, cmd).await?,
        Command::SigningKeys(cmd) => signing_keys::run(&g, cmd).await?,
        Command::Mqtt(cmd) => mqtt::run(cmd)?,
        Command::Simulate(args) => return simulate::run(&g, *args).await,
        Command::Tail(args) => tail::run(&g, args).await?,
        Command::Incidents(args) => incidents::run(args).await?,
    }
    Ok(ExitCode::SUCCESS)
}
