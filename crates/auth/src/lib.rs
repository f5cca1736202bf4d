//! Operator and service identity for every Fleetwatch API: users with
//! argon2id passwords and roles (`viewer` < `operator` < `admin`),
//! short-lived Ed25519-signed access tokens, long-lived hashed API tokens
//! (automation and service identities), and the [`Verifier`] behind the
//! gRPC layer ([`grpc::GrpcAuthLayer`], [`grpc::require`]) and the axum
//! extractors ([`http::Require`], [`http::Authenticated`]). Revocation,
//! disabling and role changes reach every replica's cache at once through
//! LISTEN/NOTIFY. See the README for a walk-through.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod api_token;
mod config;
mod error;
pub mod grpc;
pub mod http;
mod jwt;
pub mod metrics;
pub mod password;
mod principal;
pub mod store;
mod verifier;

pub use api_token::{
    API_TOKEN_PREFIX, ServiceToken, ServiceTokenError, api_token_hash, generate_api_token,
    is_api_token,
};
pub use config::AuthConfig;
pub use error::AuthError;
pub use jwt::{AccessClaims, AccessToken, KeyError, PublicKey, SigningKey, TokenIssuer, key_id};
pub use principal::{Principal, PrincipalKind, Role, UnknownRole};
pub use store::{StoreError, User};
pub use verifier::{CacheStats, Verifier, bearer_token};
