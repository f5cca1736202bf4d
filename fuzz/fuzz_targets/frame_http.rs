//! A vehicle's frame upload (`POST /api/v1/frames`, the seed's `/api/video`):
//! the timestamp (query parameter or `X-Frame-Timestamp`) through
//! `frame_time` and the JPEG body through `jpeg_dimensions`, the checks the
//! HTTP handler runs. Input: a length byte n, n bytes of timestamp (n = 0:
//! no timestamp, the receive time), then the body. A frame ingest accepts
//! must pass persistence's checks after the Kafka round trip.
#![no_main]

use fleetwatch_fuzz::{NOW_US, VEHICLE, clock, limits, record};
use fleetwatch_ingest::parse::{frame_time, jpeg_dimensions};
use fleetwatch_persistence::writer::validate_frame;
use fleetwatch_proto::topics;
use fleetwatch_proto::v1::Frame;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (timestamp, body) = rest.split_at(n);
    let timestamp = (n > 0).then_some(timestamp);
    // Header values and query parameters reach the handler as UTF-8 only.
    let timestamp = match timestamp.map(std::str::from_utf8) {
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => return,
        None => None,
    };
    let time = frame_time(timestamp, &clock());
    let Ok((width, height)) = jpeg_dimensions(body, limits().max_frame_bytes) else {
        return;
    };
    assert!(width > 0 && height > 0);
    let Ok(time) = time else { return };
    let frame = Frame {
        vehicle_id: VEHICLE.to_string(),
        time_unix_us: time,
        frame_id: String::new(),
        content_type: "image/jpeg".into(),
        data: body.to_vec(),
        width,
        height,
        received_unix_us: NOW_US,
    };
    let rec = record(topics::FRAMES, Some(VEHICLE), &frame.encode_to_vec());
    let decoded: Frame = rec.decode().expect("ingest's own record decodes");
    if let Err(e) = validate_frame(&rec, decoded) {
        panic!("ingest accepted a frame that persistence dead-letters: {e:?}");
    }
});
