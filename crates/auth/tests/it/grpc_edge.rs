//! The gRPC edge on a real server (`fleetwatch_common::grpc::serve`, as the
//! services run it): UNAUTHENTICATED for every bad credential before the
//! service sees the call, PERMISSION_DENIED per method, service tokens from
//! a client interceptor, health left open.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{Duration as ChronoDuration, Utc};
use fleetwatch_auth::grpc::{BearerInterceptor, GrpcAuthLayer, require};
use fleetwatch_auth::store;
use fleetwatch_auth::{Role, ServiceToken, SigningKey, TokenIssuer, generate_api_token};
use fleetwatch_common::Shutdown;
use fleetwatch_proto::v1::inference_service_client::InferenceServiceClient;
use fleetwatch_proto::v1::inference_service_server::{InferenceService, InferenceServiceServer};
use fleetwatch_proto::v1::{DetectRequest, DetectResponse, GetModelRequest, ModelStatus};
use tonic::{Code, Request, Response, Status};

use crate::common::{Fixture, bearer};

/// Reads need a viewer, `Detect` an operator, `publish` a service: the
/// shape every service's handlers take.
struct Stub {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl InferenceService for Stub {
    async fn detect(
        &self,
        request: Request<DetectRequest>,
    ) -> Result<Response<DetectResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let who = require(&request, Role::Operator)?;
        if request.get_ref().publish && !who.is_service() {
            return Err(Status::permission_denied("publish is for services"));
        }
        Ok(Response::new(DetectResponse {
            width: 1,
            ..Default::default()
        }))
    }

    async fn get_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<ModelStatus>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let who = require(&request, Role::Viewer)?;
        Ok(Response::new(ModelStatus {
            // Tells the test who the handler saw.
            name: who.actor(),
            ..Default::default()
        }))
    }
}

struct Server {
    addr: std::net::SocketAddr,
    calls: Arc<AtomicUsize>,
    stop: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(f: &Fixture) -> Server {
    let calls = Arc::new(AtomicUsize::new(0));
    let api = GrpcAuthLayer::new(f.verifier.clone()).wrap(InferenceServiceServer::new(Stub {
        calls: calls.clone(),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Shutdown::new();
    tokio::spawn(fleetwatch_common::grpc::serve(listener, api, stop.clone()));
    Server { addr, calls, stop }
}

async fn client(s: &Server) -> InferenceServiceClient<tonic::transport::Channel> {
    InferenceServiceClient::connect(format!("http://{}", s.addr))
        .await
        .unwrap()
}

fn with_auth<T>(msg: T, authorization: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(a) = authorization {
        r.metadata_mut().insert("authorization", a.parse().unwrap());
    }
    r
}

#[tokio::test]
async fn every_bad_credential_is_unauthenticated_before_the_service_runs() {
    let f = Fixture::new().await;
    let s = serve(&f).await;
    let mut c = client(&s).await;
    f.user("root", Role::Admin).await;
    let bob = f.user("bob", Role::Admin).await;

    let expired = f
        .issuer
        .issue_at(&bob, Utc::now() - ChronoDuration::hours(2))
        .unwrap()
        .token;
    let rogue = TokenIssuer::new(SigningKey::generate(), &f.config).unwrap();
    let other_key = rogue.issue(&bob).unwrap().token;
    let genuine = f.access_token(&bob);
    let relabelled = format!(
        "{}.{}",
        genuine.split('.').next().unwrap(),
        other_key.split_once('.').unwrap().1
    );
    let (id, revoked) = f.user_token("bob", None).await;
    store::revoke_api_token(&f.db.pool, id, "test")
        .await
        .unwrap();
    let (_, disabled) = f.user_token("bob", None).await;
    store::set_disabled(&f.db.pool, "bob", true, "test")
        .await
        .unwrap();

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing Authorization"),
        ("not bearer", Some("Basic Ym9iOnB3".into()), "malformed"),
        ("malformed", Some(bearer("garbage")), "malformed"),
        ("expired", Some(bearer(&expired)), "expired"),
        (
            "unknown kid",
            Some(bearer(&other_key)),
            "unknown or retired key",
        ),
        ("wrongly signed", Some(bearer(&relabelled)), "signature"),
        (
            "unknown api token",
            Some(bearer(&generate_api_token())),
            "unknown, revoked",
        ),
        (
            "revoked api token",
            Some(bearer(&revoked)),
            "unknown, revoked",
        ),
        ("disabled user", Some(bearer(&disabled)), "disabled"),
        (
            "disabled user's session",
            Some(bearer(&genuine)),
            "disabled",
        ),
    ];
    for (what, auth, message) in cases {
        for call in ["detect", "get_model"] {
            let status = match call {
                "detect" => c
                    .detect(with_auth(DetectRequest::default(), auth.as_deref()))
                    .await
                    .unwrap_err(),
                _ => c
                    .get_model(with_auth(GetModelRequest {}, auth.as_deref()))
                    .await
                    .unwrap_err(),
            };
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{what} {call}: {status:?}"
            );
            assert!(
                status.message().contains(message),
                "{what} {call}: {}",
                status.message()
            );
        }
    }
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        0,
        "no refused call reached a handler"
    );

    // Health stays open: probes carry no credentials.
    assert_eq!(
        fleetwatch_testkit::grpc_health(s.addr, "").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn roles_are_checked_per_method() {
    let f = Fixture::new().await;
    let s = serve(&f).await;
    let mut c = client(&s).await;
    let viewer = f.access_token(&f.user("vera", Role::Viewer).await);
    let operator = f.access_token(&f.user("otto", Role::Operator).await);

    let m = c
        .get_model(with_auth(GetModelRequest {}, Some(&bearer(&viewer))))
        .await
        .unwrap();
    assert_eq!(
        m.get_ref().name,
        "vera",
        "the handler sees the verified principal"
    );
    let denied = c
        .detect(with_auth(DetectRequest::default(), Some(&bearer(&viewer))))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("operator"),
        "{}",
        denied.message()
    );

    c.detect(with_auth(
        DetectRequest::default(),
        Some(&bearer(&operator)),
    ))
    .await
    .unwrap();
    let publish = DetectRequest {
        publish: true,
        ..Default::default()
    };
    let denied = c
        .detect(with_auth(publish.clone(), Some(&bearer(&operator))))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A service with its token on every call (the client interceptor).
    let (_, secret) = f.service_token("ingest", Role::Operator).await;
    let token = ServiceToken::new(secret).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut svc = InferenceServiceClient::with_interceptor(channel, BearerInterceptor::new(&token));
    assert_eq!(
        svc.get_model(GetModelRequest {})
            .await
            .unwrap()
            .get_ref()
            .name,
        "service:ingest"
    );
    svc.detect(publish).await.unwrap();
}
