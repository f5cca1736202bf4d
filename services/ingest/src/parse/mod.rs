//! Vehicle input → v1 protobuf values, with every validation rule in one
//! place so HTTP, gRPC and MQTT accept and refuse exactly the same data.
//!
//! Rules: ids in the data must match the authenticated vehicle; numbers must
//! be finite; lat ∈ [-90, 90] and lon ∈ [-180, 180], never one without the
//! other; battery ∈ [0, 100]; timestamps RFC 3339, not more than
//! `max_future_skew_secs` ahead nor `max_age_secs` behind the receive time;
//! detections have conf ∈ [0, 1] and a bbox of four 0..1 coordinates with
//! min ≤ max. A request is accepted or refused as a whole.
//!
//! This module holds what every input kind shares: the accepted time window,
//! the collection of field problems, JSON body shapes, ids and timestamps.

mod detections;
mod frames;
mod telemetry;

use std::fmt::Display;

use serde::Deserialize;

use crate::config::LimitsConfig;
use crate::error::{FieldError, IngestError};
use crate::json_point::Scalar;

pub use detections::{check_proto_detections, parse_detections};
pub use frames::{check_frame_time, frame_time, jpeg_dimensions};
pub use telemetry::{ParsedTelemetry, check_proto_points, parse_telemetry};

/// Field errors reported at most per request; the rest only count.
const MAX_DETAILS: usize = 50;

pub const INVALID_TELEMETRY: &str = "invalid_telemetry";
pub const INVALID_DETECTIONS: &str = "invalid_detections";
pub const INVALID_FRAME: &str = "invalid_frame";

/// Receive time and the accepted time window, in µs since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now_us: i64,
    pub max_future_us: i64,
    pub max_age_us: i64,
}

impl Clock {
    pub fn new(limits: &LimitsConfig, now_us: i64) -> Self {
        Self {
            now_us,
            max_future_us: (limits.max_future_skew_secs as i64).saturating_mul(1_000_000),
            max_age_us: (limits.max_age_secs as i64).saturating_mul(1_000_000),
        }
    }

    fn check(&self, t: i64) -> Result<(), String> {
        if t > self.now_us.saturating_add(self.max_future_us) {
            Err(format!(
                "is more than {} s in the future",
                self.max_future_us / 1_000_000
            ))
        } else if t < self.now_us.saturating_sub(self.max_age_us) {
            Err(format!(
                "is older than the {} s retention window",
                self.max_age_us / 1_000_000
            ))
        } else {
            Ok(())
        }
    }
}

/// Collects field errors; the first id mismatch wins over everything (403).
struct Problems {
    details: Vec<FieldError>,
    count: usize,
    forbidden: Option<FieldError>,
}

impl Problems {
    fn new() -> Self {
        Self {
            details: Vec::new(),
            count: 0,
            forbidden: None,
        }
    }

    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.count += 1;
        if self.details.len() < MAX_DETAILS {
            self.details.push(FieldError::new(field, reason));
        }
    }

    fn forbid(&mut self, field: String, reason: String) {
        if self.forbidden.is_none() {
            self.forbidden = Some(FieldError::new(field, reason));
        }
    }

    fn finish(self, code: &'static str) -> Result<(), IngestError> {
        if let Some(f) = self.forbidden {
            return Err(IngestError::Forbidden(f));
        }
        if self.details.is_empty() {
            return Ok(());
        }
        let mut e = IngestError::invalid(code, self.details);
        if let IngestError::Invalid { message, .. } = &mut e
            && self.count > MAX_DETAILS
        {
            message.push_str(&format!(
                " ({} problems, first {MAX_DETAILS} listed)",
                self.count
            ));
        }
        Err(e)
    }
}

/// Accepted top-level shapes of a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One object, an array of objects, or NDJSON (one object per line).
    Any,
    /// Exactly one object (`POST /api/data`).
    Single,
}

fn malformed(message: String) -> IngestError {
    IngestError::Malformed {
        code: "malformed_json",
        message,
    }
}

fn empty_body() -> IngestError {
    IngestError::Malformed {
        code: "empty_body",
        message: "request body is empty; send a JSON object, array or NDJSON".into(),
    }
}

/// Splits a body into JSON items: a top-level array's elements, or every
/// whitespace-separated value (one for a plain object, one per line for
/// NDJSON). Returns whether the body held a collection (for field paths).
fn json_items<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    shape: Shape,
) -> Result<(Vec<T>, bool), IngestError> {
    let first = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or_else(empty_body)?;
    if body[first] == b'[' {
        if shape == Shape::Single {
            return Err(malformed("expected one JSON object, got an array".into()));
        }
        let items: Vec<T> =
            serde_json::from_slice(body).map_err(|e| malformed(format!("invalid JSON: {e}")))?;
        if items.is_empty() {
            return Err(IngestError::Malformed {
                code: "empty_body",
                message: "the array is empty".into(),
            });
        }
        return Ok((items, true));
    }
    // A stream deserializer reads one object and NDJSON alike, whatever the
    // content-type says, and reports the line of a syntax error.
    let mut items = Vec::new();
    for v in serde_json::Deserializer::from_slice(body).into_iter::<T>() {
        let v = v.map_err(|e| malformed(format!("invalid JSON: {e}")))?;
        items.push(v);
    }
    if items.is_empty() {
        return Err(empty_body());
    }
    if shape == Shape::Single && items.len() > 1 {
        return Err(malformed("expected one JSON object, got several".into()));
    }
    let multi = items.len() > 1;
    Ok((items, multi))
}

/// Finite number, or absent (`null` counts as absent).
fn number(v: &Scalar) -> Result<Option<f64>, &'static str> {
    match v {
        Scalar::Null => Ok(None),
        Scalar::Number(f) if f.is_finite() => Ok(Some(*f)),
        Scalar::Number(_) => Err("must be a finite number"),
        _ => Err("must be a number"),
    }
}

fn parse_rfc3339(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|e| format!("must be an RFC 3339 time like 2025-09-24T09:10:15Z ({e})"))
}

/// A timestamp field: RFC 3339 string, or absent (= receive time).
fn timestamp(v: Option<&Scalar>, clock: &Clock) -> Result<i64, String> {
    match v {
        None | Some(Scalar::Null) => Ok(clock.now_us),
        Some(Scalar::Str(s)) => parse_rfc3339(s),
        Some(_) => Err("must be an RFC 3339 time string".into()),
    }
}

/// Checks `drone_id`/`vehicle_id` against the authenticated vehicle.
fn check_ids(
    drone_id: Option<&Scalar>,
    vehicle_id: Option<&Scalar>,
    prefix: &dyn Display,
    vehicle: &str,
    p: &mut Problems,
) {
    for (key, v) in [("drone_id", drone_id), ("vehicle_id", vehicle_id)] {
        match v {
            None | Some(Scalar::Null) => {}
            Some(Scalar::Str(id)) if id == vehicle => {}
            Some(Scalar::Str(id)) => p.forbid(
                format!("{prefix}{key}"),
                format!("names vehicle {id:?}, but the credentials belong to {vehicle:?}"),
            ),
            Some(_) => p.push(format!("{prefix}{key}"), "must be a string"),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(super) const NOW: i64 = 1_758_705_015_000_000; // 2025-09-24T09:10:15Z

    pub(super) fn clock() -> Clock {
        Clock::new(&LimitsConfig::default(), NOW)
    }

    pub(super) fn fields(e: &IngestError) -> Vec<String> {
        match e {
            IngestError::Invalid { details, .. } => {
                details.iter().map(|d| d.field.clone()).collect()
            }
            IngestError::Forbidden(f) => vec![f.field.clone()],
            other => panic!("not a field error: {other:?}"),
        }
    }
}
