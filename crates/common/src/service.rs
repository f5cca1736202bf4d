//! The whole `main` of a service, so every binary starts and fails the same
//! way: `--config <file>`, config loaded and checked before any port is bound
//! (exit 64 with every problem listed), telemetry initialised, `run` until the
//! shutdown signal, traces flushed, exit 1 with the cause when `run` fails.

use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Validate;
use crate::{EXIT_CONFIG, LogConfig, Shutdown, load_config, shutdown_on_signal, telemetry};

/// Parses the command line, then runs `run(config, shutdown)` on a tokio runtime.
/// `service` is the short name ("ingest"): it names the env prefix
/// `FLEETWATCH_<SERVICE>__` and the binary in messages.
pub fn service_main<C, F, Fut>(
    service: &'static str,
    about: &'static str,
    log: fn(&C) -> &LogConfig,
    run: F,
) -> !
where
    C: DeserializeOwned + Serialize + Default + Validate,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let bin = format!("fleetwatch-{service}");
    let args = clap::Command::new(bin.clone())
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "TOML config file (also FLEETWATCH_CONFIG); env FLEETWATCH_{}__SECTION__KEY overrides it",
                    service.to_uppercase()
                )),
        )
        .get_matches();
    let config: C = match load_config(
        service,
        args.get_one::<PathBuf>("config").map(PathBuf::as_path),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{bin}: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{bin}: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        let guard = match telemetry::init(service, log(&config)) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("{bin}: cannot initialise logging: {e:#}");
                return EXIT_CONFIG;
            }
        };
        let result = run(config, shutdown_on_signal()).await;
        drop(guard);
        match result {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{bin} stopped");
                eprintln!("{bin}: {e:#}");
                1
            }
        }
    });
    drop(runtime);
    std::process::exit(code)
}
