//! MQTT → Kafka bridge with at-least-once delivery.
//!
//! The session is persistent (`clean_session = false`, stable client id)
//! and acks are manual: a PUBLISH is acknowledged to the MQTT broker only
//! after Kafka acknowledged its record (or its dead letter), so a crash of
//! ingest makes the broker redeliver, never lose. Acks go out in arrival
//! order. Two tasks: the event loop, which must never block on Kafka, and a
//! pipeline that validates messages one by one (cheap, and it keeps records
//! in arrival order) while up to `max_in_flight` wait for their Kafka acks.
//!
//! The bridge logs in with its own credentials (`mqtt.username`/`password`);
//! a refused login keeps the service not ready and retrying, with an ERROR
//! that says what to fix, so a corrected password file heals it without a
//! restart.
//!
//! Size: ~600 lines of one state machine (event loop, ordered ack queue,
//! pipeline) whose parts share the in-flight bookkeeping; ~60 of unit tests.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetwatch_common::Readiness;
use fleetwatch_common::Shutdown;
use fleetwatch_kafka::{ProduceError, headers};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Outgoing, Packet, Publish,
    QoS, SubscribeFilter,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::App;
use crate::config::{MqttConfig, RECORD_HEADROOM_BYTES};
use crate::metrics;
use crate::parse::{self, Clock, Shape};
use crate::sink::Sink;

/// Message type of a dead-lettered MQTT payload (raw bytes as received).
pub const MQTT_PAYLOAD_TYPE: &str = "fleetwatch.mqtt.Payload";
pub use fleetwatch_kafka::headers::{DLQ_SOURCE_PROTOCOL, DLQ_TARGET_TOPIC};

/// How long shutdown waits for in-flight messages before leaving them to
/// be redelivered.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Telemetry,
    Detections,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Detections => "detections",
        }
    }
}

/// The vehicle id a topic carries under `filter` (the segment at the first
/// `+`), or `None` when the topic does not match.
pub fn match_filter(filter: &str, topic: &str) -> Option<String> {
    let mut vehicle = None;
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return vehicle;
        }
        let seg = t.next()?;
        if f == "+" {
            if vehicle.is_none() {
                if seg.is_empty() {
                    return None;
                }
                vehicle = Some(seg.to_string());
            }
        } else if f != seg {
            return None;
        }
    }
    if t.next().is_some() { None } else { vehicle }
}

/// The filter to subscribe with: shared across replicas when a group is set.
/// Publishes still arrive on their plain topic, so routing matches the plain filter.
fn subscription(shared_group: &str, filter: &str) -> String {
    if shared_group.is_empty() {
        filter.to_string()
    } else {
        format!("$share/{shared_group}/{filter}")
    }
}

fn route(config: &MqttConfig, topic: &str) -> Option<(Kind, String)> {
    let tel = config
        .telemetry_filters
        .iter()
        .map(|f| (Kind::Telemetry, f));
    let det = config
        .detection_filters
        .iter()
        .map(|f| (Kind::Detections, f));
    tel.chain(det)
        .find_map(|(k, f)| match_filter(f, topic).map(|v| (k, v)))
}

type Delivery = Pin<Box<dyn Future<Output = Result<(), ProduceError>> + Send>>;
/// Resolves to whether the message may be acknowledged.
type Pending = Pin<Box<dyn Future<Output = (u64, Publish, bool)> + Send>>;

/// Starts the bridge; the handle finishes after shutdown once in-flight
/// messages are acknowledged (or left for redelivery). The watch counts
/// subscriptions the broker granted (one per connection).
/// The bridge is ready once the broker accepted its login and granted
/// every subscription, and stays so only while connected.
pub fn start(
    app: Arc<App>,
    config: MqttConfig,
    kafka_max_message_bytes: u32,
    readiness: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<(JoinHandle<()>, watch::Receiver<u64>)> {
    let mut opts = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    if let Some((username, password)) = config.credentials().map_err(anyhow::Error::msg)? {
        opts.set_credentials(username, password.expose());
    }
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
        // A packet above the incoming limit kills the connection (and would
        // be redelivered forever), so accept anything a record can hold and
        // dead-letter what is too large for the parser.
        .set_max_packet_size(
            kafka_max_message_bytes.saturating_sub(RECORD_HEADROOM_BYTES) as usize,
            64 * 1024,
        )
        .set_request_channel_capacity(config.max_in_flight * 2 + 64);
    let (client, eventloop) = AsyncClient::new(opts, config.max_in_flight * 2 + 64);
    let (tx, rx) = mpsc::channel(config.max_in_flight);
    let generation = Arc::new(AtomicU64::new(0));
    let stop = Shutdown::new();
    let (subscribed_tx, subscribed) = watch::channel(0u64);
    let events = tokio::spawn(run_eventloop(
        eventloop,
        client.clone(),
        config.clone(),
        tx,
        generation.clone(),
        stop.clone(),
        Connected {
            subscribed: subscribed_tx,
            readiness,
            shutdown: shutdown.clone(),
        },
    ));
    let pipeline = Pipeline {
        app,
        config,
        client,
        generation,
        shutdown,
        pending_acks: VecDeque::new(),
    };
    let handle = tokio::spawn(async move {
        pipeline.run(rx).await;
        if tokio::time::timeout(Duration::from_secs(5), events)
            .await
            .is_err()
        {
            stop.cancel();
        }
    });
    Ok((handle, subscribed))
}

/// What the event loop reports about the connection.
struct Connected {
    /// Counts connections whose subscriptions were all granted.
    subscribed: watch::Sender<u64>,
    readiness: Readiness,
    /// Once the service stops, readiness stays false.
    shutdown: Shutdown,
}

impl Connected {
    fn set_ready(&self, ready: bool) {
        self.readiness.set(ready && !self.shutdown.is_cancelled());
    }
}

/// What an operator must do about a refused CONNECT.
fn refusal_hint(code: ConnectReturnCode, config: &MqttConfig) -> String {
    match code {
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
            if config.username.is_empty() =>
        {
            "the broker does not accept anonymous clients: set mqtt.username and mqtt.password \
             (or mqtt.password_file) to the bridge's user in the broker's password file"
                .into()
        }
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => format!(
            "the broker refused the bridge's login as {:?}: check mqtt.password (or \
             mqtt.password_file) against the broker's password file; \
             `fleetctl mqtt passwd <file> {}` writes an entry, and SIGHUP makes Mosquitto reload it",
            config.username, config.username
        ),
        ConnectReturnCode::BadClientId => {
            "the broker refused mqtt.client_id; pick another (letters and digits)".into()
        }
        other => format!("the broker refused the connection ({other:?})"),
    }
}

async fn run_eventloop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    config: MqttConfig,
    tx: mpsc::Sender<(u64, Publish)>,
    generation: Arc<AtomicU64>,
    stop: Shutdown,
    connected: Connected,
) {
    let filters: Vec<SubscribeFilter> = config
        .telemetry_filters
        .iter()
        .chain(&config.detection_filters)
        .map(|f| SubscribeFilter::new(subscription(&config.shared_group, f), QoS::AtLeastOnce))
        .collect();
    let max_backoff = Duration::from_millis(config.reconnect_max_backoff_ms.max(100));
    let mut backoff = Duration::from_millis(100);
    // The first refusal of a streak is an ERROR (an operator must act); the
    // retries after it are not.
    let mut refused = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                // Publishes of an earlier connection are redelivered by the
                // broker; their acks would be meaningless now.
                generation.fetch_add(1, Ordering::SeqCst);
                backoff = Duration::from_millis(100);
                refused = false;
                metrics::MQTT_CONNECTIONS
                    .with_label_values(&["connected"])
                    .inc();
                tracing::info!(host = %config.host, port = config.port, session_present = ack.session_present, "mqtt connected");
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    tracing::error!(error = %e, "cannot subscribe to mqtt topics");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    connected.set_ready(false);
                    tracing::error!(username = %config.username, filters = ?config.telemetry_filters.iter().chain(&config.detection_filters).collect::<Vec<_>>(), "mqtt broker refused a subscription; its ACL must let the bridge's user read these filters");
                } else {
                    connected.set_ready(true);
                    connected.subscribed.send_modify(|n| *n += 1);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let g = generation.load(Ordering::SeqCst);
                // Fails only when the pipeline stopped; the broker redelivers.
                let _ = tx.send((g, p)).await;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                connected.set_ready(false);
                return;
            }
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => {
                connected.set_ready(false);
                metrics::MQTT_CONNECTIONS
                    .with_label_values(&["refused"])
                    .inc();
                let retry_in_ms = backoff.as_millis() as u64;
                if refused {
                    tracing::debug!(code = ?code, retry_in_ms, "mqtt broker refused the connection again");
                } else {
                    tracing::error!(host = %config.host, port = config.port, username = %config.username, code = ?code, retry_in_ms, hint = %refusal_hint(code, &config), "mqtt broker refused the connection; not ready");
                }
                refused = true;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
            Err(e) => {
                connected.set_ready(false);
                metrics::MQTT_CONNECTIONS
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "mqtt connection failed; not ready");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

struct Pipeline {
    app: Arc<App>,
    config: MqttConfig,
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    shutdown: Shutdown,
    pending_acks: VecDeque<(u64, Publish)>,
}

impl Pipeline {
    async fn run(mut self, mut rx: mpsc::Receiver<(u64, Publish)>) {
        let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some((g, p, ack)) = in_flight.next(), if !in_flight.is_empty() => {
                    if ack {
                        self.pending_acks.push_back((g, p));
                    }
                    self.flush_acks();
                }
                _ = tick.tick(), if !self.pending_acks.is_empty() => self.flush_acks(),
                msg = rx.recv(), if in_flight.len() < self.config.max_in_flight => match msg {
                    Some((g, p)) => in_flight.push_back(self.prepare(g, p).await),
                    None => break,
                },
            }
        }
        rx.close();
        let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
        while !in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, in_flight.next()).await {
                Ok(Some((g, p, true))) => self.pending_acks.push_back((g, p)),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        left = in_flight.len(),
                        "mqtt messages not acknowledged by kafka before shutdown; the broker redelivers them"
                    );
                    break;
                }
            }
        }
        while !self.pending_acks.is_empty() && tokio::time::Instant::now() < deadline {
            self.flush_acks();
            if !self.pending_acks.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = self.client.try_disconnect();
    }

    /// Hands acks to the event loop without ever blocking on it.
    fn flush_acks(&mut self) {
        let current = self.generation.load(Ordering::SeqCst);
        while let Some((g, p)) = self.pending_acks.front() {
            if *g != current {
                self.pending_acks.pop_front();
                continue;
            }
            if self.client.try_ack(p).is_err() {
                return;
            }
            self.pending_acks.pop_front();
        }
    }

    /// Validates one message and starts producing it (enqueued before this
    /// returns, so records keep arrival order); the returned future
    /// resolves once it may be acknowledged.
    async fn prepare(&self, g: u64, p: Publish) -> Pending {
        let Some((kind, vehicle)) = route(&self.config, &p.topic) else {
            // Only possible with overlapping subscriptions from an earlier config.
            metrics::MQTT_MESSAGES
                .with_label_values(&["unmatched", "ignored"])
                .inc();
            tracing::warn!(topic = %p.topic, "mqtt message on a topic no filter matches; acknowledged and ignored");
            return Box::pin(std::future::ready((g, p, true)));
        };
        let app = &self.app;
        let target = match kind {
            Kind::Telemetry => app.sink.topics.telemetry.clone(),
            Kind::Detections => app.sink.topics.detections.clone(),
        };
        let mut backoff = Duration::from_millis(100);
        let exists = loop {
            match app.auth.vehicle_exists(&vehicle).await {
                Ok(v) => break v,
                Err(_) => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Box::pin(std::future::ready((g, p, false))),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        if !exists {
            let reason = format!("unknown or inactive vehicle {vehicle:?}");
            return self.dead_letter(g, p, kind, target, reason, "dlq_unknown_vehicle");
        }
        if p.payload.len() > app.limits.max_json_body_bytes {
            let reason = format!(
                "payload of {} bytes exceeds {}",
                p.payload.len(),
                app.limits.max_json_body_bytes
            );
            return self.dead_letter(g, p, kind, target, reason, "dlq_invalid");
        }
        let clock = Clock::new(&app.limits, fleetwatch_common::now_unix_us());
        let sink = app.sink.clone();
        let make: Box<dyn Fn() -> Delivery + Send> = match kind {
            Kind::Telemetry => {
                match parse::parse_telemetry(&p.payload, Shape::Any, &vehicle, &app.limits, &clock)
                {
                    Ok(parsed) => {
                        let n = parsed.points.len() as u64;
                        let batches =
                            sink.telemetry_batches(&vehicle, parsed.points, "mqtt", clock.now_us);
                        let s = sink.clone();
                        Box::new(move || {
                            let f = s.start_telemetry(batches.clone());
                            Box::pin(async move {
                                f.await?;
                                metrics::POINTS_ACCEPTED
                                    .with_label_values(&["mqtt"])
                                    .inc_by(n);
                                Ok(())
                            })
                        })
                    }
                    Err(e) => {
                        return self.dead_letter(g, p, kind, target, e.to_string(), "dlq_invalid");
                    }
                }
            }
            Kind::Detections => {
                match parse::parse_detections(&p.payload, &vehicle, &app.limits, &clock) {
                    Ok(batch) => {
                        let s = sink.clone();
                        Box::new(move || s.start_detections(&batch))
                    }
                    Err(e) => {
                        return self.dead_letter(g, p, kind, target, e.to_string(), "dlq_invalid");
                    }
                }
            }
        };
        let first = make();
        let shutdown = self.shutdown.clone();
        let this = DeadLetterer { sink, target, kind };
        Box::pin(async move {
            match deliver(first, make, &shutdown).await {
                Delivered::Yes => {
                    metrics::MQTT_MESSAGES
                        .with_label_values(&[kind.label(), "accepted"])
                        .inc();
                    (g, p, true)
                }
                Delivered::Stopped => (g, p, false),
                Delivered::Never(e) => {
                    let ok = this.send(&p, e.to_string(), &shutdown).await;
                    (g, p, ok)
                }
            }
        })
    }

    fn dead_letter(
        &self,
        g: u64,
        p: Publish,
        kind: Kind,
        target: String,
        reason: String,
        outcome: &'static str,
    ) -> Pending {
        metrics::MQTT_MESSAGES
            .with_label_values(&[kind.label(), outcome])
            .inc();
        let d = DeadLetterer {
            sink: self.app.sink.clone(),
            target,
            kind,
        };
        let make = d.maker(&p, reason);
        let first = make();
        let shutdown = self.shutdown.clone();
        Box::pin(async move {
            let ok = d.finish(deliver(first, make, &shutdown).await);
            (g, p, ok)
        })
    }
}

enum Delivered {
    Yes,
    /// Shutdown came first; leave the message unacknowledged.
    Stopped,
    /// Can never succeed (e.g. too large).
    Never(ProduceError),
}

/// Awaits `first`, re-sending through `make` with backoff while Kafka pushes
/// back: an MQTT message is never dropped because the broker is slow or down.
async fn deliver(first: Delivery, make: impl Fn() -> Delivery, shutdown: &Shutdown) -> Delivered {
    let mut attempt = first;
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt.await {
            Ok(()) => return Delivered::Yes,
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, "kafka refused an mqtt message; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Delivered::Stopped,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                attempt = make();
            }
            Err(e) => return Delivered::Never(e),
        }
    }
}

struct DeadLetterer {
    sink: Sink,
    target: String,
    kind: Kind,
}

impl DeadLetterer {
    fn maker(&self, p: &Publish, reason: String) -> impl Fn() -> Delivery + Send + 'static + use<> {
        let sink = self.sink.clone();
        let dlq = fleetwatch_proto::topics::dlq(&self.target);
        let target = self.target.clone();
        let topic = p.topic.clone();
        let payload = p.payload.to_vec();
        move || {
            let hdrs = vec![
                (headers::CONTENT_TYPE, b"application/json".to_vec()),
                (headers::DLQ_SOURCE_TOPIC, topic.clone().into_bytes()),
                (DLQ_SOURCE_PROTOCOL, b"mqtt".to_vec()),
                (DLQ_TARGET_TOPIC, target.clone().into_bytes()),
                (headers::DLQ_ERROR, reason.clone().into_bytes()),
                (
                    headers::DLQ_TIME_UNIX_US,
                    fleetwatch_common::now_unix_us().to_string().into_bytes(),
                ),
            ];
            // Key: the MQTT topic, which names the vehicle (known or not).
            sink.send_raw(
                dlq.clone(),
                topic.clone(),
                payload.clone(),
                MQTT_PAYLOAD_TYPE,
                hdrs,
            )
        }
    }

    fn finish(&self, d: Delivered) -> bool {
        match d {
            Delivered::Yes => true,
            Delivered::Stopped => false,
            Delivered::Never(e) => {
                // Nothing can ever hold this message; keeping it unacked would
                // block the session forever.
                metrics::MQTT_MESSAGES
                    .with_label_values(&[self.kind.label(), "dlq_failed"])
                    .inc();
                tracing::error!(error = %e, dlq = %fleetwatch_proto::topics::dlq(&self.target), "cannot dead-letter an mqtt message; acknowledged and lost");
                true
            }
        }
    }

    async fn send(&self, p: &Publish, reason: String, shutdown: &Shutdown) -> bool {
        metrics::MQTT_MESSAGES
            .with_label_values(&[self.kind.label(), "dlq_invalid"])
            .inc();
        let make = self.maker(p, reason);
        let first = make();
        self.finish(deliver(first, make, shutdown).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscriptions() {
        assert_eq!(
            subscription("fleetwatch-ingest", "fleet/+/telemetry"),
            "$share/fleetwatch-ingest/fleet/+/telemetry"
        );
        assert_eq!(subscription("", "fleet/+/telemetry"), "fleet/+/telemetry");
    }

    #[test]
    fn filters_capture_the_vehicle() {
        assert_eq!(
            match_filter("fleet/+/telemetry", "fleet/drone-01/telemetry").as_deref(),
            Some("drone-01")
        );
        assert_eq!(
            match_filter("x/fleet/+/telemetry", "x/fleet/d1/telemetry").as_deref(),
            Some("d1")
        );
        assert_eq!(
            match_filter("fleet/+/telemetry", "fleet/d1/detections"),
            None
        );
        assert_eq!(
            match_filter("fleet/+/telemetry", "fleet/d1/telemetry/x"),
            None
        );
        assert_eq!(match_filter("fleet/+/telemetry", "fleet//telemetry"), None);
        assert_eq!(match_filter("fleet/+/telemetry", "fleet/telemetry"), None);
        assert_eq!(
            match_filter("fleet/+/+/t", "fleet/a/b/t").as_deref(),
            Some("a")
        );
        assert_eq!(
            match_filter("drone/+/#", "drone/7/detections/raw").as_deref(),
            Some("7")
        );
    }

    #[test]
    fn routes_by_kind() {
        let c = MqttConfig::default();
        assert_eq!(
            route(&c, "fleet/v1/telemetry"),
            Some((Kind::Telemetry, "v1".into()))
        );
        assert_eq!(
            route(&c, "drone/01/detections"),
            Some((Kind::Detections, "01".into()))
        );
        assert_eq!(route(&c, "other/01/x"), None);
    }
}
