use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fleetwatch_loadtest::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Prepare(a) => fleetwatch_loadtest::prepare::run(&a).await,
        Command::Run(a) => run(*a).await,
        Command::Summarize { reports } => summarize(&reports),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: fleetwatch_loadtest::cli::RunArgs) -> anyhow::Result<()> {
    let path = a.report.clone();
    let report = fleetwatch_loadtest::run::run(a).await?;
    println!("{}", report.table());
    if let Some(p) = path {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&p, json + "\n").with_context(|| format!("writing {}", p.display()))?;
        eprintln!("report written to {}", p.display());
    }
    Ok(())
}

fn summarize(paths: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        reports
            .push(serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?);
    }
    print!("{}", fleetwatch_loadtest::report::summarize(&reports));
    Ok(())
}
