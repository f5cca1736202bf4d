//! What the latency benchmarks (`harness = false`) share.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::OwnedBroker;

/// `cargo bench` passes `--bench`; `cargo test --benches` runs the bench
/// binaries without it, and they must then do nothing.
pub fn invoked_as_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A numeric setting from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The broker a bench runs against: a fresh Kafka broker of its own, or
/// `BENCH_BOOTSTRAP` (e.g. a cluster). Fresh, so that one run's topics
/// and groups do not weigh on the next.
pub struct BenchBroker {
    pub bootstrap: String,
    _owned: Option<OwnedBroker>,
}

impl BenchBroker {
    pub async fn start() -> Self {
        match std::env::var("BENCH_BOOTSTRAP") {
            Ok(bootstrap) => Self {
                bootstrap,
                _owned: None,
            },
            Err(_) => {
                let owned = OwnedBroker::start().await;
                Self {
                    bootstrap: owned.bootstrap(),
                    _owned: Some(owned),
                }
            }
        }
    }
}

/// The `p` quantile (0..=1) of `sorted` in milliseconds (NaN if empty).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(f64::NAN)
}
