//! End to end: `fleetctl simulate --scenario incidents` through the real
//! ingest, persistence and incident binaries raises exactly the expected
//! incidents, with evidence, visible through the incident gRPC API.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use fleetwatch_e2e::Stack;
use fleetwatch_proto::v1 as pb;
use fleetwatch_testkit as tk;

#[tokio::test]
async fn incidents_scenario_raises_exactly_the_expected_incidents_with_evidence() {
    let bootstrap = tk::shared_bootstrap().await;
    let mut stack = Stack::start(&bootstrap).await;
    stack.start_incident().await;
    let tokens = tempfile::tempdir().unwrap();
    let admin = stack.admin_token().await;
    let out = tokio::task::spawn_blocking({
        let admin = admin.clone();
        let db = stack.db.url.clone();
        let http = stack.http("");
        let incident = stack.incident_url();
        let tokens_file = tokens.path().join("tokens.json");
        move || {
            Command::new(tk::binary("fleetctl"))
                .args(["--database-url", &db, "simulate", "--scenario", "incidents"])
                .args(["--register", "--prefix", "e2einc", "--ingest-url", &http])
                .args(["--incident-grpc-url", &incident])
                .env("FLEETWATCH_TOKEN", &admin)
                .arg("--tokens-file")
                .arg(&tokens_file)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "simulate failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("e2einc-cam sim_person_zone"), "{stdout}");

    stack
        .wait_count(
            "SELECT count(*) FROM incidents WHERE vehicle_id LIKE 'e2einc-%'",
            4,
            Duration::from_secs(60),
        )
        .await;
    let mut c = fleetctl::incidents::incident_client(&stack.incident_url(), &admin)
        .await
        .unwrap();
    let list = c
        .list_incidents(pb::ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents;
    let got: BTreeSet<(String, String)> = list
        .iter()
        .map(|i| (i.vehicle_id.clone(), i.incident_type.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("e2einc-battery", "battery_low"),
        ("e2einc-fence", "sim_keep_in"),
        ("e2einc-silent", "link_loss"),
        ("e2einc-cam", "sim_person_zone"),
    ]
    .iter()
    .map(|(v, r)| (v.to_string(), r.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(list.len(), 4);
    assert!(
        list.iter()
            .all(|i| i.trigger_count == 1 && i.status == pb::IncidentStatus::Open as i32)
    );

    // The person incident: trigger frame and box, and a clip of stored frames.
    let cam = list.iter().find(|i| i.vehicle_id == "e2einc-cam").unwrap();
    let ev = cam.evidence.clone().unwrap();
    assert!(ev.frame_key.starts_with("e2einc-cam/"), "{ev:?}");
    assert_eq!(ev.boxes.len(), 1);
    assert!(ev.boxes[0].x_max <= 0.5, "the box is in the zone: {ev:?}");
    let id = cam.id;
    let clip = tk::wait_for("clip frames", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            let d = c
                .get_incident(pb::GetIncidentRequest { id })
                .await
                .ok()?
                .into_inner();
            let keys = d.incident?.evidence?.clip_keys;
            // 2 fps over the 5 s before and after the trigger.
            (keys.len() >= 15).then_some(keys)
        }
    })
    .await;
    for k in &clip {
        assert!(k.contains("/clip_"), "{k}");
        let bytes = std::fs::read(stack.objects.path().join(k)).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8], "{k} is a JPEG");
    }
    // The trigger frame itself is stored by persistence under its frame key.
    let trigger_frame = stack.objects.path().join(&ev.frame_key);
    tk::wait_for("trigger frame stored", Duration::from_secs(30), || {
        let p = trigger_frame.clone();
        async move { p.is_file().then_some(()) }
    })
    .await;

    // fleetctl incidents: acknowledge the battery incident, list by status.
    let battery = list
        .iter()
        .find(|i| i.vehicle_id == "e2einc-battery")
        .unwrap()
        .id;
    let fleetctl = |args: Vec<String>| {
        let url = stack.incident_url();
        let admin = admin.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(tk::binary("fleetctl"))
                    .args(["incidents", "--incident-grpc-url", &url])
                    .env("FLEETWATCH_TOKEN", &admin)
                    .args(&args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = fleetctl(vec!["ack".into(), battery.to_string()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fleetctl(vec![
        "list".into(),
        "--status".into(),
        "acknowledged".into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("e2einc-battery") && text.contains("battery_low"),
        "{text}"
    );
    let out = fleetctl(vec!["ack".into(), battery.to_string()]).await;
    assert!(!out.status.success(), "acknowledging twice fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"));

    // Resolve through the API; the audit trail records it.
    c.resolve_incident(pb::IncidentActionRequest {
        incident_id: id,
        actor: String::new(),
        note: "checked".into(),
    })
    .await
    .unwrap();
    let d = c
        .get_incident(pb::GetIncidentRequest { id })
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<&str> = d.audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["opened", "resolved"]);
    // The verified caller, never a name the request chose.
    assert!(
        d.audit[1].actor.starts_with("e2e-admin [token "),
        "{:?}",
        d.audit[1]
    );
    let events = tk::read_topic(
        &bootstrap,
        &stack.topics.incidents,
        5,
        Duration::from_secs(30),
    )
    .await;
    assert!(events.len() >= 5);
}
