//! The three ways a vehicle talks to ingest, each counting what it sends,
//! what comes back acknowledged, and every error by kind. Retry discipline is
//! that of a well-behaved vehicle (fleetctl simulate's): honour 503
//! Retry-After and resend the same body, back off on timeouts and connection
//! errors, never retry a 4xx. Resends are harmless: ingest and persistence are
//! idempotent on vehicle + time.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetwatch_proto::v1::ingest_service_client::IngestServiceClient;
use fleetwatch_proto::v1::{IngestAck, TelemetryChunk};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

// Error classification and parsing are the simulator's: one definition of
// what counts as back-pressure, a connection error or a refused request.
use fleetctl::simulate::grpc::classify;
pub use fleetctl::simulate::http::error_chain;
use fleetctl::simulate::http::retry_after;
pub use fleetctl::simulate::mqtt::parse_addr;

use crate::points::{BodyFormat, Pt, to_proto, write_body};
use crate::stats::{Counters, ErrorKind};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Other 5xx are a bug rather than load: give up after a few tries.
const MAX_SERVER_ERRORS: u32 = 5;

/// What every sender shares.
#[derive(Clone)]
pub struct Ctx {
    pub counters: Arc<Counters>,
    /// Cancels retries and in-flight waits (end of the drain phase).
    pub abort: CancellationToken,
}

impl Ctx {
    /// Sleeps before a retry; false when the run is being aborted.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.abort.cancelled() => false,
        }
    }
}

pub enum Sender {
    Http(HttpSender),
    Grpc(Box<GrpcSender>),
    Mqtt(MqttSender),
}

impl Sender {
    pub async fn send(&mut self, points: &[Pt], sent_us: i64) {
        match self {
            Self::Http(s) => s.send(points, sent_us).await,
            Self::Grpc(s) => s.send(points, sent_us).await,
            Self::Mqtt(s) => s.send(points, sent_us).await,
        }
    }

    pub async fn finish(&mut self) {
        if let Self::Grpc(s) = self {
            s.finish().await;
        }
    }
}

// ---------------------------------------------------------------- HTTP

pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()?)
}

pub struct HttpSender {
    pub client: reqwest::Client,
    pub url: Arc<str>,
    pub vehicle_id: Arc<str>,
    pub token: Arc<str>,
    pub format: BodyFormat,
    pub ctx: Ctx,
    pub buf: Vec<u8>,
}

impl HttpSender {
    async fn send(&mut self, points: &[Pt], sent_us: i64) {
        write_body(
            &mut self.buf,
            self.format,
            &self.vehicle_id,
            points,
            sent_us,
        );
        let body = Bytes::copy_from_slice(&self.buf);
        let content_type = match self.format {
            BodyFormat::Json => "application/json",
            BodyFormat::Ndjson => "application/x-ndjson",
        };
        let n = points.len() as u64;
        let c = &self.ctx.counters;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut server_errors = 0;
        loop {
            let res = self
                .client
                .post(&*self.url)
                .bearer_auth(&*self.token)
                .header(CONTENT_TYPE, content_type)
                .body(body.clone())
                .send()
                .await;
            let wait = match res {
                Ok(r) if r.status().is_success() => {
                    // Read the body so the connection goes back to the pool.
                    let _ = r.bytes().await;
                    c.acked.fetch_add(n, Relaxed);
                    c.requests.fetch_add(1, Relaxed);
                    c.round_trip(started.elapsed().as_micros() as u64);
                    return;
                }
                Ok(r)
                    if matches!(
                        r.status(),
                        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
                    ) =>
                {
                    let wait = retry_after(r.headers()).unwrap_or(backoff);
                    let status = r.status();
                    c.error(ErrorKind::Busy, || {
                        format!("{status}, retry after {wait:?}")
                    });
                    wait
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    c.error(ErrorKind::Rejected, || {
                        format!("{status}: {}", text.chars().take(300).collect::<String>())
                    });
                    c.failed.fetch_add(n, Relaxed);
                    return;
                }
                Ok(r) => {
                    let status = r.status();
                    c.error(ErrorKind::Server, || format!("{status}"));
                    server_errors += 1;
                    if server_errors >= MAX_SERVER_ERRORS {
                        c.failed.fetch_add(n, Relaxed);
                        return;
                    }
                    backoff
                }
                Err(e) => {
                    let kind = if e.is_timeout() {
                        ErrorKind::Timeout
                    } else {
                        ErrorKind::Connection
                    };
                    c.error(kind, || error_chain(&e));
                    backoff
                }
            };
            if !self.ctx.pause(wait).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

// ---------------------------------------------------------------- gRPC

/// A lazily connected channel (one HTTP/2 connection); the run spreads the
/// fleet over `--grpc-connections` of them.
pub fn grpc_channel(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("--grpc-url {url:?} is not a valid URI: {e}"))?
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

type Call = JoinHandle<Result<tonic::Response<IngestAck>, Status>>;

struct Window {
    tx: mpsc::Sender<TelemetryChunk>,
    call: Call,
    opened: Instant,
    chunks: Vec<TelemetryChunk>,
    points: u64,
}

/// A vehicle keeps one `StreamTelemetry` call open for `window`, one chunk
/// per batch, then closes it and waits for the acknowledgement (the count).
pub struct GrpcSender {
    client: IngestServiceClient<Channel>,
    vehicle_id: Arc<str>,
    auth: MetadataValue<Ascii>,
    window_len: Duration,
    timeout: Duration,
    open: Option<Window>,
    ctx: Ctx,
}

impl GrpcSender {
    pub fn new(
        channel: Channel,
        vehicle_id: Arc<str>,
        token: &str,
        window_len: Duration,
        timeout: Duration,
        ctx: Ctx,
    ) -> anyhow::Result<Self> {
        let auth = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("the token of {vehicle_id} is not valid ASCII"))?;
        Ok(Self {
            client: IngestServiceClient::new(channel),
            vehicle_id,
            auth,
            window_len,
            timeout,
            open: None,
            ctx,
        })
    }

    fn start_call(&self) -> (mpsc::Sender<TelemetryChunk>, Call) {
        let (tx, rx) = mpsc::channel(64);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("authorization", self.auth.clone());
        let mut client = self.client.clone();
        (
            tx,
            tokio::spawn(async move { client.stream_telemetry(req).await }),
        )
    }

    async fn send(&mut self, points: &[Pt], sent_us: i64) {
        let chunk = TelemetryChunk {
            points: points
                .iter()
                .map(|p| to_proto(&self.vehicle_id, p, sent_us))
                .collect(),
        };
        let mut w = match self.open.take() {
            Some(w) => w,
            None => {
                let (tx, call) = self.start_call();
                Window {
                    tx,
                    call,
                    opened: Instant::now(),
                    chunks: Vec::new(),
                    points: 0,
                }
            }
        };
        w.points += points.len() as u64;
        w.chunks.push(chunk.clone());
        // A closed channel means the server already ended the call; closing tells why.
        let ended = w.tx.send(chunk).await.is_err();
        if ended || w.opened.elapsed() >= self.window_len {
            self.close(w).await;
        } else {
            self.open = Some(w);
        }
    }

    async fn finish(&mut self) {
        if let Some(w) = self.open.take() {
            self.close(w).await;
        }
    }

    async fn close(&mut self, w: Window) {
        let c = self.ctx.counters.clone();
        let Window {
            tx,
            mut call,
            chunks,
            points,
            ..
        } = w;
        drop(tx);
        let closed = Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut server_errors = 0;
        loop {
            let result = tokio::select! {
                r = tokio::time::timeout(self.timeout, &mut call) => r,
                _ = self.ctx.abort.cancelled() => { call.abort(); return; }
            };
            let (kind, detail, wait) = match result {
                Ok(Ok(Ok(resp))) => {
                    c.acked.fetch_add(resp.into_inner().accepted, Relaxed);
                    c.requests.fetch_add(1, Relaxed);
                    c.round_trip(closed.elapsed().as_micros() as u64);
                    return;
                }
                Ok(Ok(Err(s))) => {
                    let wait = s
                        .metadata()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .map(|v| Duration::from_secs_f64(v.min(60.0)));
                    (classify(&s), format!("{}: {}", s.code(), s.message()), wait)
                }
                Ok(Err(join)) => (
                    ErrorKind::Server,
                    format!("stream task failed: {join}"),
                    None,
                ),
                Err(_) => {
                    call.abort();
                    (
                        ErrorKind::Timeout,
                        format!("no acknowledgement within {:?}", self.timeout),
                        None,
                    )
                }
            };
            c.error(kind, || format!("StreamTelemetry: {detail}"));
            match kind {
                ErrorKind::Rejected => {
                    c.failed.fetch_add(points, Relaxed);
                    return;
                }
                ErrorKind::Server => {
                    server_errors += 1;
                    if server_errors >= MAX_SERVER_ERRORS {
                        c.failed.fetch_add(points, Relaxed);
                        return;
                    }
                }
                _ => {}
            }
            if !self.ctx.pause(wait.unwrap_or(backoff)).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // Resend the whole stream, as the contract asks.
            let (tx, new_call) = self.start_call();
            for ch in &chunks {
                if tx.send(ch.clone()).await.is_err() {
                    break;
                }
            }
            drop(tx);
            call = new_call;
        }
    }
}

// ---------------------------------------------------------------- MQTT

/// One MQTT connection shared by several vehicles; each PUBACK counts as
/// `points_per_message` acknowledged points (the ingest bridge takes over
/// from the broker).
pub struct MqttConn {
    pub client: AsyncClient,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl MqttConn {
    pub fn start(addr: &str, n: usize, points_per_message: u64, ctx: Ctx) -> anyhow::Result<Self> {
        let (host, port) = parse_addr(addr)?;
        let id = format!("fleetwatch-loadtest-{:08x}-{n}", rand::random::<u32>());
        let mut opts = MqttOptions::new(id, host, port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_inflight(500)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, eventloop) = AsyncClient::new(opts, 10_000);
        let stop = CancellationToken::new();
        let task = tokio::spawn(drive(
            eventloop,
            ctx,
            stop.clone(),
            addr.to_string(),
            points_per_message,
        ));
        Ok(Self { client, task, stop })
    }

    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stop.cancelled()).await;
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn drive(
    mut eventloop: EventLoop,
    ctx: Ctx,
    stop: CancellationToken,
    addr: String,
    points_per_message: u64,
) {
    let c = ctx.counters;
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stop.cancelled() => return,
        };
        match ev {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                c.acked.fetch_add(points_per_message, Relaxed);
                c.requests.fetch_add(1, Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                stop.cancel();
                return;
            }
            Ok(_) => {}
            Err(e) => {
                c.error(ErrorKind::Connection, || {
                    format!("MQTT broker {addr}: {}", error_chain(&e))
                });
                // The next poll reconnects and resends unacknowledged publishes.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// `<topic prefix>/fleet/<id>/telemetry` at QoS 1: one JSON object per
/// message, or one array per batch.
pub struct MqttSender {
    pub client: AsyncClient,
    pub topic: String,
    pub vehicle_id: Arc<str>,
    pub ctx: Ctx,
    pub buf: Vec<u8>,
}

pub fn mqtt_topic(prefix: &str, vehicle_id: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("fleet/{vehicle_id}/telemetry")
    } else {
        format!("{prefix}/fleet/{vehicle_id}/telemetry")
    }
}

impl MqttSender {
    /// One point per message for `--batch 1`; a larger batch goes as one
    /// JSON-array message, as a vehicle buffering its samples would send it.
    async fn send(&mut self, points: &[Pt], sent_us: i64) {
        if points.len() > 1 {
            crate::points::write_body(
                &mut self.buf,
                crate::points::BodyFormat::Json,
                &self.vehicle_id,
                points,
                sent_us,
            );
            self.publish().await;
            return;
        }
        for p in points {
            self.buf.clear();
            crate::points::write_point(&mut self.buf, &self.vehicle_id, p, sent_us);
            if !self.publish().await {
                return;
            }
        }
    }

    /// Publishes `buf`; false once the run is aborted.
    async fn publish(&mut self) -> bool {
        // Waits while the client's queue is full: MQTT back-pressure slows the vehicle.
        let publish = self.client.publish(
            self.topic.as_str(),
            QoS::AtLeastOnce,
            false,
            self.buf.as_slice(),
        );
        tokio::select! {
            r = publish => {
                if let Err(e) = r {
                    self.ctx.counters.error(ErrorKind::Connection, || format!("MQTT publish: {e}"));
                    self.ctx.counters.failed.fetch_add(1, Relaxed);
                }
                true
            }
            _ = self.ctx.abort.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, RETRY_AFTER};

    #[test]
    fn retry_after_is_parsed_and_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(60)));
    }

    #[test]
    fn grpc_statuses_map_to_error_kinds() {
        assert_eq!(
            classify(&Status::unavailable("kafka pushed back")),
            ErrorKind::Busy
        );
        assert_eq!(
            classify(&Status::unavailable("tcp connect error")),
            ErrorKind::Connection
        );
        assert_eq!(classify(&Status::unauthenticated("x")), ErrorKind::Rejected);
        assert_eq!(
            classify(&Status::deadline_exceeded("x")),
            ErrorKind::Timeout
        );
        assert_eq!(classify(&Status::internal("x")), ErrorKind::Server);
    }

    #[test]
    fn mqtt_topics_and_addresses() {
        assert_eq!(mqtt_topic("", "v1"), "fleet/v1/telemetry");
        assert_eq!(mqtt_topic("lt/", "v1"), "lt/fleet/v1/telemetry");
        assert_eq!(
            parse_addr("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".to_string(), 1883)
        );
        assert!(parse_addr("nope").is_err());
    }
}
