//! The StressTest status, built by pure functions: from a finished run's [`RunResult`], from an
//! invalid spec's field errors, and the standard condition bookkeeping. Time is a parameter:
//! nothing here reads a clock.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::analysis::SlaVerdict;
use crate::result::RunResult;
use crate::spec::conditions::{self, reasons};
use crate::spec::{
    CapacityStatus, FieldError, LoadModel, OperationStatus, PeakStatus, Phase, ReportStatus,
    SaturationStatus, SlaCheckStatus, SlaStatus, SlaVerdictLabel, StageStatus, StressTestSpec,
    StressTestStatus, TotalsStatus,
};

/// The longest condition message the API server accepts (metav1.Condition.message).
pub const MAX_CONDITION_MESSAGE: usize = 32_768;

/// What a status is written against: the spec generation it describes, the current time (for
/// condition transitions) and the status already on the object (whose conditions carry over).
#[derive(Clone, Debug)]
pub struct StatusContext<'a> {
    /// `metadata.generation` of the StressTest.
    pub generation: Option<i64>,
    /// Now.
    pub now: Time,
    /// The status on the object, if any.
    pub previous: Option<&'a StressTestStatus>,
}

/// A condition of `type_` observed at `generation`, transitioning at `now` (kept by
/// [`set_condition`] when the status does not change). The message is cut to what the API server
/// accepts.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: truncate(message, MAX_CONDITION_MESSAGE),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Sets `new` in `conditions`, replacing the condition of the same type in place (or appending
/// it). The old lastTransitionTime is kept when the status (True/False/Unknown) did not change:
/// a new reason or message is not a transition.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            let last_transition_time = if existing.status == new.status {
                existing.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *existing = Condition {
                last_transition_time,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// Removes the condition of `type_`, if present.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The condition of `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and True.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == conditions::TRUE)
}

/// The status of a finished run: every measurement (rounded), the SLA verdict and capacity plan,
/// `Complete` and `SLAMet` conditions. A run that stopped early (a lost worker, an interrupted
/// stage) is Failed with `Complete=False` (RunIncomplete) and keeps what it measured; a complete
/// run is Succeeded, whatever the SLA verdict (that is `SLAMet`: SLAPassed, SLAFailed naming the
/// missed criteria, or NoSLA).
pub fn status_from_result(
    r: &RunResult,
    ctx: &StatusContext<'_>,
    report_config_map: Option<&str>,
) -> StressTestStatus {
    let generation = ctx.generation;
    let mut conditions = ctx
        .previous
        .map(|p| p.conditions.clone())
        .unwrap_or_default();
    let (complete_status, complete_reason, complete_message) = if r.complete {
        (
            conditions::TRUE,
            reasons::RUN_SUCCEEDED,
            format!("all {} stages ran to their end", r.spec.stages.len()),
        )
    } else {
        (
            conditions::FALSE,
            reasons::RUN_INCOMPLETE,
            r.incomplete_reason
                .clone()
                .unwrap_or_else(|| "the run stopped before its last stage ended".to_string()),
        )
    };
    set_condition(
        &mut conditions,
        condition(
            conditions::COMPLETE,
            complete_status,
            complete_reason,
            &complete_message,
            generation,
            &ctx.now,
        ),
    );
    let (sla_status, sla_reason, sla_message) = sla_condition(r.sla.as_ref());
    set_condition(
        &mut conditions,
        condition(
            conditions::SLA_MET,
            sla_status,
            sla_reason,
            &sla_message,
            generation,
            &ctx.now,
        ),
    );

    let mut message = result_message(r, &sla_message);
    if !r.complete {
        message = format!("incomplete: {complete_message}; {message}");
    }

    StressTestStatus {
        phase: Some(if r.complete {
            Phase::Succeeded
        } else {
            Phase::Failed
        }),
        observed_generation: generation,
        start_time: ctx
            .previous
            .and_then(|p| p.start_time.clone())
            .or_else(|| parse_time(&r.started_at)),
        completion_time: Some(parse_time(&r.finished_at).unwrap_or_else(|| ctx.now.clone())),
        current_stage: r.stages.last().map(|s| stage_label(&r.spec, s.index)),
        message: Some(message),
        conditions,
        stages: r
            .stages
            .iter()
            .map(|s| StageStatus {
                stage: stage_number(s.index),
                users: s.users,
                rate: s.rate,
                requests: s.requests,
                failures: s.failures,
                qps: round_to(s.qps, 1),
                p50_ms: round_to(s.p50_ms, 2),
                p95_ms: round_to(s.p95_ms, 2),
                p99_ms: round_to(s.p99_ms, 2),
                max_ms: round_to(s.max_ms, 2),
                recall: s.recall.map(|x| round_to(x, 4)),
                in_flight_mean: round_to(s.in_flight_mean, 1),
                in_flight_max: s.in_flight_max,
                valid: s.valid,
                reason: s.invalid_reason.clone(),
                bottleneck: r
                    .bottlenecks
                    .iter()
                    .find(|b| b.stage == s.index)
                    .map(|b| b.to_status()),
            })
            .collect(),
        operations: r
            .operations
            .iter()
            .map(|o| OperationStatus {
                name: o.name.clone(),
                requests: o.requests,
                failures: o.failures,
                qps: round_to(o.qps, 1),
                p95_ms: round_to(o.p95_ms, 2),
                p99_ms: round_to(o.p99_ms, 2),
            })
            .collect(),
        totals: Some(totals(r)),
        peak: r.peak.as_ref().map(|p| PeakStatus {
            stage: stage_number(p.stage),
            users: p.users,
            rate: p.rate,
            qps: round_to(p.qps, 1),
        }),
        saturation: r.saturation.as_ref().map(|s| SaturationStatus {
            stage: stage_number(s.stage),
            users: s.users,
            rate: s.rate,
            qps: round_to(s.qps, 1),
            reason: s.reason.clone(),
        }),
        sla: r.sla.as_ref().map(|v| SlaStatus {
            verdict: if v.passed {
                SlaVerdictLabel::Pass
            } else {
                SlaVerdictLabel::Fail
            },
            passed: v.passed,
            capacity_at_sla_qps: round_to(v.capacity_at_sla_qps, 1),
            checks: v
                .checks
                .iter()
                .map(|c| SlaCheckStatus {
                    name: c.name.clone(),
                    target: c.target.clone(),
                    observed: c.observed.clone(),
                    passed: c.passed,
                })
                .collect(),
        }),
        capacity: r.capacity.as_ref().map(|c| CapacityStatus {
            per_node_qps: round_to(c.per_node_qps, 1),
            nodes_for_target: c.nodes_for_target,
            with_redundancy: c.with_redundancy,
            basis: c.basis.clone(),
        }),
        recall: r.totals.recall.map(|x| round_to(x, 4)),
        report: report_config_map.map(|name| ReportStatus {
            config_map: name.to_string(),
        }),
        regression: ctx.previous.and_then(|p| p.regression.clone()),
    }
}

/// The status of a StressTest whose spec is invalid: phase Failed, `Complete=False` with reason
/// InvalidSpec, and every field error in the message. Nothing else: results and conditions of
/// an earlier spec no longer describe this one (the Complete condition keeps its
/// lastTransitionTime while the spec stays invalid).
pub fn invalid_spec_status(errors: &[FieldError], ctx: &StatusContext<'_>) -> StressTestStatus {
    let message = invalid_spec_message(errors);
    let mut conditions: Vec<Condition> = ctx
        .previous
        .and_then(|p| find_condition(&p.conditions, conditions::COMPLETE))
        .cloned()
        .into_iter()
        .collect();
    set_condition(
        &mut conditions,
        condition(
            conditions::COMPLETE,
            conditions::FALSE,
            reasons::INVALID_SPEC,
            &message,
            ctx.generation,
            &ctx.now,
        ),
    );
    StressTestStatus {
        phase: Some(Phase::Failed),
        observed_generation: ctx.generation,
        message: Some(message),
        conditions,
        ..StressTestStatus::default()
    }
}

/// One line naming every field error: `the spec has 2 problems: spec.data.rows: must be at least
/// 1; spec.stages[0].rate: …`.
pub fn invalid_spec_message(errors: &[FieldError]) -> String {
    match errors {
        [] => "the spec is invalid".to_string(),
        [one] => format!("the spec has 1 problem: {}", one_line(&one.to_string())),
        many => format!(
            "the spec has {} problems: {}",
            many.len(),
            many.iter()
                .map(|e| one_line(&e.to_string()))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// What the Stage column shows: `2/5 (50 users)` (Closed), `3/4 (500/s)` (Open), or `2/5` when
/// the spec does not say.
pub fn stage_label(spec: &StressTestSpec, index: usize) -> String {
    let total = spec.stages.len();
    let number = index.saturating_add(1);
    let load = spec
        .stages
        .get(index)
        .and_then(|s| match spec.workload.model {
            LoadModel::Closed => s.users.map(|u| {
                if u == 1 {
                    "1 user".to_string()
                } else {
                    format!("{u} users")
                }
            }),
            LoadModel::Open => s.rate.map(|r| format!("{r}/s")),
        });
    match load {
        Some(load) => format!("{number}/{total} ({load})"),
        None => format!("{number}/{total}"),
    }
}

/// A latency in ms for a printer column, three significant digits: `0.85ms`, `4.20ms`, `12.3ms`,
/// `187ms`, `1.25s`, `12.5s`.
pub fn format_latency(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return "-".to_string();
    }
    if ms < 1000.0 {
        return three_digits(ms, "ms").unwrap_or_else(|| format_latency_seconds(ms));
    }
    format_latency_seconds(ms)
}

fn format_latency_seconds(ms: f64) -> String {
    let s = ms / 1000.0;
    three_digits(s, "s").unwrap_or_else(|| format!("{s:.0}s"))
}

/// `x` with three significant digits and `unit`, None when it rounds to 1000 or more.
fn three_digits(x: f64, unit: &str) -> Option<String> {
    if round_to(x, 2) < 10.0 {
        Some(format!("{x:.2}{unit}"))
    } else if round_to(x, 1) < 100.0 {
        Some(format!("{x:.1}{unit}"))
    } else if x.round() < 1000.0 {
        Some(format!("{x:.0}{unit}"))
    } else {
        None
    }
}

/// `x` rounded to `decimals` places; 0 for NaN or infinity, which JSON cannot carry.
fn round_to(x: f64, decimals: i32) -> f64 {
    if !x.is_finite() {
        return 0.0;
    }
    let scale = 10f64.powi(decimals);
    let rounded = (x * scale).round() / scale;
    if rounded == 0.0 { 0.0 } else { rounded }
}

fn stage_number(index: usize) -> u32 {
    u32::try_from(index.saturating_add(1)).unwrap_or(u32::MAX)
}

fn parse_time(rfc3339: &str) -> Option<Time> {
    rfc3339.parse::<Timestamp>().ok().map(Time)
}

fn totals(r: &RunResult) -> TotalsStatus {
    let t = &r.totals;
    let has_latency = t.requests > t.failures;
    let display = |ms: f64| {
        if has_latency {
            format_latency(ms)
        } else {
            "-".to_string()
        }
    };
    TotalsStatus {
        qps: round_to(t.qps, 1),
        p95: display(t.p95_ms),
        p99: display(t.p99_ms),
        requests: t.requests,
        failures: t.failures,
        error_ratio: round_to(t.error_ratio, 6),
        p50_ms: round_to(t.p50_ms, 2),
        p95_ms: round_to(t.p95_ms, 2),
        p99_ms: round_to(t.p99_ms, 2),
        max_ms: round_to(t.max_ms, 2),
    }
}

/// SLAMet's status, reason and message.
fn sla_condition(sla: Option<&SlaVerdict>) -> (&'static str, &'static str, String) {
    let Some(v) = sla else {
        return (
            conditions::TRUE,
            reasons::NO_SLA,
            "spec.sla is not set".to_string(),
        );
    };
    let describe =
        |c: &crate::analysis::SlaCheck| format!("{} {} (target {})", c.name, c.observed, c.target);
    if v.passed {
        let checks: Vec<String> = v.checks.iter().map(describe).collect();
        let mut message = format!(
            "SLA met: capacity at SLA {} QPS",
            round_to(v.capacity_at_sla_qps, 1)
        );
        if !checks.is_empty() {
            message = format!("{message}; {}", checks.join("; "));
        }
        (conditions::TRUE, reasons::SLA_PASSED, message)
    } else {
        let missed: Vec<String> = v
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(describe)
            .collect();
        let message = if missed.is_empty() {
            "SLA missed: no valid stage met every criterion".to_string()
        } else {
            format!("SLA missed: {}", missed.join("; "))
        };
        (conditions::FALSE, reasons::SLA_FAILED, message)
    }
}

/// The status message of a finished run, one line.
fn result_message(r: &RunResult, sla_message: &str) -> String {
    let t = &r.totals;
    let mut parts = vec![format!(
        "{}/{} stages: {} QPS, P95 {}, P99 {}, {} of {} requests failed",
        r.stages.len(),
        r.spec.stages.len(),
        round_to(t.qps, 1),
        format_latency(t.p95_ms),
        format_latency(t.p99_ms),
        t.failures,
        t.requests
    )];
    if r.sla.is_some() {
        parts.push(sla_message.to_string());
    }
    if let Some(c) = &r.capacity
        && let Some(cap) = &r.spec.capacity
    {
        parts.push(format!(
            "{} query nodes for {} QPS ({} with redundancy)",
            c.nodes_for_target, cap.target_qps, c.with_redundancy
        ));
    }
    truncate(&parts.join("; "), MAX_CONDITION_MESSAGE)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` cut to at most `max` bytes on a character boundary, ending in `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let ellipsis = "…";
    let mut end = max.saturating_sub(ellipsis.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{
        CapacityPlan, OperationSummary, Peak, Saturation, SlaCheck, StageSla, StageSummary,
    };
    use crate::metrics::Snapshot;
    use crate::result::Totals;
    use crate::spec::parse_manifest;

    const MANIFEST: &str = r#"
apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {name: milvus-capacity}
spec:
  target: {address: "milvus.db.svc:19530"}
  collection: {name: stress_test_collection, dimension: 768}
  stages:
    - {duration: 60s, users: 10, spawnRate: 10}
    - {duration: 60s, users: 50, spawnRate: 10}
    - {duration: 60s, users: 100, spawnRate: 10}
  sla: {minQps: 1000, maxP95: 100ms, maxErrorRatio: 0.001}
  capacity: {targetQps: 10000, redundancy: 2}
"#;

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    fn stage(index: usize, users: u64, qps: f64, p95: f64) -> StageSummary {
        StageSummary {
            index,
            users: Some(users),
            rate: None,
            seconds: 50.0,
            requests: (qps * 50.0) as u64,
            failures: 1,
            queries: (qps * 50.0) as u64,
            qps,
            queries_per_second: qps,
            error_ratio: 1.0 / (qps * 50.0),
            p50_ms: p95 / 3.0,
            p95_ms: p95,
            p99_ms: p95 * 1.5,
            max_ms: p95 * 4.0,
            mean_ms: p95 / 2.5,
            recall: Some(0.987_654_3),
            in_flight_mean: users as f64 * 0.987_65,
            in_flight_max: users,
            late: 0,
            dropped: 0,
            valid: true,
            invalid_reason: None,
            operations: Vec::new(),
        }
    }

    fn check(name: &str, target: &str, observed: &str, passed: bool) -> SlaCheck {
        SlaCheck {
            name: name.to_string(),
            target: target.to_string(),
            observed: observed.to_string(),
            passed,
        }
    }

    fn result(sla_passed: bool) -> RunResult {
        let spec = parse_manifest(MANIFEST, "m.yaml").unwrap().spec;
        let stages = vec![
            stage(0, 10, 412.345_67, 8.123_4),
            stage(1, 50, 1234.56789, 41.666_66),
            stage(2, 100, 1301.04, 121.25),
        ];
        let checks = if sla_passed {
            vec![
                check("minQps", "≥ 1000 QPS", "1235 QPS at stage 2", true),
                check("maxP95", "≤ 100 ms", "41.7 ms", true),
            ]
        } else {
            vec![
                check(
                    "minQps",
                    "≥ 1000 QPS",
                    "0 QPS: no stage met every other criterion",
                    false,
                ),
                check("maxP95", "≤ 100 ms", "121 ms", false),
                check("maxErrorRatio", "≤ 0.1%", "0.0015%", true),
            ]
        };
        RunResult {
            version: 1,
            name: "milvus-capacity".to_string(),
            started_at: "2025-03-01T10:00:00Z".to_string(),
            finished_at: "2025-03-01T10:03:05Z".to_string(),
            complete: true,
            incomplete_reason: None,
            target: "milvus.db.svc:19530".to_string(),
            server_version: "v2.3.5".to_string(),
            model: "Closed".to_string(),
            consistency: "Bounded".to_string(),
            shards: 2,
            spec,
            stages,
            ramps: Vec::new(),
            totals: Totals {
                requests: 147_397,
                failures: 3,
                queries: 160_000,
                qps: 982.646_7,
                p50_ms: 11.111_1,
                p95_ms: 87.654_3,
                p99_ms: 123.456,
                max_ms: 480.5,
                error_ratio: 0.000_020_353_2,
                recall: Some(0.981_234_5),
            },
            operations: vec![OperationSummary {
                name: "search_vector".to_string(),
                requests: 147_397,
                failures: 3,
                queries: 147_394,
                qps: 982.646_7,
                p50_ms: 11.111_1,
                p95_ms: 87.654_3,
                p99_ms: 123.456,
                max_ms: 480.5,
                error_ratio: 0.000_020_353_2,
                recall: None,
            }],
            failures: Vec::new(),
            peak: Some(Peak {
                stage: 2,
                users: Some(100),
                rate: None,
                qps: 1301.04,
            }),
            saturation: Some(Saturation {
                stage: 2,
                users: Some(100),
                rate: None,
                qps: 1301.04,
                reason: "users 50→100 (+100%) bought 5.4% more QPS while P95 rose 2.9×".to_string(),
            }),
            sla: Some(SlaVerdict {
                passed: sla_passed,
                capacity_at_sla_qps: if sla_passed { 1234.56789 } else { 0.0 },
                best_stage: sla_passed.then_some(1),
                checks,
                stages: vec![StageSla {
                    index: 0,
                    passed: true,
                    checks: Vec::new(),
                }],
            }),
            capacity: Some(CapacityPlan {
                per_node_qps: 1234.56789,
                nodes_for_target: 9,
                with_redundancy: 18,
                basis: "capacity at SLA".to_string(),
                explanation: "…".to_string(),
            }),
            prepare: None,
            series: Vec::new(),
            client_cpu: Vec::new(),
            server: Default::default(),
            bottlenecks: Vec::new(),
            measurements: Snapshot::default(),
        }
    }

    fn ctx<'a>(previous: Option<&'a StressTestStatus>) -> StatusContext<'a> {
        StatusContext {
            generation: Some(4),
            now: at("2025-03-01T10:03:07Z"),
            previous,
        }
    }

    #[test]
    fn a_finished_run_becomes_a_succeeded_status_with_rounded_numbers() {
        let s = status_from_result(&result(true), &ctx(None), Some("milvus-capacity-report"));
        assert_eq!(s.phase, Some(Phase::Succeeded));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.start_time, Some(at("2025-03-01T10:00:00Z")));
        assert_eq!(s.completion_time, Some(at("2025-03-01T10:03:05Z")));
        assert_eq!(s.current_stage.as_deref(), Some("3/3 (100 users)"));
        assert_eq!(
            s.totals,
            Some(TotalsStatus {
                qps: 982.6,
                p95: "87.7ms".to_string(),
                p99: "123ms".to_string(),
                requests: 147_397,
                failures: 3,
                error_ratio: 0.00002,
                p50_ms: 11.11,
                p95_ms: 87.65,
                p99_ms: 123.46,
                max_ms: 480.5,
            })
        );
        assert_eq!(
            s.stages[1],
            StageStatus {
                stage: 2,
                users: Some(50),
                rate: None,
                requests: 61_728,
                failures: 1,
                qps: 1234.6,
                p50_ms: 13.89,
                p95_ms: 41.67,
                p99_ms: 62.5,
                max_ms: 166.67,
                recall: Some(0.9877),
                in_flight_mean: 49.4,
                in_flight_max: 50,
                valid: true,
                reason: None,
                bottleneck: None,
            }
        );
        assert_eq!(s.stages.len(), 3);
        assert_eq!(
            s.operations,
            vec![OperationStatus {
                name: "search_vector".to_string(),
                requests: 147_397,
                failures: 3,
                qps: 982.6,
                p95_ms: 87.65,
                p99_ms: 123.46,
            }]
        );
        assert_eq!(
            s.peak,
            Some(PeakStatus {
                stage: 3,
                users: Some(100),
                rate: None,
                qps: 1301.0
            })
        );
        assert_eq!(
            s.saturation.as_ref().map(|x| (x.stage, x.qps)),
            Some((3, 1301.0))
        );
        let sla = s.sla.as_ref().unwrap();
        assert_eq!(sla.verdict, SlaVerdictLabel::Pass);
        assert!(sla.passed);
        assert_eq!(sla.capacity_at_sla_qps, 1234.6);
        assert_eq!(sla.checks.len(), 2);
        assert_eq!(
            s.capacity,
            Some(CapacityStatus {
                per_node_qps: 1234.6,
                nodes_for_target: 9,
                with_redundancy: 18,
                basis: "capacity at SLA".to_string(),
            })
        );
        assert_eq!(s.recall, Some(0.9812));
        assert_eq!(
            s.report,
            Some(ReportStatus {
                config_map: "milvus-capacity-report".to_string()
            })
        );
        assert_eq!(
            s.message.as_deref(),
            Some(
                "3/3 stages: 982.6 QPS, P95 87.7ms, P99 123ms, 3 of 147397 requests failed; SLA met: capacity at SLA 1234.6 QPS; minQps 1235 QPS at stage 2 (target ≥ 1000 QPS); maxP95 41.7 ms (target ≤ 100 ms); 9 query nodes for 10000 QPS (18 with redundancy)"
            )
        );
    }

    #[test]
    fn each_stages_bottleneck_is_copied_into_the_status() {
        use crate::bottleneck::{Recommendation, Resource, StageBottleneck};
        let mut r = result(true);
        r.bottlenecks = vec![StageBottleneck {
            stage: 2,
            resource: Resource::ServerCpu,
            evidence: "at 100 users, P95 121.2 ms: Milvus used 1.90 of 2.00 cores (95 %)".into(),
            recommendations: vec![Recommendation {
                rule: "cpu".into(),
                text: "add query nodes (or cores), or lower ef from 64".into(),
            }],
        }];
        let s = status_from_result(&r, &ctx(None), None);
        assert_eq!(s.stages[0].bottleneck, None);
        assert_eq!(
            s.stages[2].bottleneck,
            Some(crate::spec::BottleneckStatus {
                resource: "serverCpu".into(),
                evidence: "at 100 users, P95 121.2 ms: Milvus used 1.90 of 2.00 cores (95 %)"
                    .into(),
                recommendations: vec!["add query nodes (or cores), or lower ef from 64".into()],
            })
        );
    }

    #[test]
    fn a_finished_run_sets_complete_and_sla_met_conditions() {
        let s = status_from_result(&result(true), &ctx(None), None);
        let now = at("2025-03-01T10:03:07Z");
        assert_eq!(
            s.conditions,
            vec![
                Condition {
                    type_: "Complete".to_string(),
                    status: "True".to_string(),
                    reason: "RunSucceeded".to_string(),
                    message: "all 3 stages ran to their end".to_string(),
                    observed_generation: Some(4),
                    last_transition_time: now.clone(),
                },
                Condition {
                    type_: "SLAMet".to_string(),
                    status: "True".to_string(),
                    reason: "SLAPassed".to_string(),
                    message: "SLA met: capacity at SLA 1234.6 QPS; minQps 1235 QPS at stage 2 (target ≥ 1000 QPS); maxP95 41.7 ms (target ≤ 100 ms)".to_string(),
                    observed_generation: Some(4),
                    last_transition_time: now,
                },
            ]
        );
        assert_eq!(s.report, None);
    }

    #[test]
    fn a_missed_sla_names_every_failing_check() {
        let s = status_from_result(&result(false), &ctx(None), None);
        assert_eq!(s.phase, Some(Phase::Succeeded));
        let c = find_condition(&s.conditions, conditions::SLA_MET).unwrap();
        assert_eq!(c.status, "False");
        assert_eq!(c.reason, "SLAFailed");
        assert_eq!(
            c.message,
            "SLA missed: minQps 0 QPS: no stage met every other criterion (target ≥ 1000 QPS); maxP95 121 ms (target ≤ 100 ms)"
        );
        let sla = s.sla.unwrap();
        assert_eq!(sla.verdict, SlaVerdictLabel::Fail);
        assert!(!sla.passed);
        assert_eq!(sla.capacity_at_sla_qps, 0.0);
        assert!(is_condition_true(&s.conditions, conditions::COMPLETE));
    }

    #[test]
    fn without_an_sla_the_sla_is_met_with_reason_no_sla() {
        let mut r = result(true);
        r.sla = None;
        r.spec.sla = None;
        let s = status_from_result(&r, &ctx(None), None);
        assert_eq!(s.sla, None);
        let c = find_condition(&s.conditions, conditions::SLA_MET).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("True", "NoSLA", "spec.sla is not set")
        );
        assert!(!s.message.unwrap().contains("SLA"));
    }

    #[test]
    fn an_incomplete_run_fails_and_keeps_what_it_measured() {
        let mut r = result(true);
        r.complete = false;
        r.incomplete_reason = Some("stage 3 did not run to its end".to_string());
        r.stages[2].valid = false;
        r.stages[2].invalid_reason = Some("the stage did not run to its end".to_string());
        let s = status_from_result(&r, &ctx(None), None);
        assert_eq!(s.phase, Some(Phase::Failed));
        let c = find_condition(&s.conditions, conditions::COMPLETE).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", "RunIncomplete", "stage 3 did not run to its end")
        );
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .starts_with("incomplete: stage 3 did not run to its end; 3/3 stages:"),
            "{:?}",
            s.message
        );
        assert!(!s.stages[2].valid);
        assert_eq!(
            s.stages[2].reason.as_deref(),
            Some("the stage did not run to its end")
        );
    }

    #[test]
    fn earlier_conditions_and_the_start_time_carry_over() {
        let earlier = at("2025-03-01T09:58:00Z");
        let previous = StressTestStatus {
            start_time: Some(earlier.clone()),
            conditions: vec![
                condition(
                    conditions::PREPARED,
                    conditions::TRUE,
                    reasons::PREPARE_SUCCEEDED,
                    "1000000 rows, HNSW index built",
                    Some(4),
                    &earlier,
                ),
                condition(
                    conditions::COMPLETE,
                    conditions::FALSE,
                    reasons::RUNNING,
                    "stage 3/3",
                    Some(4),
                    &earlier,
                ),
                condition(
                    conditions::SLA_MET,
                    conditions::TRUE,
                    reasons::SLA_PASSED,
                    "so far",
                    Some(4),
                    &earlier,
                ),
            ],
            ..StressTestStatus::default()
        };
        let s = status_from_result(&result(true), &ctx(Some(&previous)), None);
        assert_eq!(s.start_time, Some(earlier.clone()));
        let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, vec!["Prepared", "Complete", "SLAMet"]);
        assert_eq!(s.conditions[0], previous.conditions[0]);
        assert_eq!(
            s.conditions[1].last_transition_time,
            at("2025-03-01T10:03:07Z"),
            "False → True is a transition"
        );
        assert_eq!(
            s.conditions[2].last_transition_time, earlier,
            "True → True is not"
        );
        assert_eq!(s.conditions[2].message.split(':').next(), Some("SLA met"));
    }

    #[test]
    fn an_invalid_spec_fails_with_every_field_error() {
        let errors = vec![
            FieldError {
                path: "spec.data.rows".to_string(),
                message: "must be at least 1".to_string(),
            },
            FieldError {
                path: "spec.stages[0].rate".to_string(),
                message: "the Open model needs a rate".to_string(),
            },
        ];
        let s = invalid_spec_status(&errors, &ctx(None));
        let message = "the spec has 2 problems: spec.data.rows: must be at least 1; spec.stages[0].rate: the Open model needs a rate";
        assert_eq!(
            s,
            StressTestStatus {
                phase: Some(Phase::Failed),
                observed_generation: Some(4),
                message: Some(message.to_string()),
                conditions: vec![Condition {
                    type_: "Complete".to_string(),
                    status: "False".to_string(),
                    reason: "InvalidSpec".to_string(),
                    message: message.to_string(),
                    observed_generation: Some(4),
                    last_transition_time: at("2025-03-01T10:03:07Z"),
                }],
                ..StressTestStatus::default()
            }
        );
    }

    #[test]
    fn an_invalid_spec_drops_the_results_of_the_earlier_spec() {
        let earlier = at("2025-03-01T09:00:00Z");
        let old = StressTestStatus {
            conditions: vec![condition(
                conditions::COMPLETE,
                conditions::FALSE,
                reasons::INVALID_SPEC,
                "the spec has 1 problem: x",
                Some(3),
                &earlier,
            )],
            ..status_from_result(&result(true), &ctx(None), None)
        };
        let errors = [FieldError {
            path: "spec.data.rows".to_string(),
            message: "must be at least 1".to_string(),
        }];
        let s = invalid_spec_status(&errors, &ctx(Some(&old)));
        assert_eq!(s.totals, None);
        assert_eq!(s.sla, None);
        assert_eq!(s.stages, Vec::new());
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(
            s.conditions[0].message,
            "the spec has 1 problem: spec.data.rows: must be at least 1"
        );
        assert_eq!(s.conditions[0].observed_generation, Some(4));
        assert_eq!(
            s.conditions[0].last_transition_time, earlier,
            "still False: no transition"
        );
    }

    #[test]
    fn set_condition_replaces_by_type_and_keeps_the_transition_time_when_status_is_unchanged() {
        let t1 = at("2025-03-01T10:00:00Z");
        let t2 = at("2025-03-01T10:05:00Z");
        let t3 = at("2025-03-01T10:09:00Z");
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            condition(
                "WorkersReady",
                "False",
                "WorkersStarting",
                "0/2 ready",
                Some(1),
                &t1,
            ),
        );
        set_condition(
            &mut cs,
            condition("Prepared", "True", "PrepareSucceeded", "", Some(1), &t1),
        );
        set_condition(
            &mut cs,
            condition(
                "WorkersReady",
                "False",
                "WorkersStarting",
                "1/2 ready",
                Some(2),
                &t2,
            ),
        );
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].message, "1/2 ready");
        assert_eq!(cs[0].observed_generation, Some(2));
        assert_eq!(cs[0].last_transition_time, t1);
        set_condition(
            &mut cs,
            condition(
                "WorkersReady",
                "True",
                "WorkersRunning",
                "2/2 ready",
                Some(2),
                &t3,
            ),
        );
        assert_eq!(cs[0].last_transition_time, t3);
        assert_eq!(cs[0].reason, "WorkersRunning");
        assert!(is_condition_true(&cs, "WorkersReady"));
        assert!(!is_condition_true(&cs, "Complete"));
        remove_condition(&mut cs, "WorkersReady");
        assert_eq!(
            cs.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            vec!["Prepared"]
        );
    }

    #[test]
    fn condition_messages_are_cut_to_what_the_api_server_accepts() {
        let long = "é".repeat(20_000);
        let c = condition(
            "Complete",
            "False",
            "InvalidSpec",
            &long,
            None,
            &at("2025-03-01T10:00:00Z"),
        );
        assert!(
            c.message.len() <= MAX_CONDITION_MESSAGE,
            "{}",
            c.message.len()
        );
        assert!(c.message.ends_with('…'));
        assert_eq!(
            condition("A", "True", "B", "short", None, &at("2025-03-01T10:00:00Z")).message,
            "short"
        );
    }

    #[test]
    fn latencies_are_shown_with_three_significant_digits() {
        let cases = [
            (0.0, "0.00ms"),
            (0.854, "0.85ms"),
            (4.2, "4.20ms"),
            (9.996, "10.0ms"),
            (12.34, "12.3ms"),
            (99.96, "100ms"),
            (187.4, "187ms"),
            (999.6, "1.00s"),
            (1250.0, "1.25s"),
            (12_540.0, "12.5s"),
            (187_000.0, "187s"),
            (1_234_000.0, "1234s"),
            (f64::NAN, "-"),
        ];
        for (ms, shown) in cases {
            assert_eq!(format_latency(ms), shown, "{ms}");
        }
    }

    #[test]
    fn a_stage_label_says_which_stage_and_what_load() {
        let mut spec = parse_manifest(MANIFEST, "m.yaml").unwrap().spec;
        assert_eq!(stage_label(&spec, 1), "2/3 (50 users)");
        spec.stages[0].users = Some(1);
        assert_eq!(stage_label(&spec, 0), "1/3 (1 user)");
        spec.workload.model = LoadModel::Open;
        spec.stages[2].rate = Some(500.0);
        spec.stages[1].rate = Some(12.5);
        assert_eq!(stage_label(&spec, 2), "3/3 (500/s)");
        assert_eq!(stage_label(&spec, 1), "2/3 (12.5/s)");
        assert_eq!(stage_label(&spec, 0), "1/3");
        assert_eq!(stage_label(&spec, 5), "6/3");
    }

    #[test]
    fn totals_without_a_successful_request_show_no_latency() {
        let mut r = result(true);
        r.totals.failures = r.totals.requests;
        let t = status_from_result(&r, &ctx(None), None).totals.unwrap();
        assert_eq!((t.p95.as_str(), t.p99.as_str()), ("-", "-"));
    }

    #[test]
    fn numbers_json_cannot_carry_become_zero() {
        assert_eq!(round_to(f64::NAN, 1), 0.0);
        assert_eq!(round_to(f64::INFINITY, 1), 0.0);
        assert_eq!(round_to(-0.000_01, 2).to_string(), "0");
        assert_eq!(round_to(2.345_6, 2), 2.35);
    }

    #[test]
    fn the_status_of_a_classic_run_stays_small() {
        let mut r = result(false);
        // Five stages and three operations, as the classic scenario has.
        r.stages.push(stage(3, 200, 1310.0, 180.0));
        r.stages.push(stage(4, 500, 1290.0, 420.0));
        for name in ["search_with_filter", "batch_search"] {
            let mut op = r.operations[0].clone();
            op.name = name.to_string();
            r.operations.push(op);
        }
        let s = status_from_result(&r, &ctx(None), Some("milvus-capacity-report"));
        let bytes = serde_json::to_vec(&s).unwrap().len();
        assert!(bytes < 8 * 1024, "{bytes} bytes");
    }
}
