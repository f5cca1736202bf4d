//! Vehicle input → v1 protobuf values, with every validation rule in one
//! place so HTTP, gRPC and MQTT accept and refuse exactly the same data.
//!
//! Rules: ids in the data must match the authenticated vehicle; numbers must
//! be finite; lat ∈ [-90, 90] and lon ∈ [-180, 180], never one without the
//! other; battery ∈ [0, 100]; timestamps RFC 3339, not more than
//! `max_future_skew_secs` ahead nor `max_age_secs` behind the receive time;
//! detections have conf ∈ [0, 1] and a bbox of four 0..1 coordinates with
//! min ≤ max. A request is accepted or refused as a whole.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;

use fleetwatch_proto::v1::{BoundingBox, Detection, DetectionBatch, TelemetryPoint};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::json_point::{Item, JsonPoint, MetricsMember, STANDARD_FIELDS, Scalar};

use crate::config::LimitsConfig;
use crate::error::{FieldError, IngestError};

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

/// Parsed telemetry of one request.
#[derive(Debug, Default)]
pub struct ParsedTelemetry {
    pub points: Vec<TelemetryPoint>,
    /// Non-numeric extra fields, not stored (reported back to the sender).
    pub ignored_fields: BTreeSet<String>,
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

/// The rules of a telemetry point, shared by JSON and protobuf input.
fn check_point(pt: &TelemetryPoint, prefix: &dyn Display, clock: &Clock, p: &mut Problems) {
    let fields = [
        ("lat", pt.lat),
        ("lon", pt.lon),
        ("alt", pt.alt),
        ("speed", pt.speed),
        ("heading", pt.heading),
        ("battery", pt.battery),
    ];
    for (name, v) in fields {
        if let Some(v) = v
            && !v.is_finite()
        {
            p.push(format!("{prefix}{name}"), "must be a finite number");
        }
    }
    if let Some(lat) = pt.lat.filter(|v| v.is_finite())
        && !(-90.0..=90.0).contains(&lat)
    {
        p.push(format!("{prefix}lat"), "must be between -90 and 90");
    }
    if let Some(lon) = pt.lon.filter(|v| v.is_finite())
        && !(-180.0..=180.0).contains(&lon)
    {
        p.push(format!("{prefix}lon"), "must be between -180 and 180");
    }
    match (pt.lat, pt.lon) {
        (Some(_), None) => p.push(format!("{prefix}lon"), "is required when lat is given"),
        (None, Some(_)) => p.push(format!("{prefix}lat"), "is required when lon is given"),
        _ => {}
    }
    if let Some(b) = pt.battery.filter(|v| v.is_finite())
        && !(0.0..=100.0).contains(&b)
    {
        p.push(
            format!("{prefix}battery"),
            "must be between 0 and 100 (percent)",
        );
    }
    let mut names: Vec<&String> = pt
        .metrics
        .iter()
        .filter(|(_, v)| !v.is_finite())
        .map(|(k, _)| k)
        .collect();
    names.sort();
    for k in names {
        p.push(format!("{prefix}{k}"), "must be a finite number");
    }
    if let Err(reason) = clock.check(pt.time_unix_us) {
        p.push(format!("{prefix}timestamp"), reason);
    }
}

/// `{outer}{name}[{i}].`, the path of one point in a request. Rendered only
/// into the field name of an error, so valid points cost no formatting.
struct Indexed<'a> {
    outer: &'a str,
    name: &'static str,
    i: usize,
}

impl Display for Indexed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}[{}].", self.outer, self.name, self.i)
    }
}

/// A member that is not a standard field: a number is a custom metric, any
/// other kind is reported back as ignored (never stored), `null` is skipped.
#[allow(clippy::too_many_arguments)]
fn custom_metric(
    key: &str,
    v: &Scalar,
    path: &dyn Fn() -> String,
    null_ignored: bool,
    metrics: &mut HashMap<String, f64>,
    prefix: &dyn Display,
    p: &mut Problems,
    ignored: &mut BTreeSet<String>,
) {
    match v {
        Scalar::Number(_) => match number(v) {
            Ok(Some(n)) => {
                metrics.insert(key.to_string(), n);
            }
            Ok(None) => {}
            Err(reason) => p.push(format!("{prefix}{}", path()), reason),
        },
        Scalar::Null if !null_ignored => {}
        _ => {
            ignored.insert(path());
        }
    }
}

fn point_from_json(
    jp: &JsonPoint,
    prefix: &dyn Display,
    vehicle: &str,
    clock: &Clock,
    p: &mut Problems,
    ignored: &mut BTreeSet<String>,
) -> TelemetryPoint {
    check_ids(
        jp.drone_id.as_ref(),
        jp.vehicle_id.as_ref(),
        prefix,
        vehicle,
        p,
    );
    let mut pt = TelemetryPoint {
        vehicle_id: vehicle.to_string(),
        time_unix_us: clock.now_us,
        ..Default::default()
    };
    match timestamp(jp.timestamp.as_ref(), clock) {
        Ok(t) => pt.time_unix_us = t,
        Err(reason) => p.push(format!("{prefix}timestamp"), reason),
    }
    for (i, v) in jp.standard.iter().enumerate() {
        let Some(v) = v else { continue };
        let slot = match i {
            0 => &mut pt.lat,
            1 => &mut pt.lon,
            2 => &mut pt.alt,
            3 => &mut pt.speed,
            4 => &mut pt.heading,
            _ => &mut pt.battery,
        };
        match number(v) {
            Ok(n) => *slot = n,
            Err(reason) => p.push(format!("{prefix}{}", STANDARD_FIELDS[i]), reason),
        }
    }
    let mut metrics = HashMap::new();
    let mut other = |key: &str, v: &Scalar, path: &dyn Fn() -> String, null_ignored: bool| {
        custom_metric(key, v, path, null_ignored, &mut metrics, prefix, p, ignored);
    };
    match &jp.metrics {
        MetricsMember::Absent => {}
        // An explicit `metrics` object is the other way to send custom
        // metrics; a `null` inside it is reported as ignored.
        MetricsMember::Object(m) => {
            for (mk, mv) in m {
                other(mk, mv, &|| format!("metrics.{mk}"), true);
            }
        }
        MetricsMember::Other(v) => other("metrics", v, &|| "metrics".to_string(), false),
    }
    for (key, v) in &jp.extra {
        other(key, v, &|| key.to_string(), false);
    }
    pt.metrics = metrics;
    pt
}

/// Parses and validates a telemetry body for `vehicle`.
pub fn parse_telemetry(
    body: &[u8],
    shape: Shape,
    vehicle: &str,
    limits: &LimitsConfig,
    clock: &Clock,
) -> Result<ParsedTelemetry, IngestError> {
    let (values, multi) = json_items::<Item>(body, shape)?;
    if values.len() > limits.max_points_per_request {
        return Err(IngestError::TooLarge(format!(
            "{} points exceed the limit of {} per request",
            values.len(),
            limits.max_points_per_request
        )));
    }
    let mut p = Problems::new();
    let mut out = ParsedTelemetry {
        points: Vec::with_capacity(values.len()),
        ..Default::default()
    };
    for (i, v) in values.iter().enumerate() {
        let indexed = Indexed {
            outer: "",
            name: "",
            i,
        };
        let prefix: &dyn Display = if multi { &indexed } else { &"" };
        let Item::Point(jp) = v else {
            p.push(
                if multi {
                    format!("[{i}]")
                } else {
                    "body".into()
                },
                "must be a JSON object",
            );
            continue;
        };
        let pt = point_from_json(jp, prefix, vehicle, clock, &mut p, &mut out.ignored_fields);
        check_point(&pt, prefix, clock, &mut p);
        out.points.push(pt);
    }
    p.finish(INVALID_TELEMETRY)?;
    Ok(out)
}

/// Validates protobuf points (gRPC) in place: fills the vehicle id and a
/// missing time (0 = receive time). `prefix` names the chunk in errors.
pub fn check_proto_points(
    points: &mut [TelemetryPoint],
    prefix: &str,
    vehicle: &str,
    limits: &LimitsConfig,
    clock: &Clock,
) -> Result<(), IngestError> {
    if points.len() > limits.max_points_per_request {
        return Err(IngestError::TooLarge(format!(
            "{} points in one chunk exceed the limit of {}",
            points.len(),
            limits.max_points_per_request
        )));
    }
    let mut p = Problems::new();
    for (i, pt) in points.iter_mut().enumerate() {
        let prefix = Indexed {
            outer: prefix,
            name: "points",
            i,
        };
        if pt.vehicle_id.is_empty() {
            pt.vehicle_id = vehicle.to_string();
        } else if pt.vehicle_id != vehicle {
            p.forbid(
                format!("{prefix}vehicle_id"),
                format!(
                    "names vehicle {:?}, but the credentials belong to {vehicle:?}",
                    pt.vehicle_id
                ),
            );
        }
        if pt.time_unix_us == 0 {
            pt.time_unix_us = clock.now_us;
        }
        check_point(pt, &prefix, clock, &mut p);
    }
    p.finish(INVALID_TELEMETRY)
}

/// The rules of a detection batch, shared by JSON and protobuf input.
fn check_detection_batch(b: &DetectionBatch, clock: &Clock, p: &mut Problems) {
    if let Err(reason) = clock.check(b.time_unix_us) {
        p.push("timestamp", reason);
    }
    for (i, d) in b.detections.iter().enumerate() {
        let prefix = format!("detections[{i}].");
        if d.class_name.trim().is_empty() {
            p.push(format!("{prefix}class"), "must be a non-empty string");
        }
        if !d.confidence.is_finite() || !(0.0..=1.0).contains(&d.confidence) {
            p.push(format!("{prefix}conf"), "must be between 0 and 1");
        }
        match &d.bbox {
            None => p.push(
                format!("{prefix}bbox"),
                "is required: [x_min, y_min, x_max, y_max] in 0..1",
            ),
            Some(bb) => {
                let coords = [bb.x_min, bb.y_min, bb.x_max, bb.y_max];
                if coords
                    .iter()
                    .any(|c| !c.is_finite() || !(0.0..=1.0).contains(c))
                {
                    p.push(
                        format!("{prefix}bbox"),
                        "coordinates must be normalised to 0..1",
                    );
                } else if bb.x_min > bb.x_max || bb.y_min > bb.y_max {
                    p.push(
                        format!("{prefix}bbox"),
                        "needs x_min <= x_max and y_min <= y_max",
                    );
                }
            }
        }
    }
}

fn string_field(obj: &Map<String, Value>, keys: &[&str], p: &mut Problems) -> String {
    for key in keys {
        match obj.get(*key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => return s.clone(),
            Some(_) => p.push(*key, "must be a string"),
        }
    }
    String::new()
}

fn detection_from_json(v: &Value, prefix: &str, p: &mut Problems) -> Detection {
    let mut d = Detection::default();
    let Value::Object(obj) = v else {
        p.push(prefix.trim_end_matches('.'), "must be a JSON object");
        return d;
    };
    match obj.get("class").or_else(|| obj.get("class_name")) {
        Some(Value::String(s)) => d.class_name = s.clone(),
        // Empty class_name makes check_detection_batch report it.
        None | Some(Value::Null) => {}
        Some(_) => p.push(format!("{prefix}class"), "must be a string"),
    }
    match obj
        .get("conf")
        .or_else(|| obj.get("confidence"))
        .map(|v| number(&Scalar::from(v)))
    {
        Some(Ok(Some(c))) => d.confidence = c as f32,
        None | Some(Ok(None)) => p.push(format!("{prefix}conf"), "is required (0..1)"),
        Some(Err(reason)) => p.push(format!("{prefix}conf"), reason),
    }
    match obj.get("bbox") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.len() == 4 => {
            let mut c = [0f32; 4];
            let mut ok = true;
            for (j, x) in a.iter().enumerate() {
                match number(&Scalar::from(x)) {
                    Ok(Some(f)) => c[j] = f as f32,
                    _ => ok = false,
                }
            }
            if ok {
                d.bbox = Some(BoundingBox {
                    x_min: c[0],
                    y_min: c[1],
                    x_max: c[2],
                    y_max: c[3],
                });
            } else {
                p.push(format!("{prefix}bbox"), "must hold four finite numbers");
                // Keep the batch check from also saying "required".
                d.bbox = Some(BoundingBox {
                    x_min: 0.0,
                    y_min: 0.0,
                    x_max: 0.0,
                    y_max: 0.0,
                });
            }
        }
        Some(_) => {
            p.push(
                format!("{prefix}bbox"),
                "must be [x_min, y_min, x_max, y_max]",
            );
            d.bbox = Some(BoundingBox::default());
        }
    }
    match obj.get("track_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => d.track_id = s.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => d.track_id = n.to_string(),
        Some(_) => p.push(
            format!("{prefix}track_id"),
            "must be a string or an integer",
        ),
    }
    d
}

/// Parses and validates a seed-001 detection message for `vehicle`.
pub fn parse_detections(
    body: &[u8],
    vehicle: &str,
    limits: &LimitsConfig,
    clock: &Clock,
) -> Result<DetectionBatch, IngestError> {
    let (values, _) = json_items::<Value>(body, Shape::Single)?;
    let Some(Value::Object(obj)) = values.into_iter().next() else {
        return Err(malformed("expected one JSON object".into()));
    };
    let mut p = Problems::new();
    check_ids(
        obj.get("drone_id").map(Scalar::from).as_ref(),
        obj.get("vehicle_id").map(Scalar::from).as_ref(),
        &"",
        vehicle,
        &mut p,
    );
    let mut b = DetectionBatch {
        vehicle_id: vehicle.to_string(),
        source: "edge".into(),
        received_unix_us: clock.now_us,
        ..Default::default()
    };
    match timestamp(obj.get("timestamp").map(Scalar::from).as_ref(), clock) {
        Ok(t) => b.time_unix_us = t,
        Err(reason) => {
            p.push("timestamp", reason);
            b.time_unix_us = clock.now_us;
        }
    }
    b.frame_id = string_field(&obj, &["frame_id"], &mut p);
    b.frame_key = string_field(&obj, &["frame_s3_key", "frame_key"], &mut p);
    match obj.get("detections") {
        Some(Value::Array(items)) => {
            if items.len() > limits.max_points_per_request {
                return Err(IngestError::TooLarge(format!(
                    "{} detections exceed the limit of {}",
                    items.len(),
                    limits.max_points_per_request
                )));
            }
            b.detections = items
                .iter()
                .enumerate()
                .map(|(i, v)| detection_from_json(v, &format!("detections[{i}]."), &mut p))
                .collect();
        }
        None | Some(Value::Null) => p.push("detections", "is required (an array, may be empty)"),
        Some(_) => p.push("detections", "must be an array"),
    }
    check_detection_batch(&b, clock, &mut p);
    p.finish(INVALID_DETECTIONS)?;
    Ok(b)
}

/// Validates a protobuf detection batch (gRPC) in place.
pub fn check_proto_detections(
    b: &mut DetectionBatch,
    vehicle: &str,
    limits: &LimitsConfig,
    clock: &Clock,
) -> Result<(), IngestError> {
    if b.detections.len() > limits.max_points_per_request {
        return Err(IngestError::TooLarge(format!(
            "{} detections exceed the limit of {}",
            b.detections.len(),
            limits.max_points_per_request
        )));
    }
    let mut p = Problems::new();
    if b.vehicle_id.is_empty() {
        b.vehicle_id = vehicle.to_string();
    } else if b.vehicle_id != vehicle {
        p.forbid(
            "vehicle_id".into(),
            format!(
                "names vehicle {:?}, but the credentials belong to {vehicle:?}",
                b.vehicle_id
            ),
        );
    }
    if b.time_unix_us == 0 {
        b.time_unix_us = clock.now_us;
    }
    b.source = "edge".into();
    b.received_unix_us = clock.now_us;
    check_detection_batch(b, clock, &mut p);
    p.finish(INVALID_DETECTIONS)
}

/// A frame timestamp from a query parameter or header (absent = receive time).
pub fn frame_time(value: Option<&str>, clock: &Clock) -> Result<i64, IngestError> {
    let t = match value {
        None => clock.now_us,
        Some(s) => parse_rfc3339(s.trim()).map_err(|r| {
            IngestError::invalid(INVALID_FRAME, vec![FieldError::new("timestamp", r)])
        })?,
    };
    check_frame_time(t, clock)
}

pub fn check_frame_time(t: i64, clock: &Clock) -> Result<i64, IngestError> {
    clock
        .check(t)
        .map_err(|r| IngestError::invalid(INVALID_FRAME, vec![FieldError::new("timestamp", r)]))?;
    Ok(t)
}

/// Width and height of a JPEG, read from its header only (no decoding).
pub fn jpeg_dimensions(data: &[u8], max_bytes: usize) -> Result<(u32, u32), IngestError> {
    let invalid =
        |reason: &str| IngestError::invalid(INVALID_FRAME, vec![FieldError::new("frame", reason)]);
    if data.is_empty() {
        return Err(invalid("is empty"));
    }
    if data.len() > max_bytes {
        return Err(IngestError::TooLarge(format!(
            "frame of {} bytes exceeds the {max_bytes}-byte limit",
            data.len()
        )));
    }
    if !data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err(invalid("is not a JPEG (no SOI marker)"));
    }
    let reader =
        image::ImageReader::with_format(std::io::Cursor::new(data), image::ImageFormat::Jpeg);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| invalid(&format!("has an unreadable JPEG header: {e}")))?;
    if w == 0 || h == 0 {
        return Err(invalid("has zero width or height"));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: i64 = 1_758_705_015_000_000; // 2025-09-24T09:10:15Z

    fn clock() -> Clock {
        Clock::new(&LimitsConfig::default(), NOW)
    }

    fn tel(body: &str) -> Result<ParsedTelemetry, IngestError> {
        parse_telemetry(
            body.as_bytes(),
            Shape::Any,
            "drone-01",
            &LimitsConfig::default(),
            &clock(),
        )
    }

    fn fields(e: &IngestError) -> Vec<String> {
        match e {
            IngestError::Invalid { details, .. } => {
                details.iter().map(|d| d.field.clone()).collect()
            }
            IngestError::Forbidden(f) => vec![f.field.clone()],
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn seed_telemetry_message() {
        let t = tel(r#"{"drone_id":"drone-01","timestamp":"2025-09-24T09:10:15Z","lat":28.7,"lon":77.1,"alt":120.5,"battery":72,"rssi":-61,"mode":"auto","metrics":{"temp":31.5,"note":"x"}}"#).unwrap();
        assert_eq!(t.points.len(), 1);
        let p = &t.points[0];
        assert_eq!(p.vehicle_id, "drone-01");
        assert_eq!(p.time_unix_us, NOW);
        assert_eq!(p.lat, Some(28.7));
        assert_eq!(p.battery, Some(72.0));
        assert_eq!(p.speed, None);
        assert_eq!(p.metrics.get("rssi"), Some(&-61.0));
        assert_eq!(p.metrics.get("temp"), Some(&31.5));
        assert_eq!(
            t.ignored_fields.iter().cloned().collect::<Vec<_>>(),
            vec!["metrics.note", "mode"]
        );
    }

    #[test]
    fn array_ndjson_and_missing_timestamp() {
        let t = tel(r#"[{"lat":1,"lon":2},{"vehicle_id":"drone-01","speed":3}]"#).unwrap();
        assert_eq!(t.points.len(), 2);
        assert_eq!(t.points[1].speed, Some(3.0));
        assert_eq!(
            t.points[0].time_unix_us, NOW,
            "missing timestamp = receive time"
        );
        let t = tel("{\"lat\":1,\"lon\":2}\n\n{\"lat\":3,\"lon\":4}\n").unwrap();
        assert_eq!(t.points.len(), 2);
        assert_eq!(t.points[1].lat, Some(3.0));
    }

    #[test]
    fn shape_errors() {
        assert_eq!(tel("").unwrap_err().code(), "empty_body");
        assert_eq!(tel("  \n").unwrap_err().code(), "empty_body");
        assert_eq!(tel("[]").unwrap_err().code(), "empty_body");
        assert_eq!(tel("{\"lat\":").unwrap_err().code(), "malformed_json");
        assert_eq!(tel("{}\n{").unwrap_err().code(), "malformed_json");
        assert_eq!(fields(&tel("[1]").unwrap_err()), vec!["[0]"]);
        let single = parse_telemetry(
            b"[{}]",
            Shape::Single,
            "drone-01",
            &LimitsConfig::default(),
            &clock(),
        );
        assert_eq!(single.unwrap_err().code(), "malformed_json");
        let limits = LimitsConfig {
            max_points_per_request: 2,
            ..Default::default()
        };
        let e =
            parse_telemetry(b"[{},{},{}]", Shape::Any, "drone-01", &limits, &clock()).unwrap_err();
        assert!(matches!(e, IngestError::TooLarge(_)));
    }

    #[test]
    fn huge_exponent_is_refused() {
        // serde_json refuses to overflow to infinity, so this is a syntax error.
        let e = tel(r#"{"lat":1e999,"lon":0}"#).unwrap_err();
        assert_eq!(e.code(), "malformed_json");
        assert!(e.to_string().contains("column"), "{e}");
    }

    #[test]
    fn range_rules_name_the_field() {
        let cases = [
            (r#"[{},{},{},{"lat":91,"lon":0}]"#, "[3].lat"),
            (r#"{"lat":-90.5,"lon":0}"#, "lat"),
            (r#"{"lat":0,"lon":180.01}"#, "lon"),
            (r#"{"lat":1}"#, "lon"),
            (r#"{"lon":1}"#, "lat"),
            (r#"{"battery":101}"#, "battery"),
            (r#"{"battery":-1}"#, "battery"),
            (r#"{"speed":"fast"}"#, "speed"),
            (r#"{"timestamp":"yesterday"}"#, "timestamp"),
            (r#"{"timestamp":1758705015}"#, "timestamp"),
            (r#"{"timestamp":"2025-09-24T09:16:16Z"}"#, "timestamp"),
            (r#"{"timestamp":"2025-09-17T09:10:14Z"}"#, "timestamp"),
            (r#"{"drone_id":7}"#, "drone_id"),
        ];
        for (body, field) in cases {
            let e = tel(body).unwrap_err();
            assert_eq!(e.code(), INVALID_TELEMETRY, "{body}");
            assert_eq!(fields(&e), vec![field.to_string()], "{body}");
        }
        // Edges are inside.
        tel(r#"{"lat":-90,"lon":180,"battery":0,"timestamp":"2025-09-24T09:15:15Z"}"#).unwrap();
        tel(r#"{"timestamp":"2025-09-17T09:10:16Z"}"#).unwrap();
    }

    #[test]
    fn every_problem_is_listed_and_id_mismatch_is_forbidden() {
        let e = tel(r#"[{"lat":91,"lon":0},{"battery":200}]"#).unwrap_err();
        assert_eq!(fields(&e), vec!["[0].lat", "[1].battery"]);
        let e = tel(r#"[{"lat":91,"lon":0},{"drone_id":"drone-02"}]"#).unwrap_err();
        assert!(matches!(e, IngestError::Forbidden(_)));
        assert_eq!(fields(&e), vec!["[1].drone_id"]);
    }

    #[test]
    fn proto_points_share_the_rules() {
        let limits = LimitsConfig::default();
        let mut pts = vec![
            TelemetryPoint {
                lat: Some(1.0),
                lon: Some(2.0),
                ..Default::default()
            },
            TelemetryPoint {
                lat: Some(f64::NAN),
                lon: Some(2.0),
                time_unix_us: NOW,
                ..Default::default()
            },
        ];
        let e =
            check_proto_points(&mut pts, "chunk[1].", "drone-01", &limits, &clock()).unwrap_err();
        assert_eq!(fields(&e), vec!["chunk[1].points[1].lat"]);
        let mut ok = vec![TelemetryPoint {
            battery: Some(50.0),
            ..Default::default()
        }];
        check_proto_points(&mut ok, "", "drone-01", &limits, &clock()).unwrap();
        assert_eq!(ok[0].vehicle_id, "drone-01");
        assert_eq!(ok[0].time_unix_us, NOW);
        let mut m = vec![TelemetryPoint {
            metrics: [("x".to_string(), f64::INFINITY)].into(),
            ..Default::default()
        }];
        assert_eq!(
            fields(&check_proto_points(&mut m, "", "drone-01", &limits, &clock()).unwrap_err()),
            vec!["points[0].x"]
        );
        let mut other = vec![TelemetryPoint {
            vehicle_id: "drone-02".into(),
            ..Default::default()
        }];
        assert!(matches!(
            check_proto_points(&mut other, "", "drone-01", &limits, &clock()).unwrap_err(),
            IngestError::Forbidden(_)
        ));
    }

    fn det(body: &str) -> Result<DetectionBatch, IngestError> {
        parse_detections(
            body.as_bytes(),
            "drone-01",
            &LimitsConfig::default(),
            &clock(),
        )
    }

    #[test]
    fn seed_detection_message() {
        let b = det(r#"{"drone_id":"drone-01","timestamp":"2025-09-24T09:10:15Z","detections":[{"class":"person","conf":0.92,"bbox":[0.12,0.22,0.35,0.60],"track_id":"t123"},{"class":"car","conf":1,"bbox":[0,0,1,1],"track_id":7}],"frame_id":"frame-0001","frame_s3_key":"drone-01/2025-09-24/frame-0001.jpg"}"#).unwrap();
        assert_eq!(b.vehicle_id, "drone-01");
        assert_eq!(b.time_unix_us, NOW);
        assert_eq!(b.source, "edge");
        assert_eq!(b.frame_id, "frame-0001");
        assert_eq!(b.frame_key, "drone-01/2025-09-24/frame-0001.jpg");
        assert_eq!(b.detections.len(), 2);
        assert_eq!(b.detections[0].class_name, "person");
        assert!((b.detections[0].confidence - 0.92).abs() < 1e-6);
        assert_eq!(b.detections[0].bbox.unwrap().x_max, 0.35);
        assert_eq!(b.detections[1].track_id, "7");
    }

    #[test]
    fn detection_rules_name_the_field() {
        let cases = [
            (
                r#"{"detections":[{"class":"p","conf":1.5,"bbox":[0,0,1,1]}]}"#,
                "detections[0].conf",
            ),
            (
                r#"{"detections":[{"class":"p","conf":-0.1,"bbox":[0,0,1,1]}]}"#,
                "detections[0].conf",
            ),
            (
                r#"{"detections":[{"class":"p","bbox":[0,0,1,1]}]}"#,
                "detections[0].conf",
            ),
            (
                r#"{"detections":[{"class":"p","conf":0.5,"bbox":[0,0,1.2,1]}]}"#,
                "detections[0].bbox",
            ),
            (
                r#"{"detections":[{"class":"p","conf":0.5,"bbox":[0.6,0,0.5,1]}]}"#,
                "detections[0].bbox",
            ),
            (
                r#"{"detections":[{"class":"p","conf":0.5,"bbox":[0,0,1]}]}"#,
                "detections[0].bbox",
            ),
            (
                r#"{"detections":[{"class":"p","conf":0.5}]}"#,
                "detections[0].bbox",
            ),
            (
                r#"{"detections":[{"class":"","conf":0.5,"bbox":[0,0,1,1]}]}"#,
                "detections[0].class",
            ),
            (r#"{"detections":{}}"#, "detections"),
            (r#"{"frame_id":"x"}"#, "detections"),
            (r#"{"detections":[],"timestamp":"nope"}"#, "timestamp"),
        ];
        for (body, field) in cases {
            let e = det(body).unwrap_err();
            assert_eq!(e.code(), INVALID_DETECTIONS, "{body}");
            assert_eq!(fields(&e), vec![field.to_string()], "{body}");
        }
        assert!(matches!(
            det(r#"{"drone_id":"x","detections":[]}"#).unwrap_err(),
            IngestError::Forbidden(_)
        ));
        assert_eq!(det("[]").unwrap_err().code(), "malformed_json");
    }

    #[test]
    fn proto_detections_share_the_rules() {
        let limits = LimitsConfig::default();
        let mut b = DetectionBatch {
            detections: vec![Detection {
                class_name: "p".into(),
                confidence: 0.5,
                bbox: None,
                track_id: String::new(),
            }],
            ..Default::default()
        };
        let e = check_proto_detections(&mut b, "drone-01", &limits, &clock()).unwrap_err();
        assert_eq!(fields(&e), vec!["detections[0].bbox"]);
        b.detections[0].bbox = Some(BoundingBox {
            x_min: 0.1,
            y_min: 0.1,
            x_max: 0.2,
            y_max: 0.2,
        });
        check_proto_detections(&mut b, "drone-01", &limits, &clock()).unwrap();
        assert_eq!(
            (b.vehicle_id.as_str(), b.source.as_str(), b.time_unix_us),
            ("drone-01", "edge", NOW)
        );
    }

    /// A real 3x2 JPEG from the image crate's encoder.
    pub(crate) fn tiny_jpeg() -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut out)
            .encode(&[128u8; 3 * 2 * 3], 3, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn jpeg_header_checks() {
        let ok = tiny_jpeg();
        assert_eq!(jpeg_dimensions(&ok, 1 << 20).unwrap(), (3, 2));
        assert_eq!(jpeg_dimensions(&[], 10).unwrap_err().code(), INVALID_FRAME);
        assert_eq!(
            jpeg_dimensions(b"\x89PNG\r\n\x1a\n", 100)
                .unwrap_err()
                .code(),
            INVALID_FRAME
        );
        assert_eq!(
            jpeg_dimensions(&ok[..5], 100).unwrap_err().code(),
            INVALID_FRAME
        );
        assert!(matches!(
            jpeg_dimensions(&ok, 4).unwrap_err(),
            IngestError::TooLarge(_)
        ));
        let mut zero = ok.clone();
        let sof = zero.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        zero[sof + 5..sof + 7].copy_from_slice(&[0, 0]); // height 0
        assert_eq!(
            jpeg_dimensions(&zero, 1 << 20).unwrap_err().code(),
            INVALID_FRAME
        );
    }

    #[test]
    fn frame_times() {
        assert_eq!(frame_time(None, &clock()).unwrap(), NOW);
        assert_eq!(
            frame_time(Some("2025-09-24T09:10:15Z"), &clock()).unwrap(),
            NOW
        );
        assert_eq!(
            frame_time(Some("bad"), &clock()).unwrap_err().code(),
            INVALID_FRAME
        );
        assert_eq!(
            frame_time(Some("2030-01-01T00:00:00Z"), &clock())
                .unwrap_err()
                .code(),
            INVALID_FRAME
        );
    }
}
