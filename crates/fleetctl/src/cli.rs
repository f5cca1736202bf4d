//! The command line: every command, option and its environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::mqtt::MqttLoginArgs;

#[derive(Debug, Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Fleetwatch operator and data-engineer CLI"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// PostgreSQL URL of the Fleetwatch database.
    #[arg(
        long,
        global = true,
        env = "FLEETWATCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/fleetwatch",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Kafka bootstrap servers (`host:port[,host:port]`).
    #[arg(
        long,
        global = true,
        env = "FLEETWATCH_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,
    /// Optional TOML file: the `[topics]` layout (partitions, replication,
    /// `min.insync.replicas`, `max.message.bytes`, topic configs).
    #[arg(long, global = true, env = "FLEETCTL_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if asked, apply pending migrations, print the schema version.
    Migrate {
        /// Create the database first when it does not exist (connects to the
        /// `postgres` database of the same server).
        #[arg(long)]
        create_database: bool,
    },
    /// Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Registered vehicles and their tokens.
    #[command(subcommand)]
    Vehicles(VehiclesCommand),
    /// Operators: add, list, disable/enable, passwd, set-role, ensure-admin.
    #[command(subcommand)]
    Users(crate::users::UsersCommand),
    /// API tokens of operators and services: create, list, revoke.
    #[command(subcommand)]
    Tokens(crate::tokens::TokensCommand),
    /// Keys that sign access tokens: create, register, list, retire.
    #[command(subcommand)]
    SigningKeys(crate::signing_keys::SigningKeysCommand),
    /// MQTT logins in Mosquitto's password file.
    #[command(subcommand)]
    Mqtt(MqttCommand),
    /// Simulate a fleet sending telemetry, frames and detections to ingest.
    Simulate(Box<SimulateArgs>),
    /// Print the records of a topic as JSON lines.
    Tail(TailArgs),
    /// Incidents of the incident service: list, acknowledge, resolve.
    Incidents(IncidentsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct IncidentsArgs {
    /// Incident service gRPC endpoint.
    #[arg(
        long,
        env = "FLEETWATCH_INCIDENT_GRPC_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub incident_grpc_url: String,
    /// Your API token (`fleetctl tokens create --user <you> --name cli`) or
    /// access token: the incident service records its owner in the audit
    /// trail. Listing needs a viewer, ack/resolve an operator.
    #[arg(long, env = "FLEETWATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: IncidentsCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IncidentStatusArg {
    Open,
    Acknowledged,
    Resolved,
}

#[derive(Debug, Clone, Subcommand)]
pub enum IncidentsCommand {
    /// Newest first: id, status, severity, vehicle, type, triggers, first seen, title.
    List {
        #[arg(long)]
        vehicle: Option<String>,
        /// Only these statuses (repeatable).
        #[arg(long, value_enum)]
        status: Vec<IncidentStatusArg>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// open -> acknowledged.
    Ack {
        id: i64,
        #[arg(long)]
        note: Option<String>,
    },
    /// Mark resolved.
    Resolve {
        id: i64,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every v1 topic and its `.dlq` topic (existing ones are left alone).
    Create {
        /// Partitions of topics the config file does not name (default 6).
        #[arg(long)]
        partitions: Option<i32>,
        /// Replication factor of every topic (default 3; 1 for a single-node broker).
        #[arg(
            long,
            visible_alias = "replication",
            env = "FLEETCTL_TOPICS_REPLICATION_FACTOR"
        )]
        replication_factor: Option<i32>,
        /// `min.insync.replicas` of every topic (default 2; 1 for a single-node broker).
        #[arg(long, env = "FLEETCTL_TOPICS_MIN_INSYNC_REPLICAS")]
        min_insync_replicas: Option<i32>,
    },
    /// List the topics on the broker with their partition and replica counts.
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VehicleKind {
    Drone,
    Vessel,
    Other,
}

impl VehicleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drone => "drone",
            Self::Vessel => "vessel",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum VehiclesCommand {
    /// Register a vehicle; its new token is the last line of stdout. With
    /// --mqtt-password-file it also gets an MQTT login (its id and token).
    Add {
        id: String,
        #[arg(long, value_enum, default_value = "drone")]
        kind: VehicleKind,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        mqtt: MqttLoginArgs,
    },
    /// List registered vehicles.
    List,
    /// Issue a new token (the old one stops working at once, over MQTT too
    /// with --mqtt-password-file); printed on the last line.
    RotateToken {
        id: String,
        #[command(flatten)]
        mqtt: MqttLoginArgs,
    },
    /// Stop accepting data from a vehicle (its token stops working).
    Disable { id: String },
    /// Accept data from a disabled vehicle again.
    Enable { id: String },
}

#[derive(Debug, Subcommand)]
pub enum MqttCommand {
    /// Add, replace or delete a login in a Mosquitto password file (what
    /// `mosquitto_passwd` does), e.g. the ingest bridge's. The password is
    /// the first line of stdin, or generated with --generate.
    Passwd {
        /// The password file (created if missing).
        file: PathBuf,
        /// The username, e.g. `fleetwatch-ingest` or a vehicle id.
        user: String,
        /// Generate a random password and print it alone on stdout.
        #[arg(long, conflicts_with = "delete")]
        generate: bool,
        /// Remove the user instead.
        #[arg(long)]
        delete: bool,
        /// Mosquitto's `pid_file`: send it SIGHUP afterwards so the change takes effect.
        #[arg(long, env = "FLEETWATCH_MQTT_PID_FILE")]
        reload_pid_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FleetKind {
    Drone,
    Vessel,
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Http,
    Grpc,
    Mqtt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// ~15 s scripted run raising one incident of each rule kind
    /// (battery, geofence, link loss, person in an image zone).
    Incidents,
}

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Run a scripted scenario with a known outcome instead of a random fleet
    /// (uses --prefix, --register/--tokens-file, --ingest-url, --center).
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Incident service gRPC endpoint (the incidents scenario sets up its rules there).
    #[arg(
        long,
        env = "FLEETWATCH_INCIDENT_GRPC_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub incident_grpc_url: String,
    /// An admin's API token, for the incidents scenario's rules
    /// (`fleetctl tokens create --user admin --name demo`).
    #[arg(long, env = "FLEETWATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Number of simulated vehicles.
    #[arg(long, default_value_t = 5)]
    pub vehicles: usize,
    /// Vehicle ids are `<prefix>-001`, `<prefix>-002`, ...
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    #[arg(long, value_enum, default_value = "mixed")]
    pub kind: FleetKind,
    /// Telemetry points per second per vehicle.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Points per request (HTTP: one JSON array; gRPC: one stream chunk; MQTT: one message each).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// Ingest HTTP base URL (telemetry over HTTP, frames, detections).
    #[arg(
        long,
        env = "FLEETWATCH_INGEST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub ingest_url: String,
    /// Ingest gRPC endpoint.
    #[arg(
        long,
        env = "FLEETWATCH_INGEST_GRPC_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub grpc_url: String,
    /// MQTT broker `host:port`; each vehicle logs in with its id and token
    /// and sends to `fleet/<id>/telemetry` with QoS 1.
    #[arg(long, env = "FLEETWATCH_MQTT", default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// With --register: the vehicles' MQTT logins.
    #[command(flatten)]
    pub mqtt_login: MqttLoginArgs,
    /// JPEG frames per second per vehicle (0 = none), POSTed to /api/v1/frames.
    #[arg(long, default_value_t = 0.0)]
    pub frames_fps: f64,
    /// Frame size `WxH`.
    #[arg(long, default_value = "640x480", value_parser = parse_size)]
    pub frame_size: (u32, u32),
    /// Also POST detections of the frames' moving object now and then.
    #[arg(long)]
    pub detections: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Register missing vehicles in the database and save their tokens in
    /// --tokens-file; without it, tokens are read from that file.
    #[arg(long)]
    pub register: bool,
    /// Where simulated vehicles' tokens are kept between runs.
    #[arg(long, default_value = ".fleetwatch/sim-tokens.json")]
    pub tokens_file: PathBuf,
    /// Base position `lat,lon` the fleet moves around.
    #[arg(long, default_value = "59.4370,24.7536", value_parser = parse_center, allow_hyphen_values = true)]
    pub center: (f64, f64),
    /// Seconds per request before it counts as a timeout and is resent.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// gRPC: seconds each telemetry stream stays open before it is closed and acknowledged.
    #[arg(long, default_value_t = 1.0)]
    pub stream_window: f64,
    /// Seed for the tracks (same seed, same tracks).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    pub topic: String,
    /// Start at the oldest record instead of only new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Print frame image bytes as hex too (large).
    #[arg(long)]
    pub with_frame_data: bool,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WxH, e.g. 640x480"))?;
    let w: u32 = w
        .trim()
        .parse()
        .map_err(|_| format!("bad width in {s:?}"))?;
    let h: u32 = h
        .trim()
        .parse()
        .map_err(|_| format!("bad height in {s:?}"))?;
    if !(32..=4096).contains(&w) || !(32..=4096).contains(&h) {
        return Err(format!("{s}: width and height must be 32..4096"));
    }
    Ok((w, h))
}

fn parse_center(s: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?} is not lat,lon, e.g. 59.437,24.7536"))?;
    let lat: f64 = lat
        .trim()
        .parse()
        .map_err(|_| format!("bad latitude in {s:?}"))?;
    let lon: f64 = lon
        .trim()
        .parse()
        .map_err(|_| format!("bad longitude in {s:?}"))?;
    // Tracks run in a local flat frame; near the poles it would degenerate.
    if !(-80.0..=80.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(format!(
            "{s}: latitude must be within ±80 and longitude within ±180"
        ));
    }
    Ok((lat, lon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_centers() {
        assert_eq!(parse_size("640x480"), Ok((640, 480)));
        assert!(parse_size("640").is_err());
        assert!(parse_size("10x10").is_err());
        assert_eq!(parse_center("-33.9, 18.4"), Ok((-33.9, 18.4)));
        assert!(parse_center("95,0").is_err());
        assert!(parse_center("abc").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
