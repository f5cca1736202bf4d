//! The one error vocabulary of every service's edge: a table from error code
//! to HTTP status, gRPC code and metric label, and [`ApiError`], the answer
//! built from it. Services keep their own `thiserror` enums and say which
//! code each variant is; how a code looks on the wire is decided here only,
//! so HTTP, gRPC and MQTT of all services agree on what went wrong.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;

/// What went wrong, as a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Missing, malformed or unknown credentials.
    Unauthenticated,
    /// Authenticated, but not allowed (data naming another vehicle).
    Forbidden,
    /// The request is malformed or fails validation; the message names the field.
    InvalidArgument,
    /// Body, frame or point count above a limit.
    PayloadTooLarge,
    UnsupportedMediaType,
    NotFound,
    /// A unique name is taken.
    AlreadyExists,
    /// The request is valid but the resource's state forbids it (a lifecycle transition).
    FailedPrecondition,
    /// This replica is at capacity; retry later.
    ResourceExhausted,
    /// A dependency (Kafka, the database) pushes back; retry later.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        Self::Unauthenticated,
        Self::Forbidden,
        Self::InvalidArgument,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::NotFound,
        Self::AlreadyExists,
        Self::FailedPrecondition,
        Self::ResourceExhausted,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The table. The label is the JSON `code` and the bounded metric label.
    /// Too large and unsupported media are InvalidArgument on gRPC: the
    /// request itself is wrong, and retrying it can never succeed.
    const fn row(self) -> (&'static str, StatusCode, Code) {
        match self {
            Self::Unauthenticated => (
                "unauthenticated",
                StatusCode::UNAUTHORIZED,
                Code::Unauthenticated,
            ),
            Self::Forbidden => ("forbidden", StatusCode::FORBIDDEN, Code::PermissionDenied),
            Self::InvalidArgument => (
                "invalid_argument",
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
            ),
            Self::PayloadTooLarge => (
                "payload_too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::InvalidArgument,
            ),
            Self::UnsupportedMediaType => (
                "unsupported_media_type",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::InvalidArgument,
            ),
            Self::NotFound => ("not_found", StatusCode::NOT_FOUND, Code::NotFound),
            Self::AlreadyExists => ("already_exists", StatusCode::CONFLICT, Code::AlreadyExists),
            Self::FailedPrecondition => (
                "failed_precondition",
                StatusCode::CONFLICT,
                Code::FailedPrecondition,
            ),
            Self::ResourceExhausted => (
                "resource_exhausted",
                StatusCode::TOO_MANY_REQUESTS,
                Code::ResourceExhausted,
            ),
            Self::Unavailable => (
                "unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
            ),
            Self::Internal => (
                "internal",
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
            ),
        }
    }

    pub const fn label(self) -> &'static str {
        self.row().0
    }

    pub const fn http_status(self) -> StatusCode {
        self.row().1
    }

    pub const fn grpc_code(self) -> Code {
        self.row().2
    }
}

/// The metric label of a gRPC status code: its canonical name in lower case
/// (`ok`, `invalid_argument`), the `code` label of every `*_grpc_requests_total`.
pub fn grpc_code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

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

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// An error as the edge answers it, over HTTP (status + JSON body +
/// `Retry-After` / `WWW-Authenticate`) or gRPC (code + message + `retry-after`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// The JSON `code` and rejection-metric reason: the code's label unless a
    /// service names a finer one (`invalid_telemetry`).
    pub reason: &'static str,
    pub message: String,
    pub details: Vec<FieldError>,
    /// Set for errors worth retrying after this long.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: code.label(),
            message: message.into(),
            details: Vec::new(),
            retry_after_secs: None,
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = reason;
        self
    }

    pub fn with_details(mut self, details: Vec<FieldError>) -> Self {
        self.details = details;
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The JSON error body:
    /// `{"error":{"code","message","details":[{"field","reason"}],"retry_after_secs"}}`
    /// (`details` and `retry_after_secs` only when set).
    pub fn body(&self) -> serde_json::Value {
        let mut e = serde_json::json!({ "code": self.reason, "message": self.message });
        if !self.details.is_empty() {
            e["details"] = serde_json::json!(self.details);
        }
        if let Some(secs) = self.retry_after_secs {
            e["retry_after_secs"] = serde_json::json!(secs);
        }
        serde_json::json!({ "error": e })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.code.http_status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.code == ErrorCode::Unauthenticated {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let mut status = tonic::Status::new(e.code.grpc_code(), e.message);
        if let Some(secs) = e.retry_after_secs
            && let Ok(v) = secs.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_distinct_label_and_an_error_status() {
        let mut labels: Vec<_> = ErrorCode::ALL.iter().map(|c| c.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert!(c.http_status().as_u16() >= 400, "{c:?}");
            assert_ne!(c.grpc_code(), Code::Ok, "{c:?}");
        }
    }

    #[test]
    fn http_and_grpc_answers() {
        let e = ApiError::new(ErrorCode::Unavailable, "kafka is not accepting records")
            .with_retry_after(3);
        let s = tonic::Status::from(e.clone());
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "kafka is not accepting records");
        assert_eq!(s.metadata().get("retry-after").unwrap(), "3");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");

        let e = ApiError::invalid_argument("[3].lat: must be between -90 and 90")
            .with_reason("invalid_telemetry")
            .with_details(vec![FieldError::new(
                "[3].lat",
                "must be between -90 and 90",
            )]);
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"code": "invalid_telemetry",
                "message": "[3].lat: must be between -90 and 90",
                "details": [{"field": "[3].lat", "reason": "must be between -90 and 90"}]}})
        );
        let r = ApiError::new(ErrorCode::Unauthenticated, "no token").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
