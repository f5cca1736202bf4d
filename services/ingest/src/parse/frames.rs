//! Frame metadata: the frame's time and the JPEG header's dimensions.

use super::{Clock, INVALID_FRAME, parse_rfc3339};
use crate::error::{FieldError, IngestError};

/// A frame timestamp from a query parameter or header (absent = receive time).
pub fn frame_time(value: Option<&str>, clock: &Clock) -> Result<i64, IngestError> {
    let t = match value {
        None => clock.now_us,
        Some(s) => parse_rfc3339(s.trim()).map_err(|r| {
            IngestError::invalid(INVALID_FRAME, vec![FieldError::new("timestamp", r)])
        })?,
    };
    check_frame_time(t, clock)
}

pub fn check_frame_time(t: i64, clock: &Clock) -> Result<i64, IngestError> {
    clock
        .check(t)
        .map_err(|r| IngestError::invalid(INVALID_FRAME, vec![FieldError::new("timestamp", r)]))?;
    Ok(t)
}

/// Width and height of a JPEG, read from its header only (no decoding).
pub fn jpeg_dimensions(data: &[u8], max_bytes: usize) -> Result<(u32, u32), IngestError> {
    let invalid =
        |reason: &str| IngestError::invalid(INVALID_FRAME, vec![FieldError::new("frame", reason)]);
    if data.is_empty() {
        return Err(invalid("is empty"));
    }
    if data.len() > max_bytes {
        return Err(IngestError::TooLarge(format!(
            "frame of {} bytes exceeds the {max_bytes}-byte limit",
            data.len()
        )));
    }
    if !data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err(invalid("is not a JPEG (no SOI marker)"));
    }
    let reader =
        image::ImageReader::with_format(std::io::Cursor::new(data), image::ImageFormat::Jpeg);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| invalid(&format!("has an unreadable JPEG header: {e}")))?;
    if w == 0 || h == 0 {
        return Err(invalid("has zero width or height"));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::{NOW, clock};
    use super::*;

    /// A real 3x2 JPEG from the image crate's encoder.
    pub(crate) fn tiny_jpeg() -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut out)
            .encode(&[128u8; 3 * 2 * 3], 3, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn jpeg_header_checks() {
        let ok = tiny_jpeg();
        assert_eq!(jpeg_dimensions(&ok, 1 << 20).unwrap(), (3, 2));
        assert_eq!(jpeg_dimensions(&[], 10).unwrap_err().code(), INVALID_FRAME);
        assert_eq!(
            jpeg_dimensions(b"\x89PNG\r\n\x1a\n", 100)
                .unwrap_err()
                .code(),
            INVALID_FRAME
        );
        assert_eq!(
            jpeg_dimensions(&ok[..5], 100).unwrap_err().code(),
            INVALID_FRAME
        );
        assert!(matches!(
            jpeg_dimensions(&ok, 4).unwrap_err(),
            IngestError::TooLarge(_)
        ));
        let mut zero = ok.clone();
        let sof = zero.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        zero[sof + 5..sof + 7].copy_from_slice(&[0, 0]); // height 0
        assert_eq!(
            jpeg_dimensions(&zero, 1 << 20).unwrap_err().code(),
            INVALID_FRAME
        );
    }

    #[test]
    fn frame_times() {
        assert_eq!(frame_time(None, &clock()).unwrap(), NOW);
        assert_eq!(
            frame_time(Some("2025-09-24T09:10:15Z"), &clock()).unwrap(),
            NOW
        );
        assert_eq!(
            frame_time(Some("bad"), &clock()).unwrap_err().code(),
            INVALID_FRAME
        );
        assert_eq!(
            frame_time(Some("2030-01-01T00:00:00Z"), &clock())
                .unwrap_err()
                .code(),
            INVALID_FRAME
        );
    }
}
