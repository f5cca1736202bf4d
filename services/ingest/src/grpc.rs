//! The vehicle-facing gRPC API (`fleetwatch.v1.IngestService`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fleetwatch_kafka::ProduceError;
use fleetwatch_proto::v1::ingest_service_server::IngestService;
use fleetwatch_proto::v1::{DetectionBatch, Frame, IngestAck, TelemetryChunk};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::App;
use crate::error::IngestError;
use crate::metrics;
use crate::parse::{self, Clock};

/// Chunks of one stream being produced at once; beyond it the stream is
/// not read further, so a fast client feels Kafka's pace through HTTP/2
/// flow control.
const MAX_CHUNKS_IN_FLIGHT: usize = 32;

type ChunkSend = Pin<Box<dyn Future<Output = Result<usize, ProduceError>> + Send>>;

pub struct GrpcApi {
    app: Arc<App>,
}

impl GrpcApi {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

/// Runs one call inside a span (child of the caller's `traceparent`), counts a
/// rejection by its reason and maps the error; the request itself is counted
/// by the server's shared layer.
async fn call<T>(
    method: &'static str,
    metadata: &MetadataMap,
    f: impl Future<Output = Result<T, IngestError>>,
) -> Result<Response<T>, Status> {
    let span = tracing::info_span!("grpc_request", method);
    if let Some(tp) = metadata.get("traceparent").and_then(|v| v.to_str().ok()) {
        fleetwatch_common::telemetry::set_remote_parent(&span, tp);
    }
    let r = f.instrument(span).await;
    if let Err(e) = &r {
        metrics::REJECTIONS
            .with_label_values(&["grpc", e.code()])
            .inc();
    }
    r.map(Response::new).map_err(Status::from)
}

fn authorization(metadata: &MetadataMap) -> Option<&str> {
    metadata.get("authorization").and_then(|v| v.to_str().ok())
}

impl GrpcApi {
    async fn stream(
        &self,
        vehicle_auth: Option<String>,
        mut stream: Streaming<TelemetryChunk>,
    ) -> Result<IngestAck, IngestError> {
        let app = &self.app;
        let vehicle = app.auth.authenticate(vehicle_auth.as_deref()).await?;
        let retry_after = app.sink.retry_after_secs();
        let mut in_flight: FuturesUnordered<ChunkSend> = FuturesUnordered::new();
        let mut accepted = 0usize;
        let mut chunk_no = 0usize;
        loop {
            tokio::select! {
                biased;
                Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                    accepted += r.map_err(|e| IngestError::from_produce(e, retry_after))?;
                }
                msg = stream.message(), if in_flight.len() < MAX_CHUNKS_IN_FLIGHT => match msg {
                    Ok(Some(chunk)) => {
                        let mut points = chunk.points;
                        let clock = Clock::new(&app.limits, fleetwatch_common::now_unix_us());
                        parse::check_proto_points(&mut points, &format!("chunk[{chunk_no}]."), &vehicle, &app.limits, &clock)?;
                        chunk_no += 1;
                        if points.is_empty() {
                            continue;
                        }
                        let batches = app.sink.telemetry_batches(&vehicle, points, "grpc", clock.now_us);
                        in_flight.push(Box::pin(app.sink.start_telemetry(batches)));
                    }
                    Ok(None) => break,
                    Err(s) => {
                        return Err(IngestError::Malformed { code: "stream_error", message: format!("reading the stream failed: {}", s.message()) });
                    }
                },
            }
        }
        while let Some(r) = in_flight.next().await {
            accepted += r.map_err(|e| IngestError::from_produce(e, retry_after))?;
        }
        metrics::POINTS_ACCEPTED
            .with_label_values(&["grpc"])
            .inc_by(accepted as u64);
        Ok(IngestAck {
            accepted: accepted as u64,
        })
    }

    async fn detections(
        &self,
        auth: Option<String>,
        mut batch: DetectionBatch,
    ) -> Result<IngestAck, IngestError> {
        let app = &self.app;
        let vehicle = app.auth.authenticate(auth.as_deref()).await?;
        let clock = Clock::new(&app.limits, fleetwatch_common::now_unix_us());
        parse::check_proto_detections(&mut batch, &vehicle, &app.limits, &clock)?;
        app.sink.send_detections(&batch, "grpc").await?;
        Ok(IngestAck {
            accepted: batch.detections.len() as u64,
        })
    }

    async fn frame(
        &self,
        auth: Option<String>,
        mut frame: Frame,
    ) -> Result<IngestAck, IngestError> {
        let app = &self.app;
        let vehicle = app.auth.authenticate(auth.as_deref()).await?;
        if !frame.vehicle_id.is_empty() && frame.vehicle_id != vehicle {
            return Err(IngestError::Forbidden(crate::error::FieldError::new(
                "vehicle_id",
                format!(
                    "names vehicle {:?}, but the credentials belong to {vehicle:?}",
                    frame.vehicle_id
                ),
            )));
        }
        if !frame.content_type.is_empty() && !frame.content_type.eq_ignore_ascii_case("image/jpeg")
        {
            return Err(IngestError::UnsupportedMediaType(format!(
                "content_type {:?} is not accepted; only image/jpeg",
                frame.content_type
            )));
        }
        let clock = Clock::new(&app.limits, fleetwatch_common::now_unix_us());
        let (w, h) = parse::jpeg_dimensions(&frame.data, app.limits.max_frame_bytes)?;
        let t = if frame.time_unix_us == 0 {
            clock.now_us
        } else {
            frame.time_unix_us
        };
        frame.time_unix_us = parse::check_frame_time(t, &clock)?;
        frame.vehicle_id = vehicle;
        frame.content_type = "image/jpeg".into();
        frame.width = w;
        frame.height = h;
        frame.received_unix_us = clock.now_us;
        app.sink.send_frame(&frame, "grpc").await?;
        Ok(IngestAck { accepted: 1 })
    }
}

#[tonic::async_trait]
impl IngestService for GrpcApi {
    async fn stream_telemetry(
        &self,
        request: Request<Streaming<TelemetryChunk>>,
    ) -> Result<Response<IngestAck>, Status> {
        let md = request.metadata().clone();
        let auth = authorization(&md).map(str::to_string);
        call(
            "StreamTelemetry",
            &md,
            self.stream(auth, request.into_inner()),
        )
        .await
    }

    async fn send_detections(
        &self,
        request: Request<DetectionBatch>,
    ) -> Result<Response<IngestAck>, Status> {
        let md = request.metadata().clone();
        let auth = authorization(&md).map(str::to_string);
        call(
            "SendDetections",
            &md,
            self.detections(auth, request.into_inner()),
        )
        .await
    }

    async fn send_frame(&self, request: Request<Frame>) -> Result<Response<IngestAck>, Status> {
        let md = request.metadata().clone();
        let auth = authorization(&md).map(str::to_string);
        call("SendFrame", &md, self.frame(auth, request.into_inner())).await
    }
}
