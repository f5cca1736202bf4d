//! `fleetctl users` against the real Postgres: generated passwords shown
//! once on the last line, `--password-stdin`, disable/enable/set-role, and
//! `ensure-admin` for installers.
#![allow(clippy::unwrap_used)]

use std::process::Output;

use fleetwatch_auth::{AuthError, Role, store};
use fleetwatch_testkit::TestDb;

use crate::common::{fleetctl, last_line, stderr, stdout};

/// `fleetctl args...` with `input` on stdin.
pub async fn fleetctl_stdin(args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(fleetwatch_testkit::binary("fleetctl"));
    cmd.args(args)
        .env_remove("FLEETWATCH_DATABASE_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

#[tokio::test]
async fn add_prints_a_generated_password_once_on_the_last_line() {
    let db = TestDb::new().await;
    let env = [("FLEETWATCH_DATABASE_URL", db.url.as_str())];
    let out = fleetctl(&["users", "add", "alice", "--role", "operator"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "only the password on stdout"
    );
    let password = last_line(&out);
    assert!(password.len() >= 20, "{password}");
    assert!(
        stderr(&out).contains("created operator alice"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("shown only now"), "{}", stderr(&out));
    let user = store::login(&db.pool, "alice", &password).await.unwrap();
    assert_eq!(user.role, Role::Operator);

    let out = fleetctl(&["users", "add", "alice"], &env).await;
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty(), "no password on a failure");
    assert!(
        stderr(&out).contains("alice already exists"),
        "{}",
        stderr(&out)
    );
    for (args, want) in [
        (&["users", "add", "Not Valid"][..], "is invalid"),
        (&["users", "add", "x", "--role", "root"][..], "unknown role"),
    ] {
        let out = fleetctl(args, &env).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }

    let out = fleetctl(&["users", "list"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    assert!(list.lines().next().unwrap().contains("USERNAME"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.contains(" alice ") && l.contains("operator") && l.contains("active")),
        "{list}"
    );
    assert!(!list.contains(&password));
}

#[tokio::test]
async fn passwords_come_from_stdin_never_from_argv() {
    let db = TestDb::new().await;
    let env = [("FLEETWATCH_DATABASE_URL", db.url.as_str())];
    let out = fleetctl_stdin(
        &["users", "add", "bob", "--password-stdin"],
        &env,
        "a long enough passphrase\n",
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "created viewer bob");
    store::login(&db.pool, "bob", "a long enough passphrase")
        .await
        .unwrap();

    // A generated new password works, the old one no longer does.
    let out = fleetctl(&["users", "passwd", "bob"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let new = last_line(&out);
    store::login(&db.pool, "bob", &new).await.unwrap();
    assert_eq!(
        store::login(&db.pool, "bob", "a long enough passphrase").await,
        Err(AuthError::BadLogin)
    );
    let out = fleetctl_stdin(
        &["users", "passwd", "bob", "--password-stdin"],
        &env,
        "yet another passphrase\r\n",
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("password of bob changed"));
    store::login(&db.pool, "bob", "yet another passphrase")
        .await
        .unwrap();

    for (input, want) in [("", "no password on stdin"), ("short\n", "too short")] {
        let out =
            fleetctl_stdin(&["users", "passwd", "bob", "--password-stdin"], &env, input).await;
        assert!(!out.status.success(), "{input:?}");
        assert!(stderr(&out).contains(want), "{input:?}: {}", stderr(&out));
    }
    let out = fleetctl(&["users", "passwd", "ghost"], &env).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no user ghost"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[tokio::test]
async fn disable_enable_and_set_role() {
    let db = TestDb::new().await;
    let env = [("FLEETWATCH_DATABASE_URL", db.url.as_str())];
    let root = last_line(&fleetctl(&["users", "ensure-admin", "--username", "root"], &env).await);
    let pw = last_line(&fleetctl(&["users", "add", "carol"], &env).await);

    let out = fleetctl(&["users", "disable", "carol"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "disabled carol");
    assert_eq!(
        store::login(&db.pool, "carol", &pw).await,
        Err(AuthError::Disabled)
    );
    assert!(stdout(&fleetctl(&["users", "list"], &env).await).contains("disabled"));
    let out = fleetctl(&["users", "enable", "carol"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    store::login(&db.pool, "carol", &pw).await.unwrap();

    let out = fleetctl(&["users", "set-role", "carol", "admin"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "carol is now admin");
    assert_eq!(
        store::find_user(&db.pool, "carol")
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Admin
    );
    fleetctl(&["users", "set-role", "carol", "viewer"], &env).await;

    // The last active admin cannot be locked out.
    let out = fleetctl(&["users", "disable", "root"], &env).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("last active admin"),
        "{}",
        stderr(&out)
    );
    store::login(&db.pool, "root", &root).await.unwrap();

    for cmd in ["disable", "enable"] {
        let out = fleetctl(&["users", cmd, "ghost"], &env).await;
        assert!(!out.status.success(), "{cmd}");
        assert!(
            stderr(&out).contains("no user ghost"),
            "{cmd}: {}",
            stderr(&out)
        );
    }

    // Every change is in the audit trail, under the CLI's name.
    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT action, target FROM auth_audit ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let want = [
        ("user.ensure_admin", "root"),
        ("user.create", "carol"),
        ("user.disable", "carol"),
        ("user.enable", "carol"),
        ("user.role", "carol"),
        ("user.role", "carol"),
    ];
    let got: Vec<(&str, &str)> = actions
        .iter()
        .map(|(a, t)| (a.as_str(), t.as_str()))
        .collect();
    assert_eq!(got, want);
    let actor: String = sqlx::query_scalar("SELECT actor FROM auth_audit LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(actor.starts_with("fleetctl ("), "{actor}");
}

#[tokio::test]
async fn ensure_admin_creates_the_first_admin_once() {
    let db = TestDb::new().await;
    let env = [("FLEETWATCH_DATABASE_URL", db.url.as_str())];
    let out = fleetctl(&["users", "ensure-admin"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1);
    let password = last_line(&out);
    let admin = store::login(&db.pool, "admin", &password).await.unwrap();
    assert_eq!(admin.role, Role::Admin);

    let out = fleetctl(&["users", "ensure-admin", "--username", "admin"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "nothing to show: {}", stdout(&out));
    assert!(
        stderr(&out).contains("admin exists already"),
        "{}",
        stderr(&out)
    );
    assert_eq!(store::list_users(&db.pool).await.unwrap().len(), 1);
}
