//! Telemetry points and their wire forms (JSON for HTTP/MQTT, protobuf for gRPC).

use std::fmt;

use fleetwatch_proto::v1::TelemetryPoint;
use serde::Serialize;

use super::track::Sample;

/// One point of one vehicle; `Copy`, so a batch kept for a resend costs no allocation per point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub time_us: i64,
    pub sample: Sample,
}

/// RFC 3339 UTC with microseconds, formatted without allocating.
pub struct Rfc3339(pub i64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_micros(self.0) {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => Err(fmt::Error),
        }
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Serialize)]
struct PointJson<'a> {
    vehicle_id: &'a str,
    timestamp: Rfc3339,
    lat: f64,
    lon: f64,
    alt: f64,
    speed: f64,
    heading: f64,
    battery: f64,
    rssi: f64,
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

impl Point {
    fn json<'a>(&self, vehicle_id: &'a str) -> PointJson<'a> {
        let s = &self.sample;
        PointJson {
            vehicle_id,
            timestamp: Rfc3339(self.time_us),
            // ~1 cm: what a real GNSS reports, and keeps bodies small.
            lat: round(s.lat, 7),
            lon: round(s.lon, 7),
            alt: round(s.alt, 2),
            speed: round(s.speed, 2),
            heading: round(s.heading, 1),
            battery: round(s.battery, 2),
            rssi: s.rssi,
        }
    }

    /// Appends the point as one JSON object.
    pub fn write_json(&self, vehicle_id: &str, out: &mut Vec<u8>) {
        // Writing plain numbers and strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &self.json(vehicle_id));
    }

    pub fn to_proto(&self, vehicle_id: &str) -> TelemetryPoint {
        let s = &self.sample;
        TelemetryPoint {
            vehicle_id: vehicle_id.to_string(),
            time_unix_us: self.time_us,
            lat: Some(s.lat),
            lon: Some(s.lon),
            alt: Some(s.alt),
            speed: Some(s.speed),
            heading: Some(s.heading),
            battery: Some(s.battery),
            metrics: [("rssi".to_string(), s.rssi)].into(),
        }
    }
}

/// Writes one object for a single point, else a JSON array.
pub fn write_json_body(vehicle_id: &str, points: &[Point], out: &mut Vec<u8>) {
    out.clear();
    if let [p] = points {
        p.write_json(vehicle_id, out);
        return;
    }
    out.push(b'[');
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        p.write_json(vehicle_id, out);
    }
    out.push(b']');
}

/// Hands out sample times for one vehicle: close to now, `spacing_us` apart
/// within a batch, strictly increasing across batches (the natural key of a
/// point is vehicle + time, so a duplicate time would silently collapse).
#[derive(Debug, Default)]
pub struct Stamps {
    last_us: Option<i64>,
}

impl Stamps {
    pub fn next_batch(&mut self, now_us: i64, n: usize, spacing_us: i64, out: &mut Vec<i64>) {
        out.clear();
        let spacing = spacing_us.max(1);
        for j in 0..n {
            let ideal = now_us - (n - 1 - j) as i64 * spacing;
            let t = match self.last_us {
                Some(last) if ideal <= last => last + 1,
                _ => ideal,
            };
            self.last_us = Some(t);
            out.push(t);
        }
    }
}

/// One detection in the seed 001 message form.
#[derive(Debug, Clone, Serialize)]
pub struct Detection<'a> {
    pub class: &'a str,
    pub conf: f32,
    /// `[x_min, y_min, x_max, y_max]`, normalised 0..1, origin top-left.
    pub bbox: [f32; 4],
    pub track_id: &'a str,
}

/// Writes the seed 001 detection message for one frame.
pub fn write_detection_json(
    vehicle_id: &str,
    time_us: i64,
    frame_id: &str,
    det: &Detection<'_>,
    out: &mut Vec<u8>,
) {
    #[derive(Serialize)]
    struct Msg<'a> {
        vehicle_id: &'a str,
        timestamp: Rfc3339,
        detections: [&'a Detection<'a>; 1],
        frame_id: &'a str,
    }
    out.clear();
    let msg = Msg {
        vehicle_id,
        timestamp: Rfc3339(time_us),
        detections: [det],
        frame_id,
    };
    let _ = serde_json::to_writer(&mut *out, &msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            lat: 59.123456789,
            lon: 24.5,
            alt: 100.0,
            speed: 12.345,
            heading: 90.04,
            battery: 88.0,
            rssi: -60.5,
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_micros() {
        assert_eq!(
            Rfc3339(1_758_705_015_000_042).to_string(),
            "2025-09-24T09:10:15.000042Z"
        );
        let p = Point {
            time_us: 1_758_705_015_123_456,
            sample: sample(),
        };
        let mut buf = Vec::new();
        write_json_body("d-1", &[p], &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["vehicle_id"], "d-1");
        assert_eq!(v["timestamp"], "2025-09-24T09:10:15.123456Z");
        assert_eq!(v["lat"], 59.1234568);
        assert_eq!(v["rssi"], -60.5);
        let parsed =
            chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(parsed.timestamp_micros(), p.time_us);
    }

    #[test]
    fn batches_are_arrays() {
        let p = Point {
            time_us: 1,
            sample: sample(),
        };
        let mut buf = vec![b'x'];
        write_json_body("d", &[p, Point { time_us: 2, ..p }], &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[1]["timestamp"], "1970-01-01T00:00:00.000002Z");
    }

    #[test]
    fn stamps_strictly_increase() {
        let mut s = Stamps::default();
        let mut all = Vec::new();
        let mut out = Vec::new();
        // Batches of 10 at 1 kHz sent every 10 ms, then a clock that stalls
        // and even steps back: times must still increase.
        for (i, now) in [10_000i64, 20_000, 30_000, 30_000, 25_000, 40_000]
            .into_iter()
            .enumerate()
        {
            s.next_batch(now, 10, 1_000, &mut out);
            assert_eq!(out.len(), 10);
            assert!(
                *out.last().unwrap() <= now.max(all.last().copied().unwrap_or(0) + 10),
                "batch {i}"
            );
            all.extend_from_slice(&out);
        }
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
        assert_eq!(&all[..3], &[1_000, 2_000, 3_000]);
    }

    #[test]
    fn detection_message_follows_seed_001() {
        let mut buf = Vec::new();
        let det = Detection {
            class: "person",
            conf: 0.9,
            bbox: [0.1, 0.2, 0.3, 0.4],
            track_id: "t1",
        };
        write_detection_json("d", 0, "f-1", &det, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["detections"][0]["class"], "person");
        assert_eq!(v["detections"][0]["bbox"].as_array().unwrap().len(), 4);
        assert_eq!(v["frame_id"], "f-1");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn proto_points_keep_the_values() {
        let p = Point {
            time_us: 42,
            sample: sample(),
        }
        .to_proto("v");
        assert_eq!(p.time_unix_us, 42);
        assert_eq!(p.lat, Some(59.123456789));
        assert_eq!(p.metrics["rssi"], -60.5);
    }
}
