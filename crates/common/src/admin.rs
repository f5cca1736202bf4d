//! The admin server every service runs: `/metrics` (Prometheus text),
//! `/healthz` (process is alive) and `/readyz` (dependencies are reachable).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::Shutdown;

/// The `[admin]` section of every service config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    /// Services override the port with their own (9601 ingest, 9602 persistence, ...).
    fn default() -> Self {
        Self::on_port(9600)
    }
}

impl AdminConfig {
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], port)),
        }
    }
}

/// Whether the service should get work: every part is ready and the drain
/// has not begun. Parts are the service itself (set by the supervisor once
/// every task runs) and each dependency (`part("database")`), each written by
/// its own watcher, so one watcher's "ok" never hides another's outage.
/// Once the drain starts it stays not-ready, whatever a watcher still writes,
/// so load balancers stop sending work.
#[derive(Clone)]
pub struct Readiness {
    shared: Arc<Shared>,
    /// Which part this handle writes; `None` for the service's own part.
    part: Option<usize>,
}

struct Shared {
    draining: AtomicBool,
    /// The service's own part first, then dependencies in registration order.
    parts: Mutex<Vec<(&'static str, bool)>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                draining: AtomicBool::new(false),
                parts: Mutex::new(vec![("service", false)]),
            }),
            part: None,
        }
    }
}

impl Readiness {
    fn parts(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, bool)>> {
        // A poisoned lock still holds valid booleans.
        self.shared.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle for one dependency, not ready until its watcher says so.
    pub fn part(&self, name: &'static str) -> Readiness {
        let mut parts = self.parts();
        parts.push((name, false));
        Readiness {
            shared: self.shared.clone(),
            part: Some(parts.len() - 1),
        }
    }

    /// Sets this handle's part.
    pub fn set(&self, ready: bool) {
        self.parts()[self.part.unwrap_or(0)].1 = ready;
    }

    /// For the service's handle: whether the whole service is ready. For a
    /// part's handle: whether that part is (what its watcher last set).
    pub fn is_ready(&self) -> bool {
        let parts = self.parts();
        match self.part {
            Some(i) => parts[i].1,
            None => !self.is_draining() && parts.iter().all(|(_, ready)| *ready),
        }
    }

    /// The parts not ready, by name (empty when ready, `draining` while stopping).
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .parts()
            .iter()
            .filter(|(_, ready)| !ready)
            .map(|(name, _)| *name)
            .collect();
        if self.is_draining() {
            names.insert(0, "draining");
        }
        names
    }

    /// Not ready from now on: the service is stopping.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }
}

pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn metrics() -> impl IntoResponse {
    let mut buf = Vec::new();
    let families = prometheus::gather();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(r): State<Readiness>) -> impl IntoResponse {
    if r.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Binds the admin server; it stops when `shutdown` is cancelled.
pub async fn serve(
    config: &AdminConfig,
    readiness: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind admin server on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, router(readiness))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "admin server stopped");
        }
    });
    Ok((addr, handle))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_ready_and_metrics() {
        let readiness = Readiness::default();
        let shutdown = Shutdown::new();
        let cfg = AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        let (addr, handle) = serve(&cfg, readiness.clone(), shutdown.clone())
            .await
            .unwrap();
        let base = format!("http://{addr}");
        let get = |p: &str| reqwest::get(format!("{base}{p}"));
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        readiness.set(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let db = readiness.part("database");
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        db.set(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        readiness.drain();
        db.set(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        assert_eq!(readiness.not_ready(), vec!["draining"]);
        let m = get("/metrics").await.unwrap();
        assert_eq!(m.status(), 200);
        shutdown.cancel();
        handle.await.unwrap();
    }
}
