//! Rate scheduling: when each simulated vehicle sends its next batch, which
//! sample times the points of a batch carry, and how many points a vehicle had
//! sent up to a given sample time (for the live "stored" counter).

/// Point spacing and batch period, in microseconds, for `rate` points per
/// second per vehicle sent `batch` points at a time. Integers, so that the
/// schedule never drifts and sample times stay unique.
pub fn spacing_and_period_us(rate: f64, batch: usize) -> (i64, i64) {
    let spacing = ((1e6 / rate).round() as i64).max(1);
    (spacing, spacing * batch.max(1) as i64)
}

/// Open-loop pacing of one vehicle: batch `k` is due at
/// `start + phase + k * period`, whatever happened to earlier batches, so a
/// slow answer makes the vehicle late (and its latency counted from the due
/// time) instead of silently lowering the offered rate.
#[derive(Debug, Clone)]
pub struct Pacer {
    origin_us: i64,
    period_us: i64,
    k: u64,
}

impl Pacer {
    /// Vehicle `index` of `vehicles`: phases are spread evenly over one
    /// period, so the fleet's requests do not arrive in lock-step.
    pub fn new(start_us: i64, index: usize, vehicles: usize, period_us: i64) -> Self {
        let phase = period_us as i128 * index as i128 / vehicles.max(1) as i128;
        Self {
            origin_us: start_us + phase as i64,
            period_us,
            k: 0,
        }
    }

    pub fn due_us(&self, k: u64) -> i64 {
        self.origin_us + (k as i64) * self.period_us
    }

    /// The due time of the next batch.
    pub fn next_due(&mut self) -> i64 {
        let t = self.due_us(self.k);
        self.k += 1;
        t
    }

    /// How many batches were due by `now_us` but not taken yet.
    pub fn behind(&self, now_us: i64) -> u64 {
        if now_us < self.origin_us {
            return 0;
        }
        let due = ((now_us - self.origin_us) / self.period_us) as u64 + 1;
        due.saturating_sub(self.k)
    }
}

/// Sample times of one vehicle: the batch's last point at `at_us`, the others
/// `spacing_us` before it, strictly increasing across batches (the natural key
/// is vehicle + time, so a repeated time would silently collapse two points).
#[derive(Debug, Default)]
pub struct Stamps {
    last_us: Option<i64>,
}

impl Stamps {
    pub fn next_batch(&mut self, at_us: i64, n: usize, spacing_us: i64, out: &mut Vec<i64>) {
        out.clear();
        let spacing = spacing_us.max(1);
        for j in 0..n {
            let ideal = at_us - (n - 1 - j) as i64 * spacing;
            let t = match self.last_us {
                Some(last) if ideal <= last => last + 1,
                _ => ideal,
            };
            self.last_us = Some(t);
            out.push(t);
        }
    }
}

/// `batches` holds `(last sample time of the batch, points sent up to and
/// including that batch)`, in send order. Returns how many points have a
/// sample time `<= t`, counting whole batches (what persistence stores for a
/// vehicle arrives in order, so "newest stored time" = "all before it stored").
pub fn points_up_to(batches: &[(i64, u64)], t: i64) -> u64 {
    let i = batches.partition_point(|(last, _)| *last <= t);
    if i == 0 { 0 } else { batches[i - 1].1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_and_period() {
        assert_eq!(spacing_and_period_us(100.0, 100), (10_000, 1_000_000));
        assert_eq!(spacing_and_period_us(1.0, 1), (1_000_000, 1_000_000));
        assert_eq!(spacing_and_period_us(3.0, 10), (333_333, 3_333_330));
        // Absurd rates still give a positive spacing.
        assert_eq!(spacing_and_period_us(1e9, 5), (1, 5));
    }

    #[test]
    fn pacer_spreads_phases_and_keeps_period() {
        let p0 = Pacer::new(1_000, 0, 4, 1_000_000);
        let p3 = Pacer::new(1_000, 3, 4, 1_000_000);
        assert_eq!(p0.due_us(0), 1_000);
        assert_eq!(p3.due_us(0), 751_000);
        assert_eq!(p3.due_us(10), 10_751_000);
        let mut p = Pacer::new(0, 0, 1, 500);
        let dues: Vec<i64> = (0..4).map(|_| p.next_due()).collect();
        assert_eq!(dues, [0, 500, 1000, 1500]);
    }

    #[test]
    fn pacer_reports_how_far_behind() {
        let mut p = Pacer::new(1_000, 0, 1, 100);
        assert_eq!(p.behind(0), 0);
        // At 1_000 the first batch is due; at 1_350 four are (1000, 1100, 1200, 1300).
        assert_eq!(p.behind(1_000), 1);
        assert_eq!(p.behind(1_350), 4);
        p.next_due();
        p.next_due();
        assert_eq!(p.behind(1_350), 2);
        for _ in 0..5 {
            p.next_due();
        }
        assert_eq!(p.behind(1_350), 0);
    }

    #[test]
    fn stamps_are_spaced_and_strictly_increasing() {
        let mut s = Stamps::default();
        let mut out = Vec::new();
        s.next_batch(10_000, 3, 1_000, &mut out);
        assert_eq!(out, [8_000, 9_000, 10_000]);
        // Next batch due one period later: contiguous.
        s.next_batch(13_000, 3, 1_000, &mut out);
        assert_eq!(out, [11_000, 12_000, 13_000]);
        // A clock that stalls or steps back still yields new times.
        s.next_batch(12_000, 2, 1_000, &mut out);
        assert_eq!(out, [13_001, 13_002]);
    }

    #[test]
    fn counts_points_up_to_a_time() {
        let b = [(100, 10), (200, 20), (300, 25)];
        assert_eq!(points_up_to(&b, 99), 0);
        assert_eq!(points_up_to(&b, 100), 10);
        assert_eq!(points_up_to(&b, 250), 20);
        assert_eq!(points_up_to(&b, 300), 25);
        assert_eq!(points_up_to(&b, i64::MAX), 25);
        assert_eq!(points_up_to(&[], 5), 0);
    }
}
