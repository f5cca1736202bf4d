//! Helpers for running the built `fleetctl` binary and a fake ingest.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Runs `fleetctl args...` with the given env and returns its output.
pub async fn fleetctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(fleetwatch_testkit::binary("fleetctl"));
    cmd.args(args)
        .env_remove("FLEETWATCH_DATABASE_URL")
        .env_remove("FLEETWATCH_KAFKA_BOOTSTRAP")
        .env_remove("FLEETWATCH_MQTT_PASSWORD_FILE")
        .env_remove("FLEETWATCH_MQTT_PID_FILE")
        .env_remove("FLEETWATCH_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(true).output().await.unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last non-empty line of stdout.
pub fn last_line(o: &Output) -> String {
    stdout(o)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_string()
}

pub fn write_tokens(path: &Path, tokens: &[(&str, &str)]) {
    let vehicles: BTreeMap<&str, &str> = tokens.iter().copied().collect();
    std::fs::write(
        path,
        serde_json::to_string(&serde_json::json!({ "vehicles": vehicles })).unwrap(),
    )
    .unwrap();
}

/// One request the fake ingest saw, and what it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: String,
    pub auth: String,
    pub content_type: String,
    pub body: Bytes,
    pub status: u16,
}

/// How the fake ingest answers.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// 200 `{"accepted": n}` to everything.
    Accept,
    /// 503 with `Retry-After: 1` to the first `n` telemetry requests, then accept.
    BusyFirst(usize),
    /// This status to everything.
    Always(u16),
}

#[derive(Clone)]
struct FakeState {
    mode: Mode,
    seen: Arc<Mutex<Vec<Seen>>>,
}

pub struct FakeIngest {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeIngest {
    pub async fn start(mode: Mode) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = FakeState {
            mode,
            seen: seen.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(State(s): State<FakeState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let path = uri.path().to_string();
    let mut seen = s.seen.lock().unwrap();
    let telemetry_before = seen
        .iter()
        .filter(|r| r.path == "/api/v1/telemetry")
        .count();
    let items = if path == "/api/v1/telemetry" {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Array(a)) => a.len(),
            _ => 1,
        }
    } else {
        1
    };
    let status = match s.mode {
        Mode::Accept => 200,
        Mode::BusyFirst(n) if path == "/api/v1/telemetry" && telemetry_before < n => 503,
        Mode::BusyFirst(_) => 200,
        Mode::Always(code) => code,
    };
    seen.push(Seen {
        path,
        query: uri.query().unwrap_or_default().to_string(),
        auth: h("authorization"),
        content_type: h("content-type"),
        body,
        status,
    });
    let code = StatusCode::from_u16(status).unwrap();
    match status {
        200 => (code, axum::Json(serde_json::json!({ "accepted": items }))).into_response(),
        503 => (code, [("retry-after", "1")], "busy").into_response(),
        _ => (code, "go away").into_response(),
    }
}
