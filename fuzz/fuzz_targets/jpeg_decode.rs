//! Inference's JPEG path: `decode_jpeg` (zune-jpeg, strict, with the
//! byte and pixel limits checked before decoding) and, for what decodes,
//! `letterbox_into` a square model input (64x64 here rather than YOLOv8's
//! 640x640: the same resize and padding code, a hundredth of the floats).
#![no_main]

use std::sync::Once;

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

/// libFuzzer's panic hook aborts on every panic, even one the code under test
/// catches. `decode_jpeg` catches zune-jpeg's panics in `decode` on purpose
/// (a refused frame, see fuzz/regressions/README.md), so a panic raised inside
/// zune-jpeg passes here; any other panic, and any zune-jpeg panic that
/// `decode_jpeg` does not catch (it unwinds out of the target), still crashes.
fn tolerate_caught_decoder_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_decoder = info
                .location()
                .is_some_and(|l| l.file().contains("/zune-jpeg-"));
            if !in_decoder {
                fuzzer_hook(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    tolerate_caught_decoder_panics();
    let Ok(img) = decode_jpeg(data, LIMITS) else {
        return;
    };
    assert_eq!(img.pixels.len(), img.width as usize * img.height as usize * 3);
    let mut input = vec![0f32; 3 * SIDE * SIDE];
    let lb = letterbox_into(&img, SIDE, SIDE, &mut input);
    assert!(lb.scale.is_finite() && lb.scale > 0.0, "{lb:?}");
    assert!(input.iter().all(|v| (0.0..=1.0).contains(v)));
});
