//! A Mosquitto of the test's own, running the shipped configuration
//! (`docker/mosquitto/mosquitto.conf` and its ACL): anonymous clients are
//! refused, vehicles log in with their id and token, the ingest bridge as
//! [`BRIDGE_USER`]. Each test gets a fresh broker, so tests use the real
//! topic names (`fleet/<id>/telemetry`) with no prefix, and the ACL under
//! test is exactly the one that ships.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet};

use crate::{free_port, wait_for};

/// The ingest bridge's username in the shipped ACL.
pub const BRIDGE_USER: &str = "fleetwatch-ingest";

fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `docker/mosquitto/`: the shipped `mosquitto.conf` and `acl`.
pub fn shipped_dir() -> PathBuf {
    workspace_root().join("docker/mosquitto")
}

/// The shipped config with its four lines that name paths and ports
/// replaced in place (in place: options after `listener` belong to it).
pub fn config_text(port: u16, dir: &std::path::Path) -> String {
    let shipped = std::fs::read_to_string(shipped_dir().join("mosquitto.conf")).unwrap();
    let d = dir.display();
    let mut out = String::new();
    for line in shipped.lines() {
        let local = match line.split_whitespace().next().unwrap_or_default() {
            "listener" => format!("listener {port} 127.0.0.1"),
            "persistence_location" => format!("persistence_location {d}/"),
            "password_file" => format!("password_file {d}/passwd"),
            "acl_file" => format!("acl_file {}", shipped_dir().join("acl").display()),
            _ => line.to_string(),
        };
        out.push_str(&local);
        out.push('\n');
    }
    out.push_str(&format!(
        "pid_file {d}/mosquitto.pid\n\
         log_dest file {d}/mosquitto.log\n\
         # A test may run as root; the temp dir is not the mosquitto user's.\n\
         user root\n"
    ));
    out
}

/// The `mosquitto` binary: `FLEETWATCH_TEST_MOSQUITTO`, `PATH`, or Debian's path.
pub fn mosquitto_bin() -> PathBuf {
    find_bin(
        "mosquitto",
        "FLEETWATCH_TEST_MOSQUITTO",
        "/usr/sbin/mosquitto",
    )
}

fn find_bin(name: &str, env: &str, debian: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return p.into();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain([PathBuf::from(debian)])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: apt-get install mosquitto (scripts/test installs it) or set {env}")
        })
}

/// A Mosquitto process this test owns, killed when dropped.
pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    bridge_password: String,
}

impl Mosquitto {
    /// Starts a broker on a free port with the shipped config and the
    /// bridge's credential in its password file.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bridge_password = format!("bridge-{}", crate::unique_suffix());
        let mut m = Self {
            port: free_port(),
            dir,
            child: None,
            bridge_password,
        };
        std::fs::write(m.password_file(), "").unwrap();
        m.write_password(BRIDGE_USER, &m.bridge_password.clone());
        std::fs::write(
            m.dir.path().join("mosquitto.conf"),
            config_text(m.port, m.dir.path()),
        )
        .unwrap();
        m.spawn();
        m.wait_serving().await;
        m
    }

    fn spawn(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    async fn wait_serving(&mut self) {
        let port = self.port;
        let log = self.log_file();
        let child = self.child.as_mut().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "mosquitto exited at start ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen on {port} within 10 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn host(&self) -> String {
        "127.0.0.1".into()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The password of [`BRIDGE_USER`].
    pub fn bridge_password(&self) -> &str {
        &self.bridge_password
    }

    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("passwd")
    }

    /// Mosquitto's own pid file (what `fleetctl --mqtt-reload-pid-file` signals).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("mosquitto.pid")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// The broker's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Adds or replaces `user` with Mosquitto's own `mosquitto_passwd`, so
    /// fleetctl's hashes are checked against an independent writer, then
    /// reloads and waits until the broker accepts the new password.
    pub async fn add_user(&self, user: &str, password: &str) {
        self.write_password(user, password);
        self.reload();
        self.wait_accepts(user, password).await;
    }

    fn write_password(&self, user: &str, password: &str) {
        let bin = find_bin(
            "mosquitto_passwd",
            "FLEETWATCH_TEST_MOSQUITTO_PASSWD",
            "/usr/bin/mosquitto_passwd",
        );
        let out = Command::new(bin)
            .arg("-b")
            .arg(self.password_file())
            .args([user, password])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGHUP: Mosquitto rereads its password file and ACL.
    pub fn reload(&self) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }

    /// Waits until a CONNECT as `user` is accepted (a reload is asynchronous).
    pub async fn wait_accepts(&self, user: &str, password: &str) {
        wait_for(
            &format!("mosquitto to accept {user}"),
            Duration::from_secs(10),
            || async { self.try_connect(user, password).await.ok() },
        )
        .await;
    }

    /// Client options for `user` (its client id is the username anyway:
    /// the shipped config has `use_username_as_clientid`).
    pub fn options(&self, user: &str, password: &str) -> MqttOptions {
        let mut o = MqttOptions::new(user, self.host(), self.port);
        o.set_credentials(user, password)
            .set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(8 << 20, 8 << 20);
        o
    }

    /// One CONNECT as `user`: Ok once the broker accepted, else its refusal.
    pub async fn try_connect(&self, user: &str, password: &str) -> Result<(), ConnectionError> {
        self.connect_once(Some((user, password))).await
    }

    /// One CONNECT without credentials.
    pub async fn try_connect_anonymous(&self) -> Result<(), ConnectionError> {
        self.connect_once(None).await
    }

    async fn connect_once(&self, credentials: Option<(&str, &str)>) -> Result<(), ConnectionError> {
        let mut o = MqttOptions::new(
            format!("probe-{}", crate::unique_suffix()),
            self.host(),
            self.port,
        );
        if let Some((u, p)) = credentials {
            o.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(o, 10);
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .unwrap_or(Err(ConnectionError::NetworkTimeout));
        let _ = client.try_disconnect();
        r
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `acl: |` block of k8s/dev/mosquitto.yaml, dedented.
    fn k8s_acl() -> String {
        let yaml =
            std::fs::read_to_string(workspace_root().join("k8s/dev/mosquitto.yaml")).unwrap();
        let mut lines = yaml.lines().skip_while(|l| *l != "  acl: |").skip(1);
        let mut block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| l.get(4..).unwrap_or(""))
            .collect();
        while block.last() == Some(&"") {
            block.pop();
        }
        block.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn the_k8s_dev_broker_ships_the_same_acl() {
        let shipped = std::fs::read_to_string(shipped_dir().join("acl")).unwrap();
        assert_eq!(
            k8s_acl(),
            shipped,
            "k8s/dev/mosquitto.yaml must embed docker/mosquitto/acl verbatim"
        );
    }

    #[test]
    fn local_lines_are_replaced_in_place() {
        let text = config_text(4242, std::path::Path::new("/tmp/x"));
        let first = text
            .lines()
            .find(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert_eq!(first, "listener 4242 127.0.0.1", "the listener stays first");
        for line in [
            "allow_anonymous false",
            "use_username_as_clientid true",
            "password_file /tmp/x/passwd",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains(" /mosquitto/"), "{text}");
    }
}
