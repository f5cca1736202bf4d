//! Synthetic camera frames: a drone's top-down view of fields and a road, or
//! a vessel's view of sea and sky, with one moving object (whose box the
//! simulated detections report) and the capture time burnt in. Every frame
//! differs, so a stored frame can be matched to the message that carried it.

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};

use super::point::Rfc3339;
use super::track::Kind;

/// A rendered frame: the JPEG and where the moving object is.
pub struct Rendered {
    pub jpeg: Vec<u8>,
    /// `[x_min, y_min, x_max, y_max]`, normalised 0..1.
    pub bbox: [f32; 4],
    pub class: &'static str,
}

#[derive(Debug, Clone)]
pub struct Scene {
    kind: Kind,
    width: u32,
    height: u32,
    seed: u32,
    /// Cycles of the object's path per frame, so vehicles' objects move differently.
    speed: f32,
    object_color: [u8; 3],
}

impl Scene {
    pub fn new(kind: Kind, width: u32, height: u32, seed: u64) -> Self {
        let h = hash(seed as u32, (seed >> 32) as u32, 0x9e37);
        let palette = [
            [200, 40, 40],
            [240, 200, 30],
            [30, 60, 200],
            [230, 230, 230],
            [20, 20, 20],
        ];
        Self {
            kind,
            width,
            height,
            seed: h,
            speed: 0.004 + (h % 100) as f32 / 100.0 * 0.006,
            object_color: palette[(h >> 8) as usize % palette.len()],
        }
    }

    /// Renders frame `n` captured at `time_us`.
    pub fn render(&self, n: u64, time_us: i64) -> Rendered {
        let (w, h) = (self.width as f32, self.height as f32);
        let t = n as f32;
        let mut img = match self.kind {
            Kind::Drone => self.ground(t),
            Kind::Vessel => self.sea(t),
        };

        // The object follows a Lissajous path inside the frame.
        let phase = (self.seed % 628) as f32 / 100.0;
        let a = std::f32::consts::TAU * self.speed * t + phase;
        let (class, ow, oh, cx, cy) = match self.kind {
            Kind::Drone => {
                let class = if self.seed.is_multiple_of(2) {
                    "car"
                } else {
                    "person"
                };
                let (ow, oh) = if class == "car" {
                    (w * 0.09, h * 0.07)
                } else {
                    (w * 0.035, h * 0.06)
                };
                (
                    class,
                    ow,
                    oh,
                    0.5 + 0.35 * a.sin(),
                    0.5 + 0.3 * (2.0 * a).sin(),
                )
            }
            Kind::Vessel => (
                "boat",
                w * 0.12,
                h * 0.06,
                0.5 + 0.4 * a.sin(),
                0.55 + 0.05 * (0.5 * a).cos(),
            ),
        };
        let x0 = (cx * w - ow / 2.0).clamp(0.0, w - ow);
        let y0 = (cy * h - oh / 2.0).clamp(0.0, h - oh);
        fill_rect(
            &mut img,
            x0 as u32,
            y0 as u32,
            ow as u32,
            oh as u32,
            [15, 15, 15],
        );
        fill_rect(
            &mut img,
            x0 as u32 + 2,
            y0 as u32 + 2,
            (ow as u32).saturating_sub(4),
            (oh as u32).saturating_sub(4),
            self.object_color,
        );

        let scale = (self.width / 320).clamp(1, 4);
        let stamp = Rfc3339(time_us).to_string();
        let label = format!("#{n:06}");
        let line_h = 9 * scale;
        fill_rect(
            &mut img,
            0,
            0,
            (stamp.len() as u32 * 6 + 2) * scale,
            2 * line_h + 2 * scale,
            [0, 0, 0],
        );
        draw_text(&mut img, scale, scale, scale, &stamp);
        draw_text(&mut img, scale, scale + line_h, scale, &label);

        let mut jpeg = Vec::with_capacity((self.width * self.height / 8) as usize);
        // Encoding into a Vec fails only on impossible dimensions, which the CLI rules out.
        let _ = JpegEncoder::new_with_quality(&mut jpeg, 80).encode_image(&img);
        Rendered {
            jpeg,
            bbox: [x0 / w, y0 / h, (x0 + ow) / w, (y0 + oh) / h],
            class,
        }
    }

    /// Fields seen from above, drifting as the drone flies, crossed by a road.
    fn ground(&self, t: f32) -> RgbImage {
        let (dx, dy) = (t * 3.0, t * 1.5);
        let road_x = self.width as f32 * 0.3;
        RgbImage::from_fn(self.width, self.height, |x, y| {
            let (fx, fy) = (x as f32 + dx, y as f32 + dy);
            let n = value_noise(fx / 90.0, fy / 90.0, self.seed);
            let fine = value_noise(fx / 9.0, fy / 9.0, self.seed ^ 0xabcd);
            let road = ((x as f32 - road_x) - 0.2 * (y as f32)).abs() < 10.0;
            if road {
                let g = 90 + (fine * 20.0) as u8;
                Rgb([g, g, g])
            } else {
                let g = 0.55 + 0.35 * n + 0.1 * fine;
                Rgb([
                    (70.0 * g + 50.0 * n) as u8,
                    (150.0 * g) as u8,
                    (60.0 * g) as u8,
                ])
            }
        })
    }

    /// Sky above a horizon, sea below with moving swell.
    fn sea(&self, t: f32) -> RgbImage {
        let horizon = self.height as f32 * 0.4;
        RgbImage::from_fn(self.width, self.height, |x, y| {
            let yf = y as f32;
            if yf < horizon {
                let k = yf / horizon;
                Rgb([(120.0 + 60.0 * k) as u8, (170.0 + 50.0 * k) as u8, 235])
            } else {
                let d = (yf - horizon) / (self.height as f32 - horizon);
                let swell = ((x as f32 / (12.0 + 30.0 * d)) + t * 0.3 + yf / 7.0).sin();
                let n = value_noise(x as f32 / 40.0 + t * 0.05, yf / 15.0, self.seed);
                let b = 0.6 + 0.2 * swell + 0.2 * n;
                Rgb([
                    (20.0 * b) as u8,
                    (70.0 * b + 20.0 * d) as u8,
                    (140.0 * b + 40.0 * d) as u8,
                ])
            }
        })
    }
}

fn hash(x: u32, y: u32, seed: u32) -> u32 {
    let mut h =
        x.wrapping_mul(0x27d4_eb2d) ^ y.wrapping_mul(0x1656_67b1) ^ seed.wrapping_mul(0x9e37_79b9);
    h ^= h >> 15;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h
}

/// Smooth pseudo-random value in 0..1 (bilinear value noise).
fn value_noise(x: f32, y: f32, seed: u32) -> f32 {
    let (xi, yi) = (x.floor(), y.floor());
    let (fx, fy) = (x - xi, y - yi);
    let (xi, yi) = (xi as i32 as u32, yi as i32 as u32);
    let v = |dx: u32, dy: u32| {
        (hash(xi.wrapping_add(dx), yi.wrapping_add(dy), seed) & 0xffff) as f32 / 65535.0
    };
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let top = v(0, 0) + (v(1, 0) - v(0, 0)) * sx;
    let bottom = v(0, 1) + (v(1, 1) - v(0, 1)) * sx;
    top + (bottom - top) * sy
}

fn fill_rect(img: &mut RgbImage, x0: u32, y0: u32, w: u32, h: u32, color: [u8; 3]) {
    let (iw, ih) = img.dimensions();
    for y in y0..(y0 + h).min(ih) {
        for x in x0..(x0 + w).min(iw) {
            img.put_pixel(x, y, Rgb(color));
        }
    }
}

/// 5x7 glyphs for the characters of an RFC 3339 time and a frame number.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        _ => [0; 7],
    }
}

fn draw_text(img: &mut RgbImage, x0: u32, y0: u32, scale: u32, text: &str) {
    for (i, c) in text.chars().enumerate() {
        let gx = x0 + i as u32 * 6 * scale;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) != 0 {
                    fill_rect(
                        img,
                        gx + col * scale,
                        y0 + row as u32 * scale,
                        scale,
                        scale,
                        [255, 255, 255],
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(jpeg: &[u8]) -> RgbImage {
        image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8()
    }

    #[test]
    fn frames_decode_at_the_right_size() {
        for (kind, w, h) in [
            (Kind::Drone, 640, 480),
            (Kind::Vessel, 320, 240),
            (Kind::Drone, 33, 97),
        ] {
            let r = Scene::new(kind, w, h, 1).render(0, 1_758_705_015_000_000);
            assert_eq!(&r.jpeg[..2], &[0xFF, 0xD8], "JPEG magic");
            let img = decode(&r.jpeg);
            assert_eq!(img.dimensions(), (w, h));
            let [x0, y0, x1, y1] = r.bbox;
            assert!(
                0.0 <= x0 && x0 < x1 && x1 <= 1.0 && 0.0 <= y0 && y0 < y1 && y1 <= 1.0,
                "{:?}",
                r.bbox
            );
        }
    }

    #[test]
    fn frames_differ_and_the_object_moves() {
        let scene = Scene::new(Kind::Drone, 320, 240, 5);
        let a = scene.render(1, 1_000_000);
        let b = scene.render(2, 1_500_000);
        let c = scene.render(40, 21_000_000);
        assert_ne!(a.jpeg, b.jpeg);
        let (ia, ib) = (decode(&a.jpeg), decode(&b.jpeg));
        let differing = ia
            .pixels()
            .zip(ib.pixels())
            .filter(|(p, q)| p.0.iter().zip(q.0.iter()).any(|(x, y)| x.abs_diff(*y) > 40));
        assert!(differing.count() > 100, "consecutive frames look the same");
        assert_ne!(a.bbox, c.bbox, "the object should move");
        // Same frame number and time: same picture (frames are reproducible).
        assert_eq!(scene.render(1, 1_000_000).jpeg, a.jpeg);
    }

    #[test]
    fn the_object_is_where_the_box_says() {
        let scene = Scene::new(Kind::Vessel, 640, 480, 9);
        let r = scene.render(17, 0);
        let img = decode(&r.jpeg);
        let cx = ((r.bbox[0] + r.bbox[2]) / 2.0 * 640.0) as u32;
        let cy = ((r.bbox[1] + r.bbox[3]) / 2.0 * 480.0) as u32;
        let p = img.get_pixel(cx, cy).0;
        let want = scene.object_color;
        assert!(
            p.iter().zip(want.iter()).all(|(a, b)| a.abs_diff(*b) < 40),
            "{p:?} vs {want:?}"
        );
        assert_eq!(r.class, "boat");
    }
}
