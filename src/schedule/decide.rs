//! The schedule controller's pure core: given a StressTestSchedule, its runs and now, what to
//! do (start, skip, replace or delete runs; write verdicts; Events) and the status to write.
//! No client, no clock: every choice is unit-tested.
//!
//! # Which instant
//!
//! The instants already handled are remembered in status (lastScheduleTime for a started run,
//! lastSkipped for a skipped one) and in the runs' names, so a restarted controller neither
//! repeats nor forgets one. Of the instants since, only the latest is considered (missed ones
//! are counted in the Event), as a CronJob does.
//!
//! # Regression gate
//!
//! Each finished run is compared once with the last run before it that Succeeded (the
//! baseline; its figures are kept in status.trend and status.lastSuccessfulRun, so deleting
//! old runs loses no baseline). The verdict goes to the run's status.regression, the
//! schedule's status (lastRun, trend, the Regressed condition) and an Event.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use crate::controller::decide::EventType;
use crate::controller::status::{condition, set_condition};
use crate::schedule::cron::{Cron, time_zone};
use crate::schedule::spec::conditions::{self, reasons};
use crate::schedule::spec::{
    ANNOTATION_SCHEDULED_TIME, ConcurrencyPolicy, LABEL_SCHEDULE, RegressionCheck, RegressionGate,
    RegressionStatus, RunSummary, SkippedStatus, StressTestSchedule, StressTestScheduleStatus,
    TrendPoint, Verdict, validate,
};
use crate::spec::conditions::{FALSE, TRUE, UNKNOWN};
use crate::spec::{Phase, StressTest, StressTestStatus};

/// A run's figures the gate compares.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunMetrics {
    /// QPS at SLA (peak QPS without an SLA), requests/s.
    pub qps_at_sla: Option<f64>,
    /// P99 latency over the run, ms.
    pub p99_ms: Option<f64>,
    /// Mean recall@k.
    pub recall: Option<f64>,
}

impl RunMetrics {
    /// The figures of a StressTest's status: capacity at SLA when the test has an SLA, else
    /// the peak (or overall) QPS; the overall P99; the recall.
    pub fn of(status: &StressTestStatus) -> RunMetrics {
        let qps_at_sla = match (&status.sla, &status.peak, &status.totals) {
            (Some(sla), _, _) => Some(sla.capacity_at_sla_qps),
            (None, Some(peak), _) => Some(peak.qps),
            (None, None, Some(totals)) => Some(totals.qps),
            _ => None,
        };
        RunMetrics {
            qps_at_sla,
            p99_ms: status.totals.as_ref().map(|t| t.p99_ms),
            recall: status.recall,
        }
    }
}

/// What reconcile read about one run (a StressTest owned by the schedule).
#[derive(Clone, Debug, PartialEq)]
pub struct RunObserved {
    /// Its name.
    pub name: String,
    /// Its scheduled instant.
    pub scheduled: Timestamp,
    /// status.phase (None until its controller writes one).
    pub phase: Option<Phase>,
    /// Its figures, once finished.
    pub metrics: RunMetrics,
    /// The verdict already written to its status.
    pub regression: Option<RegressionStatus>,
    /// Being deleted.
    pub deleting: bool,
}

impl RunObserved {
    /// Reads a StressTest and the verdict in its status.regression (read from the raw object
    /// by reconcile); None when it carries no scheduled instant.
    pub fn from_test(st: &StressTest, regression: Option<RegressionStatus>) -> Option<RunObserved> {
        let name = st.metadata.name.clone()?;
        let scheduled = st
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_SCHEDULED_TIME))
            .and_then(|v| v.parse::<i64>().ok())
            .or_else(|| name.rsplit('-').next()?.parse().ok())
            .and_then(|s| Timestamp::from_second(s).ok())?;
        let status = st.status.clone().unwrap_or_default();
        Some(RunObserved {
            name,
            scheduled,
            phase: status.phase,
            metrics: RunMetrics::of(&status),
            regression,
            deleting: st.metadata.deletion_timestamp.is_some(),
        })
    }

    fn finished(&self) -> bool {
        self.phase.is_some_and(Phase::is_finished)
    }
}

/// Everything reconcile read.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The schedule as the API server has it.
    pub schedule: StressTestSchedule,
    /// Its runs (StressTests it controls), in any order.
    pub runs: Vec<RunObserved>,
}

/// One thing reconcile does.
#[derive(Clone, Debug)]
pub enum Action {
    /// Server-side apply this StressTest (a new run).
    CreateRun(Box<StressTest>),
    /// Delete a run (Replace, or a history limit).
    DeleteRun(String),
    /// Write a verdict to a run's status.regression.
    WriteVerdict {
        /// The run.
        run: String,
        /// The verdict.
        regression: RegressionStatus,
    },
    /// Record an Event on the schedule.
    Event {
        /// Normal or Warning.
        type_: EventType,
        /// CamelCase reason from [`reasons`].
        reason: &'static str,
        /// A sentence.
        message: String,
    },
}

/// The outcome of [`decide`].
#[derive(Clone, Debug)]
pub struct Decision {
    /// In order.
    pub actions: Vec<Action>,
    /// The status to write.
    pub status: StressTestScheduleStatus,
    /// When to look again (the next instant); None: wait for a change.
    pub requeue_after: Option<Duration>,
}

/// A run's name: `<schedule>-<unix seconds of its instant>`.
pub fn run_name(schedule: &str, instant: Timestamp) -> String {
    format!("{schedule}-{}", instant.as_second())
}

/// The StressTest of the run for `instant`: the template's spec, labels and annotations, the
/// schedule label and instant annotation, and a controller ownerReference to the schedule.
pub fn run_object(schedule: &StressTestSchedule, instant: Timestamp) -> Option<StressTest> {
    let name = schedule.metadata.name.clone()?;
    let owner = schedule.controller_owner_ref(&())?;
    let template = &schedule.spec.template;
    let mut labels = template.metadata.labels.clone();
    labels.insert(LABEL_SCHEDULE.to_string(), name.clone());
    let mut annotations = template.metadata.annotations.clone();
    annotations.insert(
        ANNOTATION_SCHEDULED_TIME.to_string(),
        instant.as_second().to_string(),
    );
    let mut st = StressTest::new(&run_name(&name, instant), template.spec.clone());
    st.metadata = ObjectMeta {
        name: Some(run_name(&name, instant)),
        namespace: schedule.metadata.namespace.clone(),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };
    Some(st)
}

/// A finished run as the gate sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// Name of the run.
    pub name: String,
    /// Its instant.
    pub time: Timestamp,
    /// Succeeded or Failed.
    pub phase: Phase,
    /// Its figures.
    pub metrics: RunMetrics,
}

impl RunRecord {
    fn of_trend(p: &TrendPoint) -> RunRecord {
        RunRecord {
            name: p.name.clone(),
            time: p.time.0,
            phase: p.phase,
            metrics: RunMetrics {
                qps_at_sla: p.qps_at_sla,
                p99_ms: p.p99_ms,
                recall: p.recall,
            },
        }
    }

    fn of_summary(s: &RunSummary) -> RunRecord {
        RunRecord {
            name: s.name.clone(),
            time: s.scheduled_time.0,
            phase: s.phase,
            metrics: RunMetrics {
                qps_at_sla: s.qps,
                p99_ms: s.p99_ms,
                recall: s.recall,
            },
        }
    }
}

// Percentages are compared with this tolerance so that exactly the limit (10 % of 1000 is 900)
// is not a regression because of floating-point rounding.
const EPSILON: f64 = 1e-9;

/// Compares a finished run with its baseline (the last earlier run that Succeeded) under the
/// gate (pure). A limit the gate does not set is reported but never regresses.
pub fn compare(
    run: &RunRecord,
    baseline: Option<&RunRecord>,
    gate: &RegressionGate,
) -> RegressionStatus {
    if run.phase != Phase::Succeeded {
        return RegressionStatus {
            verdict: Verdict::NotCompared,
            baseline: None,
            message: format!(
                "run {} {}: nothing to compare",
                run.name,
                phase_word(run.phase)
            ),
            checks: Vec::new(),
        };
    }
    let Some(base) = baseline else {
        return RegressionStatus {
            verdict: Verdict::NoBaseline,
            baseline: None,
            message: format!(
                "run {} is the first successful run: it is the baseline of the next",
                run.name
            ),
            checks: Vec::new(),
        };
    };
    let mut checks = Vec::new();
    let mut regressed = Vec::new();
    if let (Some(b), Some(o)) = (base.metrics.qps_at_sla, run.metrics.qps_at_sla)
        && b > 0.0
    {
        let change = (o - b) / b * 100.0;
        let limit = gate.max_qps_drop_percent;
        let bad = limit.is_some_and(|l| -change > l + EPSILON);
        if bad {
            regressed.push(format!(
                "QPS at SLA dropped {:.1} % ({} vs {} requests/s; limit {} %)",
                -change,
                fmt_num(o),
                fmt_num(b),
                fmt_num(limit.unwrap_or_default())
            ));
        }
        checks.push(RegressionCheck {
            metric: "qpsAtSla".to_string(),
            baseline: b,
            observed: o,
            change: round(change, 2),
            limit,
            regressed: bad,
        });
    }
    if let (Some(b), Some(o)) = (base.metrics.p99_ms, run.metrics.p99_ms)
        && b > 0.0
    {
        let change = (o - b) / b * 100.0;
        let limit = gate.max_p99_increase_percent;
        let bad = limit.is_some_and(|l| change > l + EPSILON);
        if bad {
            regressed.push(format!(
                "P99 rose {:.1} % ({} ms vs {} ms; limit {} %)",
                change,
                fmt_num(o),
                fmt_num(b),
                fmt_num(limit.unwrap_or_default())
            ));
        }
        checks.push(RegressionCheck {
            metric: "p99Ms".to_string(),
            baseline: b,
            observed: o,
            change: round(change, 2),
            limit,
            regressed: bad,
        });
    }
    if let (Some(b), Some(o)) = (base.metrics.recall, run.metrics.recall) {
        let change = o - b;
        let limit = gate.max_recall_drop;
        let bad = limit.is_some_and(|l| -change > l + EPSILON);
        if bad {
            regressed.push(format!(
                "recall dropped {:.4} ({} vs {}; limit {})",
                -change,
                fmt_num(o),
                fmt_num(b),
                fmt_num(limit.unwrap_or_default())
            ));
        }
        checks.push(RegressionCheck {
            metric: "recall".to_string(),
            baseline: b,
            observed: o,
            change: round(change, 6),
            limit,
            regressed: bad,
        });
    }
    let (verdict, message) = if regressed.is_empty() {
        (
            Verdict::NoRegression,
            format!(
                "run {} did not regress against run {}{}",
                run.name,
                base.name,
                summary_of(&checks)
            ),
        )
    } else {
        (
            Verdict::Regressed,
            format!(
                "run {} regressed against run {}: {}",
                run.name,
                base.name,
                regressed.join("; ")
            ),
        )
    };
    RegressionStatus {
        verdict,
        baseline: Some(base.name.clone()),
        message,
        checks,
    }
}

fn phase_word(phase: Phase) -> &'static str {
    match phase {
        Phase::Failed => "failed",
        _ => "did not succeed",
    }
}

fn summary_of(checks: &[RegressionCheck]) -> String {
    if checks.is_empty() {
        return " (no figure to compare)".to_string();
    }
    let parts: Vec<String> = checks
        .iter()
        .map(|c| match c.metric.as_str() {
            "recall" => format!("recall {:+.4}", c.change),
            "p99Ms" => format!("P99 {:+.1} %", c.change),
            _ => format!("QPS at SLA {:+.1} %", c.change),
        })
        .collect();
    format!(": {}", parts.join(", "))
}

fn fmt_num(x: f64) -> String {
    let r = round(x, 3);
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r}")
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn event(actions: &mut Vec<Action>, type_: EventType, reason: &'static str, message: String) {
    actions.push(Action::Event {
        type_,
        reason,
        message,
    });
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// What to do for one schedule now (pure).
pub fn decide(observed: &Observed, now: Timestamp) -> Decision {
    let sched = &observed.schedule;
    let spec = &sched.spec;
    let name = sched.metadata.name.clone().unwrap_or_default();
    let generation = sched.metadata.generation;
    let now_time = time(now);
    let old = sched.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = generation;
    let mut actions = Vec::new();

    let errors = validate(&name, spec);
    if !errors.is_empty() {
        let message = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        let was = old.conditions.iter().find(|c| c.type_ == conditions::READY);
        if was.is_none_or(|c| c.message != message || c.observed_generation != generation) {
            event(
                &mut actions,
                EventType::Warning,
                reasons::INVALID_SPEC,
                format!("the schedule is invalid: {message}"),
            );
        }
        set_condition(
            &mut status.conditions,
            condition(
                conditions::READY,
                FALSE,
                reasons::INVALID_SPEC,
                &message,
                generation,
                &now_time,
            ),
        );
        status.next_schedule_time = None;
        return Decision {
            actions,
            status,
            requeue_after: None,
        };
    }
    let gate = spec.regression.clone().unwrap_or_default();

    // Verdicts, oldest run first, so a run judged now is the baseline of the next.
    let mut runs: Vec<RunObserved> = observed.runs.clone();
    runs.sort_by_key(|r| r.scheduled);
    let mut known: Vec<RunRecord> = old.trend.iter().map(RunRecord::of_trend).collect();
    if let Some(s) = &old.last_successful_run {
        known.push(RunRecord::of_summary(s));
    }
    let mut verdicts: Vec<(String, RegressionStatus, bool)> = Vec::new();
    for run in runs.iter().filter(|r| r.finished()) {
        let record = RunRecord {
            name: run.name.clone(),
            time: run.scheduled,
            phase: run.phase.unwrap_or_default(),
            metrics: run.metrics,
        };
        let verdict = match &run.regression {
            Some(v) => (v.clone(), false),
            None => {
                let baseline = known
                    .iter()
                    .filter(|k| k.phase == Phase::Succeeded && k.time < run.scheduled)
                    .max_by_key(|k| k.time);
                // Judged before (it is in the trend with a verdict) but the run's status lost
                // the verdict, e.g. to a CRD without status.regression: the same comparison
                // again, without a second Event.
                let judged = old
                    .trend
                    .iter()
                    .any(|p| p.name == run.name && p.verdict.is_some());
                (compare(&record, baseline, &gate), !judged)
            }
        };
        known.retain(|k| k.name != run.name);
        known.push(record);
        verdicts.push((run.name.clone(), verdict.0, verdict.1));
    }
    let verdict_of = |run: &str| {
        verdicts
            .iter()
            .find(|(n, _, _)| n == run)
            .map(|(_, v, _)| v.verdict)
    };
    for (run, regression, new) in &verdicts {
        if !new {
            continue;
        }
        actions.push(Action::WriteVerdict {
            run: run.clone(),
            regression: regression.clone(),
        });
        let (type_, reason) = match regression.verdict {
            Verdict::Regressed => (EventType::Warning, reasons::REGRESSED),
            Verdict::NoRegression => (EventType::Normal, reasons::NO_REGRESSION),
            Verdict::NoBaseline => (EventType::Normal, reasons::NO_BASELINE),
            Verdict::NotCompared => (EventType::Warning, reasons::RUN_FAILED),
        };
        actions.push(Action::Event {
            type_,
            reason,
            message: regression.message.clone(),
        });
    }
    // The Regressed condition follows the latest run that was compared (or became the baseline).
    if let Some((_, regression, _)) = verdicts
        .iter()
        .rev()
        .find(|(_, v, _)| v.verdict != Verdict::NotCompared)
    {
        let (st, reason) = match regression.verdict {
            Verdict::Regressed => (TRUE, reasons::REGRESSED),
            Verdict::NoBaseline => (FALSE, reasons::NO_BASELINE),
            _ => (FALSE, reasons::NO_REGRESSION),
        };
        set_condition(
            &mut status.conditions,
            condition(
                conditions::REGRESSED,
                st,
                reason,
                &regression.message,
                generation,
                &now_time,
            ),
        );
    } else if !status
        .conditions
        .iter()
        .any(|c| c.type_ == conditions::REGRESSED)
    {
        set_condition(
            &mut status.conditions,
            condition(
                conditions::REGRESSED,
                UNKNOWN,
                reasons::NO_RUN_YET,
                "no run has been compared yet",
                generation,
                &now_time,
            ),
        );
    }

    // Trend: the old points plus every finished run, by instant, the last trendLength.
    let mut trend: Vec<TrendPoint> = old.trend.clone();
    for run in runs.iter().filter(|r| r.finished()) {
        trend.retain(|p| p.name != run.name);
        trend.push(TrendPoint {
            name: run.name.clone(),
            time: time(run.scheduled),
            phase: run.phase.unwrap_or_default(),
            qps_at_sla: run.metrics.qps_at_sla,
            p99_ms: run.metrics.p99_ms,
            recall: run.metrics.recall,
            verdict: verdict_of(&run.name),
        });
    }
    trend.sort_by_key(|p| p.time.0);
    let keep = gate.trend_length.max(1) as usize;
    if trend.len() > keep {
        trend.drain(..trend.len() - keep);
    }
    status.trend = trend;

    let summary = |run: &RunObserved| RunSummary {
        name: run.name.clone(),
        scheduled_time: time(run.scheduled),
        phase: run.phase.unwrap_or_default(),
        qps: run.finished().then_some(run.metrics.qps_at_sla).flatten(),
        p99_ms: run.finished().then_some(run.metrics.p99_ms).flatten(),
        recall: run.finished().then_some(run.metrics.recall).flatten(),
        verdict: verdict_of(&run.name),
    };
    if let Some(latest_success) = runs
        .iter()
        .filter(|r| r.phase == Some(Phase::Succeeded))
        .max_by_key(|r| r.scheduled)
        && old
            .last_successful_run
            .as_ref()
            .is_none_or(|s| s.scheduled_time.0 <= latest_success.scheduled)
    {
        status.last_successful_run = Some(summary(latest_success));
    }
    if let Some(latest) = runs
        .iter()
        .filter(|r| !r.deleting)
        .max_by_key(|r| r.scheduled)
        && old
            .last_run
            .as_ref()
            .is_none_or(|s| s.scheduled_time.0 <= latest.scheduled)
    {
        status.last_run = Some(summary(latest));
    }

    // History limits: the oldest finished runs beyond each limit go.
    for (phase, limit) in [
        (Phase::Succeeded, spec.successful_runs_history_limit),
        (Phase::Failed, spec.failed_runs_history_limit),
    ] {
        let of_phase: Vec<&RunObserved> = runs
            .iter()
            .filter(|r| r.phase == Some(phase) && !r.deleting)
            .collect();
        let excess = of_phase.len().saturating_sub(limit as usize);
        for run in of_phase.into_iter().take(excess) {
            actions.push(Action::DeleteRun(run.name.clone()));
            actions.push(Action::Event {
                type_: EventType::Normal,
                reason: reasons::DELETED_RUN,
                message: format!(
                    "deleted run {} ({} history limit {limit})",
                    run.name,
                    if phase == Phase::Succeeded {
                        "successfulRunsHistoryLimit"
                    } else {
                        "failedRunsHistoryLimit"
                    }
                ),
            });
        }
    }

    let mut active: Vec<String> = runs
        .iter()
        .filter(|r| !r.finished() && !r.deleting)
        .map(|r| r.name.clone())
        .collect();

    // Scheduling. validate() checked both; the fallbacks are never taken.
    let (Ok(cron), Ok(tz)) = (Cron::parse(&spec.schedule), time_zone(&spec.time_zone)) else {
        status.active = active;
        return Decision {
            actions,
            status,
            requeue_after: None,
        };
    };
    let handled = [
        old.last_schedule_time.as_ref().map(|t| t.0),
        old.last_skipped.as_ref().map(|s| s.time.0),
        runs.iter().map(|r| r.scheduled).max(),
    ]
    .into_iter()
    .flatten()
    .max()
    .or_else(|| sched.metadata.creation_timestamp.as_ref().map(|t| t.0))
    .unwrap_or(now);
    if let Some((instant, passed)) = cron.latest_between(handled, now, &tz) {
        let missed = if passed > 0 {
            format!(" ({passed} earlier instant(s) since the last were missed)")
        } else {
            String::new()
        };
        let late = now.duration_since(instant);
        let skip = |reason: &'static str, message: String| {
            Some(SkippedStatus {
                time: time(instant),
                reason: reason.to_string(),
                message,
            })
        };
        if spec.suspend {
            status.last_skipped = skip(
                reasons::SUSPENDED,
                format!("no run for {}: spec.suspend is true", rfc3339(instant)),
            );
        } else if let Some(deadline) = spec.starting_deadline_seconds
            && late.as_secs() > deadline as i64
        {
            let message = format!(
                "skipped the run of {}: {} s late, more than startingDeadlineSeconds {deadline}{missed}",
                rfc3339(instant),
                late.as_secs()
            );
            status.last_skipped = skip(reasons::MISSED_DEADLINE, message.clone());
            event(
                &mut actions,
                EventType::Warning,
                reasons::MISSED_DEADLINE,
                message,
            );
        } else if !active.is_empty() && spec.concurrency_policy == ConcurrencyPolicy::Forbid {
            let message = format!(
                "skipped the run of {}: run {} is still active (concurrencyPolicy Forbid)",
                rfc3339(instant),
                active.join(", ")
            );
            status.last_skipped = skip(reasons::CONCURRENCY_FORBID, message.clone());
            event(
                &mut actions,
                EventType::Warning,
                reasons::CONCURRENCY_FORBID,
                message,
            );
        } else if let Some(run) = run_object(sched, instant) {
            let run_name = run.metadata.name.clone().unwrap_or_default();
            for old_run in active.drain(..) {
                event(
                    &mut actions,
                    EventType::Normal,
                    reasons::REPLACED_RUN,
                    format!(
                        "deleted active run {old_run} for run {run_name} (concurrencyPolicy Replace)"
                    ),
                );
                actions.push(Action::DeleteRun(old_run));
            }
            actions.push(Action::CreateRun(Box::new(run)));
            event(
                &mut actions,
                EventType::Normal,
                reasons::STARTED_RUN,
                format!("started run {run_name} for {}{missed}", rfc3339(instant)),
            );
            status.last_schedule_time = Some(time(instant));
            status.last_run = Some(RunSummary {
                name: run_name.clone(),
                scheduled_time: time(instant),
                phase: Phase::Pending,
                qps: None,
                p99_ms: None,
                recall: None,
                verdict: None,
            });
            active.push(run_name);
        }
    }
    status.active = active;

    let ready = if spec.suspend {
        (
            FALSE,
            reasons::SUSPENDED,
            "spec.suspend is true: no new runs start".to_string(),
        )
    } else {
        (
            TRUE,
            reasons::SCHEDULED,
            format!("runs start at `{}` ({})", spec.schedule, spec.time_zone),
        )
    };
    set_condition(
        &mut status.conditions,
        condition(
            conditions::READY,
            ready.0,
            ready.1,
            &ready.2,
            generation,
            &now_time,
        ),
    );
    let next = cron.next_after(now, &tz);
    status.next_schedule_time = if spec.suspend { None } else { next.map(time) };
    let requeue_after = next.map(|n| {
        let secs = n.duration_since(now).as_secs_f64().max(0.0);
        Duration::from_secs_f64(secs)
    });
    Decision {
        actions,
        status,
        requeue_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::spec::{RegressionGate, StressTestScheduleSpec};
    use crate::spec::{PeakStatus, SlaStatus, TotalsStatus};

    const SPEC: &str = r#"
schedule: "*/5 * * * *"
template:
  metadata:
    labels: {team: search}
  spec:
    target: {address: "127.0.0.1:19530"}
    collection: {name: nightly, dimension: 8}
    stages: [{duration: 10s, users: 4, spawnRate: 4}]
regression: {maxQpsDropPercent: 10, maxP99IncreasePercent: 20, maxRecallDrop: 0.02}
"#;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn schedule(extra: &str) -> StressTestSchedule {
        let spec: StressTestScheduleSpec =
            serde_yaml_ng::from_str(&format!("{SPEC}{extra}")).unwrap();
        let mut s = StressTestSchedule::new("nightly", spec);
        s.metadata.namespace = Some("default".into());
        s.metadata.uid = Some("uid-1".into());
        s.metadata.generation = Some(1);
        s.metadata.creation_timestamp = Some(Time(ts("2026-03-01T10:01:00Z")));
        s
    }

    fn metrics(qps: f64, p99: f64, recall: f64) -> RunMetrics {
        RunMetrics {
            qps_at_sla: Some(qps),
            p99_ms: Some(p99),
            recall: Some(recall),
        }
    }

    fn run(at: &str, phase: Option<Phase>, m: RunMetrics) -> RunObserved {
        let scheduled = ts(at);
        RunObserved {
            name: run_name("nightly", scheduled),
            scheduled,
            phase,
            metrics: m,
            regression: None,
            deleting: false,
        }
    }

    fn record(name: &str, phase: Phase, m: RunMetrics) -> RunRecord {
        RunRecord {
            name: name.into(),
            time: ts("2026-03-01T10:00:00Z"),
            phase,
            metrics: m,
        }
    }

    fn gate() -> RegressionGate {
        RegressionGate {
            max_qps_drop_percent: Some(10.0),
            max_p99_increase_percent: Some(20.0),
            max_recall_drop: Some(0.02),
            trend_length: 10,
        }
    }

    fn created(d: &Decision) -> Vec<String> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateRun(st) => st.metadata.name.clone(),
                _ => None,
            })
            .collect()
    }

    fn deleted(d: &Decision) -> Vec<String> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::DeleteRun(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn events(d: &Decision) -> Vec<(&'static str, String)> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Event {
                    reason, message, ..
                } => Some((*reason, message.clone())),
                _ => None,
            })
            .collect()
    }

    fn cond<'a>(
        d: &'a Decision,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        d.status.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_qps_drop_beyond_the_gate_is_a_regression() {
        let base = record("nightly-1", Phase::Succeeded, metrics(1000.0, 40.0, 0.95));
        let now = record("nightly-2", Phase::Succeeded, metrics(700.0, 40.0, 0.95));
        let v = compare(&now, Some(&base), &gate());
        assert_eq!(v.verdict, Verdict::Regressed);
        assert_eq!(v.baseline.as_deref(), Some("nightly-1"));
        assert_eq!(
            v.message,
            "run nightly-2 regressed against run nightly-1: QPS at SLA dropped 30.0 % (700 vs 1000 requests/s; limit 10 %)"
        );
        assert_eq!(
            v.checks[0],
            RegressionCheck {
                metric: "qpsAtSla".into(),
                baseline: 1000.0,
                observed: 700.0,
                change: -30.0,
                limit: Some(10.0),
                regressed: true
            }
        );
        assert!(!v.checks[1].regressed && !v.checks[2].regressed);
    }

    #[test]
    fn a_drop_of_exactly_the_limit_is_not_a_regression() {
        let base = record("a", Phase::Succeeded, metrics(1000.0, 40.0, 0.95));
        let now = record("b", Phase::Succeeded, metrics(900.0, 48.0, 0.93));
        let v = compare(&now, Some(&base), &gate());
        assert_eq!(v.verdict, Verdict::NoRegression, "{}", v.message);
        assert_eq!(
            v.message,
            "run b did not regress against run a: QPS at SLA -10.0 %, P99 +20.0 %, recall -0.0200"
        );
    }

    #[test]
    fn a_p99_rise_and_a_recall_drop_beyond_the_gate_are_both_named() {
        let base = record("a", Phase::Succeeded, metrics(1000.0, 40.0, 0.95));
        let now = record("b", Phase::Succeeded, metrics(1000.0, 50.0, 0.9));
        let v = compare(&now, Some(&base), &gate());
        assert_eq!(v.verdict, Verdict::Regressed);
        assert_eq!(
            v.message,
            "run b regressed against run a: P99 rose 25.0 % (50 ms vs 40 ms; limit 20 %); recall dropped 0.0500 (0.9 vs 0.95; limit 0.02)"
        );
    }

    #[test]
    fn an_ungated_metric_is_reported_but_never_regresses() {
        let base = record("a", Phase::Succeeded, metrics(1000.0, 40.0, 0.95));
        let now = record("b", Phase::Succeeded, metrics(100.0, 400.0, 0.5));
        let v = compare(&now, Some(&base), &RegressionGate::default());
        assert_eq!(v.verdict, Verdict::NoRegression);
        assert_eq!(v.checks.len(), 3);
        assert_eq!(v.checks[1].change, 900.0);
    }

    #[test]
    fn the_first_successful_run_has_no_baseline_and_a_failed_run_is_not_compared() {
        let now = record("b", Phase::Succeeded, metrics(1000.0, 40.0, 0.95));
        assert_eq!(compare(&now, None, &gate()).verdict, Verdict::NoBaseline);
        let failed = record("c", Phase::Failed, RunMetrics::default());
        let base = record("a", Phase::Succeeded, metrics(1000.0, 40.0, 0.95));
        let v = compare(&failed, Some(&base), &gate());
        assert_eq!(v.verdict, Verdict::NotCompared);
        assert_eq!(v.message, "run c failed: nothing to compare");
    }

    #[test]
    fn qps_at_sla_falls_back_to_the_peak_without_an_sla() {
        let mut status = StressTestStatus {
            peak: Some(PeakStatus {
                stage: 2,
                qps: 812.5,
                ..PeakStatus::default()
            }),
            totals: Some(TotalsStatus {
                qps: 600.0,
                p99_ms: 31.0,
                ..TotalsStatus::default()
            }),
            recall: Some(0.97),
            ..StressTestStatus::default()
        };
        assert_eq!(RunMetrics::of(&status), metrics(812.5, 31.0, 0.97));
        status.sla = Some(SlaStatus {
            capacity_at_sla_qps: 640.0,
            ..SlaStatus::default()
        });
        assert_eq!(RunMetrics::of(&status).qps_at_sla, Some(640.0));
    }

    #[test]
    fn the_first_instant_after_creation_starts_a_run_owned_by_the_schedule() {
        let s = schedule("");
        let d = decide(
            &Observed {
                schedule: s,
                runs: vec![],
            },
            ts("2026-03-01T10:05:30Z"),
        );
        assert_eq!(created(&d), vec!["nightly-1772359500"]);
        let Some(Action::CreateRun(st)) =
            d.actions.iter().find(|a| matches!(a, Action::CreateRun(_)))
        else {
            panic!()
        };
        let labels = st.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_SCHEDULE], "nightly");
        assert_eq!(labels["team"], "search");
        assert_eq!(
            st.metadata.annotations.clone().unwrap()[ANNOTATION_SCHEDULED_TIME],
            "1772359500"
        );
        let owner = &st.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller
            ),
            ("StressTestSchedule", "nightly", "uid-1", Some(true))
        );
        assert_eq!(d.status.active, vec!["nightly-1772359500"]);
        assert_eq!(
            d.status.last_schedule_time,
            Some(Time(ts("2026-03-01T10:05:00Z")))
        );
        assert_eq!(
            d.status.next_schedule_time,
            Some(Time(ts("2026-03-01T10:10:00Z")))
        );
        assert_eq!(d.requeue_after, Some(Duration::from_secs(270)));
        assert_eq!(events(&d)[0].0, reasons::STARTED_RUN);
    }

    #[test]
    fn nothing_starts_before_the_first_instant() {
        let d = decide(
            &Observed {
                schedule: schedule(""),
                runs: vec![],
            },
            ts("2026-03-01T10:04:59Z"),
        );
        assert!(created(&d).is_empty());
        assert_eq!(d.requeue_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn forbid_skips_an_instant_while_a_run_is_active() {
        let mut s = schedule("");
        s.status = Some(StressTestScheduleStatus {
            last_schedule_time: Some(Time(ts("2026-03-01T10:05:00Z"))),
            ..Default::default()
        });
        let active = run(
            "2026-03-01T10:05:00Z",
            Some(Phase::Running),
            RunMetrics::default(),
        );
        let d = decide(
            &Observed {
                schedule: s,
                runs: vec![active],
            },
            ts("2026-03-01T10:10:05Z"),
        );
        assert!(created(&d).is_empty());
        assert!(deleted(&d).is_empty());
        let skipped = d.status.last_skipped.clone().unwrap();
        assert_eq!(skipped.time, Time(ts("2026-03-01T10:10:00Z")));
        assert_eq!(skipped.reason, reasons::CONCURRENCY_FORBID);
        assert_eq!(
            events(&d),
            vec![(
                reasons::CONCURRENCY_FORBID,
                "skipped the run of 2026-03-01T10:10:00Z: run nightly-1772359500 is still active (concurrencyPolicy Forbid)".to_string()
            )]
        );
        assert_eq!(d.status.active, vec!["nightly-1772359500"]);
    }

    #[test]
    fn a_skipped_instant_is_not_tried_again() {
        let mut s = schedule("");
        s.status = Some(StressTestScheduleStatus {
            last_schedule_time: Some(Time(ts("2026-03-01T10:05:00Z"))),
            last_skipped: Some(SkippedStatus {
                time: Time(ts("2026-03-01T10:10:00Z")),
                reason: reasons::CONCURRENCY_FORBID.into(),
                message: String::new(),
            }),
            ..Default::default()
        });
        let finished = run(
            "2026-03-01T10:05:00Z",
            Some(Phase::Succeeded),
            metrics(1000.0, 40.0, 0.95),
        );
        let d = decide(
            &Observed {
                schedule: s,
                runs: vec![finished],
            },
            ts("2026-03-01T10:12:00Z"),
        );
        assert!(created(&d).is_empty());
    }

    #[test]
    fn replace_deletes_the_active_run_and_starts_the_new_one() {
        let mut s = schedule("concurrencyPolicy: Replace\n");
        s.status = Some(StressTestScheduleStatus {
            last_schedule_time: Some(Time(ts("2026-03-01T10:05:00Z"))),
            ..Default::default()
        });
        let active = run(
            "2026-03-01T10:05:00Z",
            Some(Phase::Running),
            RunMetrics::default(),
        );
        let d = decide(
            &Observed {
                schedule: s,
                runs: vec![active],
            },
            ts("2026-03-01T10:10:05Z"),
        );
        assert_eq!(deleted(&d), vec!["nightly-1772359500"]);
        assert_eq!(created(&d), vec!["nightly-1772359800"]);
        assert_eq!(d.status.active, vec!["nightly-1772359800"]);
        assert_eq!(events(&d)[0].0, reasons::REPLACED_RUN);
    }

    #[test]
    fn a_suspended_schedule_starts_nothing_and_says_so() {
        let d = decide(
            &Observed {
                schedule: schedule("suspend: true\n"),
                runs: vec![],
            },
            ts("2026-03-01T10:05:30Z"),
        );
        assert!(created(&d).is_empty());
        assert_eq!(
            d.status.last_skipped.as_ref().unwrap().reason,
            reasons::SUSPENDED
        );
        assert_eq!(d.status.next_schedule_time, None);
        let ready = cond(&d, conditions::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Suspended")
        );
    }

    #[test]
    fn an_instant_missed_by_more_than_the_starting_deadline_is_skipped() {
        let d = decide(
            &Observed {
                schedule: schedule("startingDeadlineSeconds: 60\n"),
                runs: vec![],
            },
            ts("2026-03-01T10:07:00Z"),
        );
        assert!(created(&d).is_empty());
        assert_eq!(
            events(&d),
            vec![(
                reasons::MISSED_DEADLINE,
                "skipped the run of 2026-03-01T10:05:00Z: 120 s late, more than startingDeadlineSeconds 60".to_string()
            )]
        );
    }

    #[test]
    fn only_the_latest_missed_instant_runs_and_the_others_are_counted() {
        let d = decide(
            &Observed {
                schedule: schedule(""),
                runs: vec![],
            },
            ts("2026-03-01T10:21:00Z"),
        );
        assert_eq!(created(&d), vec!["nightly-1772360400"]);
        assert_eq!(
            events(&d)[0].1,
            "started run nightly-1772360400 for 2026-03-01T10:20:00Z (3 earlier instant(s) since the last were missed)"
        );
    }

    #[test]
    fn a_finished_run_gets_a_verdict_against_the_last_successful_one() {
        let mut s = schedule("");
        s.status = Some(StressTestScheduleStatus {
            last_schedule_time: Some(Time(ts("2026-03-01T10:10:00Z"))),
            ..Default::default()
        });
        let mut first = run(
            "2026-03-01T10:05:00Z",
            Some(Phase::Succeeded),
            metrics(1000.0, 40.0, 0.95),
        );
        first.regression = Some(compare(
            &RunRecord {
                name: first.name.clone(),
                time: first.scheduled,
                phase: Phase::Succeeded,
                metrics: first.metrics,
            },
            None,
            &gate(),
        ));
        let second = run(
            "2026-03-01T10:10:00Z",
            Some(Phase::Succeeded),
            metrics(700.0, 40.0, 0.95),
        );
        let d = decide(
            &Observed {
                schedule: s,
                runs: vec![second, first],
            },
            ts("2026-03-01T10:12:00Z"),
        );
        let writes: Vec<(&str, Verdict)> = d
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::WriteVerdict { run, regression } => {
                    Some((run.as_str(), regression.verdict))
                }
                _ => None,
            })
            .collect();
        assert_eq!(writes, vec![("nightly-1772359800", Verdict::Regressed)]);
        let c = cond(&d, conditions::REGRESSED);
        assert_eq!(c.status, "True");
        assert_eq!(
            c.message,
            "run nightly-1772359800 regressed against run nightly-1772359500: QPS at SLA dropped 30.0 % (700 vs 1000 requests/s; limit 10 %)"
        );
        assert_eq!(events(&d)[0].0, reasons::REGRESSED);
        let trend: Vec<(&str, Option<f64>, Option<Verdict>)> = d
            .status
            .trend
            .iter()
            .map(|p| (p.name.as_str(), p.qps_at_sla, p.verdict))
            .collect();
        assert_eq!(
            trend,
            vec![
                (
                    "nightly-1772359500",
                    Some(1000.0),
                    Some(Verdict::NoBaseline)
                ),
                ("nightly-1772359800", Some(700.0), Some(Verdict::Regressed))
            ]
        );
        let last = d.status.last_run.unwrap();
        assert_eq!(
            (last.name.as_str(), last.verdict),
            ("nightly-1772359800", Some(Verdict::Regressed))
        );
        assert_eq!(
            d.status.last_successful_run.unwrap().name,
            "nightly-1772359800"
        );
        assert!(d.status.active.is_empty());
    }

    #[test]
    fn the_baseline_survives_in_status_after_its_run_is_deleted() {
        let mut s = schedule("");
        s.status = Some(StressTestScheduleStatus {
            last_schedule_time: Some(Time(ts("2026-03-01T10:10:00Z"))),
            trend: vec![TrendPoint {
                name: "nightly-1772359500".into(),
                time: Time(ts("2026-03-01T10:05:00Z")),
                phase: Phase::Succeeded,
                qps_at_sla: Some(1000.0),
                p99_ms: Some(40.0),
                recall: Some(0.95),
                verdict: Some(Verdict::NoBaseline),
            }],
            ..Default::default()
        });
        let second = run(
            "2026-03-01T10:10:00Z",
            Some(Phase::Succeeded),
            metrics(980.0, 41.0, 0.95),
        );
        let d = decide(
            &Observed {
                schedule: s,
                runs: vec![second],
            },
            ts("2026-03-01T10:12:00Z"),
        );
        let c = cond(&d, conditions::REGRESSED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoRegression")
        );
        assert!(
            c.message.contains("against run nightly-1772359500"),
            "{}",
            c.message
        );
    }

    #[test]
    fn a_run_already_in_the_trend_is_not_judged_twice() {
        let mut s = schedule("");
        s.status = Some(StressTestScheduleStatus {
            last_schedule_time: Some(Time(ts("2026-03-01T10:05:00Z"))),
            trend: vec![TrendPoint {
                name: "nightly-1772359500".into(),
                time: Time(ts("2026-03-01T10:05:00Z")),
                phase: Phase::Succeeded,
                qps_at_sla: Some(1000.0),
                p99_ms: Some(40.0),
                recall: Some(0.95),
                verdict: Some(Verdict::NoBaseline),
            }],
            ..Default::default()
        });
        let first = run(
            "2026-03-01T10:05:00Z",
            Some(Phase::Succeeded),
            metrics(1000.0, 40.0, 0.95),
        );
        let d = decide(
            &Observed {
                schedule: s,
                runs: vec![first],
            },
            ts("2026-03-01T10:06:00Z"),
        );
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert_eq!(cond(&d, conditions::REGRESSED).reason, reasons::NO_BASELINE);
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_runs() {
        let mut s = schedule("successfulRunsHistoryLimit: 2\nfailedRunsHistoryLimit: 1\n");
        s.status = Some(StressTestScheduleStatus {
            last_schedule_time: Some(Time(ts("2026-03-01T10:30:00Z"))),
            ..Default::default()
        });
        let m = metrics(1000.0, 40.0, 0.95);
        let runs = vec![
            run("2026-03-01T10:05:00Z", Some(Phase::Succeeded), m),
            run(
                "2026-03-01T10:10:00Z",
                Some(Phase::Failed),
                RunMetrics::default(),
            ),
            run("2026-03-01T10:15:00Z", Some(Phase::Succeeded), m),
            run(
                "2026-03-01T10:20:00Z",
                Some(Phase::Failed),
                RunMetrics::default(),
            ),
            run("2026-03-01T10:25:00Z", Some(Phase::Succeeded), m),
            run(
                "2026-03-01T10:30:00Z",
                Some(Phase::Running),
                RunMetrics::default(),
            ),
        ];
        let d = decide(&Observed { schedule: s, runs }, ts("2026-03-01T10:31:00Z"));
        assert_eq!(
            deleted(&d),
            vec!["nightly-1772359500", "nightly-1772359800"]
        );
        assert_eq!(d.status.active, vec!["nightly-1772361000"]);
    }

    #[test]
    fn the_trend_keeps_the_last_trend_length_runs() {
        let mut s = schedule("");
        s.spec.regression.as_mut().unwrap().trend_length = 2;
        s.spec.successful_runs_history_limit = 10;
        s.status = Some(StressTestScheduleStatus {
            last_schedule_time: Some(Time(ts("2026-03-01T10:15:00Z"))),
            ..Default::default()
        });
        let m = metrics(1000.0, 40.0, 0.95);
        let runs = vec![
            run("2026-03-01T10:05:00Z", Some(Phase::Succeeded), m),
            run("2026-03-01T10:10:00Z", Some(Phase::Succeeded), m),
            run("2026-03-01T10:15:00Z", Some(Phase::Succeeded), m),
        ];
        let d = decide(&Observed { schedule: s, runs }, ts("2026-03-01T10:16:00Z"));
        let names: Vec<&str> = d.status.trend.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["nightly-1772359800", "nightly-1772360100"]);
    }

    #[test]
    fn an_invalid_schedule_reports_every_field_and_starts_nothing() {
        let mut s = schedule("timeZone: Mars/Olympus\n");
        s.spec.schedule = "0 25 * * *".into();
        s.spec.template.spec.collection.dimension = 0;
        let d = decide(
            &Observed {
                schedule: s,
                runs: vec![],
            },
            ts("2026-03-01T10:05:30Z"),
        );
        assert!(created(&d).is_empty());
        let ready = cond(&d, conditions::READY);
        assert_eq!(ready.reason, reasons::INVALID_SPEC);
        assert!(
            ready.message.starts_with("spec.schedule: the hour field `25`: 25 is out of range 0-23; spec.timeZone: unknown time zone `Mars/Olympus`"),
            "{}",
            ready.message
        );
        assert!(
            ready
                .message
                .contains("spec.template.spec.collection.dimension: must be between 1 and 32768"),
            "{}",
            ready.message
        );
        assert_eq!(d.requeue_after, None);
    }

    #[test]
    fn a_nightly_schedule_in_berlin_starts_at_two_local_time() {
        let mut s = schedule("timeZone: Europe/Berlin\n");
        s.spec.schedule = "0 2 * * *".into();
        s.metadata.creation_timestamp = Some(Time(ts("2026-06-30T12:00:00Z")));
        let d = decide(
            &Observed {
                schedule: s,
                runs: vec![],
            },
            ts("2026-07-01T00:00:30Z"),
        );
        // 02:00 CEST is 00:00 UTC.
        assert_eq!(created(&d), vec!["nightly-1782864000"]);
        assert_eq!(
            d.status.next_schedule_time,
            Some(Time(ts("2026-07-02T00:00:00Z")))
        );
    }
}
