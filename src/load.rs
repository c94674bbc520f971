//! The load engine: runs one shard's share of a StressTest's stages against Milvus — closed model
//! (users looping request → wait) or open model (arrivals at a fixed rate, latency from the
//! intended send time) — and records every request into cumulative, mergeable measurements.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::data::{GroundTruth, ScalarGenerator, fill_filter, recall_at_k};
use crate::metrics::{CpuSample, SecondSample, Snapshot, StageMeasurement, Window};
use crate::milvus::{ConsistencyLevel, MilvusClient, MilvusError, SearchTemplate};
use crate::spec::{LoadModel, StressTestSpec};

/// Query vectors kept in memory for searches that have no ground truth.
const QUERY_POOL: usize = 1024;
/// A request sent this much later than intended (open model) counts as late.
const LATE_AFTER: Duration = Duration::from_millis(10);
/// The key under which per-second windows record every operation.
pub const ALL_OPS: &str = "all";
/// How often in-flight requests are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What one operation sends.
#[derive(Debug, Clone)]
pub enum OpKind {
    /// A vector search of `nq` query vectors, optionally filtered.
    Search {
        /// Prebuilt request parts.
        template: SearchTemplate,
        /// Query vectors per request.
        nq: usize,
        /// Results per query.
        top_k: usize,
        /// Filter template, `{field}` filled per request.
        filter: Option<String>,
    },
    /// A scalar query.
    Query {
        /// Expression template.
        expr: String,
        /// Row limit.
        limit: u64,
        /// Returned fields.
        output_fields: Vec<String>,
    },
}

/// One weighted operation.
#[derive(Debug, Clone)]
pub struct OpPlan {
    /// Name in the results.
    pub name: String,
    /// Relative weight.
    pub weight: u32,
    /// What it sends.
    pub kind: OpKind,
}

/// One stage, as this shard runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    /// Stage length, ramp included.
    pub duration: Duration,
    /// Closed model: this shard's users.
    pub users: u32,
    /// Closed model: this shard's users started per second.
    pub spawn_rate: f64,
    /// Open model: this shard's requests per second.
    pub rate: f64,
}

/// Everything one shard needs to run its share of the load.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    /// This shard's index.
    pub shard: u32,
    /// Number of shards.
    pub shards: u32,
    /// Closed or open.
    pub model: LoadModel,
    /// Stages in order.
    pub stages: Vec<StagePlan>,
    /// Weighted operations.
    pub ops: Vec<OpPlan>,
    /// Closed model: shortest wait between requests.
    pub wait_min: Duration,
    /// Closed model: longest wait.
    pub wait_max: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Open model: this shard's bound on requests in flight.
    pub max_in_flight: u64,
    /// Collection.
    pub collection: String,
    /// Query pool, row-major; the first `truth.ids.len()` have ground truth.
    pub queries: Arc<Vec<f32>>,
    /// Vector dimension.
    pub dim: usize,
    /// Ground truth of the first queries of the pool.
    pub truth: Option<Arc<GroundTruth>>,
    /// Share of unfiltered searches that use ground-truth queries.
    pub recall_share: f64,
    /// Scalar generators for filter templates.
    pub scalars: Arc<Vec<ScalarGenerator>>,
    /// Seed of this shard's random choices.
    pub seed: u64,
    /// Whether this shard samples the process's CPU: once per process, since in-process shards
    /// share one process and summing their samples would count it several times.
    pub sample_cpu: bool,
}

/// `total` split over `shards`: shard i gets floor(total/n), plus one for the first total%n.
pub fn share(total: u32, shard: u32, shards: u32) -> u32 {
    let n = shards.max(1);
    total / n + u32::from(shard < total % n)
}

/// Resolves a spec into the plan of shard `shard` of `shards` (pure).
pub fn shard_plan(
    spec: &StressTestSpec,
    shard: u32,
    shards: u32,
    truth: Option<Arc<GroundTruth>>,
) -> ShardPlan {
    let n = shards.max(1);
    let consistency = crate::prepare::consistency_of(spec);
    let c = &spec.collection;
    let ops = spec
        .workload
        .operations
        .iter()
        .map(|op| OpPlan {
            name: op.name.clone(),
            weight: op.weight,
            kind: match (&op.search, &op.query) {
                (Some(s), _) => OpKind::Search {
                    template: SearchTemplate::new(
                        &c.name,
                        &c.vector_field,
                        c.metric.as_str(),
                        s.top_k as usize,
                        &s.params.clone().into_iter().collect(),
                        s.output_fields.clone(),
                        consistency,
                    ),
                    nq: s.nq.max(1) as usize,
                    top_k: s.top_k as usize,
                    filter: s.filter.clone(),
                },
                (None, Some(q)) => OpKind::Query {
                    expr: q.expr.clone(),
                    limit: q.limit,
                    output_fields: q.output_fields.clone(),
                },
                (None, None) => OpKind::Query {
                    expr: String::new(),
                    limit: 1,
                    output_fields: Vec::new(),
                },
            },
        })
        .collect();
    let stages = spec
        .stages
        .iter()
        .map(|s| StagePlan {
            duration: s.duration.get(),
            users: share(s.users.unwrap_or(0), shard, n),
            spawn_rate: s.spawn_rate.unwrap_or(0.0) / f64::from(n),
            rate: s.rate.unwrap_or(0.0) / f64::from(n),
        })
        .collect();
    let vectors = crate::prepare::vector_generator(spec);
    let with_truth = truth.as_ref().map_or(0, |t| t.ids.len());
    let queries = vectors.queries(with_truth.max(QUERY_POOL));
    ShardPlan {
        shard,
        shards: n,
        model: spec.workload.model,
        stages,
        ops,
        wait_min: spec.workload.wait_time.min.get(),
        wait_max: spec.workload.wait_time.max.get(),
        request_timeout: spec.workload.request_timeout.get(),
        max_in_flight: u64::from(share(spec.workload.max_in_flight, shard, n).max(1)),
        collection: c.name.clone(),
        queries: Arc::new(queries),
        dim: c.dimension as usize,
        truth,
        recall_share: spec.recall.share,
        scalars: Arc::new(crate::prepare::scalar_generators(spec)),
        seed: spec.data.seed ^ (u64::from(shard) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        sample_cpu: true,
    }
}

/// Where requests are being recorded right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    stage: usize,
    steady: bool,
}

struct RecorderState {
    snapshot: Snapshot,
    position: Option<Position>,
    users: u64,
}

/// Cumulative measurements of one shard, shared by its request tasks; `snapshot()` may be taken
/// at any time (live progress, the controller's pulls) and is complete up to that instant.
pub struct Recorder {
    state: Mutex<RecorderState>,
    in_flight: AtomicU64,
    t0: Instant,
}

impl Recorder {
    /// A recorder whose per-second series count from `t0`.
    pub fn new(shard: u32, shards: u32, stages: usize, t0: Instant) -> Self {
        let snapshot = Snapshot {
            shard,
            shards,
            stages: (0..stages)
                .map(|stage| StageMeasurement {
                    stage,
                    ..StageMeasurement::default()
                })
                .collect(),
            ..Snapshot::default()
        };
        Recorder {
            state: Mutex::new(RecorderState {
                snapshot,
                position: None,
                users: 0,
            }),
            in_flight: AtomicU64::new(0),
            t0,
        }
    }

    // A poisoned lock only means another task panicked mid-record; the counts are still usable.
    fn lock(&self) -> MutexGuard<'_, RecorderState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of everything measured so far.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot.clone()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The measurements of one second since the start, if any request completed in it.
    pub fn second(&self, second: u64) -> Option<SecondSample> {
        let st = self.lock();
        st.snapshot
            .seconds
            .iter()
            .rev()
            .take(4)
            .find(|s| s.second == second)
            .cloned()
    }

    /// The stage and phase being recorded, if the test has started.
    pub fn position(&self) -> Option<(usize, bool)> {
        self.lock().position.map(|p| (p.stage, p.steady))
    }

    /// A copy of the per-stage measurements so far, without the per-second timeline: cheap
    /// enough for the live dashboard to take every second of a long test.
    pub fn stages(&self) -> Vec<StageMeasurement> {
        self.lock().snapshot.stages.clone()
    }

    /// Users running now (closed model) or this shard's target rate (open model).
    pub fn users(&self) -> u64 {
        self.lock().users
    }

    fn set_position(&self, stage: usize, steady: bool) {
        self.lock().position = Some(Position { stage, steady });
    }

    fn set_users(&self, users: u64) {
        self.lock().users = users;
    }

    fn set_stage_times(&self, stage: usize, ramp: f64, steady: f64, complete: bool) {
        let mut st = self.lock();
        if let Some(m) = st.snapshot.stages.get_mut(stage) {
            m.ramp_seconds = ramp;
            m.steady_seconds = steady;
            m.complete = complete;
        }
    }

    /// Applies `f` to the current stage window (under the operation's name) and to the current
    /// second's window (under [`ALL_OPS`]: the timeline needs totals only, and one histogram per
    /// second instead of one per operation keeps a long test's memory small).
    fn with_windows(&self, at: Instant, op: &str, f: impl Fn(&mut Window, &str)) {
        let second = at.saturating_duration_since(self.t0).as_secs();
        let mut st = self.lock();
        let Some(pos) = st.position else { return };
        let users = st.users;
        if let Some(m) = st.snapshot.stages.get_mut(pos.stage) {
            let w = if pos.steady {
                &mut m.steady
            } else {
                &mut m.ramp
            };
            f(w, op);
            w.users = users;
        }
        let seconds = &mut st.snapshot.seconds;
        if seconds.last().is_none_or(|s| s.second != second) {
            // Completions arrive in time order except for lock races of a few µs; a late one
            // joins the newest second rather than reopening an old one.
            if seconds.last().is_none_or(|s| s.second < second) {
                // The newest second is finished: keep only its non-empty buckets.
                if let Some(done) = seconds.last_mut() {
                    done.window.compact();
                }
                seconds.push(SecondSample {
                    second,
                    stage: pos.stage,
                    window: Window::default(),
                });
            }
        }
        if let Some(s) = seconds.last_mut() {
            f(&mut s.window, ALL_OPS);
            s.window.users = users;
        }
    }

    fn record_success(&self, op: &str, latency: Duration, queries: u64, recall: Option<f64>) {
        let us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        self.with_windows(Instant::now(), op, |w, op| {
            let o = w.op_mut(op);
            o.record_success(us, queries);
            if let Some(r) = recall {
                o.record_recall(r);
            }
        });
    }

    fn record_failure(&self, op: &str, latency: Duration, kind: &str, message: &str) {
        let us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        self.with_windows(Instant::now(), op, |w, op| {
            w.op_mut(op).record_failure(us, kind, message)
        });
    }

    fn record_late(&self, op: &str) {
        self.with_windows(Instant::now(), op, |w, op| w.op_mut(op).late += 1);
    }

    fn record_dropped(&self, op: &str) {
        self.with_windows(Instant::now(), op, |w, op| w.op_mut(op).dropped += 1);
    }

    fn sample_in_flight(&self) {
        let n = self.in_flight();
        self.with_windows(Instant::now(), ALL_OPS, |w, _| w.sample_in_flight(n));
    }

    fn record_cpu(&self, sample: CpuSample) {
        self.lock().snapshot.client_cpu.push(sample);
    }
}

/// Runs a shard's stages from `start` on, recording into `recorder`. Returns when the last stage
/// ends or `stop` turns true (then the current stage is left incomplete). Requests still in
/// flight at the end get up to the request timeout to finish.
pub async fn run_shard(
    client: MilvusClient,
    plan: Arc<ShardPlan>,
    recorder: Arc<Recorder>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) {
    // The client bounds every call by the workload's request timeout (a timeout is a failure of
    // kind `timeout`), so a request carries one timer, not two.
    let client = client.with_request_timeout(plan.request_timeout);
    client.warm_up().await;
    tokio::time::sleep_until(start.into()).await;
    let sampler = tokio::spawn(sample_loop(
        Arc::clone(&recorder),
        stop.clone(),
        plan.sample_cpu,
    ));
    match plan.model {
        LoadModel::Closed => run_closed(&client, &plan, &recorder, start, &mut stop).await,
        LoadModel::Open => run_open(&client, &plan, &recorder, start, &mut stop).await,
    }
    sampler.abort();
}

async fn sample_loop(recorder: Arc<Recorder>, stop: watch::Receiver<bool>, sample_cpu: bool) {
    let mut cpu = CpuMeter::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut n = 0u64;
    while !*stop.borrow() {
        tick.tick().await;
        recorder.sample_in_flight();
        n += 1;
        if sample_cpu
            && n.is_multiple_of(10)
            && let Some((used, available)) = cpu.sample()
        {
            let second = recorder.t0.elapsed().as_secs();
            let stage = recorder.position().map_or(0, |p| p.0);
            recorder.record_cpu(CpuSample {
                second,
                stage,
                cores_used: used,
                cores_available: available,
            });
        }
    }
}

/// Sleeps until `deadline` unless `stop` turns true first; returns whether it stopped.
async fn sleep_or_stop(deadline: Instant, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep_until(deadline.into()) => None,
        r = stop.wait_for(|s| *s) => Some(r.is_ok()),
    };
    stopped.unwrap_or_else(|| *stop.borrow())
}

struct User {
    active: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

async fn run_closed(
    client: &MilvusClient,
    plan: &Arc<ShardPlan>,
    recorder: &Arc<Recorder>,
    start: Instant,
    stop: &mut watch::Receiver<bool>,
) {
    let mut users: Vec<User> = Vec::new();
    let mut next_user_id = 0u64;
    let mut stage_start = start;
    for (k, stage) in plan.stages.iter().enumerate() {
        let stage_end = stage_start + stage.duration;
        recorder.set_position(k, false);
        let from = users.len() as f64;
        let target = f64::from(stage.users);
        let ramp = if stage.spawn_rate > 0.0 {
            Duration::from_secs_f64((target - from).abs() / stage.spawn_rate)
        } else {
            Duration::ZERO
        };
        let ramp_end = (stage_start + ramp).min(stage_end);
        let mut stopped = false;
        loop {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(stage_start).as_secs_f64();
            let desired = if now >= ramp_end {
                target
            } else if target >= from {
                (from + stage.spawn_rate * elapsed).min(target).floor()
            } else {
                (from - stage.spawn_rate * elapsed).max(target).ceil()
            } as usize;
            while users.len() < desired {
                let active = Arc::new(AtomicBool::new(true));
                let task = tokio::spawn(user_loop(
                    client.clone(),
                    Arc::clone(plan),
                    Arc::clone(recorder),
                    Arc::clone(&active),
                    next_user_id,
                ));
                next_user_id += 1;
                users.push(User { active, task });
            }
            while users.len() > desired {
                if let Some(u) = users.pop() {
                    u.active.store(false, Ordering::Relaxed);
                }
            }
            recorder.set_users(users.len() as u64);
            if now >= ramp_end {
                break;
            }
            let next = (now + Duration::from_millis(50)).min(ramp_end);
            if sleep_or_stop(next, stop).await {
                stopped = true;
                break;
            }
        }
        let ramp_secs = Instant::now()
            .saturating_duration_since(stage_start)
            .as_secs_f64();
        let steady_start = Instant::now();
        if !stopped && steady_start < stage_end {
            recorder.set_position(k, true);
            stopped = sleep_or_stop(stage_end, stop).await;
        }
        let steady_secs = if steady_start < stage_end {
            Instant::now()
                .saturating_duration_since(steady_start)
                .as_secs_f64()
        } else {
            0.0
        };
        recorder.set_stage_times(k, ramp_secs, steady_secs, !stopped);
        if stopped {
            break;
        }
        stage_start = stage_end;
    }
    for u in &users {
        u.active.store(false, Ordering::Relaxed);
    }
    let grace = Instant::now() + plan.request_timeout + Duration::from_millis(100);
    for u in users {
        let remaining = grace.saturating_duration_since(Instant::now());
        let abort = u.task.abort_handle();
        if tokio::time::timeout(remaining, u.task).await.is_err() {
            abort.abort();
        }
    }
    recorder.set_users(0);
}

async fn user_loop(
    client: MilvusClient,
    plan: Arc<ShardPlan>,
    recorder: Arc<Recorder>,
    active: Arc<AtomicBool>,
    user: u64,
) {
    let mut rng = SmallRng::seed_from_u64(plan.seed ^ user.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let picker = WeightedPicker::new(&plan.ops);
    while active.load(Ordering::Relaxed) {
        let op = picker.pick(&mut rng);
        let intended = Instant::now();
        execute(&client, &plan, &recorder, op, &mut rng, intended).await;
        let wait = random_wait(&mut rng, plan.wait_min, plan.wait_max);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        } else {
            // Yield so that a zero-wait user cannot starve the stage driver on one thread.
            tokio::task::yield_now().await;
        }
    }
}

fn random_wait(rng: &mut SmallRng, min: Duration, max: Duration) -> Duration {
    if max <= min {
        return min;
    }
    let span = (max - min).as_micros() as u64;
    min + Duration::from_micros(rng.random_range(0..=span))
}

async fn run_open(
    client: &MilvusClient,
    plan: &Arc<ShardPlan>,
    recorder: &Arc<Recorder>,
    start: Instant,
    stop: &mut watch::Receiver<bool>,
) {
    let mut rng = SmallRng::seed_from_u64(plan.seed);
    let picker = WeightedPicker::new(&plan.ops);
    let mut stage_start = start;
    let mut tasks = tokio::task::JoinSet::new();
    'stages: for (k, stage) in plan.stages.iter().enumerate() {
        recorder.set_position(k, true);
        recorder.set_users(stage.rate.round() as u64);
        let stage_end = stage_start + stage.duration;
        let mut stopped = false;
        if stage.rate > 0.0 {
            let interval = 1.0 / stage.rate;
            // Arrivals at n/rate for n = 0.. while before the stage end; counted up front so
            // float rounding of the last instant cannot add or lose one.
            let arrivals = (stage.duration.as_secs_f64() * stage.rate - 1e-9)
                .ceil()
                .max(0.0) as u64;
            for n in 0..arrivals {
                let intended = stage_start + Duration::from_secs_f64(n as f64 * interval);
                if intended > Instant::now() && sleep_or_stop(intended, stop).await {
                    stopped = true;
                    break;
                }
                if *stop.borrow() {
                    stopped = true;
                    break;
                }
                let op = picker.pick(&mut rng);
                if recorder.in_flight() >= plan.max_in_flight {
                    recorder.record_dropped(&plan.ops[op].name);
                } else {
                    let (client, plan, recorder) =
                        (client.clone(), Arc::clone(plan), Arc::clone(recorder));
                    let seed = rng.random::<u64>();
                    tasks.spawn(async move {
                        let mut rng = SmallRng::seed_from_u64(seed);
                        execute(&client, &plan, &recorder, op, &mut rng, intended).await;
                    });
                }
                // Reap finished tasks so the set does not grow for the whole test.
                while tasks.try_join_next().is_some() {}
            }
        } else if sleep_or_stop(stage_end, stop).await {
            stopped = true;
        }
        if !stopped && sleep_or_stop(stage_end, stop).await {
            stopped = true;
        }
        let secs = Instant::now()
            .saturating_duration_since(stage_start)
            .as_secs_f64();
        recorder.set_stage_times(k, 0.0, secs.min(stage.duration.as_secs_f64()), !stopped);
        if stopped {
            break 'stages;
        }
        stage_start = stage_end;
    }
    let grace = plan.request_timeout + Duration::from_millis(100);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tasks.abort_all();
    }
    recorder.set_users(0);
}

/// Picks operations by weight.
struct WeightedPicker {
    cumulative: Vec<u64>,
}

impl WeightedPicker {
    fn new(ops: &[OpPlan]) -> Self {
        let mut total = 0u64;
        let cumulative = ops
            .iter()
            .map(|o| {
                total += u64::from(o.weight);
                total
            })
            .collect();
        WeightedPicker { cumulative }
    }

    fn pick(&self, rng: &mut SmallRng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let x = rng.random_range(0..total);
        self.cumulative.partition_point(|&c| c <= x)
    }
}

/// Sends one request of operation `op` and records it; latency counts from `intended`.
async fn execute(
    client: &MilvusClient,
    plan: &ShardPlan,
    recorder: &Recorder,
    op: usize,
    rng: &mut SmallRng,
    intended: Instant,
) {
    let Some(spec) = plan.ops.get(op) else { return };
    recorder.in_flight.fetch_add(1, Ordering::Relaxed);
    if Instant::now().saturating_duration_since(intended) > LATE_AFTER {
        recorder.record_late(&spec.name);
    }
    let outcome = send(client, plan, spec, rng).await;
    let latency = Instant::now().saturating_duration_since(intended);
    recorder.in_flight.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Ok((queries, recall)) => recorder.record_success(&spec.name, latency, queries, recall),
        Err(e) => recorder.record_failure(&spec.name, latency, &e.kind(), &e.to_string()),
    }
}

/// Builds and sends the request; returns the queries it carried and its recall, if measured.
async fn send(
    client: &MilvusClient,
    plan: &ShardPlan,
    op: &OpPlan,
    rng: &mut SmallRng,
) -> Result<(u64, Option<f64>), MilvusError> {
    match &op.kind {
        OpKind::Search {
            template,
            nq,
            top_k,
            filter,
        } => {
            let pool = plan.queries.len() / plan.dim.max(1);
            let with_truth = plan.truth.as_ref().map_or(0, |t| t.ids.len()).min(pool);
            // Recall is only defined for unfiltered searches: ground truth ignores filters.
            let measure =
                filter.is_none() && with_truth > 0 && rng.random::<f64>() < plan.recall_share;
            let mut picks = Vec::with_capacity(*nq);
            let mut vectors = Vec::with_capacity(nq * plan.dim);
            for _ in 0..*nq {
                let q = if measure {
                    rng.random_range(0..with_truth)
                } else if pool > with_truth {
                    rng.random_range(with_truth..pool)
                } else {
                    rng.random_range(0..pool.max(1))
                };
                picks.push(q);
                let from = q * plan.dim;
                if let Some(v) = plan.queries.get(from..from + plan.dim) {
                    vectors.extend_from_slice(v);
                }
            }
            let expr = match filter {
                Some(t) => Some(fill_filter(t, &plan.scalars, rng.random::<u64>()).map_err(
                    |name| {
                        MilvusError::InvalidArgument(format!("filter names unknown field `{name}`"))
                    },
                )?),
                None => None,
            };
            let hits = client
                .search(template, &vectors, plan.dim, expr.as_deref())
                .await?;
            let recall = match (&plan.truth, measure) {
                (Some(truth), true) => {
                    let k = (*top_k).min(truth.top_k);
                    let mut sum = 0.0;
                    for (i, q) in picks.iter().enumerate() {
                        let found = hits.ids.get(i).map_or(&[][..], |v| v.as_slice());
                        let t = truth.ids.get(*q).map_or(&[][..], |v| v.as_slice());
                        sum += recall_at_k(found, t, k);
                    }
                    Some(sum / picks.len().max(1) as f64)
                }
                _ => None,
            };
            Ok((*nq as u64, recall))
        }
        OpKind::Query {
            expr,
            limit,
            output_fields,
        } => {
            let expr = fill_filter(expr, &plan.scalars, rng.random::<u64>()).map_err(|name| {
                MilvusError::InvalidArgument(format!("expression names unknown field `{name}`"))
            })?;
            client
                .query_once(
                    &plan.collection,
                    &expr,
                    output_fields,
                    Some(*limit),
                    plan_consistency(plan, op),
                )
                .await?;
            Ok((1, None))
        }
    }
}

fn plan_consistency(_plan: &ShardPlan, op: &OpPlan) -> ConsistencyLevel {
    match &op.kind {
        OpKind::Search { template, .. } => template.consistency(),
        OpKind::Query { .. } => ConsistencyLevel::Bounded,
    }
}

/// Measures this process's CPU use from /proc/self/stat, and the cores it may use (cgroup quota
/// or CPU count), so a saturated load generator can be told apart from a saturated server.
pub struct CpuMeter {
    last: Option<(Instant, f64)>,
    available: f64,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuMeter {
    /// A meter; the first `sample` only sets the baseline.
    pub fn new() -> Self {
        let mut m = CpuMeter {
            last: None,
            available: available_cores(),
        };
        m.last = process_cpu_seconds().map(|s| (Instant::now(), s));
        m
    }

    /// Cores used since the previous sample, and cores available.
    pub fn sample(&mut self) -> Option<(f64, f64)> {
        let now = Instant::now();
        let cpu = process_cpu_seconds()?;
        let result = self.last.map(|(t, c)| {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            ((cpu - c) / dt.max(1e-6), self.available)
        });
        self.last = Some((now, cpu));
        result
    }
}

/// User+system CPU seconds of this process (Linux; None elsewhere).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): 12th and 13th after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // /proc reports clock ticks of USER_HZ, which is 100 on every Linux ABI.
    Some((utime + stime) / 100.0)
}

/// Cores this process may use: the cgroup v2 CPU quota if set, else the CPU count.
pub fn available_cores() -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let quota = std::fs::read_to_string("/sys/fs/cgroup/cpu.max")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace();
            let q: f64 = it.next()?.parse().ok()?;
            let p: f64 = it.next()?.parse().ok()?;
            (p > 0.0).then_some(q / p)
        });
    quota.map_or(cpus, |q| q.min(cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_shared_so_that_the_shards_add_up() {
        assert_eq!(
            (0..3).map(|i| share(10, i, 3)).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        assert_eq!((0..4).map(|i| share(2, i, 4)).sum::<u32>(), 2);
        assert_eq!(share(5, 0, 0), 5);
    }

    #[test]
    fn a_recorder_keeps_finished_seconds_compact_and_the_current_one_dense() {
        let t0 = Instant::now();
        let r = Recorder::new(0, 1, 1, t0);
        r.set_position(0, true);
        let record = |at: Instant, us: u64| {
            r.with_windows(at, "search", |w, op| w.op_mut(op).record_success(us, 1));
        };
        for (second, us) in [(0, 900), (0, 1_500), (1, 2_000), (2, 40_000), (2, 41_000)] {
            record(t0 + Duration::from_millis(second * 1000 + 10), us);
        }
        let snap = r.snapshot();
        let latency = |i: usize| &snap.seconds[i].window.ops[ALL_OPS].latency;
        assert_eq!(snap.seconds.len(), 3);
        assert!(latency(0).is_compact() && latency(1).is_compact());
        assert!(!latency(2).is_compact());
        assert_eq!(
            (latency(0).count(), latency(1).count(), latency(2).count()),
            (2, 1, 2)
        );
        assert_eq!(latency(0).max_us(), 1_500);
        // The stage window is still recorded into, and holds everything.
        assert_eq!(snap.stages[0].steady.ops["search"].latency.count(), 5);
    }

    #[test]
    fn random_waits_stay_within_bounds() {
        let mut rng = SmallRng::seed_from_u64(1);
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(500));
        for _ in 0..1000 {
            let w = random_wait(&mut rng, min, max);
            assert!(w >= min && w <= max, "{w:?}");
        }
        assert_eq!(
            random_wait(&mut rng, Duration::ZERO, Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn process_cpu_time_is_readable_and_grows() {
        let a = process_cpu_seconds().unwrap();
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let b = process_cpu_seconds().unwrap();
        assert!(b > a, "{a} -> {b}");
        assert!(available_cores() >= 1.0);
    }
}
