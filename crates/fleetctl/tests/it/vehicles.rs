//! `fleetctl vehicles` against the real Postgres.
#![allow(clippy::unwrap_used)]

use crate::common::{fleetctl, last_line, stderr, stdout};
use fleetwatch_testkit::TestDb;

#[tokio::test]
async fn add_prints_a_working_token_on_the_last_line() {
    let db = TestDb::new().await;
    let out = fleetctl(
        &[
            "vehicles", "add", "drone-7", "--kind", "drone", "--name", "Seven",
        ],
        &[("FLEETWATCH_DATABASE_URL", &db.url)],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let token = last_line(&out);
    assert_eq!(token.trim(), token, "the token line holds nothing else");
    assert_eq!(
        fleetwatch_db::vehicle_for_token(&db.pool, &token)
            .await
            .unwrap()
            .as_deref(),
        Some("drone-7")
    );
    let (kind, name): (String, Option<String>) =
        sqlx::query_as("SELECT kind, name FROM vehicles WHERE id = 'drone-7'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), name.as_deref()), ("drone", Some("Seven")));

    let out = fleetctl(
        &[
            "vehicles",
            "add",
            "boat-1",
            "--kind",
            "vessel",
            "--database-url",
            &db.url,
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fleetwatch_db::vehicle_for_token(&db.pool, &last_line(&out))
            .await
            .unwrap()
            .as_deref(),
        Some("boat-1")
    );

    let out = fleetctl(&["vehicles", "list", "--database-url", &db.url], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    assert!(
        list.lines()
            .any(|l| l.starts_with("boat-1") && l.contains("vessel") && l.contains("active")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("drone-7") && l.contains("Seven")),
        "{list}"
    );
}

#[tokio::test]
async fn duplicate_and_invalid_ids_fail_clearly() {
    let db = TestDb::new().await;
    let env = [("FLEETWATCH_DATABASE_URL", db.url.as_str())];
    let out = fleetctl(&["vehicles", "add", "dup-1"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let out = fleetctl(&["vehicles", "add", "dup-1"], &env).await;
    assert!(!out.status.success());
    assert!(
        stdout(&out).is_empty(),
        "no token on a failure: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("dup-1 already exists") && stderr(&out).contains("rotate-token"),
        "{}",
        stderr(&out)
    );

    for bad in ["has/slash", "-leading-dash", "white space"] {
        let out = fleetctl(&["vehicles", "add", "--", bad], &env).await;
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(
            stderr(&out).contains("is invalid"),
            "{bad}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty());
    }
    let out = fleetctl(&["vehicles", "add", "x1", "--kind", "submarine"], &env).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("submarine"), "{}", stderr(&out));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM vehicles")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn rotate_disable_enable() {
    let db = TestDb::new().await;
    let env = [("FLEETWATCH_DATABASE_URL", db.url.as_str())];
    let old = last_line(&fleetctl(&["vehicles", "add", "v-1"], &env).await);

    let out = fleetctl(&["vehicles", "rotate-token", "v-1"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let new = last_line(&out);
    assert_ne!(old, new);
    assert_eq!(
        fleetwatch_db::vehicle_for_token(&db.pool, &old)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        fleetwatch_db::vehicle_for_token(&db.pool, &new)
            .await
            .unwrap()
            .as_deref(),
        Some("v-1")
    );

    let out = fleetctl(&["vehicles", "disable", "v-1"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fleetwatch_db::vehicle_for_token(&db.pool, &new)
            .await
            .unwrap(),
        None
    );
    assert!(stdout(&fleetctl(&["vehicles", "list"], &env).await).contains("disabled"));

    let out = fleetctl(&["vehicles", "enable", "v-1"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fleetwatch_db::vehicle_for_token(&db.pool, &new)
            .await
            .unwrap()
            .as_deref(),
        Some("v-1")
    );

    for cmd in ["rotate-token", "disable", "enable"] {
        let out = fleetctl(&["vehicles", cmd, "ghost"], &env).await;
        assert!(
            !out.status.success(),
            "{cmd} of an unknown vehicle succeeded"
        );
        assert!(
            stderr(&out).contains("no vehicle ghost"),
            "{cmd}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn refuses_a_database_without_the_schema() {
    let db = TestDb::empty().await;
    let out = fleetctl(&["vehicles", "list", "--database-url", &db.url], &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fleetctl migrate"),
        "{}",
        stderr(&out)
    );
}

/// Mosquitto (the shipped config) accepts the logins fleetctl writes, and
/// only while they are current.
#[tokio::test]
async fn vehicles_get_mqtt_logins_that_mosquitto_accepts() {
    use fleetwatch_testkit::mqtt::{BRIDGE_USER, Mosquitto};
    use fleetwatch_testkit::wait_for;
    use std::time::Duration;

    let db = TestDb::new().await;
    let broker = Mosquitto::start().await;
    let passwd = broker.password_file().display().to_string();
    let pid = broker.pid_file().display().to_string();
    let env = [
        ("FLEETWATCH_DATABASE_URL", db.url.as_str()),
        ("FLEETWATCH_MQTT_PASSWORD_FILE", passwd.as_str()),
        ("FLEETWATCH_MQTT_PID_FILE", pid.as_str()),
    ];
    let out = fleetctl(&["vehicles", "add", "drone-9"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let token = last_line(&out);
    broker.wait_accepts("drone-9", &token).await;

    let out = fleetctl(&["vehicles", "rotate-token", "drone-9"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let new = last_line(&out);
    broker.wait_accepts("drone-9", &new).await;
    assert!(
        broker.try_connect("drone-9", &token).await.is_err(),
        "the old token no longer logs in"
    );

    // A name the password file already has (here the bridge's) is refused
    // before anything is registered.
    let out = fleetctl(&["vehicles", "add", BRIDGE_USER], &env).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already has an MQTT user"),
        "{}",
        stderr(&out)
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM vehicles WHERE id = $1")
        .bind(BRIDGE_USER)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    broker
        .try_connect(BRIDGE_USER, broker.bridge_password())
        .await
        .unwrap();
    let out = fleetctl(&["vehicles", "add", "boat:1"], &env).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no ':'"), "{}", stderr(&out));

    // `fleetctl mqtt passwd`: the bridge's login, from stdin or generated.
    let passwd_cmd = |extra: &[&str], stdin: &'static str| {
        let mut cmd = tokio::process::Command::new(fleetwatch_testkit::binary("fleetctl"));
        cmd.args([
            "mqtt",
            "passwd",
            &passwd,
            BRIDGE_USER,
            "--reload-pid-file",
            &pid,
        ])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        async move {
            use tokio::io::AsyncWriteExt;
            let mut child = cmd.spawn().unwrap();
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.as_bytes()).await.unwrap();
            drop(input);
            child.wait_with_output().await.unwrap()
        }
    };
    let out = passwd_cmd(&[], "bridge-from-stdin\n").await;
    assert!(out.status.success(), "{}", stderr(&out));
    broker.wait_accepts(BRIDGE_USER, "bridge-from-stdin").await;
    let out = passwd_cmd(&["--generate"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let generated = last_line(&out);
    assert!(generated.len() >= 32, "{generated}");
    broker.wait_accepts(BRIDGE_USER, &generated).await;
    let out = passwd_cmd(&["--delete"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        "the deleted login to be refused",
        Duration::from_secs(10),
        || async {
            broker
                .try_connect(BRIDGE_USER, &generated)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let out = passwd_cmd(&[], "").await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no password on stdin"),
        "{}",
        stderr(&out)
    );
}
