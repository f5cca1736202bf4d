//! The axum edge: 401 / 403 in the house JSON format, credentials checked
//! from the headers before the body is read, and the middleware variant.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRef, Request};
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use axum::{Extension, Json};
use chrono::{Duration as ChronoDuration, Utc};
use fleetwatch_auth::http::{Admin, Authenticated, Operator, Require, authenticate};
use fleetwatch_auth::{Principal, Role, Verifier, store};
use tower::ServiceExt;

use crate::common::{Fixture, bearer};

#[derive(Clone)]
struct AppState {
    verifier: Verifier,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(s: &AppState) -> Verifier {
        s.verifier.clone()
    }
}

async fn me(Authenticated(who): Authenticated) -> Json<Principal> {
    Json(who)
}

async fn ack(
    who: Require<Operator>,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "actor": who.actor(), "echo": body }))
}

async fn rules(who: Require<Admin>) -> String {
    who.actor()
}

async fn behind_middleware(Extension(who): Extension<Principal>) -> String {
    who.actor()
}

fn app(verifier: &Verifier) -> Router {
    let guarded = Router::new()
        .route("/guarded", get(behind_middleware))
        .layer(axum::middleware::from_fn_with_state(
            verifier.clone(),
            authenticate,
        ));
    Router::new()
        .route("/me", get(me))
        .route("/ack", post(ack))
        .route("/rules", get(rules))
        .with_state(AppState {
            verifier: verifier.clone(),
        })
        .merge(guarded)
}

/// A JSON body that records whether anyone read it.
fn watched_body(read: Arc<AtomicBool>) -> Body {
    let mut sent = false;
    Body::from_stream(futures::stream::poll_fn(move |_| {
        read.store(true, Ordering::SeqCst);
        if sent {
            Poll::Ready(None)
        } else {
            sent = true;
            Poll::Ready(Some(Ok::<_, std::io::Error>(Bytes::from_static(
                b"{\"note\":\"on it\"}",
            ))))
        }
    }))
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Body,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into_owned(),
    ));
    (status, headers, json)
}

#[tokio::test]
async fn refusals_answer_401_or_403_in_the_house_format() {
    let f = Fixture::new().await;
    let app = app(&f.verifier);
    let bob = f.user("bob", Role::Viewer).await;

    let (status, headers, body) = call(&app, "GET", "/me", None, Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "unauthenticated",
            "message": "missing Authorization: Bearer <token>"}})
    );

    sqlx::query("UPDATE users SET password_changed_at = now() - interval '1 day'")
        .execute(&f.db.pool)
        .await
        .unwrap();
    let expired = f
        .issuer
        .issue_at(&bob, Utc::now() - ChronoDuration::hours(1))
        .unwrap()
        .token;
    let (status, _, body) = call(&app, "GET", "/me", Some(&bearer(&expired)), Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "token_expired");

    let (status, _, body) = call(&app, "GET", "/me", Some("Bearer nonsense"), Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthenticated");

    let viewer = f.access_token(&bob);
    let (status, _, body) = call(&app, "GET", "/me", Some(&bearer(&viewer)), Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "bob");
    assert_eq!(body["role"], "viewer");
    assert_eq!(body["kind"], "user");

    let (status, _, body) =
        call(&app, "GET", "/rules", Some(&bearer(&viewer)), Body::empty()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "forbidden",
            "message": "this call needs role admin; the caller is viewer"}})
    );

    // Revoked API tokens are refused here too.
    let (id, api) = f.user_token("bob", None).await;
    let (status, _, _) = call(&app, "GET", "/me", Some(&bearer(&api)), Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    store::revoke_api_token(&f.db.pool, id, "test")
        .await
        .unwrap();
    fleetwatch_testkit::wait_for(
        "the revoked token to get 401",
        crate::common::WAIT,
        || async {
            let (status, _, _) = call(&app, "GET", "/me", Some(&bearer(&api)), Body::empty()).await;
            (status == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_body_is_not_read_before_the_caller_is_verified() {
    let f = Fixture::new().await;
    let app = app(&f.verifier);
    let viewer = f.access_token(&f.user("vera", Role::Viewer).await);
    let operator = f.access_token(&f.user("otto", Role::Operator).await);

    for (auth, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(bearer("garbage")), StatusCode::UNAUTHORIZED),
        (Some(bearer(&viewer)), StatusCode::FORBIDDEN),
    ] {
        let read = Arc::new(AtomicBool::new(false));
        let (status, _, _) = call(
            &app,
            "POST",
            "/ack",
            auth.as_deref(),
            watched_body(read.clone()),
        )
        .await;
        assert_eq!(status, want);
        assert!(!read.load(Ordering::SeqCst), "{want}: the body was read");
    }
    let read = Arc::new(AtomicBool::new(false));
    let (status, _, body) = call(
        &app,
        "POST",
        "/ack",
        Some(&bearer(&operator)),
        watched_body(read.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(read.load(Ordering::SeqCst));
    assert_eq!(
        body,
        serde_json::json!({"actor": "otto", "echo": {"note": "on it"}})
    );
}

#[tokio::test]
async fn the_middleware_refuses_before_the_handler() {
    let f = Fixture::new().await;
    let app = app(&f.verifier);
    let (status, headers, body) = call(&app, "GET", "/guarded", None, Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (_, secret) = f.service_token("ingest", Role::Viewer).await;
    let (status, _, body) = call(
        &app,
        "GET",
        "/guarded",
        Some(&bearer(&secret)),
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "service:ingest");
}
