//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::points::BodyFormat;

#[derive(Debug, Parser)]
#[command(
    name = "fleetwatch-loadtest",
    version,
    about = "Drive a running Fleetwatch stack with a simulated fleet and measure it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create (or with --reset, recreate) the load-test database and the topics.
    Prepare(PrepareArgs),
    /// Run one scenario against a running stack and report what it sustained.
    Run(Box<RunArgs>),
    /// Print Markdown tables of JSON reports written by `run --report`.
    Summarize { reports: Vec<PathBuf> },
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[arg(
        long,
        env = "FLEETWATCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/fleetwatch_loadtest"
    )]
    pub database_url: String,
    #[arg(
        long,
        env = "FLEETWATCH_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:29092"
    )]
    pub bootstrap_servers: String,
    /// Drop the database first (it must be one only the load test uses).
    #[arg(long)]
    pub reset: bool,
    /// Partitions of every v1 topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Grpc,
    Mqtt,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the scenario, used in the report.
    #[arg(long, default_value = "adhoc")]
    pub scenario: String,
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    pub protocol: Protocol,
    /// Simulated vehicles (each sends sequentially: one request in flight).
    #[arg(long, default_value_t = 50)]
    pub vehicles: usize,
    /// Points per second per vehicle; 0 = closed loop (each vehicle sends its
    /// next batch as soon as the previous one is acknowledged).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Points per HTTP request / gRPC chunk / MQTT message (1 = one JSON object per message, more = one array).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// HTTP body format.
    #[arg(long, value_enum, default_value_t = BodyFormat::Json)]
    pub format: BodyFormat,
    /// Seconds sent before measuring (not counted).
    #[arg(long, default_value_t = 10.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// After sending stops, seconds to wait at most for acknowledged points to become queryable.
    #[arg(long, default_value_t = 30.0)]
    pub drain: f64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub ingest_url: String,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub grpc_url: String,
    /// gRPC connections the fleet is spread over.
    #[arg(long, default_value_t = 4)]
    pub grpc_connections: usize,
    /// Seconds each vehicle's StreamTelemetry call stays open (one chunk per batch).
    #[arg(long, default_value_t = 2.0)]
    pub stream_window: f64,
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// Topics are `<prefix>/fleet/<id>/telemetry` (plain `fleet/<id>/telemetry` when empty).
    #[arg(long, default_value = "")]
    pub mqtt_topic_prefix: String,
    /// MQTT connections the fleet is spread over.
    #[arg(long, default_value_t = 4)]
    pub mqtt_connections: usize,
    #[arg(
        long,
        env = "FLEETWATCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/fleetwatch_loadtest"
    )]
    pub database_url: String,
    /// Vehicle id prefix; default `lt<random>`, so every run has its own vehicles.
    #[arg(long)]
    pub prefix: Option<String>,
    /// A process group to watch: `LABEL=PID[,PID...]` or `LABEL=NAME` (every
    /// process of that name). Repeatable. Without any: fleetwatch-ingest,
    /// fleetwatch-persistence, java (the broker) and postgres by name. The loader is always watched.
    #[arg(long = "proc", value_name = "LABEL=PIDS|NAME")]
    pub procs: Vec<String>,
    /// Where to write the JSON report.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Skip the start-up probe (one point that must become queryable before the warm-up).
    #[arg(long)]
    pub no_probe: bool,
}

impl RunArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut p = Vec::new();
        if !(1..=100_000).contains(&self.vehicles) {
            p.push("--vehicles must be 1..100000");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            p.push("--rate must be >= 0");
        }
        if !(1..=10_000).contains(&self.batch) {
            p.push("--batch must be 1..10000");
        }
        for (v, msg) in [
            (self.warmup, "--warmup must be >= 0"),
            (self.drain, "--drain must be >= 0"),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                p.push(msg);
            }
        }
        for (v, msg) in [
            (self.duration, "--duration must be > 0"),
            (self.timeout, "--timeout must be > 0"),
            (self.stream_window, "--stream-window must be > 0"),
        ] {
            if !(v.is_finite() && v > 0.0) {
                p.push(msg);
            }
        }
        if self.grpc_connections == 0 || self.mqtt_connections == 0 {
            p.push("--grpc-connections and --mqtt-connections must be >= 1");
        }
        anyhow::ensure!(p.is_empty(), "{}", p.join("; "));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let cli = Cli::try_parse_from([
            "x",
            "run",
            "--protocol",
            "grpc",
            "--rate",
            "0",
            "--proc",
            "ingest=1",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.protocol, Protocol::Grpc);
        assert!(a.validate().is_ok());
        let cli = Cli::try_parse_from(["x", "run", "--batch", "0", "--duration", "0"]).unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("--batch") && e.contains("--duration"), "{e}");
    }
}
