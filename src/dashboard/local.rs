//! The dashboard of `stampede run --ui`: the running test, read from the load engine's
//! recorders every quarter second, and the results saved next to its output directory (every
//! sibling directory holding a `result.json`), all in namespace `local` under their directory
//! names, so a run can be compared with earlier ones.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::load::{ALL_OPS, Recorder};
use crate::metrics::{OpWindow, Snapshot, StageMeasurement, Window, merge_snapshots};
use crate::result::{RunContext, RunResult, SeriesPoint, build_result};
use crate::spec::{LoadModel, Phase, StressTestSpec};

use super::model::{Download, LiveFigures, TestDetail, TestSummary, stage_label};
use super::{BoxFuture, SourceError, TestSource};

/// Namespace of local tests in URLs.
pub const LOCAL_NAMESPACE: &str = "local";
/// How often the running engine is read.
const TICK: Duration = Duration::from_millis(250);
/// A second is read once the clock is this far past its end (completions race by µs).
const SETTLE: Duration = Duration::from_millis(150);
/// Complete seconds the live QPS and percentiles cover.
const RECENT_SECONDS: usize = 3;
/// A live detail is recomputed at most this often, however many pages poll.
const DETAIL_TTL: Duration = Duration::from_millis(400);
/// Sibling result directories listed at most.
const MAX_SIBLINGS: usize = 500;

struct Engine {
    recorders: Vec<Arc<Recorder>>,
    t0: Instant,
}

#[derive(Default)]
struct LiveState {
    phase: Phase,
    message: Option<String>,
    started_at: Option<String>,
    target: String,
    server_version: String,
    engine: Option<Engine>,
    series: Vec<SeriesPoint>,
    next_second: u64,
    recent: VecDeque<OpWindow>,
    /// Per stage: everything completed in its seconds so far (all operations), and how many
    /// seconds; the running stage's row comes from it.
    stage_seconds: BTreeMap<usize, (Window, u64)>,
    cached: Option<(Instant, TestDetail)>,
    finished: Option<TestDetail>,
}

/// The live state of one `stampede run`, shared by the run (which reports its progress) and
/// the dashboard (which reads it).
pub struct LiveRun {
    name: String,
    spec: StressTestSpec,
    output: PathBuf,
    state: Mutex<LiveState>,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl LiveRun {
    /// A test named after its output directory, in phase Pending.
    pub fn new(spec: &StressTestSpec, output: &Path) -> Arc<Self> {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "run".to_string());
        Arc::new(LiveRun {
            name,
            spec: spec.clone(),
            output: output.to_path_buf(),
            state: Mutex::new(LiveState {
                started_at: Some(now_rfc3339()),
                ..LiveState::default()
            }),
        })
    }

    /// The name in URLs (the output directory's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    // A poisoned lock means a panic elsewhere mid-update; the state is still readable.
    fn lock(&self) -> MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the phase and its message.
    pub fn set_phase(&self, phase: Phase, message: &str) {
        let mut st = self.lock();
        st.phase = phase;
        st.message = (!message.is_empty()).then(|| message.to_string());
        st.cached = None;
    }

    /// Records the Milvus address and version once connected.
    pub fn connected(&self, target: &str, server_version: &str) {
        let mut st = self.lock();
        st.target = target.to_string();
        st.server_version = server_version.to_string();
        st.cached = None;
    }

    /// The load starts at `t0` with these recorders: phase Running, and a task that reads the
    /// completed seconds until [`LiveRun::finished`].
    pub fn running(self: &Arc<Self>, recorders: &[Arc<Recorder>], t0: Instant) {
        {
            let mut st = self.lock();
            st.phase = Phase::Running;
            st.message = None;
            st.engine = Some(Engine {
                recorders: recorders.to_vec(),
                t0,
            });
            st.cached = None;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                if !me.tick() {
                    break;
                }
            }
        });
    }

    /// Reads the seconds that completed since the last tick; false once the engine is gone.
    fn tick(&self) -> bool {
        let mut st = self.lock();
        let Some(engine) = &st.engine else {
            return false;
        };
        let elapsed = Instant::now().saturating_duration_since(engine.t0);
        if Instant::now() < engine.t0 {
            return true;
        }
        let mut points = Vec::new();
        let mut second = st.next_second;
        while Duration::from_secs(second + 1) + SETTLE <= elapsed {
            let mut merged: Option<crate::metrics::SecondSample> = None;
            for r in &engine.recorders {
                if let Some(s) = r.second(second) {
                    match &mut merged {
                        Some(m) => {
                            m.stage = m.stage.max(s.stage);
                            m.window.merge(&s.window);
                        }
                        None => merged = Some(s),
                    }
                }
            }
            if let Some(s) = merged {
                points.push(s);
            }
            second += 1;
        }
        st.next_second = second;
        for s in points {
            let total = s.window.total();
            let ms = |q: f64| total.latency.quantile_us(q) as f64 / 1000.0;
            st.series.push(SeriesPoint {
                second: s.second,
                stage: s.stage,
                users: s.window.users,
                requests: total.requests,
                failures: total.failures,
                p50_ms: ms(0.5),
                p95_ms: ms(0.95),
                p99_ms: ms(0.99),
                in_flight_max: s.window.in_flight_max,
            });
            let (acc, n) = st.stage_seconds.entry(s.stage).or_default();
            acc.op_mut(ALL_OPS).merge(&total);
            acc.in_flight_sum += s.window.in_flight_sum;
            acc.in_flight_samples += s.window.in_flight_samples;
            acc.in_flight_max = acc.in_flight_max.max(s.window.in_flight_max);
            *n += 1;
            st.recent.push_back(total);
            while st.recent.len() > RECENT_SECONDS {
                st.recent.pop_front();
            }
        }
        true
    }

    /// The run is over: its result is what the dashboard shows from now on.
    pub fn finished(&self, result: &RunResult) {
        let mut d = TestDetail::from_result(LOCAL_NAMESPACE, &self.name, result);
        d.downloads = downloads(&self.output);
        let mut st = self.lock();
        if let Some(started) = &st.started_at {
            d.summary.started_at.get_or_insert(started.clone());
        }
        st.phase = d.summary.phase;
        st.engine = None;
        st.cached = None;
        st.finished = Some(d);
    }

    /// What the test page shows now.
    pub fn detail(&self) -> TestDetail {
        let mut st = self.lock();
        if let Some(d) = &st.finished {
            return d.clone();
        }
        if let Some((at, d)) = &st.cached
            && at.elapsed() < DETAIL_TTL
        {
            return d.clone();
        }
        let d = self.compute(&st);
        st.cached = Some((Instant::now(), d.clone()));
        d
    }

    fn compute(&self, st: &LiveState) -> TestDetail {
        let spec = &self.spec;
        let mut d = TestDetail::new(LOCAL_NAMESPACE, &self.name, st.phase, Some(spec));
        d.summary.started_at = st.started_at.clone();
        d.summary.message = st.message.clone();
        if !st.target.is_empty() {
            d.target = super::model::redact_address(&st.target);
        }
        d.server_version = st.server_version.clone();
        d.series = st.series.clone();
        let Some(engine) = &st.engine else {
            return d;
        };
        let closed = spec.workload.model == LoadModel::Closed;
        let (mut stage, mut users, mut in_flight) = (0usize, 0u64, 0u64);
        let mut positions = Vec::new();
        for r in &engine.recorders {
            if let Some(p) = r.position() {
                positions.push(p);
                stage = stage.max(p.0);
            }
            users += r.users();
            in_flight += r.in_flight();
        }
        let ramping = positions.iter().any(|&(s, steady)| s == stage && !steady);
        let plan = spec.stages.get(stage);
        let asked = if closed {
            plan.and_then(|p| p.users).map_or(0.0, f64::from)
        } else {
            plan.and_then(|p| p.rate).unwrap_or(0.0)
        };
        let mut recent = OpWindow::default();
        for w in &st.recent {
            recent.merge(w);
        }
        let n = st.recent.len().max(1) as f64;
        let ms = |q: f64| recent.latency.quantile_us(q) as f64 / 1000.0;
        let elapsed = Instant::now()
            .saturating_duration_since(engine.t0)
            .as_secs_f64();
        let live = LiveFigures {
            stage,
            stages: spec.stages.len(),
            ramping: closed && ramping,
            users,
            asked,
            in_flight,
            qps: recent.requests as f64 / n,
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            failures_per_second: recent.failures as f64 / n,
            requests: st.series.iter().map(|p| p.requests).sum(),
            failures: st.series.iter().map(|p| p.failures).sum(),
            elapsed_seconds: elapsed,
            planned_seconds: spec
                .stages
                .iter()
                .map(|s| s.duration.get().as_secs_f64())
                .sum(),
        };
        d.summary.current_stage = Some(stage_label(
            stage,
            spec.stages.len(),
            plan.and_then(|p| p.users).map(u64::from),
            plan.and_then(|p| p.rate),
        ));
        d.summary.qps = Some(live.qps);
        d.summary.p95_ms = Some(live.p95_ms);
        d.summary.p99_ms = Some(live.p99_ms);
        d.summary.error_ratio = Some(if recent.requests > 0 {
            recent.failures as f64 / recent.requests as f64
        } else {
            0.0
        });

        // Stages, operations and failures from the engine's stage windows (cheap to copy:
        // no per-second data).
        let snaps: Vec<Snapshot> = engine
            .recorders
            .iter()
            .map(|r| Snapshot {
                shards: 1,
                stages: r.stages(),
                ..Snapshot::default()
            })
            .collect();
        let merged = merge_snapshots(&snaps);
        let mut all: BTreeMap<String, OpWindow> = BTreeMap::new();
        for m in &merged.stages {
            for w in [&m.ramp, &m.steady] {
                for (name, o) in &w.ops {
                    all.entry(name.clone()).or_default().merge(o);
                }
            }
        }
        let so_far = crate::analysis::summarize_stage(
            &StageMeasurement {
                steady: Window {
                    ops: all,
                    ..Window::default()
                },
                steady_seconds: elapsed,
                complete: true,
                ..StageMeasurement::default()
            },
            None,
            None,
        );
        d.operations = so_far.operations;
        let result = build_result(spec, RunContext::default(), merged);
        d.failures = result.failures;
        let mut stages: Vec<_> = result
            .stages
            .into_iter()
            .filter(|s| s.index < stage)
            .collect();
        if st.phase == Phase::Running {
            let (window, seconds) = st.stage_seconds.get(&stage).cloned().unwrap_or_default();
            let mut running = crate::analysis::summarize_stage(
                &StageMeasurement {
                    stage,
                    steady: window,
                    steady_seconds: seconds as f64,
                    complete: true,
                    ..StageMeasurement::default()
                },
                plan.and_then(|p| p.users).map(u64::from).filter(|_| closed),
                plan.and_then(|p| p.rate).filter(|_| !closed),
            );
            running.valid = false;
            running.invalid_reason = Some("running".to_string());
            running.operations.clear();
            stages.push(running);
        }
        d.stages = stages;
        d.live = Some(live);
        d
    }
}

/// The downloadable files of a result directory: result.json, report.html and the CSV files.
pub fn downloads(dir: &Path) -> Vec<Download> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_download(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort_by_key(|n| (n != "result.json", n != "report.html", n.clone()));
    names
        .into_iter()
        .map(|name| Download {
            name,
            url: String::new(),
        })
        .collect()
}

/// Whether a file of a result directory may be downloaded.
fn is_download(name: &str) -> bool {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    plain
        && (name == "result.json"
            || name == "report.html"
            || ["_stats.csv", "_stats_history.csv", "_failures.csv"]
                .iter()
                .any(|s| name.ends_with(s)))
}

/// A directory name that is safe to join to the results directory.
fn plain_dir_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

/// The local source: the running test and the results saved beside it.
pub struct LocalSource {
    run: Arc<LiveRun>,
    /// Directory whose subdirectories holding a result.json are listed (the output directory's
    /// parent).
    results: Option<PathBuf>,
    cache: Mutex<HashMap<PathBuf, (SystemTime, TestSummary)>>,
}

impl LocalSource {
    /// The source of `run`, listing the results saved next to its output directory.
    pub fn new(run: Arc<LiveRun>) -> Self {
        let results = run.output.parent().map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        });
        LocalSource {
            run,
            results,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn sibling(&self, name: &str) -> Option<PathBuf> {
        if !plain_dir_name(name) || name == self.run.name {
            return None;
        }
        let dir = self.results.as_ref()?.join(name);
        dir.join("result.json").is_file().then_some(dir)
    }

    fn read(&self, name: &str, dir: &Path) -> Option<TestDetail> {
        let r = crate::report::read_result(&dir.join("result.json")).ok()?;
        let mut d = TestDetail::from_result(LOCAL_NAMESPACE, name, &r);
        d.downloads = downloads(dir);
        Some(d)
    }

    fn siblings(&self) -> Vec<TestSummary> {
        let Some(root) = &self.results else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(root) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries.filter_map(Result::ok).take(MAX_SIBLINGS * 4) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if !plain_dir_name(&name) || name == self.run.name {
                continue;
            }
            let file = e.path().join("result.json");
            let Ok(modified) = std::fs::metadata(&file).and_then(|m| m.modified()) else {
                continue;
            };
            match cache.get(&file) {
                Some((at, s)) if *at == modified => out.push(s.clone()),
                _ => {
                    if let Some(d) = self.read(&name, &e.path()) {
                        cache.insert(file, (modified, d.summary.clone()));
                        out.push(d.summary);
                    }
                }
            }
            if out.len() >= MAX_SIBLINGS {
                break;
            }
        }
        out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(a.name.cmp(&b.name)));
        out
    }
}

impl TestSource for LocalSource {
    fn list(&self) -> BoxFuture<'_, Result<Vec<TestSummary>, SourceError>> {
        Box::pin(async move {
            let mut all = vec![self.run.detail().summary];
            all.extend(self.siblings());
            Ok(all)
        })
    }

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<TestDetail>, SourceError>> {
        Box::pin(async move {
            if namespace != LOCAL_NAMESPACE {
                return Ok(None);
            }
            if name == self.run.name {
                return Ok(Some(self.run.detail()));
            }
            Ok(self.sibling(name).and_then(|dir| self.read(name, &dir)))
        })
    }

    fn file<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        file: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, SourceError>> {
        Box::pin(async move {
            if namespace != LOCAL_NAMESPACE || !is_download(file) {
                return Ok(None);
            }
            let dir = if name == self.run.name {
                // Until the run has finished, the directory may hold an earlier run's files.
                if self.run.lock().finished.is_none() {
                    return Ok(None);
                }
                self.run.output.clone()
            } else {
                match self.sibling(name) {
                    Some(dir) => dir,
                    None => return Ok(None),
                }
            };
            Ok(std::fs::read(dir.join(file)).ok())
        })
    }
}

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot serve the dashboard on {addr}: {source} (is another `stampede run --ui` using it? pick another address with --ui-addr, e.g. 127.0.0.1:0 for any free port)"
)]
pub struct DashboardError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The handle `stampede run` reports its progress to; does nothing without `--ui`.
pub struct LocalDashboard {
    run: Option<Arc<LiveRun>>,
    url: String,
}

impl LocalDashboard {
    /// Serves the dashboard on `addr` (when `Some`) and prints its address on stderr.
    pub async fn start(
        addr: Option<SocketAddr>,
        spec: &StressTestSpec,
        output: &Path,
    ) -> Result<Self, DashboardError> {
        let Some(addr) = addr else {
            return Ok(LocalDashboard {
                run: None,
                url: String::new(),
            });
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DashboardError { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| DashboardError { addr, source })?;
        let run = LiveRun::new(spec, output);
        run.set_phase(
            Phase::Preparing,
            "connecting to Milvus, then preparing the data",
        );
        let url = format!(
            "http://{bound}/tests/{LOCAL_NAMESPACE}/{}",
            super::server::enc(run.name())
        );
        let source: Arc<dyn TestSource> = Arc::new(LocalSource::new(Arc::clone(&run)));
        tokio::spawn(async move {
            if let Err(e) = super::serve(listener, source).await {
                tracing::warn!(error = %e, "the dashboard server stopped");
            }
        });
        eprintln!("dashboard: {url}");
        Ok(LocalDashboard {
            run: Some(run),
            url,
        })
    }

    /// The test page's URL (empty without `--ui`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The live state, when the dashboard runs.
    pub fn live(&self) -> Option<&Arc<LiveRun>> {
        self.run.as_ref()
    }

    /// Connected to Milvus `version` at `target`; preparing the data.
    pub fn connected(&self, target: &str, version: &str) {
        if let Some(r) = &self.run {
            r.connected(target, version);
            r.set_phase(
                Phase::Preparing,
                "preparing the data (collection, rows, index, load)",
            );
        }
    }

    /// The stages start at `t0`.
    pub fn running(&self, recorders: &[Arc<Recorder>], t0: Instant) {
        if let Some(r) = &self.run {
            r.running(recorders, t0);
        }
    }

    /// The stages are over; merging and analysing.
    pub fn analyzing(&self) {
        if let Some(r) = &self.run {
            r.set_phase(
                Phase::Analyzing,
                "merging the measurements and writing the reports",
            );
        }
    }

    /// The result is written.
    pub fn finished(&self, result: &RunResult) {
        if let Some(r) = &self.run {
            r.finished(result);
        }
    }

    /// With `--ui`: keeps serving the final results until Ctrl-C.
    pub async fn serve_until_ctrl_c(&self) {
        if self.run.is_some() {
            eprintln!(
                "dashboard: serving the results at {} until Ctrl-C",
                self.url
            );
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_result_files_can_be_downloaded() {
        for ok in [
            "result.json",
            "report.html",
            "stampede_stats.csv",
            "x_stats_history.csv",
            "x_failures.csv",
        ] {
            assert!(is_download(ok), "{ok}");
        }
        for bad in [
            "ground_truth.json",
            "../result.json",
            ".hidden_stats.csv",
            "a/b_stats.csv",
            "",
            "stats.csv",
        ] {
            assert!(!is_download(bad), "{bad}");
        }
        assert!(!plain_dir_name(".."));
        assert!(!plain_dir_name("a/b"));
        assert!(plain_dir_name("quickstart-20261203"));
    }
}
