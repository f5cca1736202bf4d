//! `fleetctl tokens` and `fleetctl signing-keys` against the real Postgres,
//! checked with the verifier the services use.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use fleetwatch_auth::{
    AuthConfig, AuthError, PrincipalKind, Role, SigningKey, TokenIssuer, Verifier, store,
};
use fleetwatch_testkit::TestDb;

use crate::common::{fleetctl, last_line, stderr, stdout};

#[tokio::test]
async fn tokens_are_shown_once_listed_and_revoked() {
    let db = TestDb::new().await;
    let env = [("FLEETWATCH_DATABASE_URL", db.url.as_str())];
    fleetctl(&["users", "add", "alice", "--role", "operator"], &env).await;
    // No listener: every verification below reads the database.
    let verifier = Verifier::new(db.pool.clone(), &AuthConfig::default());

    let out = fleetctl(
        &["tokens", "create", "--user", "alice", "--name", "ci-deploy"],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "only the token on stdout");
    let token = last_line(&out);
    assert!(fleetwatch_auth::is_api_token(&token), "{token}");
    assert!(
        stderr(&out).contains("for alice (operator, expires "),
        "{}",
        stderr(&out)
    );
    let p = verifier.verify_token(&token).await.unwrap();
    assert_eq!(
        (p.kind, p.name.as_str(), p.role),
        (PrincipalKind::ApiToken, "alice", Role::Operator)
    );
    let id = p.token_id.unwrap();
    // Default lifetime: 90 days.
    let expires: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT expires_at FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let days = (expires.unwrap() - Utc::now()).num_days();
    assert!((89..=90).contains(&days), "{days}");

    let out = fleetctl(&["tokens", "list"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    assert!(list.lines().next().unwrap().starts_with("ID"), "{list}");
    let row = list
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("{list}"));
    for want in ["alice", "ci-deploy", "operator", "active"] {
        assert!(row.contains(want), "{want}: {row}");
    }
    assert!(!list.contains(&token[4..]), "never the secret");

    let out = fleetctl(&["tokens", "revoke", &id.to_string()], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("revoked token {id}"));
    assert_eq!(
        verifier.verify_token(&token).await,
        Err(AuthError::UnknownToken)
    );
    let out = fleetctl(&["tokens", "revoke", &id.to_string()], &env).await;
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!("token {id} was already revoked")
    );
    assert!(!stdout(&fleetctl(&["tokens", "list"], &env).await).contains("ci-deploy"));
    let all = stdout(&fleetctl(&["tokens", "list", "--all"], &env).await);
    assert!(
        all.lines()
            .any(|l| l.contains("ci-deploy") && l.contains("revoked")),
        "{all}"
    );

    let out = fleetctl(&["tokens", "revoke", "4242"], &env).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no token 4242"), "{}", stderr(&out));
}

#[tokio::test]
async fn service_tokens_owners_roles_and_lifetimes() {
    let db = TestDb::new().await;
    let env = [("FLEETWATCH_DATABASE_URL", db.url.as_str())];
    let verifier = Verifier::new(db.pool.clone(), &AuthConfig::default());

    let out = fleetctl(
        &[
            "tokens",
            "create",
            "--service",
            "ingest",
            "--name",
            "to persistence",
        ],
        &env,
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs --role"), "{}", stderr(&out));

    let out = fleetctl(
        &[
            "tokens",
            "create",
            "--service",
            "ingest",
            "--role",
            "viewer",
            "--name",
            "to persistence",
            "--no-expiry",
        ],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("valid until revoked"),
        "{}",
        stderr(&out)
    );
    let p = verifier.verify_token(&last_line(&out)).await.unwrap();
    assert_eq!(p.kind, PrincipalKind::Service);
    assert_eq!(p.actor(), "service:ingest");

    let out = fleetctl(
        &[
            "tokens",
            "create",
            "--service",
            "ingest",
            "--role",
            "viewer",
            "--name",
            "short",
            "--expires-in",
            "2h",
        ],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = verifier
        .verify_token(&last_line(&out))
        .await
        .unwrap()
        .token_id
        .unwrap();
    let expires: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT expires_at FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let minutes = (expires.unwrap() - Utc::now()).num_minutes();
    assert!((118..=120).contains(&minutes), "{minutes}");

    fleetctl(&["users", "add", "vera"], &env).await;
    for (args, want) in [
        (&["tokens", "create", "--name", "x"][..], "--user"),
        (
            &[
                "tokens",
                "create",
                "--user",
                "vera",
                "--service",
                "ingest",
                "--name",
                "x",
            ][..],
            "cannot be used with",
        ),
        (
            &[
                "tokens",
                "create",
                "--user",
                "vera",
                "--name",
                "x",
                "--no-expiry",
                "--expires-in",
                "1d",
            ][..],
            "cannot be used with",
        ),
        (
            &[
                "tokens",
                "create",
                "--user",
                "vera",
                "--name",
                "x",
                "--expires-in",
                "soon",
            ][..],
            "not a number with a unit",
        ),
        (
            &[
                "tokens", "create", "--user", "vera", "--name", "x", "--role", "admin",
            ][..],
            "cannot have role admin",
        ),
        (
            &["tokens", "create", "--user", "ghost", "--name", "x"][..],
            "no user ghost",
        ),
    ] {
        let out = fleetctl(args, &env).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn signing_keys_are_created_listed_and_retired() {
    let db = TestDb::new().await;
    let env = [("FLEETWATCH_DATABASE_URL", db.url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.pem");
    let path_s = path.display().to_string();

    let out = fleetctl(&["signing-keys", "create", "--out", &path_s], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let kid = last_line(&out);
    let key = SigningKey::load(&path).unwrap();
    assert_eq!(key.kid(), kid);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let out = fleetctl(&["signing-keys", "create", "--out", &path_s], &env).await;
    assert!(
        !out.status.success(),
        "an existing key file is never overwritten"
    );
    assert_eq!(SigningKey::load(&path).unwrap().kid(), kid);
    let out = fleetctl(&["signing-keys", "register", &path_s], &env).await;
    assert!(
        out.status.success(),
        "registering again is a no-op: {}",
        stderr(&out)
    );

    let list = stdout(&fleetctl(&["signing-keys", "list"], &env).await);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&kid) && l.contains("active")),
        "{list}"
    );

    // What the console would issue with that file verifies, until retired.
    let config = AuthConfig {
        signing_key_file: Some(path.clone()),
        ..Default::default()
    };
    let issuer = TokenIssuer::from_config(&config).unwrap();
    fleetctl(&["users", "add", "alice"], &env).await;
    let alice = store::find_user(&db.pool, "alice").await.unwrap().unwrap();
    let token = issuer.issue(&alice).unwrap().token;
    let verifier = Verifier::new(db.pool.clone(), &config);
    assert_eq!(verifier.verify_token(&token).await.unwrap().name, "alice");

    let out = fleetctl(&["signing-keys", "retire", &kid], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("retired {kid}"));
    assert_eq!(
        verifier.verify_token(&token).await,
        Err(AuthError::UnknownKey)
    );
    let list = stdout(&fleetctl(&["signing-keys", "list"], &env).await);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&kid) && l.contains("retired")),
        "{list}"
    );
    let out = fleetctl(&["signing-keys", "retire", "nope"], &env).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no signing key nope"),
        "{}",
        stderr(&out)
    );
}
