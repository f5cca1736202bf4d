//! `fleetctl simulate --scenario incidents`: a short scripted run (about
//! 15 s, real time) whose outcome is known, for demos and the end-to-end
//! test of the incident service. Four vehicles:
//!
//! - `<prefix>-battery` drains from 26 % by 2 %/s: the fleet `battery_low`
//!   rule (below 20 % for 10 s) opens one incident;
//! - `<prefix>-fence` drifts out of its keep-in geofence (`sim_keep_in`);
//! - `<prefix>-silent` talks for 3 s, then goes quiet: `link_loss` (this
//!   vehicle's override: 3 s) opens;
//! - `<prefix>-cam` sends frames at 2 fps and detections of a `person`,
//!   inside the image keep-out zone (left half) for 2.5 s: `sim_person_zone`
//!   opens with the frame, boxes and a clip as evidence.
//!
//! The rules are created (or reset) through the incident service's gRPC API.
//! The other vehicles get a 1 h `link_loss` override, so the scenario's end
//! is not itself reported as a link loss.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use fleetwatch_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::http::HttpClient;
use super::point::Rfc3339;
use super::stats::Stats;
use super::track::Kind;
use crate::cli::SimulateArgs;

/// How long the scripted run lasts.
const RUN_SECS: f64 = 15.0;

pub fn vehicle_ids(prefix: &str) -> [String; 4] {
    ["battery", "fence", "silent", "cam"].map(|s| format!("{prefix}-{s}"))
}

/// The incidents a run produces: (vehicle, rule name).
pub fn expected(prefix: &str) -> Vec<(String, &'static str)> {
    let [battery, fence, silent, cam] = vehicle_ids(prefix);
    vec![
        (battery, "battery_low"),
        (fence, "sim_keep_in"),
        (silent, "link_loss"),
        (cam, "sim_person_zone"),
    ]
}

fn rules(prefix: &str, center: (f64, f64)) -> Vec<pb::Rule> {
    let [battery, fence, silent, cam] = vehicle_ids(prefix);
    let (lat, lon) = center;
    let d = 0.001;
    let link_loss = |vehicle: &str, secs: f64| pb::Rule {
        name: "link_loss".into(),
        vehicle_id: vehicle.into(),
        severity: pb::Severity::Major as i32,
        enabled: true,
        description: "fleetctl simulate --scenario incidents".into(),
        params: Some(pb::rule::Params::LinkLoss(pb::LinkLossParams {
            timeout_secs: secs,
        })),
        ..Default::default()
    };
    vec![
        pb::Rule {
            name: "sim_keep_in".into(),
            vehicle_id: fence.clone(),
            severity: pb::Severity::Major as i32,
            enabled: true,
            description: "fleetctl simulate --scenario incidents: stay within ~100 m".into(),
            params: Some(pb::rule::Params::Geofence(pb::GeofenceParams {
                polygon: [(-d, -d), (-d, d), (d, d), (d, -d)]
                    .iter()
                    .map(|(a, b)| pb::GeoPoint {
                        lat: lat + a,
                        lon: lon + b,
                    })
                    .collect(),
                mode: pb::GeofenceMode::KeepIn as i32,
                for_secs: 0.0,
            })),
            ..Default::default()
        },
        pb::Rule {
            name: "sim_person_zone".into(),
            vehicle_id: cam.clone(),
            severity: pb::Severity::Critical as i32,
            enabled: true,
            description: "fleetctl simulate --scenario incidents: person in the left half".into(),
            params: Some(pb::rule::Params::Detection(pb::DetectionParams {
                classes: vec!["person".into()],
                min_confidence: 0.5,
                min_consecutive_frames: 2,
                zone: [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
                    .iter()
                    .map(|(x, y)| pb::ImagePoint { x: *x, y: *y })
                    .collect(),
                clear_after_secs: 30.0,
            })),
            ..Default::default()
        },
        link_loss(&silent, 3.0),
        link_loss(&battery, 3600.0),
        link_loss(&fence, 3600.0),
        link_loss(&cam, 3600.0),
    ]
}

/// Creates the scenario's rules, or resets them to this definition.
async fn ensure_rules(
    url: &str,
    token: Option<&str>,
    prefix: &str,
    center: (f64, f64),
) -> anyhow::Result<()> {
    let Some(token) = token else {
        anyhow::bail!(
            "the incidents scenario creates its rules through the incident service, as an admin: pass --token or set FLEETWATCH_TOKEN (create one with `fleetctl tokens create --user admin --name demo`)"
        );
    };
    let mut c = crate::incidents::incident_client(url, token).await?;
    let existing = c
        .list_rules(pb::ListRulesRequest {
            vehicle_id: String::new(),
            include_disabled: true,
        })
        .await
        .context("cannot list rules")?
        .into_inner()
        .rules;
    for mut r in rules(prefix, center) {
        match existing
            .iter()
            .find(|e| e.name == r.name && e.vehicle_id == r.vehicle_id)
        {
            Some(e) => {
                r.id = e.id;
                c.update_rule(pb::UpdateRuleRequest { rule: Some(r) })
                    .await
                    .context("cannot update a scenario rule")?;
            }
            None => {
                c.create_rule(pb::CreateRuleRequest { rule: Some(r) })
                    .await
                    .context("cannot create a scenario rule")?;
            }
        }
    }
    Ok(())
}

pub async fn run(
    args: &SimulateArgs,
    tokens: &BTreeMap<String, String>,
) -> anyhow::Result<std::process::ExitCode> {
    let ids = vehicle_ids(&args.prefix);
    ensure_rules(
        &args.incident_grpc_url,
        args.token.as_deref(),
        &args.prefix,
        args.center,
    )
    .await?;
    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    let http = Arc::new(HttpClient::new(
        &args.ingest_url,
        Duration::from_secs_f64(args.timeout),
        stats.clone(),
        shutdown.clone(),
    )?);
    let token = |id: &str| -> anyhow::Result<Arc<str>> {
        tokens
            .get(id)
            .map(|t| Arc::from(t.as_str()))
            .with_context(|| format!("no token for {id}"))
    };
    eprintln!(
        "scenario incidents: {} for {RUN_SECS} s to {}",
        ids.join(", "),
        args.ingest_url
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (http, stats, token, id) = (http.clone(), stats.clone(), token(id)?, id.clone());
        let center = args.center;
        tasks.spawn(async move {
            telemetry(i, &id, &token, center, &http, &stats).await;
        });
    }
    {
        let (http, stats, token, id) =
            (http.clone(), stats.clone(), token(&ids[3])?, ids[3].clone());
        tasks.spawn(async move { camera(&id, &token, &http, &stats).await });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let mut failed = 0;
    for (name, flow) in [
        ("points", &stats.points),
        ("frames", &stats.frames),
        ("detections", &stats.detections),
    ] {
        let (sent, acked, f) = flow.snapshot();
        failed += f + sent.saturating_sub(acked + f);
        println!("  {name:<11} sent {sent}, acked {acked}, failed {f}");
    }
    println!("expected incidents (vehicle rule):");
    for (v, r) in expected(&args.prefix) {
        println!("  {v} {r}");
    }
    if failed > 0 {
        eprintln!("error: {failed} items were not acknowledged; the outcome may differ");
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Vehicle `role` (0 battery, 1 fence, 2 silent, 3 cam) at 2 points/s.
async fn telemetry(
    role: usize,
    id: &str,
    token: &str,
    center: (f64, f64),
    http: &HttpClient,
    stats: &Stats,
) {
    let url = http.url("/api/v1/telemetry");
    let start = fleetwatch_common::now_unix_us();
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    for n in 0.. {
        interval.tick().await;
        let secs = f64::from(n) * 0.5;
        if secs > RUN_SECS || (role == 2 && secs > 3.0) {
            break;
        }
        let (mut lat, lon) = center;
        let mut battery = 80.0;
        match role {
            0 => battery = (26.0 - 2.0 * secs).max(5.0),
            // Leaves the ~0.001° box after ~2.5 s, northwards.
            1 => lat += 0.0004 * secs,
            _ => {}
        }
        let body = serde_json::json!({
            "vehicle_id": id,
            "timestamp": Rfc3339(start + (secs * 1e6) as i64).to_string(),
            "lat": lat, "lon": lon, "alt": 50.0, "speed": 3.0, "heading": 0.0,
            "battery": battery,
        });
        stats
            .points
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        http.post(
            &url,
            token,
            "application/json",
            Bytes::from(body.to_string()),
            1,
            &stats.points,
        )
        .await;
    }
}

/// Frames at 2 fps; a person each frame, in the left (keep-out) half of
/// the image from 4 s to 6 s, in the right half otherwise.
async fn camera(id: &str, token: &str, http: &HttpClient, stats: &Stats) {
    let scene = Arc::new(super::jpeg::Scene::new(Kind::Drone, 160, 120, 7));
    let frames_url = http.url("/api/v1/frames");
    let detections_url = http.url("/api/v1/detections");
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    let mut buf = Vec::new();
    for n in 0u32.. {
        interval.tick().await;
        let secs = f64::from(n) * 0.5;
        if secs > RUN_SECS {
            break;
        }
        let t = fleetwatch_common::now_unix_us();
        let frame_id = format!("{id}-f{n:04}");
        let s = scene.clone();
        let Ok(rendered) = tokio::task::spawn_blocking(move || s.render(u64::from(n), t)).await
        else {
            break;
        };
        stats
            .frames
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!("{frames_url}?timestamp={}&frame_id={frame_id}", Rfc3339(t));
        http.post(
            &url,
            token,
            "image/jpeg",
            Bytes::from(rendered.jpeg),
            1,
            &stats.frames,
        )
        .await;
        let x = if (4.0..=6.0).contains(&secs) {
            0.2
        } else {
            0.7
        };
        let det = super::point::Detection {
            class: "person",
            conf: 0.9,
            bbox: [x, 0.4, x + 0.1, 0.6],
            track_id: "person-1",
        };
        super::point::write_detection_json(id, t, &frame_id, &det, &mut buf);
        stats
            .detections
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        http.post(
            &detections_url,
            token,
            "application/json",
            Bytes::copy_from_slice(&buf),
            1,
            &stats.detections,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_rules_are_per_vehicle_and_expected_incidents_match() {
        let r = rules("s", (59.0, 24.0));
        assert!(r.iter().all(|r| r.vehicle_id.starts_with("s-")));
        let names: Vec<&str> = expected("s").iter().map(|(_, r)| *r).collect();
        assert_eq!(
            names,
            ["battery_low", "sim_keep_in", "link_loss", "sim_person_zone"]
        );
    }
}
