//! The identity tables (`users`, `api_tokens`, `signing_keys`, `auth_audit`,
//! migration `20261201000100_operator_identity.sql`): management calls for
//! `fleetctl` and the console, and the lookups the verifier makes. Every
//! change is written with its audit row in one transaction; the tables'
//! triggers notify [`NOTIFY_CHANNEL`] so verifiers drop what they cached.

mod keys;
mod tokens;
mod users;

pub use keys::{SigningKeyInfo, list_signing_keys, register_signing_key, retire_signing_key};
pub use tokens::{
    ApiTokenInfo, NewApiToken, TokenOwner, create_api_token, list_api_tokens, revoke_api_token,
};
pub use users::{
    User, create_user, ensure_admin, find_user, list_users, login, set_disabled, set_password,
    set_role, valid_service_name, valid_username,
};

pub(crate) use keys::lookup_key;
pub(crate) use tokens::{TokenRow, lookup_token, touch_token};
pub(crate) use users::{UserState, lookup_user};

use fleetwatch_common::ErrorCode;
use fleetwatch_db::{ErrorClass, classify};

use crate::Role;
use crate::password::PasswordError;

/// The channel the identity tables' triggers notify.
pub const NOTIFY_CHANNEL: &str = "fleetwatch_auth";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "username {0:?} is invalid: use 1-64 lower-case letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
    )]
    InvalidUsername(String),
    #[error(
        "service name {0:?} is invalid: use 1-64 lower-case letters, digits or '-', starting with a letter"
    )]
    InvalidServiceName(String),
    #[error("a token name is 1-128 characters without control characters")]
    InvalidTokenName,
    #[error("the expiry must lie in the future")]
    ExpiryInPast,
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no user {0}")]
    NoSuchUser(String),
    #[error("user {0} is disabled")]
    UserDisabled(String),
    #[error("user {0} exists but is not an active admin")]
    NotAnAdmin(String),
    #[error("{0} is the last active admin; make another user admin first")]
    LastAdmin(String),
    #[error("a token of {user} cannot have role {wanted}: {user} is {has}")]
    RoleAboveOwner {
        user: String,
        wanted: Role,
        has: Role,
    },
    #[error("a service token needs an explicit role")]
    ServiceRoleMissing,
    #[error("no API token {0}")]
    NoSuchToken(i64),
    #[error("signing key {0} is retired; generate a new key")]
    KeyRetired(String),
    #[error("no signing key {0}")]
    NoSuchKey(String),
    #[error("password hashing did not finish: {0}")]
    Blocking(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// The shared database classification (transient errors are worth a retry).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Db(e) => classify(e),
            Self::Blocking(_) => ErrorClass::Bug,
            _ => ErrorClass::Data,
        }
    }

    /// The row of the shared error table (for an API that manages users).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::UserExists(_) => ErrorCode::AlreadyExists,
            Self::NoSuchUser(_) | Self::NoSuchToken(_) | Self::NoSuchKey(_) => ErrorCode::NotFound,
            Self::UserDisabled(_)
            | Self::NotAnAdmin(_)
            | Self::LastAdmin(_)
            | Self::KeyRetired(_) => ErrorCode::FailedPrecondition,
            Self::Db(_) | Self::Blocking(_) => match self.class() {
                ErrorClass::Transient => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            },
            _ => ErrorCode::InvalidArgument,
        }
    }
}

/// 23505 on the named constraint (or any unique constraint when `None`).
fn is_unique_violation(e: &sqlx::Error, constraint: Option<&str>) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.code().as_deref() == Some("23505")
                && constraint.is_none_or(|c| d.constraint() == Some(c))
        }
        _ => false,
    }
}

/// One audit row, inside the transaction that made the change.
async fn audit(
    tx: &mut sqlx::PgConnection,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO auth_audit (actor, action, target, detail) VALUES ($1, $2, $3, $4)")
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(tx)
        .await?;
    Ok(())
}

fn parse_role(s: &str) -> Result<Role, sqlx::Error> {
    s.parse()
        .map_err(|e: crate::principal::UnknownRole| sqlx::Error::Decode(Box::new(e)))
}
