use std::path::PathBuf;

use clap::Parser;
use fleetwatch_common::{EXIT_CONFIG, load_config, shutdown_on_signal, telemetry};
use fleetwatch_ingest::Config;

/// Fleetwatch ingest: vehicle telemetry, detections and frames → Kafka.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file (also `FLEETWATCH_CONFIG`); env `FLEETWATCH_INGEST__SECTION__KEY` overrides it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: Config = match load_config("ingest", args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleetwatch-ingest: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let _guard = telemetry::init("ingest", &config.log)?;
    fleetwatch_ingest::run(config, shutdown_on_signal()).await
}
