//! Sender-side counters (points sent / acknowledged / given up, errors by
//! kind, request round trips) and the percentile math used for every
//! latency figure computed outside the database.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use serde::Serialize;

pub use fleetctl::simulate::stats::ErrorKind;

/// Position of `kind` in [`ErrorKind::ALL`], the index of its counter.
fn index(kind: ErrorKind) -> usize {
    ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

#[derive(Debug, Default)]
pub struct Counters {
    /// Points handed to a sender (once each, however often resent).
    pub sent: AtomicU64,
    /// Points acknowledged: by ingest (HTTP, gRPC) or by the MQTT broker (PUBACK).
    pub acked: AtomicU64,
    /// Points given up on (rejected).
    pub failed: AtomicU64,
    /// Requests / streams / MQTT messages that completed with success.
    pub requests: AtomicU64,
    errors: [AtomicU64; 5],
    first_error: Mutex<BTreeMap<ErrorKind, String>>,
    /// Round trips are only kept while measuring.
    recording: AtomicBool,
    round_trips_us: Mutex<Vec<u64>>,
}

/// Values of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub requests: u64,
    pub errors: [u64; 5],
}

impl Snapshot {
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut errors = [0; 5];
        for (i, e) in errors.iter_mut().enumerate() {
            *e = self.errors[i].saturating_sub(earlier.errors[i]);
        }
        Snapshot {
            sent: self.sent.saturating_sub(earlier.sent),
            acked: self.acked.saturating_sub(earlier.acked),
            failed: self.failed.saturating_sub(earlier.failed),
            requests: self.requests.saturating_sub(earlier.requests),
            errors,
        }
    }

    pub fn errors_by_kind(&self) -> BTreeMap<&'static str, u64> {
        ErrorKind::ALL
            .iter()
            .map(|k| (k.label(), self.errors[index(*k)]))
            .collect()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }
}

impl Counters {
    pub fn error(&self, kind: ErrorKind, detail: impl FnOnce() -> String) {
        self.errors[index(kind)].fetch_add(1, Relaxed);
        if let Ok(mut m) = self.first_error.lock() {
            m.entry(kind).or_insert_with(detail);
        }
    }

    pub fn first_errors(&self) -> BTreeMap<&'static str, String> {
        self.first_error
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.label(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut errors = [0; 5];
        for (i, e) in errors.iter_mut().enumerate() {
            *e = self.errors[i].load(Relaxed);
        }
        Snapshot {
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
            failed: self.failed.load(Relaxed),
            requests: self.requests.load(Relaxed),
            errors,
        }
    }

    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Relaxed);
    }

    /// One successful request's round trip (send → acknowledgement).
    pub fn round_trip(&self, us: u64) {
        if self.recording.load(Relaxed)
            && let Ok(mut v) = self.round_trips_us.lock()
        {
            v.push(us);
        }
    }

    pub fn take_round_trips(&self) -> Vec<u64> {
        self.round_trips_us
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// The `q` quantile (0..=1) of sorted values with linear interpolation
/// between closest ranks, the definition PostgreSQL's `percentile_cont` uses,
/// so figures computed here and in SQL are comparable.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// p50 / p99 / max / count of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl LatencySummary {
    pub fn from_micros(values: &[u64]) -> Self {
        let mut v: Vec<f64> = values.iter().map(|&us| us as f64 / 1000.0).collect();
        v.sort_by(f64::total_cmp);
        Self {
            count: v.len() as u64,
            p50_ms: percentile(&v, 0.5),
            p99_ms: percentile(&v, 0.99),
            max_ms: v.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_percentile_cont() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        // PostgreSQL: percentile_cont(0.5) of 1..4 = 2.5, (0.99) = 3.97.
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        assert!((percentile(&v, 0.99).unwrap() - 3.97).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&v, 1.5), None);
    }

    #[test]
    fn latency_summary_sorts_and_converts_to_ms() {
        let s = LatencySummary::from_micros(&[3_000, 1_000, 2_000, 100_000]);
        assert_eq!(s.count, 4);
        assert_eq!(s.p50_ms, Some(2.5));
        assert_eq!(s.max_ms, Some(100.0));
        assert_eq!(LatencySummary::from_micros(&[]), LatencySummary::default());
    }

    #[test]
    fn snapshots_subtract_and_errors_keep_the_first_message() {
        let c = Counters::default();
        c.sent.fetch_add(10, Relaxed);
        let a = c.snapshot();
        c.sent.fetch_add(5, Relaxed);
        c.error(ErrorKind::Busy, || "first".into());
        c.error(ErrorKind::Busy, || "second".into());
        c.error(ErrorKind::Timeout, || "t".into());
        let d = c.snapshot().since(&a);
        assert_eq!(d.sent, 5);
        assert_eq!(d.total_errors(), 3);
        assert_eq!(d.errors_by_kind()["503"], 2);
        assert_eq!(d.errors_by_kind()["timeout"], 1);
        assert_eq!(c.first_errors()["503"], "first");
    }

    #[test]
    fn round_trips_are_kept_only_while_recording() {
        let c = Counters::default();
        c.round_trip(5);
        c.set_recording(true);
        c.round_trip(7);
        c.set_recording(false);
        c.round_trip(9);
        assert_eq!(c.take_round_trips(), [7]);
        assert!(c.take_round_trips().is_empty());
    }
}
