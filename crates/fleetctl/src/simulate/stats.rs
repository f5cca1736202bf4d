//! Counters shared by every sender, the live progress line and the summary.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// 4xx (other than 429): the request itself is wrong (bad token, bad body); not retried.
    Rejected,
    /// 503/429 or gRPC UNAVAILABLE/RESOURCE_EXHAUSTED from a busy ingest; retried after Retry-After.
    Busy,
    /// Other 5xx; retried a few times.
    Server,
    Timeout,
    Connection,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Rejected => "4xx",
            Self::Busy => "503",
            Self::Server => "5xx",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
        }
    }

    pub const ALL: [ErrorKind; 5] = [
        Self::Rejected,
        Self::Busy,
        Self::Server,
        Self::Timeout,
        Self::Connection,
    ];
}

/// Counts of one kind of item (points, frames, detections).
#[derive(Debug, Default)]
pub struct Flow {
    /// Items handed to a sender (each counted once, however often resent).
    pub sent: AtomicU64,
    /// Items ingest acknowledged (durable in Kafka).
    pub acked: AtomicU64,
    /// Items given up on (rejected, or retries exhausted).
    pub failed: AtomicU64,
}

impl Flow {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Relaxed),
            self.acked.load(Relaxed),
            self.failed.load(Relaxed),
        )
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub points: Flow,
    pub frames: Flow,
    pub detections: Flow,
    errors: [AtomicU64; 5],
    /// The first message seen per error kind, for the summary.
    first_error: Mutex<BTreeMap<ErrorKind, String>>,
}

impl Stats {
    pub fn error(&self, kind: ErrorKind, detail: impl FnOnce() -> String) {
        let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.errors[i].fetch_add(1, Relaxed);
        if let Ok(mut m) = self.first_error.lock() {
            m.entry(kind).or_insert_with(detail);
        }
    }

    pub fn errors(&self) -> Vec<(ErrorKind, u64)> {
        ErrorKind::ALL
            .iter()
            .zip(&self.errors)
            .map(|(k, c)| (*k, c.load(Relaxed)))
            .collect()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn first_errors(&self) -> Vec<(ErrorKind, String)> {
        self.first_error
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    /// One line for the progress display, with rates over `secs` since `prev`.
    pub fn progress_line(&self, prev: &Snapshot, secs: f64) -> (String, Snapshot) {
        let now = Snapshot::of(self);
        let rate = |a: u64, b: u64| {
            if secs > 0.0 {
                (a.saturating_sub(b)) as f64 / secs
            } else {
                0.0
            }
        };
        let mut line = format!(
            "points sent {} ({:.0}/s) acked {} ({:.0}/s)",
            now.points.0,
            rate(now.points.0, prev.points.0),
            now.points.1,
            rate(now.points.1, prev.points.1),
        );
        if now.frames.0 > 0 {
            line.push_str(&format!(" | frames {}/{}", now.frames.1, now.frames.0));
        }
        if now.detections.0 > 0 {
            line.push_str(&format!(
                " | detections {}/{}",
                now.detections.1, now.detections.0
            ));
        }
        let errs: Vec<String> = self
            .errors()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{} {n}", k.label()))
            .collect();
        if errs.is_empty() {
            line.push_str(" | no errors");
        } else {
            line.push_str(&format!(" | errors: {}", errs.join(", ")));
        }
        (line, now)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub points: (u64, u64, u64),
    pub frames: (u64, u64, u64),
    pub detections: (u64, u64, u64),
}

impl Snapshot {
    pub fn of(s: &Stats) -> Self {
        Self {
            points: s.points.snapshot(),
            frames: s.frames.snapshot(),
            detections: s.detections.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_by_kind_and_keeps_the_first_message() {
        let s = Stats::default();
        s.error(ErrorKind::Busy, || "503 one".into());
        s.error(ErrorKind::Busy, || "503 two".into());
        s.error(ErrorKind::Rejected, || "401".into());
        assert_eq!(s.total_errors(), 3);
        let e = s.errors();
        assert_eq!(e.iter().find(|(k, _)| *k == ErrorKind::Busy).unwrap().1, 2);
        assert_eq!(
            s.first_errors(),
            vec![
                (ErrorKind::Rejected, "401".into()),
                (ErrorKind::Busy, "503 one".into())
            ]
        );
        s.points.sent.fetch_add(10, Relaxed);
        let (line, snap) = s.progress_line(&Snapshot::default(), 2.0);
        assert!(
            line.contains("points sent 10 (5/s)") && line.contains("503 2"),
            "{line}"
        );
        assert_eq!(snap.points.0, 10);
    }
}
