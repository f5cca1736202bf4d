use std::path::PathBuf;

use clap::Parser;
use fleetwatch_common::{EXIT_CONFIG, load_config, shutdown_on_signal, telemetry};
use fleetwatch_persistence::Config;

/// Fleetwatch persistence: Kafka -> Postgres + object store, and gRPC queries.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file (also `FLEETWATCH_CONFIG`); env `FLEETWATCH_PERSISTENCE__SECTION__KEY` overrides it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let config: Config = match load_config("persistence", args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleetwatch-persistence: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let guard = match telemetry::init("persistence", &config.log) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("fleetwatch-persistence: cannot initialise logging: {e:#}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(e) = fleetwatch_persistence::run(config, shutdown_on_signal()).await {
        tracing::error!(error = format!("{e:#}"), "persistence stopped");
        eprintln!("fleetwatch-persistence: {e:#}");
        drop(guard);
        std::process::exit(1);
    }
}
