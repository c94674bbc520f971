//! What the dashboard shows, as serialisable types: the JSON of `/api/tests` and
//! `/api/tests/{ns}/{name}`, built from a finished [`RunResult`], from a StressTest status, or
//! (locally) from the running engine.

use serde::{Deserialize, Serialize};

use crate::analysis::{CapacityPlan, OperationSummary, Peak, Saturation, SlaVerdict, StageSummary};
use crate::result::{FailureSummary, RunResult, SeriesPoint, Totals};
use crate::spec::{LoadModel, Phase, SlaVerdictLabel, StressTestSpec, StressTestStatus};

/// One line of the list page and of `GET /api/tests`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestSummary {
    /// Namespace of the StressTest; `local` for `stampede run --ui`.
    pub namespace: String,
    /// Name in URLs: the StressTest's name (locally: the result directory's name).
    pub name: String,
    /// Pending, Preparing, Running, Analyzing, Succeeded or Failed.
    pub phase: Phase,
    /// Stage being run or last run, e.g. `2/3 · 8 users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// Start, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// End, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Requests per second: over every steady state when finished, over the last seconds
    /// while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps: Option<f64>,
    /// 95th percentile latency, ms (same basis as `qps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    /// 99th percentile latency, ms (same basis as `qps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Failed share of the completed requests (same basis as `qps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio: Option<f64>,
    /// PASS or FAIL once the SLA has been checked; absent without an SLA or before the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SlaVerdictLabel>,
    /// State, result or error in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Figures of the running test, refreshed every second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveFigures {
    /// Stage being run, from 0.
    pub stage: usize,
    /// Stages in the plan.
    pub stages: usize,
    /// Users are still being started or stopped (closed model).
    pub ramping: bool,
    /// Users running now (closed model) or the arrival rate asked for now, requests/s (open).
    pub users: u64,
    /// Users (closed) or rate (open) the current stage asks for.
    pub asked: f64,
    /// Requests in flight right now.
    pub in_flight: u64,
    /// Completed requests per second over the last (up to 3) complete seconds.
    pub qps: f64,
    /// Median latency of the successful requests of those seconds, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Failed requests per second over those seconds.
    pub failures_per_second: f64,
    /// Requests completed since the start, ramps included.
    pub requests: u64,
    /// Requests failed since the start.
    pub failures: u64,
    /// Seconds since the load started.
    pub elapsed_seconds: f64,
    /// Seconds the stages last in total.
    pub planned_seconds: f64,
}

/// A file of a test that can be downloaded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Download {
    /// File name, e.g. `result.json`, `report.html`, `stampede_stats.csv`.
    pub name: String,
    /// Path on the dashboard server (`/tests/{ns}/{name}/{file}`); set by the server.
    #[serde(default)]
    pub url: String,
}

/// Everything the test page shows: `GET /api/tests/{ns}/{name}`.
///
/// Fields a source does not know stay empty (`[]`) or absent; the page leaves their sections
/// out. While a test runs, `live` holds the current figures, `series` grows every second and
/// `stages` ends with the running stage (marked `valid: false`, reason `running`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestDetail {
    /// The list fields.
    #[serde(flatten)]
    pub summary: TestSummary,
    /// `Closed` or `Open`.
    pub model: String,
    /// Consistency level of the requests.
    #[serde(default)]
    pub consistency: String,
    /// Milvus address (any user:password@ part removed).
    #[serde(default)]
    pub target: String,
    /// Milvus version, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_version: String,
    /// Whether every stage ran to its end (absent while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    /// Why the run is incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_reason: Option<String>,
    /// Current figures while the test runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveFigures>,
    /// Per-second timeline (all operations), ramps included.
    #[serde(default)]
    pub series: Vec<SeriesPoint>,
    /// Per stage, steady state (the running stage: so far, ramp included).
    #[serde(default)]
    pub stages: Vec<StageSummary>,
    /// Per operation: over every steady state when finished, since the start while running.
    #[serde(default)]
    pub operations: Vec<OperationSummary>,
    /// Failures by operation and kind, with the first message of each.
    #[serde(default)]
    pub failures: Vec<FailureSummary>,
    /// All operations over every steady state (finished tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
    /// Highest-QPS valid stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<Peak>,
    /// Where more load stopped buying throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation: Option<Saturation>,
    /// SLA verdict with every check (finished tests with an SLA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SlaVerdict>,
    /// Query nodes for spec.capacity.targetQps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityPlan>,
    /// Mean recall@k over the searches with ground truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    /// What limited the server in each stage (when the run observed it), with evidence and,
    /// on the saturation stage, recommendations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bottlenecks: Vec<crate::bottleneck::StageBottleneck>,
    /// Files to download.
    #[serde(default)]
    pub downloads: Vec<Download>,
    /// The spec that runs (target address without credentials; a credentials Secret appears by
    /// name only, never its content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<StressTestSpec>,
}

impl TestDetail {
    /// An empty detail of a test that has not measured anything yet.
    pub fn new(namespace: &str, name: &str, phase: Phase, spec: Option<&StressTestSpec>) -> Self {
        TestDetail {
            summary: TestSummary {
                namespace: namespace.to_string(),
                name: name.to_string(),
                phase,
                ..TestSummary::default()
            },
            model: spec
                .map_or("Closed", |s| model_name(s.workload.model))
                .to_string(),
            consistency: spec
                .map(|s| format!("{:?}", s.workload.consistency))
                .unwrap_or_default(),
            target: spec
                .map(|s| redact_address(&s.target.address))
                .unwrap_or_default(),
            server_version: String::new(),
            complete: None,
            incomplete_reason: None,
            live: None,
            series: Vec::new(),
            stages: Vec::new(),
            operations: Vec::new(),
            failures: Vec::new(),
            totals: None,
            peak: None,
            saturation: None,
            sla: None,
            capacity: None,
            recall: None,
            bottlenecks: Vec::new(),
            downloads: Vec::new(),
            spec: spec.map(redact_spec),
        }
    }

    /// The detail of a finished run: Succeeded when it ran to its end (whatever the SLA
    /// verdict, as the operator does), Failed when it was interrupted or a stage did not finish.
    pub fn from_result(namespace: &str, name: &str, r: &RunResult) -> Self {
        let phase = if r.complete {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
        let mut d = TestDetail::new(namespace, name, phase, Some(&r.spec));
        d.summary.started_at = non_empty(&r.started_at);
        d.summary.finished_at = non_empty(&r.finished_at);
        d.summary.current_stage = r
            .stages
            .last()
            .map(|s| stage_label(s.index, r.spec.stages.len(), s.users, s.rate));
        d.summary.qps = Some(r.totals.qps);
        d.summary.p95_ms = Some(r.totals.p95_ms);
        d.summary.p99_ms = Some(r.totals.p99_ms);
        d.summary.error_ratio = Some(r.totals.error_ratio);
        d.summary.sla = r.sla.as_ref().map(|s| verdict_label(s.passed));
        d.summary.message = Some(result_message(r));
        d.model = r.model.clone();
        d.consistency = r.consistency.clone();
        d.target = redact_address(&r.target);
        d.server_version = r.server_version.clone();
        d.complete = Some(r.complete);
        d.incomplete_reason = r.incomplete_reason.clone();
        d.series = r.series.clone();
        d.stages = r.stages.clone();
        d.operations = r.operations.clone();
        d.failures = r.failures.clone();
        d.totals = Some(r.totals.clone());
        d.peak = r.peak.clone();
        d.saturation = r.saturation.clone();
        d.sla = r.sla.clone();
        d.capacity = r.capacity.clone();
        d.recall = r.totals.recall;
        d.bottlenecks = r.bottlenecks.clone();
        d
    }

    /// The detail the operator can show from a StressTest's spec and status alone (no
    /// per-second series, no failure examples: those are in the report ConfigMap's
    /// result.json, for which [`TestDetail::from_result`] is the better source).
    pub fn from_status(
        namespace: &str,
        name: &str,
        spec: &StressTestSpec,
        status: &StressTestStatus,
    ) -> Self {
        let phase = status.phase.unwrap_or_default();
        let mut d = TestDetail::new(namespace, name, phase, Some(spec));
        d.summary.current_stage = status.current_stage.clone();
        d.summary.message = status.message.clone();
        d.summary.started_at = status.start_time.as_ref().map(|t| t.0.to_string());
        d.summary.finished_at = status.completion_time.as_ref().map(|t| t.0.to_string());
        if let Some(t) = &status.totals {
            d.summary.qps = Some(t.qps);
            d.summary.p95_ms = Some(t.p95_ms);
            d.summary.p99_ms = Some(t.p99_ms);
            d.summary.error_ratio = Some(t.error_ratio);
        }
        d.summary.sla = status.sla.as_ref().map(|s| s.verdict);
        d.recall = status.recall;
        d.stages = status
            .stages
            .iter()
            .map(|s| StageSummary {
                index: s.stage.saturating_sub(1) as usize,
                users: s.users,
                rate: s.rate,
                seconds: 0.0,
                requests: s.requests,
                failures: s.failures,
                queries: 0,
                qps: s.qps,
                queries_per_second: 0.0,
                error_ratio: if s.requests > 0 {
                    s.failures as f64 / s.requests as f64
                } else {
                    0.0
                },
                p50_ms: s.p50_ms,
                p95_ms: s.p95_ms,
                p99_ms: s.p99_ms,
                max_ms: s.max_ms,
                mean_ms: 0.0,
                recall: s.recall,
                in_flight_mean: s.in_flight_mean,
                in_flight_max: s.in_flight_max,
                late: 0,
                dropped: 0,
                valid: s.valid,
                invalid_reason: s.reason.clone(),
                operations: Vec::new(),
            })
            .collect();
        d.operations = status
            .operations
            .iter()
            .map(|o| OperationSummary {
                name: o.name.clone(),
                requests: o.requests,
                failures: o.failures,
                queries: 0,
                qps: o.qps,
                p50_ms: 0.0,
                p95_ms: o.p95_ms,
                p99_ms: o.p99_ms,
                max_ms: 0.0,
                error_ratio: if o.requests > 0 {
                    o.failures as f64 / o.requests as f64
                } else {
                    0.0
                },
                recall: None,
            })
            .collect();
        d.peak = status.peak.as_ref().map(|p| Peak {
            stage: p.stage.saturating_sub(1) as usize,
            users: p.users,
            rate: p.rate,
            qps: p.qps,
        });
        d.saturation = status.saturation.as_ref().map(|s| Saturation {
            stage: s.stage.saturating_sub(1) as usize,
            users: s.users,
            rate: s.rate,
            qps: s.qps,
            reason: s.reason.clone(),
        });
        d.sla = status.sla.as_ref().map(|s| SlaVerdict {
            passed: s.passed,
            capacity_at_sla_qps: s.capacity_at_sla_qps,
            best_stage: None,
            checks: s
                .checks
                .iter()
                .map(|c| crate::analysis::SlaCheck {
                    name: c.name.clone(),
                    target: c.target.clone(),
                    observed: c.observed.clone(),
                    passed: c.passed,
                })
                .collect(),
            stages: Vec::new(),
        });
        d.capacity = status.capacity.as_ref().map(|c| CapacityPlan {
            per_node_qps: c.per_node_qps,
            nodes_for_target: c.nodes_for_target,
            with_redundancy: c.with_redundancy,
            basis: c.basis.clone(),
            explanation: String::new(),
        });
        d
    }

    /// Whether nothing more will change.
    pub fn is_finished(&self) -> bool {
        self.summary.phase.is_finished()
    }
}

/// `Closed` or `Open`.
pub fn model_name(model: LoadModel) -> &'static str {
    match model {
        LoadModel::Closed => "Closed",
        LoadModel::Open => "Open",
    }
}

/// PASS or FAIL.
pub fn verdict_label(passed: bool) -> SlaVerdictLabel {
    if passed {
        SlaVerdictLabel::Pass
    } else {
        SlaVerdictLabel::Fail
    }
}

/// `1 user`, `8 users`.
pub fn users_words(users: u64) -> String {
    if users == 1 {
        "1 user".to_string()
    } else {
        format!("{users} users")
    }
}

/// `2/3 · 8 users` or `2/3 · 500 requests/s`.
pub fn stage_label(index: usize, stages: usize, users: Option<u64>, rate: Option<f64>) -> String {
    let load = match (users, rate) {
        (Some(u), _) => format!(" · {}", users_words(u)),
        (None, Some(r)) => format!(" · {} requests/s", crate::chart::format_number(r)),
        _ => String::new(),
    };
    format!("{}/{}{load}", index + 1, stages.max(index + 1))
}

/// One sentence about a finished run.
fn result_message(r: &RunResult) -> String {
    if let Some(reason) = &r.incomplete_reason {
        return format!("incomplete: {reason}");
    }
    match &r.sla {
        Some(s) if s.passed => "finished; the SLA is met".to_string(),
        Some(_) => "finished; the SLA is missed".to_string(),
        None => "finished (no SLA set)".to_string(),
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// `address` without a `user:password@` part (an address is never a secret, credentials in it
/// would be).
pub fn redact_address(address: &str) -> String {
    let (scheme, rest) = match address.find("://") {
        Some(i) => address.split_at(i + 3),
        None => ("", address),
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => address.to_string(),
    }
}

/// The spec as the dashboard shows it: the target address without credentials. The spec holds
/// no secret otherwise (credentials come from a Secret named in it, or from the environment).
pub fn redact_spec(spec: &StressTestSpec) -> StressTestSpec {
    let mut spec = spec.clone();
    spec.target.address = redact_address(&spec.target.address);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_an_address_are_removed_and_the_rest_is_kept() {
        assert_eq!(
            redact_address("https://root:Milvus@db.example:19530"),
            "https://db.example:19530"
        );
        assert_eq!(redact_address("user:pw@10.0.0.1:19530"), "10.0.0.1:19530");
        assert_eq!(redact_address("127.0.0.1:19530"), "127.0.0.1:19530");
        assert_eq!(
            redact_address("http://h:1/path@x"),
            "http://h:1/path@x",
            "an @ after the host is not userinfo"
        );
    }

    #[test]
    fn stage_labels_count_from_one_and_name_the_load() {
        assert_eq!(stage_label(1, 3, Some(8), None), "2/3 · 8 users");
        assert_eq!(
            stage_label(0, 2, None, Some(1500.0)),
            "1/2 · 1.5k requests/s"
        );
        assert_eq!(stage_label(4, 2, None, None), "5/5");
    }
}
