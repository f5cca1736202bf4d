//! Ingest's JPEG header check `jpeg_dimensions` (HTTP and gRPC frames): the
//! `image` crate reads the dimensions without decoding the scan.
#![no_main]

use fleetwatch_fuzz::limits;
use fleetwatch_ingest::parse::jpeg_dimensions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((w, h)) = jpeg_dimensions(data, limits().max_frame_bytes) {
        assert!(w > 0 && h > 0, "accepted a {w}x{h} frame");
    }
});
