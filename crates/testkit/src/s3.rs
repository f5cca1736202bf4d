//! An S3-compatible server a test owns: versitygw with its posix backend
//! (scripts/test builds it, see `scripts/s3.sh`) in a temp dir on a free
//! port, with one bucket. It can be SIGKILLed, stopped and restarted on the
//! same port and data, like an object-store outage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetwatch_objectstore::ObjectStoreConfig;
use object_store::signer::Signer;

use crate::{free_port, unique_suffix};

pub const ACCESS_KEY_ID: &str = "fleetwatch-test";
pub const SECRET_ACCESS_KEY: &str = "fleetwatch-test-secret";
pub const REGION: &str = "us-east-1";

/// The server binary: `FLEETWATCH_S3_SERVER_BIN` (scripts/test exports it),
/// else `.fleetwatch/bin/versitygw` in the workspace.
pub fn server_bin() -> PathBuf {
    let p = std::env::var("FLEETWATCH_S3_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.fleetwatch/bin/versitygw")
        });
    assert!(
        p.is_file(),
        "no S3 server binary at {}; run scripts/test once (it builds versitygw into .fleetwatch/bin) \
         or set FLEETWATCH_S3_SERVER_BIN",
        p.display()
    );
    p
}

pub struct S3Server {
    port: u16,
    bucket: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    /// Starts the server, waits until it serves and creates the bucket.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("meta")).unwrap();
        let mut s = Self {
            port: free_port(),
            // S3 bucket names: 3-63 lowercase letters, digits and hyphens.
            bucket: format!("fw-{}", unique_suffix()),
            bin: server_bin(),
            dir,
            child: None,
        };
        s.spawn();
        s.wait_serving().await;
        s.create_bucket().await;
        s
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://<bucket>/<prefix>` (`prefix` may be empty).
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_matches('/'))
    }

    /// What `fleetwatch_objectstore::open` needs to reach this server
    /// under `prefix`.
    pub fn object_store_config(&self, prefix: &str) -> ObjectStoreConfig {
        ObjectStoreConfig {
            url: self.url(prefix),
            endpoint: self.endpoint(),
            region: REGION.into(),
            access_key_id: ACCESS_KEY_ID.into(),
            secret_access_key: SECRET_ACCESS_KEY.into(),
            allow_http: true,
            ..Default::default()
        }
    }

    /// The same as `AWS_*` variables, for a service process (object_store
    /// reads them when the config leaves the S3 fields empty).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The keys stored under `prefix`, sorted, read from the server's
    /// directory (the posix backend keeps one file per object, renamed into
    /// place when complete), so it also answers while the server is down.
    pub fn stored_keys(&self, prefix: &str) -> Vec<String> {
        let root = self.dir.path().join("data").join(&self.bucket);
        let prefix = prefix.trim_matches('/');
        let mut keys = Vec::new();
        collect_files(&root.join(prefix), &root, &mut keys);
        keys.sort();
        keys
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs the server: requests in flight fail, nothing is flushed
    /// (no-op when already stopped).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// (Re)starts the server on the same port and data and waits until it
    /// serves; the bucket and its objects are still there.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_serving().await;
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("--access")
            .arg(ACCESS_KEY_ID)
            .arg("--secret")
            .arg(SECRET_ACCESS_KEY)
            .arg("--region")
            .arg(REGION)
            .arg("--port")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("posix")
            // Metadata in a sidecar directory, not in extended attributes,
            // which not every temp filesystem supports.
            .arg("--sidecar")
            .arg(self.dir.path().join("meta"))
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    async fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if !self.is_running() {
                panic!(
                    "the S3 server exited at start:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the S3 server did not listen on 127.0.0.1:{} within 30 s; see {}",
                    self.port,
                    self.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// object_store has no CreateBucket, but it signs URLs: a presigned PUT
    /// on the bucket's root is one.
    async fn create_bucket(&self) {
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(self.endpoint())
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY_ID)
            .with_secret_access_key(SECRET_ACCESS_KEY)
            .with_allow_http(true)
            .build()
            .unwrap();
        let url = s3
            .signed_url(
                reqwest::Method::PUT,
                &object_store::path::Path::from(""),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let r = reqwest::Client::new().put(url).send().await.unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "creating bucket {} failed: {status} {}",
            self.bucket,
            r.text().await.unwrap_or_default()
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        // The backend's own temp and metadata entries start with a dot; no
        // Fleetwatch key segment does.
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => collect_files(&path, root, out),
            Ok(t) if t.is_file() => {
                if let Ok(rel) = path.strip_prefix(root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
            _ => {}
        }
    }
}
