//! The crate's integration tests, one binary (`cargo test --test it`): each
//! module below was a test binary of its own; linking librdkafka and sqlx once
//! per crate instead of once per file is most of the build's time and disk.

mod common;

mod auth;
mod maintenance;
mod process;
mod queries;
mod s3;
mod transient;
mod writes;
