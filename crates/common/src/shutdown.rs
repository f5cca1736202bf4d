//! Graceful shutdown: one token every task watches.

use tokio_util::sync::CancellationToken;

/// Cancelled once the process should stop taking work. Cheap to clone; tests
/// cancel it by hand instead of sending signals.
pub type Shutdown = CancellationToken;

/// Returns a token cancelled on SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signal() -> Shutdown {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                    let _ = ctrl_c.await;
                    t.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}
