//! The object store shared by the services (frames, clips, models): location
//! parsing, store setup and the deterministic key layout
//! `<vehicle>/YYYY/MM/DD/frame_<time_unix_us>.<ext>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use fleetwatch_common::Secret;
use serde::{Deserialize, Serialize};

/// Object store location and credentials. `Debug` hides the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `file:///abs/dir`, `file://./relative/dir` (resolved against the
    /// working directory) or `s3://bucket/optional/prefix`.
    pub url: String,
    /// S3-compatible endpoint, e.g. `http://minio:9000`; empty = AWS (or `AWS_ENDPOINT`).
    pub endpoint: String,
    /// S3 region; empty = `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
    pub region: String,
    /// S3 access key id; empty = `AWS_ACCESS_KEY_ID` or the instance's credentials.
    pub access_key_id: String,
    /// S3 secret key; empty = `AWS_SECRET_ACCESS_KEY`. Never logged.
    pub secret_access_key: Secret,
    /// Allow a plain-HTTP endpoint (MinIO in a cluster).
    pub allow_http: bool,
    /// S3: one request's time limit, connection included (at least 1).
    pub timeout_ms: u64,
    /// S3: retries of a failed request inside the client (connection errors,
    /// 5xx, throttling) before the caller sees the error.
    pub max_retries: usize,
    /// S3: no retry starts later than this after the first attempt.
    pub retry_timeout_ms: u64,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        Self {
            url: "file://./.fleetwatch/objects".into(),
            endpoint: String::new(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            allow_http: false,
            // object_store's own defaults: a caller that retries by itself
            // (persistence's consumer) may lower the retries so an outage
            // shows in its metrics within seconds instead of minutes.
            timeout_ms: 30_000,
            max_retries: 10,
            retry_timeout_ms: 180_000,
        }
    }
}

impl ObjectStoreConfig {
    /// Problems with the section, as `object_store.<field>: reason` lines.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if let Err(e) = ObjectLocation::parse(&self.url) {
            errs.push(format!("object_store.url: {e}"));
        }
        if self.timeout_ms == 0 {
            errs.push("object_store.timeout_ms: must be at least 1".into());
        }
        errs
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error(
        "unsupported object store url {0:?}: use file:///dir, file://./dir or s3://bucket/prefix"
    )]
    BadUrl(String),
    #[error("cannot create the object directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("object_store.timeout_ms must be at least 1 (it bounds every S3 request)")]
    ZeroTimeout,
    #[error("cannot open the object store: {0}")]
    Open(#[from] object_store::Error),
}

/// A parsed `object_store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectLocation {
    /// An absolute directory.
    Local(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl ObjectLocation {
    pub fn parse(url: &str) -> Result<Self, ObjectsError> {
        if let Some(rest) = url.strip_prefix("file://") {
            if rest.is_empty() {
                return Err(ObjectsError::BadUrl(url.into()));
            }
            let path = PathBuf::from(rest);
            let path = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()
                    .map_err(|_| ObjectsError::BadUrl(url.into()))?
                    .join(path)
            };
            return Ok(Self::Local(path));
        }
        if url.starts_with("s3://") {
            let parsed = url::Url::parse(url).map_err(|_| ObjectsError::BadUrl(url.into()))?;
            let bucket = parsed.host_str().unwrap_or_default().to_string();
            if bucket.is_empty() {
                return Err(ObjectsError::BadUrl(url.into()));
            }
            let prefix = parsed.path().trim_matches('/').to_string();
            return Ok(Self::S3 { bucket, prefix });
        }
        Err(ObjectsError::BadUrl(url.into()))
    }
}

/// Opens the configured store. Local directories are created if missing.
pub fn open(config: &ObjectStoreConfig) -> Result<(Arc<dyn ObjectStore>, String), ObjectsError> {
    match ObjectLocation::parse(&config.url)? {
        ObjectLocation::Local(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| ObjectsError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
            let store = LocalFileSystem::new_with_prefix(&dir)?;
            Ok((Arc::new(store), format!("file://{}", dir.display())))
        }
        ObjectLocation::S3 { bucket, prefix } => {
            if config.timeout_ms == 0 {
                return Err(ObjectsError::ZeroTimeout);
            }
            // from_env picks up AWS_* (keys, region, endpoint, session token);
            // explicit config wins over it.
            let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket);
            if !config.endpoint.is_empty() {
                b = b.with_endpoint(&config.endpoint);
            }
            if !config.region.is_empty() {
                b = b.with_region(&config.region);
            }
            if !config.access_key_id.is_empty() {
                b = b.with_access_key_id(&config.access_key_id);
            }
            if !config.secret_access_key.is_empty() {
                b = b.with_secret_access_key(config.secret_access_key.expose());
            }
            if config.allow_http {
                b = b.with_allow_http(true);
            }
            b = b
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    format!("{}ms", config.timeout_ms),
                )
                .with_retry(RetryConfig {
                    backoff: BackoffConfig::default(),
                    max_retries: config.max_retries,
                    retry_timeout: Duration::from_millis(config.retry_timeout_ms),
                });
            let s3 = b.build()?;
            let shown = format!("s3://{bucket}/{prefix}");
            if prefix.is_empty() {
                Ok((Arc::new(s3), shown))
            } else {
                Ok((Arc::new(PrefixStore::new(s3, prefix.as_str())), shown))
            }
        }
    }
}

/// File extension for a frame's MIME type.
pub fn extension_for(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/webp" => "webp",
        _ => "jpg",
    }
}

/// MIME type for a stored key, from its extension.
pub fn content_type_for(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, e)| e) {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// The key of a frame. Deterministic in (vehicle, time), so a redelivered
/// frame overwrites the same object with the same bytes. `None` when the
/// time is outside what a calendar date can express.
pub fn frame_key(vehicle_id: &str, time_unix_us: i64, content_type: &str) -> Option<String> {
    let t = chrono::DateTime::from_timestamp_micros(time_unix_us)?;
    Some(format!(
        "{vehicle_id}/{}/frame_{time_unix_us}.{}",
        t.format("%Y/%m/%d"),
        extension_for(content_type)
    ))
}

/// Parses a key a client asked for; refuses traversal and odd segments.
pub fn client_key(key: &str) -> Result<Path, String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if key.starts_with('/')
        || key
            .split('/')
            .any(|s| s == ".." || s == "." || s.is_empty())
    {
        return Err("must be a relative key without empty, '.' or '..' segments".into());
    }
    Path::parse(key).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(
            ObjectLocation::parse("file:///data/o").unwrap(),
            ObjectLocation::Local("/data/o".into())
        );
        let rel = ObjectLocation::parse("file://./.fleetwatch/objects").unwrap();
        match rel {
            ObjectLocation::Local(p) => {
                assert!(p.is_absolute() && p.ends_with(".fleetwatch/objects"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ObjectLocation::parse("s3://frames/fleet/prod").unwrap(),
            ObjectLocation::S3 {
                bucket: "frames".into(),
                prefix: "fleet/prod".into()
            }
        );
        assert!(ObjectLocation::parse("s3://").is_err());
        assert!(ObjectLocation::parse("file://").is_err());
        assert!(ObjectLocation::parse("/data").is_err());
    }

    #[test]
    fn frame_keys_are_deterministic() {
        // 2026-03-04T05:06:07.000008Z
        let us = 1_772_600_767_000_008;
        assert_eq!(
            frame_key("drone-1", us, "image/jpeg").unwrap(),
            format!("drone-1/2026/03/04/frame_{us}.jpg")
        );
        assert_eq!(
            frame_key("drone-1", us, "image/png").unwrap(),
            format!("drone-1/2026/03/04/frame_{us}.png")
        );
        assert_eq!(content_type_for("a/b/frame_1.jpg"), "image/jpeg");
        assert_eq!(content_type_for("a/b/clip_1.mp4"), "video/mp4");
        assert!(frame_key("x", i64::MAX, "").is_none());
    }

    #[test]
    fn client_keys_refuse_traversal() {
        assert!(client_key("drone-1/2026/03/04/frame_1.jpg").is_ok());
        for bad in [
            "",
            "../etc/passwd",
            "a/../../b",
            "/abs",
            "a//b",
            "./a",
            "a/\u{1}",
        ] {
            assert!(client_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
