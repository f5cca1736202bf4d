//! The supervisor every service runs its tasks under: named tasks, each in a
//! drain stage; the first task that ends on its own stops the service with an
//! error naming it; shutdown stops the stages in their declared order within
//! one grace period and cuts off whatever is still running after it.
//!
//! A task that ends before it was asked to is a failure whatever it returns:
//! a gRPC server or admin task that quietly returned leaves a half-alive pod
//! that still looks healthy to its consumers' group.
//!
//! Size: about 430 lines of code and 230 of tests of the drain order, the
//! grace cut-off and the second signal, kept beside what they test.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::{AdminConfig, Readiness, Shutdown};

/// The `[shutdown]` section of every service config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long the whole drain may take before what is left is cut off.
    /// Keep it below the pod's `terminationGracePeriodSeconds`, or the kubelet's
    /// SIGKILL cuts it off first, without the log saying what was still running.
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    /// Below Kubernetes' default 30 s termination grace period.
    fn default() -> Self {
        Self { grace_ms: 25_000 }
    }
}

impl ShutdownConfig {
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// Problems for the service's `Validate`.
    pub fn validate(&self) -> Vec<String> {
        if self.grace_ms == 0 {
            vec!["shutdown.grace_ms: must be at least 1".into()]
        } else {
            Vec::new()
        }
    }
}

/// Drain stages, stopped in this order. A stage's tasks are asked to stop
/// (their token is cancelled) only after every task of the stages before it
/// ended and their drain steps ran, so work taken in is finished, committed
/// and flushed before the servers and pools it needs go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// What brings new work in: vehicle-facing servers, MQTT, timers that start work.
    Intake,
    /// Kafka consumers: finish the batch in hand and commit.
    Consumers,
    /// Producers and publishers: send what is queued, flush.
    Producers,
    /// Query and operator APIs, the admin server, dependency watchers.
    Servers,
    /// Database pools and other connections, closed last.
    Pools,
}

impl Stage {
    pub const DRAIN_ORDER: [Stage; 5] = [
        Stage::Intake,
        Stage::Consumers,
        Stage::Producers,
        Stage::Servers,
        Stage::Pools,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Intake => "intake",
            Stage::Consumers => "consumers",
            Stage::Producers => "producers",
            Stage::Servers => "servers",
            Stage::Pools => "pools",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a task's future may return: nothing, or a result (nested results
/// from awaiting a `JoinHandle` included).
pub trait TaskOutput: Send + 'static {
    fn into_result(self) -> anyhow::Result<()>;
}

impl TaskOutput for () {
    fn into_result(self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl<T: TaskOutput, E: Into<anyhow::Error> + Send + 'static> TaskOutput for Result<T, E> {
    fn into_result(self) -> anyhow::Result<()> {
        self.map_err(Into::into)?.into_result()
    }
}

type Step =
    Box<dyn FnOnce(Duration) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send>;

/// Aborts a running task by name: what a crash of that task looks like to
/// the supervisor. For fault-injection tests.
#[derive(Clone, Default)]
pub struct TaskControl(Arc<Mutex<Vec<(String, AbortHandle)>>>);

impl TaskControl {
    /// Returns whether a task of that name was found.
    pub fn abort(&self, name: &str) -> bool {
        let tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let found = tasks.iter().filter(|(n, _)| n == name);
        let mut any = false;
        for (_, handle) in found {
            handle.abort();
            any = true;
        }
        any
    }
}

/// Collects a service's tasks and drain steps, then runs them (see the module doc).
pub struct Supervisor {
    service: &'static str,
    shutdown: Shutdown,
    readiness: Readiness,
    grace: Duration,
    stops: [Shutdown; 5],
    tasks: Vec<Task>,
    steps: Vec<(Stage, String, Step)>,
    control: TaskControl,
}

struct Task {
    name: String,
    stage: Stage,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Supervisor {
    /// `shutdown` starts the drain (the signal, or a test); `readiness` is the
    /// service's own handle: ready once [`Supervisor::start`] runs, not ready
    /// from the first moment of the drain.
    pub fn new(
        service: &'static str,
        config: &ShutdownConfig,
        shutdown: Shutdown,
        readiness: Readiness,
    ) -> Self {
        Self {
            service,
            shutdown,
            readiness,
            grace: config.grace(),
            stops: Default::default(),
            tasks: Vec::new(),
            steps: Vec::new(),
            control: TaskControl::default(),
        }
    }

    /// The token that asks `stage`'s tasks to stop, for a task started
    /// outside [`Supervisor::spawn`] (a server that must bind first).
    pub fn stop_token(&self, stage: Stage) -> Shutdown {
        self.stops[stage.index()].clone()
    }

    /// Spawns `task(stop)` now; it must end once `stop` is cancelled.
    /// Ending earlier, with any result, stops the service.
    pub fn spawn<F, Fut>(&mut self, stage: Stage, name: impl Into<String>, task: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: TaskOutput,
    {
        let name = name.into();
        let fut = task(self.stop_token(stage));
        let handle = tokio::spawn(async move { fut.await.into_result() });
        self.control
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.clone(), handle.abort_handle()));
        self.tasks.push(Task {
            name,
            stage,
            handle,
        });
    }

    /// Runs `step(time left in the grace period)` once `stage`'s tasks have
    /// ended (steps of a stage run one after the other, in the order added).
    /// A failed step is logged, not fatal: what it could not finish (records
    /// not flushed, a pool not closed) is redelivered or reclaimed anyway.
    pub fn on_drain<F, Fut>(&mut self, stage: Stage, name: impl Into<String>, step: F)
    where
        F: FnOnce(Duration) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.steps.push((
            stage,
            name.into(),
            Box::new(move |left| Box::pin(step(left))),
        ));
    }

    /// [`Supervisor::on_drain`] for a blocking step (a librdkafka flush):
    /// runs on the blocking pool so it cannot stall the runtime.
    pub fn on_drain_blocking<F>(&mut self, stage: Stage, name: impl Into<String>, step: F)
    where
        F: FnOnce(Duration) -> anyhow::Result<()> + Send + 'static,
    {
        self.on_drain(stage, name, move |left| async move {
            tokio::task::spawn_blocking(move || step(left)).await?
        });
    }

    /// Binds and serves the admin endpoints (`/metrics`, `/healthz`,
    /// `/readyz` on this supervisor's readiness) until the servers stage.
    pub async fn serve_admin(&mut self, config: &AdminConfig) -> anyhow::Result<SocketAddr> {
        let (addr, task) = crate::admin::serve(
            config,
            self.readiness.clone(),
            self.stop_token(Stage::Servers),
        )
        .await?;
        self.spawn(Stage::Servers, "admin server", |_| task);
        Ok(addr)
    }

    /// Serves a gRPC API (beside health and reflection, see
    /// [`crate::grpc::serve`]) on `listener` until `stage` of the drain:
    /// [`Stage::Servers`] for operator APIs, [`Stage::Intake`] for ingest.
    pub fn serve_grpc<S>(&mut self, stage: Stage, listener: TcpListener, service: S)
    where
        S: tonic::codegen::Service<
                tonic::codegen::http::Request<tonic::body::BoxBody>,
                Response = tonic::codegen::http::Response<tonic::body::BoxBody>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        self.spawn(stage, "grpc server", |stop| {
            crate::grpc::serve(listener, service, stop)
        });
    }

    pub fn control(&self) -> TaskControl {
        self.control.clone()
    }

    /// Marks the service ready and watches it; the handle ends after the
    /// drain, with the first failure (an unexpected exit, a task that failed
    /// while stopping, or the grace period cut-off).
    pub fn start(self) -> JoinHandle<anyhow::Result<()>> {
        self.readiness.set(true);
        tokio::spawn(self.run())
    }

    async fn run(self) -> anyhow::Result<()> {
        let Self {
            service,
            shutdown,
            readiness,
            grace,
            stops,
            tasks,
            steps,
            control: _,
        } = self;
        let mut names = Vec::with_capacity(tasks.len());
        let mut aborts = Vec::with_capacity(tasks.len());
        let mut set = JoinSet::new();
        for (i, t) in tasks.into_iter().enumerate() {
            names.push((t.name, t.stage));
            aborts.push(t.handle.abort_handle());
            let handle = t.handle;
            set.spawn(async move { (i, handle.await) });
        }
        let mut done = vec![false; names.len()];
        let mut failure: Option<anyhow::Error> = None;

        // Until the drain: the first task to end is the cause.
        tokio::select! {
            _ = shutdown.cancelled() => {}
            Some(joined) = set.join_next(), if !set.is_empty() => {
                if let Some((i, outcome)) = unwrap_joined(joined) {
                    done[i] = true;
                    let (name, _) = &names[i];
                    let cause = describe(name, outcome, "stopped unexpectedly");
                    tracing::warn!(service, task = %name, error = format!("{cause:#}"), "task ended unexpectedly; stopping the service");
                    failure = Some(cause);
                }
            }
        }
        readiness.drain();
        tracing::info!(service, grace_ms = grace.as_millis() as u64, "draining");
        let deadline = Instant::now() + grace;
        let mut steps: Vec<_> = steps.into_iter().map(Some).collect();

        for stage in Stage::DRAIN_ORDER {
            stops[stage.index()].cancel();
            while (0..names.len()).any(|i| !done[i] && names[i].1 == stage) {
                let Ok(joined) = tokio::time::timeout_at(deadline, set.join_next()).await else {
                    return Err(cut_off(
                        service, grace, stage, &names, &done, &aborts, failure,
                    ));
                };
                let Some(joined) = joined else { break };
                let Some((j, outcome)) = unwrap_joined(joined) else {
                    continue;
                };
                done[j] = true;
                let (name, task_stage) = &names[j];
                let early = *task_stage > stage;
                let what = if early {
                    "stopped unexpectedly"
                } else {
                    "failed while stopping"
                };
                if early || outcome.as_ref().is_err() {
                    let cause = describe(name, outcome, what);
                    tracing::warn!(service, task = %name, error = format!("{cause:#}"), "task failed");
                    failure.get_or_insert(cause);
                }
            }
            for slot in steps.iter_mut() {
                let Some((s, _, _)) = slot else { continue };
                if *s != stage {
                    continue;
                }
                let Some((_, name, step)) = slot.take() else {
                    continue;
                };
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout_at(deadline, step(left)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(service, step = %name, error = format!("{e:#}"), "drain step failed")
                    }
                    Err(_) => {
                        return Err(cut_off(
                            service, grace, stage, &names, &done, &aborts, failure,
                        )
                        .context(format!("cut off in drain step `{name}`")));
                    }
                }
            }
        }
        tracing::info!(service, "stopped");
        failure.map_or(Ok(()), Err)
    }
}

type Joined = (usize, Result<anyhow::Result<()>, tokio::task::JoinError>);

/// The task's index and outcome; `None` only if a watcher itself failed,
/// which awaiting a handle cannot do.
fn unwrap_joined(
    joined: Result<Joined, tokio::task::JoinError>,
) -> Option<(usize, anyhow::Result<()>)> {
    match joined {
        Ok((i, Ok(r))) => Some((i, r)),
        Ok((i, Err(e))) if e.is_panic() => Some((i, Err(anyhow::anyhow!("panicked")))),
        Ok((i, Err(_))) => Some((i, Err(anyhow::anyhow!("was aborted")))),
        Err(_) => None,
    }
}

fn describe(name: &str, outcome: anyhow::Result<()>, what: &str) -> anyhow::Error {
    match outcome {
        Ok(()) => anyhow::anyhow!("task `{name}` {what}"),
        Err(e) => e.context(format!("task `{name}` {what}")),
    }
}

fn cut_off(
    service: &str,
    grace: Duration,
    stage: Stage,
    names: &[(String, Stage)],
    done: &[bool],
    aborts: &[AbortHandle],
    failure: Option<anyhow::Error>,
) -> anyhow::Error {
    let left: Vec<&str> = names
        .iter()
        .zip(done)
        .filter(|(_, d)| !**d)
        .map(|((n, _), _)| n.as_str())
        .collect();
    for a in aborts {
        a.abort();
    }
    let e = anyhow::anyhow!(
        "drain exceeded the grace period of {} ms in stage `{}`; cut off: {}",
        grace.as_millis(),
        stage.as_str(),
        if left.is_empty() {
            "-".to_string()
        } else {
            left.join(", ")
        }
    );
    tracing::warn!(service, error = %e, "drain cut off");
    match failure {
        Some(f) => f.context(e.to_string()),
        None => e,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(grace_ms: u64) -> ShutdownConfig {
        ShutdownConfig { grace_ms }
    }

    /// Records the order in which tasks and steps finish.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);
    impl Log {
        fn push(&self, s: impl Into<String>) {
            self.0.lock().unwrap().push(s.into());
        }
        fn get(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn first_unexpected_exit_stops_the_rest_with_an_error_naming_it() {
        let shutdown = Shutdown::new();
        let readiness = Readiness::default();
        let log = Log::default();
        let mut sup = Supervisor::new("test", &config(5_000), shutdown.clone(), readiness.clone());
        let l = log.clone();
        sup.spawn(Stage::Consumers, "consumer", |stop| async move {
            stop.cancelled().await;
            l.push("consumer stopped");
        });
        sup.spawn(Stage::Servers, "grpc server", |_stop| async {
            Err::<(), _>(anyhow::anyhow!("address in use"))
        });
        let handle = sup.start();
        let err = tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("task `grpc server` stopped unexpectedly"),
            "{text}"
        );
        assert!(text.contains("address in use"), "{text}");
        assert_eq!(log.get(), ["consumer stopped"]);
        assert!(!readiness.is_ready());
        assert!(
            !shutdown.is_cancelled(),
            "the drain does not need the signal"
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_ok_early_or_panics_is_a_failure_too() {
        for (name, panics) in [("admin server", false), ("watcher", true)] {
            let mut sup = Supervisor::new(
                "test",
                &config(5_000),
                Shutdown::new(),
                Readiness::default(),
            );
            sup.spawn(Stage::Servers, name, move |_stop| async move {
                if panics {
                    panic!("boom");
                }
            });
            let err = sup.start().await.unwrap().unwrap_err();
            let text = format!("{err:#}");
            assert!(
                text.contains(&format!("task `{name}` stopped unexpectedly")),
                "{text}"
            );
            assert_eq!(text.contains("panicked"), panics, "{text}");
        }
    }

    #[tokio::test]
    async fn drains_in_the_declared_order_and_readiness_drops_first() {
        let shutdown = Shutdown::new();
        let readiness = Readiness::default();
        let log = Log::default();
        let mut sup = Supervisor::new("test", &config(5_000), shutdown.clone(), readiness.clone());
        // Added out of order on purpose: the stage decides, not the order of spawning.
        for (stage, name) in [
            (Stage::Servers, "admin"),
            (Stage::Consumers, "consumer"),
            (Stage::Intake, "http"),
            (Stage::Producers, "publisher"),
        ] {
            let (l, r) = (log.clone(), readiness.clone());
            sup.spawn(stage, name, move |stop| async move {
                stop.cancelled().await;
                // Yield so a stage that did not wait for the one before would show.
                tokio::task::yield_now().await;
                l.push(format!("{name} ready={}", r.is_ready()));
            });
        }
        let l = log.clone();
        sup.on_drain(Stage::Pools, "close pool", move |_| async move {
            l.push("pool closed");
            Ok(())
        });
        let l = log.clone();
        sup.on_drain_blocking(Stage::Producers, "flush", move |left| {
            assert!(left > Duration::ZERO && left <= Duration::from_secs(5));
            l.push("flushed");
            anyhow::bail!("a failed step is logged, not fatal")
        });
        let handle = sup.start();
        assert!(readiness.is_ready());
        shutdown.cancel();
        handle.await.unwrap().unwrap();
        assert_eq!(
            log.get(),
            [
                "http ready=false",
                "consumer ready=false",
                "publisher ready=false",
                "flushed",
                "admin ready=false",
                "pool closed",
            ]
        );
    }

    #[tokio::test]
    async fn a_drain_over_the_grace_period_is_cut_off() {
        let shutdown = Shutdown::new();
        let finished = Log::default();
        let mut sup = Supervisor::new("test", &config(200), shutdown.clone(), Readiness::default());
        sup.spawn(Stage::Consumers, "stuck consumer", |_stop| async {
            // Ignores its stop token, like a consumer stuck on a dead broker.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let f = finished.clone();
        sup.on_drain(Stage::Pools, "close pool", move |_| async move {
            f.push("pool closed");
            Ok(())
        });
        let handle = sup.start();
        let started = std::time::Instant::now();
        shutdown.cancel();
        let err = tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        let elapsed = started.elapsed();
        let text = format!("{err:#}");
        assert!(text.contains("grace period of 200 ms"), "{text}");
        assert!(text.contains("stage `consumers`"), "{text}");
        assert!(text.contains("stuck consumer"), "{text}");
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert!(
            finished.get().is_empty(),
            "later stages are skipped once cut off"
        );
    }

    #[tokio::test]
    async fn a_slow_drain_step_is_cut_off_too() {
        let shutdown = Shutdown::new();
        let mut sup = Supervisor::new("test", &config(100), shutdown.clone(), Readiness::default());
        sup.on_drain(Stage::Producers, "flush", |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        let handle = sup.start();
        shutdown.cancel();
        let err = tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("drain step `flush`"), "{text}");
    }

    #[tokio::test]
    async fn a_task_failing_while_it_stops_fails_the_exit_and_control_aborts_by_name() {
        let shutdown = Shutdown::new();
        let mut sup = Supervisor::new(
            "test",
            &config(5_000),
            shutdown.clone(),
            Readiness::default(),
        );
        sup.spawn(Stage::Consumers, "consumer", |stop| async move {
            stop.cancelled().await;
            Err::<(), _>(anyhow::anyhow!("final commit failed"))
        });
        let handle = sup.start();
        shutdown.cancel();
        let text = format!("{:#}", handle.await.unwrap().unwrap_err());
        assert!(
            text.contains("task `consumer` failed while stopping: final commit failed"),
            "{text}"
        );

        let mut sup = Supervisor::new(
            "test",
            &config(5_000),
            Shutdown::new(),
            Readiness::default(),
        );
        sup.spawn(Stage::Servers, "grpc server", |stop| async move {
            stop.cancelled().await
        });
        let control = sup.control();
        let handle = sup.start();
        assert!(!control.abort("nonexistent"));
        assert!(control.abort("grpc server"));
        let text = format!("{:#}", handle.await.unwrap().unwrap_err());
        assert!(
            text.contains("task `grpc server` stopped unexpectedly: was aborted"),
            "{text}"
        );
    }

    #[test]
    fn grace_must_be_positive() {
        assert!(config(0).validate()[0].contains("shutdown.grace_ms"));
        assert!(ShutdownConfig::default().validate().is_empty());
    }
}
