//! fleetwatch-auth against a real PostgreSQL: one test binary, a fresh
//! database per test (testkit), verifiers listening like services do.
#![allow(clippy::unwrap_used)]

mod access_tokens;
mod api_tokens;
mod common;
mod grpc_edge;
mod http_edge;
mod replicas;
mod users;
