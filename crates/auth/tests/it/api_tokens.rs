//! API tokens: verified by hash, cached, refused when malformed, unknown,
//! revoked or expired, never above their owner, dead with a disabled owner.

use chrono::{Duration as ChronoDuration, Utc};
use fleetwatch_auth::store::{self, NewApiToken, StoreError, TokenOwner};
use fleetwatch_auth::{AuthConfig, AuthError, PrincipalKind, Role, generate_api_token};
use fleetwatch_testkit::wait_for;

use crate::common::{Fixture, WAIT, wait_for_result};

#[tokio::test]
async fn a_user_token_verifies_as_its_owner_and_is_cached() {
    let f = Fixture::new().await;
    let alice = f.user("alice", Role::Operator).await;
    let (id, token) = f.user_token("alice", None).await;

    let p = f.verifier.verify_token(&token).await.unwrap();
    assert_eq!(p.kind, PrincipalKind::ApiToken);
    assert_eq!(p.subject, alice.id.to_string());
    assert_eq!(p.name, "alice");
    assert_eq!(p.role, Role::Operator);
    assert_eq!(p.token_id, Some(id));
    assert_eq!(p.actor(), format!("alice [token {id}]"));

    let before = f.verifier.stats();
    let again = f
        .verifier
        .verify_authorization(Some(&format!("Bearer {token}")))
        .await
        .unwrap();
    assert_eq!(again, p);
    let after = f.verifier.stats();
    assert_eq!(after.misses, before.misses, "answered from the cache");
    assert!(after.hits > before.hits);

    // Its use is recorded (in the background).
    wait_for("last_used_at to be written", WAIT, || async {
        let used: Option<chrono::DateTime<Utc>> =
            sqlx::query_scalar("SELECT last_used_at FROM api_tokens WHERE id = $1")
                .bind(id)
                .fetch_one(&f.db.pool)
                .await
                .unwrap();
        used.map(|_| ())
    })
    .await;
    // Only its hash is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM api_tokens WHERE id = $1")
        .bind(id)
        .fetch_one(&f.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, fleetwatch_auth::api_token_hash(&token).to_vec());
}

#[tokio::test]
async fn a_service_token_is_a_service_principal() {
    let f = Fixture::new().await;
    let (id, token) = f.service_token("ingest", Role::Viewer).await;
    let p = f.verifier.verify_token(&token).await.unwrap();
    assert_eq!(p.kind, PrincipalKind::Service);
    assert!(p.is_service());
    assert_eq!((p.subject.as_str(), p.name.as_str()), ("ingest", "ingest"));
    assert_eq!(p.role, Role::Viewer);
    assert_eq!(p.token_id, Some(id));
    assert_eq!(p.actor(), "service:ingest");
    // A service token needs its role said out loud.
    let e = store::create_api_token(
        &f.db.pool,
        &NewApiToken {
            owner: TokenOwner::Service("ingest".into()),
            name: "x".into(),
            role: None,
            expires_at: None,
        },
        "test",
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::ServiceRoleMissing), "{e}");
    let e = store::create_api_token(
        &f.db.pool,
        &NewApiToken {
            owner: TokenOwner::Service("Bad Name".into()),
            name: "x".into(),
            role: Some(Role::Viewer),
            expires_at: None,
        },
        "test",
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::InvalidServiceName(_)), "{e}");
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once() {
    let f = Fixture::new().await;
    f.user("alice", Role::Operator).await;
    let (id, token) = f.user_token("alice", None).await;
    let (_, other) = f.user_token("alice", None).await;
    f.verifier.verify_token(&token).await.unwrap();
    f.verifier.verify_token(&other).await.unwrap();
    assert_eq!(f.verifier.stats().tokens, 2, "both cached");

    assert!(
        store::revoke_api_token(&f.db.pool, id, "test")
            .await
            .unwrap()
    );
    assert!(
        !store::revoke_api_token(&f.db.pool, id, "test")
            .await
            .unwrap(),
        "revoking twice is a no-op"
    );
    wait_for_result(
        "the revoked token to be refused",
        &f.verifier,
        &token,
        |r| *r == Err(AuthError::UnknownToken),
    )
    .await;
    assert!(f.verifier.stats().invalidations >= 1);
    // Only that entry went: the other token is still answered from the cache.
    let before = f.verifier.stats();
    f.verifier.verify_token(&other).await.unwrap();
    assert_eq!(f.verifier.stats().misses, before.misses);
    assert!(matches!(
        store::revoke_api_token(&f.db.pool, 99_999, "test").await,
        Err(StoreError::NoSuchToken(99_999))
    ));
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let f = Fixture::new().await;
    f.user("alice", Role::Viewer).await;
    let new = |expires_at| NewApiToken {
        owner: TokenOwner::User("alice".into()),
        name: "short-lived".into(),
        role: None,
        expires_at: Some(expires_at),
    };
    let e = store::create_api_token(
        &f.db.pool,
        &new(Utc::now() - ChronoDuration::seconds(1)),
        "t",
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::ExpiryInPast), "{e}");

    // Expired in the database (an operator shortened it): refused at once.
    let (info, token) =
        store::create_api_token(&f.db.pool, &new(Utc::now() + ChronoDuration::days(1)), "t")
            .await
            .unwrap();
    f.verifier.verify_token(&token).await.unwrap();
    sqlx::query("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(info.id)
        .execute(&f.db.pool)
        .await
        .unwrap();
    wait_for_result(
        "the expired token to be refused",
        &f.verifier,
        &token,
        |r| *r == Err(AuthError::UnknownToken),
    )
    .await;

    // Expiring while cached: refused from the cache once the time passes.
    let (_, token) = store::create_api_token(
        &f.db.pool,
        &new(Utc::now() + ChronoDuration::milliseconds(1500)),
        "t",
    )
    .await
    .unwrap();
    f.verifier.verify_token(&token).await.unwrap();
    wait_for_result("the token to expire", &f.verifier, &token, |r| {
        *r == Err(AuthError::UnknownToken)
    })
    .await;
}

#[tokio::test]
async fn malformed_and_unknown_tokens_are_refused_without_growing_the_good_cache() {
    let f = Fixture::new().await;
    let malformed = || {
        fleetwatch_auth::metrics::VERIFICATIONS
            .with_label_values(&["api", "malformed"])
            .get()
    };
    let counted = malformed();
    for bad in ["fwt_", "fwt_xyz", &format!("{}0", generate_api_token())] {
        assert!(
            matches!(
                f.verifier.verify_token(bad).await,
                Err(AuthError::Malformed(_))
            ),
            "{bad}"
        );
    }
    assert_eq!(
        f.verifier.stats().misses,
        0,
        "malformed tokens never reach the database"
    );
    assert!(malformed() >= counted + 3, "refusals are counted by reason");

    let unknown = generate_api_token();
    assert_eq!(
        f.verifier.verify_token(&unknown).await,
        Err(AuthError::UnknownToken)
    );
    let before = f.verifier.stats();
    assert_eq!(
        f.verifier.verify_token(&unknown).await,
        Err(AuthError::UnknownToken)
    );
    let after = f.verifier.stats();
    assert_eq!(after.misses, before.misses, "the refusal was cached");
    assert_eq!(after.refused_from_cache, before.refused_from_cache + 1);
    assert_eq!(after.tokens, 0);
}

/// The caches are bounded, and a flood of bad tokens only churns the
/// negative one: the good entries stay and are still answered from memory.
#[tokio::test]
async fn cache_bounds_hold_under_a_flood_of_bad_tokens() {
    let f = Fixture::with_config(AuthConfig {
        cache_capacity: 2,
        negative_cache_capacity: 16,
        ..Default::default()
    })
    .await;
    f.user("alice", Role::Viewer).await;
    let (_, a) = f.user_token("alice", None).await;
    let (_, b) = f.user_token("alice", None).await;
    let (_, c) = f.user_token("alice", None).await;
    for t in [&a, &b, &c] {
        f.verifier.verify_token(t).await.unwrap();
    }
    let s = f.verifier.stats();
    assert_eq!(
        s.tokens, 2,
        "the positive cache holds at most cache_capacity"
    );

    for _ in 0..200 {
        assert_eq!(
            f.verifier.verify_token(&generate_api_token()).await,
            Err(AuthError::UnknownToken)
        );
    }
    let s = f.verifier.stats();
    assert_eq!(
        s.refused, 16,
        "the negative cache holds at most negative_cache_capacity"
    );
    assert_eq!(s.tokens, 2, "bad tokens evicted no good one");
    let before = f.verifier.stats();
    for t in [&b, &c] {
        f.verifier.verify_token(t).await.unwrap();
    }
    assert_eq!(f.verifier.stats().misses, before.misses, "still cached");
}

#[tokio::test]
async fn a_user_token_never_acts_above_its_owner() {
    let f = Fixture::new().await;
    f.user("root", Role::Admin).await;
    f.user("alice", Role::Operator).await;
    let (_, narrow) = f.user_token("alice", Some(Role::Viewer)).await;
    assert_eq!(
        f.verifier.verify_token(&narrow).await.unwrap().role,
        Role::Viewer,
        "a token may have less than its owner"
    );
    let e = store::create_api_token(
        &f.db.pool,
        &NewApiToken {
            owner: TokenOwner::User("alice".into()),
            name: "too much".into(),
            role: Some(Role::Admin),
            expires_at: None,
        },
        "test",
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::RoleAboveOwner { .. }), "{e}");

    let (_, token) = f.user_token("alice", None).await;
    assert_eq!(
        f.verifier.verify_token(&token).await.unwrap().role,
        Role::Operator
    );
    // Demoting the owner demotes the (cached) token at once.
    store::set_role(&f.db.pool, "alice", Role::Viewer, "test")
        .await
        .unwrap();
    wait_for_result("the token to act as a viewer", &f.verifier, &token, |r| {
        r.as_ref().is_ok_and(|p| p.role == Role::Viewer)
    })
    .await;
    // And promoting never lifts it above what it was created with.
    store::set_role(&f.db.pool, "alice", Role::Admin, "test")
        .await
        .unwrap();
    wait_for_result(
        "the token to act as an operator again",
        &f.verifier,
        &token,
        |r| r.as_ref().is_ok_and(|p| p.role == Role::Operator),
    )
    .await;
}

#[tokio::test]
async fn tokens_of_a_disabled_user_are_refused() {
    let f = Fixture::new().await;
    f.user("root", Role::Admin).await;
    f.user("alice", Role::Operator).await;
    let (_, token) = f.user_token("alice", None).await;
    f.verifier.verify_token(&token).await.unwrap();

    store::set_disabled(&f.db.pool, "alice", true, "test")
        .await
        .unwrap();
    wait_for_result(
        "the disabled user's token to be refused",
        &f.verifier,
        &token,
        |r| *r == Err(AuthError::Disabled),
    )
    .await;
    let e = store::create_api_token(
        &f.db.pool,
        &NewApiToken {
            owner: TokenOwner::User("alice".into()),
            name: "x".into(),
            role: None,
            expires_at: None,
        },
        "test",
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::UserDisabled(_)), "{e}");

    store::set_disabled(&f.db.pool, "alice", false, "test")
        .await
        .unwrap();
    wait_for_result("the token to work again", &f.verifier, &token, |r| {
        r.is_ok()
    })
    .await;
}
