//! Pure analysis of merged measurements: per-stage summaries, the saturation point (the knee
//! where more load stops buying throughput), the peak, SLA verdicts and a capacity plan.
//!
//! Stage numbers in sentences are 1-based ("stage 3"), as users count them; `index` fields are
//! 0-based, as in the spec's `stages` list.

use serde::{Deserialize, Serialize};

use crate::metrics::{OpWindow, StageMeasurement};

/// A 0-based stage index as users count stages (from 1).
fn human(index: usize) -> usize {
    index.saturating_add(1)
}

/// µs → ms.
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `num / den`, 0 when `den` is not positive (nothing measured must not read as infinity).
fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 && den.is_finite() {
        num / den
    } else {
        0.0
    }
}

/// A number for a sentence: about three significant digits, trailing zeros dropped.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    let s = if a >= 10.0 {
        format!("{x:.0}")
    } else if a >= 1.0 {
        format!("{x:.1}")
    } else if a >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".to_string() } else { s }
}

/// A fraction as a percentage for a sentence, e.g. 0.025 → "2.5%".
fn pct(fraction: f64) -> String {
    format!("{}%", num(fraction * 100.0))
}

/// One operation over a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationSummary {
    /// Operation name.
    pub name: String,
    /// Completed requests, successes + failures.
    pub requests: u64,
    /// Failed requests.
    pub failures: u64,
    /// Query vectors in successful requests.
    pub queries: u64,
    /// Completed requests (successes + failures) per second.
    pub qps: f64,
    /// Median latency of successful requests, ms.
    pub p50_ms: f64,
    /// 95th percentile of successful requests, ms.
    pub p95_ms: f64,
    /// 99th percentile of successful requests, ms.
    pub p99_ms: f64,
    /// Slowest successful request, ms.
    pub max_ms: f64,
    /// Failed share of completed requests.
    pub error_ratio: f64,
    /// Mean recall@k, when measured.
    pub recall: Option<f64>,
}

impl OperationSummary {
    /// Summarises one operation's window over `seconds` of wall time.
    fn from_window(name: &str, w: &OpWindow, seconds: f64) -> Self {
        OperationSummary {
            name: name.to_string(),
            requests: w.requests,
            failures: w.failures,
            queries: w.queries,
            qps: ratio(w.requests as f64, seconds),
            p50_ms: ms(w.latency.quantile_us(0.50)),
            p95_ms: ms(w.latency.quantile_us(0.95)),
            p99_ms: ms(w.latency.quantile_us(0.99)),
            max_ms: ms(w.latency.max_us()),
            error_ratio: ratio(w.failures as f64, w.requests as f64),
            recall: w.recall(),
        }
    }
}

/// One stage's steady state, all operations together and per operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    /// Stage index, from 0.
    pub index: usize,
    /// Users asked for (closed model).
    pub users: Option<u64>,
    /// Arrival rate asked for, requests/s (open model).
    pub rate: Option<f64>,
    /// Steady-state wall time, s.
    pub seconds: f64,
    /// Completed requests, successes + failures.
    pub requests: u64,
    /// Failed requests.
    pub failures: u64,
    /// Query vectors in successful requests.
    pub queries: u64,
    /// Completed requests (successes + failures) per second of steady-state wall time: a failed
    /// request is still a request the system turned around. Success throughput is
    /// `qps × (1 − error_ratio)`.
    pub qps: f64,
    /// Query vectors per second (a batch search of nq=5 counts 5).
    pub queries_per_second: f64,
    /// Failed share of completed requests.
    pub error_ratio: f64,
    /// Median latency of successful requests, ms.
    pub p50_ms: f64,
    /// 95th percentile of successful requests, ms.
    pub p95_ms: f64,
    /// 99th percentile of successful requests, ms.
    pub p99_ms: f64,
    /// Slowest successful request, ms.
    pub max_ms: f64,
    /// Mean latency of successful requests, ms.
    pub mean_ms: f64,
    /// Mean recall@k, when measured.
    pub recall: Option<f64>,
    /// Mean requests in flight (the load the generator really kept up).
    pub in_flight_mean: f64,
    /// Most requests in flight.
    pub in_flight_max: u64,
    /// Open model: requests sent later than intended.
    pub late: u64,
    /// Open model: requests not sent at all (in-flight bound reached).
    pub dropped: u64,
    /// Whether the stage measured something usable.
    pub valid: bool,
    /// Why it did not.
    pub invalid_reason: Option<String>,
    /// Per operation, by name.
    pub operations: Vec<OperationSummary>,
}

impl StageSummary {
    /// What was asked for, for a sentence: "users 50", "rate 500/s" or "stage 3".
    fn load_label(&self) -> String {
        match (self.users, self.rate) {
            (Some(u), _) => format!("users {u}"),
            (None, Some(r)) => format!("rate {}/s", num(r)),
            (None, None) => format!("stage {}", human(self.index)),
        }
    }

    /// Requests that succeeded.
    fn successes(&self) -> u64 {
        self.requests.saturating_sub(self.failures)
    }
}

/// Summarises a merged stage's steady state; `users`/`rate` are what the spec asked for.
///
/// A stage with no steady-state time or no completed request gets zeros (never a division by
/// zero) and is invalid, as is a stage that did not run to its end.
pub fn summarize_stage(
    m: &StageMeasurement,
    users: Option<u64>,
    rate: Option<f64>,
) -> StageSummary {
    let seconds = if m.steady_seconds.is_finite() && m.steady_seconds > 0.0 {
        m.steady_seconds
    } else {
        0.0
    };
    let total = m.steady.total();
    let invalid_reason = if seconds == 0.0 {
        Some("no steady-state time was measured".to_string())
    } else if total.requests == 0 {
        Some("no request completed in the steady state".to_string())
    } else if !m.complete {
        Some("the stage did not run to its end".to_string())
    } else {
        None
    };
    StageSummary {
        index: m.stage,
        users,
        rate,
        seconds,
        requests: total.requests,
        failures: total.failures,
        queries: total.queries,
        qps: ratio(total.requests as f64, seconds),
        queries_per_second: ratio(total.queries as f64, seconds),
        error_ratio: ratio(total.failures as f64, total.requests as f64),
        p50_ms: ms(total.latency.quantile_us(0.50)),
        p95_ms: ms(total.latency.quantile_us(0.95)),
        p99_ms: ms(total.latency.quantile_us(0.99)),
        max_ms: ms(total.latency.max_us()),
        mean_ms: total.latency.mean_us() / 1000.0,
        recall: total.recall(),
        in_flight_mean: m.steady.in_flight_mean(),
        in_flight_max: m.steady.in_flight_max,
        late: total.late,
        dropped: total.dropped,
        valid: invalid_reason.is_none(),
        invalid_reason,
        operations: m
            .steady
            .ops
            .iter()
            .map(|(name, w)| OperationSummary::from_window(name, w, seconds))
            .collect(),
    }
}

/// When a stage counts as saturated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaturationRules {
    /// Smallest QPS gain over the previous stage that still counts as growth (0.10 = +10%).
    pub min_qps_gain: f64,
    /// P95 growth factor that, with too little QPS gain, marks the knee (1.5 = ×1.5).
    pub p95_rise: f64,
    /// Error ratio above which a stage is saturated whatever its QPS (0.01 = 1%).
    pub max_error_ratio: f64,
}

impl Default for SaturationRules {
    fn default() -> Self {
        SaturationRules {
            min_qps_gain: 0.10,
            p95_rise: 1.5,
            max_error_ratio: 0.01,
        }
    }
}

/// Where more load stopped buying throughput.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Saturation {
    /// Stage index, from 0.
    pub stage: usize,
    /// Users of that stage (closed model).
    pub users: Option<u64>,
    /// Rate of that stage (open model).
    pub rate: Option<f64>,
    /// QPS of that stage.
    pub qps: f64,
    /// A sentence with the numbers that show it.
    pub reason: String,
}

/// Whether `s` asked for more load than `p`; unknown load counts as more (stages are meant to
/// grow), a lower or equal one does not (a cool-down stage losing QPS is not a knee).
fn load_rose(p: &StageSummary, s: &StageSummary) -> bool {
    match ((p.users, s.users), (p.rate, s.rate)) {
        ((Some(a), Some(b)), _) => b > a,
        (_, (Some(a), Some(b))) => b > a,
        _ => true,
    }
}

/// "users 50→100 (+100%)", "rate 500→1000/s (+100%)" or "stage 2→3".
fn load_change(p: &StageSummary, s: &StageSummary) -> String {
    let change = |a: f64, b: f64| {
        if a > 0.0 {
            let c = (b - a) / a;
            format!(" ({}{})", if c >= 0.0 { "+" } else { "" }, pct(c))
        } else {
            String::new()
        }
    };
    match ((p.users, s.users), (p.rate, s.rate)) {
        ((Some(a), Some(b)), _) => format!("users {a}→{b}{}", change(a as f64, b as f64)),
        (_, (Some(a), Some(b))) => format!("rate {}→{}/s{}", num(a), num(b), change(a, b)),
        _ => format!("stage {}→{}", human(p.index), human(s.index)),
    }
}

/// The first stage where more load stops buying throughput, comparing each valid stage with the
/// previous valid one: QPS gain below `min_qps_gain` while P95 rose by more than `p95_rise`, or
/// QPS fell (when more load was asked for), or an error ratio above `max_error_ratio`. Invalid
/// stages are skipped and named in the reason. None when throughput kept growing.
pub fn saturation(stages: &[StageSummary], rules: &SaturationRules) -> Option<Saturation> {
    let mut prev: Option<&StageSummary> = None;
    let mut skipped: Vec<String> = Vec::new();
    for s in stages {
        if !s.valid {
            skipped.push(format!(
                "stage {} ({})",
                human(s.index),
                s.invalid_reason.as_deref().unwrap_or("invalid")
            ));
            continue;
        }
        let reason = if s.error_ratio > rules.max_error_ratio {
            Some(format!(
                "at {}, {} of requests failed ({} of {}), above the {} limit",
                s.load_label(),
                pct(s.error_ratio),
                s.failures,
                s.requests,
                pct(rules.max_error_ratio)
            ))
        } else {
            prev.filter(|p| load_rose(p, s))
                .and_then(|p| knee(p, s, rules))
        };
        if let Some(mut reason) = reason {
            if !skipped.is_empty() {
                reason.push_str(&format!("; skipped invalid {}", skipped.join(", ")));
            }
            return Some(Saturation {
                stage: s.index,
                users: s.users,
                rate: s.rate,
                qps: s.qps,
                reason,
            });
        }
        prev = Some(s);
    }
    None
}

/// Why `s` is past the knee relative to `p`, if it is: QPS fell, or barely rose while P95 rose
/// sharply.
fn knee(p: &StageSummary, s: &StageSummary, rules: &SaturationRules) -> Option<String> {
    let change = load_change(p, s);
    let qps = format!("({}→{})", num(p.qps), num(s.qps));
    let p95 = format!("{}→{} ms", num(p.p95_ms), num(s.p95_ms));
    if s.qps < p.qps {
        return Some(format!(
            "{change} lowered QPS {} {qps} while P95 went {p95}",
            pct(ratio(p.qps - s.qps, p.qps))
        ));
    }
    let gain = ratio(s.qps - p.qps, p.qps);
    // Without a previous P95 (every request failed) there is no rise to measure.
    let rise = if p.p95_ms > 0.0 {
        s.p95_ms / p.p95_ms
    } else {
        1.0
    };
    (p.qps > 0.0 && gain < rules.min_qps_gain && rise > rules.p95_rise).then(|| {
        let rise = format!("{rise:.1}");
        format!(
            "{change} raised QPS only {} {qps} while P95 rose {}× ({p95})",
            pct(gain),
            rise.trim_end_matches(".0")
        )
    })
}

/// The highest-QPS stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peak {
    /// Stage index, from 0.
    pub stage: usize,
    /// Users of that stage (closed model).
    pub users: Option<u64>,
    /// Rate of that stage (open model).
    pub rate: Option<f64>,
    /// Its QPS.
    pub qps: f64,
}

/// The stage with the highest QPS among valid stages (the first one on a tie).
pub fn peak(stages: &[StageSummary]) -> Option<Peak> {
    highest_qps(stages.iter().filter(|s| s.valid)).map(|s| Peak {
        stage: s.index,
        users: s.users,
        rate: s.rate,
        qps: s.qps,
    })
}

/// The first stage with the highest QPS.
fn highest_qps<'a>(stages: impl Iterator<Item = &'a StageSummary>) -> Option<&'a StageSummary> {
    stages.fold(None, |best: Option<&StageSummary>, s| match best {
        Some(b) if b.qps >= s.qps => Some(b),
        _ => Some(s),
    })
}

/// What the SLA asks for; unset criteria are not checked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlaCriteria {
    /// Capacity at SLA must reach this QPS.
    pub min_qps: Option<f64>,
    /// P95 at most this, ms.
    pub max_p95_ms: Option<f64>,
    /// P99 at most this, ms.
    pub max_p99_ms: Option<f64>,
    /// Failed share at most this.
    pub max_error_ratio: Option<f64>,
    /// Mean recall@k at least this.
    pub recall_at_least: Option<f64>,
}

/// One criterion against one observation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlaCheck {
    /// Criterion, as named in the spec: minQps, maxP95, maxP99, maxErrorRatio, recallAtLeast
    /// (validStage for a stage that measured nothing usable).
    pub name: String,
    /// What was asked, e.g. "≤ 100 ms".
    pub target: String,
    /// What was measured, e.g. "87 ms".
    pub observed: String,
    /// Whether the observation meets the target.
    pub passed: bool,
}

/// The latency, error and recall criteria checked on one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSla {
    /// Stage index, from 0.
    pub index: usize,
    /// Valid and every criterion met.
    pub passed: bool,
    /// One per criterion set.
    pub checks: Vec<SlaCheck>,
}

/// The SLA verdict of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlaVerdict {
    /// The SLA is met.
    pub passed: bool,
    /// Highest QPS of a valid stage meeting every latency, error and recall criterion; 0 when
    /// none did.
    pub capacity_at_sla_qps: f64,
    /// That stage's index.
    pub best_stage: Option<usize>,
    /// The criteria against the best stage (or, when none met them, the highest-QPS valid stage,
    /// showing what failed), minQps first.
    pub checks: Vec<SlaCheck>,
    /// Per stage.
    pub stages: Vec<StageSla>,
}

/// A latency check: observed ≤ target ms, failing when no request succeeded (no latency).
fn latency_check(name: &str, target_ms: f64, observed_ms: f64, s: &StageSummary) -> SlaCheck {
    let has_latency = s.successes() > 0;
    SlaCheck {
        name: name.to_string(),
        target: format!("≤ {} ms", num(target_ms)),
        observed: if has_latency {
            format!("{} ms", num(observed_ms))
        } else {
            "no successful request".to_string()
        },
        passed: has_latency && observed_ms <= target_ms,
    }
}

/// The latency, error and recall criteria checked on one valid stage.
fn criteria_checks(s: &StageSummary, sla: &SlaCriteria) -> Vec<SlaCheck> {
    let mut checks = Vec::new();
    if let Some(t) = sla.max_p95_ms {
        checks.push(latency_check("maxP95", t, s.p95_ms, s));
    }
    if let Some(t) = sla.max_p99_ms {
        checks.push(latency_check("maxP99", t, s.p99_ms, s));
    }
    if let Some(t) = sla.max_error_ratio {
        checks.push(SlaCheck {
            name: "maxErrorRatio".to_string(),
            target: format!("≤ {}", pct(t)),
            observed: format!(
                "{} ({} of {} requests failed)",
                pct(s.error_ratio),
                s.failures,
                s.requests
            ),
            passed: s.error_ratio <= t,
        });
    }
    if let Some(t) = sla.recall_at_least {
        checks.push(SlaCheck {
            name: "recallAtLeast".to_string(),
            target: format!("≥ {t:.3}"),
            observed: match s.recall {
                Some(r) => format!("{r:.3}"),
                None => "not measured (no search with ground truth in this stage)".to_string(),
            },
            passed: s.recall.is_some_and(|r| r >= t),
        });
    }
    checks
}

/// One stage's SLA result; an invalid stage fails a `validStage` check before the criteria.
fn stage_sla(s: &StageSummary, sla: &SlaCriteria) -> StageSla {
    let mut checks = Vec::new();
    if !s.valid {
        checks.push(SlaCheck {
            name: "validStage".to_string(),
            target: "a usable measurement".to_string(),
            observed: s
                .invalid_reason
                .clone()
                .unwrap_or_else(|| "invalid".to_string()),
            passed: false,
        });
    }
    checks.extend(criteria_checks(s, sla));
    StageSla {
        index: s.index,
        passed: checks.iter().all(|c| c.passed),
        checks,
    }
}

/// Checks each latency/error/recall criterion per stage. Capacity at SLA is the highest QPS of a
/// valid stage meeting all of them; the verdict passes when that capacity reaches minQps (or,
/// without minQps, when at least one valid stage met every criterion).
pub fn sla_verdict(stages: &[StageSummary], sla: &SlaCriteria) -> SlaVerdict {
    let per_stage: Vec<StageSla> = stages.iter().map(|s| stage_sla(s, sla)).collect();
    let best = highest_qps(
        stages
            .iter()
            .zip(&per_stage)
            .filter(|(_, r)| r.passed)
            .map(|(s, _)| s),
    );
    let capacity = best.map_or(0.0, |s| s.qps);
    let reference = best.or_else(|| highest_qps(stages.iter().filter(|s| s.valid)));

    let mut checks = Vec::new();
    if let Some(min) = sla.min_qps {
        let observed = match (best, reference) {
            (Some(b), _) => format!(
                "{} QPS at stage {} (the highest QPS meeting every other criterion)",
                num(b.qps),
                human(b.index)
            ),
            (None, Some(r)) => format!(
                "0 QPS: no stage met every other criterion (highest QPS {} at stage {})",
                num(r.qps),
                human(r.index)
            ),
            (None, None) => "0 QPS: no valid stage was measured".to_string(),
        };
        checks.push(SlaCheck {
            name: "minQps".to_string(),
            target: format!("≥ {} QPS", num(min)),
            observed,
            passed: best.is_some() && capacity >= min,
        });
    }
    match reference {
        Some(r) => checks.extend(criteria_checks(r, sla)),
        None => {
            // Nothing to show: each criterion fails for want of a measurement.
            let unmeasured = SlaCriteria {
                min_qps: None,
                ..sla.clone()
            };
            let empty = StageSummary {
                index: 0,
                users: None,
                rate: None,
                seconds: 0.0,
                requests: 0,
                failures: 0,
                queries: 0,
                qps: 0.0,
                queries_per_second: 0.0,
                error_ratio: 0.0,
                p50_ms: 0.0,
                p95_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
                mean_ms: 0.0,
                recall: None,
                in_flight_mean: 0.0,
                in_flight_max: 0,
                late: 0,
                dropped: 0,
                valid: false,
                invalid_reason: None,
                operations: Vec::new(),
            };
            checks.extend(
                criteria_checks(&empty, &unmeasured)
                    .into_iter()
                    .map(|c| SlaCheck {
                        observed: "no valid stage was measured".to_string(),
                        passed: false,
                        ..c
                    }),
            );
        }
    }

    SlaVerdict {
        passed: match sla.min_qps {
            Some(min) => best.is_some() && capacity >= min,
            None => best.is_some(),
        },
        capacity_at_sla_qps: capacity,
        best_stage: best.map(|s| s.index),
        checks,
        stages: per_stage,
    }
}

/// What the capacity plan is for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityConfig {
    /// QPS the cluster must serve.
    pub target_qps: f64,
    /// Spare factor, at least 1 (smaller values count as 1).
    pub redundancy: f64,
    /// Query nodes of the tested cluster, at least 1 (0 counts as 1).
    pub measured_query_nodes: u32,
}

/// How many query nodes the target needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityPlan {
    /// Measured QPS per query node.
    pub per_node_qps: f64,
    /// Nodes for the target QPS.
    pub nodes_for_target: u64,
    /// Nodes with redundancy.
    pub with_redundancy: u64,
    /// What the capacity was: "capacity at SLA" or "peak QPS (no SLA)".
    pub basis: String,
    /// The arithmetic, as a sentence.
    pub explanation: String,
}

/// ⌈x⌉ as a count, forgiving float noise: 10000/1000 computed as 10.000000000000002 must need 10
/// nodes, not 11. Saturates instead of overflowing.
fn ceil_count(x: f64) -> u64 {
    (x * (1.0 - 1e-12)).ceil().max(0.0) as u64
}

/// per-node QPS = capacity QPS / measured query nodes; nodes = ⌈target / per-node⌉; with
/// redundancy = ⌈nodes × redundancy⌉. None when the capacity or the target is not a positive
/// number.
pub fn capacity_plan(capacity_qps: f64, basis: &str, cfg: &CapacityConfig) -> Option<CapacityPlan> {
    if !(capacity_qps.is_finite() && capacity_qps > 0.0) {
        return None;
    }
    if !(cfg.target_qps.is_finite() && cfg.target_qps > 0.0) {
        return None;
    }
    let measured_nodes = cfg.measured_query_nodes.max(1);
    let redundancy = if cfg.redundancy.is_finite() && cfg.redundancy > 1.0 {
        cfg.redundancy
    } else {
        1.0
    };
    let per_node = capacity_qps / f64::from(measured_nodes);
    let nodes = ceil_count(cfg.target_qps / per_node).max(1);
    let with_redundancy = ceil_count(nodes as f64 * redundancy).max(nodes);
    let node_word = |n: u64| if n == 1 { "node" } else { "nodes" };
    let explanation = format!(
        "{basis}: {} QPS on {measured_nodes} query {} = {} QPS per node; {} QPS needs ⌈{} / {}⌉ = {nodes} {}, × redundancy {} = {with_redundancy} {}",
        num(capacity_qps),
        node_word(u64::from(measured_nodes)),
        num(per_node),
        num(cfg.target_qps),
        num(cfg.target_qps),
        num(per_node),
        node_word(nodes),
        num(redundancy),
        node_word(with_redundancy),
    );
    Some(CapacityPlan {
        per_node_qps: per_node,
        nodes_for_target: nodes,
        with_redundancy,
        basis: basis.to_string(),
        explanation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Window;

    /// A valid closed-model stage with the given users, QPS and P95 (other figures derived).
    fn stage(index: usize, users: u64, qps: f64, p95_ms: f64) -> StageSummary {
        let requests = (qps * 60.0) as u64;
        StageSummary {
            index,
            users: Some(users),
            rate: None,
            seconds: 60.0,
            requests,
            failures: 0,
            queries: requests,
            qps,
            queries_per_second: qps,
            error_ratio: 0.0,
            p50_ms: p95_ms / 2.0,
            p95_ms,
            p99_ms: p95_ms * 1.5,
            max_ms: p95_ms * 3.0,
            mean_ms: p95_ms / 2.0,
            recall: Some(0.95),
            in_flight_mean: users as f64,
            in_flight_max: users,
            late: 0,
            dropped: 0,
            valid: true,
            invalid_reason: None,
            operations: Vec::new(),
        }
    }

    fn with_errors(mut s: StageSummary, failures: u64) -> StageSummary {
        s.failures = failures;
        s.error_ratio = failures as f64 / s.requests as f64;
        s
    }

    fn invalid(mut s: StageSummary, reason: &str) -> StageSummary {
        s.valid = false;
        s.invalid_reason = Some(reason.to_string());
        s
    }

    fn rules() -> SaturationRules {
        SaturationRules::default()
    }

    #[test]
    fn summarize_stage_computes_rates_and_percentiles_from_the_merged_histogram() {
        let mut steady = Window::default();
        // Below 2048 µs a 3-digit histogram is exact, so the percentiles are too.
        for us in 1..=1000u64 {
            steady.op_mut("search").record_success(us, 2);
        }
        steady.op_mut("search").record_recall(0.5);
        steady.op_mut("search").record_recall(1.0);
        steady
            .op_mut("query")
            .record_failure(5000, "timeout", "slow");
        steady.sample_in_flight(4);
        steady.sample_in_flight(6);
        let m = StageMeasurement {
            stage: 2,
            steady,
            steady_seconds: 10.0,
            complete: true,
            ..StageMeasurement::default()
        };
        let s = summarize_stage(&m, Some(50), None);
        assert_eq!(s.index, 2);
        assert_eq!(s.users, Some(50));
        assert_eq!(s.requests, 1001);
        assert_eq!(s.failures, 1);
        assert_eq!(s.queries, 2000);
        assert_eq!(s.qps, 100.1);
        assert_eq!(s.queries_per_second, 200.0);
        assert_eq!(s.error_ratio, 1.0 / 1001.0);
        assert_eq!(s.p50_ms, 0.5);
        assert_eq!(s.p95_ms, 0.95);
        assert_eq!(s.p99_ms, 0.99);
        assert_eq!(s.max_ms, 1.0);
        assert_eq!(s.recall, Some(0.75));
        assert_eq!(s.in_flight_mean, 5.0);
        assert_eq!(s.in_flight_max, 6);
        assert!(s.valid);
        assert_eq!(s.invalid_reason, None);
        let names: Vec<&str> = s.operations.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, vec!["query", "search"]);
        assert_eq!(s.operations[0].qps, 0.1);
        assert_eq!(s.operations[0].error_ratio, 1.0);
        assert_eq!(s.operations[1].qps, 100.0);
        assert_eq!(s.operations[1].p95_ms, 0.95);
        assert_eq!(s.operations[1].recall, Some(0.75));
    }

    #[test]
    fn a_stage_without_time_or_requests_is_invalid_and_all_zero() {
        let empty = summarize_stage(&StageMeasurement::default(), Some(10), None);
        assert_eq!(empty.qps, 0.0);
        assert_eq!(empty.p95_ms, 0.0);
        assert_eq!(empty.error_ratio, 0.0);
        assert!(!empty.valid);
        assert_eq!(
            empty.invalid_reason.as_deref(),
            Some("no steady-state time was measured")
        );

        let idle = StageMeasurement {
            steady_seconds: 30.0,
            complete: true,
            ..StageMeasurement::default()
        };
        let s = summarize_stage(&idle, Some(10), None);
        assert_eq!(s.qps, 0.0);
        assert!(!s.valid);
        assert_eq!(
            s.invalid_reason.as_deref(),
            Some("no request completed in the steady state")
        );

        let mut cut = idle.clone();
        cut.complete = false;
        cut.steady.op_mut("search").record_success(1000, 1);
        let s = summarize_stage(&cut, Some(10), None);
        assert_eq!(
            s.invalid_reason.as_deref(),
            Some("the stage did not run to its end")
        );

        let nan = StageMeasurement {
            steady_seconds: f64::NAN,
            ..cut
        };
        assert_eq!(summarize_stage(&nan, None, Some(5.0)).qps, 0.0);
    }

    #[test]
    fn steady_growth_has_no_saturation() {
        let stages = vec![
            stage(0, 10, 200.0, 20.0),
            stage(1, 50, 800.0, 25.0),
            stage(2, 100, 1500.0, 30.0),
            // +5% QPS but P95 only ×1.2: slow growth, not a knee.
            stage(3, 200, 1575.0, 36.0),
        ];
        assert_eq!(saturation(&stages, &rules()), None);
    }

    #[test]
    fn a_knee_is_the_stage_where_qps_barely_grows_while_p95_doubles() {
        let stages = vec![
            stage(0, 10, 200.0, 20.0),
            stage(1, 50, 812.0, 38.0),
            stage(2, 100, 836.36, 80.0),
            stage(3, 200, 700.0, 300.0),
        ];
        assert_eq!(
            saturation(&stages, &rules()),
            Some(Saturation {
                stage: 2,
                users: Some(100),
                rate: None,
                qps: 836.36,
                reason: "users 50→100 (+100%) raised QPS only 3% (812→836) while P95 rose 2.1× (38→80 ms)"
                    .to_string(),
            })
        );
    }

    #[test]
    fn falling_qps_is_saturation() {
        let stages = vec![stage(0, 100, 1000.0, 40.0), stage(1, 200, 950.0, 45.0)];
        let s = saturation(&stages, &rules()).unwrap();
        assert_eq!(s.stage, 1);
        assert_eq!(
            s.reason,
            "users 100→200 (+100%) lowered QPS 5% (1000→950) while P95 went 40→45 ms"
        );
    }

    #[test]
    fn falling_qps_after_fewer_users_is_not_saturation() {
        let stages = vec![stage(0, 200, 1000.0, 40.0), stage(1, 10, 200.0, 20.0)];
        assert_eq!(saturation(&stages, &rules()), None);
    }

    #[test]
    fn errors_above_the_limit_are_saturation() {
        let stages = vec![
            stage(0, 10, 200.0, 20.0),
            with_errors(stage(1, 50, 800.0, 25.0), 1200),
        ];
        let s = saturation(&stages, &rules()).unwrap();
        assert_eq!(s.stage, 1);
        assert_eq!(
            s.reason,
            "at users 50, 2.5% of requests failed (1200 of 48000), above the 1% limit"
        );
    }

    #[test]
    fn errors_at_the_limit_are_not_saturation() {
        // 480 of 48000 is exactly 1%, not above it.
        let stages = vec![
            stage(0, 10, 200.0, 20.0),
            with_errors(stage(1, 50, 800.0, 25.0), 480),
        ];
        let at_limit = SaturationRules {
            max_error_ratio: 0.01,
            ..rules()
        };
        assert_eq!(stages[1].error_ratio, 0.01);
        assert_eq!(saturation(&stages, &at_limit), None);
    }

    #[test]
    fn invalid_stages_are_skipped_and_named() {
        let stages = vec![
            stage(0, 10, 200.0, 20.0),
            stage(1, 50, 812.0, 38.0),
            // Would look like a knee after stage 2 and a collapse before stage 4.
            invalid(
                stage(2, 100, 100.0, 500.0),
                "no request completed in the steady state",
            ),
            stage(3, 200, 1600.0, 40.0),
        ];
        assert_eq!(saturation(&stages, &rules()), None);
        assert_eq!(peak(&stages).unwrap().stage, 3);

        let mut stages = stages;
        stages.push(stage(4, 400, 1615.0, 92.0));
        let s = saturation(&stages, &rules()).unwrap();
        assert_eq!(s.stage, 4);
        assert_eq!(
            s.reason,
            "users 200→400 (+100%) raised QPS only 0.94% (1600→1615) while P95 rose 2.3× (40→92 ms); skipped invalid stage 3 (no request completed in the steady state)"
        );
    }

    #[test]
    fn open_model_sentences_name_the_rate() {
        let mut a = stage(0, 0, 500.0, 10.0);
        a.users = None;
        a.rate = Some(500.0);
        let mut b = stage(1, 0, 510.0, 40.0);
        b.users = None;
        b.rate = Some(1000.0);
        let s = saturation(&[a, b], &rules()).unwrap();
        assert_eq!(
            s.reason,
            "rate 500→1000/s (+100%) raised QPS only 2% (500→510) while P95 rose 4× (10→40 ms)"
        );
        assert_eq!(s.rate, Some(1000.0));
    }

    #[test]
    fn peak_is_the_highest_qps_of_a_valid_stage() {
        let stages = vec![
            stage(0, 10, 200.0, 20.0),
            invalid(
                stage(1, 50, 5000.0, 25.0),
                "the stage did not run to its end",
            ),
            stage(2, 100, 900.0, 30.0),
            stage(3, 200, 900.0, 60.0),
        ];
        assert_eq!(
            peak(&stages),
            Some(Peak {
                stage: 2,
                users: Some(100),
                rate: None,
                qps: 900.0
            })
        );
    }

    fn classic_sla() -> SlaCriteria {
        SlaCriteria {
            min_qps: Some(1000.0),
            max_p95_ms: Some(100.0),
            max_p99_ms: None,
            max_error_ratio: Some(0.001),
            recall_at_least: None,
        }
    }

    #[test]
    fn capacity_at_sla_is_the_best_stage_meeting_latency_even_if_a_later_stage_fails() {
        let stages = vec![
            stage(0, 10, 200.0, 20.0),
            stage(1, 50, 700.0, 40.0),
            stage(2, 100, 1200.0, 80.0),
            stage(3, 200, 1400.0, 150.0),
        ];
        let v = sla_verdict(&stages, &classic_sla());
        assert!(v.passed);
        assert_eq!(v.capacity_at_sla_qps, 1200.0);
        assert_eq!(v.best_stage, Some(2));
        assert_eq!(
            v.checks,
            vec![
                SlaCheck {
                    name: "minQps".into(),
                    target: "≥ 1000 QPS".into(),
                    observed: "1200 QPS at stage 3 (the highest QPS meeting every other criterion)"
                        .into(),
                    passed: true,
                },
                SlaCheck {
                    name: "maxP95".into(),
                    target: "≤ 100 ms".into(),
                    observed: "80 ms".into(),
                    passed: true,
                },
                SlaCheck {
                    name: "maxErrorRatio".into(),
                    target: "≤ 0.1%".into(),
                    observed: "0% (0 of 72000 requests failed)".into(),
                    passed: true,
                },
            ]
        );
        let passed: Vec<bool> = v.stages.iter().map(|s| s.passed).collect();
        assert_eq!(passed, vec![true, true, true, false]);
        assert_eq!(v.stages[3].checks[0].observed, "150 ms");
        assert!(!v.stages[3].checks[0].passed);
    }

    #[test]
    fn no_stage_meeting_p95_fails_and_shows_the_observed_values() {
        let stages = vec![
            stage(0, 10, 200.0, 120.0),
            stage(1, 50, 700.0, 180.0),
            invalid(
                stage(2, 100, 9000.0, 1.0),
                "the stage did not run to its end",
            ),
        ];
        let v = sla_verdict(&stages, &classic_sla());
        assert!(!v.passed);
        assert_eq!(v.capacity_at_sla_qps, 0.0);
        assert_eq!(v.best_stage, None);
        assert_eq!(v.checks.len(), 3);
        assert_eq!(
            v.checks[0],
            SlaCheck {
                name: "minQps".into(),
                target: "≥ 1000 QPS".into(),
                observed: "0 QPS: no stage met every other criterion (highest QPS 700 at stage 2)"
                    .into(),
                passed: false,
            }
        );
        assert_eq!(
            v.checks[1],
            SlaCheck {
                name: "maxP95".into(),
                target: "≤ 100 ms".into(),
                observed: "180 ms".into(),
                passed: false,
            }
        );
        assert!(v.checks[2].passed);
        assert_eq!(v.stages[2].checks[0].name, "validStage");
        assert_eq!(
            v.stages[2].checks[0].observed,
            "the stage did not run to its end"
        );
        assert!(!v.stages[2].passed);
    }

    #[test]
    fn a_stage_without_recall_fails_recall_at_least() {
        let mut s = stage(0, 10, 2000.0, 20.0);
        s.recall = None;
        let sla = SlaCriteria {
            recall_at_least: Some(0.9),
            ..SlaCriteria::default()
        };
        let v = sla_verdict(&[s.clone()], &sla);
        assert!(!v.passed);
        assert_eq!(
            v.checks,
            vec![SlaCheck {
                name: "recallAtLeast".into(),
                target: "≥ 0.900".into(),
                observed: "not measured (no search with ground truth in this stage)".into(),
                passed: false,
            }]
        );
        s.recall = Some(0.93);
        let v = sla_verdict(&[s], &sla);
        assert!(v.passed);
        assert_eq!(v.checks[0].observed, "0.930");
        assert_eq!(v.capacity_at_sla_qps, 2000.0);
    }

    #[test]
    fn a_stage_where_every_request_failed_fails_latency_checks() {
        let mut s = with_errors(stage(0, 10, 100.0, 0.0), 6000);
        s.p99_ms = 0.0;
        let sla = SlaCriteria {
            max_p99_ms: Some(250.0),
            ..SlaCriteria::default()
        };
        let v = sla_verdict(&[s], &sla);
        assert!(!v.passed);
        assert_eq!(v.checks[0].observed, "no successful request");
    }

    #[test]
    fn without_min_qps_the_sla_passes_when_a_stage_meets_every_criterion() {
        let sla = SlaCriteria {
            max_p95_ms: Some(50.0),
            ..SlaCriteria::default()
        };
        let stages = vec![stage(0, 10, 200.0, 20.0), stage(1, 50, 300.0, 60.0)];
        let v = sla_verdict(&stages, &sla);
        assert!(v.passed);
        assert_eq!(v.capacity_at_sla_qps, 200.0);
        assert_eq!(v.best_stage, Some(0));
    }

    #[test]
    fn capacity_plan_divides_and_rounds_up() {
        let cfg = CapacityConfig {
            target_qps: 10000.0,
            redundancy: 2.0,
            measured_query_nodes: 1,
        };
        let plan = capacity_plan(1200.0, "capacity at SLA", &cfg).unwrap();
        assert_eq!(plan.per_node_qps, 1200.0);
        assert_eq!(plan.nodes_for_target, 9);
        assert_eq!(plan.with_redundancy, 18);
        assert_eq!(plan.basis, "capacity at SLA");
        assert_eq!(
            plan.explanation,
            "capacity at SLA: 1200 QPS on 1 query node = 1200 QPS per node; 10000 QPS needs ⌈10000 / 1200⌉ = 9 nodes, × redundancy 2 = 18 nodes"
        );
    }

    #[test]
    fn capacity_plan_does_not_add_a_node_for_float_noise() {
        // 10 × 1.1 is 11.000000000000002 in f64: still 11 nodes.
        let cfg = CapacityConfig {
            target_qps: 10000.0,
            redundancy: 1.1,
            measured_query_nodes: 3,
        };
        let plan = capacity_plan(3000.0, "peak QPS (no SLA)", &cfg).unwrap();
        assert_eq!(plan.per_node_qps, 1000.0);
        assert_eq!(plan.nodes_for_target, 10);
        assert_eq!(plan.with_redundancy, 11);
        // (0.1 + 0.2) / 0.3 is 1.0000000000000002: still 1 node.
        let tiny = CapacityConfig {
            target_qps: 0.1 + 0.2,
            redundancy: 1.0,
            measured_query_nodes: 1,
        };
        let plan = capacity_plan(0.3, "peak QPS (no SLA)", &tiny).unwrap();
        assert_eq!(plan.nodes_for_target, 1);
        assert_eq!(plan.with_redundancy, 1);
    }

    #[test]
    fn zero_or_nonsense_capacity_gives_no_plan() {
        let cfg = CapacityConfig {
            target_qps: 10000.0,
            redundancy: 2.0,
            measured_query_nodes: 1,
        };
        assert_eq!(capacity_plan(0.0, "capacity at SLA", &cfg), None);
        assert_eq!(capacity_plan(f64::NAN, "capacity at SLA", &cfg), None);
        assert_eq!(capacity_plan(-5.0, "capacity at SLA", &cfg), None);
        let no_target = CapacityConfig {
            target_qps: 0.0,
            ..cfg
        };
        assert_eq!(capacity_plan(100.0, "capacity at SLA", &no_target), None);
        let odd = CapacityConfig {
            target_qps: 1e300,
            redundancy: f64::INFINITY,
            measured_query_nodes: 0,
        };
        let plan = capacity_plan(1e-300, "peak QPS (no SLA)", &odd).unwrap();
        assert_eq!(plan.nodes_for_target, u64::MAX);
        assert_eq!(plan.with_redundancy, u64::MAX);
    }

    #[test]
    fn an_empty_stage_list_does_not_panic() {
        assert_eq!(saturation(&[], &rules()), None);
        assert_eq!(peak(&[]), None);
        let v = sla_verdict(&[], &classic_sla());
        assert!(!v.passed);
        assert_eq!(v.capacity_at_sla_qps, 0.0);
        assert_eq!(v.best_stage, None);
        assert!(v.stages.is_empty());
        assert_eq!(
            v.checks,
            vec![
                SlaCheck {
                    name: "minQps".into(),
                    target: "≥ 1000 QPS".into(),
                    observed: "0 QPS: no valid stage was measured".into(),
                    passed: false,
                },
                SlaCheck {
                    name: "maxP95".into(),
                    target: "≤ 100 ms".into(),
                    observed: "no valid stage was measured".into(),
                    passed: false,
                },
                SlaCheck {
                    name: "maxErrorRatio".into(),
                    target: "≤ 0.1%".into(),
                    observed: "no valid stage was measured".into(),
                    passed: false,
                },
            ]
        );
        let v = sla_verdict(&[], &SlaCriteria::default());
        assert!(!v.passed);
        assert!(v.checks.is_empty());
    }

    #[test]
    fn results_serialize_in_camel_case() {
        let s = summarize_stage(&StageMeasurement::default(), Some(1), None);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("p95Ms").is_some(), "{json}");
        assert!(json.get("invalidReason").is_some(), "{json}");
        let back: StageSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        let v = sla_verdict(&[], &classic_sla());
        let json = serde_json::to_value(&v).unwrap();
        assert!(json.get("capacityAtSlaQps").is_some(), "{json}");
    }
}
