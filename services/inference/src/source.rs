//! Where models come from, and switching versions without a restart.
//!
//! * `source = "path"`: a local ONNX file. Its version is `model.version`, or
//!   `sha256:<12 hex>` of its content. The file is re-checked every
//!   `poll_interval_secs` (size and modification time) and reloaded when it
//!   changed.
//! * `source = "object_store"`: `models/<name>/<version>/model.onnx`. With
//!   `model.version` empty the version is the content of the pointer object
//!   `models/<name>/current`, polled every `poll_interval_secs`: writing a new
//!   version there (after uploading its model) switches every replica.
//!
//! A version that fails to load is logged and counted; the running model
//! stays in use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use sha2::{Digest, Sha256};

use crate::config::{ModelConfig, ModelSource};
use crate::metrics;
use crate::model::{self, ModelError, RuntimeOptions};
use crate::pipeline::{Model, Pipeline};
use fleetwatch_common::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read model file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {key} from the object store: {source}")]
    Object {
        key: String,
        source: object_store::Error,
    },
    #[error("pointer {key} is empty or not a valid version: {value:?}")]
    BadPointer { key: String, value: String },
    #[error("model {name} version {version}: {source}")]
    Model {
        name: String,
        version: String,
        source: ModelError,
    },
}

/// What identifies the model version the source points at now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    File {
        len: u64,
        modified: Option<std::time::SystemTime>,
    },
    Version(String),
}

pub struct ModelLoader {
    config: ModelConfig,
    store: Option<Arc<dyn ObjectStore>>,
    options: RuntimeOptions,
}

pub fn model_key(name: &str, version: &str) -> String {
    format!("models/{name}/{version}/model.onnx")
}

pub fn pointer_key(name: &str) -> String {
    format!("models/{name}/current")
}

impl ModelLoader {
    pub fn new(config: ModelConfig, store: Option<Arc<dyn ObjectStore>>) -> Self {
        let options = RuntimeOptions {
            ort_dylib: (!config.ort_dylib_path.as_os_str().is_empty())
                .then(|| config.ort_dylib_path.clone()),
            sessions: config.sessions,
            intra_threads: config.intra_threads,
        };
        Self {
            config,
            store,
            options,
        }
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        // new() callers pass a store whenever source = object_store (lib.rs).
        #[allow(clippy::expect_used)]
        self.store
            .as_ref()
            .expect("object store configured for source = object_store")
    }

    /// One object's bytes, errors naming its key.
    async fn fetch(&self, key: &str) -> Result<bytes::Bytes, SourceError> {
        let object_error = |source| SourceError::Object {
            key: key.to_string(),
            source,
        };
        self.store()
            .get(&ObjectPath::from(key))
            .await
            .map_err(object_error)?
            .bytes()
            .await
            .map_err(object_error)
    }

    /// The current marker of the source.
    pub async fn marker(&self) -> Result<Marker, SourceError> {
        match self.config.source {
            ModelSource::Path => {
                let meta = tokio::fs::metadata(&self.config.path).await.map_err(|e| {
                    SourceError::File {
                        path: self.config.path.display().to_string(),
                        source: e,
                    }
                })?;
                Ok(Marker::File {
                    len: meta.len(),
                    modified: meta.modified().ok(),
                })
            }
            ModelSource::ObjectStore if !self.config.version.is_empty() => {
                Ok(Marker::Version(self.config.version.clone()))
            }
            ModelSource::ObjectStore => {
                let key = pointer_key(&self.config.name);
                let bytes = self.fetch(&key).await?;
                let value = String::from_utf8_lossy(&bytes).trim().to_string();
                if value.is_empty() || value.contains('/') || value.len() > 128 {
                    return Err(SourceError::BadPointer { key, value });
                }
                Ok(Marker::Version(value))
            }
        }
    }

    /// Loads the model the marker names, with its runtime (on a blocking
    /// thread); counts the outcome.
    pub async fn load(&self, marker: &Marker) -> Result<Model, SourceError> {
        let r = self.load_inner(marker).await;
        let label = if r.is_ok() { "ok" } else { "error" };
        metrics::MODEL_LOADS.with_label_values(&[label]).inc();
        r
    }

    async fn load_inner(&self, marker: &Marker) -> Result<Model, SourceError> {
        let (bytes, version) = match marker {
            Marker::File { .. } => {
                let bytes =
                    tokio::fs::read(&self.config.path)
                        .await
                        .map_err(|e| SourceError::File {
                            path: self.config.path.display().to_string(),
                            source: e,
                        })?;
                let version = if self.config.version.is_empty() {
                    let digest = Sha256::digest(&bytes);
                    format!("sha256:{}", &hex(&digest)[..12])
                } else {
                    self.config.version.clone()
                };
                (bytes, version)
            }
            Marker::Version(v) => {
                let bytes = self.fetch(&model_key(&self.config.name, v)).await?;
                (bytes.to_vec(), v.clone())
            }
        };
        let name = self.config.name.clone();
        let names_file: Option<PathBuf> = (!self.config.names_file.as_os_str().is_empty())
            .then(|| self.config.names_file.clone());
        let kind = self.config.runtime;
        let options = self.options.clone();
        let (n, v) = (name.clone(), version.clone());
        let loaded = tokio::task::spawn_blocking(move || -> Result<Model, ModelError> {
            let names = names_file.map(|p| model::read_names_file(&p)).transpose()?;
            let info = model::inspect(&bytes, names)?;
            let runtimes = model::load_runtimes(kind, &bytes, &info, &options)?;
            Ok(Model::new(n, v, kind, info, runtimes))
        })
        .await
        .map_err(|e| ModelError::Run(format!("model loading panicked: {e}")))
        .and_then(|r| r);
        loaded.map_err(|source| SourceError::Model {
            name,
            version,
            source,
        })
    }

    /// Polls the source and swaps in new versions until shutdown.
    pub async fn watch(self, pipeline: Arc<Pipeline>, mut current: Marker, shutdown: Shutdown) {
        if self.config.poll_interval_secs == 0 {
            return;
        }
        let every = Duration::from_secs(self.config.poll_interval_secs);
        let mut failed: Option<Marker> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let marker = match self.marker().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the model source; keeping the current model");
                    continue;
                }
            };
            // A version that failed once is retried only when the source changes again.
            if marker == current || failed.as_ref() == Some(&marker) {
                continue;
            }
            match self.load(&marker).await {
                Ok(m) => {
                    tracing::info!(name = %m.name, version = %m.version, runtime = m.runtime_kind.as_str(), "switched model");
                    pipeline.swap_model(m);
                    current = marker;
                    failed = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new model version failed to load; keeping the current model");
                    failed = Some(marker);
                }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
