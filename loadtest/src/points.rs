//! Synthetic telemetry and its wire forms. Every point carries
//! `lt_sent_us` (unix µs when it was due to be sent) as a custom metric, so
//! send → stored latency can be computed from the stored rows alone.

use std::io::Write;

use fleetwatch_proto::v1::TelemetryPoint;

/// The custom metric holding the send time.
pub const SENT_METRIC: &str = "lt_sent_us";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pt {
    pub time_us: i64,
    pub lat: f64,
    pub lon: f64,
    pub alt: f64,
    pub speed: f64,
    pub heading: f64,
    pub battery: f64,
}

/// A vehicle circling its home point once every 10 minutes; cheap to compute
/// so the loader spends its CPU on sending.
pub fn synth(vehicle: usize, time_us: i64) -> Pt {
    let home_lat = 59.40 + (vehicle % 100) as f64 * 0.001;
    let home_lon = 24.70 + (vehicle / 100) as f64 * 0.001;
    let angle = (time_us as f64 / 600e6) * std::f64::consts::TAU;
    Pt {
        time_us,
        lat: home_lat + 0.002 * angle.sin(),
        lon: home_lon + 0.004 * angle.cos(),
        alt: 100.0,
        speed: 12.0,
        heading: (angle.to_degrees() + 90.0).rem_euclid(360.0),
        battery: 80.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// One JSON array per request.
    Json,
    /// One JSON object per line.
    Ndjson,
}

fn rfc3339(out: &mut Vec<u8>, time_us: i64) {
    if let Some(t) = chrono::DateTime::from_timestamp_micros(time_us) {
        let _ = write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
    }
}

/// Appends one point as a JSON object.
pub fn write_point(out: &mut Vec<u8>, vehicle_id: &str, p: &Pt, sent_us: i64) {
    out.extend_from_slice(b"{\"vehicle_id\":\"");
    out.extend_from_slice(vehicle_id.as_bytes());
    out.extend_from_slice(b"\",\"timestamp\":\"");
    rfc3339(out, p.time_us);
    let _ = write!(
        out,
        "\",\"lat\":{:.7},\"lon\":{:.7},\"alt\":{:.2},\"speed\":{:.2},\"heading\":{:.1},\"battery\":{:.1},\"{SENT_METRIC}\":{sent_us}}}",
        p.lat, p.lon, p.alt, p.speed, p.heading, p.battery
    );
}

/// A request body for `points`: a JSON array, or NDJSON.
pub fn write_body(
    out: &mut Vec<u8>,
    format: BodyFormat,
    vehicle_id: &str,
    points: &[Pt],
    sent_us: i64,
) {
    out.clear();
    match format {
        BodyFormat::Json => {
            out.push(b'[');
            for (i, p) in points.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_point(out, vehicle_id, p, sent_us);
            }
            out.push(b']');
        }
        BodyFormat::Ndjson => {
            for p in points {
                write_point(out, vehicle_id, p, sent_us);
                out.push(b'\n');
            }
        }
    }
}

pub fn to_proto(vehicle_id: &str, p: &Pt, sent_us: i64) -> TelemetryPoint {
    TelemetryPoint {
        vehicle_id: vehicle_id.to_string(),
        time_unix_us: p.time_us,
        lat: Some(p.lat),
        lon: Some(p.lon),
        alt: Some(p.alt),
        speed: Some(p.speed),
        heading: Some(p.heading),
        battery: Some(p.battery),
        // Unix µs stay below 2^53 until the year 2255, so f64 holds them exactly.
        metrics: [(SENT_METRIC.to_string(), sent_us as f64)].into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_parse_and_carry_the_send_time() {
        let pts = [
            synth(3, 1_758_705_015_123_456),
            synth(3, 1_758_705_015_223_456),
        ];
        let mut buf = Vec::new();
        write_body(
            &mut buf,
            BodyFormat::Json,
            "lt-0003",
            &pts,
            1_758_705_016_000_001,
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[0]["vehicle_id"], "lt-0003");
        assert_eq!(v[0]["timestamp"], "2025-09-24T09:10:15.123456Z");
        assert_eq!(v[1][SENT_METRIC].as_i64(), Some(1_758_705_016_000_001));
        assert!(v[0]["lat"].as_f64().unwrap() > 59.0);

        write_body(&mut buf, BodyFormat::Ndjson, "lt-0003", &pts, 7);
        let lines: Vec<serde_json::Value> = buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["timestamp"], "2025-09-24T09:10:15.223456Z");
    }

    #[test]
    fn synthetic_points_are_valid_telemetry() {
        for t in [0i64, 1_758_705_015_123_456, 1_900_000_000_000_000] {
            let p = synth(1234, t);
            assert!((-90.0..=90.0).contains(&p.lat) && (-180.0..=180.0).contains(&p.lon));
            assert!((0.0..360.0).contains(&p.heading));
        }
        let p = to_proto("v", &synth(0, 5), 1_758_705_016_000_001);
        assert_eq!(p.metrics[SENT_METRIC], 1_758_705_016_000_001.0);
        assert_eq!(p.time_unix_us, 5);
    }
}
