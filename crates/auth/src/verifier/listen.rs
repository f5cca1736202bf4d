//! The invalidation listener: one LISTEN connection per process on
//! [`NOTIFY_CHANNEL`]. Caches are used only while it is connected; each
//! (re)connect starts from empty caches, since notifications sent while it
//! was away are lost. A heartbeat on the same connection notices a silently
//! dead link, which would otherwise leave stale entries trusted.

use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetwatch_common::Shutdown;
use rand::Rng;
use sqlx::postgres::PgListener;

use super::Verifier;
use crate::store::NOTIFY_CHANNEL;

const HEARTBEAT: Duration = Duration::from_secs(15);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Verifier {
    /// Runs until `stop`: keeps the LISTEN connection up and applies every
    /// notification to the caches. Spawn it once per process, e.g.
    /// `sup.spawn(Stage::Servers, "auth invalidation", |stop| verifier.clone().listen(stop))`.
    pub async fn listen(self, stop: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let connect = async {
                let mut l = PgListener::connect_with(&self.inner.pool).await?;
                l.listen(NOTIFY_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let listener = tokio::select! {
                _ = stop.cancelled() => return,
                r = connect => r,
            };
            let mut listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for identity changes; verifying against the database");
                    // Full jitter, so replicas do not reconnect in step.
                    let wait = rand::thread_rng().gen_range(Duration::ZERO..=backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            backoff = Duration::from_millis(100);
            self.set_listening(true);
            tracing::debug!("listening for identity changes");
            let lost = self.apply(&mut listener, &stop).await;
            self.set_listening(false);
            match lost {
                None => return,
                Some(reason) => {
                    crate::metrics::LISTENER_RECONNECTS.inc();
                    tracing::warn!(reason, "identity change listener lost; reconnecting");
                }
            }
        }
    }

    /// Applies notifications until `stop` (`None`) or the connection fails
    /// (`Some(reason)`).
    async fn apply(&self, listener: &mut PgListener, stop: &Shutdown) -> Option<String> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        self.caches().invalidate(n.payload());
                        self.inner.invalidations.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::INVALIDATIONS.inc();
                    }
                    Ok(None) => return Some("connection closed".into()),
                    Err(e) => return Some(e.to_string()),
                },
                _ = heartbeat.tick() => {
                    let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                    match tokio::time::timeout(HEARTBEAT_TIMEOUT, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Some(e.to_string()),
                        Err(_) => return Some("heartbeat timed out".into()),
                    }
                }
            }
        }
    }

    fn set_listening(&self, listening: bool) {
        self.caches().set_listening(listening);
        self.inner.listening.send_replace(listening);
    }
}
