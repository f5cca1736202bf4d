//! Rule evaluation on the consumed topics. Each consumer batch is applied in
//! one transaction: lock the (rule, vehicle) state rows, step every sample
//! through the pure rules, write the state back with the incident changes
//! and their outbox events, commit; only then does the consumer store the
//! offsets. No rule state lives only in memory, so a restart or a partition
//! moving to another replica continues exactly where the last commit left
//! off, and samples not newer than the stored state are ignored.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fleetwatch_common::Shutdown;
use fleetwatch_db::ErrorClass;
use fleetwatch_kafka::{BatchHandler, Record, Rejection, TransientError, envelope};
use fleetwatch_proto::v1::{DetectionBatch, TelemetryBatch, TelemetryPoint};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::metrics;
use crate::rules::{self, Params, Rule, State, Transition};
use crate::store::{self, ClipWindow, StateKey};

/// The rules, reloaded from the database periodically and after API changes.
#[derive(Clone, Default)]
pub struct RulesCache(Arc<RwLock<Arc<Vec<Rule>>>>);

impl RulesCache {
    pub fn get(&self) -> Arc<Vec<Rule>> {
        self.0.read().map(|g| g.clone()).unwrap_or_default()
    }

    pub async fn reload(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let rules = store::load_rules(pool).await?;
        if let Ok(mut g) = self.0.write() {
            *g = Arc::new(rules);
        }
        Ok(())
    }
}

pub async fn refresh_rules(pool: PgPool, cache: RulesCache, every: Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = cache.reload(&pool).await {
            tracing::warn!(error = %e, "cannot reload rules; keeping the previous set");
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct Engine {
    pub pool: PgPool,
    pub rules: RulesCache,
    /// Wakes the outbox publisher after a commit that queued events.
    pub published: Arc<Notify>,
    pub clip: Option<ClipWindow>,
}

struct Changes {
    states: BTreeMap<StateKey, State>,
    /// (rule, vehicle, transition) in sample order.
    transitions: Vec<(Rule, String, Transition)>,
}

impl Engine {
    /// Locks state, runs `step` over it, and commits states plus incident
    /// changes atomically. Returns the number of events queued.
    async fn apply(
        &self,
        keys: Vec<StateKey>,
        step: impl FnOnce(&mut BTreeMap<StateKey, State>) -> Vec<(Rule, String, Transition)>,
    ) -> Result<usize, sqlx::Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let mut states = store::lock_states(&mut tx, &keys).await?;
        let before = states.clone();
        let transitions = step(&mut states);
        let changes = Changes {
            states: states
                .into_iter()
                .filter(|(k, s)| before.get(k) != Some(s))
                .collect(),
            transitions,
        };
        store::save_states(&mut tx, &changes.states).await?;
        // Waves: the n-th transition of each (rule, vehicle), so every
        // statement touches a key at most once and order per key holds.
        let mut waves: Vec<Vec<&(Rule, String, Transition)>> = Vec::new();
        let mut seen_keys: std::collections::HashMap<(i64, &str), usize> = Default::default();
        for t in &changes.transitions {
            let n = seen_keys.entry((t.0.id, t.1.as_str())).or_default();
            if waves.len() <= *n {
                waves.push(Vec::new());
            }
            waves[*n].push(t);
            *n += 1;
        }
        let mut events = 0;
        for wave in waves {
            let mut triggers = Vec::new();
            let mut sightings = Vec::new();
            let mut clears = Vec::new();
            for (rule, vehicle, t) in wave {
                match t {
                    Transition::Trigger {
                        at_us,
                        detail,
                        evidence,
                    } => triggers.push(store::TriggerItem {
                        rule,
                        vehicle,
                        at_us: *at_us,
                        detail,
                        evidence: evidence.as_ref(),
                    }),
                    Transition::Seen { at_us, evidence } => {
                        sightings.push((rule.id, vehicle.as_str(), *at_us, evidence.as_ref()))
                    }
                    Transition::Clear { at_us, detail } => {
                        clears.push((rule.id, vehicle.as_str(), *at_us, detail.as_str()))
                    }
                }
            }
            events += store::trigger_many(&mut tx, &triggers, self.clip)
                .await?
                .len();
            store::seen_many(&mut tx, &sightings).await?;
            events += store::clear_many(&mut tx, &clears).await?;
        }
        tx.commit().await?;
        if events > 0 {
            self.published.notify_one();
        }
        Ok(events)
    }
}

/// A record to dead-letter, with its metric label. Counted by [`finish`]
/// only once the batch succeeded: a retried batch would otherwise count its
/// rejections again.
fn reject(index: usize, label: &'static str, reason: String) -> (Rejection, &'static str) {
    (Rejection { index, reason }, label)
}

fn finish(
    kind: &str,
    started: Instant,
    rejected: Vec<(Rejection, &'static str)>,
) -> Vec<Rejection> {
    for (_, label) in &rejected {
        metrics::REJECTED.with_label_values(&[kind, label]).inc();
    }
    metrics::BATCH_SECONDS
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    rejected.into_iter().map(|(r, _)| r).collect()
}

fn transient(kind: &str, e: sqlx::Error) -> TransientError {
    metrics::TRANSIENT_FAILURES.with_label_values(&[kind]).inc();
    // Retried like a transient failure, but only a fix makes it pass.
    if fleetwatch_db::classify(&e) == ErrorClass::Bug {
        tracing::error!(kind, error = %e, "the database rejects the statement itself; retrying until the schema or release is fixed");
    }
    TransientError::new(e)
}

/// A consumer's rule evaluation over valid records (batch index, value).
trait Evaluate: Sync {
    type Item: Sync;
    const KIND: &'static str;
    fn evaluate(
        &self,
        records: &[(usize, Self::Item)],
    ) -> impl Future<Output = Result<usize, sqlx::Error>> + Send;
}

/// Applies the records in one transaction. When the database refuses the
/// batch's values (a data error), applies them one by one, so only the
/// refused records are rejected (dead-lettered) and the partition moves on.
/// Records applied alone before a transient failure are applied again with
/// the retried batch, which the stored rule state turns into a no-op.
async fn isolate<E: Evaluate>(
    e: &E,
    records: &[(usize, E::Item)],
) -> Result<Vec<(Rejection, &'static str)>, TransientError> {
    let kind = E::KIND;
    match e.evaluate(records).await {
        Ok(_) => return Ok(Vec::new()),
        Err(e) if fleetwatch_db::classify(&e) == ErrorClass::Data => {
            tracing::warn!(kind, error = %e, records = records.len(),
                "database refused the batch; applying records one by one to isolate the bad ones");
        }
        Err(e) => return Err(transient(kind, e)),
    }
    let mut rejected = Vec::new();
    for one in records.chunks(1) {
        match e.evaluate(one).await {
            Ok(_) => {}
            Err(e) if fleetwatch_db::classify(&e) == ErrorClass::Data => rejected.push(reject(
                one[0].0,
                "database",
                format!("refused by the database: {e}"),
            )),
            Err(e) => return Err(transient(kind, e)),
        }
    }
    Ok(rejected)
}

/// Threshold, geofence and link-loss rules on `fleet.telemetry.v1`.
pub struct TelemetryHandler(pub Engine);

impl Evaluate for TelemetryHandler {
    type Item = TelemetryBatch;
    const KIND: &'static str = "telemetry";

    async fn evaluate(&self, records: &[(usize, TelemetryBatch)]) -> Result<usize, sqlx::Error> {
        // vehicle -> (point, seen_us)
        let mut per_vehicle: BTreeMap<&str, Vec<(&TelemetryPoint, i64)>> = BTreeMap::new();
        for (_, b) in records {
            let entry = per_vehicle.entry(b.vehicle_id.as_str()).or_default();
            for p in &b.points {
                let seen = if b.received_unix_us > 0 {
                    b.received_unix_us
                } else {
                    p.time_unix_us
                };
                entry.push((p, seen));
            }
        }
        let rules = self.0.rules.get();
        let mut keys = Vec::new();
        let mut plan: Vec<(Rule, String)> = Vec::new();
        for vehicle in per_vehicle.keys() {
            for r in rules::applicable(&rules, vehicle) {
                if matches!(
                    r.params,
                    Params::Threshold(_) | Params::Geofence(_) | Params::LinkLoss(_)
                ) {
                    keys.push((r.id, vehicle.to_string()));
                    plan.push((r.clone(), vehicle.to_string()));
                }
            }
        }
        self.0
            .apply(keys, |states| {
                let mut out = Vec::new();
                for (rule, vehicle) in plan {
                    let Some(st) = states.get_mut(&(rule.id, vehicle.clone())) else {
                        continue;
                    };
                    let mut points: Vec<&(&TelemetryPoint, i64)> = per_vehicle
                        .get(vehicle.as_str())
                        .into_iter()
                        .flatten()
                        .collect();
                    points.sort_by_key(|(p, seen)| (p.time_unix_us, *seen));
                    for (p, seen) in points {
                        if let Some(t) = rules::apply_point(&rule.params, st, p, *seen) {
                            out.push((rule.clone(), vehicle.clone(), t));
                        }
                    }
                }
                out
            })
            .await
    }
}

impl BatchHandler for TelemetryHandler {
    async fn handle(&self, batch: &[Record]) -> Result<Vec<Rejection>, TransientError> {
        const KIND: &str = <TelemetryHandler as Evaluate>::KIND;
        let started = Instant::now();
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            let b: TelemetryBatch = match record.decode() {
                Ok(b) => b,
                Err(e) => {
                    rejected.push(reject(index, "undecodable", e));
                    continue;
                }
            };
            if let Err(e) = envelope::check_vehicle(record, &b.vehicle_id) {
                rejected.push(reject(index, "invalid", e));
                continue;
            }
            if let Some(e) = b
                .points
                .iter()
                .find_map(|p| envelope::check_time("points.time_unix_us", p.time_unix_us).err())
            {
                rejected.push(reject(index, "invalid", e));
                continue;
            }
            valid.push((index, b));
        }
        rejected.extend(isolate(self, &valid).await?);
        Ok(finish(KIND, started, rejected))
    }
}

/// Detection-class rules on `fleet.detections.v1`.
pub struct DetectionsHandler(pub Engine);

impl Evaluate for DetectionsHandler {
    type Item = DetectionBatch;
    const KIND: &'static str = "detections";

    async fn evaluate(&self, records: &[(usize, DetectionBatch)]) -> Result<usize, sqlx::Error> {
        let mut frames: BTreeMap<&str, Vec<&DetectionBatch>> = BTreeMap::new();
        for (_, b) in records {
            frames.entry(b.vehicle_id.as_str()).or_default().push(b);
        }
        let rules = self.0.rules.get();
        let mut keys = Vec::new();
        let mut plan: Vec<(Rule, String)> = Vec::new();
        for vehicle in frames.keys() {
            for r in rules::applicable(&rules, vehicle) {
                if matches!(r.params, Params::Detection(_)) {
                    keys.push((r.id, vehicle.to_string()));
                    plan.push((r.clone(), vehicle.to_string()));
                }
            }
        }
        self.0
            .apply(keys, |states| {
                let mut out = Vec::new();
                for (rule, vehicle) in plan {
                    let Params::Detection(d) = &rule.params else {
                        continue;
                    };
                    let Some(st) = states.get_mut(&(rule.id, vehicle.clone())) else {
                        continue;
                    };
                    let mut fs: Vec<&DetectionBatch> = frames
                        .get(vehicle.as_str())
                        .into_iter()
                        .flatten()
                        .copied()
                        .collect();
                    fs.sort_by_key(|f| f.time_unix_us);
                    for f in fs {
                        let key = if f.frame_key.is_empty() {
                            fleetwatch_objectstore::frame_key(
                                &vehicle,
                                f.time_unix_us,
                                "image/jpeg",
                            )
                            .unwrap_or_default()
                        } else {
                            f.frame_key.clone()
                        };
                        if let Some(t) = rules::apply_detections(d, st, f, &key) {
                            out.push((rule.clone(), vehicle.clone(), t));
                        }
                    }
                }
                out
            })
            .await
    }
}

impl BatchHandler for DetectionsHandler {
    async fn handle(&self, batch: &[Record]) -> Result<Vec<Rejection>, TransientError> {
        const KIND: &str = <DetectionsHandler as Evaluate>::KIND;
        let started = Instant::now();
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            let b: DetectionBatch = match record.decode() {
                Ok(b) => b,
                Err(e) => {
                    rejected.push(reject(index, "undecodable", e));
                    continue;
                }
            };
            if let Err(e) = envelope::check_vehicle(record, &b.vehicle_id)
                .and_then(|()| envelope::check_time("time_unix_us", b.time_unix_us))
            {
                rejected.push(reject(index, "invalid", e));
                continue;
            }
            valid.push((index, b));
        }
        rejected.extend(isolate(self, &valid).await?);
        Ok(finish(KIND, started, rejected))
    }
}

/// Opens link-loss incidents for vehicles that went silent. Runs on every
/// replica; `SKIP LOCKED` plus the `active` flag under the row lock make a
/// vehicle's link loss open once however many replicas check.
pub async fn link_loss_loop(engine: Engine, every: Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = check_link_loss(&engine, fleetwatch_common::now_unix_us()).await {
            tracing::warn!(error = %e, "link-loss check failed; retrying");
        }
    }
}

/// One link-loss pass at `now_us`; returns the incidents triggered.
pub async fn check_link_loss(engine: &Engine, now_us: i64) -> Result<usize, sqlx::Error> {
    let rules = engine.rules.get();
    let mut tx = engine.pool.begin().await?;
    let rows = store::silent_link_loss_states(&mut tx, now_us).await?;
    let mut n = 0;
    for (rule_id, vehicle, last_seen) in rows {
        // The stored rule may have been overridden for this vehicle since.
        let Some(rule) = rules::applicable(&rules, &vehicle)
            .into_iter()
            .find(|x| x.id == rule_id)
        else {
            continue;
        };
        let Params::LinkLoss(p) = &rule.params else {
            continue;
        };
        let timeout_us = (p.timeout_secs * 1e6) as i64;
        store::mark_link_lost(&mut tx, rule_id, &vehicle).await?;
        let last = chrono::DateTime::from_timestamp_micros(last_seen).unwrap_or_default();
        store::trigger(
            &mut tx,
            rule,
            &vehicle,
            last_seen + timeout_us,
            &format!(
                "no telemetry for {}s (last heard {})",
                p.timeout_secs,
                last.to_rfc3339()
            ),
            None,
            engine.clip,
        )
        .await?;
        n += 1;
    }
    tx.commit().await?;
    if n > 0 {
        engine.published.notify_one();
    }
    Ok(n)
}
