//! Test-only helpers shared by every crate's integration tests: the real
//! broker (shared, or one a test owns and can kill), a fresh migrated
//! database per test, per-test topic names, service processes, and waiting
//! on a condition with a deadline instead of sleeping.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use rand::Rng;

pub mod bench;
mod broker;
mod config;
mod db;
pub mod mqtt;
mod process;
mod proxy;
mod read;
pub mod s3;

pub use broker::*;
pub use config::*;
pub use db::*;
pub use process::*;
pub use proxy::*;
pub use read::*;

/// A short random suffix for names that must not collide between tests.
pub fn unique_suffix() -> String {
    let n: u64 = rand::thread_rng().r#gen();
    format!("t{:012x}", n & 0xffff_ffff_ffff)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some`, failing the test with `what`
/// after `timeout`. Use this instead of sleeps.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` for `period` and fails the test with `what` the first time
/// it is false: "it stays so", the negative counterpart of [`wait_for`],
/// instead of a sleep followed by one look.
pub async fn stays_for<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + period;
    loop {
        assert!(check().await, "stopped being so within {period:?}: {what}");
        if Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin server's `/metrics` text.
pub async fn scrape_metrics(admin: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of the samples of `name` whose labels contain `labels` (e.g.
/// `kind="telemetry"`), or 0 when there are none.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
