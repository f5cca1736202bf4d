//! HTTP delivery: telemetry (one object or a JSON array per request), frames
//! and detections, with the retry discipline every vehicle should follow:
//! honour 503 `Retry-After` and resend the same body (ingest is idempotent on
//! vehicle + timestamp), back off on timeouts and connection errors, and
//! never retry a 4xx.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use tokio_util::sync::CancellationToken;

use super::point::{Point, write_json_body};
use super::stats::{ErrorKind, Flow, Stats};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Other 5xx are likely a server bug rather than load: give up after a few tries.
const MAX_SERVER_ERRORS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    Failed,
    Cancelled,
}

/// What happened to one request, and whether the caller should slow down.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub outcome: Outcome,
    pub backed_off: bool,
}

pub struct HttpClient {
    client: reqwest::Client,
    base: String,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

#[derive(serde::Deserialize)]
struct Accepted {
    accepted: u64,
}

impl HttpClient {
    pub fn new(
        base: &str,
        timeout: Duration,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "--ingest-url {base:?} must start with http:// or https://"
        );
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            base,
            stats,
            shutdown,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` until it is acknowledged, rejected, or the run stops.
    /// `items` is how many points/frames/detections the body carries.
    pub async fn post(
        &self,
        url: &str,
        token: &str,
        content_type: &'static str,
        body: Bytes,
        items: u64,
        flow: &Flow,
    ) -> Delivery {
        let mut backoff = Duration::from_millis(200);
        let mut backed_off = false;
        let mut server_errors = 0;
        loop {
            let res = self
                .client
                .post(url)
                .bearer_auth(token)
                .header(CONTENT_TYPE, content_type)
                .body(body.clone())
                .send()
                .await;
            let wait = match res {
                Ok(r) if r.status().is_success() => {
                    // The count ingest reports wins: it is what became durable.
                    let n = r
                        .json::<Accepted>()
                        .await
                        .map(|a| a.accepted)
                        .unwrap_or(items);
                    flow.acked
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    return Delivery {
                        outcome: Outcome::Acked,
                        backed_off,
                    };
                }
                Ok(r)
                    if matches!(
                        r.status(),
                        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
                    ) =>
                {
                    let wait = retry_after(r.headers()).unwrap_or(backoff);
                    let status = r.status();
                    self.stats.error(ErrorKind::Busy, || {
                        format!("{status} from {url}, retry after {wait:?}")
                    });
                    wait
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    self.stats.error(ErrorKind::Rejected, || {
                        let hint = if status == StatusCode::UNAUTHORIZED {
                            " (is the vehicle registered and its token current? rerun with --register)"
                        } else {
                            ""
                        };
                        format!("{status} from {url}: {}{hint}", truncate(&text, 300))
                    });
                    flow.failed
                        .fetch_add(items, std::sync::atomic::Ordering::Relaxed);
                    return Delivery {
                        outcome: Outcome::Failed,
                        backed_off,
                    };
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    self.stats.error(ErrorKind::Server, || {
                        format!("{status} from {url}: {}", truncate(&text, 300))
                    });
                    server_errors += 1;
                    if server_errors >= MAX_SERVER_ERRORS {
                        flow.failed
                            .fetch_add(items, std::sync::atomic::Ordering::Relaxed);
                        return Delivery {
                            outcome: Outcome::Failed,
                            backed_off,
                        };
                    }
                    backoff
                }
                Err(e) => {
                    let kind = if e.is_timeout() {
                        ErrorKind::Timeout
                    } else {
                        ErrorKind::Connection
                    };
                    self.stats
                        .error(kind, || format!("{url}: {}", error_chain(&e)));
                    backoff
                }
            };
            backed_off = true;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return Delivery { outcome: Outcome::Cancelled, backed_off },
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by ingest), capped.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: f64 = h.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(60.0)))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An error with its causes, `a: b: c` (reqwest's Display hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Telemetry of one vehicle over HTTP; reuses its body buffer.
pub struct HttpTelemetry {
    http: Arc<HttpClient>,
    url: Arc<str>,
    vehicle_id: Arc<str>,
    token: Arc<str>,
    buf: Vec<u8>,
}

impl HttpTelemetry {
    pub fn new(
        http: Arc<HttpClient>,
        url: Arc<str>,
        vehicle_id: Arc<str>,
        token: Arc<str>,
    ) -> Self {
        Self {
            http,
            url,
            vehicle_id,
            token,
            buf: Vec::with_capacity(4096),
        }
    }

    pub async fn send(&mut self, points: &[Point], flow: &Flow) -> Delivery {
        write_json_body(&self.vehicle_id, points, &mut self.buf);
        let body = Bytes::copy_from_slice(&self.buf);
        self.http
            .post(
                &self.url,
                &self.token,
                "application/json",
                body,
                points.len() as u64,
                flow,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_parsed_and_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, "0.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert(RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(60)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
