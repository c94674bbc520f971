//! The controller's dashboard: every StressTest it watches, read-only, through the same pages
//! and JSON endpoints as `stampede run --ui` ([`crate::dashboard`]). A running test shows the
//! live merge of the workers' last snapshots (what the controller already pulled, so the
//! dashboard adds no load on workers or Milvus); a finished one its report ConfigMap's result.

use std::io::Read;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::controller::decide::{REPORT_RESULT_KEY, report_configmap_name};
use crate::controller::reconcile::Context;
use crate::dashboard::{BoxFuture, Download, LiveFigures, SourceError, TestDetail, TestSource};
use crate::metrics::merge_snapshots;
use crate::result::{RunContext, RunResult, build_result};
use crate::spec::{Phase, StressTest};

/// The downloads a finished test offers (from its report ConfigMap's result).
const FILES: [&str; 5] = [
    "result.json",
    "report.html",
    "stampede_stats.csv",
    "stampede_stats_history.csv",
    "stampede_failures.csv",
];

/// Tests from the Kubernetes API and the controller's snapshot cache.
pub struct ClusterSource {
    ctx: Arc<Context>,
    namespace: Option<String>,
}

impl ClusterSource {
    /// A source over the tests in `namespace` (all when None).
    pub fn new(ctx: Arc<Context>, namespace: Option<String>) -> Self {
        ClusterSource { ctx, namespace }
    }

    fn tests(&self, namespace: Option<&str>) -> Api<StressTest> {
        match namespace.or(self.namespace.as_deref()) {
            Some(ns) => Api::namespaced(self.ctx.client.clone(), ns),
            None => Api::all(self.ctx.client.clone()),
        }
    }

    async fn report(&self, ns: &str, name: &str) -> Result<Option<RunResult>, SourceError> {
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        let cm = cms
            .get_opt(&report_configmap_name(name))
            .await
            .map_err(|e| SourceError(format!("cannot read the report of {ns}/{name}: {e}")))?;
        let Some(bytes) = cm
            .as_ref()
            .and_then(|c| c.binary_data.as_ref())
            .and_then(|d| d.get(REPORT_RESULT_KEY))
        else {
            return Ok(None);
        };
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(bytes.0.as_slice())
            .read_to_end(&mut json)
            .map_err(|e| SourceError(format!("the report of {ns}/{name} is not gzip: {e}")))?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| SourceError(format!("the report of {ns}/{name} does not parse: {e}")))
    }

    async fn detail(&self, st: &StressTest) -> Result<TestDetail, SourceError> {
        let ns = st.namespace().unwrap_or_default();
        let name = st.name_any();
        let status = st.status.clone().unwrap_or_default();
        let phase = status.phase.unwrap_or_default();
        if phase.is_finished()
            && let Some(result) = self.report(&ns, &name).await?
        {
            let mut d = TestDetail::from_result(&ns, &name, &result);
            d.summary.phase = phase;
            d.summary.message = status.message.clone().or(d.summary.message);
            d.downloads = FILES
                .iter()
                .map(|f| Download {
                    name: (*f).to_string(),
                    url: String::new(),
                })
                .collect();
            return Ok(d);
        }
        let mut d = TestDetail::from_status(&ns, &name, &st.spec, &status);
        if phase == Phase::Running
            && let Some(uid) = st.uid()
        {
            let snaps: Vec<_> = {
                let cache = self.ctx.cache.lock().await;
                cache
                    .snapshots
                    .iter()
                    .filter(|((u, _), _)| *u == uid)
                    .map(|(_, s)| s.clone())
                    .collect()
            };
            if !snaps.is_empty() {
                let merged = merge_snapshots(&snaps);
                let result = build_result(
                    &st.spec,
                    RunContext {
                        name: name.clone(),
                        target: st.spec.target.address.clone(),
                        ..RunContext::default()
                    },
                    merged,
                );
                let mut live = TestDetail::from_result(&ns, &name, &result);
                live.summary = d.summary.clone();
                live.live = Some(live_figures(&st.spec, &result, &status));
                d = live;
            }
        }
        Ok(d)
    }
}

/// The live figures of a running test from its merged snapshots and status.
fn live_figures(
    spec: &crate::spec::StressTestSpec,
    result: &RunResult,
    status: &crate::spec::StressTestStatus,
) -> LiveFigures {
    let last = result.series.last();
    let stage = result.series.last().map(|p| p.stage).unwrap_or(0);
    let totals = status.totals.as_ref();
    LiveFigures {
        stage,
        stages: spec.stages.len(),
        ramping: false,
        users: last.map(|p| p.users).unwrap_or(0),
        asked: spec
            .stages
            .get(stage)
            .and_then(|s| s.users.map(f64::from).or(s.rate))
            .unwrap_or(0.0),
        in_flight: last.map(|p| p.in_flight_max).unwrap_or(0),
        qps: totals.map(|t| t.qps).unwrap_or(0.0),
        p50_ms: totals.map(|t| t.p50_ms).unwrap_or(0.0),
        p95_ms: totals.map(|t| t.p95_ms).unwrap_or(0.0),
        p99_ms: totals.map(|t| t.p99_ms).unwrap_or(0.0),
        failures_per_second: last.map(|p| p.failures as f64).unwrap_or(0.0),
        requests: totals.map(|t| t.requests).unwrap_or(0),
        failures: totals.map(|t| t.failures).unwrap_or(0),
        elapsed_seconds: result.series.len() as f64,
        planned_seconds: crate::controller::decide::stages_duration(spec).as_secs_f64(),
    }
}

impl TestSource for ClusterSource {
    fn list(&self) -> BoxFuture<'_, Result<Vec<crate::dashboard::TestSummary>, SourceError>> {
        Box::pin(async move {
            let list = self
                .tests(None)
                .list(&ListParams::default())
                .await
                .map_err(|e| SourceError(format!("cannot list StressTests: {e}")))?;
            let mut items: Vec<_> = list
                .items
                .iter()
                .map(|st| {
                    let status = st.status.clone().unwrap_or_default();
                    TestDetail::from_status(
                        &st.namespace().unwrap_or_default(),
                        &st.name_any(),
                        &st.spec,
                        &status,
                    )
                    .summary
                })
                .collect();
            // Newest first.
            items.sort_by(|a, b| b.started_at.cmp(&a.started_at));
            Ok(items)
        })
    }

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<TestDetail>, SourceError>> {
        Box::pin(async move {
            if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                return Ok(None);
            }
            let st = self
                .tests(Some(namespace))
                .get_opt(name)
                .await
                .map_err(|e| {
                    SourceError(format!("cannot read StressTest {namespace}/{name}: {e}"))
                })?;
            match st {
                Some(st) => self.detail(&st).await.map(Some),
                None => Ok(None),
            }
        })
    }

    fn file<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        file: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, SourceError>> {
        Box::pin(async move {
            if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                return Ok(None);
            }
            let Some(result) = self.report(namespace, name).await? else {
                return Ok(None);
            };
            Ok(match file {
                "result.json" => serde_json::to_vec_pretty(&result).ok(),
                "report.html" => Some(crate::report::render_html(&result).into_bytes()),
                "stampede_stats.csv" => Some(crate::report::stats_csv(&result).into_bytes()),
                "stampede_stats_history.csv" => {
                    Some(crate::report::stats_history_csv(&result).into_bytes())
                }
                "stampede_failures.csv" => Some(crate::report::failures_csv(&result).into_bytes()),
                _ => None,
            })
        })
    }
}
