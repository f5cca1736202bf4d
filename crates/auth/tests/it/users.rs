//! Managing operators: names, passwords, login, the last admin, the first
//! admin, and the audit trail.

use fleetwatch_auth::store::{self, StoreError};
use fleetwatch_auth::{AuthError, Role};

use crate::common::{Fixture, PASSWORD};

#[tokio::test]
async fn users_are_created_checked_and_listed() {
    let f = Fixture::new().await;
    let pool = &f.db.pool;
    let alice = store::create_user(pool, "alice", PASSWORD, Role::Operator, "fleetctl (ops)")
        .await
        .unwrap();
    assert_eq!(alice.role, Role::Operator);
    assert!(alice.is_active());
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(alice.id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(PASSWORD));

    for (name, password, want) in [
        ("alice", PASSWORD, "already exists"),
        ("Alice", PASSWORD, "is invalid"),
        ("a b", PASSWORD, "is invalid"),
        ("carol", "short", "too short"),
    ] {
        let e = store::create_user(pool, name, password, Role::Viewer, "t")
            .await
            .unwrap_err();
        assert!(e.to_string().contains(want), "{name}: {e}");
    }
    store::create_user(pool, "bob", PASSWORD, Role::Viewer, "t")
        .await
        .unwrap();
    let names: Vec<String> = store::list_users(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    let audit: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor, action, target FROM auth_audit ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        audit[..2],
        [
            (
                "test".into(),
                "key.register".into(),
                f.issuer.public_key().kid
            ),
            (
                "fleetctl (ops)".into(),
                "user.create".into(),
                "alice".into()
            ),
        ]
    );
}

#[tokio::test]
async fn login_checks_password_and_account_alike() {
    let f = Fixture::new().await;
    let pool = &f.db.pool;
    f.user("root", Role::Admin).await;
    f.user("alice", Role::Operator).await;
    let u = store::login(pool, "alice", PASSWORD).await.unwrap();
    assert_eq!(u.username, "alice");
    assert_eq!(
        store::login(pool, " Alice ", PASSWORD).await.unwrap().id,
        u.id
    );
    assert_eq!(
        store::login(pool, "alice", "not the password").await,
        Err(AuthError::BadLogin)
    );
    assert_eq!(
        store::login(pool, "nobody", PASSWORD).await,
        Err(AuthError::BadLogin),
        "unknown users read like a wrong password"
    );
    store::set_password(pool, "alice", "another long passphrase", "t")
        .await
        .unwrap();
    assert_eq!(
        store::login(pool, "alice", PASSWORD).await,
        Err(AuthError::BadLogin)
    );
    store::login(pool, "alice", "another long passphrase")
        .await
        .unwrap();
    store::set_disabled(pool, "alice", true, "t").await.unwrap();
    assert_eq!(
        store::login(pool, "alice", "another long passphrase").await,
        Err(AuthError::Disabled)
    );
    assert!(matches!(
        store::set_password(pool, "ghost", PASSWORD, "t").await,
        Err(StoreError::NoSuchUser(_))
    ));
}

#[tokio::test]
async fn the_last_active_admin_stays() {
    let f = Fixture::new().await;
    let pool = &f.db.pool;
    f.user("root", Role::Admin).await;
    assert!(matches!(
        store::set_disabled(pool, "root", true, "t").await,
        Err(StoreError::LastAdmin(_))
    ));
    assert!(matches!(
        store::set_role(pool, "root", Role::Operator, "t").await,
        Err(StoreError::LastAdmin(_))
    ));
    f.user("second", Role::Operator).await;
    store::set_role(pool, "second", Role::Admin, "t")
        .await
        .unwrap();
    store::set_disabled(pool, "root", true, "t").await.unwrap();
    assert!(matches!(
        store::set_role(pool, "second", Role::Viewer, "t").await,
        Err(StoreError::LastAdmin(_))
    ));
    store::set_disabled(pool, "root", false, "t").await.unwrap();
    store::set_role(pool, "second", Role::Viewer, "t")
        .await
        .unwrap();
}

#[tokio::test]
async fn ensure_admin_creates_exactly_one_first_admin() {
    let f = Fixture::new().await;
    let pool = &f.db.pool;
    let (a, b) = tokio::join!(
        store::ensure_admin(pool, "admin", "scripts/up"),
        store::ensure_admin(pool, "admin", "scripts/up"),
    );
    let created: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(created.len(), 1, "concurrent calls create one admin");
    let (user, password) = &created[0];
    assert_eq!((user.username.as_str(), user.role), ("admin", Role::Admin));
    store::login(pool, "admin", password).await.unwrap();
    assert!(
        store::ensure_admin(pool, "admin", "t")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store::ensure_admin(pool, "someone-else", "t")
            .await
            .unwrap()
            .is_none(),
        "any active admin counts"
    );

    // No active admin left (disabled by hand): a new one, under a free name.
    sqlx::query("UPDATE users SET disabled_at = now()")
        .execute(pool)
        .await
        .unwrap();
    assert!(matches!(
        store::ensure_admin(pool, "admin", "t").await,
        Err(StoreError::NotAnAdmin(_))
    ));
    let (second, _) = store::ensure_admin(pool, "admin2", "t")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.role, Role::Admin);
}
