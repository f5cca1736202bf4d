//! Plausible vehicle tracks: drones fly smooth waypoint loops at 10-20 m/s
//! and 40-150 m, vessels cruise at 5-10 m/s on the water. Motion is
//! integrated in a local flat east/north frame around the fleet's centre,
//! with limited turn rate, acceleration and climb rate, so speed and heading
//! always agree with the positions reported.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EARTH_RADIUS_M: f64 = 6_371_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Drone,
    Vessel,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drone => "drone",
            Self::Vessel => "vessel",
        }
    }
}

/// One reported state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub lat: f64,
    pub lon: f64,
    /// Metres above ground (0 for vessels).
    pub alt: f64,
    /// Metres per second over ground.
    pub speed: f64,
    /// Degrees clockwise from north, `[0, 360)`.
    pub heading: f64,
    /// Percent.
    pub battery: f64,
    /// Radio signal strength (dBm), a custom metric.
    pub rssi: f64,
}

struct Limits {
    min_speed: f64,
    max_speed: f64,
    turn_rate_deg: f64,
    accel: f64,
    climb_rate: f64,
    drain_per_s: f64,
}

pub struct Track {
    kind: Kind,
    lat0: f64,
    lon0: f64,
    cos_lat0: f64,
    east: f64,
    north: f64,
    alt: f64,
    speed: f64,
    heading: f64,
    battery: f64,
    cruise: f64,
    waypoints: Vec<(f64, f64, f64)>,
    next: usize,
    arrival_radius: f64,
    limits: Limits,
    rng: StdRng,
}

impl Track {
    pub fn new(kind: Kind, center: (f64, f64), seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let limits = match kind {
            Kind::Drone => Limits {
                min_speed: 10.0,
                max_speed: 20.0,
                turn_rate_deg: 25.0,
                accel: 2.0,
                climb_rate: 2.5,
                drain_per_s: rng.gen_range(0.015..0.03),
            },
            Kind::Vessel => Limits {
                min_speed: 5.0,
                max_speed: 10.0,
                turn_rate_deg: 4.0,
                accel: 0.3,
                climb_rate: 0.0,
                drain_per_s: rng.gen_range(0.002..0.005),
            },
        };
        let cruise = match kind {
            Kind::Drone => rng.gen_range(12.0..19.0),
            Kind::Vessel => rng.gen_range(6.0..9.5),
        };
        // Far enough out that the vehicle can always turn onto a waypoint
        // instead of circling it forever.
        let turn_radius = limits.max_speed / limits.turn_rate_deg.to_radians();
        let (home_spread, loop_radius) = match kind {
            Kind::Drone => (1_500.0, rng.gen_range(300.0..800.0)),
            Kind::Vessel => (3_000.0, rng.gen_range(1_000.0..2_500.0)),
        };
        let home = (
            rng.gen_range(-home_spread..home_spread),
            rng.gen_range(-home_spread..home_spread),
        );
        let n = rng.gen_range(4..=6);
        let phase = rng.gen_range(0.0..std::f64::consts::TAU);
        let waypoints: Vec<(f64, f64, f64)> = (0..n)
            .map(|i| {
                let a =
                    phase + std::f64::consts::TAU * i as f64 / n as f64 + rng.gen_range(-0.3..0.3);
                let r = loop_radius * rng.gen_range(0.7..1.3);
                let alt = match kind {
                    Kind::Drone => rng.gen_range(40.0..150.0),
                    Kind::Vessel => 0.0,
                };
                (home.0 + r * a.sin(), home.1 + r * a.cos(), alt)
            })
            .collect();
        let start = waypoints[0];
        let heading = bearing_deg(start.0, start.1, waypoints[1].0, waypoints[1].1);
        Self {
            kind,
            lat0: center.0,
            lon0: center.1,
            cos_lat0: center.0.to_radians().cos(),
            east: start.0,
            north: start.1,
            alt: start.2,
            speed: cruise,
            heading,
            battery: rng.gen_range(70.0..100.0),
            cruise,
            waypoints,
            next: 1,
            arrival_radius: 2.5 * turn_radius,
            limits,
            rng,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The state now, without moving.
    pub fn sample(&mut self) -> Sample {
        let lat = self.lat0 + (self.north / EARTH_RADIUS_M).to_degrees();
        let lon = self.lon0 + (self.east / (EARTH_RADIUS_M * self.cos_lat0)).to_degrees();
        let dist_home = (self.east.powi(2) + self.north.powi(2)).sqrt();
        let rssi = (-45.0 - dist_home / 100.0 + self.rng.gen_range(-2.0..2.0)).max(-110.0);
        Sample {
            lat,
            lon: wrap_lon(lon),
            alt: self.alt,
            speed: self.speed,
            heading: self.heading.rem_euclid(360.0),
            battery: self.battery,
            rssi: (rssi * 10.0).round() / 10.0,
        }
    }

    /// Advances `dt` seconds and returns the new state.
    pub fn step(&mut self, dt: f64) -> Sample {
        let mut left = dt.max(0.0);
        // Sub-steps keep turns smooth when points are sparse.
        while left > 0.0 {
            let h = left.min(0.5);
            self.advance(h);
            left -= h;
        }
        self.sample()
    }

    fn advance(&mut self, dt: f64) {
        let (te, tn, talt) = self.waypoints[self.next];
        let (de, dn) = (te - self.east, tn - self.north);
        if (de * de + dn * dn).sqrt() < self.arrival_radius {
            self.next = (self.next + 1) % self.waypoints.len();
        }
        let desired = bearing_deg(self.east, self.north, te, tn);
        let diff = angle_diff(desired, self.heading);
        let max_turn = self.limits.turn_rate_deg * dt;
        self.heading = (self.heading + diff.clamp(-max_turn, max_turn)).rem_euclid(360.0);

        // Ease off in sharp turns, as a pilot (or autopilot) would.
        let turn_factor = 0.85 + 0.15 * diff.abs().min(90.0).to_radians().cos();
        let target =
            (self.cruise * turn_factor).clamp(self.limits.min_speed, self.limits.max_speed);
        let dv = (target - self.speed).clamp(-self.limits.accel * dt, self.limits.accel * dt);
        self.speed = (self.speed + dv).clamp(self.limits.min_speed, self.limits.max_speed);

        let h = self.heading.to_radians();
        self.east += self.speed * dt * h.sin();
        self.north += self.speed * dt * h.cos();

        let dz = (talt - self.alt).clamp(-self.limits.climb_rate * dt, self.limits.climb_rate * dt);
        self.alt += dz;

        self.battery -=
            self.limits.drain_per_s * dt * (self.speed / self.limits.max_speed).max(0.5);
        if self.battery < 15.0 {
            // A battery swap: long simulations keep flying.
            self.battery = 100.0;
        }
    }
}

/// Bearing from (e1,n1) to (e2,n2), degrees clockwise from north.
fn bearing_deg(e1: f64, n1: f64, e2: f64, n2: f64) -> f64 {
    (e2 - e1).atan2(n2 - n1).to_degrees().rem_euclid(360.0)
}

/// Signed smallest rotation from `from` to `to`, in `(-180, 180]`.
fn angle_diff(to: f64, from: f64) -> f64 {
    let d = (to - from).rem_euclid(360.0);
    if d > 180.0 { d - 360.0 } else { d }
}

fn wrap_lon(lon: f64) -> f64 {
    (lon + 180.0).rem_euclid(360.0) - 180.0
}

/// Great-circle distance in metres and initial bearing in degrees between two positions.
pub fn distance_bearing(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let dlat = la2 - la1;
    let dlon = lo2 - lo1;
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    let dist = 2.0 * EARTH_RADIUS_M * h.sqrt().asin();
    let y = dlon.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlon.cos();
    (dist, y.atan2(x).to_degrees().rem_euclid(360.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_track(kind: Kind, seed: u64, dt: f64, steps: usize) {
        let (min_v, max_v) = match kind {
            Kind::Drone => (10.0, 20.0),
            Kind::Vessel => (5.0, 10.0),
        };
        let mut t = Track::new(kind, (59.437, 24.7536), seed);
        let mut prev = t.sample();
        let mut battery_drops = 0;
        for i in 0..steps {
            let s = t.step(dt);
            assert!(
                (-90.0..=90.0).contains(&s.lat) && (-180.0..=180.0).contains(&s.lon),
                "{s:?}"
            );
            assert!(
                (min_v..=max_v).contains(&s.speed),
                "{kind:?} speed {} at step {i}",
                s.speed
            );
            assert!((0.0..360.0).contains(&s.heading), "{s:?}");
            assert!((0.0..=100.0).contains(&s.battery), "{s:?}");
            match kind {
                Kind::Drone => assert!((30.0..=160.0).contains(&s.alt), "drone alt {}", s.alt),
                Kind::Vessel => assert_eq!(s.alt, 0.0),
            }
            let (dist, bearing) = distance_bearing((prev.lat, prev.lon), (s.lat, s.lon));
            // Distance covered matches the speeds reported (between the two samples).
            let lo = prev.speed.min(s.speed) * dt * 0.9;
            let hi = prev.speed.max(s.speed) * dt * 1.1;
            assert!(
                (lo..=hi).contains(&dist),
                "{kind:?} moved {dist} m in {dt} s at {} m/s",
                s.speed
            );
            // The direction of motion agrees with the headings reported, within the turn made.
            let turn = angle_diff(s.heading, prev.heading).abs();
            let off = angle_diff(bearing, s.heading)
                .abs()
                .min(angle_diff(bearing, prev.heading).abs());
            assert!(
                off <= turn + 1.0,
                "{kind:?} moved towards {bearing}, heading {} -> {}",
                prev.heading,
                s.heading
            );
            if s.battery < prev.battery {
                battery_drops += 1;
            } else {
                assert!(
                    s.battery == 100.0 || s.battery == prev.battery,
                    "battery rose {prev:?} -> {s:?}"
                );
            }
            prev = s;
        }
        assert!(battery_drops > steps / 2, "battery should drain");
    }

    #[test]
    fn drones_fly_plausibly() {
        for seed in 0..5 {
            check_track(Kind::Drone, seed, 1.0, 1_200);
            check_track(Kind::Drone, seed, 0.05, 400);
        }
    }

    #[test]
    fn vessels_sail_plausibly() {
        for seed in 0..5 {
            check_track(Kind::Vessel, seed, 1.0, 1_200);
        }
    }

    #[test]
    fn drones_stay_near_their_area_and_turn() {
        let mut t = Track::new(Kind::Drone, (10.0, 20.0), 7);
        let start = t.sample();
        let mut headings = Vec::new();
        for _ in 0..1_800 {
            let s = t.step(1.0);
            let (d, _) = distance_bearing((10.0, 20.0), (s.lat, s.lon));
            assert!(d < 5_000.0, "drone wandered {d} m away");
            headings.push(s.heading);
        }
        // A loop visits every direction.
        for quadrant in 0..4 {
            let lo = quadrant as f64 * 90.0;
            assert!(
                headings.iter().any(|h| (lo..lo + 90.0).contains(h)),
                "never headed into {lo}..{}",
                lo + 90.0
            );
        }
        assert_ne!(start, t.sample());
    }

    #[test]
    fn same_seed_same_track() {
        let mut a = Track::new(Kind::Vessel, (0.0, 0.0), 3);
        let mut b = Track::new(Kind::Vessel, (0.0, 0.0), 3);
        for _ in 0..10 {
            let (sa, sb) = (a.step(1.0), b.step(1.0));
            assert_eq!((sa.lat, sa.lon, sa.heading), (sb.lat, sb.lon, sb.heading));
        }
    }

    #[test]
    fn longitudes_wrap_at_the_antimeridian() {
        assert_eq!(wrap_lon(181.0), -179.0);
        assert_eq!(wrap_lon(-180.5), 179.5);
        let mut t = Track::new(Kind::Vessel, (0.0, 179.99), 1);
        for _ in 0..100 {
            let s = t.step(10.0);
            assert!((-180.0..180.0).contains(&s.lon));
        }
    }
}
