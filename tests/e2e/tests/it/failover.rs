//! Broker failover under load on a three-node Kafka cluster (replication
//! factor 3, `min.insync.replicas` 2): with telemetry flowing over HTTP, a
//! partition leader is SIGKILLed, or all three brokers are restarted one by
//! one; every point that got a 2xx ends up in Postgres exactly once, the log
//! holds no duplicate, and persistence's consumer group catches up on its own.
//! Size: two long scenarios sharing the cluster, load and check helpers.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetwatch_e2e::Stack;
use fleetwatch_proto::v1::TelemetryBatch;
use fleetwatch_testkit::{self as tk, OwnedCluster};

const MINUTE: Duration = Duration::from_secs(60);
const VEHICLES: usize = 6;
const POINTS_PER_REQUEST: i64 = 10;
/// Each vehicle sends a request at most this often (one at a time).
const PACE: Duration = Duration::from_millis(20);
const TOPIC_TOOL: &str = "org.apache.kafka.tools.TopicCommand";
const GROUP_TOOL: &str = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand";

/// One HTTP request of the loader and its answer.
#[derive(Debug, Clone)]
struct Sent {
    vehicle: usize,
    first_seq: i64,
    /// 0 when no HTTP answer came at all.
    status: u16,
    started: Instant,
    answered: Instant,
}

/// Vehicles posting telemetry continuously, each point identifiable by its
/// vehicle and sample time (`base + seq` ms) and carrying `seq` as a metric.
struct Loader {
    vehicles: Vec<String>,
    base_ms: i64,
    sent: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Loader {
    async fn start(stack: &Stack) -> Self {
        let suffix = tk::unique_suffix();
        let vehicles: Vec<String> = (0..VEHICLES).map(|i| format!("fo-{suffix}-{i}")).collect();
        // Whole seconds, ten minutes back: well inside ingest's age window,
        // and a millisecond per sequence number keeps every sample distinct.
        let base_ms = (chrono::Utc::now().timestamp() - 600) * 1000;
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for (v, id) in vehicles.iter().enumerate() {
            let token = stack.add_vehicle(id).await;
            let (client, url, id) = (client.clone(), stack.http("/api/v1/telemetry"), id.clone());
            let (sent, stop) = (sent.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut pace = tokio::time::interval(PACE);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    let body: String = (seq..seq + POINTS_PER_REQUEST)
                        .map(|n| {
                            format!(
                                "{{\"vehicle_id\":\"{id}\",\"timestamp\":\"{}\",\"lat\":{},\"lon\":20.0,\"seq\":{n}}}\n",
                                rfc3339_ms(base_ms + n),
                                10.0 + n as f64 * 1e-6
                            )
                        })
                        .collect();
                    let started = Instant::now();
                    let status = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    sent.lock().unwrap().push(Sent {
                        vehicle: v,
                        first_seq: seq,
                        status,
                        started,
                        answered: Instant::now(),
                    });
                    // A refused point is not resent: then the log must hold
                    // each point at most once, which shows the idempotent
                    // producer's retries across the leader change.
                    seq += POINTS_PER_REQUEST;
                }
            }));
        }
        Self {
            vehicles,
            base_ms,
            sent,
            stop,
            tasks,
        }
    }

    fn acked_points(&self) -> usize {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| is_2xx(s.status))
            .count()
            * POINTS_PER_REQUEST as usize
    }

    /// Waits until every vehicle got a 2xx for a request it started after
    /// `since`; returns how long after `since` the last of these came.
    async fn wait_all_acked_after(&self, since: Instant, what: &str) -> Duration {
        let sent = self.sent.clone();
        tk::wait_for(what, MINUTE, || {
            let sent = sent.clone();
            async move {
                let sent = sent.lock().unwrap();
                let mut first = [None; VEHICLES];
                for s in sent
                    .iter()
                    .filter(|s| s.started >= since && is_2xx(s.status))
                {
                    first[s.vehicle].get_or_insert(s.answered);
                }
                first
                    .iter()
                    .map(|t| t.map(|t: Instant| t - since))
                    .collect::<Option<Vec<_>>>()
                    .map(|d| d.into_iter().max().unwrap_or_default())
            }
        })
        .await
    }

    async fn stop(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        let sent = std::mem::take(&mut *self.sent.lock().unwrap());
        Outcome {
            vehicles: self.vehicles,
            base_ms: self.base_ms,
            sent,
        }
    }
}

struct Outcome {
    vehicles: Vec<String>,
    base_ms: i64,
    sent: Vec<Sent>,
}

impl Outcome {
    /// (vehicle, sample time ms) of every point that got a 2xx, with its seq.
    fn acked(&self) -> BTreeMap<(String, i64), i64> {
        self.points(|s| is_2xx(s.status))
    }

    fn refused(&self) -> BTreeMap<(String, i64), i64> {
        self.points(|s| !is_2xx(s.status))
    }

    fn points(&self, keep: impl Fn(&Sent) -> bool) -> BTreeMap<(String, i64), i64> {
        self.sent
            .iter()
            .filter(|s| keep(s))
            .flat_map(|s| {
                (s.first_seq..s.first_seq + POINTS_PER_REQUEST)
                    .map(move |n| ((self.vehicles[s.vehicle].clone(), self.base_ms + n), n))
            })
            .collect()
    }

    /// Answers other than 2xx, by status (0: no answer).
    fn failures(&self) -> BTreeMap<u16, usize> {
        let mut m = BTreeMap::new();
        for s in self.sent.iter().filter(|s| !is_2xx(s.status)) {
            *m.entry(s.status).or_default() += 1;
        }
        m
    }
}

fn is_2xx(status: u16) -> bool {
    (200..300).contains(&status)
}

fn rfc3339_ms(t_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A stack of the real ingest and persistence binaries on a fresh
/// three-node cluster, its topics at the production layout.
async fn start() -> (OwnedCluster, Stack) {
    let cluster = OwnedCluster::start(3).await;
    let mut stack = Stack::new(&cluster.bootstrap()).await;
    // fresh_topics lays topics out like `fleetctl topics create` with the
    // production defaults on three brokers; check that this is what we test
    // (while the services start: the tool is a JVM).
    let describe = {
        let args = [
            "--bootstrap-server".to_string(),
            cluster.bootstrap(),
            "--describe".into(),
            "--topic".into(),
            stack.topics.telemetry.clone(),
        ];
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tk::kafka_tool(TOPIC_TOOL, &args).await
        })
    };
    stack.start_persistence().await;
    stack.start_ingest().await;
    let (ok, out, err) = describe.await.unwrap();
    assert!(ok, "kafka-topics --describe failed: {err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header.contains("PartitionCount: 3")
            && header.contains("ReplicationFactor: 3")
            && header.contains("min.insync.replicas=2"),
        "{out}"
    );
    (cluster, stack)
}

/// Partitions of any topic whose in-sync replicas are fewer than their
/// replicas, as Kafka's own tool reports them (empty: fully replicated).
async fn under_replicated(bootstrap: &str) -> Option<String> {
    let (ok, out, _) = tk::kafka_tool(
        TOPIC_TOOL,
        &[
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--under-replicated-partitions",
        ],
    )
    .await;
    ok.then_some(out)
}

async fn wait_fully_replicated(bootstrap: &str) {
    tk::wait_for(
        "every partition back to three in-sync replicas",
        MINUTE,
        || async {
            under_replicated(bootstrap)
                .await
                .filter(|out| out.trim().is_empty())
        },
    )
    .await;
}

/// Partition -> vehicle ids seen there, from what is on the topic so far.
async fn partitions_of(stack: &Stack, records: usize) -> BTreeMap<i32, Vec<String>> {
    let mut m: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for r in tk::read_topic(&stack.bootstrap, &stack.topics.telemetry, records, MINUTE).await {
        let key = String::from_utf8(r.key.unwrap_or_default()).unwrap();
        let ids = m.entry(r.partition).or_default();
        if !ids.contains(&key) {
            ids.push(key);
        }
    }
    m
}

/// After the load stopped: every acknowledged point is in Postgres exactly
/// once with the value it was sent with, nothing that was never sent is
/// there, the log holds every point at most once, and persistence's group
/// has committed up to the end of every partition, as Kafka's own
/// consumer-groups tool sees it. Returns the refused points that landed
/// anyway (their answer came after the write, e.g. a timed-out ack).
async fn verify(stack: &Stack, outcome: &Outcome) -> usize {
    let acked = outcome.acked();
    let refused = outcome.refused();
    let pool = stack.db.pool.clone();
    let wanted = acked.len() as i64;
    tk::wait_for(
        &format!("all {wanted} acknowledged points in Postgres"),
        MINUTE,
        || {
            let (pool, vehicles) = (pool.clone(), outcome.vehicles.clone());
            async move {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM telemetry WHERE vehicle_id = ANY($1)")
                        .bind(vehicles)
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                (n >= wanted).then_some(())
            }
        },
    )
    .await;

    // The group has caught up: nothing left that could still add rows.
    let group = persistence_group(stack).await;
    let last = Mutex::new(String::new());
    let deadline = Instant::now() + MINUTE;
    let end_offsets = loop {
        let (ends, out) = group_offsets(&stack.bootstrap, &group, &stack.topics.telemetry).await;
        if let Some(ends) = ends {
            break ends;
        }
        *last.lock().unwrap() = out;
        assert!(
            Instant::now() < deadline,
            "persistence's telemetry group did not reach the end of every partition within {MINUTE:?}:\n{}",
            last.lock().unwrap()
        );
    };

    let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT vehicle_id, (extract(epoch FROM time) * 1000)::bigint, (metrics->>'seq')::numeric::bigint
         FROM telemetry WHERE vehicle_id = ANY($1)",
    )
    .bind(&outcome.vehicles)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let mut stored: HashMap<(String, i64), Vec<Option<i64>>> = HashMap::new();
    for (v, t, seq) in rows {
        stored.entry((v, t)).or_default().push(seq);
    }
    let mut missing = Vec::new();
    for (key, seq) in &acked {
        match stored.get(key) {
            None => missing.push(key.clone()),
            Some(seqs) => assert_eq!(seqs, &[Some(*seq)], "{key:?}: stored once, as sent"),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged points are not in Postgres, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let unknown: Vec<_> = stored
        .keys()
        .filter(|k| !acked.contains_key(*k) && !refused.contains_key(*k))
        .collect();
    assert!(unknown.is_empty(), "rows nobody sent: {unknown:?}");
    let refused_but_stored = stored.keys().filter(|k| refused.contains_key(*k)).count();

    // The log itself: read every record and count each point.
    let total: i64 = end_offsets.values().sum();
    let records = tk::read_topic(
        &stack.bootstrap,
        &stack.topics.telemetry,
        total as usize,
        MINUTE,
    )
    .await;
    let mut in_log: HashMap<(String, i64), usize> = HashMap::new();
    for r in records {
        let batch: TelemetryBatch = fleetwatch_kafka::Record {
            topic: stack.topics.telemetry.clone(),
            partition: r.partition,
            offset: r.offset,
            key: r.key,
            payload: Some(r.payload),
            headers: r.headers,
            timestamp_ms: None,
        }
        .decode()
        .unwrap();
        for p in batch.points {
            *in_log
                .entry((batch.vehicle_id.clone(), p.time_unix_us / 1000))
                .or_default() += 1;
        }
    }
    let duplicated: Vec<_> = in_log.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{} points are in the log more than once, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    assert!(acked.keys().all(|k| in_log.contains_key(k)));
    refused_but_stored
}

/// Persistence's telemetry consumer group, from the labels of its metrics
/// (the test's stack picks a random group prefix).
async fn persistence_group(stack: &Stack) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", stack.persistence_admin);
    let topic = format!("topic=\"{}\"", stack.topics.telemetry);
    tk::wait_for(
        "persistence's telemetry group in its metrics",
        MINUTE,
        || {
            let (url, topic) = (url.clone(), topic.clone());
            async move {
                let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
                let line = text.lines().find(|l| {
                    l.starts_with("fleetwatch_kafka_records_consumed_total{") && l.contains(&topic)
                })?;
                let group = line.split("group=\"").nth(1)?.split('"').next()?;
                Some(group.to_string())
            }
        },
    )
    .await
}

/// Log end offset per partition of `topic`, once `group` has committed up
/// to it on every partition (lag 0), and the tool's output.
async fn group_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> (Option<BTreeMap<i32, i64>>, String) {
    let (ok, out, err) = tk::kafka_tool(
        GROUP_TOOL,
        &[
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
    )
    .await;
    if !ok {
        return (None, err);
    }
    (caught_up(&out, topic), out)
}

fn caught_up(out: &str, topic: &str) -> Option<BTreeMap<i32, i64>> {
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    let mut ends = BTreeMap::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(1) != Some(&topic) {
            continue;
        }
        let partition: i32 = cols.get(2)?.parse().ok()?;
        let end: i64 = cols.get(4)?.parse().ok()?;
        // "-": nothing committed, which is caught up only on an empty partition.
        let current: i64 = match *cols.get(3)? {
            "-" => 0,
            c => c.parse().ok()?,
        };
        if current != end {
            return None;
        }
        ends.insert(partition, end);
    }
    (ends.len() == 3).then_some(ends)
}

fn still_running(stack: &mut Stack) {
    for p in [stack.ingest.as_mut(), stack.persistence.as_mut()] {
        let p = p.unwrap();
        assert_eq!(
            p.wait_exit(Duration::ZERO),
            None,
            "{} exited: the services must ride out broker failures on their own",
            p.name
        );
    }
}

/// Refusals during a failover are 503 (with `Retry-After`, for the vehicle
/// to resend); anything else, or no answer, would be a bug.
fn only_503s(outcome: &Outcome) {
    let failures = outcome.failures();
    assert!(
        failures.keys().all(|s| *s == 503),
        "answers other than 2xx and 503: {failures:?}"
    );
}

fn report(test: &str, outcome: &Outcome, refused_but_stored: usize, extra: &str, started: Instant) {
    println!(
        "{test}: {} points acknowledged in {} requests, non-2xx answers {:?} ({} of their points stored anyway){extra}; wall {:.1} s",
        outcome.acked().len(),
        outcome.sent.len(),
        outcome.failures(),
        refused_but_stored,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_telemetry_leader_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let (mut cluster, mut stack) = start().await;
    let loader = Loader::start(&stack).await;
    tk::wait_for("telemetry to flow", MINUTE, || async {
        (loader.acked_points() >= 2_000).then_some(())
    })
    .await;

    // Kill the broker leading the partition of the first vehicle, so that
    // partition's writes and reads must move to another replica.
    let acked_requests = loader.acked_points() / POINTS_PER_REQUEST as usize;
    let placement = partitions_of(&stack, acked_requests).await;
    let partition = *placement
        .iter()
        .find(|(_, ids)| ids.contains(&loader.vehicles[0]))
        .unwrap()
        .0;
    let topic = stack.topics.telemetry.clone();
    let victim = cluster.leader_of(&topic, partition).await.unwrap();
    let mut led = Vec::new();
    for p in 0..3 {
        if cluster.leader_of(&topic, p).await == Some(victim) {
            led.push(p);
        }
    }
    let killed_at = Instant::now();
    cluster.kill(victim);

    let new_leader = tk::wait_for("a new leader", MINUTE, || {
        let (cluster, topic) = (&cluster, &topic);
        async move {
            cluster
                .leader_of(topic, partition)
                .await
                .filter(|l| *l != victim)
        }
    })
    .await;
    let leader_moved = killed_at.elapsed();
    let recovered = loader
        .wait_all_acked_after(killed_at, "every vehicle acknowledged again after the kill")
        .await;
    // With the broker still down, the moved partition's new points keep
    // reaching Postgres: persistence's group resumed on the new leader.
    let pool = stack.db.pool.clone();
    let v0 = loader.vehicles[0].clone();
    let stored = |pool: sqlx::PgPool, v0: String| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM telemetry WHERE vehicle_id = $1")
            .bind(v0)
            .fetch_one(&pool)
            .await
            .ok()
    };
    let stored_now = stored(pool.clone(), v0.clone()).await.unwrap();
    tk::wait_for("new points of the moved partition stored", MINUTE, || {
        let fut = stored(pool.clone(), v0.clone());
        async move { fut.await.filter(|n| *n >= stored_now + 200).map(|_| ()) }
    })
    .await;

    // The crashed broker comes back under load and catches up.
    cluster.restart(victim).await;
    wait_fully_replicated(&cluster.bootstrap()).await;
    let healed = killed_at.elapsed();
    let outcome = loader.stop().await;

    only_503s(&outcome);
    let refused_but_stored = verify(&stack, &outcome).await;
    still_running(&mut stack);
    report(
        "sigkill",
        &outcome,
        refused_but_stored,
        &format!(
            "; killed node {} (leader of partitions {led:?}); metadata showed node {} leading partition {partition} after {} ms; \
             every vehicle acknowledged again after {} ms; fully replicated again {} ms after the kill",
            cluster.node_id(victim),
            cluster.node_id(new_leader),
            leader_moved.as_millis(),
            recovered.as_millis(),
            healed.as_millis()
        ),
        started,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_of_every_broker_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let (mut cluster, mut stack) = start().await;
    let loader = Loader::start(&stack).await;
    tk::wait_for("telemetry to flow", MINUTE, || async {
        (loader.acked_points() >= 2_000).then_some(())
    })
    .await;

    let mut steps = Vec::new();
    for i in 0..cluster.len() {
        let t = Instant::now();
        // SIGTERM: a controlled shutdown moves leadership away first. The
        // wait blocks a worker thread, not the loader's.
        tokio::task::block_in_place(|| cluster.stop(i, Duration::from_secs(30)));
        let stopped = t.elapsed();
        let at_stop = loader.acked_points();
        cluster.restart(i).await;
        let serving = t.elapsed();
        // As an operator would: the next broker goes only once this one
        // is back in every ISR, or min.insync.replicas could not be met.
        wait_fully_replicated(&cluster.bootstrap()).await;
        assert!(
            loader.acked_points() > at_stop,
            "acknowledgements continued while node {} restarted",
            cluster.node_id(i)
        );
        steps.push(format!(
            "node {}: stopped in {} ms, serving again after {} ms, back in every ISR after {} ms",
            cluster.node_id(i),
            stopped.as_millis(),
            serving.as_millis(),
            t.elapsed().as_millis()
        ));
    }
    let done = Instant::now();
    loader
        .wait_all_acked_after(done, "every vehicle acknowledged after the rolling restart")
        .await;
    let outcome = loader.stop().await;

    only_503s(&outcome);
    let refused_but_stored = verify(&stack, &outcome).await;
    still_running(&mut stack);
    report(
        "rolling restart",
        &outcome,
        refused_but_stored,
        &format!("; {}", steps.join("; ")),
        started,
    );
}
