//! Two runs side by side, as a regression is investigated: per-stage throughput and latency with
//! their relative change, totals, and the SLA checks of both.

use serde::{Deserialize, Serialize};

use super::model::{TestDetail, TestSummary};

/// One stage's figures in one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageFigures {
    /// Users asked for (closed model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    /// Rate asked for, requests/s (open model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Requests per second.
    pub qps: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Failed share.
    pub error_ratio: f64,
    /// Whether the stage measured something usable.
    pub valid: bool,
}

/// A stage of both runs (by position), with B's change relative to A in percent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageComparison {
    /// Stage index, from 0.
    pub stage: usize,
    /// Run A's figures, if it has the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<StageFigures>,
    /// Run B's figures, if it has the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<StageFigures>,
    /// (B − A) / A × 100 of QPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps_delta_pct: Option<f64>,
    /// Same for P95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_delta_pct: Option<f64>,
    /// Same for P99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_delta_pct: Option<f64>,
}

/// One SLA criterion in both runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckComparison {
    /// Criterion, e.g. `maxP95`.
    pub name: String,
    /// Target in A (or B when A lacks the criterion), e.g. `≤ 100 ms`.
    pub target: String,
    /// A's observation and whether it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<(String, bool)>,
    /// B's observation and whether it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<(String, bool)>,
}

/// `GET /api/compare?a=…&b=…`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// Run A (the baseline).
    pub a: TestSummary,
    /// Run B (compared with A).
    pub b: TestSummary,
    /// Per stage, by position.
    pub stages: Vec<StageComparison>,
    /// (B − A) / A × 100 of the total QPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps_delta_pct: Option<f64>,
    /// Same for the total P95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_delta_pct: Option<f64>,
    /// Same for the total P99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_delta_pct: Option<f64>,
    /// Whether each run met its SLA (absent: no SLA or not finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_passed_a: Option<bool>,
    /// Same for B.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_passed_b: Option<bool>,
    /// The SLA criteria of both runs.
    pub checks: Vec<CheckComparison>,
}

/// (b − a) / a × 100; `None` when a is 0 or either is not finite.
pub fn delta_pct(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && a != 0.0).then(|| (b - a) / a * 100.0)
}

fn figures(d: &TestDetail, i: usize) -> Option<StageFigures> {
    d.stages.get(i).map(|s| StageFigures {
        users: s.users,
        rate: s.rate,
        qps: s.qps,
        p95_ms: s.p95_ms,
        p99_ms: s.p99_ms,
        error_ratio: s.error_ratio,
        valid: s.valid,
    })
}

/// Compares run `b` with the baseline `a` (pure).
pub fn compare(a: &TestDetail, b: &TestDetail) -> Comparison {
    let n = a.stages.len().max(b.stages.len());
    let stages = (0..n)
        .map(|i| {
            let (fa, fb) = (figures(a, i), figures(b, i));
            let d = |f: fn(&StageFigures) -> f64| match (&fa, &fb) {
                (Some(x), Some(y)) => delta_pct(f(x), f(y)),
                _ => None,
            };
            StageComparison {
                stage: i,
                qps_delta_pct: d(|s| s.qps),
                p95_delta_pct: d(|s| s.p95_ms),
                p99_delta_pct: d(|s| s.p99_ms),
                a: fa,
                b: fb,
            }
        })
        .collect();
    let total = |f: fn(&TestSummary) -> Option<f64>| match (f(&a.summary), f(&b.summary)) {
        (Some(x), Some(y)) => delta_pct(x, y),
        _ => None,
    };
    let mut checks: Vec<CheckComparison> = Vec::new();
    for (side, d) in [(0, a), (1, b)] {
        for c in d.sla.iter().flat_map(|s| s.checks.iter()) {
            let pos = match checks.iter().position(|x| x.name == c.name) {
                Some(p) => p,
                None => {
                    checks.push(CheckComparison {
                        name: c.name.clone(),
                        target: c.target.clone(),
                        ..CheckComparison::default()
                    });
                    checks.len() - 1
                }
            };
            if let Some(x) = checks.get_mut(pos) {
                let v = Some((c.observed.clone(), c.passed));
                if side == 0 {
                    x.a = v;
                } else {
                    x.b = v;
                }
            }
        }
    }
    Comparison {
        a: a.summary.clone(),
        b: b.summary.clone(),
        stages,
        qps_delta_pct: total(|s| s.qps),
        p95_delta_pct: total(|s| s.p95_ms),
        p99_delta_pct: total(|s| s.p99_ms),
        sla_passed_a: a.sla.as_ref().map(|s| s.passed),
        sla_passed_b: b.sla.as_ref().map(|s| s.passed),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_relative_to_the_baseline_and_absent_from_zero() {
        assert_eq!(delta_pct(100.0, 120.0), Some(20.0));
        assert_eq!(delta_pct(200.0, 150.0), Some(-25.0));
        assert_eq!(delta_pct(0.0, 5.0), None);
        assert_eq!(delta_pct(f64::NAN, 5.0), None);
    }
}
