//! gRPC delivery: each vehicle keeps a `StreamTelemetry` call open for a
//! window (`--stream-window`), sending one chunk per batch, then closes it and
//! waits for the acknowledgement. A failed stream is resent whole, as the
//! contract asks (ingest is idempotent on vehicle + timestamp).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use fleetwatch_proto::v1::ingest_service_client::IngestServiceClient;
use fleetwatch_proto::v1::{IngestAck, TelemetryChunk};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::http::{Delivery, Outcome};
use super::point::Point;
use super::stats::{ErrorKind, Flow, Stats};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MAX_SERVER_ERRORS: u32 = 5;

/// One channel (HTTP/2 connection) shared by every simulated vehicle.
pub fn channel(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("--grpc-url {url:?} is not a valid URI: {e}"))?
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .tcp_nodelay(true);
    // Lazy: a simulator started before ingest should count connection errors
    // and keep trying, not exit.
    Ok(endpoint.connect_lazy())
}

struct Window {
    tx: mpsc::Sender<TelemetryChunk>,
    call: JoinHandle<Result<tonic::Response<IngestAck>, Status>>,
    opened: Instant,
    points: Vec<Point>,
}

enum CallError {
    Status(Status),
    Timeout,
}

pub struct GrpcTelemetry {
    client: IngestServiceClient<Channel>,
    vehicle_id: Arc<str>,
    auth: MetadataValue<tonic::metadata::Ascii>,
    window: Option<Window>,
    window_len: Duration,
    timeout: Duration,
    chunk: usize,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

impl GrpcTelemetry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channel: Channel,
        vehicle_id: Arc<str>,
        token: &str,
        window_len: Duration,
        timeout: Duration,
        chunk: usize,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let auth = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("the token of {vehicle_id} is not valid ASCII"))?;
        Ok(Self {
            client: IngestServiceClient::new(channel),
            vehicle_id,
            auth,
            window: None,
            window_len,
            timeout,
            chunk: chunk.max(1),
            stats,
            shutdown,
        })
    }

    fn open(&self) -> Window {
        let (tx, rx) = mpsc::channel(64);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("authorization", self.auth.clone());
        let mut client = self.client.clone();
        let call = tokio::spawn(async move { client.stream_telemetry(req).await });
        Window {
            tx,
            call,
            opened: Instant::now(),
            points: Vec::new(),
        }
    }

    fn chunk_of(&self, points: &[Point]) -> TelemetryChunk {
        TelemetryChunk {
            points: points
                .iter()
                .map(|p| p.to_proto(&self.vehicle_id))
                .collect(),
        }
    }

    /// Sends one batch as a chunk of the open stream; closes the stream when its window is over.
    pub async fn send(&mut self, points: &[Point], flow: &Flow) -> Delivery {
        let chunk = self.chunk_of(points);
        let mut w = match self.window.take() {
            Some(w) => w,
            None => self.open(),
        };
        w.points.extend_from_slice(points);
        // A closed channel means the server already ended the call (an error):
        // closing collects it and resends.
        let ended = w.tx.send(chunk).await.is_err();
        if ended || w.opened.elapsed() >= self.window_len {
            return self.close(w, flow).await;
        }
        self.window = Some(w);
        Delivery {
            outcome: Outcome::Acked,
            backed_off: false,
        }
    }

    /// Closes the open stream (end of the run) and waits for its acknowledgement.
    pub async fn finish(&mut self, flow: &Flow) -> Delivery {
        match self.window.take() {
            Some(w) => self.close(w, flow).await,
            None => Delivery {
                outcome: Outcome::Acked,
                backed_off: false,
            },
        }
    }

    async fn await_call(&self, w: Window) -> Result<u64, CallError> {
        drop(w.tx);
        let mut call = w.call;
        match tokio::time::timeout(self.timeout, &mut call).await {
            Ok(Ok(Ok(resp))) => Ok(resp.into_inner().accepted),
            Ok(Ok(Err(status))) => Err(CallError::Status(status)),
            Ok(Err(join)) => Err(CallError::Status(Status::internal(format!(
                "stream task failed: {join}"
            )))),
            Err(_) => {
                call.abort();
                Err(CallError::Timeout)
            }
        }
    }

    async fn close(&mut self, w: Window, flow: &Flow) -> Delivery {
        let points = w.points.clone();
        let n = points.len() as u64;
        let mut result = self.await_call(w).await;
        let mut backoff = Duration::from_millis(200);
        let mut backed_off = false;
        let mut server_errors = 0;
        loop {
            let err = match result {
                Ok(accepted) => {
                    flow.acked.fetch_add(accepted, Relaxed);
                    return Delivery {
                        outcome: Outcome::Acked,
                        backed_off,
                    };
                }
                Err(e) => e,
            };
            let (kind, detail, wait) = match &err {
                CallError::Timeout => (
                    ErrorKind::Timeout,
                    format!("no acknowledgement within {:?}", self.timeout),
                    None,
                ),
                CallError::Status(s) => {
                    let wait = s
                        .metadata()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .map(|v| Duration::from_secs_f64(v.min(60.0)));
                    (classify(s), format!("{}: {}", s.code(), s.message()), wait)
                }
            };
            self.stats.error(kind, || {
                format!("gRPC StreamTelemetry of {}: {detail}", self.vehicle_id)
            });
            match kind {
                ErrorKind::Rejected => {
                    flow.failed.fetch_add(n, Relaxed);
                    return Delivery {
                        outcome: Outcome::Failed,
                        backed_off,
                    };
                }
                ErrorKind::Server => {
                    server_errors += 1;
                    if server_errors >= MAX_SERVER_ERRORS {
                        flow.failed.fetch_add(n, Relaxed);
                        return Delivery {
                            outcome: Outcome::Failed,
                            backed_off,
                        };
                    }
                }
                _ => {}
            }
            backed_off = true;
            tokio::select! {
                _ = tokio::time::sleep(wait.unwrap_or(backoff)) => {}
                _ = self.shutdown.cancelled() => return Delivery { outcome: Outcome::Cancelled, backed_off },
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // Resend the whole stream.
            let w = self.open();
            for part in points.chunks(self.chunk) {
                // The server ended the call early; awaiting it tells why.
                if w.tx.send(self.chunk_of(part)).await.is_err() {
                    break;
                }
            }
            result = self.await_call(w).await;
        }
    }
}

/// How a failed call counts: back-pressure, connection, request error...
pub fn classify(s: &Status) -> ErrorKind {
    match s.code() {
        Code::Unavailable => {
            // tonic reports a refused or broken connection as UNAVAILABLE too.
            let m = s.message().to_ascii_lowercase();
            if m.contains("transport") || m.contains("connect") || m.contains("broken pipe") {
                ErrorKind::Connection
            } else {
                ErrorKind::Busy
            }
        }
        Code::ResourceExhausted => ErrorKind::Busy,
        Code::DeadlineExceeded => ErrorKind::Timeout,
        Code::Cancelled => ErrorKind::Connection,
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::AlreadyExists
        | Code::Unimplemented => ErrorKind::Rejected,
        _ => ErrorKind::Server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_error_kinds() {
        assert_eq!(
            classify(&Status::unavailable("ingest is busy")),
            ErrorKind::Busy
        );
        assert_eq!(
            classify(&Status::unavailable(
                "error trying to connect: tcp connect error"
            )),
            ErrorKind::Connection
        );
        assert_eq!(
            classify(&Status::resource_exhausted("queue full")),
            ErrorKind::Busy
        );
        assert_eq!(
            classify(&Status::unauthenticated("bad token")),
            ErrorKind::Rejected
        );
        assert_eq!(
            classify(&Status::invalid_argument("bad point")),
            ErrorKind::Rejected
        );
        assert_eq!(
            classify(&Status::deadline_exceeded("slow")),
            ErrorKind::Timeout
        );
        assert_eq!(classify(&Status::internal("bug")), ErrorKind::Server);
    }
}
