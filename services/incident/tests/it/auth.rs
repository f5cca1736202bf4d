//! Who may call: every method refuses a missing, malformed, expired or
//! wrongly signed token with UNAUTHENTICATED, and a too-small role with
//! PERMISSION_DENIED (viewers read; operators act on incidents; admins
//! manage rules); refused calls change nothing.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_auth::{Role, SigningKey, TokenIssuer};
use fleetwatch_proto::v1 as pb;
use tonic::Code;

/// The least role of each method.
const METHODS: &[(&str, Role)] = &[
    ("ListIncidents", Role::Viewer),
    ("GetIncident", Role::Viewer),
    ("ListRules", Role::Viewer),
    ("AcknowledgeIncident", Role::Operator),
    ("AssignIncident", Role::Operator),
    ("CommentIncident", Role::Operator),
    ("ResolveIncident", Role::Operator),
    ("CreateRule", Role::Admin),
    ("UpdateRule", Role::Admin),
    ("DisableRule", Role::Admin),
];

/// Calls `method` with a harmless request; the result's code.
async fn call(c: &mut Client, method: &str) -> Code {
    let act = pb::IncidentActionRequest {
        incident_id: 999,
        ..Default::default()
    };
    let r = match method {
        "ListIncidents" => c
            .list_incidents(pb::ListIncidentsRequest::default())
            .await
            .map(drop),
        "GetIncident" => c
            .get_incident(pb::GetIncidentRequest { id: 999 })
            .await
            .map(drop),
        "ListRules" => c
            .list_rules(pb::ListRulesRequest::default())
            .await
            .map(drop),
        "AcknowledgeIncident" => c.acknowledge_incident(act).await.map(drop),
        "ResolveIncident" => c.resolve_incident(act).await.map(drop),
        "AssignIncident" => c
            .assign_incident(pb::AssignIncidentRequest {
                incident_id: 999,
                ..Default::default()
            })
            .await
            .map(drop),
        "CommentIncident" => c
            .comment_incident(pb::CommentIncidentRequest {
                incident_id: 999,
                text: "x".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "CreateRule" => c
            .create_rule(pb::CreateRuleRequest::default())
            .await
            .map(drop),
        "UpdateRule" => c
            .update_rule(pb::UpdateRuleRequest::default())
            .await
            .map(drop),
        "DisableRule" => c
            .disable_rule(pb::DisableRuleRequest { id: 999 })
            .await
            .map(drop),
        other => panic!("no such method {other}"),
    };
    match r {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_refuses_callers_without_a_valid_token() {
    let h = Harness::start("").await;
    let admin = fleetwatch_auth::store::find_user(&h.db.pool, "admin")
        .await
        .unwrap();
    assert!(admin.is_none());
    let good = h.access_token("admin", Role::Admin).await;
    let user = fleetwatch_auth::store::find_user(&h.db.pool, "admin")
        .await
        .unwrap()
        .unwrap();
    // Signed by a key the service does not know.
    let stranger = TokenIssuer::new(SigningKey::generate(), &h.config.auth).unwrap();
    let wrongly_signed = stranger.issue(&user).unwrap().token;
    // Signed by the right key, but an hour old (the default lifetime is 15 min).
    let expired = h
        .issuer
        .issue_at(&user, chrono::Utc::now() - chrono::Duration::hours(1))
        .unwrap()
        .token;
    // The right token with its signature's last characters changed.
    let mut tampered = good.clone();
    tampered.truncate(tampered.len() - 4);
    tampered.push_str("AAAA");
    let cases: [(&str, Option<String>); 6] = [
        ("no token", None),
        ("garbage", Some("not-a-token".into())),
        ("unknown API token", Some(format!("fwt_{}", "0".repeat(64)))),
        ("wrongly signed", Some(wrongly_signed)),
        ("expired", Some(expired)),
        ("tampered", Some(tampered)),
    ];
    for (what, token) in cases {
        let mut c = h.client_with(token).await;
        for (method, _) in METHODS {
            assert_eq!(
                call(&mut c, method).await,
                Code::Unauthenticated,
                "{method} with {what}"
            );
        }
    }
    // The good token passes the door on every method (what follows is the
    // method's own answer: not found, invalid argument).
    let mut c = h.client_with(Some(good)).await;
    for (method, _) in METHODS {
        let code = call(&mut c, method).await;
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{method} as admin: {code:?}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_checks_the_callers_role() {
    let h = Harness::start("").await;
    for (user, role) in [
        ("vera", Role::Viewer),
        ("otto", Role::Operator),
        ("ada", Role::Admin),
    ] {
        let mut c = h.client_as(user, role).await;
        for (method, least) in METHODS {
            let code = call(&mut c, method).await;
            if role < *least {
                assert_eq!(code, Code::PermissionDenied, "{method} as {role:?}");
            } else {
                assert_ne!(code, Code::PermissionDenied, "{method} as {role:?}");
                assert_ne!(code, Code::Unauthenticated, "{method} as {role:?}");
            }
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_viewer_changes_nothing() {
    let sql = rules_sql(
        r#"('no_helmet', NULL, 'detection', 3, '{"classes": ["no_helmet"], "min_confidence": 0.5, "min_consecutive_frames": 1, "clear_after_secs": 30}')"#,
    );
    let h = Harness::start(&sql).await;
    h.send_detections(&detections(
        "cam",
        time_ago(30),
        vec![detection("no_helmet", 0.9, 0.5, 0.5)],
    ))
    .await;
    h.wait_count("incident", "SELECT count(*) FROM incidents", 1)
        .await;
    let id = h.scalar("SELECT id FROM incidents").await;
    let mut viewer = h.client_as("vera", Role::Viewer).await;
    let e = viewer
        .resolve_incident(pb::IncidentActionRequest {
            incident_id: id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let rule_id = h.scalar("SELECT id FROM incident_rules").await;
    let e = viewer
        .disable_rule(pb::DisableRuleRequest { id: rule_id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        h.scalar("SELECT count(*) FROM incident_audit WHERE action <> 'opened'")
            .await,
        0
    );
    assert_eq!(
        h.scalar("SELECT count(*) FROM incidents WHERE status = 'open'")
            .await,
        1
    );
    assert_eq!(
        h.scalar("SELECT count(*) FROM incident_rules WHERE enabled")
            .await,
        1
    );
    // It may still read.
    let got = viewer
        .get_incident(pb::GetIncidentRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.incident.unwrap().id, id);
    h.stop().await;
}
