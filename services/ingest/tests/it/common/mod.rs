//! Shared harness of the ingest integration tests: a fresh database and fresh
//! topics per test, ingest started in-process on port 0.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use fleetwatch_common::Shutdown;
use fleetwatch_ingest::{Config, Running};
use fleetwatch_kafka::TopicNames;
use fleetwatch_testkit::mqtt::{BRIDGE_USER, Mosquitto};
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
    /// Unique per test.
    pub suffix: String,
    /// The test's own Mosquitto (shipped config), started when the tweak
    /// enables the bridge; [`VEHICLE`] logs in there with its token.
    pub mqtt: Option<Mosquitto>,
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
    // A test enabling the bridge gets a Mosquitto of its own (see
    // Harness::start_on), so the default topic filters and the shipped ACL apply.
    c.mqtt.enabled = false;
    c.mqtt.client_id = format!("ingest-{suffix}");
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
        let mqtt = if config.mqtt.enabled {
            let m = Mosquitto::start().await;
            config.mqtt.host = m.host();
            config.mqtt.port = m.port();
            // A tweak that set a login (e.g. a wrong one) keeps it.
            if config.mqtt.username.is_empty() {
                config.mqtt.username = BRIDGE_USER.into();
                config.mqtt.password = m.bridge_password().into();
            }
            m.add_user(VEHICLE, &token).await;
            Some(m)
        } else {
            None
        };
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
            mqtt,
        }
    }

    /// The test's Mosquitto (the tweak must have enabled the bridge).
    pub fn broker(&self) -> &Mosquitto {
        self.mqtt.as_ref().expect("mqtt bridge enabled")
    }

    /// [`VEHICLE`], logged in with its own token.
    pub async fn vehicle(&self) -> MqttPublisher {
        MqttPublisher::connect(self.broker(), VEHICLE, &self.token).await
    }

    /// Registers another vehicle in the database and the broker; returns its token.
    pub async fn add_vehicle(&self, id: &str) -> String {
        let token = fleetwatch_db::add_vehicle(&self.db.pool, id, "drone", None)
            .await
            .unwrap();
        if let Some(m) = &self.mqtt {
            m.add_user(id, &token).await;
        }
        token
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
        fleetwatch_testkit::stop_service(&self.shutdown, self.running.handle).await;
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

/// A vehicle's MQTT connection for tests; its event loop runs in the
/// background and records what the broker answered.
pub struct MqttPublisher {
    pub client: rumqttc::AsyncClient,
    /// Publishes the broker delivered to this client: (topic, payload).
    pub received: tokio::sync::watch::Receiver<Vec<(String, Vec<u8>)>>,
    subacks: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttPublisher {
    /// Connects as `user` (a vehicle id) with `password` (its token).
    pub async fn connect(broker: &Mosquitto, user: &str, password: &str) -> Self {
        let (client, mut eventloop) =
            rumqttc::AsyncClient::new(broker.options(user, password), 100);
        let (tx, received) = tokio::sync::watch::channel(Vec::new());
        let (suback_tx, subacks) = tokio::sync::watch::channel(0usize);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        tx.send_modify(|v| v.push((p.topic.clone(), p.payload.to_vec())));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        suback_tx.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    // rumqttc reconnects on the next poll; keep it from spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self {
            client,
            received,
            subacks,
            task,
        }
    }

    /// Subscribes and waits for the SUBACK. Mosquitto grants any filter and
    /// applies the ACL to each message it delivers.
    pub async fn subscribe(&self, filter: &str) {
        let mut rx = self.subacks.clone();
        let before = *rx.borrow_and_update();
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(READ_TIMEOUT, rx.wait_for(|n| *n > before))
            .await
            .expect("suback")
            .unwrap();
    }

    /// Waits until `n` publishes arrived and returns them all.
    pub async fn wait_received(&self, n: usize) -> Vec<(String, Vec<u8>)> {
        let mut rx = self.received.clone();
        tokio::time::timeout(READ_TIMEOUT, rx.wait_for(|v| v.len() >= n))
            .await
            .expect("mqtt publishes")
            .unwrap()
            .clone()
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
