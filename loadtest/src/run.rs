//! One scenario: register the fleet, check the pipeline is live, warm up,
//! measure for a fixed window, stop sending, let the stack drain, then count
//! and time what became durable from the database itself.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use fleetwatch_common::now_unix_us;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{Protocol, RunArgs};
use crate::db;
use crate::points::{BodyFormat, Pt, synth, write_body};
use crate::procfs::{self, Group, Selector};
use crate::report::{self, Report};
use crate::schedule::{Pacer, Stamps, points_up_to, spacing_and_period_us};
use crate::send::{self, Ctx, GrpcSender, HttpSender, MqttConn, MqttSender, Sender};
use crate::stats::{Counters, LatencySummary};

/// Per vehicle: `(last sample time, points sent so far)` per batch, for the live stored count.
type BatchLog = Arc<Mutex<Vec<(i64, u64)>>>;

/// Rows older than this before the run started are not this run's (the
/// `time >= since` filter lets PostgreSQL prune old day partitions).
const SINCE_MARGIN_US: i64 = 3_600_000_000;

fn default_groups() -> Vec<Group> {
    // A Kafka broker is a `java` process.
    [
        ("ingest", "fleetwatch-ingest"),
        ("persistence", "fleetwatch-persistence"),
        ("broker", "java"),
        ("postgres", "postgres"),
    ]
    .into_iter()
    .map(|(label, name)| Group::new(label, Selector::Name(name.to_string())))
    .collect()
}

fn groups(specs: &[String]) -> anyhow::Result<Vec<Group>> {
    let mut g = if specs.is_empty() {
        default_groups()
    } else {
        specs
            .iter()
            .map(|s| {
                procfs::parse_proc_spec(s)
                    .map(|(l, sel)| Group::new(l, sel))
                    .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    g.push(Group::new(
        "loader",
        Selector::Pids(vec![std::process::id()]),
    ));
    Ok(g)
}

/// Sends one point for a probe vehicle and waits until it is queryable:
/// the consumer group has joined and the whole path works.
async fn probe(args: &RunArgs, pool: &PgPool, prefix: &str) -> anyhow::Result<Duration> {
    let id = format!("{prefix}-probe");
    let token = db::register(pool, std::slice::from_ref(&id))
        .await?
        .remove(0);
    let client = send::http_client(Duration::from_secs_f64(args.timeout))?;
    let now = now_unix_us();
    let mut body = Vec::new();
    write_body(&mut body, BodyFormat::Json, &id, &[synth(0, now)], now);
    let url = format!("{}/api/v1/telemetry", args.ingest_url.trim_end_matches('/'));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut posted = false;
    while Instant::now() < deadline {
        if !posted {
            match client
                .post(&url)
                .bearer_auth(&token)
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => posted = true,
                Ok(r) => eprintln!("probe: {} from {url}; retrying", r.status()),
                Err(e) => eprintln!("probe: {}; retrying", send::error_chain(&e)),
            }
        }
        if posted
            && db::newest_times(pool, std::slice::from_ref(&id), now - SINCE_MARGIN_US).await?[0]
                .is_some()
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!(
        "a probe point sent to {url} was not queryable within 120 s: is persistence consuming?"
    )
}

#[allow(clippy::too_many_arguments)]
async fn vehicle(
    index: usize,
    fleet: usize,
    mut sender: Sender,
    rate: f64,
    batch: usize,
    start_us: i64,
    counters: Arc<Counters>,
    log: BatchLog,
    late: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let closed = rate == 0.0;
    let (spacing, period) = if closed {
        (1_000, 0)
    } else {
        spacing_and_period_us(rate, batch)
    };
    let mut pacer = Pacer::new(start_us, index, fleet, period.max(1));
    let mut stamps = Stamps::default();
    let mut times = Vec::with_capacity(batch);
    let mut points: Vec<Pt> = Vec::with_capacity(batch);
    let mut total = 0u64;
    while !stop.is_cancelled() {
        let now = now_unix_us();
        let due = if closed { now } else { pacer.next_due() };
        if due > now {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_micros((due - now) as u64)) => {}
                _ = stop.cancelled() => break,
            }
        } else if !closed && pacer.behind(now) > 0 {
            late.fetch_add(1, Relaxed);
        }
        stamps.next_batch(due, batch, spacing, &mut times);
        points.clear();
        points.extend(times.iter().map(|&t| synth(index, t)));
        total += batch as u64;
        counters.sent.fetch_add(batch as u64, Relaxed);
        if let (Ok(mut l), Some(&last)) = (log.lock(), times.last()) {
            l.push((last, total));
        }
        sender.send(&points, due).await;
    }
    sender.finish().await;
}

/// Points stored so far, from each vehicle's newest stored time.
async fn stored_live(
    pool: &PgPool,
    ids: &[String],
    logs: &[BatchLog],
    since_us: i64,
) -> anyhow::Result<u64> {
    let newest = db::newest_times(pool, ids, since_us).await?;
    Ok(newest
        .iter()
        .zip(logs)
        .map(|(t, log)| match (t, log.lock()) {
            (Some(t), Ok(l)) => points_up_to(&l, *t),
            _ => 0,
        })
        .sum())
}

fn machine_info() -> (String, usize, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (host, nproc, kernel)
}

pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("lt{:06x}", rand::random::<u32>() & 0xff_ffff));
    let ids: Vec<String> = (1..=args.vehicles)
        .map(|i| format!("{prefix}-{i:04}"))
        .collect();
    anyhow::ensure!(
        ids.iter().all(|i| fleetwatch_proto::valid_vehicle_id(i)),
        "--prefix {prefix:?} does not make valid vehicle ids"
    );
    let mut groups = groups(&args.procs)?;
    let pool = db::connect(&args.database_url).await?;
    fleetwatch_db::check_schema(&pool).await.with_context(|| {
        format!(
            "{}: run `fleetwatch-loadtest prepare` first",
            db::redact(&args.database_url)
        )
    })?;
    let since_us = now_unix_us() - SINCE_MARGIN_US;
    let tokens = db::register(&pool, &ids).await?;
    eprintln!("registered {} vehicles {prefix}-0001..", ids.len());
    if !args.no_probe {
        let took = probe(&args, &pool, &prefix).await?;
        eprintln!(
            "pipeline live: a probe point was queryable after {:.1} s",
            took.as_secs_f64()
        );
    }

    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let ctx = Ctx {
        counters: counters.clone(),
        abort: abort.clone(),
    };
    let timeout = Duration::from_secs_f64(args.timeout);
    let http = send::http_client(timeout)?;
    let http_url: Arc<str> =
        format!("{}/api/v1/telemetry", args.ingest_url.trim_end_matches('/')).into();
    let channels = match args.protocol {
        Protocol::Grpc => (0..args.grpc_connections)
            .map(|_| send::grpc_channel(&args.grpc_url, timeout))
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let batch = if args.protocol == Protocol::Mqtt {
        args.batch.min(args.rate.max(1.0) as usize).max(1)
    } else {
        args.batch
    };
    let mqtt = match args.protocol {
        Protocol::Mqtt => (0..args.mqtt_connections)
            .map(|n| MqttConn::start(&args.mqtt, n, batch as u64, ctx.clone()))
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let target = match args.protocol {
        Protocol::Http => http_url.to_string(),
        Protocol::Grpc => args.grpc_url.clone(),
        Protocol::Mqtt => format!(
            "mqtt://{}/{}",
            args.mqtt,
            send::mqtt_topic(&args.mqtt_topic_prefix, "<id>")
        ),
    };

    let late = Arc::new(AtomicU64::new(0));
    let logs: Vec<BatchLog> = ids.iter().map(|_| BatchLog::default()).collect();
    let start_us = now_unix_us() + 100_000;
    let mut tasks = JoinSet::new();
    for (i, (id, token)) in ids.iter().zip(&tokens).enumerate() {
        let vid: Arc<str> = id.as_str().into();
        let sender = match args.protocol {
            Protocol::Http => Sender::Http(HttpSender {
                client: http.clone(),
                url: http_url.clone(),
                vehicle_id: vid,
                token: token.as_str().into(),
                format: args.format,
                ctx: ctx.clone(),
                buf: Vec::with_capacity(256 * batch),
            }),
            Protocol::Grpc => Sender::Grpc(Box::new(GrpcSender::new(
                channels[i % channels.len()].clone(),
                vid,
                token,
                Duration::from_secs_f64(args.stream_window),
                timeout,
                ctx.clone(),
            )?)),
            Protocol::Mqtt => Sender::Mqtt(MqttSender {
                client: mqtt[i % mqtt.len()].client.clone(),
                topic: send::mqtt_topic(&args.mqtt_topic_prefix, id),
                vehicle_id: vid,
                ctx: ctx.clone(),
                buf: Vec::with_capacity(256),
            }),
        };
        tasks.spawn(vehicle(
            i,
            ids.len(),
            sender,
            args.rate,
            batch,
            start_us,
            counters.clone(),
            logs[i].clone(),
            late.clone(),
            stop.clone(),
        ));
    }
    let offered = (args.rate > 0.0).then_some(args.rate * args.vehicles as f64);
    eprintln!(
        "{}: {} vehicles x {} points/s, batch {batch}, to {target}; warm-up {} s, measuring {} s",
        args.scenario,
        args.vehicles,
        if args.rate > 0.0 {
            args.rate.to_string()
        } else {
            "max".into()
        },
        args.warmup,
        args.duration
    );

    // Warm-up and measurement, with a progress line per second.
    let t0 = Instant::now();
    let warm_end = t0 + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    let mut measuring = false;
    let (mut w0_us, mut s_start, mut load_start, mut cpu_start, mut late_start) =
        (0, Default::default(), None, None, 0);
    let mut prev = (Instant::now(), counters.snapshot(), 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = if measuring { end } else { warm_end };
        // Phase boundaries are exact; progress lines come only on the ticks.
        let on_tick = tokio::select! {
            _ = tick.tick() => true,
            _ = tokio::time::sleep_until(next.into()) => false,
        };
        let now = Instant::now();
        if !measuring && now >= warm_end {
            measuring = true;
            w0_us = now_unix_us();
            s_start = counters.snapshot();
            late_start = late.load(Relaxed);
            counters.set_recording(true);
            load_start = procfs::loadavg();
            cpu_start = procfs::machine_cpu();
            groups.iter_mut().for_each(Group::sample);
        } else if measuring {
            groups.iter_mut().for_each(Group::sample);
        }
        if measuring && now >= end {
            break;
        }
        if !on_tick {
            continue;
        }
        let snap = counters.snapshot();
        let stored = stored_live(&pool, &ids, &logs, since_us)
            .await
            .unwrap_or(prev.2);
        let dt = now.duration_since(prev.0).as_secs_f64().max(1e-3);
        let d = snap.since(&prev.1);
        let errs: Vec<String> = snap
            .errors_by_kind()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        eprintln!(
            "[{} {:>3.0}s] sent {:>6.0}/s acked {:>6.0}/s stored {:>6.0}/s | stored {} of {} sent{}",
            if measuring { "measure" } else { "warm-up" },
            now.duration_since(t0).as_secs_f64(),
            d.sent as f64 / dt,
            d.acked as f64 / dt,
            stored.saturating_sub(prev.2) as f64 / dt,
            stored,
            snap.sent,
            if errs.is_empty() {
                String::new()
            } else {
                format!(" | errors {}", errs.join(", "))
            },
        );
        prev = (now, snap, stored);
    }
    let w1_us = now_unix_us();
    let s_end = counters.snapshot();
    let late_end = late.load(Relaxed);
    counters.set_recording(false);
    let load_end = procfs::loadavg();
    let cpu_end = procfs::machine_cpu();
    let window_s = (w1_us - w0_us) as f64 / 1e6;

    // Stop sending; wait for in-flight requests and for the stack to store
    // everything acknowledged (or give up after --drain).
    stop.cancel();
    let drain_start = Instant::now();
    let drain_deadline = drain_start + Duration::from_secs_f64(args.drain);
    let mut last_progress = (Instant::now(), 0u64);
    loop {
        while tasks.try_join_next().is_some() {}
        let acked = counters.acked.load(Relaxed);
        let stored = stored_live(&pool, &ids, &logs, since_us).await.unwrap_or(0);
        if stored != last_progress.1 {
            last_progress = (Instant::now(), stored);
        }
        let senders_done = tasks.is_empty();
        if (senders_done && stored >= acked)
            || Instant::now() >= drain_deadline
            || (senders_done && last_progress.0.elapsed() > Duration::from_secs(10))
        {
            eprintln!(
                "drain: {stored} of {acked} acknowledged points queryable after {:.1} s",
                drain_start.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    abort.cancel();
    while tasks.join_next().await.is_some() {}
    for m in mqtt {
        m.close().await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();

    let (stored_in_window, stored_total) =
        db::stored_counts(&pool, &ids, since_us, w0_us, w1_us).await?;
    let latency = db::latency(&pool, &ids, since_us, w0_us, w1_us).await?;
    let d = s_end.since(&s_start);
    let (hostname, nproc, kernel) = machine_info();
    let busy = match (cpu_start, cpu_end) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            Some(100.0 * (b1 - b0) as f64 / (t1 - t0) as f64)
        }
        _ => None,
    };
    let date = chrono::DateTime::from_timestamp_micros(w0_us)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    Ok(Report {
        scenario: args.scenario.clone(),
        date,
        machine: report::Machine {
            hostname,
            nproc,
            kernel,
            loadavg_start: load_start,
            loadavg_end: load_end,
            cpu_busy_percent_all_cores: busy,
        },
        config: report::Config {
            protocol: args.protocol,
            vehicles: args.vehicles,
            rate_per_vehicle: args.rate,
            batch,
            format: args.format,
            offered_points_per_sec: offered,
            warmup_s: args.warmup,
            duration_s: args.duration,
            vehicle_prefix: prefix,
            target,
        },
        window: report::Window {
            start_unix_us: w0_us,
            end_unix_us: w1_us,
            seconds: window_s,
        },
        sender: report::Sender {
            sent: d.sent,
            sent_per_sec: d.sent as f64 / window_s,
            acked: d.acked,
            acked_per_sec: d.acked as f64 / window_s,
            failed: d.failed,
            requests: d.requests,
            late_batches: late_end - late_start,
            errors: d.errors_by_kind(),
            first_errors: counters.first_errors(),
            round_trip: LatencySummary::from_micros(&counters.take_round_trips()),
        },
        durable: report::Durable {
            stored_in_window,
            points_per_sec: stored_in_window as f64 / window_s,
            stored_total,
            acked_total: counters.acked.load(Relaxed),
            drain_seconds: drain_s,
        },
        latency,
        processes: groups.iter().map(|g| g.usage(window_s)).collect(),
    })
}
