//! Inference's JPEG path: `decode_jpeg` (zune-jpeg, strict, with the
//! byte and pixel limits checked before decoding) and, for what decodes,
//! `letterbox_into` a square model input (64x64 here rather than YOLOv8's
//! 640x640: the same resize and padding code, a hundredth of the floats).
#![no_main]

use fleetwatch_inference::preprocess::{Limits, decode_jpeg, letterbox_into};
use libfuzzer_sys::fuzz_target;

/// Inference's default `pipeline.max_frame_bytes`. The pixel limit is far
/// below its default (8192 x 8192): the decoder runs the same Huffman,
/// IDCT, upsampling and colour code at any size, while a large declared
/// image costs up to milliseconds per input (at 1 MP the target ran at
/// 3,400 executions/s); the limit check itself is the same code at any value.
const LIMITS: Limits = Limits {
    max_bytes: 8 * 1024 * 1024,
    max_pixels: 256 * 256,
};
const SIDE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = decode_jpeg(data, LIMITS) else {
        return;
    };
    assert_eq!(img.pixels.len(), img.width as usize * img.height as usize * 3);
    let mut input = vec![0f32; 3 * SIDE * SIDE];
    let lb = letterbox_into(&img, SIDE, SIDE, &mut input);
    assert!(lb.scale.is_finite() && lb.scale > 0.0, "{lb:?}");
    assert!(input.iter().all(|v| (0.0..=1.0).contains(v)));
});
