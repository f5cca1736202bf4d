//! Telemetry points from JSON (the seed message, arrays, NDJSON) and from
//! protobuf, under one set of rules.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;

use fleetwatch_proto::v1::TelemetryPoint;

use super::{Clock, INVALID_TELEMETRY, Problems, Shape, check_ids, json_items, number, timestamp};
use crate::config::LimitsConfig;
use crate::error::IngestError;
use crate::json_point::{Item, JsonPoint, MetricsMember, STANDARD_FIELDS, Scalar};

/// Parsed telemetry of one request.
#[derive(Debug, Default)]
pub struct ParsedTelemetry {
    pub points: Vec<TelemetryPoint>,
    /// Non-numeric extra fields, not stored (reported back to the sender).
    pub ignored_fields: BTreeSet<String>,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::{NOW, clock, fields};
    use super::*;

    fn tel(body: &str) -> Result<ParsedTelemetry, IngestError> {
        parse_telemetry(
            body.as_bytes(),
            Shape::Any,
            "drone-01",
            &LimitsConfig::default(),
            &clock(),
        )
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
}
