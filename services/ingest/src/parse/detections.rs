//! Detection batches from the seed's JSON detection message and from
//! protobuf, under one set of rules.

use fleetwatch_proto::v1::{BoundingBox, Detection, DetectionBatch};
use serde_json::{Map, Value};

use super::{
    Clock, INVALID_DETECTIONS, Problems, Shape, check_ids, json_items, malformed, number, timestamp,
};
use crate::config::LimitsConfig;
use crate::error::IngestError;
use crate::json_point::Scalar;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::{NOW, clock, fields};
    use super::*;

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
}
