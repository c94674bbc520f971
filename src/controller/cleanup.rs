//! `spec.cleanup.dropCollection`: the collection is dropped when the test ends, by a cleanup Job
//! (`stampede cleanup`, credentials from the Secret through env like every other pod, so the
//! controller itself never reads Secrets nor talks to Milvus). A finalizer on the StressTest
//! guarantees the drop also happens when the test is deleted before it ends: deletion then stops
//! the workers, runs the cleanup Job and only then lets the object go.
//!
//! [`decide_cleanup`] is pure: what reconcile observed in, actions out.

use std::time::Duration;

use crate::controller::decide::{Action, EventType, JobObserved, JobOutcome, Observed};
use crate::spec::Phase;

/// The finalizer that holds a StressTest until its collection is dropped.
pub const FINALIZER: &str = "stampede.dev/drop-collection";
/// Event reason: the collection was dropped.
pub const EVENT_DROPPED: &str = "CollectionDropped";
/// Event reason: the cleanup Job failed; the collection may still exist.
pub const EVENT_DROP_FAILED: &str = "CollectionDropFailed";
/// How often a pending cleanup is looked at again.
pub const CLEANUP_INTERVAL: Duration = Duration::from_secs(3);

/// Whether the StressTest carries [`FINALIZER`].
pub fn has_finalizer(observed: &Observed) -> bool {
    observed
        .test
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

/// The cleanup actions for one reconcile. For a test being deleted these are the only actions;
/// otherwise they come after [`crate::controller::decide::decide`]'s.
pub fn decide_cleanup(observed: &Observed) -> Vec<Action> {
    let st = &observed.test;
    let finalizer = has_finalizer(observed);
    let deleting = st.metadata.deletion_timestamp.is_some();
    // The spec the test ran with decides (a frozen test keeps its plan's).
    let drop = observed
        .plan
        .as_ref()
        .unwrap_or(&st.spec)
        .cleanup
        .drop_collection;
    let status = st.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    let generation = status.and_then(|s| s.observed_generation);
    let collection = &observed.plan.as_ref().unwrap_or(&st.spec).collection.name;

    if deleting {
        if !finalizer {
            return Vec::new();
        }
        if !drop || !observed.plan_exists {
            // Nothing to drop, or nothing was ever created (no plan: prepare never ran).
            return vec![Action::RemoveFinalizer];
        }
        let mut actions = Vec::new();
        if observed.worker_job.is_some() {
            actions.push(Action::DeleteWorkerJob);
        }
        if observed.prepare_job.is_some() {
            actions.push(Action::DeletePrepareJob);
        }
        actions.extend(run_cleanup_job(
            observed.cleanup_job.as_ref(),
            generation,
            collection,
        ));
        return actions;
    }

    let finished = phase.is_some_and(Phase::is_finished) && generation == st.metadata.generation;
    match (drop, finalizer) {
        (true, false) if !finished => vec![Action::AddFinalizer],
        (true, true) if finished => {
            if !observed.plan_exists {
                // Failed before anything was created (e.g. an invalid spec).
                return vec![Action::RemoveFinalizer];
            }
            run_cleanup_job(observed.cleanup_job.as_ref(), generation, collection)
        }
        (false, true)
            if !matches!(
                phase,
                Some(Phase::Preparing | Phase::Running | Phase::Analyzing)
            ) =>
        {
            vec![Action::RemoveFinalizer]
        }
        _ => Vec::new(),
    }
}

/// Create the cleanup Job, wait for it, then release the finalizer.
fn run_cleanup_job(
    job: Option<&JobObserved>,
    generation: Option<i64>,
    collection: &str,
) -> Vec<Action> {
    match job {
        None => vec![
            Action::ApplyCleanupJob,
            Action::RequeueAfter(CLEANUP_INTERVAL),
        ],
        // A cleanup Job of an earlier run says nothing about this one.
        Some(j) if j.generation != generation => vec![
            Action::DeleteCleanupJob,
            Action::RequeueAfter(CLEANUP_INTERVAL),
        ],
        Some(j) => match &j.outcome {
            JobOutcome::Running => vec![Action::RequeueAfter(CLEANUP_INTERVAL)],
            JobOutcome::Complete => vec![
                Action::Event {
                    type_: EventType::Normal,
                    reason: EVENT_DROPPED.to_string(),
                    message: format!("dropped collection {collection} (cleanup.dropCollection)"),
                },
                Action::RemoveFinalizer,
            ],
            JobOutcome::Failed { reason, message } => vec![
                Action::Event {
                    type_: EventType::Warning,
                    reason: EVENT_DROP_FAILED.to_string(),
                    message: format!(
                        "the cleanup Job failed ({reason}): {message}; collection {collection} may still exist: drop it by hand"
                    ),
                },
                Action::RemoveFinalizer,
            ],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{StressTest, StressTestStatus, parse_manifest};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use std::collections::BTreeMap;

    const MANIFEST: &str = include_str!("../../examples/quickstart.yaml");

    fn observed(drop: bool, phase: Option<Phase>, finalizer: bool) -> Observed {
        let mut st: StressTest = parse_manifest(MANIFEST, "quickstart.yaml").unwrap();
        st.spec.cleanup.drop_collection = drop;
        st.metadata.generation = Some(2);
        if finalizer {
            st.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
        }
        st.status = Some(StressTestStatus {
            phase,
            observed_generation: phase.map(|_| 2),
            ..StressTestStatus::default()
        });
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

    fn deleting(mut o: Observed) -> Observed {
        o.test.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        o
    }

    fn job(outcome: JobOutcome, generation: i64) -> JobObserved {
        JobObserved {
            generation: Some(generation),
            outcome,
            ..JobObserved::default()
        }
    }

    #[test]
    fn a_test_that_drops_its_collection_gets_the_finalizer_before_it_runs() {
        assert_eq!(
            decide_cleanup(&observed(true, None, false)),
            vec![Action::AddFinalizer]
        );
        assert_eq!(
            decide_cleanup(&observed(true, Some(Phase::Running), false)),
            vec![Action::AddFinalizer]
        );
        assert!(decide_cleanup(&observed(false, None, false)).is_empty());
    }

    #[test]
    fn a_finished_test_runs_the_cleanup_job_then_releases_the_finalizer() {
        let mut o = observed(true, Some(Phase::Succeeded), true);
        assert_eq!(
            decide_cleanup(&o),
            vec![
                Action::ApplyCleanupJob,
                Action::RequeueAfter(CLEANUP_INTERVAL)
            ]
        );
        o.cleanup_job = Some(job(JobOutcome::Running, 2));
        assert_eq!(
            decide_cleanup(&o),
            vec![Action::RequeueAfter(CLEANUP_INTERVAL)]
        );
        o.cleanup_job = Some(job(JobOutcome::Complete, 2));
        let actions = decide_cleanup(&o);
        assert_eq!(actions.last(), Some(&Action::RemoveFinalizer));
        assert!(matches!(&actions[0], Action::Event { reason, .. } if reason == EVENT_DROPPED));
    }

    #[test]
    fn a_failed_cleanup_job_warns_and_still_releases_the_finalizer() {
        let mut o = observed(true, Some(Phase::Failed), true);
        o.cleanup_job = Some(job(
            JobOutcome::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "Job has reached the specified backoff limit".into(),
            },
            2,
        ));
        let actions = decide_cleanup(&o);
        assert_eq!(actions.last(), Some(&Action::RemoveFinalizer));
        let Action::Event { type_, message, .. } = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(*type_, EventType::Warning);
        assert!(message.contains("BackoffLimitExceeded") && message.contains("quickstart"));
    }

    #[test]
    fn a_cleanup_job_of_an_earlier_run_is_replaced() {
        let mut o = observed(true, Some(Phase::Succeeded), true);
        o.cleanup_job = Some(job(JobOutcome::Complete, 1));
        assert_eq!(decide_cleanup(&o)[0], Action::DeleteCleanupJob);
    }

    #[test]
    fn deleting_a_running_test_stops_the_workers_before_dropping_the_collection() {
        let mut o = deleting(observed(true, Some(Phase::Running), true));
        o.worker_job = Some(job(JobOutcome::Running, 2));
        assert_eq!(
            decide_cleanup(&o),
            vec![
                Action::DeleteWorkerJob,
                Action::ApplyCleanupJob,
                Action::RequeueAfter(CLEANUP_INTERVAL)
            ]
        );
    }

    #[test]
    fn deleting_a_test_that_never_created_anything_releases_at_once() {
        let mut o = deleting(observed(true, Some(Phase::Failed), true));
        o.plan_exists = false;
        assert_eq!(decide_cleanup(&o), vec![Action::RemoveFinalizer]);
        let o = deleting(observed(true, Some(Phase::Failed), false));
        assert!(decide_cleanup(&o).is_empty());
    }

    #[test]
    fn turning_drop_collection_off_after_the_test_releases_the_finalizer() {
        let o = observed(false, Some(Phase::Succeeded), true);
        assert_eq!(decide_cleanup(&o), vec![Action::RemoveFinalizer]);
        let o = observed(false, Some(Phase::Running), true);
        assert!(decide_cleanup(&o).is_empty());
    }
}
