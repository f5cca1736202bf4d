//! Access tokens (EdDSA JWTs): every refusal, and changes to the user or the
//! key taking effect at once.

use chrono::{Duration as ChronoDuration, Utc};
use fleetwatch_auth::store;
use fleetwatch_auth::{AuthConfig, AuthError, PrincipalKind, Role, SigningKey, TokenIssuer};

use crate::common::{Fixture, bearer, wait_for_result};

#[tokio::test]
async fn a_valid_access_token_names_the_user_and_their_current_role() {
    let f = Fixture::new().await;
    let bob = f.user("bob", Role::Operator).await;
    let t = f.issuer.issue(&bob).unwrap();
    assert!(t.expires_at > Utc::now());
    let p = f
        .verifier
        .verify_authorization(Some(&bearer(&t.token)))
        .await
        .unwrap();
    assert_eq!(p.kind, PrincipalKind::User);
    assert_eq!(p.subject, bob.id.to_string());
    assert_eq!(p.name, "bob");
    assert_eq!(p.role, Role::Operator);
    assert_eq!(p.token_id, None);
    assert_eq!(p.actor(), "bob");

    // A role change applies to tokens already issued, at once.
    store::set_role(&f.db.pool, "bob", Role::Admin, "test")
        .await
        .unwrap();
    wait_for_result("bob to be admin", &f.verifier, &t.token, |r| {
        r.as_ref().is_ok_and(|p| p.role == Role::Admin)
    })
    .await;
}

#[tokio::test]
async fn missing_and_malformed_credentials_are_refused() {
    let f = Fixture::new().await;
    let v = &f.verifier;
    assert_eq!(v.verify_authorization(None).await, Err(AuthError::Missing));
    for header in [
        "Basic YWxpY2U6cHc=",
        "Bearer",
        "Bearer abc",
        "Bearer a.b.c",
        "Bearer fw_0123456789",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
    ] {
        let r = v.verify_authorization(Some(header)).await;
        assert!(matches!(r, Err(AuthError::Malformed(_))), "{header}: {r:?}");
    }
}

#[tokio::test]
async fn expired_and_premature_access_tokens_are_refused() {
    let f = Fixture::new().await;
    let bob = f.user("bob", Role::Viewer).await;
    // The user's password must be older than the tokens below.
    sqlx::query("UPDATE users SET password_changed_at = now() - interval '1 day'")
        .execute(&f.db.pool)
        .await
        .unwrap();
    let old = f
        .issuer
        .issue_at(&bob, Utc::now() - ChronoDuration::hours(1))
        .unwrap();
    let e = f.verifier.verify_token(&old.token).await.unwrap_err();
    assert_eq!(e, AuthError::Expired);
    assert_eq!(e.api().reason, "token_expired");
    let future = f
        .issuer
        .issue_at(&bob, Utc::now() + ChronoDuration::minutes(10))
        .unwrap();
    assert_eq!(
        f.verifier.verify_token(&future.token).await,
        Err(AuthError::NotYetValid)
    );
    // Within the leeway (30 s) both still pass.
    let skewed = f
        .issuer
        .issue_at(&bob, Utc::now() + ChronoDuration::seconds(10))
        .unwrap();
    f.verifier.verify_token(&skewed.token).await.unwrap();
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_refused() {
    let f = Fixture::new().await;
    let bob = f.user("bob", Role::Admin).await;
    let genuine = f.access_token(&bob);
    let rogue = TokenIssuer::new(SigningKey::generate(), &f.config).unwrap();
    let forged = rogue.issue(&bob).unwrap().token;

    // Its own kid is unknown here...
    assert_eq!(
        f.verifier.verify_token(&forged).await,
        Err(AuthError::UnknownKey)
    );
    // ...and with the genuine key's kid its signature does not verify.
    let genuine_header = genuine.split('.').next().unwrap();
    let (_, rest) = forged.split_once('.').unwrap();
    let relabelled = format!("{genuine_header}.{rest}");
    assert_eq!(
        f.verifier.verify_token(&relabelled).await,
        Err(AuthError::BadSignature)
    );
    f.verifier.verify_token(&genuine).await.unwrap();
}

#[tokio::test]
async fn an_unknown_kid_is_refused_until_the_key_is_registered() {
    let f = Fixture::new().await;
    let bob = f.user("bob", Role::Viewer).await;
    let key = SigningKey::generate();
    let public = key.public_key();
    let next = TokenIssuer::new(key, &f.config).unwrap();
    let token = next.issue(&bob).unwrap().token;

    assert_eq!(
        f.verifier.verify_token(&token).await,
        Err(AuthError::UnknownKey)
    );
    let before = f.verifier.stats();
    assert_eq!(
        f.verifier.verify_token(&token).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(
        f.verifier.stats().refused_from_cache,
        before.refused_from_cache + 1,
        "the unknown kid was remembered"
    );
    // Registering it (a rotation's first step) notifies: accepted at once.
    store::register_signing_key(&f.db.pool, &public, "test")
        .await
        .unwrap();
    store::register_signing_key(&f.db.pool, &public, "test")
        .await
        .unwrap();
    wait_for_result("the new key to be accepted", &f.verifier, &token, |r| {
        r.is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_retired_key_is_refused_at_once() {
    let f = Fixture::new().await;
    let bob = f.user("bob", Role::Viewer).await;
    let token = f.access_token(&bob);
    f.verifier.verify_token(&token).await.unwrap();
    let kid = f.issuer.public_key().kid;
    store::retire_signing_key(&f.db.pool, &kid, "test")
        .await
        .unwrap();
    wait_for_result(
        "the retired key's token to be refused",
        &f.verifier,
        &token,
        |r| *r == Err(AuthError::UnknownKey),
    )
    .await;
    // A retired key cannot come back.
    assert!(matches!(
        store::register_signing_key(&f.db.pool, &f.issuer.public_key(), "test").await,
        Err(store::StoreError::KeyRetired(_))
    ));
    let keys = store::list_signing_keys(&f.db.pool).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].retired_at.is_some());
}

#[tokio::test]
async fn tokens_for_another_issuer_or_audience_are_refused() {
    let f = Fixture::new().await;
    let bob = f.user("bob", Role::Viewer).await;
    let key = SigningKey::generate();
    store::register_signing_key(&f.db.pool, &key.public_key(), "test")
        .await
        .unwrap();
    let elsewhere = TokenIssuer::new(
        key,
        &AuthConfig {
            audience: "another-deployment".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let token = elsewhere.issue(&bob).unwrap().token;
    assert_eq!(
        f.verifier.verify_token(&token).await,
        Err(AuthError::WrongAudience)
    );
}

#[tokio::test]
async fn a_disabled_user_is_refused_at_once() {
    let f = Fixture::new().await;
    f.user("root", Role::Admin).await;
    let bob = f.user("bob", Role::Operator).await;
    let token = f.access_token(&bob);
    f.verifier.verify_token(&token).await.unwrap();
    store::set_disabled(&f.db.pool, "bob", true, "test")
        .await
        .unwrap();
    wait_for_result("bob's token to be refused", &f.verifier, &token, |r| {
        *r == Err(AuthError::Disabled)
    })
    .await;
    // A deleted user too.
    let carol = f.user("carol", Role::Viewer).await;
    let token = f.access_token(&carol);
    f.verifier.verify_token(&token).await.unwrap();
    sqlx::query("DELETE FROM users WHERE username = 'carol'")
        .execute(&f.db.pool)
        .await
        .unwrap();
    wait_for_result("carol's token to be refused", &f.verifier, &token, |r| {
        *r == Err(AuthError::Disabled)
    })
    .await;
}

#[tokio::test]
async fn a_password_change_ends_earlier_sessions() {
    let f = Fixture::new().await;
    let bob = f.user("bob", Role::Viewer).await;
    sqlx::query("UPDATE users SET password_changed_at = now() - interval '1 day'")
        .execute(&f.db.pool)
        .await
        .unwrap();
    let earlier = f
        .issuer
        .issue_at(&bob, Utc::now() - ChronoDuration::minutes(1))
        .unwrap()
        .token;
    wait_for_result("the earlier session to work", &f.verifier, &earlier, |r| {
        r.is_ok()
    })
    .await;

    store::set_password(&f.db.pool, "bob", "a brand new passphrase", "test")
        .await
        .unwrap();
    wait_for_result("the earlier session to end", &f.verifier, &earlier, |r| {
        *r == Err(AuthError::SessionEnded)
    })
    .await;
    let bob = store::find_user(&f.db.pool, "bob").await.unwrap().unwrap();
    f.verifier
        .verify_token(&f.access_token(&bob))
        .await
        .unwrap();
}
