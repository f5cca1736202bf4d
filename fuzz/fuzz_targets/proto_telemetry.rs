//! `fleet.telemetry.v1` records: protobuf decode (`Record::decode`), then
//! every consumer's checks — persistence's `validate_telemetry`, incident's
//! rule evaluation (`applicable` + `apply_point`), `fleetctl tail`'s
//! rendering — and ingest's gRPC check of the same points
//! (`check_proto_points`), whose accepted points persistence must accept.
//! Input: a flag byte (see `split_flags`), then the record value.
#![no_main]

use fleetwatch_fuzz::{NOW_US, VEHICLE, clock, incident_time, limits, record, render, rules, split_flags};
use fleetwatch_incident::rules::{State, applicable, apply_point};
use fleetwatch_ingest::parse::check_proto_points;
use fleetwatch_persistence::writer::validate_telemetry;
use fleetwatch_proto::v1::TelemetryBatch;
use fleetwatch_proto::{message_types, topics};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let (flags, payload) = split_flags(data);
    render(message_types::TELEMETRY_BATCH, payload);
    let mut rec = record(topics::TELEMETRY, Some(VEHICLE), payload);
    let Ok(batch) = rec.decode::<TelemetryBatch>() else {
        return;
    };
    if flags & 1 == 1 {
        rec.key = Some(batch.vehicle_id.clone().into_bytes());
    }
    let _ = fleetwatch_db::valid_vehicle_id(&batch.vehicle_id);
    let _ = validate_telemetry(&rec, batch.clone());

    // Incident: rules over the points in time order, once the times pass.
    if batch.points.iter().all(|p| incident_time(p.time_unix_us)) {
        let rules = rules();
        let mut points: Vec<_> = batch
            .points
            .iter()
            .map(|p| {
                let seen = if batch.received_unix_us > 0 { batch.received_unix_us } else { p.time_unix_us };
                (p, seen)
            })
            .collect();
        points.sort_by_key(|(p, seen)| (p.time_unix_us, *seen));
        for rule in applicable(&rules, &batch.vehicle_id) {
            let mut state = State::default();
            for (p, seen) in &points {
                let _ = apply_point(&rule.params, &mut state, p, *seen);
            }
        }
    }

    // Ingest's gRPC path: the same points as one chunk of the vehicle.
    let mut points = batch.points;
    if check_proto_points(&mut points, "chunk[0].", VEHICLE, &limits(), &clock()).is_ok() {
        let accepted = TelemetryBatch {
            vehicle_id: VEHICLE.to_string(),
            points,
            source: "grpc".into(),
            received_unix_us: NOW_US,
        };
        let rec = record(topics::TELEMETRY, Some(VEHICLE), &accepted.encode_to_vec());
        let decoded: TelemetryBatch = rec.decode().expect("ingest's own record decodes");
        if let Err(e) = validate_telemetry(&rec, decoded) {
            panic!("ingest accepted gRPC telemetry that persistence dead-letters: {e:?}");
        }
    }
});
