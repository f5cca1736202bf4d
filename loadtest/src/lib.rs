//! fleetwatch-loadtest: drives a running Fleetwatch stack with a simulated
//! fleet over HTTP, gRPC or MQTT and measures what it sustains durably
//! (points queryable in PostgreSQL per second), send → stored latency, errors
//! by kind, and CPU/RSS of every process of the stack.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
pub mod db;
pub mod points;
pub mod prepare;
pub mod procfs;
pub mod report;
pub mod run;
pub mod schedule;
pub mod send;
pub mod stats;
