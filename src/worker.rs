//! `stampede worker`: one shard of a StressTest's load, controlled over gRPC
//! (`proto/stampede/v1/worker.proto`), and the client calls the controller makes to it.
//!
//! Life of a worker:
//!
//! 1. It reads the manifest and its shard (`--shard i/n`, or `JOB_COMPLETION_INDEX` +
//!    `STAMPEDE_SHARDS`), listens, and answers `Snapshot` at once (state `idle`, not ready).
//! 2. In the background it connects to Milvus, loads (`--ground-truth FILE`) or computes the
//!    ground truth, and builds its [`ShardPlan`]; then `ready` turns true.
//! 3. `Start(start_unix_ms)` runs the stages from that wall-clock instant (state `running`).
//! 4. `Snapshot` returns the cumulative measurements at any time, as gzip-compressed JSON of
//!    [`Snapshot`]; pulling never resets anything, so a lost pull loses nothing.
//! 5. After the last stage (state `finished`) it keeps serving until a `Stop` or `--linger`,
//!    then exits 0. `Stop` during the load ends it early (unfinished stages incomplete) and
//!    keeps serving; SIGTERM does the same and exits at most 25 s later.

use std::fmt;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tokio::sync::{oneshot, watch};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};

use crate::cli::{CliError, connect_options};
use crate::data::GroundTruth;
use crate::load::{self, Recorder, ShardPlan};
use crate::metrics::{Snapshot, StageMeasurement};
use crate::milvus::MilvusClient;
use crate::pb::stampede_v1 as pb;
use crate::spec::StressTestSpec;
use pb::worker_client::WorkerClient;
use pb::worker_server::{Worker, WorkerServer};

/// Port a worker listens on by default.
pub const DEFAULT_PORT: u16 = 7070;
/// Longest a worker stays after SIGTERM (Kubernetes kills it 30 s after SIGTERM by default).
pub const TERM_GRACE: Duration = Duration::from_secs(25);
/// Longest a worker whose setup failed keeps serving its failure before exiting.
pub const FAILED_LINGER: Duration = Duration::from_secs(30);
/// Largest gRPC message either side accepts: a long test's cumulative snapshot is big.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Largest decompressed snapshot accepted from a worker.
const MAX_SNAPSHOT_JSON_BYTES: u64 = 1024 * 1024 * 1024;
/// How long the client waits for a TCP connection to a worker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the client waits for a reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A start instant further than this from now is a unit mistake (seconds, µs), not a plan.
const MAX_START_OFFSET: Duration = Duration::from_secs(24 * 3600);
/// How long the server may take to finish replies in flight when the worker exits.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a worker is doing, as `SnapshotReply.state` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Not started (see `ready` for whether a Start would be accepted).
    Idle,
    /// Running its stages.
    Running,
    /// The last stage ended, or the load was stopped early.
    Finished,
    /// Setup failed (Milvus unreachable, bad ground truth, …) or the load task crashed.
    Failed,
}

impl WorkerState {
    /// The wire name: `idle`, `running`, `finished` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Running => "running",
            WorkerState::Finished => "finished",
            WorkerState::Failed => "failed",
        }
    }

    /// Whether the worker will measure nothing more.
    pub fn is_done(self) -> bool {
        matches!(self, WorkerState::Finished | WorkerState::Failed)
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkerState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "idle" => Ok(WorkerState::Idle),
            "running" => Ok(WorkerState::Running),
            "finished" => Ok(WorkerState::Finished),
            "failed" => Ok(WorkerState::Failed),
            other => Err(format!(
                "unknown worker state `{other}` (expected idle, running, finished or failed)"
            )),
        }
    }
}

/// Shard `index` of `count`, as `--shard index/count` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardIndex {
    /// This worker's shard, `0..count`.
    pub index: u32,
    /// Number of shards (workers) of the test.
    pub count: u32,
}

impl ShardIndex {
    /// A shard index, checked: `count ≥ 1` and `index < count`.
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 {
            return Err("the number of shards must be at least 1".to_string());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is out of range for {count} shard(s): indexes run from 0 to {}",
                count - 1
            ));
        }
        Ok(ShardIndex { index, count })
    }

    /// The shard from `--shard` when given, else from the Indexed Job's `JOB_COMPLETION_INDEX`
    /// and `STAMPEDE_SHARDS` (read through `env`).
    pub fn resolve(
        flag: Option<ShardIndex>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ShardIndex, String> {
        if let Some(s) = flag {
            return Ok(s);
        }
        let get = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let number = |k: &str, v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{k}={v} is not a non-negative whole number"))
        };
        match (get("JOB_COMPLETION_INDEX"), get("STAMPEDE_SHARDS")) {
            (Some(i), Some(n)) => ShardIndex::new(
                number("JOB_COMPLETION_INDEX", &i)?,
                number("STAMPEDE_SHARDS", &n)?,
            ),
            (Some(i), None) => Err(format!(
                "JOB_COMPLETION_INDEX={i} is set but STAMPEDE_SHARDS (the number of shards) is not; set it to the worker Job's completions, or pass --shard {i}/N"
            )),
            (None, Some(n)) => Err(format!(
                "STAMPEDE_SHARDS={n} is set but JOB_COMPLETION_INDEX is not; run the worker in an Indexed Job, or pass --shard I/{n}"
            )),
            (None, None) => Err(
                "no shard given: pass --shard I/N (e.g. --shard 0/1 for a single worker), or set JOB_COMPLETION_INDEX and STAMPEDE_SHARDS".to_string(),
            ),
        }
    }
}

impl fmt::Display for ShardIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for ShardIndex {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a shard: write INDEX/COUNT, e.g. 0/4"))?;
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{s}` is not a shard: write INDEX/COUNT, e.g. 0/4"))
        };
        ShardIndex::new(num(i)?, num(n)?)
    }
}

/// Options of `stampede worker`.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The StressTest manifest (later: the resolved plan the controller mounts).
    pub plan: PathBuf,
    /// `--shard`; when absent the shard comes from the environment (see [`ShardIndex::resolve`]).
    pub shard: Option<ShardIndex>,
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    pub listen: SocketAddr,
    /// Milvus address to use instead of spec.target.address.
    pub target: Option<String>,
    /// Ground truth written by `stampede prepare`; without it, it is computed when
    /// `spec.recall.sampleQueries > 0`.
    pub ground_truth: Option<PathBuf>,
    /// How long a finished worker waits for its final pull and a Stop before exiting.
    pub linger: Duration,
}

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn unix_ms_now() -> i64 {
    unix_us_now() / 1000
}

fn unix_us_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Converts a wall-clock start (`start_unix_ms`) to a monotonic instant, given the wall clock
/// (`now_unix_us`) and monotonic clock (`now`) read together. Returns the instant and how late
/// the start already is (zero when it lies ahead; a start in the past begins at `now`).
pub fn start_instant(
    start_unix_ms: i64,
    now_unix_us: i64,
    now: Instant,
) -> Result<(Instant, Duration), String> {
    let offset_us = i128::from(start_unix_ms) * 1000 - i128::from(now_unix_us);
    let limit = MAX_START_OFFSET.as_micros() as i128;
    if start_unix_ms <= 0 || offset_us.abs() > limit {
        return Err(format!(
            "start_unix_ms {start_unix_ms} is more than 24 h away from this worker's clock ({} ms); send milliseconds since the Unix epoch",
            now_unix_us / 1000
        ));
    }
    let micros = Duration::from_micros(offset_us.unsigned_abs() as u64);
    if offset_us >= 0 {
        Ok((now + micros, Duration::ZERO))
    } else {
        Ok((now, micros))
    }
}

/// Serialises a snapshot as the wire carries it: JSON, gzip-compressed.
pub fn encode_snapshot(snapshot: &Snapshot) -> Result<Vec<u8>, String> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    serde_json::to_writer(&mut gz, snapshot).map_err(|e| format!("cannot encode snapshot: {e}"))?;
    gz.flush()
        .and_then(|()| gz.finish())
        .map_err(|e| format!("cannot compress snapshot: {e}"))
}

/// Reads a snapshot written by [`encode_snapshot`].
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    let mut json = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_SNAPSHOT_JSON_BYTES)
        .read_to_end(&mut json)
        .map_err(|e| format!("snapshot is not valid gzip: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("snapshot is not valid JSON: {e}"))
}

/// Checks that a ground truth file belongs to the data the spec generates.
pub fn check_ground_truth(truth: &GroundTruth, spec: &StressTestSpec) -> Result<(), String> {
    let metric = crate::prepare::metric_of(spec.collection.metric).as_str();
    let mut problems = Vec::new();
    if truth.metric != metric {
        problems.push(format!("metric {} (the spec has {metric})", truth.metric));
    }
    if truth.rows != spec.data.rows {
        problems.push(format!(
            "{} rows (the spec has {})",
            truth.rows, spec.data.rows
        ));
    }
    if truth.seed != spec.data.seed {
        problems.push(format!(
            "seed {} (the spec has {})",
            truth.seed, spec.data.seed
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "was computed for other data: {}; run `stampede prepare` with this manifest again",
            problems.join(", ")
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Server side.

/// What a started load needs.
struct Ready {
    client: MilvusClient,
    plan: Arc<ShardPlan>,
}

/// A load that was started.
struct Run {
    recorder: Arc<Recorder>,
    start_unix_ms: i64,
    late: Duration,
    stop: watch::Sender<bool>,
}

struct Inner {
    state: WorkerState,
    message: String,
    ready: Option<Ready>,
    run: Option<Run>,
    /// Why the load was stopped early, once it was.
    stop_reason: Option<String>,
    /// A Stop asked the worker to exit.
    exit: bool,
    /// When the state became finished or failed.
    ended_at: Option<Instant>,
}

/// State shared by the gRPC service, the setup task, the load supervisor and the main loop.
struct Shared {
    shard: ShardIndex,
    stages: usize,
    request_timeout: Duration,
    inner: Mutex<Inner>,
    /// Bumped on every change the main loop must look at.
    changed: watch::Sender<u64>,
}

impl Shared {
    // A poisoned lock only means a handler panicked mid-update; the state is still usable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn set_message(&self, message: String) {
        self.lock().message = message;
    }

    fn fail(&self, message: String) {
        tracing::error!(shard = %self.shard, "{message}");
        {
            let mut inner = self.lock();
            inner.state = WorkerState::Failed;
            inner.message = message;
            inner.ready = None;
            inner.ended_at = Some(Instant::now());
        }
        self.notify();
    }

    fn set_ready(&self, ready: Ready) {
        let users = ready.plan.stages.iter().map(|s| s.users).max().unwrap_or(0);
        let message = format!(
            "ready: {} stage(s), this shard's peak {} users / {:.1} req/s; waiting for Start",
            ready.plan.stages.len(),
            users,
            ready.plan.stages.iter().map(|s| s.rate).fold(0.0, f64::max)
        );
        tracing::info!(shard = %self.shard, "{message}");
        {
            let mut inner = self.lock();
            if inner.state != WorkerState::Idle {
                return;
            }
            inner.ready = Some(ready);
            inner.message = message;
        }
        self.notify();
    }

    /// The snapshot of a worker that has not started: every stage present and incomplete.
    fn empty_snapshot(&self) -> Snapshot {
        Snapshot {
            shard: self.shard.index,
            shards: self.shard.count,
            stages: (0..self.stages)
                .map(|stage| StageMeasurement {
                    stage,
                    ..StageMeasurement::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    /// Stops a running load (`reason` goes into the message); false when none was running.
    fn stop_load(&self, reason: &str) -> bool {
        let mut inner = self.lock();
        if inner.state != WorkerState::Running {
            return false;
        }
        if inner.stop_reason.is_none() {
            tracing::info!(shard = %self.shard, "stopping the load early: {reason}");
            inner.stop_reason = Some(reason.to_string());
            inner.message = format!(
                "stopping ({reason}): requests in flight get up to {:?} to finish",
                self.request_timeout
            );
        }
        if let Some(run) = &inner.run {
            let _ = run.stop.send(true);
        }
        true
    }

    /// Records the end of the load.
    fn finish(&self, outcome: Result<(), tokio::task::JoinError>) {
        {
            let mut inner = self.lock();
            let snapshot = inner.run.as_ref().map(|r| r.recorder.snapshot());
            let incomplete: Vec<String> = snapshot
                .iter()
                .flat_map(|s| s.stages.iter())
                .filter(|m| !m.complete)
                .map(|m| (m.stage + 1).to_string())
                .collect();
            match outcome {
                Err(e) => {
                    inner.state = WorkerState::Failed;
                    inner.message = format!(
                        "the load task crashed: {e}; the snapshot holds what was measured before"
                    );
                }
                Ok(()) => {
                    inner.state = WorkerState::Finished;
                    inner.message = if incomplete.is_empty() {
                        format!("all {} stage(s) complete", self.stages)
                    } else {
                        format!(
                            "stopped early ({}): stage(s) {} of {} incomplete",
                            inner.stop_reason.as_deref().unwrap_or("load ended"),
                            incomplete.join(", "),
                            self.stages
                        )
                    };
                }
            }
            inner.ended_at = Some(Instant::now());
            tracing::info!(shard = %self.shard, state = %inner.state, "{}", inner.message);
        }
        self.notify();
    }
}

/// The gRPC service of one worker.
struct WorkerService {
    shared: Arc<Shared>,
}

impl WorkerService {
    fn start_reply(run: &Run, message: String) -> pb::StartReply {
        pb::StartReply {
            start_unix_ms: run.start_unix_ms,
            late_ms: i64::try_from(run.late.as_millis()).unwrap_or(i64::MAX),
            message,
        }
    }
}

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartReply>, Status> {
        let start_unix_ms = request.into_inner().start_unix_ms;
        let shared = &self.shared;
        let mut inner = shared.lock();
        match inner.state {
            WorkerState::Idle => {}
            WorkerState::Failed => {
                return Err(Status::failed_precondition(format!(
                    "cannot start: the worker failed: {}",
                    inner.message
                )));
            }
            WorkerState::Running | WorkerState::Finished => {
                return match &inner.run {
                    Some(run) if run.start_unix_ms == start_unix_ms => Ok(Response::new(
                        Self::start_reply(run, format!("already started at {start_unix_ms}")),
                    )),
                    Some(run) => Err(Status::failed_precondition(format!(
                        "already started at {} (unix ms), state {}; a Start at {start_unix_ms} conflicts — restart the worker to run again",
                        run.start_unix_ms, inner.state
                    ))),
                    None => Err(Status::failed_precondition(format!(
                        "cannot start: {}",
                        inner.message
                    ))),
                };
            }
        }
        if inner.ready.is_none() {
            return Err(Status::failed_precondition(format!(
                "not ready yet ({}); send Start once Snapshot reports ready",
                inner.message
            )));
        }
        let (at, late) = start_instant(start_unix_ms, unix_us_now(), Instant::now())
            .map_err(Status::invalid_argument)?;
        let Some(ready) = inner.ready.take() else {
            return Err(Status::internal("worker lost its plan"));
        };
        let recorder = Arc::new(Recorder::new(
            shared.shard.index,
            shared.shard.count,
            shared.stages,
            at,
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let run = Run {
            recorder: Arc::clone(&recorder),
            start_unix_ms,
            late,
            stop: stop_tx,
        };
        let message = if late.is_zero() {
            format!(
                "starting {} stage(s) in {} ms",
                shared.stages,
                at.saturating_duration_since(Instant::now()).as_millis()
            )
        } else {
            format!(
                "the start instant was {} ms in the past; started now",
                late.as_millis()
            )
        };
        tracing::info!(shard = %shared.shard, start_unix_ms, late_ms = late.as_millis() as u64, "{message}");
        let reply = Self::start_reply(&run, message.clone());
        inner.state = WorkerState::Running;
        inner.message = format!("running since {start_unix_ms} (unix ms): {message}");
        inner.run = Some(run);
        drop(inner);

        let load = tokio::spawn(load::run_shard(
            ready.client,
            ready.plan,
            recorder,
            at,
            stop_rx,
        ));
        let supervisor = Arc::clone(shared);
        tokio::spawn(async move {
            let outcome = load.await;
            supervisor.finish(outcome);
        });
        shared.notify();
        Ok(Response::new(reply))
    }

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        let shared = &self.shared;
        let (state, message, ready, start_unix_ms, recorder) = {
            let inner = shared.lock();
            (
                inner.state,
                inner.message.clone(),
                inner.state == WorkerState::Idle && inner.ready.is_some(),
                inner.run.as_ref().map_or(0, |r| r.start_unix_ms),
                inner.run.as_ref().map(|r| Arc::clone(&r.recorder)),
            )
        };
        let empty = shared.empty_snapshot();
        // Serialising a long test's snapshot takes a while: off the async threads.
        let bytes = tokio::task::spawn_blocking(move || {
            let snapshot = recorder.map_or(empty, |r| r.snapshot());
            encode_snapshot(&snapshot)
        })
        .await
        .map_err(|e| Status::internal(format!("snapshot task failed: {e}")))?
        .map_err(Status::internal)?;
        Ok(Response::new(pb::SnapshotReply {
            state: state.as_str().to_string(),
            message,
            snapshot_json_gz: bytes,
            ready,
            shard: shared.shard.index,
            shards: shared.shard.count,
            start_unix_ms,
        }))
    }

    async fn stop(
        &self,
        _request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopReply>, Status> {
        let shared = &self.shared;
        if shared.stop_load("a Stop request") {
            let inner = shared.lock();
            return Ok(Response::new(pb::StopReply {
                state: inner.state.as_str().to_string(),
                exiting: false,
                message: format!(
                    "{}; pull Snapshot until finished, then Stop again to let the worker exit",
                    inner.message
                ),
            }));
        }
        let state = {
            let mut inner = shared.lock();
            inner.exit = true;
            inner.state
        };
        tracing::info!(shard = %shared.shard, %state, "Stop received; exiting");
        shared.notify();
        Ok(Response::new(pb::StopReply {
            state: state.as_str().to_string(),
            exiting: true,
            message: format!("no load running (state {state}); the worker exits"),
        }))
    }
}

/// Connects to Milvus, loads or computes the ground truth and builds the shard plan.
async fn setup(
    shared: Arc<Shared>,
    spec: StressTestSpec,
    target: Option<String>,
    ground_truth: Option<PathBuf>,
) {
    match prepare_shard(&shared, &spec, target.as_deref(), ground_truth.as_deref()).await {
        Ok(ready) => shared.set_ready(ready),
        Err(message) => shared.fail(message),
    }
}

async fn prepare_shard(
    shared: &Shared,
    spec: &StressTestSpec,
    target: Option<&str>,
    ground_truth: Option<&Path>,
) -> Result<Ready, String> {
    let opts = connect_options(spec, target).map_err(|e| e.to_string())?;
    let address = opts.address.clone();
    shared.set_message(format!("connecting to Milvus at {address}"));
    tracing::info!(shard = %shared.shard, %address, database = %opts.database, "connecting to Milvus");
    let client = MilvusClient::connect(opts)
        .await
        .map_err(|e| format!("cannot connect to Milvus at {address}: {e}"))?;
    let truth = match ground_truth {
        Some(path) => {
            shared.set_message(format!("reading ground truth {}", path.display()));
            let text = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read ground truth {}: {e}", path.display()))?;
            let truth: GroundTruth = serde_json::from_slice(&text)
                .map_err(|e| format!("{} is not valid ground truth: {e}", path.display()))?;
            check_ground_truth(&truth, spec)
                .map_err(|e| format!("ground truth {} {e}", path.display()))?;
            Some(Arc::new(truth))
        }
        None if spec.recall.sample_queries > 0 => {
            shared.set_message(format!(
                "computing ground truth: {} queries × top {} over {} rows",
                spec.recall.sample_queries, spec.recall.top_k, spec.data.rows
            ));
            let truth = crate::prepare::compute_ground_truth(spec, 0, false)
                .await
                .map_err(|e| format!("cannot compute ground truth: {e}"))?;
            Some(Arc::new(truth))
        }
        None => None,
    };
    let plan = load::shard_plan(spec, shared.shard.index, shared.shard.count, truth);
    Ok(Ready {
        client,
        plan: Arc::new(plan),
    })
}

/// Completes on the first SIGTERM or SIGINT; never when the handlers cannot be installed.
async fn termination() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// `stampede worker`: serves one shard until it is stopped or its linger ends. Exit 0 after a
/// run (finished, stopped or terminated); an error (exit 2) when the manifest, shard or listen
/// address is wrong or setup failed.
pub async fn run(opts: WorkerOptions) -> Result<ExitCode, CliError> {
    let st = crate::spec::load_manifest(&opts.plan)?;
    let spec = st.spec;
    let shard =
        ShardIndex::resolve(opts.shard, |k| std::env::var(k).ok()).map_err(CliError::Runtime)?;
    let (changed, mut changed_rx) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        shard,
        stages: spec.stages.len(),
        request_timeout: spec.workload.request_timeout.get(),
        inner: Mutex::new(Inner {
            state: WorkerState::Idle,
            message: "starting".to_string(),
            ready: None,
            run: None,
            stop_reason: None,
            exit: false,
            ended_at: None,
        }),
        changed,
    });

    let incoming = tonic::transport::server::TcpIncoming::bind(opts.listen).map_err(|e| {
        CliError::Runtime(format!(
            "cannot listen on {}: {e}; choose another address with --listen",
            opts.listen
        ))
    })?;
    let local = incoming
        .local_addr()
        .map_err(|e| CliError::Runtime(format!("cannot read the listen address: {e}")))?;
    let service = WorkerServer::new(WorkerService {
        shared: Arc::clone(&shared),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown_rx.await;
            }),
    );
    tracing::info!(shard = %shard, address = %local, "worker shard {shard} listening on {local}");
    // Stdout carries the bound address for whoever started the worker (port 0 picks one).
    println!("worker shard {shard} listening on {local}");

    tokio::spawn(setup(
        Arc::clone(&shared),
        spec,
        opts.target,
        opts.ground_truth,
    ));

    let terminate = termination();
    tokio::pin!(terminate);
    let mut term_deadline: Option<Instant> = None;
    loop {
        let (state, exit, ended_at) = {
            let inner = shared.lock();
            (inner.state, inner.exit, inner.ended_at)
        };
        if exit {
            break;
        }
        let linger = match state {
            WorkerState::Finished => Some(opts.linger),
            WorkerState::Failed => Some(opts.linger.min(FAILED_LINGER)),
            WorkerState::Idle | WorkerState::Running => None,
        };
        let deadline = [linger.zip(ended_at).map(|(l, t)| t + l), term_deadline]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            r = changed_rx.changed() => {
                if r.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                tracing::info!(shard = %shard, %state, "linger over; exiting");
                break;
            }
            signal = &mut terminate, if term_deadline.is_none() => {
                let grace = opts.linger.min(TERM_GRACE);
                term_deadline = Some(Instant::now() + grace);
                if state == WorkerState::Idle {
                    tracing::info!(shard = %shard, "{signal} before Start; exiting");
                    break;
                }
                shared.stop_load(signal);
                tracing::info!(shard = %shard, "{signal}: serving the final pull for up to {grace:?}");
            }
        }
    }

    // Stop a load still running (a Stop while idle, linger over) before leaving.
    shared.stop_load("the worker exits");
    let _ = shutdown_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Err(e))) => tracing::warn!("gRPC server ended with an error: {e}"),
        Ok(Err(e)) => tracing::warn!("gRPC server task failed: {e}"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    let inner = shared.lock();
    if inner.state == WorkerState::Failed {
        return Err(CliError::Runtime(format!(
            "worker shard {shard} failed: {}",
            inner.message
        )));
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Client side, for the controller.

/// Which worker an error is about: its address, and its shard when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRef {
    /// Shard index, when the caller said (see [`WorkerError::for_shard`]).
    pub shard: Option<u32>,
    /// The address called.
    pub addr: String,
}

impl fmt::Display for WorkerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shard {
            Some(s) => write!(f, "worker shard {s} at {}", self.addr),
            None => write!(f, "worker at {}", self.addr),
        }
    }
}

/// Why a call to a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No connection, or the connection broke, or no answer in time.
    #[error("{worker} is unreachable: {message}")]
    Unreachable {
        /// The worker.
        worker: WorkerRef,
        /// The cause chain, e.g. "tcp connect error: Connection refused (os error 111)".
        message: String,
    },
    /// The address cannot be called.
    #[error("`{addr}` is not a worker address ({message}); use host:port, e.g. 10.0.0.5:7070")]
    BadAddress {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        message: String,
    },
    /// The worker answered the call with an error (e.g. a conflicting Start).
    #[error("{worker} refused {call} ({code:?}): {message}")]
    Refused {
        /// The worker.
        worker: WorkerRef,
        /// `Start`, `Snapshot` or `Stop`.
        call: &'static str,
        /// gRPC status code.
        code: Code,
        /// The worker's explanation.
        message: String,
    },
    /// The worker answered with something this version cannot read.
    #[error(
        "{worker} sent a reply that cannot be read: {message}; check that the worker and the controller run the same stampede version"
    )]
    BadReply {
        /// The worker.
        worker: WorkerRef,
        /// What is wrong.
        message: String,
    },
}

impl WorkerError {
    /// The same error, naming the worker's shard in its message.
    pub fn for_shard(mut self, shard: u32) -> Self {
        match &mut self {
            WorkerError::Unreachable { worker, .. }
            | WorkerError::Refused { worker, .. }
            | WorkerError::BadReply { worker, .. } => worker.shard = Some(shard),
            WorkerError::BadAddress { .. } => {}
        }
        self
    }

    /// Whether the worker could not be reached at all (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, WorkerError::Unreachable { .. })
    }

    fn from_status(addr: &str, call: &'static str, status: Status) -> Self {
        let worker = WorkerRef {
            shard: None,
            addr: addr.to_string(),
        };
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                let mut message = status.message().to_string();
                let mut source = std::error::Error::source(&status);
                while let Some(s) = source {
                    let text = s.to_string();
                    if !message.contains(&text) {
                        message = if message.is_empty() {
                            text
                        } else {
                            format!("{message}: {text}")
                        };
                    }
                    source = s.source();
                }
                if status.code() == Code::DeadlineExceeded {
                    message = format!("no answer within {CALL_TIMEOUT:?} ({message})");
                }
                WorkerError::Unreachable { worker, message }
            }
            code => WorkerError::Refused {
                worker,
                call,
                code,
                message: status.message().to_string(),
            },
        }
    }
}

/// Everything a `Snapshot` pull returns.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    /// What the worker is doing.
    pub state: WorkerState,
    /// Detail: progress of setup, why it stopped, why it failed.
    pub message: String,
    /// Whether a Start would be accepted now.
    pub ready: bool,
    /// The worker's shard.
    pub shard: ShardIndex,
    /// The accepted start instant (unix ms), once started.
    pub start_unix_ms: Option<i64>,
    /// Cumulative measurements so far.
    pub snapshot: Snapshot,
}

/// What a worker answered to Start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The instant it runs from (unix ms).
    pub start_unix_ms: i64,
    /// How late the Start arrived: the stages began this much after the instant.
    pub late: Duration,
    /// The worker's sentence.
    pub message: String,
}

/// What a worker answered to Stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// State when it answered.
    pub state: WorkerState,
    /// Whether it exits now (no load was running).
    pub exiting: bool,
    /// The worker's sentence.
    pub message: String,
}

/// A gRPC URI for `addr` (`host:port`, or already `http://host:port`).
fn worker_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

async fn connect(addr: &str) -> Result<WorkerClient<Channel>, WorkerError> {
    let endpoint = Endpoint::from_shared(worker_uri(addr))
        .map_err(|e| WorkerError::BadAddress {
            addr: addr.to_string(),
            message: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| WorkerError::Unreachable {
            worker: WorkerRef {
                shard: None,
                addr: addr.to_string(),
            },
            message: cause_chain(&e),
        })?;
    Ok(WorkerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// `e: cause: cause…`, skipping tonic's uninformative "transport error" top level.
fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // hyper repeats a cause's text in its wrapper.
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.len() > 1 && parts[0] == "transport error" {
        parts.remove(0);
    }
    parts.join(": ")
}

/// Pulls a worker's state and cumulative snapshot.
pub async fn pull_status(addr: &str) -> Result<WorkerStatus, WorkerError> {
    let mut client = connect(addr).await?;
    let reply = client
        .snapshot(pb::SnapshotRequest {})
        .await
        .map_err(|s| WorkerError::from_status(addr, "Snapshot", s))?
        .into_inner();
    let bad = |message: String| WorkerError::BadReply {
        worker: WorkerRef {
            shard: Some(reply.shard),
            addr: addr.to_string(),
        },
        message,
    };
    let state: WorkerState = reply.state.parse().map_err(bad)?;
    let shard = ShardIndex::new(reply.shard, reply.shards).map_err(bad)?;
    let snapshot = decode_snapshot(&reply.snapshot_json_gz).map_err(bad)?;
    Ok(WorkerStatus {
        state,
        message: reply.message,
        ready: reply.ready,
        shard,
        start_unix_ms: (reply.start_unix_ms > 0).then_some(reply.start_unix_ms),
        snapshot,
    })
}

/// Pulls a worker's state and cumulative snapshot (see [`pull_status`] for the rest).
pub async fn pull_snapshot(addr: &str) -> Result<(WorkerState, Snapshot), WorkerError> {
    let s = pull_status(addr).await?;
    Ok((s.state, s.snapshot))
}

/// Tells a worker to begin its stages at `start_unix_ms` (milliseconds since the Unix epoch).
pub async fn start_worker(addr: &str, start_unix_ms: i64) -> Result<Started, WorkerError> {
    let mut client = connect(addr).await?;
    let reply = client
        .start(pb::StartRequest { start_unix_ms })
        .await
        .map_err(|s| WorkerError::from_status(addr, "Start", s))?
        .into_inner();
    Ok(Started {
        start_unix_ms: reply.start_unix_ms,
        late: Duration::from_millis(u64::try_from(reply.late_ms).unwrap_or(0)),
        message: reply.message,
    })
}

/// Tells a worker to stop its load early, or, when none runs, to exit.
pub async fn stop_worker(addr: &str) -> Result<Stopped, WorkerError> {
    let mut client = connect(addr).await?;
    let reply = client
        .stop(pb::StopRequest {})
        .await
        .map_err(|s| WorkerError::from_status(addr, "Stop", s))?
        .into_inner();
    let state = reply
        .state
        .parse()
        .map_err(|message| WorkerError::BadReply {
            worker: WorkerRef {
                shard: None,
                addr: addr.to_string(),
            },
            message,
        })?;
    Ok(Stopped {
        state,
        exiting: reply.exiting,
        message: reply.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{SecondSample, Window};

    #[test]
    fn shards_parse_from_the_flag_and_are_range_checked() {
        assert_eq!(
            "2/5".parse::<ShardIndex>(),
            Ok(ShardIndex { index: 2, count: 5 })
        );
        assert_eq!(
            "5/5".parse::<ShardIndex>().unwrap_err(),
            "shard index 5 is out of range for 5 shard(s): indexes run from 0 to 4"
        );
        assert_eq!(
            "0/0".parse::<ShardIndex>().unwrap_err(),
            "the number of shards must be at least 1"
        );
        assert_eq!(
            "3".parse::<ShardIndex>().unwrap_err(),
            "`3` is not a shard: write INDEX/COUNT, e.g. 0/4"
        );
        assert_eq!(ShardIndex { index: 1, count: 3 }.to_string(), "1/3");
    }

    #[test]
    fn the_flag_wins_over_the_environment_which_needs_both_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both = env(&[("JOB_COMPLETION_INDEX", "3"), ("STAMPEDE_SHARDS", "4")]);
        assert_eq!(
            ShardIndex::resolve(None, both),
            Ok(ShardIndex { index: 3, count: 4 })
        );
        let flag = ShardIndex { index: 0, count: 1 };
        assert_eq!(ShardIndex::resolve(Some(flag), both), Ok(flag));
        assert_eq!(
            ShardIndex::resolve(None, env(&[("JOB_COMPLETION_INDEX", "3")])).unwrap_err(),
            "JOB_COMPLETION_INDEX=3 is set but STAMPEDE_SHARDS (the number of shards) is not; set it to the worker Job's completions, or pass --shard 3/N"
        );
        assert_eq!(
            ShardIndex::resolve(None, env(&[("STAMPEDE_SHARDS", "2")])).unwrap_err(),
            "STAMPEDE_SHARDS=2 is set but JOB_COMPLETION_INDEX is not; run the worker in an Indexed Job, or pass --shard I/2"
        );
        assert_eq!(
            ShardIndex::resolve(
                None,
                env(&[("JOB_COMPLETION_INDEX", "x"), ("STAMPEDE_SHARDS", "2")])
            )
            .unwrap_err(),
            "JOB_COMPLETION_INDEX=x is not a non-negative whole number"
        );
        assert_eq!(
            ShardIndex::resolve(
                None,
                env(&[("JOB_COMPLETION_INDEX", "2"), ("STAMPEDE_SHARDS", "2")])
            )
            .unwrap_err(),
            "shard index 2 is out of range for 2 shard(s): indexes run from 0 to 1"
        );
        assert!(
            ShardIndex::resolve(None, env(&[]))
                .unwrap_err()
                .starts_with("no shard given: pass --shard I/N")
        );
    }

    #[test]
    fn a_start_ahead_waits_and_a_start_in_the_past_begins_now_and_says_how_late() {
        let now = Instant::now();
        let wall_us = 1_700_000_000_000_000;
        let (at, late) = start_instant(1_700_000_001_500, wall_us, now).unwrap();
        assert_eq!(at - now, Duration::from_millis(1500));
        assert_eq!(late, Duration::ZERO);
        let (at, late) = start_instant(1_699_999_999_750, wall_us, now).unwrap();
        assert_eq!(at, now);
        assert_eq!(late, Duration::from_millis(250));
        // Sub-millisecond wall time is kept: 0.4 ms before the instant.
        let (at, _) = start_instant(1_700_000_000_001, wall_us + 600, now).unwrap();
        assert_eq!(at - now, Duration::from_micros(400));
        // Seconds instead of milliseconds.
        assert_eq!(
            start_instant(1_700_000_000, wall_us, now).unwrap_err(),
            "start_unix_ms 1700000000 is more than 24 h away from this worker's clock (1700000000000 ms); send milliseconds since the Unix epoch"
        );
        assert!(start_instant(0, wall_us, now).is_err());
    }

    #[test]
    fn snapshots_survive_the_wire_encoding() {
        let mut w = Window::default();
        w.op_mut("search").record_success(1234, 5);
        w.op_mut("search").record_failure(99, "timeout", "slow");
        let snap = Snapshot {
            shard: 1,
            shards: 2,
            stages: vec![StageMeasurement {
                stage: 0,
                steady: w.clone(),
                steady_seconds: 2.0,
                complete: true,
                ..StageMeasurement::default()
            }],
            seconds: vec![SecondSample {
                second: 0,
                stage: 0,
                window: w,
            }],
            client_cpu: vec![],
        };
        let bytes = encode_snapshot(&snap).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        assert_eq!(decode_snapshot(&bytes).unwrap(), snap);
        assert!(
            decode_snapshot(b"not gzip")
                .unwrap_err()
                .starts_with("snapshot is not valid gzip: ")
        );
    }

    #[test]
    fn states_round_trip_their_wire_names() {
        for s in [
            WorkerState::Idle,
            WorkerState::Running,
            WorkerState::Finished,
            WorkerState::Failed,
        ] {
            assert_eq!(s.as_str().parse::<WorkerState>(), Ok(s));
        }
        assert!("done".parse::<WorkerState>().is_err());
    }

    #[test]
    fn errors_name_the_worker_and_its_shard_when_known() {
        let e = WorkerError::Unreachable {
            worker: WorkerRef {
                shard: None,
                addr: "10.0.0.5:7070".into(),
            },
            message: "tcp connect error: Connection refused (os error 111)".into(),
        };
        assert_eq!(
            e.to_string(),
            "worker at 10.0.0.5:7070 is unreachable: tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(
            e.for_shard(2).to_string(),
            "worker shard 2 at 10.0.0.5:7070 is unreachable: tcp connect error: Connection refused (os error 111)"
        );
        let e = WorkerError::from_status(
            "w:7070",
            "Start",
            Status::failed_precondition("already started"),
        );
        assert_eq!(
            e.to_string(),
            "worker at w:7070 refused Start (FailedPrecondition): already started"
        );
        assert!(!e.is_unreachable());
        assert!(
            WorkerError::from_status("w:7070", "Snapshot", Status::unavailable("gone"))
                .is_unreachable()
        );
    }

    #[test]
    fn ground_truth_of_other_data_is_refused() {
        let spec: StressTestSpec = crate::spec::parse_manifest(
            "apiVersion: stampede.dev/v1alpha1\nkind: StressTest\nmetadata: {name: t}\nspec:\n  target: {address: \"127.0.0.1:19530\"}\n  collection: {name: c, dimension: 4}\n  data: {rows: 100, seed: 7}\n  stages: [{duration: 1s, users: 1, spawnRate: 1}]\n",
            "test",
        )
        .unwrap()
        .spec;
        let truth = GroundTruth {
            metric: "L2".into(),
            top_k: 10,
            rows: 100,
            seed: 7,
            ids: vec![],
            distances: vec![],
        };
        assert_eq!(check_ground_truth(&truth, &spec), Ok(()));
        let other = GroundTruth {
            metric: "IP".into(),
            rows: 50,
            seed: 8,
            ..truth
        };
        assert_eq!(
            check_ground_truth(&other, &spec).unwrap_err(),
            "was computed for other data: metric IP (the spec has L2), 50 rows (the spec has 100), seed 8 (the spec has 7); run `stampede prepare` with this manifest again"
        );
    }
}
