//! The controller's I/O layer: watch StressTests and their Jobs/ConfigMaps, read the children
//! and the worker pods, pull the workers' snapshots, ask [`decide`] what to do, and do it
//! (server-side apply with one field manager, status through the status subresource, Events).
//! Every choice is made in [`decide`]; this file only reads and writes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::controller::builders::{self, Role};
use crate::controller::cleanup;
use crate::controller::decide::{
    self, ANNOTATION_START_UNIX_MS, Action, EventType, JobObserved, JobOutcome, Observed, Pull,
    ShardObserved, WorkerPod,
};
use crate::controller::leader;
use crate::controller::metrics::{self, Metrics};
use crate::controller::observe::{ClusterObserver, cluster_plan, lost_observation};
use crate::metrics::Snapshot;
use crate::spec::{Phase, StressTest, StressTestSpec};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "stampede-controller";
/// The pod annotation (and label) Kubernetes sets to an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// First retry after a failed reconcile; doubled per consecutive failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry interval after failed reconciles.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A clock: the controller reads time only through this, so tests can set it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// How `stampede controller` runs.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Image of the prepare and worker pods.
    pub image: String,
    /// Port the workers serve gRPC on.
    pub worker_port: u16,
    /// Watch only this namespace (all namespaces when None).
    pub namespace: Option<String>,
    /// Address of the /healthz, /readyz and /metrics server (None: no server).
    pub health_addr: Option<SocketAddr>,
    /// Address of the read-only web dashboard (None: no dashboard).
    pub dashboard_addr: Option<SocketAddr>,
    /// Leader election (None: this process leads alone).
    pub leader_election: Option<LeaderElection>,
    /// Node selector, tolerations and affinity of the prepare and worker pods.
    pub placement: builders::Placement,
}

/// Where the leader Lease lives.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease (the controller's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
}

/// Why the controller stopped or a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A call to the Kubernetes API failed.
    #[error(
        "{action} failed: {source}; check the controller's RBAC and that the API server is reachable"
    )]
    Kube {
        /// What was being done, e.g. `apply Job ns/test-prepare`.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A child object could not be built.
    #[error(transparent)]
    Build(#[from] builders::BuildError),
    /// The dashboard could not listen.
    #[error(
        "cannot serve the dashboard on {addr}: {source} (is the port in use? see --dashboard-addr)"
    )]
    Dashboard {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another replica took the leader Lease, or it could not be renewed in time.
    #[error(
        "{0}; stopping so that only one controller drives tests (the Deployment restarts this one as a standby)"
    )]
    LostLeadership(String),
    /// The StressTest lacks metadata the API server always sets.
    #[error("the StressTest has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// The health server could not listen.
    #[error("cannot serve /healthz on {addr}: {source} (is the port in use? see --health-addr)")]
    Health {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ControllerError {
    let action = action.into();
    move |source| ControllerError::Kube { action, source }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Image of the prepare and worker pods.
    pub image: String,
    /// Port the workers serve gRPC on.
    pub worker_port: u16,
    /// Now.
    pub clock: Clock,
    /// Events.
    pub recorder: Recorder,
    /// The last good snapshot per (test UID, shard) of the current run, and when progress was
    /// last written per test UID. Lost on restart and rebuilt by pulling again.
    pub cache: Mutex<Cache>,
    /// Consecutive failures per test UID, for the backoff.
    pub failures: std::sync::Mutex<HashMap<String, u32>>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Node selector, tolerations and affinity of the prepare and worker pods.
    pub placement: builders::Placement,
    /// The scraper of the Milvus pods per test UID (`spec.target.metrics.selector`), from the
    /// start of the stages to the end of the test.
    pub observers: Mutex<HashMap<String, ClusterObserver>>,
}

/// In-memory state that a restart may lose without losing anything the cluster does not hold.
#[derive(Default)]
pub struct Cache {
    /// Last good snapshot per (test UID, shard).
    pub snapshots: HashMap<(String, u32), Snapshot>,
    /// When progress was last written to status, per test UID (ms since epoch).
    pub progress: HashMap<String, i64>,
}

impl Context {
    /// A context reading the system clock.
    pub fn new(client: Client, image: String, worker_port: u16) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_string(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Context {
            client,
            image,
            worker_port,
            clock: Arc::new(Timestamp::now),
            recorder,
            cache: Mutex::new(Cache::default()),
            failures: std::sync::Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::default()),
            placement: builders::Placement::default(),
            observers: Mutex::new(HashMap::new()),
        }
    }
}

/// Runs the controller until SIGTERM/Ctrl-C.
pub async fn run_controller(
    client: Client,
    opts: ControllerOptions,
) -> Result<(), ControllerError> {
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.health_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ControllerError::Health { addr, source })?;
        tokio::spawn(serve_health(listener, ready.clone(), metrics.clone()));
    }
    let mut context = Context::new(client.clone(), opts.image.clone(), opts.worker_port);
    context.metrics = metrics.clone();
    context.placement = opts.placement.clone();
    let ctx = Arc::new(context);
    if let Some(addr) = opts.dashboard_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ControllerError::Dashboard { addr, source })?;
        let source = Arc::new(crate::controller::dashboard::ClusterSource::new(
            ctx.clone(),
            opts.namespace.clone(),
        ));
        tokio::spawn(async move {
            if let Err(e) = crate::dashboard::serve(listener, source).await {
                tracing::error!("the dashboard stopped: {e}");
            }
        });
    }
    // A standby is ready (it serves probes and metrics); only the leader reconciles.
    ready.store(true, Ordering::Relaxed);
    let elector = opts.leader_election.as_ref().map(|le| {
        leader::Elector::new(client.clone(), &le.namespace, &le.name, leader::identity())
    });
    if let Some(e) = &elector {
        tokio::select! {
            () = e.acquire() => {}
            () = shutdown_signal() => return Ok(()),
        }
    }
    metrics.set_leader(true);
    let (tests, jobs, config_maps): (Api<StressTest>, Api<Job>, Api<ConfigMap>) =
        match &opts.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let children = watcher::Config::default().labels(&format!(
        "{}={}",
        builders::LABEL_MANAGED_BY,
        builders::APP
    ));
    let schedules = crate::schedule::run_schedules(
        client.clone(),
        opts.namespace.clone(),
        Arc::new(Timestamp::now),
    );
    tracing::info!("stampede controller started");
    let controller = Controller::new(tests, watcher::Config::default())
        .owns(jobs, children.clone())
        .owns(config_maps, children)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(e) => tracing::warn!("reconcile failed: {e}"),
            }
        });
    // StressTests and StressTestSchedules, both under the same leadership.
    let controller = async move {
        let ((), schedules) = tokio::join!(controller, schedules);
        if let Err(e) = schedules {
            tracing::error!("the StressTestSchedule controller stopped: {e}");
        }
    };
    match &elector {
        None => controller.await,
        Some(e) => {
            tokio::select! {
                () = controller => {}
                lost = e.keep() => return Err(ControllerError::LostLeadership(lost)),
            }
            e.release().await;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Requeues a failed reconcile with exponential backoff per test.
pub fn error_policy(st: Arc<StressTest>, error: &ControllerError, ctx: Arc<Context>) -> Requeue {
    let uid = st.uid().unwrap_or_default();
    let n = match ctx.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(uid).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    ctx.metrics.reconcile_failed();
    let delay = backoff(n);
    tracing::warn!(test = %st.name_any(), "reconcile failed (retry in {delay:?}): {error}");
    Requeue::requeue(delay)
}

/// The retry interval after `failures` consecutive failures: 1 s, 2 s, 4 s, … up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (MIN_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
}

/// One reconcile: read, decide, act.
pub async fn reconcile(st: Arc<StressTest>, ctx: Arc<Context>) -> Result<Requeue, ControllerError> {
    ctx.metrics.reconciled();
    let name = st
        .metadata
        .name
        .clone()
        .ok_or(ControllerError::MissingMetadata("name"))?;
    let ns = st
        .metadata
        .namespace
        .clone()
        .ok_or(ControllerError::MissingMetadata("namespace"))?;
    let uid = st
        .metadata
        .uid
        .clone()
        .ok_or(ControllerError::MissingMetadata("uid"))?;
    if st.metadata.deletion_timestamp.is_some() && !has_our_finalizer(&st) {
        // Children are owned: the garbage collector removes them.
        ctx.metrics.forget_test(&ns, &name);
        forget(&ctx, &uid).await;
        return Ok(Requeue::await_change());
    }
    // Decide on the test as the API server has it now, not as the watch cache last saw it: a
    // reconcile triggered by a child (e.g. the report ConfigMap written by the previous
    // reconcile) can run before our own status write reaches the cache, and would then redo
    // a finished phase against workers that were already stopped.
    let tests: Api<StressTest> = Api::namespaced(ctx.client.clone(), &ns);
    let st = match tests
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("read StressTest {ns}/{name}")))?
    {
        Some(fresh) if fresh.metadata.uid.as_deref() == Some(uid.as_str()) => Arc::new(fresh),
        _ => {
            ctx.metrics.forget_test(&ns, &name);
            return Ok(Requeue::await_change());
        }
    };
    if st.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget_test(&ns, &name);
        forget(&ctx, &uid).await;
        if !has_our_finalizer(&st) {
            return Ok(Requeue::await_change());
        }
        // Held by the drop-collection finalizer: only the cleanup runs.
        let observed = observe(&st, &ctx, &name, &ns, &uid).await?;
        let decision = decide::Decision {
            actions: cleanup::decide_cleanup(&observed),
            status: st.status.clone().unwrap_or_default(),
            progress_written: false,
        };
        execute(&st, &ctx, &observed, &decision, &ns).await?;
        return Ok(match decision.requeue_after() {
            Some(d) => Requeue::requeue(d),
            None => Requeue::await_change(),
        });
    }

    let observed = observe(&st, &ctx, &name, &ns, &uid).await?;
    let now = (ctx.clock)();
    let mut decision = decide::decide(&observed, now);
    // The cleanup looks at the test as it will be after this reconcile's status write.
    let mut after = observed.clone();
    after.test.status = Some(decision.status.clone());
    let cleanup_actions = cleanup::decide_cleanup(&after);
    let requeue = [
        decision.requeue_after(),
        cleanup_actions.iter().find_map(|a| match a {
            Action::RequeueAfter(d) => Some(*d),
            _ => None,
        }),
    ]
    .into_iter()
    .flatten()
    .min();
    decision
        .actions
        .retain(|a| !matches!(a, Action::RequeueAfter(_)));
    decision.actions.extend(
        cleanup_actions
            .into_iter()
            .filter(|a| !matches!(a, Action::RequeueAfter(_))),
    );
    if let Some(d) = requeue {
        decision.actions.push(Action::RequeueAfter(d));
    }
    execute(&st, &ctx, &observed, &decision, &ns).await?;
    ctx.metrics.observe_test(&ns, &name, &decision.status);

    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&uid);
    }
    let finished = decision.status.phase.is_some_and(Phase::is_finished);
    {
        let mut cache = ctx.cache.lock().await;
        if decision.progress_written {
            cache.progress.insert(uid.clone(), decide::unix_ms(now));
        }
    }
    if finished {
        forget(&ctx, &uid).await;
    }
    Ok(match decision.requeue_after() {
        Some(d) => Requeue::requeue(d),
        None => Requeue::await_change(),
    })
}

fn has_our_finalizer(st: &StressTest) -> bool {
    st.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == cleanup::FINALIZER)
}

async fn forget(ctx: &Context, uid: &str) {
    let mut cache = ctx.cache.lock().await;
    cache.snapshots.retain(|(u, _), _| u != uid);
    cache.progress.remove(uid);
    drop(cache);
    if let Some(observer) = ctx.observers.lock().await.remove(uid) {
        observer.stop();
    }
}

/// Starts the scraper of the Milvus pods when the stages start, and hands what it saw to the
/// analysis (None when `spec.target.metrics.selector` is not set or the test is not analysed).
async fn server_observation(
    ctx: &Context,
    observed: &Observed,
    ns: &str,
    uid: &str,
) -> Option<crate::observe::ServerObservation> {
    let phase = observed.test.status.as_ref().and_then(|s| s.phase)?;
    let spec = observed.plan.as_ref().unwrap_or(&observed.test.spec);
    let plan = cluster_plan(spec.target.metrics.as_ref())?;
    let start = decide::start_unix_ms(observed)?;
    let mut observers = ctx.observers.lock().await;
    match phase {
        Phase::Running => {
            if observers.get(uid).is_none_or(|o| o.start_unix_ms != start) {
                tracing::info!(test = %observed.test.name_any(), selector = %plan.selector, "observing the Milvus pods");
                observers.insert(
                    uid.to_string(),
                    ClusterObserver::start(ctx.client.clone(), ns, plan, start),
                );
            }
            None
        }
        Phase::Analyzing => Some(match observers.get(uid) {
            Some(o) if o.start_unix_ms == start => o.snapshot(),
            _ => lost_observation(&plan),
        }),
        _ => None,
    }
}

fn job_observed(job: &Job) -> JobObserved {
    let status = job.status.clone().unwrap_or_default();
    let cond = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
            .cloned()
    };
    let outcome = if let Some(c) = cond("Failed") {
        JobOutcome::Failed {
            reason: c.reason.unwrap_or_else(|| "Failed".to_string()),
            message: c.message.unwrap_or_default(),
        }
    } else if cond("Complete").is_some() {
        JobOutcome::Complete
    } else {
        JobOutcome::Running
    };
    JobObserved {
        generation: job
            .annotations()
            .get(builders::ANNOTATION_GENERATION)
            .and_then(|g| g.parse().ok()),
        outcome,
        active: status.active.unwrap_or(0),
        succeeded: status.succeeded.unwrap_or(0),
        failed: status.failed.unwrap_or(0),
    }
}

fn worker_pod(pod: &Pod) -> WorkerPod {
    let status = pod.status.clone().unwrap_or_default();
    let shard = pod
        .annotations()
        .get(COMPLETION_INDEX)
        .or_else(|| pod.labels().get(COMPLETION_INDEX))
        .and_then(|i| i.parse().ok());
    WorkerPod {
        name: pod.name_any(),
        ip: status.pod_ip.filter(|ip| !ip.is_empty()),
        phase: status.phase.unwrap_or_else(|| "Pending".to_string()),
        shard,
        restarts: status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum(),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// The pod that serves a shard: a running, not terminating one first.
fn better(a: &WorkerPod, b: &WorkerPod) -> bool {
    let rank = |p: &WorkerPod| (!p.terminating, p.phase == "Running", p.ip.is_some());
    rank(a) > rank(b)
}

async fn observe(
    st: &StressTest,
    ctx: &Context,
    name: &str,
    ns: &str,
    uid: &str,
) -> Result<Observed, ControllerError> {
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);

    let plan_name = builders::plan_configmap_name(name);
    let plan_cm = config_maps
        .get_opt(&plan_name)
        .await
        .map_err(kube_err(format!("read ConfigMap {ns}/{plan_name}")))?;
    let plan: Option<StressTestSpec> = plan_cm.as_ref().and_then(|cm| {
        let text = cm.data.as_ref()?.get(builders::PLAN_KEY)?;
        crate::spec::parse_manifest(text, &plan_name)
            .map(|p| p.spec)
            .ok()
    });
    let prepare_name = builders::prepare_job_name(name);
    let prepare_job = jobs
        .get_opt(&prepare_name)
        .await
        .map_err(kube_err(format!("read Job {ns}/{prepare_name}")))?;
    let worker_name = builders::worker_job_name(name);
    let worker_job = jobs
        .get_opt(&worker_name)
        .await
        .map_err(kube_err(format!("read Job {ns}/{worker_name}")))?;
    let cleanup_job = if has_our_finalizer(st) {
        let cleanup_name = builders::cleanup_job_name(name);
        jobs.get_opt(&cleanup_name)
            .await
            .map_err(kube_err(format!("read Job {ns}/{cleanup_name}")))?
    } else {
        None
    };

    let phase = st.status.as_ref().and_then(|s| s.phase);
    let mut shards: BTreeMap<u32, ShardObserved> = BTreeMap::new();
    if worker_job.is_some() && matches!(phase, Some(Phase::Running | Phase::Analyzing)) {
        let selector = builders::child_selector(name, Role::Worker);
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(kube_err(format!("list pods {ns} -l {selector}")))?;
        let mut by_shard: BTreeMap<u32, WorkerPod> = BTreeMap::new();
        for p in list.items.iter().map(worker_pod) {
            let Some(i) = p.shard else { continue };
            match by_shard.get(&i) {
                Some(cur) if !better(&p, cur) => {}
                _ => {
                    by_shard.insert(i, p);
                }
            }
        }
        let pulls = futures::future::join_all(by_shard.iter().map(|(i, p)| {
            let addr =
                p.ip.as_ref()
                    .filter(|_| p.phase == "Running" && !p.terminating)
                    .map(|ip| worker_addr(ip, ctx.worker_port));
            let shard = *i;
            async move {
                match addr {
                    Some(a) => Some(
                        crate::worker::pull_status(&a)
                            .await
                            .map_err(|e| e.for_shard(shard)),
                    ),
                    None => None,
                }
            }
        }))
        .await;
        let mut cache = ctx.cache.lock().await;
        for ((i, pod), pulled) in by_shard.into_iter().zip(pulls) {
            let key = (uid.to_string(), i);
            let pull = match pulled {
                None => Pull::NotPulled,
                Some(Err(e)) => {
                    tracing::info!(test = %name, "cannot pull snapshot: {e}");
                    Pull::Failed(e.to_string())
                }
                Some(Ok(s)) => {
                    // Only a worker that runs this test's start keeps measurements of it; an
                    // idle replacement's empty snapshot must not replace the lost one's.
                    if s.start_unix_ms.is_some() {
                        cache.snapshots.insert(key.clone(), s.snapshot);
                    }
                    Pull::Answered {
                        state: s.state,
                        ready: s.ready,
                        start_unix_ms: s.start_unix_ms,
                        message: s.message,
                    }
                }
            };
            shards.insert(
                i,
                ShardObserved {
                    pod: Some(pod),
                    pull,
                    snapshot: cache.snapshots.get(&key).cloned(),
                },
            );
        }
        // Shards without a pod keep their last snapshot.
        for ((u, i), snap) in cache.snapshots.iter() {
            if u == uid && !shards.contains_key(i) {
                shards.insert(
                    *i,
                    ShardObserved {
                        pod: None,
                        pull: Pull::NotPulled,
                        snapshot: Some(snap.clone()),
                    },
                );
            }
        }
    }
    let last_progress_unix_ms = ctx.cache.lock().await.progress.get(uid).copied();
    let mut observed = Observed {
        test: st.clone(),
        plan,
        plan_exists: plan_cm.is_some(),
        prepare_job: prepare_job.as_ref().map(job_observed),
        worker_job: worker_job.as_ref().map(job_observed),
        cleanup_job: cleanup_job.as_ref().map(job_observed),
        shards,
        last_progress_unix_ms,
        server: None,
    };
    if st.metadata.deletion_timestamp.is_none() {
        observed.server = server_observation(ctx, &observed, ns, uid).await;
    }
    Ok(observed)
}

/// `ip:port`, bracketing IPv6 addresses.
pub fn worker_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn execute(
    st: &StressTest,
    ctx: &Context,
    observed: &Observed,
    decision: &decide::Decision,
    ns: &str,
) -> Result<(), ControllerError> {
    let name = st.name_any();
    let client = &ctx.client;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let tests: Api<StressTest> = Api::namespaced(client.clone(), ns);
    let addrs: Vec<(u32, String)> = observed
        .shards
        .iter()
        .filter_map(|(i, s)| {
            let p = s.pod.as_ref()?;
            (p.phase == "Running" && !p.terminating)
                .then(|| {
                    p.ip.as_ref()
                        .map(|ip| (*i, worker_addr(ip, ctx.worker_port)))
                })
                .flatten()
        })
        .collect();
    // Children are built from the spec the test runs with (frozen during a test).
    let mut source = st.clone();
    if let Some(plan) = &observed.plan
        && st
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| matches!(p, Phase::Preparing | Phase::Running | Phase::Analyzing))
        && st.status.as_ref().and_then(|s| s.observed_generation) != st.metadata.generation
    {
        source.spec = plan.clone();
        source.metadata.generation = st.status.as_ref().and_then(|s| s.observed_generation);
    }

    for action in &decision.actions {
        match action {
            Action::ApplyPlanConfigMap => {
                let cm = builders::plan_configmap(&source)?;
                let n = cm.name_any();
                config_maps
                    .patch(&n, &apply_params(), &Patch::Apply(&cm))
                    .await
                    .map_err(kube_err(format!("apply ConfigMap {ns}/{n}")))?;
            }
            Action::ApplyPrepareJob => {
                let mut job = builders::prepare_job(&source, &ctx.image)?;
                ctx.placement.apply(&mut job);
                let n = job.name_any();
                jobs.patch(&n, &apply_params(), &Patch::Apply(&job))
                    .await
                    .map_err(kube_err(format!("apply Job {ns}/{n}")))?;
            }
            Action::ApplyWorkerJob { workers } => {
                let mut job = builders::worker_job(&source, &ctx.image, *workers)?;
                ctx.placement.apply(&mut job);
                let n = job.name_any();
                jobs.patch(&n, &apply_params(), &Patch::Apply(&job))
                    .await
                    .map_err(kube_err(format!("apply Job {ns}/{n}")))?;
            }
            Action::StartWorkers { at_unix_ms } => {
                // Recorded before any worker starts: a restart then finds the instant.
                let patch = serde_json::json!({
                    "metadata": {"annotations": {ANNOTATION_START_UNIX_MS: decide::start_annotation_value(source.metadata.generation, *at_unix_ms)}}
                });
                tests
                    .patch(
                        &name,
                        &PatchParams {
                            field_manager: Some(FIELD_MANAGER.to_string()),
                            ..PatchParams::default()
                        },
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(kube_err(format!("annotate StressTest {ns}/{name}")))?;
                let at = *at_unix_ms;
                let results = futures::future::join_all(addrs.iter().map(|(i, a)| async move {
                    crate::worker::start_worker(a, at)
                        .await
                        .map_err(|e| e.for_shard(*i))
                }))
                .await;
                for r in results {
                    if let Err(e) = r {
                        tracing::warn!(test = %name, "cannot start worker: {e}");
                    }
                }
            }
            Action::StopWorkers => {
                let results = futures::future::join_all(addrs.iter().map(|(i, a)| async move {
                    crate::worker::stop_worker(a)
                        .await
                        .map_err(|e| e.for_shard(*i))
                }))
                .await;
                for r in results {
                    if let Err(e) = r {
                        tracing::info!(test = %name, "cannot stop worker: {e}");
                    }
                }
            }
            Action::WriteReportConfigMap(cm) => {
                let n = cm.name_any();
                config_maps
                    .patch(&n, &apply_params(), &Patch::Apply(cm.as_ref()))
                    .await
                    .map_err(kube_err(format!("apply ConfigMap {ns}/{n}")))?;
            }
            Action::DeletePrepareJob => {
                delete_job(&jobs, &builders::prepare_job_name(&name), ns).await?;
            }
            Action::DeleteWorkerJob => {
                delete_job(&jobs, &builders::worker_job_name(&name), ns).await?;
            }
            Action::Event {
                type_,
                reason,
                message,
            } => {
                // An Event is a courtesy: failing to record one must not stop the test.
                publish_event(
                    &ctx.recorder,
                    &st.object_ref(&()),
                    *type_,
                    reason,
                    message,
                    "Reconcile",
                )
                .await;
            }
            Action::ApplyCleanupJob => {
                let mut job = builders::cleanup_job(&source, &ctx.image)?;
                ctx.placement.apply(&mut job);
                let n = job.name_any();
                jobs.patch(&n, &apply_params(), &Patch::Apply(&job))
                    .await
                    .map_err(kube_err(format!("apply Job {ns}/{n}")))?;
            }
            Action::DeleteCleanupJob => {
                delete_job(&jobs, &builders::cleanup_job_name(&name), ns).await?;
            }
            Action::AddFinalizer | Action::RemoveFinalizer => {
                let mut finalizers: Vec<String> = st
                    .metadata
                    .finalizers
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|f| f != cleanup::FINALIZER)
                    .collect();
                if matches!(action, Action::AddFinalizer) {
                    finalizers.push(cleanup::FINALIZER.to_string());
                }
                // The resourceVersion makes the write conditional: a concurrent change of the
                // list gets 409 and a retry instead of being overwritten.
                let patch = serde_json::json!({
                    "metadata": {
                        "finalizers": finalizers,
                        "resourceVersion": st.metadata.resource_version,
                    }
                });
                tests
                    .patch(
                        &name,
                        &PatchParams {
                            field_manager: Some(FIELD_MANAGER.to_string()),
                            ..PatchParams::default()
                        },
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(kube_err(format!(
                        "update finalizers of StressTest {ns}/{name}"
                    )))?;
            }
            Action::RequeueAfter(_) => {}
        }
    }

    if st.status.as_ref() != Some(&decision.status) {
        let patch = serde_json::json!({
            "apiVersion": StressTest::api_version(&()),
            "kind": StressTest::kind(&()),
            "status": decision.status,
        });
        tests
            .patch_status(&name, &apply_params(), &Patch::Apply(&patch))
            .await
            .map_err(kube_err(format!("write status of StressTest {ns}/{name}")))?;
        ctx.metrics.status_written();
    }
    Ok(())
}

async fn delete_job(jobs: &Api<Job>, name: &str, ns: &str) -> Result<(), ControllerError> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match jobs.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(ControllerError::Kube {
            action: format!("delete Job {ns}/{name}"),
            source,
        }),
    }
}

/// Records an Event on `reference`, its note cut to 1,000 bytes. An Event is a courtesy: a
/// failure is logged, never returned.
pub async fn publish_event(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    message: &str,
    action: &str,
) {
    let ev = Event {
        type_: match type_ {
            EventType::Normal => KubeEventType::Normal,
            EventType::Warning => KubeEventType::Warning,
        },
        reason: reason.to_string(),
        note: Some(truncate(message, 1000)),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        tracing::info!(object = ?reference.name, reason, "cannot record event: {e}");
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Answers `GET /healthz` and `GET /readyz` with 200 (readyz once the controller runs),
/// `GET /metrics` with the Prometheus metrics, anything else with 404. HTTP/1.1 by hand: three
/// fixed answers need no framework.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let text = "text/plain";
            let (code, content_type, body) = match path {
                "/healthz" | "/livez" => ("200 OK", text, "ok\n".to_string()),
                "/readyz" if ready.load(Ordering::Relaxed) => ("200 OK", text, "ok\n".to_string()),
                "/readyz" => ("503 Service Unavailable", text, "not ready\n".to_string()),
                "/metrics" => ("200 OK", metrics::CONTENT_TYPE, metrics.render()),
                _ => ("404 Not Found", text, "not found\n".to_string()),
            };
            let reply = format!(
                "HTTP/1.1 {code}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(reply.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn worker_addresses_bracket_ipv6() {
        assert_eq!(worker_addr("10.0.0.5", 7070), "10.0.0.5:7070");
        assert_eq!(worker_addr("fd00::5", 7070), "[fd00::5]:7070");
    }

    #[test]
    fn a_failed_job_condition_becomes_the_outcome_with_its_reason_and_message() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "t-prepare", "annotations": {"stampede.dev/generation": "3"}},
            "status": {"failed": 3, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"}
            ]}
        }))
        .unwrap();
        assert_eq!(
            job_observed(&job),
            JobObserved {
                generation: Some(3),
                outcome: JobOutcome::Failed {
                    reason: "BackoffLimitExceeded".to_string(),
                    message: "Job has reached the specified backoff limit".to_string(),
                },
                active: 0,
                succeeded: 0,
                failed: 3,
            }
        );
    }

    #[test]
    fn a_complete_job_condition_becomes_complete() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "t-prepare"},
            "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        }))
        .unwrap();
        assert_eq!(job_observed(&job).outcome, JobOutcome::Complete);
    }

    #[test]
    fn a_worker_pod_gives_its_completion_index_ip_and_phase() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "t-workers-1-x", "annotations": {COMPLETION_INDEX: "1"}},
            "status": {"phase": "Running", "podIP": "127.0.0.3",
                       "containerStatuses": [{"name": "worker", "restartCount": 2, "image": "i",
                                              "imageID": "", "ready": true}]}
        }))
        .unwrap();
        assert_eq!(
            worker_pod(&pod),
            WorkerPod {
                name: "t-workers-1-x".to_string(),
                ip: Some("127.0.0.3".to_string()),
                phase: "Running".to_string(),
                shard: Some(1),
                restarts: 2,
                terminating: false,
            }
        );
    }

    #[tokio::test]
    async fn health_server_answers_healthz_readyz_and_metrics() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::default());
        metrics.reconciled();
        tokio::spawn(serve_health(listener, ready.clone(), metrics));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out.lines().next().unwrap_or("").to_string()
        };
        assert_eq!(get("/healthz").await, "HTTP/1.1 200 OK");
        assert_eq!(get("/readyz").await, "HTTP/1.1 503 Service Unavailable");
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").await, "HTTP/1.1 200 OK");
        assert_eq!(get("/nope").await, "HTTP/1.1 404 Not Found");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(
            out.contains("content-type: text/plain; version=0.0.4"),
            "{out}"
        );
        assert!(out.contains("\nstampede_reconciles_total 1\n"), "{out}");
    }
}
