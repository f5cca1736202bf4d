//! Graceful shutdown: one token every task watches.

use tokio_util::sync::CancellationToken;

/// Cancelled once the process should stop taking work. Cheap to clone; tests
/// cancel it by hand instead of sending signals.
pub type Shutdown = CancellationToken;

/// Returns a token cancelled on SIGTERM or SIGINT (Ctrl-C). A second signal
/// exits at once with 128 + its number, without draining: an operator who
/// asks twice wants the process gone, not a politer wait.
pub fn shutdown_on_signal() -> Shutdown {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (mut term, mut int) = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => (term, int),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; only Ctrl-C stops the service");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
            let mut next = async || -> i32 {
                tokio::select! {
                    _ = term.recv() => 15,
                    _ = int.recv() => 2,
                }
            };
            next().await;
            tracing::info!("shutdown requested");
            t.cancel();
            let signo = next().await;
            tracing::warn!("second signal; exiting without draining");
            eprintln!("second signal: exiting without draining");
            std::process::exit(128 + signo);
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown requested");
            t.cancel();
        }
    });
    token
}
