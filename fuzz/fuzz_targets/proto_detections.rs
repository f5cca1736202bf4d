//! `fleet.detections.v1` records: protobuf decode, persistence's
//! `validate_detections`, incident's detection rules (`apply_detections`),
//! `fleetctl tail`'s rendering, and ingest's gRPC check
//! (`check_proto_detections`), whose accepted batches persistence must accept.
//! Input: a flag byte (see `split_flags`), then the record value.
#![no_main]

use fleetwatch_fuzz::{VEHICLE, clock, incident_time, limits, record, render, rules, split_flags};
use fleetwatch_incident::rules::{Params, State, applicable, apply_detections};
use fleetwatch_ingest::parse::check_proto_detections;
use fleetwatch_persistence::writer::validate_detections;
use fleetwatch_proto::v1::DetectionBatch;
use fleetwatch_proto::{message_types, topics};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let (flags, payload) = split_flags(data);
    render(message_types::DETECTION_BATCH, payload);
    let mut rec = record(topics::DETECTIONS, Some(VEHICLE), payload);
    let Ok(batch) = rec.decode::<DetectionBatch>() else {
        return;
    };
    if flags & 1 == 1 {
        rec.key = Some(batch.vehicle_id.clone().into_bytes());
    }
    let _ = fleetwatch_db::valid_vehicle_id(&batch.vehicle_id);
    let _ = validate_detections(&rec, batch.clone());

    if incident_time(batch.time_unix_us) {
        let rules = rules();
        for rule in applicable(&rules, &batch.vehicle_id) {
            if let Params::Detection(d) = &rule.params {
                let mut state = State::default();
                // Twice: the second frame meets `min_consecutive_frames` 2.
                let _ = apply_detections(d, &mut state, &batch, &batch.frame_key);
                let mut next = batch.clone();
                next.time_unix_us = next.time_unix_us.saturating_add(1);
                let _ = apply_detections(d, &mut state, &next, &next.frame_key);
            }
        }
    }

    let mut grpc = batch;
    if check_proto_detections(&mut grpc, VEHICLE, &limits(), &clock()).is_ok() {
        let rec = record(topics::DETECTIONS, Some(VEHICLE), &grpc.encode_to_vec());
        let decoded: DetectionBatch = rec.decode().expect("ingest's own record decodes");
        if let Err(e) = validate_detections(&rec, decoded) {
            panic!("ingest accepted gRPC detections that persistence dead-letters: {e:?}");
        }
    }
});
