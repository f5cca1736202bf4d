//! Service binaries run as processes, as Kubernetes runs them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built by `cargo build` (scripts/test builds
/// them before running tests).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let profile = std::env::var("FLEETWATCH_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = dir.join(profile).join(name);
    assert!(
        p.is_file(),
        "{} is not built; run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A running service binary, killed when dropped.
pub struct ServiceProcess {
    pub name: String,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Spawns `binary` with env overrides; its output goes to the test's.
    pub fn spawn(binary_name: &str, env: &[(String, String)]) -> Self {
        let mut cmd = Command::new(binary(binary_name));
        // fleetwatch-ingest reads FLEETWATCH_INGEST__..., and so on.
        let service = binary_name.trim_start_matches("fleetwatch-").to_uppercase();
        cmd.stdin(Stdio::null())
            .env(format!("FLEETWATCH_{service}__LOG__FORMAT"), "pretty");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Self {
            name: binary_name.into(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILL: no chance to commit or flush, like a crashed pod.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not stop within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit on its own; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Stops a service started in-process (`start(config, shutdown)`): cancels
/// `shutdown` and waits for its supervisor, which must drain cleanly within
/// 30 s (a drain error or a task that failed fails the test).
pub async fn stop_service(
    shutdown: &fleetwatch_common::Shutdown,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the service did not stop within 30 s")
        .expect("the service task panicked")
        .expect("the service's drain failed");
}

/// Produces `message` (a v1 protobuf value) to `topic` keyed `key`, with the
/// message-type header, as a service would; panics if Kafka refuses it.
pub async fn send_proto<M: prost::Message>(
    producer: &fleetwatch_kafka::Producer,
    topic: &str,
    key: &str,
    message: &M,
    message_type: &str,
) {
    producer
        .send(fleetwatch_kafka::OutRecord {
            topic,
            key,
            payload: &message.encode_to_vec(),
            message_type,
            traceparent: None,
            extra_headers: &[],
        })
        .await
        .unwrap();
}
