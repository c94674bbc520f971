//! The schedule controller's I/O layer: a kube-runtime Controller on StressTestSchedule that
//! owns StressTests. Each reconcile reads the schedule and its runs, asks [`decide`] what to
//! do, and does it (server-side apply with one field manager, status through the status
//! subresource, Events). Every choice is made in [`decide`]; this file only reads and writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy,
};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use crate::controller::reconcile::{Clock, FIELD_MANAGER, backoff, publish_event};
use crate::schedule::decide::{self, Action, Observed, RunObserved};
use crate::schedule::spec::{LABEL_SCHEDULE, RegressionStatus, StressTestSchedule};
use crate::spec::StressTest;

/// Longest wait between two looks at a schedule when `stampede controller` runs: the next
/// instant is normally the requeue, this only bounds the effect of a clock jump.
pub const MAX_REQUEUE: Duration = Duration::from_secs(300);

/// How the schedule controller runs.
#[derive(Clone)]
pub struct ScheduleOptions {
    /// Watch only this namespace (all namespaces when None).
    pub namespace: Option<String>,
    /// Now: the controller reads time only through this, so tests can set it.
    pub clock: Clock,
    /// Longest wait between two reconciles of a schedule. Tests that advance `clock` by hand
    /// set it short, since no real time passes until the next instant.
    pub max_requeue: Duration,
}

/// Why a schedule reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A call to the Kubernetes API failed.
    #[error(
        "{action} failed: {source}; check the controller's RBAC (stresstestschedules, stresstests, events) and that the API server is reachable"
    )]
    Kube {
        /// What was being done, e.g. `create StressTest ns/nightly-1767225600`.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The schedule lacks metadata the API server always sets.
    #[error("the StressTestSchedule has no metadata.{0}")]
    MissingMetadata(&'static str),
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ScheduleError {
    let action = action.into();
    move |source| ScheduleError::Kube { action, source }
}

/// What every reconcile shares.
pub struct ScheduleContext {
    /// The API client.
    pub client: Client,
    /// Now.
    pub clock: Clock,
    /// Events.
    pub recorder: Recorder,
    /// Longest wait between two reconciles of a schedule.
    pub max_requeue: Duration,
    /// Consecutive failures per schedule UID, for the backoff.
    pub failures: std::sync::Mutex<HashMap<String, u32>>,
}

/// Runs the StressTestSchedule controller until SIGTERM/Ctrl-C: call it next to the
/// StressTest controller (e.g. in `tokio::join!`). Reads time through `clock`.
pub async fn run_schedules(
    client: Client,
    namespace: Option<String>,
    clock: Clock,
) -> Result<(), ScheduleError> {
    run_schedules_with(
        client,
        ScheduleOptions {
            namespace,
            clock,
            max_requeue: MAX_REQUEUE,
        },
    )
    .await
}

/// [`run_schedules`] with every option.
pub async fn run_schedules_with(
    client: Client,
    opts: ScheduleOptions,
) -> Result<(), ScheduleError> {
    let (schedules, tests): (Api<StressTestSchedule>, Api<StressTest>) = match &opts.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(ScheduleContext {
        client,
        clock: opts.clock,
        recorder,
        max_requeue: opts.max_requeue,
        failures: std::sync::Mutex::new(HashMap::new()),
    });
    tracing::info!("stampede schedule controller started");
    Controller::new(schedules, watcher::Config::default())
        .owns(tests, watcher::Config::default().labels(LABEL_SCHEDULE))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled schedule"),
                Err(e) => tracing::warn!("schedule reconcile failed: {e}"),
            }
        })
        .await;
    Ok(())
}

/// Requeues a failed reconcile with exponential backoff per schedule.
pub fn error_policy(
    sched: Arc<StressTestSchedule>,
    error: &ScheduleError,
    ctx: Arc<ScheduleContext>,
) -> Requeue {
    let uid = sched.uid().unwrap_or_default();
    let n = match ctx.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(uid).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let delay = backoff(n).min(ctx.max_requeue.max(Duration::from_secs(1)));
    tracing::warn!(schedule = %sched.name_any(), "reconcile failed (retry in {delay:?}): {error}");
    Requeue::requeue(delay)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// One reconcile: read, decide, act.
pub async fn reconcile(
    sched: Arc<StressTestSchedule>,
    ctx: Arc<ScheduleContext>,
) -> Result<Requeue, ScheduleError> {
    let name = sched
        .metadata
        .name
        .clone()
        .ok_or(ScheduleError::MissingMetadata("name"))?;
    let ns = sched
        .metadata
        .namespace
        .clone()
        .ok_or(ScheduleError::MissingMetadata("namespace"))?;
    let uid = sched
        .metadata
        .uid
        .clone()
        .ok_or(ScheduleError::MissingMetadata("uid"))?;
    if sched.metadata.deletion_timestamp.is_some() {
        // Runs are owned: the garbage collector removes them.
        return Ok(Requeue::await_change());
    }
    // Decide on the schedule as the API server has it now: the handled instants are in its
    // status, and the watch cache may not have our last status write yet.
    let schedules: Api<StressTestSchedule> = Api::namespaced(ctx.client.clone(), &ns);
    let sched = match schedules
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("read StressTestSchedule {ns}/{name}")))?
    {
        Some(fresh) if fresh.metadata.uid.as_deref() == Some(uid.as_str()) => fresh,
        _ => return Ok(Requeue::await_change()),
    };
    if sched.metadata.deletion_timestamp.is_some() {
        return Ok(Requeue::await_change());
    }
    let runs = list_runs(&ctx.client, &ns, &name, &uid).await?;
    let now = (ctx.clock)();
    let observed = Observed {
        schedule: sched,
        runs,
    };
    let decision = decide::decide(&observed, now);
    execute(&observed.schedule, &ctx, &decision, &ns).await?;
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&uid);
    }
    let wait = decision
        .requeue_after
        .map_or(ctx.max_requeue, |d| d.min(ctx.max_requeue));
    Ok(Requeue::requeue(wait.max(Duration::from_millis(10))))
}

/// The runs of a schedule: StressTests with its label and a controller ownerReference to it.
/// Read as raw objects so status.regression is read whatever the StressTest type knows.
async fn list_runs(
    client: &Client,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<Vec<RunObserved>, ScheduleError> {
    let resource = ApiResource::erase::<StressTest>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let selector = format!("{LABEL_SCHEDULE}={name}");
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!("list StressTests {ns} -l {selector}")))?;
    let mut runs = Vec::new();
    for obj in list.items {
        let owned = obj
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true));
        if !owned {
            continue;
        }
        let regression: Option<RegressionStatus> = obj
            .data
            .get("status")
            .and_then(|s| s.get("regression"))
            .and_then(|r| serde_json::from_value(r.clone()).ok());
        let value = match serde_json::to_value(&obj) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(run = %obj.name_any(), "cannot read run: {e}");
                continue;
            }
        };
        match serde_json::from_value::<StressTest>(value) {
            Ok(st) => runs.extend(RunObserved::from_test(&st, regression)),
            Err(e) => tracing::warn!(run = %obj.name_any(), "cannot read run: {e}"),
        }
    }
    Ok(runs)
}

async fn execute(
    sched: &StressTestSchedule,
    ctx: &ScheduleContext,
    decision: &decide::Decision,
    ns: &str,
) -> Result<(), ScheduleError> {
    let name = sched.name_any();
    let tests: Api<StressTest> = Api::namespaced(ctx.client.clone(), ns);
    let schedules: Api<StressTestSchedule> = Api::namespaced(ctx.client.clone(), ns);
    for action in &decision.actions {
        match action {
            Action::CreateRun(run) => {
                let n = run.name_any();
                tests
                    .patch(&n, &apply_params(), &Patch::Apply(run.as_ref()))
                    .await
                    .map_err(kube_err(format!("create StressTest {ns}/{n}")))?;
            }
            Action::DeleteRun(n) => {
                let params = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match tests.delete(n, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => {
                        return Err(ScheduleError::Kube {
                            action: format!("delete StressTest {ns}/{n}"),
                            source,
                        });
                    }
                }
            }
            Action::WriteVerdict { run, regression } => {
                // A merge patch, not an apply: the StressTest controller applies the rest of
                // the status with the same field manager, and must not remove this field.
                let patch = serde_json::json!({"status": {"regression": regression}});
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..PatchParams::default()
                };
                match tests
                    .patch_status(run, &params, &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    // Deleted meanwhile: the verdict is still in the schedule's status.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => {
                        return Err(ScheduleError::Kube {
                            action: format!("write status.regression of StressTest {ns}/{run}"),
                            source,
                        });
                    }
                }
            }
            Action::Event {
                type_,
                reason,
                message,
            } => {
                // An Event is a courtesy: failing to record one must not stop the schedule.
                publish_event(
                    &ctx.recorder,
                    &sched.object_ref(&()),
                    *type_,
                    reason,
                    message,
                    "Schedule",
                )
                .await;
            }
        }
    }
    if sched.status.as_ref() != Some(&decision.status) {
        let patch = serde_json::json!({
            "apiVersion": StressTestSchedule::api_version(&()),
            "kind": StressTestSchedule::kind(&()),
            "status": decision.status,
        });
        schedules
            .patch_status(&name, &apply_params(), &Patch::Apply(&patch))
            .await
            .map_err(kube_err(format!(
                "write status of StressTestSchedule {ns}/{name}"
            )))?;
    }
    Ok(())
}

/// The system clock, as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}
