//! `fleetctl simulate`: a fleet of drones and vessels sending telemetry
//! (HTTP, gRPC or MQTT), camera frames and detections to ingest at a
//! controlled rate, behaving like well-mannered vehicles (Retry-After,
//! resend on failure), with live progress and a summary.
//!
//! Each vehicle is one task with its own `tokio` interval (missed ticks are
//! made up, so the average rate holds even when a request is slow); frames
//! are rendered on the blocking pool so they never delay telemetry.

pub mod grpc;
pub mod http;
pub mod jpeg;
pub mod mqtt;
pub mod point;
pub mod scenario;
pub mod stats;
pub mod tokens;
pub mod track;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::cli::{FleetKind, Global, Protocol, SimulateArgs};
use http::{Delivery, HttpClient, HttpTelemetry, Outcome};
use point::{Point, Stamps};
use stats::{ErrorKind, Stats};
use track::{Kind, Track};

/// How often a vehicle with `--detections` reports its object, per frame.
const DETECTION_PROBABILITY: f64 = 0.3;
/// Frame cadence used for detections when no frames are uploaded.
const DETECTION_ONLY_FPS: f64 = 0.2;

/// One simulated vehicle's identity.
#[derive(Debug, Clone)]
pub struct VehicleSpec {
    pub id: Arc<str>,
    pub kind: Kind,
    pub seed: u64,
}

/// The fleet: `<prefix>-001`.. with kinds per `--kind` (mixed: two drones per vessel).
pub fn fleet(prefix: &str, n: usize, kind: FleetKind, seed: u64) -> Vec<VehicleSpec> {
    (1..=n)
        .map(|i| VehicleSpec {
            id: format!("{prefix}-{i:03}").into(),
            kind: match kind {
                FleetKind::Drone => Kind::Drone,
                FleetKind::Vessel => Kind::Vessel,
                FleetKind::Mixed if i % 3 == 0 => Kind::Vessel,
                FleetKind::Mixed => Kind::Drone,
            },
            seed: seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        })
        .collect()
}

fn validate(a: &SimulateArgs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if !(1..=100_000).contains(&a.vehicles) {
        problems.push("--vehicles must be 1..100000".to_string());
    }
    if !(a.rate.is_finite() && a.rate > 0.0 && a.rate <= 1_000_000.0) {
        problems.push("--rate must be > 0 (points per second per vehicle)".into());
    }
    if !(1..=10_000).contains(&a.batch) {
        problems.push("--batch must be 1..10000".into());
    }
    if !(a.frames_fps.is_finite() && (0.0..=60.0).contains(&a.frames_fps)) {
        problems.push("--frames-fps must be 0..60".into());
    }
    if a.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
        problems.push("--duration must be > 0 seconds".into());
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        problems.push("--timeout must be > 0 seconds".into());
    }
    if !(a.stream_window.is_finite() && a.stream_window > 0.0) {
        problems.push("--stream-window must be > 0 seconds".into());
    }
    if !fleetwatch_proto::valid_vehicle_id(&format!("{}-001", a.prefix)) {
        problems.push(format!(
            "--prefix {:?} does not make valid vehicle ids (letters, digits, '_', '.', ':', '-')",
            a.prefix
        ));
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

/// Cancelled on the first Ctrl-C / SIGTERM; a second one exits at once.
fn stop_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        for i in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            if i == 0 {
                eprintln!("\nstopping: finishing in-flight requests (again to quit at once)");
                token.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}

pub async fn run(g: &Global, args: SimulateArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    if args.scenario.is_some() {
        let ids = scenario::vehicle_ids(&args.prefix);
        let tokens = if args.register {
            let specs: Vec<(String, &'static str)> =
                ids.iter().map(|id| (id.clone(), "drone")).collect();
            tokens::register(&g.database_url, &args.tokens_file, &specs).await?
        } else {
            tokens::load_all(&args.tokens_file, &ids)?
        };
        tokens::write_mqtt_logins(&args.mqtt_login, &tokens)?;
        return scenario::run(&args, &tokens).await;
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let vehicles = fleet(&args.prefix, args.vehicles, args.kind, seed);
    let ids: Vec<String> = vehicles.iter().map(|v| v.id.to_string()).collect();
    // Every protocol needs the tokens: over MQTT a vehicle's token is its password.
    let tokens: BTreeMap<String, String> = if args.register {
        let specs: Vec<(String, &'static str)> = vehicles
            .iter()
            .map(|v| (v.id.to_string(), v.kind.as_str()))
            .collect();
        tokens::register(&g.database_url, &args.tokens_file, &specs).await?
    } else {
        tokens::load_all(&args.tokens_file, &ids)?
    };
    let written = tokens::write_mqtt_logins(&args.mqtt_login, &tokens)?;
    if let (Protocol::Mqtt, Some((id, token)), Some(_)) = (
        args.protocol,
        &written,
        &args.mqtt_login.mqtt_reload_pid_file,
    ) {
        // The reload is asynchronous; connecting before it would be refused.
        mqtt::wait_login_accepted(&args.mqtt, id, token, Duration::from_secs(10)).await?;
    }

    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone());
    if let Some(d) = args.duration {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(d)).await;
            s.cancel();
        });
    }

    let stats = Arc::new(Stats::default());
    let timeout = Duration::from_secs_f64(args.timeout);
    let http = Arc::new(HttpClient::new(
        &args.ingest_url,
        timeout,
        stats.clone(),
        shutdown.clone(),
    )?);
    let telemetry_url: Arc<str> = http.url("/api/v1/telemetry").into();
    let grpc_channel = match args.protocol {
        Protocol::Grpc => Some(grpc::channel(&args.grpc_url, timeout)?),
        _ => None,
    };
    let mut mqtt_fleet = mqtt::MqttFleet::default();

    let started = Instant::now();
    let done = CancellationToken::new();
    let progress = tokio::spawn(show_progress(stats.clone(), done.clone()));
    let target = match args.protocol {
        Protocol::Http => args.ingest_url.clone(),
        Protocol::Grpc => args.grpc_url.clone(),
        Protocol::Mqtt => format!("mqtt://{}", args.mqtt),
    };
    eprintln!(
        "simulating {} vehicles ({}) at {} points/s each in batches of {} to {target}{}; Ctrl-C to stop",
        vehicles.len(),
        describe_kinds(&vehicles),
        args.rate,
        args.batch,
        if args.frames_fps > 0.0 {
            format!(", {} frames/s each", args.frames_fps)
        } else {
            String::new()
        },
    );

    let period = Duration::from_secs_f64(args.batch as f64 / args.rate);
    let spacing_us = (1e6 / args.rate).round() as i64;
    let mut tasks = JoinSet::new();
    for v in &vehicles {
        let token: Option<Arc<str>> = tokens.get(v.id.as_ref()).map(|t| Arc::from(t.as_str()));
        let sender = match args.protocol {
            Protocol::Http => {
                let token = token.clone().context("missing token")?;
                TelemetrySender::Http(HttpTelemetry::new(
                    http.clone(),
                    telemetry_url.clone(),
                    v.id.clone(),
                    token,
                ))
            }
            Protocol::Grpc => TelemetrySender::Grpc(Box::new(grpc::GrpcTelemetry::new(
                grpc_channel.clone().context("no gRPC channel")?,
                v.id.clone(),
                token.as_deref().context("missing token")?,
                Duration::from_secs_f64(args.stream_window),
                timeout,
                args.batch,
                stats.clone(),
                shutdown.clone(),
            )?)),
            Protocol::Mqtt => {
                let conn = mqtt::Mqtt::start(
                    &args.mqtt,
                    &v.id,
                    token.as_deref().context("missing token")?,
                    stats.clone(),
                )?;
                let sender =
                    mqtt::MqttTelemetry::new(conn.client.clone(), v.id.clone(), shutdown.clone());
                mqtt_fleet.vehicles.push(conn);
                TelemetrySender::Mqtt(sender)
            }
        };
        let track = Track::new(v.kind, args.center, v.seed);
        tasks.spawn(telemetry_task(
            track,
            sender,
            period,
            spacing_us,
            args.batch,
            stats.clone(),
            shutdown.clone(),
            v.seed,
        ));
        if args.frames_fps > 0.0 || args.detections {
            let vision = Vision {
                vehicle: v.clone(),
                token: token.clone().context("missing token")?,
                fps: if args.frames_fps > 0.0 {
                    args.frames_fps
                } else {
                    DETECTION_ONLY_FPS
                },
                upload_frames: args.frames_fps > 0.0,
                detections: args.detections,
                size: args.frame_size,
            };
            tasks.spawn(vision_task(
                vision,
                http.clone(),
                stats.clone(),
                shutdown.clone(),
            ));
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    mqtt_fleet.finish(&stats, Duration::from_secs(5)).await;
    done.cancel();
    let _ = progress.await;
    Ok(summary(
        &stats,
        &vehicles,
        &args,
        &target,
        started.elapsed(),
    ))
}

fn describe_kinds(v: &[VehicleSpec]) -> String {
    let drones = v.iter().filter(|v| v.kind == Kind::Drone).count();
    format!("{drones} drones, {} vessels", v.len() - drones)
}

enum TelemetrySender {
    Http(HttpTelemetry),
    Grpc(Box<grpc::GrpcTelemetry>),
    Mqtt(mqtt::MqttTelemetry),
}

impl TelemetrySender {
    async fn send(&mut self, points: &[Point], stats: &Stats) -> Delivery {
        match self {
            Self::Http(s) => s.send(points, &stats.points).await,
            Self::Grpc(s) => s.send(points, &stats.points).await,
            Self::Mqtt(s) => s.send(points, stats).await,
        }
    }

    async fn finish(&mut self, stats: &Stats) {
        if let Self::Grpc(s) = self {
            s.finish(&stats.points).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn telemetry_task(
    mut track: Track,
    mut sender: TelemetrySender,
    period: Duration,
    spacing_us: i64,
    batch: usize,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    seed: u64,
) {
    // A random phase spreads the fleet's requests over the period.
    let phase = rand::rngs::StdRng::seed_from_u64(seed).gen_range(0.0..1.0);
    let mut interval =
        tokio::time::interval_at(tokio::time::Instant::now() + period.mul_f64(phase), period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut stamps = Stamps::default();
    let mut times = Vec::with_capacity(batch);
    let mut points = Vec::with_capacity(batch);
    let mut last: Option<i64> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        stamps.next_batch(
            fleetwatch_common::now_unix_us(),
            batch,
            spacing_us,
            &mut times,
        );
        points.clear();
        for &t in &times {
            let dt = last.map_or(0.0, |l| (t - l) as f64 / 1e6);
            last = Some(t);
            points.push(Point {
                time_us: t,
                sample: track.step(dt),
            });
        }
        stats.points.sent.fetch_add(points.len() as u64, Relaxed);
        let d = sender.send(&points, &stats).await;
        if d.outcome == Outcome::Cancelled {
            break;
        }
        if d.backed_off {
            // Ingest asked us to slow down: do not make up the missed ticks in a burst.
            interval.reset();
        }
    }
    sender.finish(&stats).await;
}

struct Vision {
    vehicle: VehicleSpec,
    token: Arc<str>,
    fps: f64,
    upload_frames: bool,
    detections: bool,
    size: (u32, u32),
}

/// Camera of one vehicle: renders frames, uploads them, and now and then
/// reports a detection of the frame's moving object.
async fn vision_task(
    v: Vision,
    http: Arc<HttpClient>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let id = v.vehicle.id.clone();
    let scene = Arc::new(jpeg::Scene::new(
        v.vehicle.kind,
        v.size.0,
        v.size.1,
        v.vehicle.seed,
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(v.vehicle.seed ^ 0x5eed);
    let period = Duration::from_secs_f64(1.0 / v.fps);
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + period.mul_f64(rng.gen_range(0.0..1.0)),
        period,
    );
    // Frames are best effort: a slow upload skips frames instead of bursting.
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let frames_url = http.url("/api/v1/frames");
    let detections_url = http.url("/api/v1/detections");
    let track_id = format!("{id}-obj1");
    let mut stamps = Stamps::default();
    let mut time = Vec::with_capacity(1);
    let mut buf = Vec::new();
    for n in 1u64.. {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        stamps.next_batch(fleetwatch_common::now_unix_us(), 1, 1, &mut time);
        let t = time[0];
        let frame_id = format!("{id}-f{n:06}");
        let s = scene.clone();
        let Ok(rendered) = tokio::task::spawn_blocking(move || s.render(n, t)).await else {
            break;
        };
        if v.upload_frames {
            stats.frames.sent.fetch_add(1, Relaxed);
            let url = format!(
                "{frames_url}?timestamp={}&frame_id={frame_id}",
                point::Rfc3339(t)
            );
            let d = http
                .post(
                    &url,
                    &v.token,
                    "image/jpeg",
                    Bytes::from(rendered.jpeg),
                    1,
                    &stats.frames,
                )
                .await;
            if d.outcome == Outcome::Cancelled {
                break;
            }
        }
        if v.detections && rng.gen_bool(DETECTION_PROBABILITY) {
            let det = point::Detection {
                class: rendered.class,
                conf: (rng.gen_range(0.55f32..0.98) * 100.0).round() / 100.0,
                bbox: rendered.bbox.map(|c| (c * 10_000.0).round() / 10_000.0),
                track_id: &track_id,
            };
            point::write_detection_json(&id, t, &frame_id, &det, &mut buf);
            stats.detections.sent.fetch_add(1, Relaxed);
            let body = Bytes::copy_from_slice(&buf);
            let d = http
                .post(
                    &detections_url,
                    &v.token,
                    "application/json",
                    body,
                    1,
                    &stats.detections,
                )
                .await;
            if d.outcome == Outcome::Cancelled {
                break;
            }
        }
    }
}

async fn show_progress(stats: Arc<Stats>, done: CancellationToken) {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = ProgressBar::new_spinner();
        if let Ok(style) =
            ProgressStyle::with_template("{spinner:.green} [{elapsed_precise}] {msg}")
        {
            b.set_style(style);
        }
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    // Without a terminal (a log file), a line every 10 s is enough.
    let every = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    let mut prev = stats::Snapshot::default();
    let mut at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = done.cancelled() => break,
        }
        let (line, snap) = stats.progress_line(&prev, at.elapsed().as_secs_f64());
        prev = snap;
        at = Instant::now();
        match &bar {
            Some(b) => b.set_message(line),
            None => eprintln!("{line}"),
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

fn summary(
    stats: &Stats,
    vehicles: &[VehicleSpec],
    args: &SimulateArgs,
    target: &str,
    elapsed: Duration,
) -> ExitCode {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let protocol = match args.protocol {
        Protocol::Http => "HTTP",
        Protocol::Grpc => "gRPC",
        Protocol::Mqtt => "MQTT",
    };
    println!(
        "simulated {} vehicles ({}) for {secs:.1} s over {protocol} to {target}",
        vehicles.len(),
        describe_kinds(vehicles)
    );
    let mut sent_total = 0;
    let mut acked_total = 0;
    for (name, flow) in [
        ("points", &stats.points),
        ("frames", &stats.frames),
        ("detections", &stats.detections),
    ] {
        let (sent, acked, failed) = flow.snapshot();
        if sent == 0 && name != "points" {
            continue;
        }
        sent_total += sent;
        acked_total += acked;
        let unconfirmed = sent.saturating_sub(acked + failed);
        println!(
            "  {name:<11} sent {sent}, acked {acked} ({:.1}/s), failed {failed}, unconfirmed {unconfirmed}",
            acked as f64 / secs
        );
    }
    let errs: Vec<String> = stats
        .errors()
        .iter()
        .map(|(k, n)| format!("{} {n}", k.label()))
        .collect();
    println!("  errors      {}", errs.join(", "));
    for (kind, msg) in stats.first_errors() {
        println!("  first {:<10} {msg}", kind.label());
    }
    if sent_total > 0 && acked_total == 0 {
        let hint = if stats
            .errors()
            .iter()
            .any(|(k, n)| *k == ErrorKind::Connection && *n > 0)
        {
            format!(": is ingest running at {target}?")
        } else {
            String::new()
        };
        eprintln!("error: nothing was acknowledged{hint}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleets_are_named_and_mixed() {
        let f = fleet("sim", 6, FleetKind::Mixed, 1);
        let ids: Vec<&str> = f.iter().map(|v| v.id.as_ref()).collect();
        assert_eq!(
            ids,
            [
                "sim-001", "sim-002", "sim-003", "sim-004", "sim-005", "sim-006"
            ]
        );
        assert_eq!(f.iter().filter(|v| v.kind == Kind::Vessel).count(), 2);
        assert!(
            fleet("x", 3, FleetKind::Drone, 1)
                .iter()
                .all(|v| v.kind == Kind::Drone)
        );
        assert_ne!(f[0].seed, f[1].seed);
    }
}
