//! The result of a test run: what `result.json` holds and what the operator writes (in part) into
//! the StressTest status. Built from merged measurements by pure functions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analysis::{
    self, CapacityConfig, CapacityPlan, Peak, Saturation, SaturationRules, SlaCriteria, SlaVerdict,
    StageSummary,
};
use crate::bottleneck::{self, StageBottleneck, StageFacts, Thresholds};
use crate::metrics::{CpuSample, OpWindow, Snapshot};
use crate::observe::{self, ServerObservation};
use crate::prepare::PrepareSummary;
use crate::spec::{LoadModel, StressTestSpec};

/// Format version of result.json.
pub const RESULT_VERSION: u32 = 1;

/// One point of the per-second timeline (all operations).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    /// Seconds since the test start.
    pub second: u64,
    /// Stage index.
    pub stage: usize,
    /// Users (closed) or target rate (open).
    pub users: u64,
    /// Requests completed in this second.
    pub requests: u64,
    /// Failed requests in this second.
    pub failures: u64,
    /// Median latency of successful requests, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Most requests in flight at once.
    pub in_flight_max: u64,
}

/// A failure kind with its count and an example, per operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureSummary {
    /// Operation name.
    pub operation: String,
    /// Kind label, e.g. `grpc:UNAVAILABLE`, `milvus:65535`, `timeout`.
    pub kind: String,
    /// Occurrences over the whole test.
    pub count: u64,
    /// First message seen.
    pub example: String,
}

/// Totals over the steady state of every stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Requests completed.
    pub requests: u64,
    /// Requests failed.
    pub failures: u64,
    /// Query vectors searched.
    pub queries: u64,
    /// Requests per second over the steady states.
    pub qps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest request, ms.
    pub max_ms: f64,
    /// Failed share.
    pub error_ratio: f64,
    /// Mean recall@k, when measured.
    pub recall: Option<f64>,
}

/// Everything a run produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// Format version.
    pub version: u32,
    /// StressTest name.
    pub name: String,
    /// Start, RFC 3339.
    pub started_at: String,
    /// End, RFC 3339.
    pub finished_at: String,
    /// False when the run was interrupted or a stage did not finish.
    pub complete: bool,
    /// Why it is incomplete.
    pub incomplete_reason: Option<String>,
    /// Milvus address.
    pub target: String,
    /// Milvus version.
    pub server_version: String,
    /// Closed or Open.
    pub model: String,
    /// Consistency level of the requests.
    pub consistency: String,
    /// In-process shards (workers) that generated the load.
    pub shards: u32,
    /// The spec that ran.
    pub spec: StressTestSpec,
    /// Per stage, steady state.
    pub stages: Vec<StageSummary>,
    /// Per stage, ramp (closed model), for reference.
    pub ramps: Vec<StageSummary>,
    /// Totals over all steady states.
    pub totals: Totals,
    /// Per operation over all steady states.
    pub operations: Vec<analysis::OperationSummary>,
    /// Failures by operation and kind.
    pub failures: Vec<FailureSummary>,
    /// Highest-QPS stage.
    pub peak: Option<Peak>,
    /// Where more load stopped buying throughput.
    pub saturation: Option<Saturation>,
    /// SLA verdict, when an SLA is set.
    pub sla: Option<SlaVerdict>,
    /// Capacity plan, when capacity is set.
    pub capacity: Option<CapacityPlan>,
    /// What prepare did.
    pub prepare: Option<PrepareSummary>,
    /// Per-second timeline.
    pub series: Vec<SeriesPoint>,
    /// Load generator CPU, per second.
    pub client_cpu: Vec<CpuSample>,
    /// What the Milvus servers did, from their Prometheus metrics: the time series and the
    /// per-stage figures, or why they were not observed.
    #[serde(default)]
    pub server: ServerObservation,
    /// Per stage: the limiting resource with its evidence, and recommendations.
    #[serde(default)]
    pub bottlenecks: Vec<StageBottleneck>,
    /// The merged raw measurements, histograms included (HdrHistogram V2, base64).
    pub measurements: Snapshot,
}

impl RunResult {
    /// Exit code of `stampede run`: 0 when the SLA passes or none is set, 1 when it fails.
    pub fn sla_passed(&self) -> bool {
        self.sla.as_ref().is_none_or(|s| s.passed)
    }
}

/// Facts about a run that are not in the measurements.
#[derive(Clone, Debug, Default)]
pub struct RunContext {
    /// StressTest name.
    pub name: String,
    /// Start, RFC 3339.
    pub started_at: String,
    /// End, RFC 3339.
    pub finished_at: String,
    /// Milvus address.
    pub target: String,
    /// Milvus version.
    pub server_version: String,
    /// Why the run stopped early, if it did.
    pub interrupted: Option<String>,
    /// What prepare did.
    pub prepare: Option<PrepareSummary>,
}

/// Share of a stage's wall time the load generator may spend at full CPU before the stage is
/// marked invalid: past it the client, not the server, may be the limit.
const CLIENT_CPU_LIMIT: f64 = 0.9;

/// Builds the result from merged measurements (pure).
pub fn build_result(spec: &StressTestSpec, ctx: RunContext, merged: Snapshot) -> RunResult {
    let closed = spec.workload.model == LoadModel::Closed;
    let asked = |i: usize| {
        let st = spec.stages.get(i);
        if closed {
            (st.and_then(|s| s.users).map(u64::from), None)
        } else {
            (None, st.and_then(|s| s.rate))
        }
    };
    let mut stages = Vec::new();
    let mut ramps = Vec::new();
    for m in &merged.stages {
        let (users, rate) = asked(m.stage);
        let mut s = analysis::summarize_stage(m, users, rate);
        if let Some(reason) = client_saturation(&merged.client_cpu, m.stage) {
            s.valid = false;
            s.invalid_reason = Some(reason);
        }
        if !m.complete && s.valid {
            s.valid = false;
            s.invalid_reason = Some("the stage did not run to its end".to_string());
        }
        stages.push(s);
        let mut ramp = m.clone();
        ramp.steady = m.ramp.clone();
        ramp.steady_seconds = m.ramp_seconds;
        ramps.push(analysis::summarize_stage(&ramp, users, rate));
    }

    // All steady states as one window: totals and per-operation figures come from the same
    // summary function as the stages, over the merged histograms.
    let mut per_op: BTreeMap<String, OpWindow> = BTreeMap::new();
    let mut seconds = 0.0;
    for m in &merged.stages {
        seconds += m.steady_seconds;
        for (name, w) in &m.steady.ops {
            per_op.entry(name.clone()).or_default().merge(w);
        }
    }
    let totals_measurement = crate::metrics::StageMeasurement {
        stage: 0,
        steady: crate::metrics::Window {
            ops: per_op,
            ..Default::default()
        },
        steady_seconds: seconds,
        complete: true,
        ..Default::default()
    };
    let all = analysis::summarize_stage(&totals_measurement, None, None);
    let totals = Totals {
        requests: all.requests,
        failures: all.failures,
        queries: all.queries,
        qps: all.qps,
        p50_ms: all.p50_ms,
        p95_ms: all.p95_ms,
        p99_ms: all.p99_ms,
        max_ms: all.max_ms,
        error_ratio: all.error_ratio,
        recall: all.recall,
    };
    let operations = all.operations;

    let mut failures = Vec::new();
    for m in &merged.stages {
        for w in [&m.ramp, &m.steady] {
            for (op, o) in &w.ops {
                for (kind, f) in &o.failures_by_kind {
                    match failures
                        .iter_mut()
                        .find(|x: &&mut FailureSummary| &x.operation == op && &x.kind == kind)
                    {
                        Some(x) => x.count += f.count,
                        None => failures.push(FailureSummary {
                            operation: op.clone(),
                            kind: kind.clone(),
                            count: f.count,
                            example: f.example.clone(),
                        }),
                    }
                }
            }
        }
    }

    let peak = analysis::peak(&stages);
    let saturation = analysis::saturation(&stages, &SaturationRules::default());
    let sla = spec.sla.as_ref().map(|s| {
        analysis::sla_verdict(
            &stages,
            &SlaCriteria {
                min_qps: s.min_qps,
                max_p95_ms: s.max_p95.map(|d| d.get().as_secs_f64() * 1000.0),
                max_p99_ms: s.max_p99.map(|d| d.get().as_secs_f64() * 1000.0),
                max_error_ratio: s.max_error_ratio,
                recall_at_least: s.recall_at_least,
            },
        )
    });
    let capacity = spec.capacity.as_ref().and_then(|c| {
        let cfg = CapacityConfig {
            target_qps: c.target_qps,
            redundancy: c.redundancy,
            measured_query_nodes: c.measured_query_nodes,
        };
        match &sla {
            Some(v) => analysis::capacity_plan(v.capacity_at_sla_qps, "capacity at SLA", &cfg),
            None => peak
                .as_ref()
                .and_then(|p| analysis::capacity_plan(p.qps, "peak QPS (no SLA set)", &cfg)),
        }
    });

    let ms = |us: u64| us as f64 / 1000.0;
    let series = merged
        .seconds
        .iter()
        .map(|s| {
            let t = s.window.total();
            SeriesPoint {
                second: s.second,
                stage: s.stage,
                users: s.window.users,
                requests: t.requests,
                failures: t.failures,
                p50_ms: ms(t.latency.quantile_us(0.5)),
                p95_ms: ms(t.latency.quantile_us(0.95)),
                p99_ms: ms(t.latency.quantile_us(0.99)),
                in_flight_max: s.window.in_flight_max,
            }
        })
        .collect();

    let incomplete_stage = merged.stages.iter().find(|m| !m.complete);
    let incomplete_reason = ctx.interrupted.clone().or_else(|| {
        incomplete_stage.map(|m| format!("stage {} did not run to its end", m.stage + 1))
    });
    let mut result = RunResult {
        version: RESULT_VERSION,
        name: ctx.name,
        started_at: ctx.started_at,
        finished_at: ctx.finished_at,
        complete: incomplete_reason.is_none() && merged.stages.len() == spec.stages.len(),
        incomplete_reason,
        target: ctx.target,
        server_version: ctx.server_version,
        model: format!("{:?}", spec.workload.model),
        consistency: format!("{:?}", spec.workload.consistency),
        shards: merged.shards,
        spec: spec.clone(),
        stages,
        ramps,
        totals,
        operations,
        failures,
        peak,
        saturation,
        sla,
        capacity,
        prepare: ctx.prepare,
        series,
        client_cpu: merged.client_cpu.clone(),
        server: ServerObservation::default(),
        bottlenecks: Vec::new(),
        measurements: merged,
    };
    result.bottlenecks = stage_bottlenecks(&result);
    result
}

/// Adds what the scraper saw of the server: the per-stage figures over each stage's steady
/// state, and the bottleneck verdicts judged again with them (pure).
pub fn attach_server(result: &mut RunResult, mut server: ServerObservation) {
    let durations: Vec<f64> = result
        .spec
        .stages
        .iter()
        .map(|s| s.duration.get().as_secs_f64())
        .collect();
    let find = |i: usize| result.measurements.stages.iter().find(|m| m.stage == i);
    let ramps: Vec<f64> = (0..durations.len())
        .map(|i| find(i).map_or(0.0, |m| m.ramp_seconds))
        .collect();
    let steady: Vec<f64> = (0..durations.len())
        .map(|i| find(i).map_or(0.0, |m| m.steady_seconds))
        .collect();
    let windows = observe::stage_windows(&durations, &ramps, &steady);
    let ran = result.stages.len().min(windows.len());
    server.stages = observe::aggregate_stages(&server.series, &windows[..ran]);
    for (stage, restarts) in server.stages.iter_mut().zip(observe::restarts_per_stage(
        &server.restarts,
        &windows[..ran],
    )) {
        stage.restarts = restarts;
    }
    if !server.observed {
        let reason = server.reason.clone();
        for s in &mut server.stages {
            s.observed = false;
            if reason.is_some() {
                s.note.clone_from(&reason);
            }
        }
    }
    result.server = server;
    result.bottlenecks = stage_bottlenecks(result);
}

/// The bottleneck verdict of every stage from the result's own figures (pure).
pub fn stage_bottlenecks(r: &RunResult) -> Vec<StageBottleneck> {
    let baseline = r.stages.first().map(|s| s.p95_ms);
    let facts: Vec<StageFacts> = r
        .stages
        .iter()
        .map(|s| {
            let cpu: Vec<&CpuSample> = r.client_cpu.iter().filter(|c| c.stage == s.index).collect();
            let client_cores = (!cpu.is_empty())
                .then(|| cpu.iter().map(|c| c.cores_used).sum::<f64>() / cpu.len() as f64);
            let client_cores_available = cpu.iter().map(|c| c.cores_available).reduce(f64::max);
            let mut failures_by_kind: Vec<(String, u64)> = Vec::new();
            if let Some(m) = r.measurements.stages.iter().find(|m| m.stage == s.index) {
                for o in m.steady.ops.values() {
                    for (kind, f) in &o.failures_by_kind {
                        match failures_by_kind.iter_mut().find(|(k, _)| k == kind) {
                            Some((_, n)) => *n += f.count,
                            None => failures_by_kind.push((kind.clone(), f.count)),
                        }
                    }
                }
            }
            let stage_server = r.server.stages.iter().find(|x| x.stage == s.index);
            let server = stage_server
                .filter(|x| x.observed && r.server.observed)
                .cloned();
            let server_note = stage_server
                .and_then(|x| x.note.clone())
                .or_else(|| r.server.reason.clone())
                .or_else(|| {
                    (!r.server.enabled).then(|| "not observed: observation was off".to_string())
                });
            let load = match (s.users, s.rate) {
                (Some(u), _) => format!("{u} users"),
                (None, Some(rate)) => format!("{rate} req/s"),
                _ => format!("stage {}", s.index + 1),
            };
            StageFacts {
                stage: s.index,
                load,
                requests: s.requests,
                failures: s.failures,
                error_ratio: s.error_ratio,
                failures_by_kind,
                p95_ms: s.p95_ms,
                baseline_p95_ms: baseline,
                recall: s.recall,
                client_saturated: client_saturation(&r.client_cpu, s.index).is_some(),
                client_cores,
                client_cores_available,
                server,
                server_note,
                cores_available: r.server.cores_available,
                memory_limit_bytes: r.server.memory_limit_bytes,
                capacity_source: r.server.capacity_source.clone(),
                shares_host: r.server.shares_host_with_client,
                restarts: stage_server.map(|x| x.restarts.clone()).unwrap_or_default(),
            }
        })
        .collect();
    bottleneck::judge(
        &facts,
        &bottleneck::tuning_of(&r.spec),
        r.saturation.as_ref().map(|s| s.stage),
        &Thresholds::for_spec(&r.spec),
    )
}

/// The reason a stage is invalid because the load generator ran out of CPU, if it did.
pub fn client_saturation(cpu: &[CpuSample], stage: usize) -> Option<String> {
    let samples: Vec<&CpuSample> = cpu.iter().filter(|c| c.stage == stage).collect();
    if samples.is_empty() {
        return None;
    }
    let used = samples.iter().map(|c| c.cores_used).sum::<f64>() / samples.len() as f64;
    let available = samples
        .iter()
        .map(|c| c.cores_available)
        .fold(0.0, f64::max);
    (available > 0.0 && used >= CLIENT_CPU_LIMIT * available).then(|| {
        format!(
            "the load generator itself was saturated: it used {used:.2} of {available:.2} cores on average, so this stage measures the client, not Milvus; add workers or cores"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(stage: usize, used: f64) -> CpuSample {
        CpuSample {
            second: 0,
            stage,
            cores_used: used,
            cores_available: 2.0,
        }
    }

    /// One closed stage of 10 s (1 s ramp), 1,000 searches of 5 ms in its steady state, on a
    /// spec with `linkCapacity` as given.
    fn one_stage_result(link_capacity: &str) -> RunResult {
        use crate::metrics::StageMeasurement;
        let spec: StressTestSpec = serde_yaml_ng::from_str(&format!(
            r#"
target: {{address: "10.0.0.5:19530", metrics: {{selector: app=milvus, linkCapacity: "{link_capacity}"}}}}
collection: {{name: c, dimension: 8, metric: L2}}
index: {{type: HNSW, params: {{M: 16, efConstruction: 200}}}}
workload:
  operations: [{{name: search_vector, weight: 1, search: {{topK: 10, params: {{ef: 64}}}}}}]
stages: [{{duration: 10s, users: 50, spawnRate: 50}}]
"#
        ))
        .unwrap();
        let mut m = StageMeasurement {
            stage: 0,
            ramp_seconds: 1.0,
            steady_seconds: 9.0,
            complete: true,
            ..StageMeasurement::default()
        };
        for _ in 0..1000 {
            m.steady.op_mut("search_vector").record_success(5_000, 1);
        }
        let merged = Snapshot {
            shards: 1,
            stages: vec![m],
            ..Snapshot::default()
        };
        build_result(&spec, RunContext::default(), merged)
    }

    /// Scrapes every second: Milvus at 0.5 of 4 cores, 1 GiB of 16 GiB, the proxy sending 118 MB/s
    /// and receiving 6 MB/s.
    fn busy_link() -> ServerObservation {
        let series = (0..=10)
            .map(|k| crate::observe::ServerSample {
                second: f64::from(k),
                interval: 1.0,
                cpu_cores: Some(0.5),
                resident_bytes: Some(1024.0 * 1024.0 * 1024.0),
                received_bytes_per_second: Some(6e6),
                sent_bytes_per_second: Some(118e6),
                endpoints_observed: 1,
                ..crate::observe::ServerSample::default()
            })
            .collect();
        ServerObservation {
            enabled: true,
            observed: true,
            endpoints: vec!["http://10.0.0.6:9091/metrics".into()],
            interval_seconds: 1.0,
            cores_available: Some(4.0),
            memory_limit_bytes: Some(16.0 * 1024.0 * 1024.0 * 1024.0),
            series,
            ..ServerObservation::default()
        }
    }

    #[test]
    fn proxy_traffic_near_the_spec_link_capacity_makes_the_stage_network_bound() {
        let mut r = one_stage_result("1Gbit");
        attach_server(&mut r, busy_link());
        assert_eq!(r.bottlenecks.len(), 1);
        let b = &r.bottlenecks[0];
        assert_eq!(b.resource, bottleneck::Resource::Network, "{}", b.evidence);
        assert_eq!(
            b.evidence,
            "at 50 users, the proxy sent 113 MiB/s (received 6 MiB/s) on a 119 MiB/s link (1 Gbit/s, 94 %): P95 5.0 ms"
        );
        // The same traffic on a 10 Gbit/s link is nothing near its limit.
        let mut r = one_stage_result("10Gbit");
        attach_server(&mut r, busy_link());
        assert_eq!(r.bottlenecks[0].resource, bottleneck::Resource::None);
    }

    #[test]
    fn a_stage_whose_client_used_nine_tenths_of_its_cores_is_flagged() {
        let samples = vec![cpu(0, 0.5), cpu(1, 1.9), cpu(1, 1.8)];
        assert_eq!(client_saturation(&samples, 0), None);
        let reason = client_saturation(&samples, 1).unwrap();
        assert!(reason.contains("1.85 of 2.00 cores"), "{reason}");
        assert_eq!(client_saturation(&samples, 2), None);
    }
}
