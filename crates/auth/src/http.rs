//! The HTTP edge (axum). Extractors verify the `Authorization` header from
//! the request parts; axum runs them before the body extractor, so nothing
//! of the body is read for a caller who is refused. Refusals answer in the
//! house format: 401 with `WWW-Authenticate: Bearer`, 403, or 503, and the
//! JSON body `{"error":{"code","message"}}`.
//!
//! ```ignore
//! #[derive(Clone)]
//! struct AppState { verifier: Verifier, .. }
//! impl FromRef<AppState> for Verifier { fn from_ref(s: &AppState) -> Verifier { s.verifier.clone() } }
//!
//! async fn ack(who: Require<Operator>, Json(body): Json<Ack>) -> .. { .. who.actor() .. }
//! async fn me(Authenticated(who): Authenticated) -> Json<Principal> { Json(who) }
//!
//! // or refuse every unauthenticated request of a router up front:
//! router.layer(axum::middleware::from_fn_with_state(verifier, fleetwatch_auth::http::authenticate))
//! ```

use std::marker::PhantomData;

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::AuthError;
use crate::{Principal, Role, Verifier};

/// The verified caller, any role. Reuses the principal [`authenticate`]
/// already put into the request, else verifies with the state's [`Verifier`].
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

impl<S> FromRequestParts<S> for Authenticated
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(Self(p.clone()));
        }
        let verifier = Verifier::from_ref(state);
        let p = verifier.verify_headers(&parts.headers).await?;
        parts.extensions.insert(p.clone());
        Ok(Self(p))
    }
}

/// A role as a type, for [`Require`].
pub trait MinRole: Send + Sync + 'static {
    const ROLE: Role;
}

/// [`Require<Viewer>`]: any verified caller.
#[derive(Debug, Clone, Copy)]
pub struct Viewer;
/// [`Require<Operator>`]: operators and admins.
#[derive(Debug, Clone, Copy)]
pub struct Operator;
/// [`Require<Admin>`]: admins only.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl MinRole for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl MinRole for Operator {
    const ROLE: Role = Role::Operator;
}
impl MinRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// The verified caller if it holds at least `R::ROLE`: 401 without valid
/// credentials, 403 with too small a role.
#[derive(Debug, Clone)]
pub struct Require<R: MinRole>(pub Principal, pub PhantomData<R>);

impl<R: MinRole> Require<R> {
    pub fn principal(&self) -> &Principal {
        &self.0
    }

    pub fn into_principal(self) -> Principal {
        self.0
    }
}

impl<R: MinRole> std::ops::Deref for Require<R> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<S, R> FromRequestParts<S> for Require<R>
where
    Verifier: FromRef<S>,
    S: Send + Sync,
    R: MinRole,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthError> {
        let Authenticated(p) = Authenticated::from_request_parts(parts, state).await?;
        p.require(R::ROLE)?;
        Ok(Self(p, PhantomData))
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(verifier, authenticate)`):
/// refuses a request without valid credentials before any handler or body
/// extractor runs, and leaves the [`Principal`] in its extensions.
pub async fn authenticate(
    State(verifier): State<Verifier>,
    mut req: Request,
    next: Next,
) -> Response {
    match verifier.verify_headers(req.headers()).await {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}
