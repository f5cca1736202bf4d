//! The crate's integration tests, one binary (`cargo test --test it`): each
//! module below was a test binary of its own; linking librdkafka and sqlx once
//! per crate instead of once per file is most of the build's time and disk.

mod common;

mod incidents;
mod migrate;
mod simulate;
mod tail;
mod tokens;
mod topics;
mod users;
mod vehicles;
