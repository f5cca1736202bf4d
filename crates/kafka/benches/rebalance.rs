//! Consumer-group protocols compared on a real broker: `classic`
//! (JoinGroup/SyncGroup) against `consumer` (KIP-848), with our
//! [`Consumer`], on a fresh Kafka broker (or `BENCH_BOOTSTRAP`).
//!
//! For each protocol: a new group's first record (join), then with records
//! flowing at `RATE`/s over 4 partitions, a second member joins (scale out)
//! and later leaves cleanly (scale in). Reported per change: how long until
//! the new member (or the remaining one, for every partition) gets records,
//! and the longest pause in the group's delivery around it.
//!
//! `cargo bench -p fleetwatch-kafka --bench rebalance` (env RATE, ROUNDS).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetwatch_common::Shutdown;
use fleetwatch_kafka::admin::{TopicSpec, ensure_topics};
use fleetwatch_kafka::{
    BatchHandler, Consumer, KafkaConfig, OutRecord, Producer, Record, Rejection, TransientError,
};
use fleetwatch_testkit::bench::{self, BenchBroker};
use fleetwatch_testkit::{kafka_config, unique_suffix};

const PARTITIONS: i32 = 4;

/// Every handled record: (member, partition, when).
#[derive(Default)]
struct Log(Mutex<Vec<(usize, i32, Instant)>>);

struct Handler {
    member: usize,
    log: Arc<Log>,
}

impl BatchHandler for Handler {
    async fn handle(&self, batch: &[Record]) -> Result<Vec<Rejection>, TransientError> {
        let now = Instant::now();
        let mut log = self.log.0.lock().unwrap();
        for r in batch {
            log.push((self.member, r.partition, now));
        }
        Ok(Vec::new())
    }
}

struct Member {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

fn start_member(
    config: &KafkaConfig,
    topic: &str,
    member: usize,
    log: &Arc<Log>,
    dlq: &Producer,
) -> Member {
    let consumer =
        Consumer::new(config, &format!("bench-{member}"), &[topic], dlq.clone()).unwrap();
    let shutdown = Shutdown::new();
    let handler = Handler {
        member,
        log: log.clone(),
    };
    let task = tokio::spawn(consumer.run(handler, shutdown.clone()));
    Member { shutdown, task }
}

/// Waits until `pred` holds for the log, returning the time it first did.
async fn until(
    log: &Log,
    timeout: Duration,
    pred: impl Fn(&[(usize, i32, Instant)]) -> Option<Instant>,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(t) = pred(&log.0.lock().unwrap()) {
            return Some(t);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Longest gap between consecutive deliveries in [from, to].
fn longest_pause(log: &Log, from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = log
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.2)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    times.insert(0, from);
    times.push(to);
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run(bootstrap: &str, protocol: &str, rate: u64) -> [f64; 5] {
    let topic = format!("bench.rebalance.{}", unique_suffix());
    let mut config = kafka_config(bootstrap, &format!("bench-rebalance-{}", unique_suffix()));
    config.consumer.group_protocol = protocol.into();
    config.consumer.batch_max_wait_ms = 1;
    config.producer.linger_ms = 1;
    ensure_topics(
        &config,
        &[TopicSpec::single_replica(topic.clone(), PARTITIONS)],
    )
    .await
    .unwrap();
    let producer = Producer::new(&config, "bench-producer").unwrap();
    let stop = Shutdown::new();
    let sender = {
        let producer = producer.clone();
        let topic = topic.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut n = 0u64;
            while !stop.is_cancelled() {
                tick.tick().await;
                let key = format!("v{}", n % 16);
                let _ = producer.enqueue(OutRecord {
                    topic: &topic,
                    key: &key,
                    payload: b"x",
                    message_type: "bench",
                    traceparent: None,
                    extra_headers: &[],
                });
                n += 1;
            }
        })
    };
    let log = Arc::new(Log::default());
    let t0 = Instant::now();
    let a = start_member(&config, &topic, 0, &log, &producer);
    let joined = until(&log, Duration::from_secs(60), |l| l.first().map(|e| e.2))
        .await
        .unwrap();
    // Let the group settle before changing it.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let t1 = Instant::now();
    let b = start_member(&config, &topic, 1, &log, &producer);
    let b_first = until(&log, Duration::from_secs(60), |l| {
        l.iter().find(|e| e.0 == 1 && e.2 >= t1).map(|e| e.2)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out_pause = longest_pause(&log, t1, Instant::now());

    let t2 = Instant::now();
    b.shutdown.cancel();
    b.task.await.unwrap();
    let all_back = until(&log, Duration::from_secs(60), |l| {
        let mut seen = HashSet::new();
        for e in l.iter().filter(|e| e.0 == 0 && e.2 >= t2) {
            seen.insert(e.1);
            if seen.len() == PARTITIONS as usize {
                return Some(e.2);
            }
        }
        None
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let in_pause = longest_pause(&log, t2, Instant::now());
    stop.cancel();
    sender.await.unwrap();
    a.shutdown.cancel();
    a.task.await.unwrap();
    [
        ms(joined - t0),
        ms(b_first - t1),
        ms(out_pause),
        ms(all_back - t2),
        ms(in_pause),
    ]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !bench::invoked_as_bench() {
        return;
    }
    let rate = bench::env_u64("RATE", 500);
    let rounds = bench::env_u64("ROUNDS", 3);
    let broker = BenchBroker::start().await;
    println!(
        "{:<9} {:>10} {:>16} {:>15} {:>19} {:>14}   (ms, {rate} records/s, {PARTITIONS} partitions)",
        "protocol", "join", "2nd member gets", "pause (out)", "1st gets all again", "pause (in)"
    );
    for round in 0..rounds {
        for protocol in ["classic", "consumer"] {
            let r = run(&broker.bootstrap, protocol, rate).await;
            println!(
                "{protocol:<9} {:>10.0} {:>16.0} {:>15.0} {:>19.0} {:>14.0}   round {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                round + 1
            );
        }
    }
}
