//! The JSON report and the table printed at the end of a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::Protocol;
use crate::db::{Dist, StoredLatency};
use crate::points::BodyFormat;
use crate::procfs::GroupUsage;
use crate::stats::LatencySummary;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// RFC 3339 time the measurement window started.
    pub date: String,
    pub machine: Machine,
    pub config: Config,
    pub window: Window,
    pub sender: Sender,
    pub durable: Durable,
    pub latency: StoredLatency,
    pub processes: Vec<GroupUsage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub nproc: usize,
    pub kernel: String,
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    /// Busy share of ALL cores over the window (100 = every core busy), whoever used it.
    pub cpu_busy_percent_all_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub protocol: Protocol,
    pub vehicles: usize,
    /// 0 = closed loop.
    pub rate_per_vehicle: f64,
    pub batch: usize,
    pub format: BodyFormat,
    pub offered_points_per_sec: Option<f64>,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub vehicle_prefix: String,
    pub target: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub start_unix_us: i64,
    pub end_unix_us: i64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sender {
    /// Points handed to the senders during the window.
    pub sent: u64,
    pub sent_per_sec: f64,
    /// Points acknowledged during the window (MQTT: by the MQTT broker).
    pub acked: u64,
    pub acked_per_sec: f64,
    pub failed: u64,
    /// Successful requests (HTTP) / streams (gRPC) / PUBACKs (MQTT) in the window.
    pub requests: u64,
    /// Batches sent while at least one further batch was already due (the
    /// fleet could not keep its schedule).
    pub late_batches: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub first_errors: BTreeMap<&'static str, String>,
    /// Request round trip (HTTP: request → 2xx incl. retries; gRPC: stream close → ack).
    pub round_trip: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Durable {
    /// Rows of this run whose `stored_at` falls in the window.
    pub stored_in_window: i64,
    /// The sustained durable throughput.
    pub points_per_sec: f64,
    /// All rows of this run after the drain, and the points acknowledged over the whole run.
    pub stored_total: i64,
    pub acked_total: u64,
    pub drain_seconds: f64,
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn dist(d: &Dist) -> String {
    format!(
        "p50 {} / p99 {} / max {} ms",
        ms(d.p50_ms),
        ms(d.p99_ms),
        ms(d.max_ms)
    )
}

impl Report {
    /// A human summary for the terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let offered = c
            .offered_points_per_sec
            .map_or("closed loop".to_string(), |o| {
                format!("{o:.0} points/s offered")
            });
        let _ = writeln!(
            s,
            "scenario {}: {:?} {} vehicles x {} points/s, batch {} ({offered}), window {:.1} s",
            self.scenario, c.protocol, c.vehicles, c.rate_per_vehicle, c.batch, self.window.seconds
        );
        let m = &self.machine;
        let la = |l: Option<[f64; 3]>| {
            l.map_or("-".into(), |l| {
                format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
            })
        };
        let _ = writeln!(
            s,
            "machine {} ({} cores): load {} -> {}, all-core busy {}%",
            m.hostname,
            m.nproc,
            la(m.loadavg_start),
            la(m.loadavg_end),
            m.cpu_busy_percent_all_cores
                .map_or("-".into(), |b| format!("{b:.0}"))
        );
        let d = &self.durable;
        let _ = writeln!(
            s,
            "  durable   {:>9.0} points/s   ({} rows stored in the window; {} of {} acknowledged points stored after {:.1} s drain)",
            d.points_per_sec, d.stored_in_window, d.stored_total, d.acked_total, d.drain_seconds
        );
        let x = &self.sender;
        let _ = writeln!(
            s,
            "  sender    {:>9.0} sent/s, {:.0} acked/s, {} requests, {} late batches",
            x.sent_per_sec, x.acked_per_sec, x.requests, x.late_batches
        );
        let errs: Vec<String> = x
            .errors
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  errors    {}",
            if errs.is_empty() {
                "none".to_string()
            } else {
                errs.join(", ")
            }
        );
        for (k, msg) in &x.first_errors {
            let _ = writeln!(s, "    first {k}: {msg}");
        }
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  latency   send->stored     {}   ({} rows)",
            dist(&l.send_to_stored),
            l.rows
        );
        let _ = writeln!(
            s,
            "            received->stored {}",
            dist(&l.received_to_stored)
        );
        let _ = writeln!(
            s,
            "            send->received   {}",
            dist(&l.send_to_received)
        );
        let r = &x.round_trip;
        let _ = writeln!(
            s,
            "            round trip       p50 {} / p99 {} / max {} ms",
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.max_ms)
        );
        let _ = writeln!(
            s,
            "  {:<14} {:>8} {:>10} {:>10} {:>10}  pids",
            "process", "CPU %", "RSS avg", "RSS peak", "PSS peak"
        );
        for p in &self.processes {
            let pids = if p.pids.len() > 4 {
                format!("{} processes", p.pids.len())
            } else {
                format!("{:?}", p.pids)
            };
            let _ = writeln!(
                s,
                "  {:<14} {:>8.1} {:>8.1}Mi {:>8.1}Mi {:>8.1}Mi  {pids}",
                p.label, p.cpu_percent, p.rss_avg_mib, p.rss_peak_mib, p.pss_peak_mib
            );
        }
        s
    }
}

fn num(v: &serde_json::Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// A Markdown table of several JSON reports (one row per scenario), and a
/// second one with CPU % / peak RSS per process.
pub fn summarize(reports: &[serde_json::Value]) -> String {
    let mut s = String::new();
    let f0 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    let _ = writeln!(
        s,
        "| scenario | offered pts/s | durable pts/s | acked pts/s | send→stored p50 / p99 / max ms | recv→stored p50 / p99 ms | errors | load avg start → end |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---|---|---|");
    for r in reports {
        let scenario = r["scenario"].as_str().unwrap_or("?");
        let offered = num(r, &["config", "offered_points_per_sec"])
            .map_or("max".to_string(), |o| format!("{o:.0}"));
        let lat = |k: &str, q: &str| ms(num(r, &["latency", k, q]));
        let errors: Vec<String> = r["sender"]["errors"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect()
            })
            .unwrap_or_default();
        let la = |k: &str| {
            r["machine"][k][0]
                .as_f64()
                .map_or("-".into(), |l| format!("{l:.2}"))
        };
        let _ = writeln!(
            s,
            "| {scenario} | {offered} | {} | {} | {} / {} / {} | {} / {} | {} | {} → {} |",
            f0(num(r, &["durable", "points_per_sec"])),
            f0(num(r, &["sender", "acked_per_sec"])),
            lat("send_to_stored", "p50_ms"),
            lat("send_to_stored", "p99_ms"),
            lat("send_to_stored", "max_ms"),
            lat("received_to_stored", "p50_ms"),
            lat("received_to_stored", "p99_ms"),
            if errors.is_empty() {
                "none".into()
            } else {
                errors.join(", ")
            },
            la("loadavg_start"),
            la("loadavg_end"),
        );
    }
    let labels: Vec<String> = reports
        .first()
        .and_then(|r| r["processes"].as_array())
        .map(|p| {
            p.iter()
                .filter_map(|g| g["label"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(s);
    let _ = write!(
        s,
        "| scenario (CPU % of one core / peak RSS MiB; postgres: peak PSS) |"
    );
    for l in &labels {
        let _ = write!(s, " {l} |");
    }
    let _ = writeln!(s, " all cores busy % |");
    let _ = writeln!(s, "|---|{}---:|", "---:|".repeat(labels.len()));
    for r in reports {
        let _ = write!(s, "| {} |", r["scenario"].as_str().unwrap_or("?"));
        for l in &labels {
            let g = r["processes"]
                .as_array()
                .and_then(|p| p.iter().find(|g| g["label"].as_str() == Some(l)));
            // A group of many processes shares memory: PSS, not summed RSS.
            let mem = |g: &serde_json::Value| {
                let many = g["pids"].as_array().is_some_and(|p| p.len() > 1);
                let pss = g["pss_peak_mib"].as_f64();
                if many && pss.is_some() {
                    pss
                } else {
                    g["rss_peak_mib"].as_f64()
                }
            };
            let cell = g.map_or("-".into(), |g| {
                format!("{} / {}", f0(g["cpu_percent"].as_f64()), f0(mem(g)))
            });
            let _ = write!(s, " {cell} |");
        }
        let _ = writeln!(
            s,
            " {} |",
            f0(num(r, &["machine", "cpu_busy_percent_all_cores"]))
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_tables_have_a_row_per_report() {
        let r = serde_json::json!({
            "scenario": "memory-http",
            "config": {"offered_points_per_sec": 20000.0},
            "durable": {"points_per_sec": 12345.6},
            "sender": {"acked_per_sec": 13000.0, "errors": {"503": 2, "4xx": 0}},
            "latency": {"send_to_stored": {"p50_ms": 12.34, "p99_ms": 250.0, "max_ms": 900.0}, "received_to_stored": {"p50_ms": 10.0, "p99_ms": 200.0}},
            "machine": {"loadavg_start": [1.5, 1.0, 0.5], "loadavg_end": [2.0, 1.0, 0.5], "cpu_busy_percent_all_cores": 97.0},
            "processes": [{"label": "ingest", "cpu_percent": 55.5, "rss_peak_mib": 40.2}]
        });
        let t = summarize(&[r]);
        assert!(t.contains("| memory-http | 20000 | 12346 | 13000 | 12.3 / 250 / 900 | 10.0 / 200 | 503 2 | 1.50 → 2.00 |"), "{t}");
        assert!(t.contains("| memory-http | 56 / 40 | 97 |"), "{t}");
    }
}
