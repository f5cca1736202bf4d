//! `fleet.frames.v1` records: protobuf decode, persistence's `validate_frame`
//! (with the object key), inference's content-type check, `fleetctl tail`'s
//! rendering (frame bytes left out, as it prints them), and ingest's gRPC
//! frame checks (`jpeg_dimensions`, `check_frame_time`), whose accepted
//! frames persistence must accept. JPEG decoding has its own targets.
//! Input: a flag byte (see `split_flags`), then the record value.
#![no_main]

use fleetwatch_fuzz::{NOW_US, VEHICLE, clock, limits, record, render, split_flags};
use fleetwatch_inference::preprocess::check_content_type;
use fleetwatch_ingest::parse::{check_frame_time, jpeg_dimensions};
use fleetwatch_persistence::writer::validate_frame;
use fleetwatch_proto::v1::Frame;
use fleetwatch_proto::{message_types, topics};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let (flags, payload) = split_flags(data);
    render(message_types::FRAME, payload);
    let mut rec = record(topics::FRAMES, Some(VEHICLE), payload);
    let Ok(frame) = rec.decode::<Frame>() else {
        return;
    };
    if flags & 1 == 1 {
        rec.key = Some(frame.vehicle_id.clone().into_bytes());
    }
    let _ = fleetwatch_db::valid_vehicle_id(&frame.vehicle_id);
    let _ = check_content_type(&frame.content_type);
    let _ = fleetwatch_objectstore::frame_key(&frame.vehicle_id, frame.time_unix_us, &frame.content_type);
    let _ = validate_frame(&rec, frame.clone());

    // Ingest's gRPC `SendFrame` checks, as in the handler.
    let mut grpc = frame;
    if !grpc.content_type.is_empty() && !grpc.content_type.eq_ignore_ascii_case("image/jpeg") {
        return;
    }
    let clock = clock();
    let Ok((w, h)) = jpeg_dimensions(&grpc.data, limits().max_frame_bytes) else {
        return;
    };
    let t = if grpc.time_unix_us == 0 { clock.now_us } else { grpc.time_unix_us };
    let Ok(t) = check_frame_time(t, &clock) else {
        return;
    };
    grpc.time_unix_us = t;
    grpc.vehicle_id = VEHICLE.to_string();
    grpc.content_type = "image/jpeg".into();
    grpc.width = w;
    grpc.height = h;
    grpc.received_unix_us = NOW_US;
    let rec = record(topics::FRAMES, Some(VEHICLE), &grpc.encode_to_vec());
    let decoded: Frame = rec.decode().expect("ingest's own record decodes");
    if let Err(e) = validate_frame(&rec, decoded) {
        panic!("ingest accepted a gRPC frame that persistence dead-letters: {e:?}");
    }
});
