//! The seed-001 detection message through ingest's `parse_detections` (HTTP
//! `/api/v1/detections`, MQTT `fleet/+/detections`, `drone/+/detections`).
//! What ingest accepts must pass persistence's checks after the Kafka round
//! trip, and the incident rules must evaluate it.
#![no_main]

use fleetwatch_fuzz::{VEHICLE, clock, limits, record, rules};
use fleetwatch_incident::rules::{Params, State, apply_detections};
use fleetwatch_ingest::parse::parse_detections;
use fleetwatch_persistence::writer::validate_detections;
use fleetwatch_proto::topics;
use fleetwatch_proto::v1::DetectionBatch;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = parse_detections(data, VEHICLE, &limits(), &clock()) else {
        return;
    };
    let rec = record(topics::DETECTIONS, Some(VEHICLE), &batch.encode_to_vec());
    let decoded: DetectionBatch = rec.decode().expect("ingest's own record decodes");
    let item = match validate_detections(&rec, decoded) {
        Ok(item) => item,
        Err(e) => panic!("ingest accepted detections that persistence dead-letters: {e:?}"),
    };
    for rule in rules() {
        if let Params::Detection(d) = &rule.params {
            let mut state = State::default();
            let _ = apply_detections(d, &mut state, &item.batch, &item.batch.frame_key);
        }
    }
});
