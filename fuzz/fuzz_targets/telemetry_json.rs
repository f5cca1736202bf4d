//! Telemetry JSON (the seed message, arrays, NDJSON) through ingest's
//! `parse_telemetry`, as HTTP (`/api/v1/telemetry`, `/api/data`), the
//! vehicle WebSocket and MQTT call it. What ingest accepts (and so
//! acknowledges) must pass persistence's checks after the Kafka round trip.
#![no_main]

use fleetwatch_fuzz::{NOW_US, VEHICLE, clock, limits, record};
use fleetwatch_ingest::parse::{Shape, parse_telemetry};
use fleetwatch_persistence::writer::validate_telemetry;
use fleetwatch_proto::topics;
use fleetwatch_proto::v1::TelemetryBatch;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let (limits, clock) = (limits(), clock());
    // `/api/data` takes exactly one object; everything else any shape.
    let _ = parse_telemetry(data, Shape::Single, VEHICLE, &limits, &clock);
    let Ok(parsed) = parse_telemetry(data, Shape::Any, VEHICLE, &limits, &clock) else {
        return;
    };
    assert!(!parsed.points.is_empty(), "accepted a body without points");
    // The record ingest's sink produces for these points.
    let batch = TelemetryBatch {
        vehicle_id: VEHICLE.to_string(),
        points: parsed.points,
        source: "http".into(),
        received_unix_us: NOW_US,
    };
    let rec = record(topics::TELEMETRY, Some(VEHICLE), &batch.encode_to_vec());
    let decoded: TelemetryBatch = rec.decode().expect("ingest's own record decodes");
    if let Err(e) = validate_telemetry(&rec, decoded) {
        panic!("ingest accepted telemetry that persistence dead-letters: {e:?}");
    }
});
