//! Detection -> incident event latency at a fixed detection rate.
//!
//! Starts the incident service in-process against the real broker
//! (a fresh Kafka broker, or `BENCH_BOOTSTRAP`) and a fresh Postgres
//! database, sends `no_helmet` detections for distinct vehicles at
//! `RATE`/s for `SECS` s (each opens an incident, so each must produce one
//! OPENED event), and reports the time from handing the detection to the
//! producer until the event is read back from `fleet.incidents.v1`.
//!
//! `cargo bench -p fleetwatch-incident --bench latency` (env RATE, SECS,
//! FETCH_WAIT_MS).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetwatch_common::Shutdown;
use fleetwatch_kafka::{OutRecord, Producer};
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::{BoundingBox, Detection, DetectionBatch, IncidentEvent};
use fleetwatch_testkit::bench::{self, BenchBroker};
use fleetwatch_testkit::{TestDb, fresh_topics, kafka_config, unique_suffix};
use prost::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !bench::invoked_as_bench() {
        return;
    }
    let rate = bench::env_u64("RATE", 1000);
    let secs = bench::env_u64("SECS", 10);
    let broker = BenchBroker::start().await;
    let bootstrap = broker.bootstrap.clone();
    let topics = fresh_topics(&bootstrap, 4).await;
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "DELETE FROM incident_rules; INSERT INTO incident_rules (name, kind, severity, params) VALUES \
         ('no_helmet', 'detection', 3, '{\"classes\": [\"no_helmet\"], \"min_confidence\": 0.5}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let objects = tempfile::tempdir().unwrap();
    let mut config = fleetwatch_incident::Config {
        kafka: kafka_config(&bootstrap, ""),
        topics: topics.clone(),
        database: db.db_config(),
        ..Default::default()
    };
    // The service's latency settings, on top of the tests' broker tuning;
    // FETCH_WAIT_MS overrides the consumers' fetch.wait.max.ms (default 10)
    // to see how much of the latency is the broker's fetch path.
    let service = fleetwatch_incident::Config::default().kafka.consumer;
    config.kafka.consumer.batch_max_wait_ms = service.batch_max_wait_ms;
    config.kafka.consumer.fetch_wait_max_ms =
        bench::env_u64("FETCH_WAIT_MS", service.fetch_wait_max_ms.into()) as u32;
    config.kafka.producer.linger_ms = 1;
    config.database.max_connections = 16;
    config.object_store.url = format!("file://{}", objects.path().display());
    config.grpc.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.kafka.consumer.group_id = format!("bench-{}", unique_suffix());
    config.log.level = "warn".into();
    let shutdown = Shutdown::new();
    let running = fleetwatch_incident::start(config, shutdown.clone())
        .await
        .unwrap();

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // (sent, since the run started; latency)
    let latencies: Arc<Mutex<Vec<(Duration, Duration)>>> = Arc::default();
    let origin = Instant::now();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("bench-reader-{}", unique_suffix()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&topics.incidents, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let reader = {
        let (sent, latencies) = (sent.clone(), latencies.clone());
        tokio::spawn(async move {
            loop {
                let m = consumer.recv().await.unwrap();
                let now = Instant::now();
                let ev = IncidentEvent::decode(m.payload().unwrap_or_default()).unwrap();
                if let Some(t) = sent.lock().unwrap().remove(&ev.vehicle_id) {
                    latencies.lock().unwrap().push((t - origin, now - t));
                }
            }
        })
    };

    // Warm up: the consumer group must own its partitions first.
    let producer = Producer::new(&kafka_config(&bootstrap, ""), "bench").unwrap();
    send(&producer, &topics.detections, "warmup", &sent).await;
    while latencies.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.lock().unwrap().clear();

    let total = rate * secs;
    let started = Instant::now();
    let run_start = started - origin;
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut interval = tokio::time::interval(tick);
    let mut n = 0u64;
    let mut inflight = Vec::new();
    while n < total {
        interval.tick().await;
        for _ in 0..per_tick.min(total - n) {
            let (p, t, s) = (producer.clone(), topics.detections.clone(), sent.clone());
            let v = format!("bench-{n}");
            inflight.push(tokio::spawn(async move { send(&p, &t, &v, &s).await }));
            n += 1;
        }
    }
    for f in inflight {
        f.await.unwrap();
    }
    let send_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.lock().unwrap().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    let all = latencies.lock().unwrap().clone();
    let mut l: Vec<Duration> = all.iter().map(|(_, d)| *d).collect();
    l.sort();
    let pct = bench::percentile_ms;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "detections sent: {total} at {:.0}/s; events received: {} (missing {})",
        total as f64 / send_secs,
        l.len(),
        total as usize - l.len()
    );
    println!(
        "detection -> incident event latency ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        pct(&l, 0.50),
        pct(&l, 0.95),
        pct(&l, 0.99),
        pct(&l, 1.0)
    );
    // Thirds of the run: a cost that grows with the log or the tables shows here.
    let third = send_secs / 3.0;
    for i in 0..3u32 {
        let lo = run_start + Duration::from_secs_f64(third * f64::from(i));
        let hi = run_start + Duration::from_secs_f64(third * f64::from(i + 1));
        let mut part: Vec<Duration> = all
            .iter()
            .filter(|(s, _)| *s >= lo && (*s < hi || i == 2))
            .map(|(_, d)| *d)
            .collect();
        part.sort();
        println!(
            "  third {}: p50 {:.1}  p99 {:.1}  max {:.1}",
            i + 1,
            pct(&part, 0.5),
            pct(&part, 0.99),
            pct(&part, 1.0)
        );
    }
    println!("loadavg after run: {}", load.trim());
    // Where the time goes: the service's own histograms (percentiles are
    // bucket upper bounds).
    for mf in prometheus::gather() {
        let name = mf.get_name();
        let stage = match name {
            "fleetwatch_kafka_record_age_seconds" => "consume (producer -> handler)",
            "fleetwatch_incident_batch_seconds" => "evaluate + commit (per batch)",
            "fleetwatch_incident_commit_to_publish_seconds" => "commit -> event acked",
            "fleetwatch_kafka_produce_ack_seconds" => "produce ack",
            _ => continue,
        };
        for m in mf.get_metric() {
            let h = m.get_histogram();
            if h.get_sample_count() == 0 {
                continue;
            }
            let labels: Vec<String> = m
                .get_label()
                .iter()
                .map(|l| format!("{}={}", l.get_name(), l.get_value()))
                .collect();
            let n = h.get_sample_count();
            let bound = |p: f64| {
                h.get_bucket()
                    .iter()
                    .find(|b| b.get_cumulative_count() as f64 >= n as f64 * p)
                    .map(|b| format!("<= {:.1}", b.get_upper_bound() * 1e3))
                    .unwrap_or_else(|| "> last bucket".into())
            };
            println!(
                "  {stage:<30} {{{}}}: n {n}, mean {:.1} ms, p50 {} ms, p99 {} ms",
                labels.join(","),
                h.get_sample_sum() / n as f64 * 1e3,
                bound(0.5),
                bound(0.99)
            );
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.handle).await;
}

async fn send(
    producer: &Producer,
    topic: &str,
    vehicle: &str,
    sent: &Mutex<HashMap<String, Instant>>,
) {
    let b = DetectionBatch {
        vehicle_id: vehicle.into(),
        time_unix_us: fleetwatch_common::now_unix_us(),
        frame_id: "f".into(),
        detections: vec![Detection {
            class_name: "no_helmet".into(),
            confidence: 0.9,
            bbox: Some(BoundingBox {
                x_min: 0.1,
                y_min: 0.1,
                x_max: 0.2,
                y_max: 0.2,
            }),
            track_id: String::new(),
        }],
        source: "bench".into(),
        ..Default::default()
    };
    sent.lock()
        .unwrap()
        .insert(vehicle.to_string(), Instant::now());
    producer
        .send(OutRecord {
            topic,
            key: vehicle,
            payload: &b.encode_to_vec(),
            message_type: message_types::DETECTION_BATCH,
            traceparent: None,
            extra_headers: &[],
        })
        .await
        .unwrap();
}
