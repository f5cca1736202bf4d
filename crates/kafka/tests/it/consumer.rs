//! The Kafka discipline against a real broker: ack-resolved sends, DLQ with
//! provenance headers, transient retry without advancing, committed offsets,
//! lag metrics, trace headers.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleetwatch_kafka::{
    BatchHandler, Consumer, OutRecord, ProduceError, Producer, Record, Rejection, TransientError,
    headers,
};
use fleetwatch_testkit as tk;
use tokio_util::sync::CancellationToken;

/// Values seen, each with its traceparent header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Records every value it sees; rejects values starting with "bad"; fails
/// transiently while `fail_remaining` > 0.
#[derive(Clone, Default)]
struct Collect {
    seen: Seen,
    fail_remaining: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl BatchHandler for Collect {
    async fn handle(&self, batch: &[Record]) -> Result<Vec<Rejection>, TransientError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self
            .fail_remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(TransientError::new(anyhow::anyhow!(
                "database is down (simulated)"
            )));
        }
        let mut rejected = Vec::new();
        let mut seen = self.seen.lock().unwrap();
        for (i, r) in batch.iter().enumerate() {
            let v = String::from_utf8(r.payload.clone().unwrap_or_default()).unwrap();
            if v.starts_with("bad") {
                rejected.push(Rejection {
                    index: i,
                    reason: format!("value {v:?} is bad"),
                });
            } else {
                seen.push((v, r.traceparent().map(str::to_string)));
            }
        }
        Ok(rejected)
    }
}

async fn send(p: &Producer, topic: &str, key: &str, value: &str) {
    p.send(OutRecord {
        topic,
        key,
        payload: value.as_bytes(),
        message_type: "test.Value",
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        extra_headers: &[],
    })
    .await
    .unwrap();
}

fn start(
    bootstrap: &str,
    group: &str,
    topic: &str,
    handler: Collect,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cfg = tk::kafka_config(bootstrap, group);
    let dlq = Producer::new(&cfg, "test-dlq").unwrap();
    let consumer = Consumer::new(&cfg, "test-consumer", &[topic], dlq).unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    (
        stop,
        tokio::spawn(async move { consumer.run(handler, s).await }),
    )
}

#[tokio::test]
async fn delivers_dead_letters_and_commits() {
    let bootstrap = tk::shared_bootstrap().await;
    let topics = tk::fresh_topics(&bootstrap, 2).await;
    let topic = topics.telemetry.clone();
    let producer = Producer::new(&tk::kafka_config(&bootstrap, ""), "test-producer").unwrap();
    for v in ["a1", "bad-1", "a2", "a3"] {
        send(&producer, &topic, "veh-1", v).await;
    }

    let group = format!("g-{}", tk::unique_suffix());
    let h = Collect::default();
    let (stop, task) = start(&bootstrap, &group, &topic, h.clone());
    let seen = h.seen.clone();
    tk::wait_for("three good records", Duration::from_secs(60), || {
        let seen = seen.clone();
        async move { (seen.lock().unwrap().len() >= 3).then_some(()) }
    })
    .await;
    let got: Vec<String> = h
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(v, _)| v.clone())
        .collect();
    assert_eq!(
        got,
        ["a1", "a2", "a3"],
        "same key keeps order; the bad one is not handled as good"
    );
    assert!(
        h.seen
            .lock()
            .unwrap()
            .iter()
            .all(|(_, tp)| tp.as_deref().unwrap().starts_with("00-0af7651916cd43dd"))
    );

    // Each handled record's age (producer timestamp -> handler) is recorded
    // for the group: a second or two at most here, never negative.
    let ages = prometheus::gather()
        .into_iter()
        .find(|m| m.get_name() == "fleetwatch_kafka_record_age_seconds")
        .expect("record age metric registered");
    let h_age = ages
        .get_metric()
        .iter()
        .find(|m| m.get_label().iter().any(|l| l.get_value() == group))
        .expect("record age for this group")
        .get_histogram();
    assert!(h_age.get_sample_count() >= 3, "{h_age:?}");
    assert!(
        (0.0..60.0 * h_age.get_sample_count() as f64).contains(&h_age.get_sample_sum()),
        "{h_age:?}"
    );

    // The bad record is in the DLQ, with its provenance.
    let dlq = tk::read_topic(
        &bootstrap,
        &format!("{topic}.dlq"),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(d.payload, b"bad-1");
    assert_eq!(d.key.as_deref(), Some(&b"veh-1"[..]));
    assert_eq!(
        d.header(headers::DLQ_SOURCE_TOPIC).as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(
        d.header(headers::DLQ_CONSUMER_GROUP).as_deref(),
        Some(group.as_str())
    );
    assert_eq!(
        d.header(headers::DLQ_ERROR).as_deref(),
        Some("value \"bad-1\" is bad")
    );
    assert!(
        d.header(headers::DLQ_SOURCE_PARTITION)
            .unwrap()
            .parse::<i32>()
            .is_ok()
    );
    assert!(
        d.header(headers::DLQ_SOURCE_OFFSET)
            .unwrap()
            .parse::<i64>()
            .is_ok()
    );
    assert_eq!(
        d.header(headers::MESSAGE_TYPE).as_deref(),
        Some("test.Value")
    );

    // Lag is exported per partition once stats arrive.
    tk::wait_for("lag metric", Duration::from_secs(30), || {
        let group = group.clone();
        async move {
            let families = prometheus::gather();
            let found = families.iter().any(|f| {
                f.get_name() == "fleetwatch_kafka_consumer_lag"
                    && f.get_metric()
                        .iter()
                        .any(|m| m.get_label().iter().any(|l| l.get_value() == group))
            });
            found.then_some(())
        }
    })
    .await;

    // Shut down cleanly: offsets are committed, so a restart sees only new records.
    stop.cancel();
    task.await.unwrap();
    send(&producer, &topic, "veh-1", "a4").await;
    let h2 = Collect::default();
    let (stop2, task2) = start(&bootstrap, &group, &topic, h2.clone());
    let seen2 = h2.seen.clone();
    tk::wait_for("the new record", Duration::from_secs(60), || {
        let seen2 = seen2.clone();
        async move { (!seen2.lock().unwrap().is_empty()).then_some(()) }
    })
    .await;
    stop2.cancel();
    task2.await.unwrap();
    let got2: Vec<String> = h2
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(v, _)| v.clone())
        .collect();
    assert_eq!(got2, ["a4"], "committed records are not redelivered");
    assert_eq!(
        tk::read_topic(
            &bootstrap,
            &format!("{topic}.dlq"),
            1,
            Duration::from_secs(10)
        )
        .await
        .len(),
        1
    );
}

#[tokio::test]
async fn transient_failure_retries_without_advancing() {
    let bootstrap = tk::shared_bootstrap().await;
    let topics = tk::fresh_topics(&bootstrap, 1).await;
    let topic = topics.telemetry.clone();
    let producer = Producer::new(&tk::kafka_config(&bootstrap, ""), "test-producer").unwrap();
    for i in 0..10 {
        send(&producer, &topic, "veh-1", &format!("v{i}")).await;
    }
    let group = format!("g-{}", tk::unique_suffix());

    // Fails forever: stop it while it is retrying; nothing may be committed.
    let h = Collect::default();
    h.fail_remaining.store(usize::MAX, Ordering::SeqCst);
    let (stop, task) = start(&bootstrap, &group, &topic, h.clone());
    let calls = h.calls.clone();
    tk::wait_for("two failed attempts", Duration::from_secs(60), || {
        let calls = calls.clone();
        async move { (calls.load(Ordering::SeqCst) >= 2).then_some(()) }
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert!(h.seen.lock().unwrap().is_empty());

    // A new member of the same group gets everything again; it fails twice
    // more, then succeeds, and sees all ten exactly once.
    let h2 = Collect::default();
    h2.fail_remaining.store(2, Ordering::SeqCst);
    let (stop2, task2) = start(&bootstrap, &group, &topic, h2.clone());
    let seen = h2.seen.clone();
    tk::wait_for(
        "all ten records after retries",
        Duration::from_secs(60),
        || {
            let seen = seen.clone();
            async move { (seen.lock().unwrap().len() >= 10).then_some(()) }
        },
    )
    .await;
    stop2.cancel();
    task2.await.unwrap();
    let got: Vec<String> = h2
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(v, _)| v.clone())
        .collect();
    assert_eq!(got, (0..10).map(|i| format!("v{i}")).collect::<Vec<_>>());
    assert!(h2.calls.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn send_to_a_dead_broker_times_out_as_retryable() {
    let mut broker = tk::OwnedBroker::start().await;
    let mut cfg = tk::kafka_config(&broker.bootstrap(), "");
    cfg.producer.delivery_timeout_ms = 1_500;
    let producer = Producer::new(&cfg, "test-producer").unwrap();
    broker.kill();
    let err = producer
        .send(OutRecord {
            topic: "t",
            key: "k",
            payload: b"v",
            message_type: "x",
            traceparent: None,
            extra_headers: &[],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ProduceError::Timeout), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn oversized_and_queue_full_are_reported_not_blocked() {
    let mut broker = tk::OwnedBroker::start().await;
    let mut cfg = tk::kafka_config(&broker.bootstrap(), "");
    cfg.producer.max_message_bytes = 1_000;
    cfg.producer.queue_max_messages = 2;
    cfg.producer.delivery_timeout_ms = 3_000;
    let producer = Producer::new(&cfg, "test-producer").unwrap();
    let big = vec![0u8; 2_000];
    let err = producer
        .send(OutRecord {
            topic: "t",
            key: "k",
            payload: &big,
            message_type: "x",
            traceparent: None,
            extra_headers: &[],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProduceError::TooLarge { .. }) && !err.is_retryable(),
        "{err:?}"
    );

    // With the broker gone, two records fill the queue; the third is refused at once.
    broker.kill();
    let p1 = producer.clone();
    let p2 = producer.clone();
    let a = tokio::spawn(async move {
        p1.send(OutRecord {
            topic: "t",
            key: "k",
            payload: b"1",
            message_type: "x",
            traceparent: None,
            extra_headers: &[],
        })
        .await
    });
    let b = tokio::spawn(async move {
        p2.send(OutRecord {
            topic: "t",
            key: "k",
            payload: b"2",
            message_type: "x",
            traceparent: None,
            extra_headers: &[],
        })
        .await
    });
    tk::wait_for("two queued records", Duration::from_secs(5), || {
        let n = producer.in_flight();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let started = std::time::Instant::now();
    let err = producer
        .send(OutRecord {
            topic: "t",
            key: "k",
            payload: b"3",
            message_type: "x",
            traceparent: None,
            extra_headers: &[],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ProduceError::QueueFull), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a full queue must not block"
    );
    assert!(a.await.unwrap().is_err() && b.await.unwrap().is_err());
}
