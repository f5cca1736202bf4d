//! Several replicas, each with its own cache: a change committed anywhere
//! reaches all of them through NOTIFY, and a listener that loses its
//! connection comes back with empty caches.

use fleetwatch_auth::store;
use fleetwatch_auth::{AuthConfig, AuthError, Role};
use fleetwatch_testkit::wait_for;

use crate::common::{Fixture, WAIT, wait_for_result};

/// The listener's backend: its last statement is its LISTEN or, after 15 s,
/// its heartbeat (nothing else in these tests runs a bare `SELECT 1`).
const LISTENING: &str = "datname = current_database() AND pid <> pg_backend_pid()
    AND (query LIKE 'LISTEN%' OR query = 'SELECT 1')";

#[tokio::test]
async fn a_revocation_reaches_every_replica_at_once() {
    // Entries would live an hour without a notification: only NOTIFY can
    // make the replicas refuse within the test.
    let f = Fixture::with_config(AuthConfig {
        cache_max_age_secs: 3600,
        ..Default::default()
    })
    .await;
    let second = f.replica().await;
    f.user("alice", Role::Operator).await;
    let (id, token) = f.user_token("alice", None).await;
    for v in [&f.verifier, &second] {
        v.verify_token(&token).await.unwrap();
        let before = v.stats();
        v.verify_token(&token).await.unwrap();
        assert_eq!(v.stats().misses, before.misses, "cached on this replica");
    }

    // Revoked through a third connection, as `fleetctl tokens revoke` does.
    let admin = sqlx::PgPool::connect(&f.db.url).await.unwrap();
    assert!(store::revoke_api_token(&admin, id, "test").await.unwrap());
    for v in [&f.verifier, &second] {
        wait_for_result("the replica to refuse the revoked token", v, &token, |r| {
            *r == Err(AuthError::UnknownToken)
        })
        .await;
        assert!(v.stats().invalidations >= 1);
    }
}

#[tokio::test]
async fn disabling_a_user_reaches_every_replica_at_once() {
    let f = Fixture::with_config(AuthConfig {
        cache_max_age_secs: 3600,
        ..Default::default()
    })
    .await;
    let second = f.replica().await;
    f.user("root", Role::Admin).await;
    let bob = f.user("bob", Role::Operator).await;
    let access = f.access_token(&bob);
    let (_, api) = f.user_token("bob", None).await;
    for v in [&f.verifier, &second] {
        v.verify_token(&access).await.unwrap();
        v.verify_token(&api).await.unwrap();
    }
    store::set_disabled(&f.db.pool, "bob", true, "test")
        .await
        .unwrap();
    for v in [&f.verifier, &second] {
        for t in [&access, &api] {
            wait_for_result("the replica to refuse bob", v, t, |r| {
                *r == Err(AuthError::Disabled)
            })
            .await;
        }
    }
}

#[tokio::test]
async fn a_listener_that_loses_its_connection_reconnects_with_empty_caches() {
    let f = Fixture::with_config(AuthConfig {
        cache_max_age_secs: 3600,
        ..Default::default()
    })
    .await;
    f.user("alice", Role::Operator).await;
    let (id, token) = f.user_token("alice", None).await;
    f.verifier.verify_token(&token).await.unwrap();
    assert_eq!(f.verifier.stats().tokens, 1);

    // Kill the listening backend, as a failover or an idle-killer would.
    let killed: Vec<bool> = sqlx::query_scalar(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {LISTENING}"
    ))
    .fetch_all(&f.db.pool)
    .await
    .unwrap();
    assert_eq!(killed, vec![true], "one listening backend");

    // It reconnects and starts from empty caches (what was sent while it
    // was away is lost, so nothing cached before may be trusted).
    wait_for(
        "the listener to reconnect with empty caches",
        WAIT,
        || async {
            let s = f.verifier.stats();
            (s.listening && s.tokens == 0).then_some(())
        },
    )
    .await;
    wait_for("a new listening backend", WAIT, || async {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {LISTENING}"
        ))
        .fetch_one(&f.db.pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    // And it still hears revocations.
    f.verifier.verify_token(&token).await.unwrap();
    assert_eq!(f.verifier.stats().tokens, 1);
    store::revoke_api_token(&f.db.pool, id, "test")
        .await
        .unwrap();
    wait_for_result(
        "the revoked token to be refused",
        &f.verifier,
        &token,
        |r| *r == Err(AuthError::UnknownToken),
    )
    .await;
}
