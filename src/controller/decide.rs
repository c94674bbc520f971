//! The controller's pure core: what to do next for one StressTest, given everything reconcile
//! read from the cluster and the workers. No client, no clock: `now` is a parameter, so every
//! transition is unit-tested.
//!
//! # Flow
//!
//! Pending → Preparing (plan ConfigMap + prepare Job) → Running (worker Job; once every worker
//! is ready, one synchronised Start a few seconds ahead) → Analyzing (after the last stage's end
//! plus the request timeout, or when every worker is done: workers still running are stopped so
//! their cumulative snapshots are final) → Succeeded or Failed (result from the last snapshot of
//! every shard, report ConfigMap, workers told to exit).
//!
//! # Restart safety
//!
//! The start instant is kept in the [`ANNOTATION_START_UNIX_MS`] annotation (status.startTime
//! has only second precision); the workers also report it. Snapshots are cumulative, so a
//! controller that restarts mid-run pulls them again and continues. A shard whose worker died
//! keeps its last pulled snapshot (or an empty one after a restart): its stages are marked
//! incomplete by the merge instead of silently lowering QPS.
//!
//! # Spec changes during a test
//!
//! Once a test has left Pending, its spec is frozen until it ends: the running test keeps the
//! generation it started with (the plan ConfigMap holds that spec), and a newer generation only
//! sets the [`SPEC_CHANGE_IGNORED`] condition and an Event. Restarting a half-run test would
//! mix the measurements of two specs. When the test has ended, a newer generation starts a new
//! test: the old Jobs are deleted first (their pod templates are immutable).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use crate::controller::builders::{self, Role};
use crate::controller::status::{
    self, StatusContext, condition, format_latency, remove_condition, set_condition,
};
use crate::metrics::{LatencyHistogram, Snapshot, merge_snapshots};
use crate::result::{RunContext, RunResult, build_result};
use crate::spec::conditions::{self, reasons};
use crate::spec::{Phase, StressTest, StressTestSpec, StressTestStatus, TotalsStatus};
use crate::worker::WorkerState;

/// Annotation on the StressTest: the synchronised start instant, ms since the Unix epoch.
pub const ANNOTATION_START_UNIX_MS: &str = "stampede.dev/start-unix-ms";
/// Condition type: the spec changed while a test runs; the change waits for the test's end.
pub const SPEC_CHANGE_IGNORED: &str = "SpecChangeIgnored";
/// Reason of [`SPEC_CHANGE_IGNORED`]: the test in progress keeps the generation it started with.
pub const REASON_TEST_IN_PROGRESS: &str = "TestInProgress";
/// Event reason: the run started.
pub const EVENT_STARTED: &str = "Started";
/// Event reason: the test finished.
pub const EVENT_FINISHED: &str = "Finished";

/// How far ahead of now the workers are told to start, so every one receives Start in time.
pub const START_DELAY: Duration = Duration::from_secs(3);
/// How often a running test is looked at (snapshots pulled).
pub const PULL_INTERVAL: Duration = Duration::from_secs(2);
/// Progress (current stage, live QPS/P95) is written to status at most this often.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// The seconds of the per-second series that live QPS/P95 cover.
pub const LIVE_WINDOW_SECONDS: usize = 5;
/// How long Analyzing waits for stopped workers to report `finished` before using what it has.
pub const ANALYZE_GRACE: Duration = Duration::from_secs(30);
/// Requeue while waiting on Jobs (their changes also trigger a reconcile through `owns`).
pub const WAIT_INTERVAL: Duration = Duration::from_secs(10);
/// Key of the report ConfigMap holding result.json, gzip-compressed, in binaryData.
pub const REPORT_RESULT_KEY: &str = "result.json.gz";
/// Key of the report ConfigMap holding the Locust-compatible stats CSV.
pub const REPORT_STATS_KEY: &str = "stats.csv";
/// What a ConfigMap may hold, less room for metadata.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024 - 16 * 1024;

/// Name of the report ConfigMap: `<test>-report`.
pub fn report_configmap_name(test: &str) -> String {
    builders::child_name(test, "report")
}

/// What reconcile read about a Job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobObserved {
    /// The StressTest generation it was built from (its `stampede.dev/generation` annotation).
    pub generation: Option<i64>,
    /// How it ended, if it did.
    pub outcome: JobOutcome,
    /// Pods running.
    pub active: i32,
    /// Pods succeeded.
    pub succeeded: i32,
    /// Pods failed.
    pub failed: i32,
}

/// A Job's end, from its Complete/Failed conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum JobOutcome {
    /// Neither Complete nor Failed.
    #[default]
    Running,
    /// Condition Complete=True.
    Complete,
    /// Condition Failed=True, with its reason and message.
    Failed {
        /// e.g. BackoffLimitExceeded.
        reason: String,
        /// The Job controller's message.
        message: String,
    },
}

/// A worker pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerPod {
    /// Pod name.
    pub name: String,
    /// `status.podIP`.
    pub ip: Option<String>,
    /// `status.phase`: Pending, Running, Succeeded, Failed, Unknown.
    pub phase: String,
    /// Its completion index (the shard).
    pub shard: Option<u32>,
    /// Container restarts.
    pub restarts: i32,
    /// Being deleted.
    pub terminating: bool,
}

/// What one worker answered to the last pull of this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Pull {
    /// Not pulled (no pod, no IP, or not asked).
    NotPulled,
    /// The call failed.
    Failed(String),
    /// The worker answered.
    Answered {
        /// Its state.
        state: WorkerState,
        /// Whether it accepts Start.
        ready: bool,
        /// The start instant it accepted.
        start_unix_ms: Option<i64>,
        /// Its sentence.
        message: String,
    },
}

/// What is known about one shard.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardObserved {
    /// The pod serving it now, if any.
    pub pod: Option<WorkerPod>,
    /// This reconcile's pull.
    pub pull: Pull,
    /// The last snapshot pulled from this shard during the current run (kept by the controller
    /// across pulls; rebuilt by pulling again after a restart).
    pub snapshot: Option<Snapshot>,
}

/// Everything reconcile read, as input to [`decide`].
#[derive(Clone, Debug)]
pub struct Observed {
    /// The StressTest as read.
    pub test: StressTest,
    /// The spec in the plan ConfigMap, if it exists and parses (the spec the test runs with).
    pub plan: Option<StressTestSpec>,
    /// Whether the plan ConfigMap exists.
    pub plan_exists: bool,
    /// The prepare Job.
    pub prepare_job: Option<JobObserved>,
    /// The worker Job.
    pub worker_job: Option<JobObserved>,
    /// The cleanup Job.
    pub cleanup_job: Option<JobObserved>,
    /// Shards 0..workers, by index.
    pub shards: BTreeMap<u32, ShardObserved>,
    /// When progress was last written to status by this controller process (ms since epoch).
    pub last_progress_unix_ms: Option<i64>,
    /// What the controller's scraper saw of the Milvus pods (`spec.target.metrics.selector`)
    /// during the run, read when the test is analysed; None when nothing was observed.
    pub server: Option<crate::observe::ServerObservation>,
}

/// Kubernetes Event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

/// One thing reconcile does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Server-side apply the plan ConfigMap.
    ApplyPlanConfigMap,
    /// Server-side apply the prepare Job.
    ApplyPrepareJob,
    /// Server-side apply the worker Job with this many workers.
    ApplyWorkerJob {
        /// Parallelism = completions.
        workers: u32,
    },
    /// Record the start instant (annotation), then tell every worker to start at it.
    StartWorkers {
        /// Ms since the Unix epoch.
        at_unix_ms: i64,
    },
    /// Tell every reachable worker to stop (a running one stops its load; a finished one exits).
    StopWorkers,
    /// Server-side apply the report ConfigMap.
    WriteReportConfigMap(Box<ConfigMap>),
    /// Delete the prepare Job (it belongs to an older generation).
    DeletePrepareJob,
    /// Delete the worker Job (it belongs to an older generation).
    DeleteWorkerJob,
    /// Server-side apply the cleanup Job (drops the collection).
    ApplyCleanupJob,
    /// Delete the cleanup Job (it belongs to an earlier run).
    DeleteCleanupJob,
    /// Add [`crate::controller::cleanup::FINALIZER`] to the StressTest.
    AddFinalizer,
    /// Remove [`crate::controller::cleanup::FINALIZER`] from the StressTest.
    RemoveFinalizer,
    /// Record an Event on the StressTest.
    Event {
        /// Normal or Warning.
        type_: EventType,
        /// CamelCase reason.
        reason: String,
        /// One sentence.
        message: String,
    },
    /// Look again after this long.
    RequeueAfter(Duration),
}

/// What [`decide`] chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// In order.
    pub actions: Vec<Action>,
    /// The status to write (reconcile writes it only when it differs from the current one).
    pub status: StressTestStatus,
    /// Whether `status` carries new progress (reconcile remembers when it wrote it).
    pub progress_written: bool,
}

impl Decision {
    fn new(status: StressTestStatus) -> Self {
        Decision {
            actions: Vec::new(),
            status,
            progress_written: false,
        }
    }

    fn push(mut self, action: Action) -> Self {
        self.actions.push(action);
        self
    }

    fn event(self, type_: EventType, reason: &str, message: impl Into<String>) -> Self {
        self.push(Action::Event {
            type_,
            reason: reason.to_string(),
            message: message.into(),
        })
    }

    fn requeue(self, after: Duration) -> Self {
        self.push(Action::RequeueAfter(after))
    }

    /// The requeue interval, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        self.actions.iter().find_map(|a| match a {
            Action::RequeueAfter(d) => Some(*d),
            _ => None,
        })
    }
}

/// The start instant of the current run: the annotation, else what a worker reports.
pub fn start_unix_ms(observed: &Observed) -> Option<i64> {
    start_from_annotation(observed).or_else(|| {
        observed.shards.values().find_map(|s| match s.pull {
            Pull::Answered { start_unix_ms, .. } => start_unix_ms,
            _ => None,
        })
    })
}

/// The value of [`ANNOTATION_START_UNIX_MS`]: `<generation>/<ms>`, so the instant of an earlier
/// generation's test is never mistaken for the current one's.
pub fn start_annotation_value(generation: Option<i64>, at_unix_ms: i64) -> String {
    format!("{}/{at_unix_ms}", generation.unwrap_or(0))
}

/// Parses [`start_annotation_value`]: the instant, when it belongs to `generation`.
pub fn parse_start_annotation(value: &str, generation: Option<i64>) -> Option<i64> {
    let (g, ms) = value.split_once('/')?;
    (g.parse::<i64>().ok()? == generation.unwrap_or(0))
        .then(|| ms.parse().ok())
        .flatten()
}

/// Ms since the Unix epoch of `t`.
pub fn unix_ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn time_at(ms: i64) -> Time {
    Time(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn seconds_time(t: Timestamp) -> Time {
    Time(t.round(k8s_openapi::jiff::Unit::Second).unwrap_or(t))
}

/// The total planned duration of the stages.
pub fn stages_duration(spec: &StressTestSpec) -> Duration {
    spec.stages.iter().map(|s| s.duration.get()).sum()
}

/// The stage running `elapsed` after the start: None before the start, the last stage after
/// the end.
pub fn current_stage(spec: &StressTestSpec, elapsed_ms: i64) -> Option<usize> {
    if elapsed_ms < 0 || spec.stages.is_empty() {
        return None;
    }
    let elapsed = Duration::from_millis(elapsed_ms.unsigned_abs());
    let mut end = Duration::ZERO;
    for (i, s) in spec.stages.iter().enumerate() {
        end += s.duration.get();
        if elapsed < end {
            return Some(i);
        }
    }
    Some(spec.stages.len() - 1)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Decides the next actions and status for one StressTest.
pub fn decide(observed: &Observed, now: Timestamp) -> Decision {
    let st = &observed.test;
    let generation = st.metadata.generation;
    let previous = st.status.clone().unwrap_or_default();
    let phase = previous.phase.unwrap_or(Phase::Pending);
    let active = matches!(phase, Phase::Preparing | Phase::Running | Phase::Analyzing);
    let now_time = seconds_time(now);

    if active
        && previous.observed_generation.is_some()
        && previous.observed_generation != generation
    {
        return frozen(observed, previous, phase, now);
    }

    if phase.is_finished() && previous.observed_generation == generation {
        return Decision::new(previous);
    }

    // A new test (first reconcile, or a new generation after the last test ended).
    let errors = crate::spec::validate(&st.spec);
    if !errors.is_empty() {
        let ctx = StatusContext {
            generation,
            now: now_time,
            previous: Some(&previous),
        };
        let status = status::invalid_spec_status(&errors, &ctx);
        return Decision::new(status.clone()).event(
            EventType::Warning,
            reasons::INVALID_SPEC,
            status.message.unwrap_or_default(),
        );
    }

    match phase {
        Phase::Pending | Phase::Succeeded | Phase::Failed => begin(observed, previous, now),
        Phase::Preparing => preparing(observed, previous, now),
        Phase::Running => running(observed, previous, now),
        Phase::Analyzing => analyzing(observed, previous, now),
    }
}

fn frozen(
    observed: &Observed,
    mut previous: StressTestStatus,
    phase: Phase,
    now: Timestamp,
) -> Decision {
    let newer = observed.test.metadata.generation.unwrap_or_default();
    let frozen_at = previous.observed_generation.unwrap_or_default();
    let message = format!(
        "spec generation {newer} is ignored until the test of generation {frozen_at} ends; a test in progress keeps the spec it started with"
    );
    let had = status::find_condition(&previous.conditions, SPEC_CHANGE_IGNORED)
        .is_some_and(|c| c.message == message);
    set_condition(
        &mut previous.conditions,
        condition(
            SPEC_CHANGE_IGNORED,
            conditions::TRUE,
            REASON_TEST_IN_PROGRESS,
            &message,
            previous.observed_generation,
            &seconds_time(now),
        ),
    );
    let inner = Observed {
        test: StressTest {
            metadata: ObjectMeta {
                generation: previous.observed_generation,
                ..observed.test.metadata.clone()
            },
            spec: observed
                .plan
                .clone()
                .unwrap_or_else(|| observed.test.spec.clone()),
            status: Some(previous.clone()),
        },
        ..observed.clone()
    };
    let mut d = match phase {
        Phase::Preparing => preparing(&inner, previous, now),
        Phase::Running => running(&inner, previous, now),
        _ => analyzing(&inner, previous, now),
    };
    if !had {
        d = d.event(EventType::Warning, SPEC_CHANGE_IGNORED, message);
    }
    if d.status.phase.is_some_and(Phase::is_finished) {
        // The frozen test ended: the newer generation starts on the next reconcile.
        remove_condition(&mut d.status.conditions, SPEC_CHANGE_IGNORED);
        d = d.requeue(Duration::from_secs(1));
    }
    d
}

fn begin(observed: &Observed, previous: StressTestStatus, now: Timestamp) -> Decision {
    let generation = observed.test.metadata.generation;
    let stale = |j: &Option<JobObserved>| j.as_ref().is_some_and(|j| j.generation != generation);
    let mut d = Decision::new(previous.clone());
    if stale(&observed.prepare_job) || stale(&observed.worker_job) {
        if stale(&observed.prepare_job) {
            d = d.push(Action::DeletePrepareJob);
        }
        if stale(&observed.worker_job) {
            d = d.push(Action::DeleteWorkerJob);
        }
        return d.requeue(Duration::from_secs(2));
    }
    let mut conditions = previous.conditions.clone();
    conditions.retain(|c| c.type_ == conditions::COMPLETE || c.type_ == conditions::PREPARED);
    set_condition(
        &mut conditions,
        condition(
            conditions::PREPARED,
            conditions::FALSE,
            reasons::PREPARING,
            "the prepare Job is loading data and building the index",
            generation,
            &seconds_time(now),
        ),
    );
    set_condition(
        &mut conditions,
        condition(
            conditions::COMPLETE,
            conditions::FALSE,
            reasons::PREPARING,
            "the test has not run yet",
            generation,
            &seconds_time(now),
        ),
    );
    let status = StressTestStatus {
        phase: Some(Phase::Preparing),
        observed_generation: generation,
        message: Some("preparing the collection".to_string()),
        conditions,
        ..StressTestStatus::default()
    };
    Decision {
        status,
        ..Decision::new(StressTestStatus::default())
    }
    .push(Action::ApplyPlanConfigMap)
    .push(Action::ApplyPrepareJob)
    .event(
        EventType::Normal,
        reasons::PREPARING,
        "created the plan ConfigMap and the prepare Job",
    )
    .requeue(WAIT_INTERVAL)
}

fn preparing(observed: &Observed, mut status: StressTestStatus, now: Timestamp) -> Decision {
    let generation = status.observed_generation;
    let now_time = seconds_time(now);
    let Some(job) = &observed.prepare_job else {
        let mut d = Decision::new(status);
        if !observed.plan_exists {
            d = d.push(Action::ApplyPlanConfigMap);
        }
        return d.push(Action::ApplyPrepareJob).requeue(WAIT_INTERVAL);
    };
    match &job.outcome {
        JobOutcome::Running => {
            let mut d = Decision::new(status);
            if !observed.plan_exists {
                d = d.push(Action::ApplyPlanConfigMap);
            }
            d.requeue(WAIT_INTERVAL)
        }
        JobOutcome::Failed { reason, message } => {
            let text = format!("the prepare Job failed ({reason}): {message}");
            for type_ in [conditions::PREPARED, conditions::COMPLETE] {
                set_condition(
                    &mut status.conditions,
                    condition(
                        type_,
                        conditions::FALSE,
                        reasons::PREPARE_FAILED,
                        &text,
                        generation,
                        &now_time,
                    ),
                );
            }
            status.phase = Some(Phase::Failed);
            status.message = Some(text.clone());
            status.completion_time = Some(now_time);
            Decision::new(status).event(EventType::Warning, reasons::PREPARE_FAILED, text)
        }
        JobOutcome::Complete => {
            set_condition(
                &mut status.conditions,
                condition(
                    conditions::PREPARED,
                    conditions::TRUE,
                    reasons::PREPARE_SUCCEEDED,
                    "data inserted, index built, collection loaded",
                    generation,
                    &now_time,
                ),
            );
            set_condition(
                &mut status.conditions,
                condition(
                    conditions::WORKERS_READY,
                    conditions::FALSE,
                    reasons::WORKERS_STARTING,
                    "worker pods are being created",
                    generation,
                    &now_time,
                ),
            );
            status.phase = Some(Phase::Running);
            status.message = Some("starting the workers".to_string());
            let workers = builders::worker_count(&running_spec(observed));
            Decision::new(status)
                .push(Action::ApplyWorkerJob { workers })
                .event(
                    EventType::Normal,
                    reasons::PREPARE_SUCCEEDED,
                    format!("the collection is ready; starting {workers} workers"),
                )
                .requeue(PULL_INTERVAL)
        }
    }
}

/// The spec the test runs with: the plan's (what the pods read), else the object's.
fn running_spec(observed: &Observed) -> StressTestSpec {
    observed
        .plan
        .clone()
        .unwrap_or_else(|| observed.test.spec.clone())
}

/// Whether a shard's worker is serving and idle-ready to start.
fn shard_ready(s: &ShardObserved) -> bool {
    let pod_ok = s
        .pod
        .as_ref()
        .is_some_and(|p| p.phase == "Running" && p.ip.is_some() && !p.terminating);
    pod_ok
        && matches!(
            s.pull,
            Pull::Answered {
                state: WorkerState::Idle,
                ready: true,
                ..
            }
        )
}

/// Shards whose worker will report nothing more for this run: no pod, a pod that ended or is
/// being replaced, unreachable, or a worker that does not know this run's start (a replacement).
fn lost_shards(observed: &Observed, workers: u32) -> Vec<u32> {
    (0..workers)
        .filter(|i| {
            let Some(s) = observed.shards.get(i) else {
                return true;
            };
            let pod_gone = s
                .pod
                .as_ref()
                .is_none_or(|p| p.terminating || p.phase == "Failed");
            match &s.pull {
                Pull::Answered { start_unix_ms, .. } => start_unix_ms.is_none(),
                _ => pod_gone || matches!(s.pull, Pull::Failed(_)),
            }
        })
        .collect()
}

fn shard_done(s: Option<&ShardObserved>) -> bool {
    s.is_some_and(|s| {
        matches!(
            s.pull,
            Pull::Answered { state, start_unix_ms: Some(_), .. } if state.is_done()
        )
    })
}

fn running(observed: &Observed, mut status: StressTestStatus, now: Timestamp) -> Decision {
    let spec = running_spec(observed);
    let workers = builders::worker_count(&spec);
    let generation = status.observed_generation;
    let now_time = seconds_time(now);
    let now_ms = unix_ms(now);

    let Some(start) = start_unix_ms(observed) else {
        // Not started yet: the worker Job, then a synchronised start once every worker is ready.
        let Some(job) = &observed.worker_job else {
            return Decision::new(status)
                .push(Action::ApplyWorkerJob { workers })
                .requeue(PULL_INTERVAL);
        };
        if let JobOutcome::Failed { reason, message } = &job.outcome {
            return fail_run(
                status,
                &format!("the worker Job failed before the start ({reason}): {message}"),
                now_time,
            );
        }
        if let Some((i, msg)) = observed.shards.iter().find_map(|(i, s)| match &s.pull {
            Pull::Answered {
                state: WorkerState::Failed,
                message,
                ..
            } => Some((*i, message.clone())),
            _ => None,
        }) {
            return fail_run(
                status,
                &format!("worker shard {i} failed before the start: {msg}"),
                now_time,
            );
        }
        let ready = (0..workers)
            .filter(|i| observed.shards.get(i).is_some_and(shard_ready))
            .count();
        if ready == workers as usize {
            let at = now_ms + ms(START_DELAY);
            set_condition(
                &mut status.conditions,
                condition(
                    conditions::WORKERS_READY,
                    conditions::TRUE,
                    reasons::WORKERS_RUNNING,
                    &format!("all {workers} workers are ready"),
                    generation,
                    &now_time,
                ),
            );
            set_condition(
                &mut status.conditions,
                condition(
                    conditions::COMPLETE,
                    conditions::FALSE,
                    reasons::RUNNING,
                    "the stages are running",
                    generation,
                    &now_time,
                ),
            );
            status.start_time = Some(seconds_time(Timestamp::from_millisecond(at).unwrap_or(now)));
            status.current_stage = Some(status::stage_label(&spec, 0));
            status.message = Some(format!("running stage 1 of {}", spec.stages.len()));
            return Decision::new(status)
                .push(Action::StartWorkers { at_unix_ms: at })
                .event(
                    EventType::Normal,
                    EVENT_STARTED,
                    format!("{workers} workers start at {}", time_at(at).0),
                )
                .requeue(PULL_INTERVAL);
        }
        let message = format!("{ready} of {workers} workers ready");
        set_condition(
            &mut status.conditions,
            condition(
                conditions::WORKERS_READY,
                conditions::FALSE,
                reasons::WORKERS_STARTING,
                &message,
                generation,
                &now_time,
            ),
        );
        status.message = Some(message);
        return Decision::new(status).requeue(PULL_INTERVAL);
    };

    // Started: a restart may find the start recorded only by the workers.
    let mut d = Decision::new(status.clone());
    if start_from_annotation(observed).is_none() {
        d = d.push(Action::StartWorkers { at_unix_ms: start });
    } else {
        // Idle workers that missed the Start (a failed call) get it again: a late start is
        // reported by the worker, and the instant is the same for all.
        let missed = observed.shards.values().any(|s| {
            matches!(
                s.pull,
                Pull::Answered {
                    state: WorkerState::Idle,
                    ready: true,
                    start_unix_ms: None,
                    ..
                }
            )
        }) && now_ms < start + ms(START_DELAY);
        if missed {
            d = d.push(Action::StartWorkers { at_unix_ms: start });
        }
    }
    if status.start_time.is_none() {
        status.start_time = Some(seconds_time(
            Timestamp::from_millisecond(start).unwrap_or(now),
        ));
    }

    let end = start + ms(stages_duration(&spec)) + ms(spec.workload.request_timeout.get());
    let lost: Vec<u32> = if now_ms < start + ms(START_DELAY) {
        Vec::new()
    } else {
        lost_shards(observed, workers)
    };
    let all_done = (0..workers).all(|i| shard_done(observed.shards.get(&i)) || lost.contains(&i));

    if !lost.is_empty() {
        let message = format!(
            "worker shard{} {} lost; {} stages are marked incomplete",
            if lost.len() > 1 { "s" } else { "" },
            lost.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if lost.len() > 1 { "their" } else { "its" }
        );
        let had = status::find_condition(&status.conditions, conditions::WORKERS_READY)
            .is_some_and(|c| c.reason == reasons::WORKER_LOST && c.message == message);
        set_condition(
            &mut status.conditions,
            condition(
                conditions::WORKERS_READY,
                conditions::FALSE,
                reasons::WORKER_LOST,
                &message,
                generation,
                &now_time,
            ),
        );
        if !had {
            d = d.event(EventType::Warning, reasons::WORKER_LOST, message);
        }
    }

    if now_ms >= end || all_done {
        status.phase = Some(Phase::Analyzing);
        status.current_stage = Some(status::stage_label(
            &spec,
            spec.stages.len().saturating_sub(1),
        ));
        status.message = Some("the stages are over; merging the measurements".to_string());
        d.status = status;
        let d = if all_done {
            d
        } else {
            d.push(Action::StopWorkers)
        };
        return d.requeue(Duration::from_secs(1));
    }

    let due = observed
        .last_progress_unix_ms
        .is_none_or(|t| now_ms - t >= ms(PROGRESS_INTERVAL));
    if let Some(stage) = current_stage(&spec, now_ms - start) {
        status.current_stage = Some(status::stage_label(&spec, stage));
        status.message = Some(format!(
            "running stage {} of {}",
            stage + 1,
            spec.stages.len()
        ));
    }
    if due {
        let snaps: Vec<Snapshot> = observed
            .shards
            .values()
            .filter_map(|s| s.snapshot.clone())
            .collect();
        if let Some(totals) = live_totals(&merge_snapshots(&snaps)) {
            status.totals = Some(totals);
        }
        d.progress_written = true;
    } else {
        // Between progress writes, keep what was written (no status churn).
        status.totals = d.status.totals.clone();
        status.current_stage = d.status.current_stage.clone();
        status.message = d.status.message.clone();
    }
    d.status = status;
    d.requeue(PULL_INTERVAL)
}

/// The recorded start instant of the test that runs (the generation in status).
fn start_from_annotation(observed: &Observed) -> Option<i64> {
    let generation = observed
        .test
        .status
        .as_ref()
        .and_then(|s| s.observed_generation);
    observed
        .test
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_START_UNIX_MS))
        .and_then(|v| parse_start_annotation(v, generation))
}

fn fail_run(mut status: StressTestStatus, message: &str, now: Time) -> Decision {
    let generation = status.observed_generation;
    set_condition(
        &mut status.conditions,
        condition(
            conditions::COMPLETE,
            conditions::FALSE,
            reasons::RUN_FAILED,
            message,
            generation,
            &now,
        ),
    );
    status.phase = Some(Phase::Failed);
    status.message = Some(message.to_string());
    status.completion_time = Some(now);
    Decision::new(status).push(Action::StopWorkers).event(
        EventType::Warning,
        reasons::RUN_FAILED,
        message,
    )
}

/// Live QPS and P95 over the last [`LIVE_WINDOW_SECONDS`] complete seconds of the merged series.
pub fn live_totals(merged: &Snapshot) -> Option<TotalsStatus> {
    // The newest second is still filling up on some workers.
    let n = merged.seconds.len();
    if n < 2 {
        return None;
    }
    let window = &merged.seconds[n.saturating_sub(LIVE_WINDOW_SECONDS + 1)..n - 1];
    let mut latency = LatencyHistogram::new();
    let (mut requests, mut failures) = (0u64, 0u64);
    for s in window {
        let t = s.window.total();
        requests += t.requests;
        failures += t.failures;
        latency.merge(&t.latency);
    }
    let seconds = window.len() as f64;
    let p95_ms = latency.quantile_us(0.95) as f64 / 1000.0;
    let p99_ms = latency.quantile_us(0.99) as f64 / 1000.0;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let total = requests + failures;
    Some(TotalsStatus {
        qps: round(requests as f64 / seconds),
        p95: format_latency(p95_ms),
        p99: format_latency(p99_ms),
        requests,
        failures,
        error_ratio: if total == 0 {
            0.0
        } else {
            failures as f64 / total as f64
        },
        p50_ms: round(latency.quantile_us(0.5) as f64 / 1000.0),
        p95_ms: round(p95_ms),
        p99_ms: round(p99_ms),
        max_ms: round(latency.max_us() as f64 / 1000.0),
    })
}

fn analyzing(observed: &Observed, status: StressTestStatus, now: Timestamp) -> Decision {
    let spec = running_spec(observed);
    let workers = builders::worker_count(&spec);
    let now_ms = unix_ms(now);
    let start = start_unix_ms(observed).unwrap_or(now_ms);
    let deadline = start
        + ms(stages_duration(&spec))
        + ms(spec.workload.request_timeout.get())
        + ms(ANALYZE_GRACE);
    let lost = lost_shards(observed, workers);
    let all_done = (0..workers).all(|i| shard_done(observed.shards.get(&i)) || lost.contains(&i));
    if !all_done && now_ms < deadline {
        return Decision::new(status).requeue(Duration::from_secs(1));
    }
    // Past the grace period a shard still not `finished` counts with its last snapshot: the
    // merge marks any stage it did not complete, so nothing is silently lowered.
    finish(observed, &spec, workers, &lost, status, start, now)
}

fn finish(
    observed: &Observed,
    spec: &StressTestSpec,
    workers: u32,
    lost: &[u32],
    previous: StressTestStatus,
    start: i64,
    now: Timestamp,
) -> Decision {
    let st = &observed.test;
    let name = st.metadata.name.clone().unwrap_or_default();
    let snaps: Vec<Snapshot> = (0..workers)
        .map(|i| {
            observed
                .shards
                .get(&i)
                .and_then(|s| s.snapshot.clone())
                .unwrap_or(Snapshot {
                    shard: i,
                    shards: workers,
                    ..Snapshot::default()
                })
        })
        .collect();
    let interrupted = (!lost.is_empty()).then(|| {
        format!(
            "worker shard(s) {} were lost during the run",
            lost.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    let mut result = build_result(
        spec,
        RunContext {
            name: name.clone(),
            started_at: seconds_time(Timestamp::from_millisecond(start).unwrap_or(now))
                .0
                .to_string(),
            finished_at: seconds_time(now).0.to_string(),
            target: spec.target.address.clone(),
            server_version: String::new(),
            interrupted,
            prepare: None,
        },
        merge_snapshots(&snaps),
    );
    if let Some(server) = &observed.server {
        crate::result::attach_server(&mut result, server.clone());
    }
    let report_name = report_configmap_name(&name);
    let report = report_configmap(st, &report_name, &result);
    let ctx = StatusContext {
        generation: previous.observed_generation,
        now: seconds_time(now),
        previous: Some(&previous),
    };
    let mut status =
        status::status_from_result(&result, &ctx, report.as_ref().map(|_| report_name.as_str()));
    status.observed_generation = previous.observed_generation;
    let mut d = Decision::new(status.clone());
    if let Some(cm) = report {
        d = d.push(Action::WriteReportConfigMap(Box::new(cm)));
    }
    let type_ = if status.phase == Some(Phase::Succeeded) {
        EventType::Normal
    } else {
        EventType::Warning
    };
    d.push(Action::StopWorkers)
        .event(type_, EVENT_FINISHED, status.message.unwrap_or_default())
}

/// The report ConfigMap: result.json gzip-compressed in binaryData and the stats CSV. When the
/// whole result does not fit in a ConfigMap, the raw measurements and the per-second series are
/// left out of result.json (the summaries stay). None when the test has no name or UID.
pub fn report_configmap(st: &StressTest, name: &str, result: &RunResult) -> Option<ConfigMap> {
    let owner = st.controller_owner_ref(&())?;
    let test = st.metadata.name.as_deref()?;
    let mut gz = gzip_json(result)?;
    if gz.len() > MAX_REPORT_BYTES / 2 {
        let mut lean = result.clone();
        lean.measurements = Snapshot::default();
        lean.series.clear();
        gz = gzip_json(&lean)?;
    }
    let mut labels = builders::child_labels(test, Role::Plan);
    labels.insert(builders::LABEL_ROLE.to_string(), "report".to_string());
    let csv = crate::report::stats_csv(result);
    let mut data = BTreeMap::new();
    if gz.len() + csv.len() <= MAX_REPORT_BYTES {
        data.insert(REPORT_STATS_KEY.to_string(), csv);
    }
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: st.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        binary_data: Some(BTreeMap::from([(
            REPORT_RESULT_KEY.to_string(),
            ByteString(gz),
        )])),
        ..ConfigMap::default()
    })
}

fn gzip_json(result: &RunResult) -> Option<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    serde_json::to_writer(&mut gz, result).ok()?;
    gz.flush().ok()?;
    gz.finish().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{OpWindow, SecondSample, StageMeasurement, Window};
    use crate::spec::parse_manifest;
    use k8s_openapi::jiff::SignedDuration;

    const CLASSIC: &str = r#"
apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata:
  name: milvus-capacity
  namespace: perf
  uid: 0b6c7f9e-4a52-4c1e-9d0a-3f1f2b9c8d7e
  generation: 3
spec:
  target: {address: "milvus.db.svc:19530"}
  collection: {name: stress_test_collection, dimension: 768, metric: L2}
  data: {rows: 100000, batchSize: 10000, seed: 42}
  index: {type: HNSW, params: {M: 16, efConstruction: 200}}
  workload:
    model: Closed
    operations:
      - {name: search_vector, weight: 10, search: {topK: 10}}
  stages:
    - {duration: 60s, users: 10, spawnRate: 10}
    - {duration: 60s, users: 500, spawnRate: 50}
  workers: {maxUsersPerWorker: 250}
  sla: {minQps: 100}
"#;

    /// 2026-12-03T14:00:00Z.
    fn t0() -> Timestamp {
        Timestamp::from_second(1_796_392_800).unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(secs)
    }

    fn test_with(status: Option<StressTestStatus>) -> StressTest {
        let mut st = parse_manifest(CLASSIC, "test").unwrap();
        st.status = status;
        st
    }

    fn observed(st: StressTest) -> Observed {
        Observed {
            plan: Some(st.spec.clone()),
            test: st,
            plan_exists: true,
            prepare_job: None,
            worker_job: None,
            cleanup_job: None,
            shards: BTreeMap::new(),
            last_progress_unix_ms: None,
            server: None,
        }
    }

    fn status(phase: Phase) -> StressTestStatus {
        StressTestStatus {
            phase: Some(phase),
            observed_generation: Some(3),
            ..StressTestStatus::default()
        }
    }

    fn job(outcome: JobOutcome) -> JobObserved {
        JobObserved {
            generation: Some(3),
            outcome,
            ..JobObserved::default()
        }
    }

    fn pod(shard: u32) -> WorkerPod {
        WorkerPod {
            name: format!("milvus-capacity-workers-{shard}"),
            ip: Some(format!("127.0.0.{}", shard + 2)),
            phase: "Running".to_string(),
            shard: Some(shard),
            restarts: 0,
            terminating: false,
        }
    }

    fn answered(state: WorkerState, ready: bool, start: Option<i64>) -> Pull {
        Pull::Answered {
            state,
            ready,
            start_unix_ms: start,
            message: String::new(),
        }
    }

    /// A shard's snapshot: `per_stage` requests of 10 ms in each of `stages` stages (complete),
    /// over 50 s of steady state, plus one 1 s sample per second for 10 s.
    fn snapshot(shard: u32, stages: usize, per_stage: u64) -> Snapshot {
        let window = |n: u64| {
            let mut op = OpWindow::default();
            for _ in 0..n {
                op.record_success(10_000, 1);
            }
            Window {
                ops: BTreeMap::from([("search_vector".to_string(), op)]),
                ..Window::default()
            }
        };
        Snapshot {
            shard,
            shards: 2,
            stages: (0..stages)
                .map(|stage| StageMeasurement {
                    stage,
                    steady: window(per_stage),
                    steady_seconds: 50.0,
                    complete: true,
                    ..StageMeasurement::default()
                })
                .collect(),
            seconds: (0..10)
                .map(|second| SecondSample {
                    second,
                    stage: 0,
                    window: window(100),
                })
                .collect(),
            client_cpu: Vec::new(),
        }
    }

    fn started(st: &mut StressTest, start_ms: i64) {
        st.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_START_UNIX_MS.to_string(),
            start_annotation_value(Some(3), start_ms),
        )]));
    }

    fn running_observed(start_ms: i64, pulls: [Pull; 2], snaps: [Option<Snapshot>; 2]) -> Observed {
        let mut st = test_with(Some(status(Phase::Running)));
        started(&mut st, start_ms);
        let mut o = observed(st);
        o.prepare_job = Some(job(JobOutcome::Complete));
        o.worker_job = Some(job(JobOutcome::Running));
        for (i, (pull, snap)) in pulls.into_iter().zip(snaps).enumerate() {
            o.shards.insert(
                i as u32,
                ShardObserved {
                    pod: Some(pod(i as u32)),
                    pull,
                    snapshot: snap,
                },
            );
        }
        o
    }

    fn has(d: &Decision, a: &Action) -> bool {
        d.actions.contains(a)
    }

    fn cond<'a>(
        s: &'a StressTestStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status::find_condition(&s.conditions, t).unwrap()
    }

    #[test]
    fn a_new_test_gets_its_plan_and_prepare_job_and_is_preparing() {
        let d = decide(&observed(test_with(None)), t0());
        assert_eq!(d.status.phase, Some(Phase::Preparing));
        assert_eq!(d.status.observed_generation, Some(3));
        assert_eq!(d.actions[0], Action::ApplyPlanConfigMap);
        assert_eq!(d.actions[1], Action::ApplyPrepareJob);
        assert_eq!(d.requeue_after(), Some(WAIT_INTERVAL));
        assert_eq!(
            cond(&d.status, conditions::PREPARED).reason,
            reasons::PREPARING
        );
    }

    #[test]
    fn an_invalid_spec_fails_with_invalid_spec_creates_nothing_and_does_not_requeue() {
        let mut st = test_with(None);
        st.spec.data.rows = 0;
        let d = decide(&observed(st), t0());
        assert_eq!(d.status.phase, Some(Phase::Failed));
        assert_eq!(
            cond(&d.status, conditions::COMPLETE).reason,
            reasons::INVALID_SPEC
        );
        assert_eq!(d.actions.len(), 1);
        assert!(
            matches!(&d.actions[0], Action::Event { type_: EventType::Warning, reason, .. } if reason == reasons::INVALID_SPEC)
        );
        assert_eq!(d.requeue_after(), None);
    }

    #[test]
    fn an_invalid_spec_already_reported_waits_for_a_spec_change_without_events() {
        let mut st = test_with(None);
        st.spec.data.rows = 0;
        let first = decide(&observed(st.clone()), t0());
        st.status = Some(first.status.clone());
        let second = decide(&observed(st), at(60));
        assert_eq!(second.actions, Vec::new());
        assert_eq!(second.status, first.status);
    }

    #[test]
    fn preparing_waits_while_the_prepare_job_runs() {
        let mut o = observed(test_with(Some(status(Phase::Preparing))));
        o.prepare_job = Some(job(JobOutcome::Running));
        let d = decide(&o, t0());
        assert_eq!(d.status.phase, Some(Phase::Preparing));
        assert_eq!(d.actions, vec![Action::RequeueAfter(WAIT_INTERVAL)]);
    }

    #[test]
    fn a_missing_prepare_job_while_preparing_is_applied_again() {
        let o = observed(test_with(Some(status(Phase::Preparing))));
        let d = decide(&o, t0());
        assert!(has(&d, &Action::ApplyPrepareJob));
    }

    #[test]
    fn a_failed_prepare_job_fails_the_test_with_the_jobs_reason_and_message() {
        let mut o = observed(test_with(Some(status(Phase::Preparing))));
        o.prepare_job = Some(job(JobOutcome::Failed {
            reason: "BackoffLimitExceeded".to_string(),
            message: "Job has reached the specified backoff limit".to_string(),
        }));
        let d = decide(&o, t0());
        assert_eq!(d.status.phase, Some(Phase::Failed));
        let c = cond(&d.status, conditions::PREPARED);
        assert_eq!(c.reason, reasons::PREPARE_FAILED);
        assert_eq!(
            c.message,
            "the prepare Job failed (BackoffLimitExceeded): Job has reached the specified backoff limit"
        );
        assert_eq!(d.requeue_after(), None);
    }

    #[test]
    fn a_complete_prepare_job_creates_two_workers_and_the_test_is_running() {
        let mut o = observed(test_with(Some(status(Phase::Preparing))));
        o.prepare_job = Some(job(JobOutcome::Complete));
        let d = decide(&o, t0());
        assert_eq!(d.status.phase, Some(Phase::Running));
        assert!(has(&d, &Action::ApplyWorkerJob { workers: 2 }));
        assert_eq!(
            cond(&d.status, conditions::PREPARED).status,
            conditions::TRUE
        );
        assert_eq!(
            cond(&d.status, conditions::WORKERS_READY).reason,
            reasons::WORKERS_STARTING
        );
    }

    #[test]
    fn workers_not_all_ready_are_waited_for() {
        let mut o = running_observed(
            0,
            [
                answered(WorkerState::Idle, true, None),
                answered(WorkerState::Idle, false, None),
            ],
            [None, None],
        );
        o.test.metadata.annotations = None;
        let d = decide(&o, t0());
        assert_eq!(d.status.message.as_deref(), Some("1 of 2 workers ready"));
        assert_eq!(d.actions, vec![Action::RequeueAfter(PULL_INTERVAL)]);
    }

    #[test]
    fn all_workers_ready_start_together_three_seconds_from_now() {
        let mut o = running_observed(
            0,
            [
                answered(WorkerState::Idle, true, None),
                answered(WorkerState::Idle, true, None),
            ],
            [None, None],
        );
        o.test.metadata.annotations = None;
        let d = decide(&o, t0());
        let start = unix_ms(t0()) + 3000;
        assert_eq!(d.actions[0], Action::StartWorkers { at_unix_ms: start });
        assert_eq!(d.status.start_time, Some(Time(at(3))));
        assert_eq!(
            cond(&d.status, conditions::WORKERS_READY).status,
            conditions::TRUE
        );
        assert_eq!(d.status.current_stage.as_deref(), Some("1/2 (10 users)"));
    }

    #[test]
    fn a_worker_that_fails_before_the_start_fails_the_test() {
        let mut o = running_observed(
            0,
            [
                answered(WorkerState::Idle, true, None),
                Pull::Answered {
                    state: WorkerState::Failed,
                    ready: false,
                    start_unix_ms: None,
                    message: "cannot reach Milvus".to_string(),
                },
            ],
            [None, None],
        );
        o.test.metadata.annotations = None;
        let d = decide(&o, t0());
        assert_eq!(d.status.phase, Some(Phase::Failed));
        assert_eq!(
            d.status.message.as_deref(),
            Some("worker shard 1 failed before the start: cannot reach Milvus")
        );
        assert!(has(&d, &Action::StopWorkers));
    }

    #[test]
    fn the_current_stage_follows_the_clock_from_the_start_instant() {
        let spec = test_with(None).spec;
        assert_eq!(current_stage(&spec, -1), None);
        assert_eq!(current_stage(&spec, 0), Some(0));
        assert_eq!(current_stage(&spec, 59_999), Some(0));
        assert_eq!(current_stage(&spec, 60_000), Some(1));
        assert_eq!(current_stage(&spec, 500_000), Some(1));
    }

    #[test]
    fn a_running_test_reports_the_stage_and_live_qps_from_the_pulled_snapshots() {
        let start = unix_ms(t0());
        let run = Some(start);
        let o = running_observed(
            start,
            [
                answered(WorkerState::Running, false, run),
                answered(WorkerState::Running, false, run),
            ],
            [Some(snapshot(0, 1, 10)), Some(snapshot(1, 1, 10))],
        );
        let d = decide(&o, at(70));
        assert_eq!(d.status.phase, Some(Phase::Running));
        assert_eq!(d.status.current_stage.as_deref(), Some("2/2 (500 users)"));
        assert_eq!(d.status.message.as_deref(), Some("running stage 2 of 2"));
        let totals = d.status.totals.clone().unwrap();
        // Two shards × 100 requests in each of the last 5 complete seconds.
        assert_eq!(totals.qps, 200.0);
        assert_eq!(totals.p95_ms, 10.0);
        assert!(d.progress_written);
        assert_eq!(d.requeue_after(), Some(PULL_INTERVAL));
    }

    #[test]
    fn progress_is_written_at_most_every_five_seconds() {
        let start = unix_ms(t0());
        let run = Some(start);
        let mut o = running_observed(
            start,
            [
                answered(WorkerState::Running, false, run),
                answered(WorkerState::Running, false, run),
            ],
            [Some(snapshot(0, 1, 10)), Some(snapshot(1, 1, 10))],
        );
        o.last_progress_unix_ms = Some(unix_ms(at(68)));
        let d = decide(&o, at(70));
        assert!(!d.progress_written);
        assert_eq!(
            d.status,
            o.test.status.clone().unwrap_or_default().with_start(start)
        );
    }

    trait WithStart {
        fn with_start(self, ms: i64) -> Self;
    }
    impl WithStart for StressTestStatus {
        fn with_start(mut self, ms: i64) -> Self {
            self.start_time = Some(Time(Timestamp::from_millisecond(ms).unwrap()));
            self
        }
    }

    #[test]
    fn after_the_last_stage_and_the_request_timeout_workers_are_stopped_and_the_test_analyzed() {
        let start = unix_ms(t0());
        let run = Some(start);
        let o = running_observed(
            start,
            [
                answered(WorkerState::Running, false, run),
                answered(WorkerState::Running, false, run),
            ],
            [Some(snapshot(0, 2, 10)), Some(snapshot(1, 2, 10))],
        );
        let before = decide(&o, at(129));
        assert_eq!(before.status.phase, Some(Phase::Running));
        let d = decide(&o, at(130));
        assert_eq!(d.status.phase, Some(Phase::Analyzing));
        assert!(has(&d, &Action::StopWorkers));
    }

    #[test]
    fn when_every_worker_has_finished_the_test_is_analyzed_without_waiting() {
        let start = unix_ms(t0());
        let run = Some(start);
        let o = running_observed(
            start,
            [
                answered(WorkerState::Finished, false, run),
                answered(WorkerState::Finished, false, run),
            ],
            [Some(snapshot(0, 2, 10)), Some(snapshot(1, 2, 10))],
        );
        let d = decide(&o, at(121));
        assert_eq!(d.status.phase, Some(Phase::Analyzing));
        assert!(!has(&d, &Action::StopWorkers));
    }

    fn analyzing(o: &mut Observed) {
        o.test.status.as_mut().unwrap().phase = Some(Phase::Analyzing);
    }

    #[test]
    fn analysis_merges_every_shard_writes_the_report_and_succeeds() {
        let start = unix_ms(t0());
        let run = Some(start);
        let mut o = running_observed(
            start,
            [
                answered(WorkerState::Finished, false, run),
                answered(WorkerState::Finished, false, run),
            ],
            [Some(snapshot(0, 2, 5000)), Some(snapshot(1, 2, 5000))],
        );
        analyzing(&mut o);
        let d = decide(&o, at(125));
        assert_eq!(d.status.phase, Some(Phase::Succeeded));
        let stages = &d.status.stages;
        assert_eq!(stages.len(), 2);
        // 2 × 5000 requests over 50 s of steady state.
        assert_eq!(stages[0].qps, 200.0);
        assert!(stages.iter().all(|s| s.valid));
        assert_eq!(
            d.status.report.as_ref().unwrap().config_map,
            "milvus-capacity-report"
        );
        assert!(
            d.actions
                .iter()
                .any(|a| matches!(a, Action::WriteReportConfigMap(cm)
            if cm.binary_data.as_ref().unwrap().contains_key(REPORT_RESULT_KEY)))
        );
        assert!(has(&d, &Action::StopWorkers));
        assert_eq!(d.requeue_after(), None);
        assert_eq!(
            cond(&d.status, conditions::SLA_MET).reason,
            reasons::SLA_PASSED
        );
    }

    #[test]
    fn the_server_observation_of_the_cluster_goes_into_the_bottlenecks_and_the_report() {
        use crate::observe::{ContainerRestart, ServerObservation, ServerSample};
        let start = unix_ms(t0());
        let run = Some(start);
        let mut o = running_observed(
            start,
            [
                answered(WorkerState::Finished, false, run),
                answered(WorkerState::Finished, false, run),
            ],
            [Some(snapshot(0, 2, 5000)), Some(snapshot(1, 2, 5000))],
        );
        analyzing(&mut o);
        let without = decide(&o, at(125));
        assert!(
            without
                .status
                .stages
                .iter()
                .all(|s| s.bottleneck.as_ref().unwrap().resource == "notObserved")
        );
        // Scrapes every 2 s over both 60 s stages; an OOM kill seen 70 s after the start.
        let series = (0..=60)
            .map(|k| ServerSample {
                second: f64::from(k) * 2.0,
                interval: if k == 0 { 0.0 } else { 2.0 },
                cpu_cores: (k > 0).then_some(0.5),
                resident_bytes: Some(300e6),
                endpoints_observed: 1,
                ..ServerSample::default()
            })
            .collect();
        o.server = Some(ServerObservation {
            enabled: true,
            observed: true,
            endpoints: vec!["http://10.0.0.6:9091/metrics".into()],
            interval_seconds: 2.0,
            series,
            restarts: vec![ContainerRestart {
                pod: "milvus-0".into(),
                container: "milvus".into(),
                second: 70.0,
                restarts: 1,
                reason: Some("OOMKilled".into()),
                exit_code: Some(137),
            }],
            ..ServerObservation::default()
        });
        let d = decide(&o, at(125));
        assert_eq!(d.status.phase, Some(Phase::Succeeded));
        let b: Vec<_> = d
            .status
            .stages
            .iter()
            .map(|s| s.bottleneck.clone().unwrap())
            .collect();
        assert_eq!(b[0].resource, "none", "{b:?}");
        assert!(!b[0].evidence.contains("restarted"), "{b:?}");
        assert_eq!(b[1].resource, "serverMemory", "{b:?}");
        assert!(
            b[1].evidence
                .starts_with("Milvus pod milvus-0 restarted (OOMKilled) during this stage at 500 users; Milvus used 0.50 cores"),
            "{b:?}"
        );
    }

    #[test]
    fn analysis_waits_for_stopped_workers_to_finish_until_the_grace_period() {
        let start = unix_ms(t0());
        let run = Some(start);
        let mut o = running_observed(
            start,
            [
                answered(WorkerState::Running, false, run),
                answered(WorkerState::Finished, false, run),
            ],
            [Some(snapshot(0, 2, 5000)), Some(snapshot(1, 2, 5000))],
        );
        analyzing(&mut o);
        assert_eq!(decide(&o, at(131)).status.phase, Some(Phase::Analyzing));
        assert_eq!(decide(&o, at(160)).status.phase, Some(Phase::Succeeded));
    }

    #[test]
    fn a_lost_worker_keeps_its_last_snapshot_and_its_missed_stage_is_incomplete() {
        let start = unix_ms(t0());
        let run = Some(start);
        let mut o = running_observed(
            start,
            [
                answered(WorkerState::Finished, false, run),
                Pull::Failed("connection refused".into()),
            ],
            // Shard 1 died during stage 2: its last snapshot has only stage 1.
            [Some(snapshot(0, 2, 5000)), Some(snapshot(1, 1, 5000))],
        );
        o.shards.get_mut(&1).unwrap().pod = None;
        let running = decide(&o, at(90));
        assert_eq!(
            cond(&running.status, conditions::WORKERS_READY).reason,
            reasons::WORKER_LOST
        );
        assert!(
            running.actions.iter().any(
                |a| matches!(a, Action::Event { reason, .. } if reason == reasons::WORKER_LOST)
            )
        );
        analyzing(&mut o);
        let d = decide(&o, at(125));
        assert_eq!(d.status.phase, Some(Phase::Failed));
        assert_eq!(
            cond(&d.status, conditions::COMPLETE).reason,
            reasons::RUN_INCOMPLETE
        );
        assert!(d.status.stages[0].valid);
        // Stage 1 merged both shards; stage 2 only one and is marked, not silently halved.
        assert_eq!(d.status.stages[0].qps, 200.0);
        assert!(!d.status.stages[1].valid);
    }

    #[test]
    fn a_replacement_worker_that_never_started_counts_as_lost() {
        let start = unix_ms(t0());
        let run = Some(start);
        let o = running_observed(
            start,
            [
                answered(WorkerState::Running, false, run),
                answered(WorkerState::Idle, true, None),
            ],
            [Some(snapshot(0, 1, 10)), Some(snapshot(1, 1, 10))],
        );
        let d = decide(&o, at(30));
        assert_eq!(
            cond(&d.status, conditions::WORKERS_READY).message,
            "worker shard 1 lost; its stages are marked incomplete"
        );
        assert!(!has(&d, &Action::StartWorkers { at_unix_ms: start }));
    }

    #[test]
    fn a_restarted_controller_recovers_the_start_instant_from_the_workers() {
        let start = unix_ms(t0());
        let run = Some(start);
        let mut o = running_observed(
            start,
            [
                answered(WorkerState::Running, false, run),
                answered(WorkerState::Running, false, run),
            ],
            [Some(snapshot(0, 1, 10)), Some(snapshot(1, 1, 10))],
        );
        o.test.metadata.annotations = None;
        let d = decide(&o, at(30));
        assert_eq!(d.status.phase, Some(Phase::Running));
        assert!(has(&d, &Action::StartWorkers { at_unix_ms: start }));
        assert_eq!(d.status.current_stage.as_deref(), Some("1/2 (10 users)"));
    }

    #[test]
    fn a_spec_change_while_running_is_ignored_until_the_test_ends() {
        let start = unix_ms(t0());
        let run = Some(start);
        let mut o = running_observed(
            start,
            [
                answered(WorkerState::Running, false, run),
                answered(WorkerState::Running, false, run),
            ],
            [Some(snapshot(0, 1, 10)), Some(snapshot(1, 1, 10))],
        );
        o.test.metadata.generation = Some(4);
        o.test.spec.stages.truncate(1);
        let d = decide(&o, at(70));
        assert_eq!(d.status.phase, Some(Phase::Running));
        assert_eq!(d.status.observed_generation, Some(3));
        // Still the original two stages.
        assert_eq!(d.status.current_stage.as_deref(), Some("2/2 (500 users)"));
        let c = cond(&d.status, SPEC_CHANGE_IGNORED);
        assert_eq!(c.reason, REASON_TEST_IN_PROGRESS);
        assert_eq!(
            c.message,
            "spec generation 4 is ignored until the test of generation 3 ends; a test in progress keeps the spec it started with"
        );
        assert!(
            d.actions.iter().any(
                |a| matches!(a, Action::Event { reason, .. } if reason == SPEC_CHANGE_IGNORED)
            )
        );
    }

    #[test]
    fn the_start_annotation_of_another_generation_is_ignored() {
        assert_eq!(
            parse_start_annotation("3/1700000000000", Some(3)),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_start_annotation("2/1700000000000", Some(3)), None);
        assert_eq!(parse_start_annotation("1700000000000", Some(3)), None);
        let start = unix_ms(t0());
        let mut o = running_observed(
            start,
            [
                answered(WorkerState::Idle, true, None),
                answered(WorkerState::Idle, true, None),
            ],
            [None, None],
        );
        started(&mut o.test, start);
        o.test.status.as_mut().unwrap().observed_generation = Some(4);
        o.test.metadata.generation = Some(4);
        let d = decide(&o, at(600));
        assert_eq!(
            d.actions[0],
            Action::StartWorkers {
                at_unix_ms: unix_ms(at(603))
            }
        );
    }

    #[test]
    fn live_figures_need_at_least_one_complete_second() {
        let mut s = snapshot(0, 1, 1);
        s.seconds.truncate(1);
        assert_eq!(live_totals(&s), None);
    }

    #[test]
    fn the_report_config_map_is_owned_by_the_test_and_holds_the_compressed_result() {
        let st = test_with(None);
        let spec = st.spec.clone();
        let result = build_result(&spec, RunContext::default(), snapshot(0, 2, 100));
        let cm = report_configmap(&st, "milvus-capacity-report", &result).unwrap();
        assert_eq!(cm.metadata.namespace.as_deref(), Some("perf"));
        let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "StressTest");
        assert_eq!(owner.controller, Some(true));
        let gz = &cm.binary_data.as_ref().unwrap()[REPORT_RESULT_KEY].0;
        let mut json = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json)
            .unwrap();
        let back: RunResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.totals.requests, 200);
        assert!(cm.data.as_ref().unwrap().contains_key(REPORT_STATS_KEY));
    }

    #[test]
    fn a_finished_test_is_left_alone_until_its_spec_changes() {
        let o = observed(test_with(Some(status(Phase::Succeeded))));
        let d = decide(&o, t0());
        assert_eq!(d.actions, Vec::new());
    }

    #[test]
    fn a_new_generation_after_the_end_deletes_the_old_jobs_then_starts_again() {
        let mut o = observed(test_with(Some(status(Phase::Succeeded))));
        o.test.metadata.generation = Some(4);
        o.prepare_job = Some(job(JobOutcome::Complete));
        o.worker_job = Some(job(JobOutcome::Complete));
        let d = decide(&o, t0());
        assert!(has(&d, &Action::DeletePrepareJob));
        assert!(has(&d, &Action::DeleteWorkerJob));
        o.prepare_job = None;
        o.worker_job = None;
        let d = decide(&o, t0());
        assert_eq!(d.status.phase, Some(Phase::Preparing));
        assert_eq!(d.status.observed_generation, Some(4));
        assert!(has(&d, &Action::ApplyPrepareJob));
    }
}
