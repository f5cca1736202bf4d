//! The gRPC edge. Server side: [`GrpcAuthLayer`] wraps a tonic service,
//! verifies `authorization: Bearer ...` from the request headers before the
//! message is decoded, refuses with `UNAUTHENTICATED` (trailers-only, the
//! message naming the reason), and puts the [`Principal`] into the request's
//! extensions, where handlers check the role with [`require`]. Client side:
//! [`BearerInterceptor`] sends a service's own token.
//!
//! ```ignore
//! let api = GrpcAuthLayer::new(verifier.clone()).wrap(IncidentServiceServer::new(grpc::GrpcApi { .. }));
//! sup.serve_grpc(Stage::Servers, listener, RequestMetrics::new(&metrics::GRPC_REQUESTS).wrap(api));
//!
//! async fn resolve(&self, request: Request<ResolveRequest>) -> Result<Response<..>, Status> {
//!     let who = fleetwatch_auth::grpc::require(&request, Role::Operator)?;
//!     store.resolve(id, &who.actor()).await ...
//! }
//! ```

use std::task::{Context, Poll};

use axum::http::{Request, Response};
use tonic::body::BoxBody;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::server::NamedService;
use tonic::{Status, codegen::BoxFuture};

use crate::api_token::ServiceToken;
use crate::error::AuthError;
use crate::{Principal, Role, Verifier};

/// Wraps gRPC services so every call is verified first.
#[derive(Clone, Debug)]
pub struct GrpcAuthLayer {
    verifier: Verifier,
}

impl GrpcAuthLayer {
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }

    /// Wraps one service: what `tower::Layer::layer` does, without the import.
    pub fn wrap<S>(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> GrpcAuth<S> {
        self.wrap(inner)
    }
}

/// A gRPC service whose callers are verified ([`GrpcAuthLayer`]).
#[derive(Clone, Debug)]
pub struct GrpcAuth<S> {
    inner: S,
    verifier: Verifier,
}

impl<S: NamedService> NamedService for GrpcAuth<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<Request<B>> for GrpcAuth<S>
where
    S: tower::Service<Request<B>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Response<BoxBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone
        // stays for the next (the usual tower pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            match verifier.verify_headers(req.headers()).await {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(e) => Ok(Status::from(e).into_http()),
            }
        })
    }
}

/// The verified caller of a request that passed [`GrpcAuthLayer`].
pub fn principal<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

/// The verified caller if it holds at least `role`: otherwise
/// `PERMISSION_DENIED`, or `UNAUTHENTICATED` if the service is not behind
/// [`GrpcAuthLayer`] (fail closed).
// `Status` is what tonic handlers return; boxing it here would only move the cost.
#[allow(clippy::result_large_err)]
pub fn require<T>(request: &tonic::Request<T>, role: Role) -> Result<Principal, Status> {
    let Some(p) = principal(request) else {
        tracing::error!("a handler checks a role but its service is not wrapped in GrpcAuthLayer");
        return Err(AuthError::Missing.into());
    };
    p.require(role).map_err(Status::from)?;
    Ok(p.clone())
}

/// Sends a service token with every call of a tonic client:
/// `PersistenceClient::with_interceptor(channel, BearerInterceptor::new(&token))`.
#[derive(Clone)]
pub struct BearerInterceptor {
    value: MetadataValue<Ascii>,
}

impl BearerInterceptor {
    pub fn new(token: &ServiceToken) -> Self {
        let mut value: MetadataValue<Ascii> = token
            .authorization()
            .parse()
            .unwrap_or_else(|_| MetadataValue::from_static(""));
        value.set_sensitive(true);
        Self { value }
    }
}

impl std::fmt::Debug for BearerInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerInterceptor(<redacted>)")
    }
}

impl tonic::service::Interceptor for BearerInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(request)
    }
}
