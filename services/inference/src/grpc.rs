//! `InferenceService`: synchronous `Detect` on one frame through the same
//! pipeline as the Kafka consumer, and `GetModel`.

use std::sync::Arc;

use fleetwatch_common::error::{ApiError, ErrorCode};
use fleetwatch_kafka::{OutRecord, Producer};
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::inference_service_server::InferenceService;
use fleetwatch_proto::v1::{DetectRequest, DetectResponse, GetModelRequest, ModelStatus};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::consumer::detection_batch;
use crate::pipeline::{DetectError, Pipeline, WhenFull};
use crate::preprocess;

pub struct GrpcApi {
    pub pipeline: Arc<Pipeline>,
    pub producer: Producer,
    pub detections_topic: String,
}

impl GrpcApi {
    async fn detect_inner(&self, req: DetectRequest) -> Result<DetectResponse, ApiError> {
        preprocess::check_content_type(&req.content_type)
            .map_err(|e| ApiError::invalid_argument(format!("content_type: {e}")))?;
        if !req.vehicle_id.is_empty() && !fleetwatch_proto::valid_vehicle_id(&req.vehicle_id) {
            return Err(ApiError::invalid_argument(format!(
                "vehicle_id: {:?} is not a valid vehicle id",
                req.vehicle_id
            )));
        }
        if req.publish && req.vehicle_id.is_empty() {
            return Err(ApiError::invalid_argument(
                "vehicle_id: required when publish is set",
            ));
        }
        if req.time_unix_us < 0 {
            return Err(ApiError::invalid_argument(
                "time_unix_us: must not be negative",
            ));
        }
        let time = if req.time_unix_us == 0 {
            fleetwatch_common::now_unix_us()
        } else {
            req.time_unix_us
        };
        let detected = self
            .pipeline
            .detect(req.image, WhenFull::Refuse)
            .await
            .map_err(|e| match e {
                DetectError::Frame(e) => ApiError::invalid_argument(format!("image: {e}")),
                DetectError::Busy => ApiError::new(
                    ErrorCode::ResourceExhausted,
                    "the inference queue is full; retry later",
                ),
                DetectError::Model(e) => ApiError::unavailable(e.to_string()),
                DetectError::Closed => ApiError::unavailable("the service is shutting down"),
            })?;
        let batch = detection_batch(
            &req.vehicle_id,
            time,
            &req.frame_id,
            &req.content_type,
            fleetwatch_common::now_unix_us(),
            &detected,
        );
        if req.publish {
            let payload = batch.encode_to_vec();
            self.producer
                .send(OutRecord {
                    topic: &self.detections_topic,
                    key: &req.vehicle_id,
                    payload: &payload,
                    message_type: message_types::DETECTION_BATCH,
                    traceparent: None,
                    extra_headers: &[],
                })
                .await
                .map_err(|e| {
                    if e.is_retryable() {
                        ApiError::unavailable(format!("detections not acknowledged by Kafka: {e}"))
                    } else {
                        ApiError::internal(format!("detections cannot be produced: {e}"))
                    }
                })?;
        }
        Ok(DetectResponse {
            batch: Some(batch),
            width: detected.width,
            height: detected.height,
        })
    }
}

#[tonic::async_trait]
impl InferenceService for GrpcApi {
    async fn detect(
        &self,
        request: Request<DetectRequest>,
    ) -> Result<Response<DetectResponse>, Status> {
        let r = self.detect_inner(request.into_inner()).await;
        r.map(Response::new).map_err(Status::from)
    }

    async fn get_model(
        &self,
        _request: Request<GetModelRequest>,
    ) -> Result<Response<ModelStatus>, Status> {
        let m = self.pipeline.model();
        let status = ModelStatus {
            name: m.name.clone(),
            version: m.version.clone(),
            runtime: m.runtime_kind.as_str().into(),
            input_width: m.info.width as u32,
            input_height: m.info.height as u32,
            class_names: m.info.names.clone(),
            loaded_unix_us: m.loaded_unix_us,
        };
        Ok(Response::new(status))
    }
}
