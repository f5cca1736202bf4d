//! Broker round trip: the latency floor under every Kafka hop in Fleetwatch.
//!
//! Sends small records at `RATE`/s for `SECS` s through [`Producer`] to a
//! fresh topic and reads them back with the at-least-once [`Consumer`]
//! (handler does nothing), against the real broker
//! (a fresh Kafka broker, or `BENCH_BOOTSTRAP`). Reports, per phase of
//! the run, the producer ack latency and the send -> handler latency, so a
//! service's end-to-end figure can be split into broker time and its own.
//!
//! `cargo bench -p fleetwatch-kafka --bench roundtrip` (env RATE, SECS,
//! PARTITIONS, LINGER_MS, FETCH_WAIT_MS, BATCH_WAIT_MS).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetwatch_common::Shutdown;
use fleetwatch_kafka::admin::{TopicSpec, ensure_topics};
use fleetwatch_kafka::{
    BatchHandler, Consumer, OutRecord, Producer, Record, Rejection, TransientError,
};
use fleetwatch_testkit::bench::{self, BenchBroker};
use fleetwatch_testkit::{kafka_config, unique_suffix};

/// Each record carries its send time as nanoseconds since `origin`.
struct Recorder {
    origin: Instant,
    seen: Mutex<Vec<(Duration, Duration)>>,
}

struct Handler(Arc<Recorder>);

impl BatchHandler for Handler {
    async fn handle(&self, batch: &[Record]) -> Result<Vec<Rejection>, TransientError> {
        let now = self.0.origin.elapsed();
        let mut seen = self.0.seen.lock().unwrap();
        for r in batch {
            let p = r.payload.as_deref().unwrap_or_default();
            let sent = Duration::from_nanos(u64::from_le_bytes(p[..8].try_into().unwrap()));
            seen.push((sent, now - sent));
        }
        Ok(Vec::new())
    }
}

fn summary(label: &str, mut l: Vec<Duration>) {
    l.sort();
    println!(
        "{label:<28} n {:>6}  p50 {:>6.1}  p95 {:>6.1}  p99 {:>6.1}  max {:>6.1} ms",
        l.len(),
        bench::percentile_ms(&l, 0.5),
        bench::percentile_ms(&l, 0.95),
        bench::percentile_ms(&l, 0.99),
        bench::percentile_ms(&l, 1.0)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !bench::invoked_as_bench() {
        return;
    }
    let rate = bench::env_u64("RATE", 1000);
    let secs = bench::env_u64("SECS", 10);
    let partitions = bench::env_u64("PARTITIONS", 4) as i32;
    let broker = BenchBroker::start().await;
    let bootstrap = broker.bootstrap.clone();
    let topic = format!("bench.roundtrip.{}", unique_suffix());
    let mut config = kafka_config(&bootstrap, &format!("bench-roundtrip-{}", unique_suffix()));
    config.producer.linger_ms = bench::env_u64("LINGER_MS", 1) as u32;
    config.consumer.batch_max_wait_ms = bench::env_u64("BATCH_WAIT_MS", 2);
    config.consumer.fetch_wait_max_ms =
        bench::env_u64("FETCH_WAIT_MS", config.consumer.fetch_wait_max_ms.into()) as u32;
    ensure_topics(
        &config,
        &[TopicSpec::single_replica(topic.clone(), partitions)],
    )
    .await
    .unwrap();

    let recorder = Arc::new(Recorder {
        origin: Instant::now(),
        seen: Mutex::default(),
    });
    let producer = Producer::new(&config, "bench-roundtrip").unwrap();
    let consumer = Consumer::new(&config, "bench-roundtrip", &[&topic], producer.clone()).unwrap();
    let shutdown = Shutdown::new();
    let consuming = tokio::spawn(consumer.run(Handler(recorder.clone()), shutdown.clone()));

    let acks: Arc<Mutex<Vec<(Duration, Duration)>>> = Arc::default();
    let send = |n: u64| {
        let (producer, topic, recorder, acks) = (
            producer.clone(),
            topic.clone(),
            recorder.clone(),
            acks.clone(),
        );
        async move {
            let sent = recorder.origin.elapsed();
            let mut payload = (sent.as_nanos() as u64).to_le_bytes().to_vec();
            payload.resize(200, 0);
            let key = format!("vehicle-{}", n % 1000);
            producer
                .send(OutRecord {
                    topic: &topic,
                    key: &key,
                    payload: &payload,
                    message_type: "bench",
                    traceparent: None,
                    extra_headers: &[],
                })
                .await
                .unwrap();
            acks.lock()
                .unwrap()
                .push((sent, recorder.origin.elapsed() - sent));
        }
    };

    // Warm up until the group owns the partitions and records come back.
    while recorder.seen.lock().unwrap().is_empty() {
        send(0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.seen.lock().unwrap().clear();
    acks.lock().unwrap().clear();

    let total = rate * secs;
    let run_start = recorder.origin.elapsed();
    let per_tick = (rate / 100).max(1);
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut inflight = Vec::new();
    let mut n = 0;
    while n < total {
        interval.tick().await;
        for _ in 0..per_tick.min(total - n) {
            inflight.push(tokio::spawn(send(n)));
            n += 1;
        }
    }
    for f in inflight {
        f.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorder.seen.lock().unwrap().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    let _ = consuming.await;

    let seen = recorder.seen.lock().unwrap().clone();
    let acks = acks.lock().unwrap().clone();
    println!(
        "roundtrip: {total} records at {rate}/s over {partitions} partitions; received {}",
        seen.len()
    );
    // Thirds of the run: a broker whose cost grows with the log shows it here.
    let third = Duration::from_secs(secs).as_secs_f64() / 3.0;
    for i in 0..3 {
        let lo = run_start + Duration::from_secs_f64(third * i as f64);
        let hi = run_start + Duration::from_secs_f64(third * (i + 1) as f64);
        let within = |v: &[(Duration, Duration)]| -> Vec<Duration> {
            v.iter()
                .filter(|(s, _)| *s >= lo && (*s < hi || i == 2))
                .map(|(_, d)| *d)
                .collect()
        };
        summary(&format!("third {} producer ack", i + 1), within(&acks));
        summary(&format!("third {} send -> handler", i + 1), within(&seen));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("loadavg after run: {}", load.trim());
}
