//! At-least-once batch consumer.
//!
//! The loop: fill a batch (up to `batch_max_records` or `batch_max_wait_ms`),
//! hand it to the [`BatchHandler`], dead-letter the records it rejects, and
//! only then store the batch's offsets (committed in the background and on
//! shutdown). A transient failure retries the same batch with exponential
//! backoff and stores nothing, so a crash at any point redelivers instead of
//! losing; handlers make their effects idempotent so redelivery is harmless.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceContextExt;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::{ConsumerConfig, KafkaConfig};
use crate::context::Context;
use crate::producer::{OutRecord, Producer};
use crate::{headers, metrics};
use fleetwatch_common::Shutdown;

/// Upper bound on the final commit and close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A consumed record, owned so handlers can keep it across awaits.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker/producer timestamp in milliseconds, when known.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.header(headers::TRACEPARENT)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// Decodes the protobuf value; the error text is fit for a DLQ reason.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, String> {
        let payload = self
            .payload
            .as_deref()
            .ok_or_else(|| "record has no value".to_string())?;
        M::decode(payload).map_err(|e| format!("undecodable {}: {e}", std::any::type_name::<M>()))
    }
}

/// A record that can never succeed, with the reason; it goes to `<topic>.dlq`.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Index into the batch.
    pub index: usize,
    pub reason: String,
}

/// A failure that may pass (database down, broker slow): the batch is
/// retried and no offset advances.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct TransientError(pub anyhow::Error);

impl TransientError {
    pub fn new(e: impl Into<anyhow::Error>) -> Self {
        Self(e.into())
    }
}

/// The effect of a consumer. `handle` must be idempotent: after a crash the
/// same records come again.
pub trait BatchHandler: Send + Sync {
    /// Applies the batch durably; returns the records to dead-letter.
    fn handle(
        &self,
        batch: &[Record],
    ) -> impl Future<Output = Result<Vec<Rejection>, TransientError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot create kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: KafkaError,
    },
    #[error("kafka.consumer.group_id must be set")]
    NoGroup,
}

pub struct Consumer {
    inner: StreamConsumer<Context>,
    group: String,
    config: ConsumerConfig,
    dlq: Producer,
    recv_log: crate::context::Throttle,
}

impl Consumer {
    /// One of the consumers of a service that reads each topic on its own
    /// (so a backlog on one never delays another): group and client id are
    /// `<kafka.consumer.group_id>-<role>`, e.g. `fleetwatch-persistence-frames`.
    pub fn for_role(
        kafka: &KafkaConfig,
        role: &str,
        topic: &str,
        dlq: Producer,
    ) -> Result<Self, ConsumerError> {
        if kafka.consumer.group_id.is_empty() {
            return Err(ConsumerError::NoGroup);
        }
        let mut k = kafka.clone();
        k.consumer.group_id = format!("{}-{role}", kafka.consumer.group_id);
        let client_id = k.consumer.group_id.clone();
        Self::new(&k, &client_id, &[topic], dlq)
    }

    /// Creates the consumer and subscribes; dead letters go through `dlq`.
    pub fn new(
        kafka: &KafkaConfig,
        client_id: &str,
        topics: &[&str],
        dlq: Producer,
    ) -> Result<Self, ConsumerError> {
        let group = kafka.consumer.group_id.clone();
        if group.is_empty() {
            return Err(ConsumerError::NoGroup);
        }
        let inner: StreamConsumer<Context> = kafka
            .consumer_client_config(client_id)
            .create_with_context(Context::new(group.clone()))
            .map_err(ConsumerError::Create)?;
        inner
            .subscribe(topics)
            .map_err(|source| ConsumerError::Subscribe {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                source,
            })?;
        Ok(Self {
            inner,
            group,
            config: kafka.consumer.clone(),
            dlq,
            recv_log: Default::default(),
        })
    }

    /// Consumes until `shutdown`; then finishes the batch in hand, commits
    /// the stored offsets and returns.
    pub async fn run<H: BatchHandler>(self, handler: H, shutdown: Shutdown) {
        let max = self.config.batch_max_records;
        let wait = Duration::from_millis(self.config.batch_max_wait_ms);
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                m = self.inner.recv() => m,
            };
            let mut batch = match first {
                Ok(m) => vec![Record::from_message(&m)],
                Err(e) => {
                    if self.recv_log.allow() {
                        tracing::warn!(group = %self.group, error = %e, "kafka receive failed (repeats within 10 s are logged at debug)");
                    } else {
                        tracing::debug!(group = %self.group, error = %e, "kafka receive failed");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let deadline = tokio::time::Instant::now() + wait;
            while batch.len() < max {
                match tokio::time::timeout_at(deadline, self.inner.recv()).await {
                    Ok(Ok(m)) => batch.push(Record::from_message(&m)),
                    Ok(Err(e)) => {
                        tracing::debug!(group = %self.group, error = %e, "kafka receive failed");
                        break;
                    }
                    Err(_elapsed) => break,
                }
            }
            if !self.process(&handler, &batch, &shutdown).await {
                break;
            }
        }
        // The final commit and librdkafka's close (leave group) block, and
        // can take long against a struggling broker: keep them off the async
        // workers and bound the wait. Offsets not committed by then are only
        // redelivered, which the idempotent effects absorb.
        let group = self.group.clone();
        let closing = tokio::task::spawn_blocking(move || {
            self.commit_final();
            drop(self);
        });
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            tracing::warn!(%group, "kafka consumer did not close within {CLOSE_TIMEOUT:?}; uncommitted records will be redelivered");
        }
    }

    /// Returns false when shutdown interrupted a retry (nothing stored).
    async fn process<H: BatchHandler>(
        &self,
        handler: &H,
        batch: &[Record],
        shutdown: &Shutdown,
    ) -> bool {
        let started = Instant::now();
        observe_age(&self.group, batch);
        let span = batch_span(&self.group, batch);
        let mut delay = Duration::from_millis(self.config.retry_initial_ms);
        let max_delay = Duration::from_millis(self.config.retry_max_ms);
        let rejections = loop {
            match handler.handle(batch).instrument(span.clone()).await {
                Ok(r) => break r,
                Err(e) => {
                    metrics::TRANSIENT_FAILURES
                        .with_label_values(&[&self.group])
                        .inc();
                    tracing::warn!(group = %self.group, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "batch failed transiently; retrying without advancing offsets");
                    if !sleep_unless_shutdown(delay, shutdown).await {
                        return false;
                    }
                    delay = (delay * 2).min(max_delay);
                }
            }
        };
        for r in &rejections {
            let Some(record) = batch.get(r.index) else {
                tracing::warn!(
                    index = r.index,
                    "handler rejected an index outside the batch"
                );
                continue;
            };
            if !self.dead_letter(record, &r.reason, shutdown).await {
                return false;
            }
        }
        self.store_offsets(batch);
        metrics::BATCH_SECONDS
            .with_label_values(&[&self.group])
            .observe(started.elapsed().as_secs_f64());
        true
    }

    /// Sends `record` to `<topic>.dlq`, retrying until the broker acks: a
    /// record is never skipped without a trace.
    async fn dead_letter(&self, record: &Record, reason: &str, shutdown: &Shutdown) -> bool {
        let dlq_topic = format!("{}.dlq", record.topic);
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let now = fleetwatch_common::now_unix_us().to_string();
        let mut extra: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("dlq-")
                    && k != headers::CONTENT_TYPE
                    && k != headers::MESSAGE_TYPE
                    && k != headers::TRACEPARENT
            })
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        extra.extend([
            (headers::DLQ_SOURCE_TOPIC, record.topic.as_bytes()),
            (headers::DLQ_SOURCE_PARTITION, partition.as_bytes()),
            (headers::DLQ_SOURCE_OFFSET, offset.as_bytes()),
            (headers::DLQ_CONSUMER_GROUP, self.group.as_bytes()),
            (headers::DLQ_ERROR, reason.as_bytes()),
            (headers::DLQ_TIME_UNIX_US, now.as_bytes()),
        ]);
        let message_type = record
            .header(headers::MESSAGE_TYPE)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("unknown");
        let mut delay = Duration::from_millis(self.config.retry_initial_ms);
        loop {
            let out = OutRecord {
                topic: &dlq_topic,
                key: record.key_str().unwrap_or_default(),
                payload: record.payload.as_deref().unwrap_or_default(),
                message_type,
                traceparent: record.traceparent(),
                extra_headers: &extra,
            };
            match self.dlq.send(out).await {
                Ok(_) => {
                    metrics::DEAD_LETTERED
                        .with_label_values(&[&self.group, &record.topic])
                        .inc();
                    tracing::warn!(group = %self.group, topic = %record.topic, partition = record.partition,
                        offset = record.offset, reason, "record dead-lettered");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(dlq = %dlq_topic, error = %e, "dead-lettering failed; retrying");
                    if !sleep_unless_shutdown(delay, shutdown).await {
                        return false;
                    }
                    delay = (delay * 2).min(Duration::from_millis(self.config.retry_max_ms));
                }
            }
        }
    }

    fn store_offsets(&self, batch: &[Record]) {
        let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for r in batch {
            let e = last
                .entry((r.topic.as_str(), r.partition))
                .or_insert(r.offset);
            *e = (*e).max(r.offset);
            *counts.entry(r.topic.as_str()).or_default() += 1;
        }
        for ((topic, partition), offset) in last {
            // store_offset records offset+1, the next one to read. It fails
            // only if the partition was revoked meanwhile; its new owner
            // redelivers, which the idempotent effect absorbs.
            if let Err(e) = self.inner.store_offset(topic, partition, offset) {
                tracing::debug!(topic, partition, offset, error = %e, "offset not stored (partition revoked?)");
            }
        }
        for (topic, n) in counts {
            metrics::CONSUMED
                .with_label_values(&[&self.group, topic])
                .inc_by(n);
        }
    }

    fn commit_final(&self) {
        match self.inner.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!(group = %self.group, "committed offsets on shutdown"),
            // Nothing stored since the last commit.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(group = %self.group, error = %e, "final offset commit failed; records since the last commit will be redelivered")
            }
        }
    }
}

/// Records each record's age at the start of handling. Timestamps are the
/// producer's wall clock in milliseconds, so the figure is as good as the
/// clocks agree; a clock behind ours reads as age 0, not negative.
fn observe_age(group: &str, batch: &[Record]) {
    let now_ms = fleetwatch_common::now_unix_us() / 1000;
    let h = metrics::RECORD_AGE_SECONDS.with_label_values(&[group]);
    for r in batch {
        if let Some(ts) = r.timestamp_ms.filter(|ts| *ts > 0) {
            h.observe((now_ms - ts).max(0) as f64 / 1e3);
        }
    }
}

async fn sleep_unless_shutdown(d: Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// One span per batch. With a single record it continues the producer's
/// trace; with many it links to each record's trace.
fn batch_span(group: &str, batch: &[Record]) -> tracing::Span {
    let span = tracing::info_span!("kafka.consume_batch", group, records = batch.len());
    if let [only] = batch {
        if let Some(tp) = only.traceparent() {
            fleetwatch_common::telemetry::set_remote_parent(&span, tp);
        }
        return span;
    }
    for r in batch.iter().take(32) {
        if let Some(tp) = r.traceparent() {
            let cx = fleetwatch_common::telemetry::context_from_traceparent(tp);
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                span.add_link(sc);
            }
        }
    }
    span
}
