//! The object-store model source on an s3:// store (testkit's S3 server):
//! the pointer names the version, the model loads from S3 and finds the
//! known boxes, and a pointer to a version never uploaded fails naming it.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use fleetwatch_inference::config::{ModelSource, PipelineConfig, RuntimeKind};
use fleetwatch_inference::pipeline::{Pipeline, WhenFull};
use fleetwatch_inference::source::{Marker, ModelLoader, model_key, pointer_key};
use fleetwatch_testkit::s3::S3Server;
use object_store::PutPayload;
use object_store::path::Path;

#[tokio::test]
async fn models_load_from_s3_by_pointer() {
    let s3 = S3Server::start().await;
    let (store, _) = fleetwatch_objectstore::open(&s3.object_store_config("models-test")).unwrap();
    let put = |key: String, bytes: Vec<u8>| {
        let store = store.clone();
        async move {
            store
                .put(&Path::from(key), PutPayload::from(bytes))
                .await
                .unwrap();
        }
    };
    let tiny = std::fs::read(tiny_model()).unwrap();
    put(model_key("tiny", "v1"), tiny.clone()).await;
    put(pointer_key("tiny"), b"v1\n".to_vec()).await;

    let config = fleetwatch_inference::config::ModelConfig {
        source: ModelSource::ObjectStore,
        version: String::new(),
        ..model_config(RuntimeKind::Tract)
    };
    let loader = ModelLoader::new(config, Some(store.clone()));
    let marker = loader.marker().await.unwrap();
    assert_eq!(marker, Marker::Version("v1".into()));
    let model = loader.load(&marker).await.unwrap();
    assert_eq!(
        (model.name.as_str(), model.version.as_str()),
        ("tiny", "v1")
    );
    let p = Pipeline::start(model, &PipelineConfig::default());
    let d = p.detect(two_objects(), WhenFull::Wait).await.unwrap();
    let got = boxes(&d);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_box(got[0].1, RED_BOX);
    assert_box(got[1].1, BLUE_BOX);

    // The pointer moves first to a version that is not there: the error
    // names the key, so an operator sees the upload is missing.
    put(pointer_key("tiny"), b"v2".to_vec()).await;
    let marker = loader.marker().await.unwrap();
    assert_eq!(marker, Marker::Version("v2".into()));
    let err = loader.load(&marker).await.unwrap_err().to_string();
    assert!(err.contains(&model_key("tiny", "v2")), "{err}");
    put(model_key("tiny", "v2"), tiny).await;
    assert_eq!(loader.load(&marker).await.unwrap().version, "v2");
}
