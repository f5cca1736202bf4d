//! Model output to detections: best class per anchor, confidence threshold,
//! per-class non-maximum suppression, and boxes mapped from the letterboxed
//! input back to the original image, normalised 0..1.

use crate::preprocess::Letterbox;

/// One detection in original-image coordinates, normalised 0..1.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub class_id: usize,
    pub confidence: f32,
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub confidence: f32,
    pub iou: f32,
    pub max_detections: usize,
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    class_id: usize,
    score: f32,
    // x1, y1, x2, y2 in input pixels
    b: [f32; 4],
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// `out` is one image's `[rows, anchors]` slice (rows = 4 + classes).
pub fn detect(
    out: &[f32],
    rows: usize,
    anchors: usize,
    lb: &Letterbox,
    t: Thresholds,
) -> Vec<Found> {
    let classes = rows - 4;
    let row = |r: usize| &out[r * anchors..(r + 1) * anchors];
    // Best class per anchor, scanning class rows (contiguous memory).
    let mut best = vec![(0usize, f32::MIN); anchors];
    for c in 0..classes {
        for (a, s) in row(4 + c).iter().enumerate() {
            if *s > best[a].1 {
                best[a] = (c, *s);
            }
        }
    }
    let (cx, cy, w, h) = (row(0), row(1), row(2), row(3));
    let mut cands: Vec<Cand> = best
        .iter()
        .enumerate()
        .filter(|(_, (_, s))| *s >= t.confidence && s.is_finite())
        .map(|(a, (c, s))| Cand {
            class_id: *c,
            score: *s,
            b: [
                cx[a] - w[a] / 2.0,
                cy[a] - h[a] / 2.0,
                cx[a] + w[a] / 2.0,
                cy[a] + h[a] / 2.0,
            ],
        })
        .collect();
    // Highest score first; ties keep anchor order, so results are deterministic.
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Cand> = Vec::new();
    for c in cands {
        if kept.len() >= t.max_detections {
            break;
        }
        if kept
            .iter()
            .any(|k| k.class_id == c.class_id && iou(&k.b, &c.b) > t.iou)
        {
            continue;
        }
        kept.push(c);
    }
    kept.into_iter().map(|c| to_original(c, lb)).collect()
}

fn to_original(c: Cand, lb: &Letterbox) -> Found {
    let (w, h) = (lb.orig_w as f32, lb.orig_h as f32);
    let x = |v: f32| (((v - lb.pad_x) / lb.scale) / w).clamp(0.0, 1.0);
    let y = |v: f32| (((v - lb.pad_y) / lb.scale) / h).clamp(0.0, 1.0);
    Found {
        class_id: c.class_id,
        confidence: c.score,
        x_min: x(c.b[0]),
        y_min: y(c.b[1]),
        x_max: x(c.b[2]),
        y_max: y(c.b[3]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        confidence: 0.25,
        iou: 0.45,
        max_detections: 100,
    };
    const IDENTITY: Letterbox = Letterbox {
        scale: 1.0,
        pad_x: 0.0,
        pad_y: 0.0,
        orig_w: 100,
        orig_h: 100,
    };

    /// Output with `boxes` (cx, cy, w, h, class, score) as anchors, 2 classes.
    fn output(boxes: &[(f32, f32, f32, f32, usize, f32)]) -> Vec<f32> {
        let a = boxes.len();
        let mut out = vec![0.0; 6 * a];
        for (i, (cx, cy, w, h, c, s)) in boxes.iter().enumerate() {
            out[i] = *cx;
            out[a + i] = *cy;
            out[2 * a + i] = *w;
            out[3 * a + i] = *h;
            out[(4 + c) * a + i] = *s;
        }
        out
    }

    #[test]
    fn nms_is_per_class() {
        let out = output(&[
            (50.0, 50.0, 20.0, 20.0, 0, 0.9),
            (52.0, 50.0, 20.0, 20.0, 0, 0.8), // overlaps the first, same class: dropped
            (52.0, 50.0, 20.0, 20.0, 1, 0.7), // same place, other class: kept
            (10.0, 10.0, 10.0, 10.0, 0, 0.2), // below threshold
        ]);
        let f = detect(&out, 6, 4, &IDENTITY, T);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].class_id, f[0].confidence), (0, 0.9));
        assert_eq!((f[1].class_id, f[1].confidence), (1, 0.7));
        assert!((f[0].x_min - 0.4).abs() < 1e-6 && (f[0].y_max - 0.6).abs() < 1e-6);
    }

    #[test]
    fn maps_back_through_the_letterbox_and_clamps() {
        // A 200x100 image in a 100x100 input: scale 0.5, 25 px pad top.
        let lb = Letterbox {
            scale: 0.5,
            pad_x: 0.0,
            pad_y: 25.0,
            orig_w: 200,
            orig_h: 100,
        };
        let out = output(&[
            (50.0, 50.0, 20.0, 20.0, 0, 0.9),
            (2.0, 30.0, 10.0, 10.0, 1, 0.5),
        ]);
        let f = detect(&out, 6, 2, &lb, T);
        // x 40..60 -> 80..120 of 200; y 40..60 -> 30..70 of 100.
        assert!((f[0].x_min - 0.4).abs() < 1e-6 && (f[0].x_max - 0.6).abs() < 1e-6);
        assert!((f[0].y_min - 0.3).abs() < 1e-6 && (f[0].y_max - 0.7).abs() < 1e-6);
        assert_eq!(f[1].x_min, 0.0, "clamped at the left edge");
    }

    #[test]
    fn max_detections_keeps_the_best() {
        let out = output(&[
            (10.0, 10.0, 5.0, 5.0, 0, 0.5),
            (50.0, 50.0, 5.0, 5.0, 0, 0.9),
            (90.0, 90.0, 5.0, 5.0, 0, 0.7),
        ]);
        let t = Thresholds {
            max_detections: 2,
            ..T
        };
        let f = detect(&out, 6, 3, &IDENTITY, t);
        let scores: Vec<f32> = f.iter().map(|d| d.confidence).collect();
        assert_eq!(scores, vec![0.9, 0.7]);
    }
}
