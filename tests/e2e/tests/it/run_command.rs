//! The README's run command, run as a user runs it: `scripts/up` on a clean
//! state directory brings the stack up on its own Kafka, PostgreSQL and
//! Mosquitto; a point sent with `curl` comes back from `GET /api/latest`;
//! Ctrl-C (SIGINT to the process group) stops every process it started; a
//! second `scripts/up` on the same state works.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetwatch_testkit as tk;

/// The service ports scripts/up uses (its defaults), which must be free.
const SERVICE_PORTS: &[u16] = &[8080, 50051, 50052, 50053, 50054, 9601, 9602, 9603, 9604];

struct Up {
    child: Child,
    output: std::path::PathBuf,
}

impl Up {
    fn start(state: &Path, ports: &Ports, round: u32) -> Self {
        // Beside the state directory, which scripts/up creates itself.
        let output = state.with_file_name(format!("up-{round}.out"));
        let out = std::fs::File::create(&output).unwrap();
        // SIGINT at its default, as in a terminal: a runner that starts us
        // in the background without job control leaves SIGINT ignored, and
        // bash cannot trap a signal that was ignored on entry.
        let child = Command::new("env")
            .args(["--default-signal=INT", "bash"])
            .arg(tk::workspace_root().join("scripts/up"))
            .env("FLEETWATCH_STATE", state)
            .env("FLEETWATCH_KAFKA_PORT", ports.kafka.to_string())
            .env("FLEETWATCH_PG_PORT", ports.pg.to_string())
            .env("FLEETWATCH_MQTT_PORT", ports.mqtt.to_string())
            .env("FLEETWATCH_UP_PROFILE", "debug")
            .env("SIM_VEHICLES", "2")
            .env_remove("FLEETWATCH_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // Its own process group, as a terminal gives a foreground job.
            .process_group(0)
            .spawn()
            .unwrap();
        Self { child, output }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits for the "Fleetwatch is up." banner; panics with the output if
    /// the script exits first or takes longer than `timeout`.
    async fn wait_ready(&mut self, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains("Fleetwatch is up.") {
                return Instant::now();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "scripts/up exited with {status} before it was ready:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "scripts/up was not ready within {timeout:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Ctrl-C: SIGINT to the whole process group; returns how long the
    /// script took to exit.
    fn ctrl_c(&mut self, timeout: Duration) -> Duration {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).unwrap();
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                panic!(
                    "scripts/up did not stop within {timeout:?} of Ctrl-C:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Ports {
    kafka: u16,
    pg: u16,
    mqtt: u16,
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Processes whose command line mentions the state directory: Kafka,
/// PostgreSQL, Mosquitto and the simulator carry it. (The services are
/// checked by their ports: other tests run the same binaries meanwhile.)
fn leftover_processes(state: &Path) -> Vec<String> {
    let state = state.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&state) {
            out.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    out
}

fn fleetctl(db_url: &str, args: &[&str]) -> String {
    let out = Command::new(tk::binary("fleetctl"))
        .arg("--database-url")
        .arg(db_url)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fleetctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

// Ignored in the main run: it needs scripts/up's default service ports, and
// 50051-50054 lie in the ephemeral range other tests' sockets draw from.
// scripts/test runs it alone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the default service ports; scripts/test runs it alone"]
async fn scripts_up_serves_a_curl_point_and_stops_on_ctrl_c_twice() {
    for port in SERVICE_PORTS {
        assert!(
            !port_open(*port),
            "port {port} is taken; scripts/up needs it"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL and Mosquitto drop root for their own users; they must be
    // able to reach their directories inside.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    // Kafka's controller listens on the next port: both must be free, and
    // neither may be one of the others.
    let kafka = loop {
        let p = tk::free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let other = || loop {
        let p = tk::free_port();
        if p != kafka && p != kafka + 1 {
            break p;
        }
    };
    let pg = other();
    let mqtt = loop {
        let p = other();
        if p != pg {
            break p;
        }
    };
    let ports = Ports { kafka, pg, mqtt };
    let db_url = format!("postgres://postgres@127.0.0.1:{}/fleetwatch", ports.pg);
    let mut token = String::new();

    for round in 1..=2u32 {
        let mut up = Up::start(&state, &ports, round);
        // The first round creates the database cluster, formats Kafka's log
        // and (re)checks the build; the binaries are already built.
        let ready = up.wait_ready(Duration::from_secs(300)).await;
        // The first admin: created and shown by the first round only.
        let creds = std::fs::read_to_string(state.join("admin-credentials")).unwrap();
        let password = creds.lines().nth(1).unwrap();
        assert!(password.len() >= 16, "a generated password: {creds:?}");
        let shown = format!("first admin   admin / {password}");
        assert_eq!(up.output().contains(&shown), round == 1, "{}", up.output());
        let mode = std::fs::metadata(state.join("admin-credentials"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "credentials readable by others: {mode:o}");
        // The admin's API token for the printed commands works on the incident API.
        let admin_token = std::fs::read_to_string(state.join("admin-token")).unwrap();
        let mut c =
            fleetctl::incidents::incident_client("http://127.0.0.1:50054", admin_token.trim())
                .await
                .unwrap();
        c.list_incidents(fleetwatch_proto::v1::ListIncidentsRequest::default())
            .await
            .unwrap();
        if round == 1 {
            let out = fleetctl(&db_url, &["vehicles", "add", "curl-01", "--kind", "drone"]);
            token = out.lines().last().unwrap().trim().to_string();
        }
        let lat = 10.0 + f64::from(round);
        let body =
            format!(r#"{{"drone_id":"curl-01","lat":{lat},"lon":20.5,"alt":30,"battery":88}}"#);
        let (resp, code) = curl(&[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            "http://127.0.0.1:8080/api/data",
        ]);
        assert!(
            code.starts_with('2'),
            "POST /api/data answered {code}: {resp}"
        );
        let auth = format!("Authorization: Bearer {token}");
        let latest = tk::wait_for(
            "GET /api/latest to return the curl point",
            Duration::from_secs(60),
            || {
                let auth = auth.clone();
                async move {
                    let (resp, code) = curl(&["-H", &auth, "http://127.0.0.1:8080/api/latest"]);
                    (code == "200" && resp.contains(&format!("\"lat\":{lat:?}"))).then_some(resp)
                }
            },
        )
        .await;
        eprintln!(
            "round {round}: point returned {:.1} s after ready: {latest}",
            ready.elapsed().as_secs_f64()
        );
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "the point took more than a minute after ready"
        );
        // The simulated fleet's telemetry is queryable too, with its own token.
        let tokens: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(state.join("sim-tokens.json")).unwrap())
                .unwrap();
        let sim_auth = format!(
            "Authorization: Bearer {}",
            tokens["vehicles"]["sim-001"].as_str().unwrap()
        );
        tk::wait_for(
            "the simulated fleet's latest state",
            Duration::from_secs(60),
            || {
                let sim_auth = sim_auth.clone();
                async move {
                    let (resp, code) = curl(&["-H", &sim_auth, "http://127.0.0.1:8080/api/latest"]);
                    (code == "200" && resp.contains("sim-001")).then_some(())
                }
            },
        )
        .await;

        let took = up.ctrl_c(Duration::from_secs(30));
        eprintln!(
            "round {round}: stopped {:.1} s after Ctrl-C",
            took.as_secs_f64()
        );
        let output = up.output();
        let left = leftover_processes(&state);
        assert!(
            left.is_empty(),
            "processes left after Ctrl-C: {left:#?}\n{output}"
        );
        for port in SERVICE_PORTS
            .iter()
            .chain([&ports.kafka, &ports.pg, &ports.mqtt])
        {
            assert!(
                !port_open(*port),
                "port {port} still answers after Ctrl-C:\n{output}"
            );
        }
    }
}
