//! JPEG in, model input out: decode (with limits checked before any pixel is
//! decoded), letterbox into the model's `H x W` keeping the aspect ratio (pad
//! grey 114 like ultralytics), and write planar RGB floats 0..1.

use fast_image_resize as fr;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Why a frame can never be inferred; the text goes to the DLQ / gRPC error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame data is empty")]
    Empty,
    #[error("frame data is {size} bytes, more than the {limit}-byte limit")]
    TooManyBytes { size: usize, limit: usize },
    #[error("content type {0:?} is not supported (image/jpeg only)")]
    ContentType(String),
    #[error("frame data is not a JPEG (no SOI marker)")]
    NotJpeg,
    #[error("JPEG is {width}x{height}, more than the {limit}-pixel limit")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("JPEG has zero width or height")]
    ZeroSize,
    #[error("undecodable JPEG: {0}")]
    Decode(String),
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_pixels: u64,
}

/// A decoded RGB8 image.
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Where the original image sits inside the model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub pad_x: f32,
    pub pad_y: f32,
    pub orig_w: u32,
    pub orig_h: u32,
}

/// Checks the content type (empty means JPEG).
pub fn check_content_type(content_type: &str) -> Result<(), FrameError> {
    let ct = content_type.trim().to_ascii_lowercase();
    if ct.is_empty() || ct == "image/jpeg" || ct == "image/jpg" {
        Ok(())
    } else {
        Err(FrameError::ContentType(content_type.to_string()))
    }
}

pub fn decode_jpeg(data: &[u8], limits: Limits) -> Result<Rgb, FrameError> {
    if data.is_empty() {
        return Err(FrameError::Empty);
    }
    if data.len() > limits.max_bytes {
        return Err(FrameError::TooManyBytes {
            size: data.len(),
            limit: limits.max_bytes,
        });
    }
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err(FrameError::NotJpeg);
    }
    // Strict: a truncated or corrupt scan is an error, not a grey image.
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(true)
        .set_max_width(u16::MAX as usize)
        .set_max_height(u16::MAX as usize);
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(data), options);
    dec.decode_headers()
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    let (w, h) = dec
        .dimensions()
        .map(|(w, h)| (w as u32, h as u32))
        .ok_or_else(|| FrameError::Decode("no frame header".into()))?;
    if w == 0 || h == 0 {
        return Err(FrameError::ZeroSize);
    }
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(FrameError::TooManyPixels {
            width: w,
            height: h,
            limit: limits.max_pixels,
        });
    }
    // zune-jpeg 0.5.15 panics on some corrupt scans (its AVX2 IDCT unwraps an
    // out-of-range slice; found by fuzz/jpeg_decode). A panic would fail the
    // blocking task, which the consumer retries forever: refuse the frame.
    let pixels = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dec.decode()))
        .map_err(|_| FrameError::Decode("the JPEG decoder panicked on this data".into()))?
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if pixels.len() != w as usize * h as usize * 3 {
        return Err(FrameError::Decode(format!(
            "decoded {} bytes for a {w}x{h} RGB image",
            pixels.len()
        )));
    }
    Ok(Rgb {
        width: w,
        height: h,
        pixels,
    })
}

/// The letterbox geometry of a `w x h` image in a `dst_w x dst_h` input.
pub fn letterbox_geometry(w: u32, h: u32, dst_w: usize, dst_h: usize) -> (Letterbox, u32, u32) {
    let scale = (dst_w as f32 / w as f32).min(dst_h as f32 / h as f32);
    let nw = ((w as f32 * scale).round() as u32).clamp(1, dst_w as u32);
    let nh = ((h as f32 * scale).round() as u32).clamp(1, dst_h as u32);
    let pad_x = ((dst_w as u32 - nw) / 2) as f32;
    let pad_y = ((dst_h as u32 - nh) / 2) as f32;
    (
        Letterbox {
            scale,
            pad_x,
            pad_y,
            orig_w: w,
            orig_h: h,
        },
        nw,
        nh,
    )
}

const PAD: f32 = 114.0 / 255.0;

/// Resizes `img` into `out` (`[3, dst_h, dst_w]` planar floats 0..1,
/// `out.len() == 3 * dst_h * dst_w`), padding with grey.
pub fn letterbox_into(img: &Rgb, dst_w: usize, dst_h: usize, out: &mut [f32]) -> Letterbox {
    let (lb, nw, nh) = letterbox_geometry(img.width, img.height, dst_w, dst_h);
    let resized;
    let src: &[u8] = if nw == img.width && nh == img.height {
        &img.pixels
    } else {
        resized = resize(img, nw, nh);
        &resized
    };
    let plane = dst_w * dst_h;
    out.fill(PAD);
    let (px, py) = (lb.pad_x as usize, lb.pad_y as usize);
    let (nw, nh) = (nw as usize, nh as usize);
    let lut: [f32; 256] = std::array::from_fn(|i| i as f32 / 255.0);
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for y in 0..nh {
        let row = &src[y * nw * 3..(y + 1) * nw * 3];
        let o = (y + py) * dst_w + px;
        let (r, g, b) = (&mut r[o..o + nw], &mut g[o..o + nw], &mut b[o..o + nw]);
        for (x, p) in row.chunks_exact(3).enumerate() {
            r[x] = lut[p[0] as usize];
            g[x] = lut[p[1] as usize];
            b[x] = lut[p[2] as usize];
        }
    }
    lb
}

fn resize(img: &Rgb, nw: u32, nh: u32) -> Vec<u8> {
    let src =
        match fr::images::ImageRef::new(img.width, img.height, &img.pixels, fr::PixelType::U8x3) {
            Ok(s) => s,
            // decode_jpeg guarantees the buffer size; keep the frame usable anyway.
            Err(_) => return vec![114; nw as usize * nh as usize * 3],
        };
    let mut dst = fr::images::Image::new(nw, nh, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    if fr::Resizer::new().resize(&src, &mut dst, &options).is_err() {
        return vec![114; nw as usize * nh as usize * 3];
    }
    dst.into_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_pixels: 4096 * 4096,
    };

    fn jpeg(w: u32, h: u32, color: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb(color));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn decodes_and_letterboxes() {
        let data = jpeg(128, 64, [255, 0, 0]);
        let img = decode_jpeg(&data, LIMITS).unwrap();
        assert_eq!((img.width, img.height), (128, 64));
        let mut out = vec![0.0; 3 * 64 * 64];
        let lb = letterbox_into(&img, 64, 64, &mut out);
        assert_eq!(lb.scale, 0.5);
        assert_eq!((lb.pad_x, lb.pad_y), (0.0, 16.0));
        // Top padding is grey, the middle red.
        assert!((out[0] - PAD).abs() < 1e-6);
        let mid = 32 * 64 + 32;
        assert!(out[mid] > 0.95 && out[64 * 64 + mid] < 0.05);
    }

    #[test]
    fn rejects_bad_frames_with_reasons() {
        assert_eq!(decode_jpeg(&[], LIMITS).err(), Some(FrameError::Empty));
        assert_eq!(
            decode_jpeg(b"GIF89a....", LIMITS).err(),
            Some(FrameError::NotJpeg)
        );
        let data = jpeg(64, 64, [1, 2, 3]);
        let truncated = &data[..data.len() / 2];
        assert!(matches!(
            decode_jpeg(truncated, LIMITS),
            Err(FrameError::Decode(_))
        ));
        let small = Limits {
            max_bytes: 10,
            max_pixels: 1,
        };
        assert!(matches!(
            decode_jpeg(&data, small),
            Err(FrameError::TooManyBytes { .. })
        ));
        let few_pixels = Limits {
            max_bytes: 1 << 20,
            max_pixels: 63 * 64,
        };
        assert!(matches!(
            decode_jpeg(&data, few_pixels),
            Err(FrameError::TooManyPixels { .. })
        ));
        assert!(check_content_type("image/png").is_err());
        assert!(check_content_type("").is_ok());
        assert!(check_content_type("image/jpeg").is_ok());
    }

    /// A 24x24 baseline JPEG whose third component is sampled 2x4 against a
    /// 1x1 luma: zune-jpeg 0.5.15's AVX2 IDCT panics on its scan (found by
    /// fuzz/jpeg_decode, fuzz/regressions/jpeg_decode/zune-avx2-idct-panic).
    /// Ingest accepts its header, so it reaches the frames consumer, which
    /// retried the panicking decode forever. It must come back as an error.
    #[test]
    fn a_panicking_decoder_is_a_decode_error() {
        const FRAME: &[u8] = b"\
        \xff\xd8\xff\xdb\x00\x43\x00\x08\x06\x06\x07\x06\x05\x08\x07\x07\x07\x09\x09\x08\x0a\x0c\x14\x0d\
        \x0c\x0b\x0b\x0c\x19\x12\x13\x0f\x14\x1d\x1a\x1f\x1e\x1d\x1a\x1c\x1c\x20\x24\x2e\x27\x20\x22\x2c\
        \x23\x1c\x1c\x28\x37\x29\x2c\x30\x31\x34\x34\x34\x1f\x27\x39\x3d\x38\x32\x3c\x2e\x33\x34\x32\xff\
        \xdb\x00\x43\x01\x09\x09\x09\x0c\x0b\x0c\x18\x0d\x0d\x18\x32\x21\x1c\x21\x32\x32\x32\x32\x32\x32\
        \x32\x32\x30\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\
        \x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\x32\xff\xc0\x00\x11\
        \x08\x00\x18\x00\x18\x03\x01\x11\x00\x02\x11\x01\x03\x24\x01\xff\xc4\x00\x1f\x00\x00\x01\x05\x01\
        \x01\x01\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\
        \xff\xc4\x00\xb5\x10\x00\x02\x01\x03\x03\x02\x04\x03\x05\x05\x04\x04\x00\x00\x01\x7d\x01\x02\x03\
        \x00\x04\x11\x05\x12\x21\x31\x41\x06\x13\x51\x61\x07\x22\x71\x14\x32\x81\x91\xa1\x08\x23\x42\xb1\
        \xc1\x15\x52\xd1\xf0\x24\x33\x62\x72\x82\x09\x0a\x16\x17\x18\x19\x1a\x79\x7a\x83\x84\x85\x86\x87\
        \x88\x89\x8a\x92\x93\x94\x95\x96\x97\x98\x99\x9a\xa2\xa3\xa4\xa5\xa6\xa7\xa8\xa9\xaa\xb2\xb3\xb4\
        \xb5\xb6\xb7\xb8\xb9\xba\xc2\x00\xd9\x00\x00\x00\x00\x00\x02\x01\x03\x04\x11\x21\xff\xda\x00\x08\
        \x01\x01\x00\x01\x28\x05\x02\x4c\x13\x2f\x08\xc9\xe5\x75\xa9\x5d\x6a\x45\x6a\x7f\xff\xc4\x00\x19\
        \x11\x00\x02\x03\x01\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\x55\x00\x00\x01\x02\x04\x05\x11\xff\
        \xda\x00\x08\x01\x03\x00\x00\x00\x00\x02\x01\x03\x04\x11\x21\xff\xda\x00\x08\x01\x01\x00\x01\x28\
        \x02\xff\xd9";
        match decode_jpeg(FRAME, LIMITS) {
            // Without AVX2 the scalar IDCT may decode it; anything but a panic.
            Ok(img) => assert_eq!(img.pixels.len(), 24 * 24 * 3),
            Err(e) => assert!(matches!(e, FrameError::Decode(_)), "{e}"),
        }
    }
}
