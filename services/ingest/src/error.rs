//! The one error type of the request paths and its single mapping to HTTP
//! status / gRPC code, so HTTP, gRPC and MQTT agree on what went wrong.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetwatch_kafka::ProduceError;
use serde::Serialize;

/// One rejected field: where (`[3].lat`, `detections[0].bbox`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

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

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
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

    /// Machine-readable code; also the bounded `reason` label of the rejection metric.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::Malformed { code, .. } | Self::Invalid { code, .. } => code,
            Self::TooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::NotFound(_) => "not_found",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Malformed { .. } | Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Self::Forbidden(_) => tonic::Code::PermissionDenied,
            Self::Malformed { .. }
            | Self::Invalid { .. }
            | Self::TooLarge(_)
            | Self::UnsupportedMediaType(_) => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::Unavailable { .. } => tonic::Code::Unavailable,
            Self::Internal(_) => tonic::Code::Internal,
        }
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

    /// The JSON error body: `{"error":{"code","message","details":[{"field","reason"}]}}`.
    pub fn body(&self) -> serde_json::Value {
        let mut e = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        let details = self.details();
        if !details.is_empty() {
            e["details"] = serde_json::json!(details);
        }
        if let Self::Unavailable {
            retry_after_secs, ..
        } = self
        {
            e["retry_after_secs"] = serde_json::json!(retry_after_secs);
        }
        serde_json::json!({ "error": e })
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let mut resp = (self.http_status(), axum::Json(self.body())).into_response();
        if let Self::Unavailable {
            retry_after_secs, ..
        } = &self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if let Self::Unauthenticated(_) = &self {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<IngestError> for tonic::Status {
    fn from(e: IngestError) -> Self {
        let mut status = tonic::Status::new(e.grpc_code(), e.to_string());
        if let IngestError::Unavailable {
            retry_after_secs, ..
        } = &e
            && let Ok(v) = retry_after_secs.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
