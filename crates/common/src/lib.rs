//! Shared plumbing of every Fleetwatch service: layered config, logs/traces/
//! metrics, the admin server (`/metrics`, `/healthz`, `/readyz`), the gRPC
//! server setup and its request counting, the shared error codes, secret types, and the supervisor that runs and drains a service's tasks.

pub mod admin;
pub mod config;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;

pub use admin::{AdminConfig, Readiness};
pub use config::{ConfigError, Validate, load_config};
pub use error::{ApiError, ErrorCode, FieldError};
pub use secret::{Secret, SecretUrl};
pub use service::service_main;
pub use shutdown::{Shutdown, shutdown_on_signal};
pub use supervisor::{ShutdownConfig, Stage, Supervisor, TaskControl};
pub use telemetry::{LogConfig, LogFormat, TelemetryGuard};

/// Exit code for a configuration error (EX_USAGE), so orchestration can tell a
/// bad deployment from a crash.
pub const EXIT_CONFIG: i32 = 64;

/// Microseconds since the Unix epoch, the time unit of every v1 contract.
pub fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
