//! Shared harness of the ingest integration tests: a fresh database and fresh
//! topics per test, ingest started in-process on port 0.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use fleetwatch_common::Shutdown;
use fleetwatch_ingest::{Config, Running};
use fleetwatch_kafka::TopicNames;
use fleetwatch_testkit::{ReadRecord, TestDb};

pub const VEHICLE: &str = "drone-01";
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Harness {
    pub db: TestDb,
    pub bootstrap: String,
    pub topics: TopicNames,
    pub token: String,
    pub running: Running,
    pub shutdown: Shutdown,
    pub config: Config,
    pub http: reqwest::Client,
    /// Unique per test: MQTT filters are `<suffix>/fleet/+/telemetry` and so on.
    pub suffix: String,
}

pub fn base_config(db: &TestDb, bootstrap: &str, topics: &TopicNames, suffix: &str) -> Config {
    let mut c = Config {
        kafka: fleetwatch_testkit::kafka_config(bootstrap, ""),
        topics: topics.clone(),
        database: db.db_config(),
        ..Default::default()
    };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.mqtt.enabled = false;
    let (host, port) = fleetwatch_testkit::mqtt_addr();
    c.mqtt.host = host;
    c.mqtt.port = port;
    c.mqtt.client_id = format!("ingest-{suffix}");
    c.mqtt.telemetry_filters = vec![format!("{suffix}/fleet/+/telemetry")];
    c.mqtt.detection_filters = vec![
        format!("{suffix}/fleet/+/detections"),
        format!("{suffix}/drone/+/detections"),
    ];
    // Nothing listens there: /api/latest must answer 503.
    c.persistence.grpc_url = format!("http://127.0.0.1:{}", fleetwatch_testkit::free_port());
    c.persistence.timeout_ms = 1_000;
    c
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let bootstrap = fleetwatch_testkit::shared_bootstrap().await;
        Self::start_on(bootstrap, tweak).await
    }

    pub async fn start_on(bootstrap: String, tweak: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::new().await;
        let topics = fleetwatch_testkit::fresh_topics(&bootstrap, 1).await;
        let suffix = fleetwatch_testkit::unique_suffix();
        let token = fleetwatch_db::add_vehicle(&db.pool, VEHICLE, "drone", None)
            .await
            .unwrap();
        let mut config = base_config(&db, &bootstrap, &topics, &suffix);
        tweak(&mut config);
        let shutdown = Shutdown::new();
        let running = fleetwatch_ingest::start(config.clone(), shutdown.clone())
            .await
            .unwrap();
        Self {
            db,
            bootstrap,
            topics,
            token,
            running,
            shutdown,
            config,
            http: reqwest::Client::new(),
            suffix,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &str) -> reqwest::Response {
        self.post(path, "application/json", body.to_string()).await
    }

    pub async fn read(&self, topic: &str, n: usize) -> Vec<ReadRecord> {
        fleetwatch_testkit::read_topic(&self.bootstrap, topic, n, READ_TIMEOUT).await
    }

    /// Records in `topic` (sum of high watermarks). Acks precede responses,
    /// so after a response this is exact.
    pub async fn count(&self, topic: &str) -> i64 {
        count_records(&self.bootstrap, topic).await
    }

    pub async fn assert_nothing_produced(&self) {
        for t in [
            &self.topics.telemetry,
            &self.topics.frames,
            &self.topics.detections,
        ] {
            assert_eq!(self.count(t).await, 0, "{t} must stay empty");
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.running.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

pub async fn count_records(bootstrap: &str, topic: &str) -> i64 {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md.topics()[0].partitions().len() as i32;
        (0..partitions)
            .map(|p| {
                c.fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .sum()
    })
    .await
    .unwrap()
}

/// A real JPEG of `w` x `h` pixels.
pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let pixels = vec![90u8; (w * h * 3) as usize];
    image::codecs::jpeg::JpegEncoder::new(&mut out)
        .encode(&pixels, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339()
}

pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    resp.json().await.unwrap()
}

/// The `field`s listed in an error body.
pub fn error_fields(body: &serde_json::Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn decode<M: prost::Message + Default>(r: &ReadRecord) -> M {
    M::decode(r.payload.as_slice()).unwrap()
}

impl Harness {
    /// Waits until the bridge's subscriptions are granted (publishing before
    /// that would go nowhere).
    pub async fn wait_mqtt_subscribed(&self) {
        let mut rx = self
            .running
            .mqtt_subscribed
            .clone()
            .expect("mqtt bridge enabled");
        tokio::time::timeout(READ_TIMEOUT, rx.wait_for(|n| *n > 0))
            .await
            .expect("mqtt subscription")
            .unwrap();
    }
}

/// An MQTT publisher for tests; its event loop runs in the background.
pub struct MqttPublisher {
    pub client: rumqttc::AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl MqttPublisher {
    pub async fn connect() -> Self {
        let (host, port) = fleetwatch_testkit::mqtt_addr();
        let mut o = rumqttc::MqttOptions::new(
            format!("pub-{}", fleetwatch_testkit::unique_suffix()),
            host,
            port,
        );
        o.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 100);
        let task = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { client, task }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Drops the persistent MQTT session a test's ingest left on the broker.
pub async fn forget_mqtt_session(client_id: &str) {
    let (host, port) = fleetwatch_testkit::mqtt_addr();
    let mut o = rumqttc::MqttOptions::new(client_id, host, port);
    o.set_clean_session(true);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(ev) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) = ev {
                let _ = client.disconnect().await;
            }
            if let rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect) = ev {
                break;
            }
        }
    })
    .await;
}
