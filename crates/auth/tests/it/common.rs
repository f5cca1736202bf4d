//! A fresh database with a registered signing key, and verifiers that
//! listen for invalidations as a service's would.

use std::time::Duration;

use fleetwatch_auth::store::{self, NewApiToken, TokenOwner};
use fleetwatch_auth::{AuthConfig, Role, SigningKey, TokenIssuer, User, Verifier};
use fleetwatch_common::Shutdown;
use fleetwatch_testkit::TestDb;

pub const PASSWORD: &str = "correct horse battery staple";
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Fixture {
    pub db: TestDb,
    pub config: AuthConfig,
    pub issuer: TokenIssuer,
    pub verifier: Verifier,
    stop: Shutdown,
}

impl Fixture {
    pub async fn new() -> Self {
        Self::with_config(AuthConfig::default()).await
    }

    pub async fn with_config(config: AuthConfig) -> Self {
        let db = TestDb::new().await;
        let key = SigningKey::generate();
        store::register_signing_key(&db.pool, &key.public_key(), "test")
            .await
            .unwrap();
        let issuer = TokenIssuer::new(key, &config).unwrap();
        let stop = Shutdown::new();
        let verifier = listening_verifier(&db.pool, &config, &stop).await;
        Self {
            db,
            config,
            issuer,
            verifier,
            stop,
        }
    }

    /// Another replica: its own pool, cache and listener.
    pub async fn replica(&self) -> Verifier {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect(&self.db.url)
            .await
            .unwrap();
        listening_verifier(&pool, &self.config, &self.stop).await
    }

    pub async fn user(&self, name: &str, role: Role) -> User {
        store::create_user(&self.db.pool, name, PASSWORD, role, "test")
            .await
            .unwrap()
    }

    pub async fn user_token(&self, user: &str, role: Option<Role>) -> (i64, String) {
        let (info, secret) = store::create_api_token(
            &self.db.pool,
            &NewApiToken {
                owner: TokenOwner::User(user.into()),
                name: "test".into(),
                role,
                expires_at: None,
            },
            "test",
        )
        .await
        .unwrap();
        (info.id, secret)
    }

    pub async fn service_token(&self, service: &str, role: Role) -> (i64, String) {
        let (info, secret) = store::create_api_token(
            &self.db.pool,
            &NewApiToken {
                owner: TokenOwner::Service(service.into()),
                name: format!("{service} calls"),
                role: Some(role),
                expires_at: None,
            },
            "test",
        )
        .await
        .unwrap();
        (info.id, secret)
    }

    pub fn access_token(&self, user: &User) -> String {
        self.issuer.issue(user).unwrap().token
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A verifier whose listener runs (until `stop`) and is connected.
pub async fn listening_verifier(
    pool: &sqlx::PgPool,
    config: &AuthConfig,
    stop: &Shutdown,
) -> Verifier {
    let v = Verifier::new(pool.clone(), config);
    tokio::spawn(v.clone().listen(stop.clone()));
    tokio::time::timeout(WAIT, v.listening())
        .await
        .expect("the verifier's listener connects");
    v
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Waits until `verifier` answers `token` with `want` (a refusal arrives by
/// notification; nothing here sleeps to prove a negative).
pub async fn wait_for_result(
    what: &str,
    verifier: &Verifier,
    token: &str,
    want: impl Fn(&Result<fleetwatch_auth::Principal, fleetwatch_auth::AuthError>) -> bool,
) {
    fleetwatch_testkit::wait_for(what, WAIT, || async {
        let r = verifier.verify_token(token).await;
        want(&r).then_some(())
    })
    .await;
}
