//! Rules: their parameters (stored as JSON in `incident_rules.params`,
//! carried as proto oneofs over gRPC), validation, and the pure evaluation
//! step that turns one sample and the stored state into a transition.
//!
//! Evaluation is keyed on sample times: a sample not newer than the state's
//! `last_point_us` is ignored, so redelivered records change nothing.
//!
//! Size: one section per rule kind (threshold, geofence, link loss,
//! detection) with its parameters, validation and evaluation, ~610 lines,
//! then ~300 lines of their unit tests; a file per kind would scatter the
//! shared state machine (trigger, hold, clear) they all follow.

use fleetwatch_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Severity as stored (smallint) and carried (proto enum value).
pub fn severity_name(s: i16) -> &'static str {
    match s {
        4 => "critical",
        3 => "major",
        2 => "minor",
        _ => "warning",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Below,
    Above,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub field: String,
    pub op: Op,
    pub trigger: f64,
    pub clear: f64,
    #[serde(default)]
    pub for_secs: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    KeepIn,
    KeepOut,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geofence {
    /// `[lat, lon]` vertices.
    pub polygon: Vec<[f64; 2]>,
    pub mode: Mode,
    #[serde(default)]
    pub for_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkLoss {
    pub timeout_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionRule {
    pub classes: Vec<String>,
    #[serde(default)]
    pub min_confidence: f32,
    #[serde(default = "one")]
    pub min_consecutive_frames: u32,
    /// `[x, y]` vertices in normalised image coordinates; empty = whole image.
    #[serde(default)]
    pub zone: Vec<[f32; 2]>,
    #[serde(default = "default_clear_after")]
    pub clear_after_secs: f64,
}

fn one() -> u32 {
    1
}
fn default_clear_after() -> f64 {
    30.0
}

#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    Threshold(Threshold),
    Geofence(Geofence),
    LinkLoss(LinkLoss),
    Detection(DetectionRule),
}

impl Params {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Threshold(_) => "threshold",
            Self::Geofence(_) => "geofence",
            Self::LinkLoss(_) => "link_loss",
            Self::Detection(_) => "detection",
        }
    }

    pub fn from_json(kind: &str, v: &serde_json::Value) -> Result<Self, String> {
        let r = match kind {
            "threshold" => serde_json::from_value(v.clone()).map(Self::Threshold),
            "geofence" => serde_json::from_value(v.clone()).map(Self::Geofence),
            "link_loss" => serde_json::from_value(v.clone()).map(Self::LinkLoss),
            "detection" => serde_json::from_value(v.clone()).map(Self::Detection),
            other => return Err(format!("unknown rule kind {other:?}")),
        };
        r.map_err(|e| format!("{kind} params: {e}"))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let r = match self {
            Self::Threshold(p) => serde_json::to_value(p),
            Self::Geofence(p) => serde_json::to_value(p),
            Self::LinkLoss(p) => serde_json::to_value(p),
            Self::Detection(p) => serde_json::to_value(p),
        };
        r.unwrap_or(serde_json::Value::Null)
    }

    /// Problems, each naming the field (`rule.threshold.for_secs: ...`).
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let finite_nonneg = |errs: &mut Vec<String>, name: &str, v: f64| {
            if !v.is_finite() || v < 0.0 {
                errs.push(format!("{name}: must be a finite number >= 0"));
            }
        };
        match self {
            Self::Threshold(p) => {
                if p.field.trim().is_empty() {
                    errs.push("rule.threshold.field: must not be empty".into());
                }
                for (n, v) in [
                    ("rule.threshold.trigger", p.trigger),
                    ("rule.threshold.clear", p.clear),
                ] {
                    if !v.is_finite() {
                        errs.push(format!("{n}: must be a finite number"));
                    }
                }
                let ok = match p.op {
                    Op::Below => p.clear >= p.trigger,
                    Op::Above => p.clear <= p.trigger,
                };
                if !ok {
                    errs.push("rule.threshold.clear: must be on the safe side of trigger (>= trigger for below, <= for above)".into());
                }
                finite_nonneg(&mut errs, "rule.threshold.for_secs", p.for_secs);
            }
            Self::Geofence(p) => {
                if p.polygon.len() < 3 {
                    errs.push("rule.geofence.polygon: needs at least 3 vertices".into());
                }
                if p.polygon.iter().any(|[lat, lon]| {
                    !(-90.0..=90.0).contains(lat) || !(-180.0..=180.0).contains(lon)
                }) {
                    errs.push("rule.geofence.polygon: lat must be within -90..90 and lon within -180..180".into());
                }
                finite_nonneg(&mut errs, "rule.geofence.for_secs", p.for_secs);
            }
            Self::LinkLoss(p) => {
                if !p.timeout_secs.is_finite() || p.timeout_secs <= 0.0 {
                    errs.push("rule.link_loss.timeout_secs: must be a finite number > 0".into());
                }
            }
            Self::Detection(p) => {
                if p.classes.is_empty() || p.classes.iter().any(|c| c.trim().is_empty()) {
                    errs.push("rule.detection.classes: needs at least one non-empty class".into());
                }
                if !(0.0..=1.0).contains(&p.min_confidence) {
                    errs.push("rule.detection.min_confidence: must be within 0..1".into());
                }
                if p.min_consecutive_frames == 0 {
                    errs.push("rule.detection.min_consecutive_frames: must be at least 1".into());
                }
                if !p.zone.is_empty() && p.zone.len() < 3 {
                    errs.push("rule.detection.zone: needs at least 3 vertices (or none for the whole image)".into());
                }
                if p.zone.iter().flatten().any(|c| !(0.0..=1.0).contains(c)) {
                    errs.push("rule.detection.zone: coordinates must be within 0..1".into());
                }
                finite_nonneg(
                    &mut errs,
                    "rule.detection.clear_after_secs",
                    p.clear_after_secs,
                );
            }
        }
        errs
    }

    pub fn to_proto(&self) -> pb::rule::Params {
        use pb::rule::Params as P;
        match self {
            Self::Threshold(p) => P::Threshold(pb::ThresholdParams {
                field: p.field.clone(),
                op: match p.op {
                    Op::Below => pb::ThresholdOp::Below,
                    Op::Above => pb::ThresholdOp::Above,
                } as i32,
                trigger: p.trigger,
                clear: p.clear,
                for_secs: p.for_secs,
            }),
            Self::Geofence(p) => P::Geofence(pb::GeofenceParams {
                polygon: p
                    .polygon
                    .iter()
                    .map(|[lat, lon]| pb::GeoPoint {
                        lat: *lat,
                        lon: *lon,
                    })
                    .collect(),
                mode: match p.mode {
                    Mode::KeepIn => pb::GeofenceMode::KeepIn,
                    Mode::KeepOut => pb::GeofenceMode::KeepOut,
                } as i32,
                for_secs: p.for_secs,
            }),
            Self::LinkLoss(p) => P::LinkLoss(pb::LinkLossParams {
                timeout_secs: p.timeout_secs,
            }),
            Self::Detection(p) => P::Detection(pb::DetectionParams {
                classes: p.classes.clone(),
                min_confidence: p.min_confidence,
                min_consecutive_frames: p.min_consecutive_frames,
                zone: p
                    .zone
                    .iter()
                    .map(|[x, y]| pb::ImagePoint { x: *x, y: *y })
                    .collect(),
                clear_after_secs: p.clear_after_secs,
            }),
        }
    }

    /// From the API; errors name the field.
    pub fn from_proto(p: Option<&pb::rule::Params>) -> Result<Self, String> {
        use pb::rule::Params as P;
        Ok(match p {
            None => {
                return Err(
                    "rule.params: set one of threshold, geofence, link_loss, detection".into(),
                );
            }
            Some(P::Threshold(t)) => Self::Threshold(Threshold {
                field: t.field.clone(),
                op: match pb::ThresholdOp::try_from(t.op) {
                    Ok(pb::ThresholdOp::Below) => Op::Below,
                    Ok(pb::ThresholdOp::Above) => Op::Above,
                    _ => return Err("rule.threshold.op: must be BELOW or ABOVE".into()),
                },
                trigger: t.trigger,
                clear: t.clear,
                for_secs: t.for_secs,
            }),
            Some(P::Geofence(g)) => Self::Geofence(Geofence {
                polygon: g.polygon.iter().map(|p| [p.lat, p.lon]).collect(),
                mode: match pb::GeofenceMode::try_from(g.mode) {
                    Ok(pb::GeofenceMode::KeepIn) => Mode::KeepIn,
                    Ok(pb::GeofenceMode::KeepOut) => Mode::KeepOut,
                    _ => return Err("rule.geofence.mode: must be KEEP_IN or KEEP_OUT".into()),
                },
                for_secs: g.for_secs,
            }),
            Some(P::LinkLoss(l)) => Self::LinkLoss(LinkLoss {
                timeout_secs: l.timeout_secs,
            }),
            Some(P::Detection(d)) => Self::Detection(DetectionRule {
                classes: d.classes.clone(),
                min_confidence: d.min_confidence,
                min_consecutive_frames: d.min_consecutive_frames,
                zone: d.zone.iter().map(|p| [p.x, p.y]).collect(),
                clear_after_secs: d.clear_after_secs,
            }),
        })
    }
}

/// A rule as loaded from the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: i64,
    pub name: String,
    pub vehicle_id: Option<String>,
    pub severity: i16,
    pub enabled: bool,
    pub description: String,
    pub params: Params,
    pub created_us: i64,
    pub updated_us: i64,
}

impl Rule {
    pub fn to_proto(&self) -> pb::Rule {
        pb::Rule {
            id: self.id,
            name: self.name.clone(),
            vehicle_id: self.vehicle_id.clone().unwrap_or_default(),
            severity: i32::from(self.severity),
            enabled: self.enabled,
            description: self.description.clone(),
            params: Some(self.params.to_proto()),
            created_unix_us: self.created_us,
            updated_unix_us: self.updated_us,
        }
    }
}

/// The enabled rules that apply to `vehicle`: fleet rules, with a vehicle
/// rule of the same name replacing the fleet one.
pub fn applicable<'a>(rules: &'a [Rule], vehicle: &str) -> Vec<&'a Rule> {
    let mut out: Vec<&Rule> = Vec::new();
    for r in rules.iter().filter(|r| r.enabled) {
        match r.vehicle_id.as_deref() {
            Some(v) if v == vehicle => {
                out.retain(|o| o.name != r.name);
                out.push(r);
            }
            Some(_) => {}
            None => {
                let overridden = rules.iter().any(|o| {
                    o.enabled && o.name == r.name && o.vehicle_id.as_deref() == Some(vehicle)
                });
                if !overridden {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// Evaluation state of one (rule, vehicle), mirrored in `incident_rule_state`.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub active: bool,
    pub pending_since_us: Option<i64>,
    pub consecutive: i32,
    pub last_match_us: Option<i64>,
    pub last_point_us: i64,
    pub last_seen_us: Option<i64>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            active: false,
            pending_since_us: None,
            consecutive: 0,
            last_match_us: None,
            // Below every valid sample time (0 is one).
            last_point_us: -1,
            last_seen_us: None,
        }
    }
}

/// A box and its score, the evidence of a detection trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionEvidence {
    pub frame_key: String,
    pub boxes: Vec<pb::BoundingBox>,
    pub confidence: f32,
    pub time_us: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The condition started to hold: open, or re-trigger the unresolved incident.
    Trigger {
        at_us: i64,
        detail: String,
        evidence: Option<DetectionEvidence>,
    },
    /// Still active; newer sighting (and maybe better evidence).
    Seen {
        at_us: i64,
        evidence: Option<DetectionEvidence>,
    },
    /// The condition stopped holding.
    Clear { at_us: i64, detail: String },
}

/// Where a sample stands for a level rule.
enum Level {
    Violating(String),
    /// Safe: clears an active rule.
    Normal,
    /// Between trigger and clear (hysteresis band): neither.
    Band,
    /// The sample lacks the field.
    Unknown,
}

fn field_value(p: &pb::TelemetryPoint, field: &str) -> Option<f64> {
    match field {
        "battery" => p.battery,
        "speed" => p.speed,
        "alt" => p.alt,
        "heading" => p.heading,
        "lat" => p.lat,
        "lon" => p.lon,
        other => p.metrics.get(other).copied(),
    }
}

fn threshold_level(t: &Threshold, p: &pb::TelemetryPoint) -> Level {
    let Some(v) = field_value(p, &t.field).filter(|v| v.is_finite()) else {
        return Level::Unknown;
    };
    let (violating, normal) = match t.op {
        Op::Below => (v < t.trigger, v > t.clear),
        Op::Above => (v > t.trigger, v < t.clear),
    };
    if violating {
        let op = if t.op == Op::Below { "<" } else { ">" };
        Level::Violating(format!("{} {v} {op} {}", t.field, t.trigger))
    } else if normal {
        Level::Normal
    } else {
        Level::Band
    }
}

fn geofence_level(g: &Geofence, p: &pb::TelemetryPoint) -> Level {
    let (Some(lat), Some(lon)) = (p.lat, p.lon) else {
        return Level::Unknown;
    };
    let inside = point_in_polygon(lat, lon, &g.polygon);
    match (g.mode, inside) {
        (Mode::KeepIn, false) => Level::Violating(format!("left the keep-in zone at {lat},{lon}")),
        (Mode::KeepOut, true) => {
            Level::Violating(format!("entered the keep-out zone at {lat},{lon}"))
        }
        _ => Level::Normal,
    }
}

/// Ray casting; vertices are `[y, x]` pairs (lat/lon or image y/x alike).
pub fn point_in_polygon<T: Into<f64> + Copy>(y: f64, x: f64, poly: &[[T; 2]]) -> bool {
    let n = poly.len();
    if n < 3 {
        return false;
    }
    let mut inside = false;
    let mut j = n - 1;
    for i in 0..n {
        let (yi, xi) = (poly[i][0].into(), poly[i][1].into());
        let (yj, xj) = (poly[j][0].into(), poly[j][1].into());
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Applies one telemetry sample to a threshold, geofence or link-loss rule.
/// `seen_us` is when ingest accepted the sample (link loss's clock).
pub fn apply_point(
    params: &Params,
    state: &mut State,
    p: &pb::TelemetryPoint,
    seen_us: i64,
) -> Option<Transition> {
    if let Params::LinkLoss(_) = params {
        // Only a sample heard after the last one we knew can end a link
        // loss: a redelivered old batch must not.
        let newer = state.last_seen_us.is_none_or(|s| seen_us > s);
        if !newer {
            return None;
        }
        state.last_seen_us = Some(seen_us);
        state.last_point_us = state.last_point_us.max(p.time_unix_us);
        if state.active {
            state.active = false;
            return Some(Transition::Clear {
                at_us: p.time_unix_us,
                detail: "telemetry resumed".into(),
            });
        }
        return None;
    }
    if p.time_unix_us <= state.last_point_us {
        return None;
    }
    let (level, for_secs) = match params {
        Params::Threshold(t) => (threshold_level(t, p), t.for_secs),
        Params::Geofence(g) => (geofence_level(g, p), g.for_secs),
        _ => return None,
    };
    if matches!(level, Level::Unknown) {
        return None;
    }
    state.last_point_us = p.time_unix_us;
    level_step(state, level, for_secs, p.time_unix_us)
}

fn level_step(state: &mut State, level: Level, for_secs: f64, t: i64) -> Option<Transition> {
    let for_us = (for_secs * 1e6) as i64;
    match (state.active, level) {
        (false, Level::Violating(detail)) => {
            let since = *state.pending_since_us.get_or_insert(t);
            if t - since >= for_us {
                state.active = true;
                state.pending_since_us = None;
                Some(Transition::Trigger {
                    at_us: t,
                    detail,
                    evidence: None,
                })
            } else {
                None
            }
        }
        (false, _) => {
            state.pending_since_us = None;
            None
        }
        (true, Level::Normal) => {
            state.active = false;
            state.pending_since_us = None;
            Some(Transition::Clear {
                at_us: t,
                detail: "back within limits".into(),
            })
        }
        (true, _) => None,
    }
}

/// Applies one frame's detections to a detection rule.
pub fn apply_detections(
    rule: &DetectionRule,
    state: &mut State,
    batch: &pb::DetectionBatch,
    frame_key: &str,
) -> Option<Transition> {
    let t = batch.time_unix_us;
    if t <= state.last_point_us {
        return None;
    }
    state.last_point_us = t;
    let matched: Vec<&pb::Detection> = batch
        .detections
        .iter()
        .filter(|d| {
            rule.classes.iter().any(|c| c == &d.class_name)
                && d.confidence >= rule.min_confidence
                && (rule.zone.is_empty()
                    || d.bbox.as_ref().is_some_and(|b| {
                        let cx = f64::from((b.x_min + b.x_max) / 2.0);
                        let cy = f64::from((b.y_min + b.y_max) / 2.0);
                        // Zone vertices are [x, y]: the first coordinate is x.
                        point_in_polygon(cx, cy, &rule.zone)
                    }))
        })
        .collect();
    if matched.is_empty() {
        state.consecutive = 0;
        if state.active {
            let clear_us = (rule.clear_after_secs * 1e6) as i64;
            if state.last_match_us.is_none_or(|m| t - m >= clear_us) {
                state.active = false;
                return Some(Transition::Clear {
                    at_us: t,
                    detail: format!(
                        "no {} seen for {}s",
                        rule.classes.join("/"),
                        rule.clear_after_secs
                    ),
                });
            }
        }
        return None;
    }
    let best = matched.iter().map(|d| d.confidence).fold(0.0_f32, f32::max);
    let evidence = DetectionEvidence {
        frame_key: frame_key.to_string(),
        boxes: matched.iter().filter_map(|d| d.bbox).collect(),
        confidence: best,
        time_us: t,
    };
    state.consecutive = state.consecutive.saturating_add(1);
    state.last_match_us = Some(t);
    if state.active {
        return Some(Transition::Seen {
            at_us: t,
            evidence: Some(evidence),
        });
    }
    if state.consecutive >= rule.min_consecutive_frames as i32 {
        state.active = true;
        let classes: Vec<&str> = matched.iter().map(|d| d.class_name.as_str()).collect();
        return Some(Transition::Trigger {
            at_us: t,
            detail: format!(
                "{} detected (confidence {best:.2}, {} frame(s) in a row)",
                classes.join(", "),
                state.consecutive
            ),
            evidence: Some(evidence),
        });
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn battery(t_s: i64, b: f64) -> pb::TelemetryPoint {
        pb::TelemetryPoint {
            time_unix_us: t_s * 1_000_000,
            battery: Some(b),
            ..Default::default()
        }
    }

    fn battery_rule() -> Params {
        Params::Threshold(Threshold {
            field: "battery".into(),
            op: Op::Below,
            trigger: 20.0,
            clear: 25.0,
            for_secs: 10.0,
        })
    }

    fn run(params: &Params, st: &mut State, pts: &[pb::TelemetryPoint]) -> Vec<Transition> {
        pts.iter()
            .filter_map(|p| apply_point(params, st, p, p.time_unix_us))
            .collect()
    }

    #[test]
    fn threshold_needs_the_full_duration() {
        let r = battery_rule();
        let mut st = State::default();
        let pts: Vec<_> = (0..10).map(|s| battery(100 + s, 19.0)).collect();
        assert!(run(&r, &mut st, &pts).is_empty(), "9 s is not 10 s");
        let t = run(&r, &mut st, &[battery(110, 19.0)]);
        assert!(
            matches!(t.as_slice(), [Transition::Trigger { at_us, .. }] if *at_us == 110_000_000)
        );
        // Stays active without repeating.
        assert!(run(&r, &mut st, &[battery(111, 18.0)]).is_empty());
    }

    #[test]
    fn threshold_boundary_is_not_a_violation_and_hysteresis_holds() {
        let r = battery_rule();
        let mut st = State::default();
        let pts: Vec<_> = (0..20).map(|s| battery(s, 20.0)).collect();
        assert!(
            run(&r, &mut st, &pts).is_empty(),
            "exactly 20 is not below 20"
        );
        let pts: Vec<_> = (20..31).map(|s| battery(s, 10.0)).collect();
        assert_eq!(run(&r, &mut st, &pts).len(), 1);
        // 22 and exactly 25 are in the band: no clear.
        assert!(run(&r, &mut st, &[battery(31, 22.0), battery(32, 25.0)]).is_empty());
        let t = run(&r, &mut st, &[battery(33, 25.5)]);
        assert!(matches!(t.as_slice(), [Transition::Clear { .. }]));
    }

    #[test]
    fn an_interruption_restarts_the_window() {
        let r = battery_rule();
        let mut st = State::default();
        let mut pts: Vec<_> = (0..6).map(|s| battery(s, 10.0)).collect();
        pts.push(battery(6, 21.0));
        pts.extend((7..16).map(|s| battery(s, 10.0)));
        assert!(run(&r, &mut st, &pts).is_empty());
        assert_eq!(run(&r, &mut st, &[battery(17, 10.0)]).len(), 1);
    }

    #[test]
    fn redelivered_samples_change_nothing() {
        let r = battery_rule();
        let mut st = State::default();
        let pts: Vec<_> = (0..11).map(|s| battery(s, 10.0)).collect();
        assert_eq!(run(&r, &mut st, &pts).len(), 1);
        let before = st.clone();
        assert!(run(&r, &mut st, &pts).is_empty());
        assert_eq!(st, before);
    }

    #[test]
    fn missing_field_is_ignored() {
        let r = battery_rule();
        let mut st = State::default();
        let p = pb::TelemetryPoint {
            time_unix_us: 5,
            ..Default::default()
        };
        assert!(apply_point(&r, &mut st, &p, 5).is_none());
        assert_eq!(st, State::default());
    }

    #[test]
    fn custom_metric_above() {
        let r = Params::Threshold(Threshold {
            field: "temp_c".into(),
            op: Op::Above,
            trigger: 80.0,
            clear: 70.0,
            for_secs: 0.0,
        });
        let mut st = State::default();
        let mut p = pb::TelemetryPoint {
            time_unix_us: 1,
            ..Default::default()
        };
        p.metrics.insert("temp_c".into(), 81.0);
        assert!(matches!(
            apply_point(&r, &mut st, &p, 1),
            Some(Transition::Trigger { .. })
        ));
    }

    fn square() -> Vec<[f64; 2]> {
        vec![[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]
    }

    fn at(t: i64, lat: f64, lon: f64) -> pb::TelemetryPoint {
        pb::TelemetryPoint {
            time_unix_us: t,
            lat: Some(lat),
            lon: Some(lon),
            ..Default::default()
        }
    }

    #[test]
    fn geofence_keep_in_exit_and_return() {
        let r = Params::Geofence(Geofence {
            polygon: square(),
            mode: Mode::KeepIn,
            for_secs: 0.0,
        });
        let mut st = State::default();
        assert!(run(&r, &mut st, &[at(1, 0.5, 0.5), at(2, 0.99, 0.99)]).is_empty());
        assert!(matches!(
            run(&r, &mut st, &[at(3, 1.01, 0.5)]).as_slice(),
            [Transition::Trigger { .. }]
        ));
        assert!(matches!(
            run(&r, &mut st, &[at(4, 0.5, 0.5)]).as_slice(),
            [Transition::Clear { .. }]
        ));
    }

    #[test]
    fn geofence_keep_out_enter() {
        let r = Params::Geofence(Geofence {
            polygon: square(),
            mode: Mode::KeepOut,
            for_secs: 0.0,
        });
        let mut st = State::default();
        assert!(run(&r, &mut st, &[at(1, 2.0, 2.0)]).is_empty());
        assert_eq!(run(&r, &mut st, &[at(2, 0.5, 0.5)]).len(), 1);
    }

    #[test]
    fn link_loss_clears_only_on_newer_telemetry() {
        let r = Params::LinkLoss(LinkLoss { timeout_secs: 5.0 });
        let mut st = State {
            active: true,
            last_seen_us: Some(100),
            ..Default::default()
        };
        let p = battery(0, 50.0);
        assert!(apply_point(&r, &mut st, &p, 100).is_none(), "redelivery");
        assert!(st.active);
        assert!(matches!(
            apply_point(&r, &mut st, &p, 101),
            Some(Transition::Clear { .. })
        ));
    }

    fn det(class: &str, conf: f32, cx: f32, cy: f32) -> pb::Detection {
        pb::Detection {
            class_name: class.into(),
            confidence: conf,
            bbox: Some(pb::BoundingBox {
                x_min: cx - 0.05,
                y_min: cy - 0.05,
                x_max: cx + 0.05,
                y_max: cy + 0.05,
            }),
            track_id: String::new(),
        }
    }

    fn frame(t: i64, dets: Vec<pb::Detection>) -> pb::DetectionBatch {
        pb::DetectionBatch {
            vehicle_id: "v".into(),
            time_unix_us: t,
            detections: dets,
            ..Default::default()
        }
    }

    #[test]
    fn detection_needs_consecutive_frames_confidence_and_zone() {
        let rule = DetectionRule {
            classes: vec!["person".into()],
            min_confidence: 0.5,
            min_consecutive_frames: 2,
            // Left half of the image.
            zone: vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]],
            clear_after_secs: 0.000_002,
        };
        let mut st = State::default();
        let f = |t, d| apply_detections(&rule, &mut State::default(), &frame(t, d), "k");
        assert!(
            f(1, vec![det("person", 0.9, 0.25, 0.5)]).is_none(),
            "one frame"
        );
        let g = |st: &mut State, t, d| apply_detections(&rule, st, &frame(t, d), "k");
        assert!(g(&mut st, 1, vec![det("person", 0.49, 0.25, 0.5)]).is_none());
        assert!(
            g(&mut st, 2, vec![det("person", 0.9, 0.75, 0.5)]).is_none(),
            "outside zone"
        );
        assert!(g(&mut st, 3, vec![det("car", 0.9, 0.25, 0.5)]).is_none());
        assert!(g(&mut st, 4, vec![det("person", 0.5, 0.25, 0.5)]).is_none());
        let t = g(&mut st, 5, vec![det("person", 0.8, 0.25, 0.5)]);
        assert!(
            matches!(&t, Some(Transition::Trigger { evidence: Some(e), .. }) if e.confidence == 0.8)
        );
        assert!(matches!(
            g(&mut st, 6, vec![det("person", 0.9, 0.25, 0.5)]),
            Some(Transition::Seen { .. })
        ));
        assert!(g(&mut st, 6, vec![]).is_none(), "redelivered frame time");
        assert!(matches!(
            g(&mut st, 9, vec![]),
            Some(Transition::Clear { .. })
        ));
    }

    #[test]
    fn vehicle_rule_overrides_fleet_rule_by_name() {
        let mk = |id, name: &str, v: Option<&str>| Rule {
            id,
            name: name.into(),
            vehicle_id: v.map(Into::into),
            severity: 3,
            enabled: true,
            description: String::new(),
            params: Params::LinkLoss(LinkLoss { timeout_secs: 1.0 }),
            created_us: 0,
            updated_us: 0,
        };
        let rules = vec![
            mk(1, "a", None),
            mk(2, "b", None),
            mk(3, "a", Some("v1")),
            mk(4, "c", Some("v2")),
        ];
        let ids = |v| {
            applicable(&rules, v)
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("v1"), vec![2, 3]);
        assert_eq!(ids("v2"), vec![1, 2, 4]);
        assert_eq!(ids("v3"), vec![1, 2]);
    }

    #[test]
    fn validation_names_fields() {
        let p = Params::Threshold(Threshold {
            field: String::new(),
            op: Op::Below,
            trigger: 20.0,
            clear: 10.0,
            for_secs: -1.0,
        });
        let e = p.validate().join("\n");
        for f in [
            "rule.threshold.field",
            "rule.threshold.clear",
            "rule.threshold.for_secs",
        ] {
            assert!(e.contains(f), "{f} in {e}");
        }
        let p = Params::Detection(DetectionRule {
            classes: vec![],
            min_confidence: 2.0,
            min_consecutive_frames: 0,
            zone: vec![[0.0, 0.0]],
            clear_after_secs: 1.0,
        });
        assert_eq!(p.validate().len(), 4);
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let v = serde_json::json!({"classes": ["no_helmet"]});
        let p = Params::from_json("detection", &v).unwrap();
        let Params::Detection(d) = &p else { panic!() };
        assert_eq!(d.min_consecutive_frames, 1);
        assert_eq!(Params::from_json("detection", &p.to_json()).unwrap(), p);
        assert!(Params::from_json("threshold", &serde_json::json!({"x": 1})).is_err());
        assert!(Params::from_json("nope", &v).is_err());
    }
}
