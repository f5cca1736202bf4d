//! The gRPC API: lifecycle with audit and events, illegal transitions,
//! rule management, and every error code.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_auth::Role;
use fleetwatch_proto::v1::{self as pb, IncidentEventType, IncidentStatus};
use tonic::Code;

const HELMET: &str = r#"('no_helmet', NULL, 'detection', 3, '{"classes": ["no_helmet"], "min_confidence": 0.5, "min_consecutive_frames": 1, "clear_after_secs": 30}')"#;

fn act(id: i64, actor: &str) -> pb::IncidentActionRequest {
    pb::IncidentActionRequest {
        incident_id: id,
        actor: actor.into(),
        note: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_is_audited_published_and_guarded() {
    let h = Harness::start(&rules_sql(HELMET)).await;
    let t0 = time_ago(30);
    h.send_detections(&detections(
        "cam",
        t0,
        vec![detection("no_helmet", 0.9, 0.5, 0.5)],
    ))
    .await;
    h.wait_count("incident", "SELECT count(*) FROM incidents", 1)
        .await;
    let id = h.scalar("SELECT id FROM incidents").await;
    let mut c = h.client().await;
    // Two operators, each signed in: the audit names the verified caller.
    let mut alice = h.client_as("alice", Role::Operator).await;
    let mut bob = h.client_as("bob", Role::Operator).await;

    let inc = alice
        .acknowledge_incident(act(id, "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inc.status, IncidentStatus::Acknowledged as i32);
    assert_eq!(inc.acknowledged_by, "alice");
    let e = alice
        .acknowledge_incident(act(id, "alice"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let inc = alice
        .assign_incident(pb::AssignIncidentRequest {
            incident_id: id,
            actor: "alice".into(),
            assignee: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inc.assigned_to, "bob");
    bob.comment_incident(pb::CommentIncidentRequest {
        incident_id: id,
        actor: "bob".into(),
        text: "worker told to wear a helmet".into(),
    })
    .await
    .unwrap();
    let inc = bob
        .resolve_incident(act(id, "bob"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inc.status, IncidentStatus::Resolved as i32);
    assert_eq!(inc.resolved_by, "bob");
    assert!(inc.retain_until_unix_us > fleetwatch_common::now_unix_us() + 80 * 86_400_000_000);

    // Illegal transitions on a resolved incident.
    let e = bob.resolve_incident(act(id, "bob")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("already resolved"), "{}", e.message());
    let e = bob.acknowledge_incident(act(id, "bob")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = bob
        .assign_incident(pb::AssignIncidentRequest {
            incident_id: id,
            actor: "bob".into(),
            assignee: "carol".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    let detail = c
        .get_incident(pb::GetIncidentRequest { id })
        .await
        .unwrap()
        .into_inner();
    let trail: Vec<(String, String, String)> = detail
        .audit
        .iter()
        .map(|a| (a.action.clone(), a.actor.clone(), a.to_status.clone()))
        .collect();
    let expect = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        trail,
        vec![
            expect("opened", "system", "open"),
            expect("acknowledged", "alice", "acknowledged"),
            expect("assigned", "alice", "acknowledged"),
            expect("commented", "bob", "acknowledged"),
            expect("resolved", "bob", "resolved"),
        ]
    );
    assert_eq!(detail.audit[3].detail, "worker told to wear a helmet");

    let events = h.events(5).await;
    let types: Vec<i32> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        vec![
            IncidentEventType::Opened as i32,
            IncidentEventType::Acknowledged as i32,
            IncidentEventType::Assigned as i32,
            IncidentEventType::Commented as i32,
            IncidentEventType::Resolved as i32,
        ]
    );
    let audit_ids: Vec<&str> = detail.audit.iter().map(|a| a.event_id.as_str()).collect();
    let event_ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(audit_ids, event_ids, "each audited transition is one event");
    assert_eq!(events[4].actor, "bob");

    // After resolution a new trigger opens a new incident.
    h.send_detections(&detections(
        "cam",
        t0 + 60_000_000,
        vec![detection("no_helmet", 0.9, 0.5, 0.5)],
    ))
    .await;
    // The rule was still active (no clear yet): the new sighting does not
    // re-open; a clear then a new sighting does.
    h.send_detections(&detections("cam", t0 + 100_000_000, vec![]))
        .await;
    h.send_detections(&detections(
        "cam",
        t0 + 101_000_000,
        vec![detection("no_helmet", 0.9, 0.5, 0.5)],
    ))
    .await;
    h.wait_count("second incident", "SELECT count(*) FROM incidents", 2)
        .await;
    let open = c
        .list_incidents(pb::ListIncidentsRequest {
            statuses: vec![IncidentStatus::Open as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.incidents.len(), 1);
    assert_ne!(open.incidents[0].id, id);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_grpc_codes_naming_the_field() {
    let h = Harness::start("").await;
    let mut c = h.client().await;
    let e = c.acknowledge_incident(act(999, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.resolve_incident(act(0, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("incident_id"));
    // The actor is the verified caller: another name is refused, naming the field.
    let e = c.acknowledge_incident(act(1, "mallory")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().starts_with("actor:"), "{}", e.message());
    let e = c
        .comment_incident(pb::CommentIncidentRequest {
            incident_id: 1,
            actor: String::new(),
            text: String::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("text"));
    let e = c
        .get_incident(pb::GetIncidentRequest { id: 42 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .list_incidents(pb::ListIncidentsRequest {
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit"));
    let e = c
        .list_incidents(pb::ListIncidentsRequest {
            statuses: vec![42],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("statuses"));

    // Rules: shipped defaults, create, update, disable, errors.
    let rules = c
        .list_rules(pb::ListRulesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .rules;
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    for n in ["battery_low", "link_loss", "no_helmet", "intrusion"] {
        assert!(names.contains(&n), "default rule {n} in {names:?}");
    }
    let fence = pb::Rule {
        name: "yard".into(),
        vehicle_id: "boat-1".into(),
        severity: pb::Severity::Critical as i32,
        enabled: true,
        description: "stay in the yard".into(),
        params: Some(pb::rule::Params::Geofence(pb::GeofenceParams {
            polygon: vec![
                pb::GeoPoint { lat: 0.0, lon: 0.0 },
                pb::GeoPoint { lat: 0.0, lon: 1.0 },
                pb::GeoPoint { lat: 1.0, lon: 1.0 },
            ],
            mode: pb::GeofenceMode::KeepIn as i32,
            for_secs: 0.0,
        })),
        ..Default::default()
    };
    let created = c
        .create_rule(pb::CreateRuleRequest {
            rule: Some(fence.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.id > 0);
    assert_eq!(created.params, fence.params);
    let e = c
        .create_rule(pb::CreateRuleRequest {
            rule: Some(fence.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let mut bad = fence.clone();
    bad.name = "bad name!".into();
    bad.severity = 0;
    bad.params = Some(pb::rule::Params::Geofence(pb::GeofenceParams {
        polygon: vec![pb::GeoPoint {
            lat: 100.0,
            lon: 0.0,
        }],
        mode: 0,
        for_secs: 0.0,
    }));
    let e = c
        .create_rule(pb::CreateRuleRequest { rule: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for f in ["rule.name", "rule.severity", "rule.geofence.mode"] {
        assert!(e.message().contains(f), "{f} in {}", e.message());
    }
    let mut t = fence.clone();
    t.params = Some(pb::rule::Params::Threshold(pb::ThresholdParams {
        field: "speed".into(),
        op: pb::ThresholdOp::Above as i32,
        trigger: 10.0,
        clear: 20.0,
        for_secs: 1.0,
    }));
    let e = c
        .create_rule(pb::CreateRuleRequest { rule: Some(t) })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("rule.threshold.clear"),
        "{}",
        e.message()
    );
    let e = c
        .create_rule(pb::CreateRuleRequest { rule: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let mut upd = created.clone();
    upd.severity = pb::Severity::Minor as i32;
    upd.params = Some(pb::rule::Params::LinkLoss(pb::LinkLossParams {
        timeout_secs: 5.0,
    }));
    let updated = c
        .update_rule(pb::UpdateRuleRequest {
            rule: Some(upd.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.severity, pb::Severity::Minor as i32);
    assert!(matches!(
        updated.params,
        Some(pb::rule::Params::LinkLoss(_))
    ));
    upd.id = 99_999;
    let e = c
        .update_rule(pb::UpdateRuleRequest { rule: Some(upd) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let disabled = c
        .disable_rule(pb::DisableRuleRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert!(!disabled.enabled);
    let listed = c
        .list_rules(pb::ListRulesRequest {
            vehicle_id: "boat-1".into(),
            include_disabled: false,
        })
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert!(listed.iter().all(|r| r.id != created.id));
    let e = c
        .disable_rule(pb::DisableRuleRequest { id: 123_456 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    h.stop().await;
}
