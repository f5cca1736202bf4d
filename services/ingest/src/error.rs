//! The one error type of the request paths. Each kind names its row of the
//! shared error table (`fleetwatch_common::error`), which alone decides the
//! HTTP status, gRPC code and body, so HTTP, gRPC and MQTT agree on what went
//! wrong.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleetwatch_common::error::{ApiError, ErrorCode};
use fleetwatch_kafka::ProduceError;

pub use fleetwatch_common::error::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Missing, malformed or unknown bearer token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The data names another vehicle than the token's.
    #[error("{0}")]
    Forbidden(FieldError),
    /// Not parseable at all (JSON syntax, wrong top-level shape).
    #[error("{message}")]
    Malformed { code: &'static str, message: String },
    /// Parseable but fails validation; every offending field is listed.
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        details: Vec<FieldError>,
    },
    /// Body, frame or point count above the configured limit.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotFound(String),
    /// Kafka or a dependency pushes back; the caller retries after `retry_after_secs`.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Internal(String),
}

impl IngestError {
    pub fn invalid(code: &'static str, details: Vec<FieldError>) -> Self {
        let message = match details.as_slice() {
            [one] => format!("{}: {}", one.field, one.reason),
            many => format!(
                "{} invalid fields, first {}: {}",
                many.len(),
                many[0].field,
                many[0].reason
            ),
        };
        Self::Invalid {
            code,
            message,
            details,
        }
    }

    pub fn from_produce(e: ProduceError, retry_after_secs: u64) -> Self {
        if e.is_retryable() {
            Self::Unavailable {
                reason: format!("kafka is not accepting records: {e}"),
                retry_after_secs,
            }
        } else if let ProduceError::TooLarge { .. } = e {
            Self::TooLarge(e.to_string())
        } else {
            Self::Internal(format!("producing failed: {e}"))
        }
    }

    /// The row of the shared error table this kind answers with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::Malformed { .. } | Self::Invalid { .. } => ErrorCode::InvalidArgument,
            Self::TooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Unavailable { .. } => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Machine-readable code; also the bounded `reason` label of the rejection metric.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { code, .. } | Self::Invalid { code, .. } => code,
            _ => self.error_code().label(),
        }
    }

    pub fn http_status(&self) -> StatusCode {
        self.error_code().http_status()
    }

    pub fn grpc_code(&self) -> tonic::Code {
        self.error_code().grpc_code()
    }

    /// Whether sending the same data again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    fn details(&self) -> Vec<FieldError> {
        match self {
            Self::Invalid { details, .. } => details.clone(),
            Self::Forbidden(f) => vec![f.clone()],
            _ => Vec::new(),
        }
    }

    /// The answer on every edge (HTTP, gRPC), built by the shared table.
    pub fn api(&self) -> ApiError {
        let e = ApiError::new(self.error_code(), self.to_string())
            .with_reason(self.code())
            .with_details(self.details());
        match self {
            Self::Unavailable {
                retry_after_secs, ..
            } => e.with_retry_after(*retry_after_secs),
            _ => e,
        }
    }

    /// The JSON error body: `{"error":{"code","message","details":[{"field","reason"}]}}`.
    pub fn body(&self) -> serde_json::Value {
        self.api().body()
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        self.api().into_response()
    }
}

impl From<IngestError> for tonic::Status {
    fn from(e: IngestError) -> Self {
        e.api().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[test]
    fn one_mapping_for_every_kind() {
        let e = IngestError::invalid(
            "invalid_telemetry",
            vec![FieldError::new("[3].lat", "must be between -90 and 90")],
        );
        assert_eq!(e.http_status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument);
        assert_eq!(e.body()["error"]["details"][0]["field"], "[3].lat");
        assert!(e.to_string().contains("[3].lat"));
        let u = IngestError::from_produce(ProduceError::QueueFull, 3);
        assert_eq!(u.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(u.grpc_code(), tonic::Code::Unavailable);
        assert!(u.is_retryable());
        let resp = u.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        let t = IngestError::from_produce(ProduceError::TooLarge { size: 2, limit: 1 }, 3);
        assert_eq!(t.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!t.is_retryable());
    }
}
