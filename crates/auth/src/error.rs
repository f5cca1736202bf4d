//! Why a caller was refused, as the edges answer it: each kind names its row
//! of the shared error table (`fleetwatch_common::error`), so HTTP and gRPC
//! say the same thing (401/UNAUTHENTICATED, 403/PERMISSION_DENIED, ...).

use axum::response::{IntoResponse, Response};
use fleetwatch_common::error::{ApiError, ErrorCode};

use crate::Role;

/// A refused or failed verification. Messages name the reason without
/// echoing the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer <token>")]
    Missing,
    /// Not a bearer header, or the token has neither shape (`fwt_...` API
    /// token, `header.claims.signature` access token).
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("access token expired")]
    Expired,
    #[error("access token not valid yet")]
    NotYetValid,
    #[error("access token signature does not verify")]
    BadSignature,
    #[error("access token signed with an unknown or retired key")]
    UnknownKey,
    #[error("access token issued by another issuer or for another audience")]
    WrongAudience,
    #[error("unknown, revoked or expired API token")]
    UnknownToken,
    /// The user is disabled (or deleted) since the token was issued.
    #[error("account disabled")]
    Disabled,
    /// The password changed after the access token was issued.
    #[error("session ended by a password change; log in again")]
    SessionEnded,
    /// A password login failed (unknown user and wrong password alike).
    #[error("wrong username or password")]
    BadLogin,
    #[error("this call needs role {needed}; the caller is {actual}")]
    Forbidden { needed: Role, actual: Role },
    /// The database did not answer; the caller may retry.
    #[error("identity store unavailable, retry")]
    Unavailable,
    #[error("identity lookup failed")]
    Internal,
}

impl AuthError {
    /// The row of the shared error table this kind answers with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::Forbidden { .. } => ErrorCode::Forbidden,
            Self::Unavailable => ErrorCode::Unavailable,
            Self::Internal => ErrorCode::Internal,
            _ => ErrorCode::Unauthenticated,
        }
    }

    /// The JSON `code`: the table's label, except `token_expired`, which
    /// tells a client to refresh its access token rather than log in again.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Expired => "token_expired",
            _ => self.error_code().label(),
        }
    }

    /// The answer on every edge.
    pub fn api(&self) -> ApiError {
        let e = ApiError::new(self.error_code(), self.to_string()).with_reason(self.code());
        match self {
            Self::Unavailable => e.with_retry_after(1),
            _ => e,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        self.api().into_response()
    }
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        e.api().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(
            tonic::Status::from(AuthError::Missing).code(),
            tonic::Code::Unauthenticated
        );
        let denied = AuthError::Forbidden {
            needed: Role::Admin,
            actual: Role::Viewer,
        };
        assert_eq!(
            tonic::Status::from(denied.clone()).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(denied.into_response().status(), 403);
        assert_eq!(
            AuthError::Expired.api().body(),
            serde_json::json!({"error": {"code": "token_expired", "message": "access token expired"}})
        );
        let r = AuthError::Unavailable.into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
