//! Reports of a run: `result.json` (the input of every other report), Locust-compatible CSV files
//! (so existing pandas scripts keep working), a self-contained `report.html` with SVG charts, and
//! the plain-text summary printed at the end of `stampede run`.
//!
//! Everything here is a pure function of a [`RunResult`] except [`write_all`] and [`rerender`],
//! which only add file I/O; the same result always renders to the same bytes (no clock, no
//! randomness), so a re-rendered report can be compared with the original.
//!
//! # Locust CSV compatibility
//!
//! The three CSV files use Locust's file names (`{prefix}_stats.csv`, `{prefix}_stats_history.csv`,
//! `{prefix}_failures.csv`), its exact column names and their meaning, with these documented
//! choices:
//! - `Type` is `grpc`, `Name` the operation name; the total row is `,Aggregated,` as in Locust.
//! - Response times are milliseconds. Percentile columns (`50%` … `100%`) and `Median Response
//!   Time` are integers (rounded to the nearest ms) because Locust writes integers there and
//!   scripts may parse them as such; `Average`, `Min` and `Max Response Time` are written with two
//!   decimals (Locust writes floats there). The exact values, in µs, are in `result.json`.
//! - As in Locust, response times cover failed requests too (Locust times a failure like any
//!   request). The HTML report, the terminal summary and the SLA use successful requests only,
//!   so with failures the CSV percentiles can differ from the report's.
//! - `_stats.csv` covers the steady state of every stage (ramps excluded), like the rest of the
//!   report; `Requests/s` is requests ÷ steady-state seconds. `_stats_history.csv` has one
//!   `Aggregated` row per second of the whole run, ramps included, so the sum of its per-second
//!   request counts is the `_stats.csv` count plus the ramps' requests.
//! - `Average Content Size` is 0: the gRPC client does not measure response sizes.
//! - `User Count` is the users running (closed model) or the target arrival rate in requests/s
//!   (open model, which has no users).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::analysis::StageSummary;
use crate::chart::{
    CategoryChart, CategorySeries, CategoryStyle, LineChart, Marker, Series, Threshold, escape,
};
use crate::metrics::{LatencyHistogram, OpWindow};
use crate::result::{RESULT_VERSION, RunResult};

/// Writes into a `String`; `fmt::Write` for `String` never fails, so the result is ignored.
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {
        let _ = write!($dst, $($arg)*);
    };
}

/// File name of the saved result, the input of [`rerender`].
pub const RESULT_FILE: &str = "result.json";
/// File name of the HTML report.
pub const HTML_FILE: &str = "report.html";

/// Header of `_stats.csv`, exactly as Locust writes it.
pub const STATS_HEADER: &str = "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%";
/// Header of `_stats_history.csv`, exactly as Locust writes it.
pub const STATS_HISTORY_HEADER: &str = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,Total Min Response Time,Total Max Response Time,Total Average Content Size";
/// Header of `_failures.csv`, exactly as Locust writes it.
pub const FAILURES_HEADER: &str = "Method,Name,Error,Occurrences";

/// Locust's reported percentiles (`PERCENTILES_TO_REPORT`).
const PERCENTILES: [f64; 11] = [
    0.5, 0.66, 0.75, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0,
];

/// The request type written in Locust's `Type`/`Method` columns.
const REQUEST_TYPE: &str = "grpc";

/// The timeline is gap-filled (seconds in which nothing completed get a zero row, as Locust
/// writes a row every second); a result claiming a longer run than this is not gap-filled, so a
/// corrupt `second` cannot make the report enormous.
const MAX_GAP_FILL_SECONDS: u64 = 7 * 24 * 3600;

/// Size of the per-stage charts (two side by side at laptop width: drawn about 1:1, so their
/// text has its intended size).
const STAGE_CHART: (f64, f64) = (560.0, 300.0);
/// Size of the full-width timeline charts.
const TIMELINE_CHART: (f64, f64) = (1140.0, 340.0);

/// Errors of writing or re-reading reports; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A report file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The result could not be serialised to JSON.
    #[error("cannot write {}: {source}", path.display())]
    Serialize {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The saved result could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a result this version understands.
    #[error("{} is not a Stampede result: {reason}", path.display())]
    NotAResult {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Writes result.json, {prefix}_stats.csv, {prefix}_stats_history.csv, {prefix}_failures.csv and
/// report.html into dir (creating it). Returns the paths written, result.json first.
pub fn write_all(
    dir: &Path,
    result: &RunResult,
    prefix: &str,
) -> Result<Vec<PathBuf>, ReportError> {
    create_dir(dir)?;
    let path = dir.join(RESULT_FILE);
    let mut json =
        serde_json::to_string_pretty(result).map_err(|source| ReportError::Serialize {
            path: path.clone(),
            source,
        })?;
    json.push('\n');
    write_file(&path, &json)?;
    let mut written = vec![path];
    written.extend(write_rendered(dir, result, prefix)?);
    Ok(written)
}

/// `stampede report DIR`: reads DIR/result.json and re-renders the CSV files and report.html.
/// Returns the paths written.
pub fn rerender(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, ReportError> {
    let result = read_result(&dir.join(RESULT_FILE))?;
    write_rendered(dir, &result, prefix)
}

/// Reads and checks a saved `result.json`.
pub fn read_result(path: &Path) -> Result<RunResult, ReportError> {
    let text = fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let not_a_result = |reason: String| ReportError::NotAResult {
        path: path.to_path_buf(),
        reason,
    };
    // The version is checked before the full parse, so a result from a newer Stampede says so
    // instead of failing on whichever field changed.
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| not_a_result(format!("not JSON: {e}")))?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| not_a_result("it has no numeric `version` field".to_string()))?;
    if version > u64::from(RESULT_VERSION) {
        return Err(not_a_result(format!(
            "its format version {version} is newer than this Stampede reads ({RESULT_VERSION}); use a newer stampede"
        )));
    }
    // Parsed again from the text (not the Value) so errors carry line and column.
    serde_json::from_str(&text).map_err(|e| not_a_result(e.to_string()))
}

fn write_rendered(dir: &Path, r: &RunResult, prefix: &str) -> Result<Vec<PathBuf>, ReportError> {
    create_dir(dir)?;
    let files = [
        (format!("{prefix}_stats.csv"), stats_csv(r)),
        (format!("{prefix}_stats_history.csv"), stats_history_csv(r)),
        (format!("{prefix}_failures.csv"), failures_csv(r)),
        (HTML_FILE.to_string(), render_html(r)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        write_file(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}

fn create_dir(dir: &Path) -> Result<(), ReportError> {
    fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes through a temporary file and a rename, so an interrupted write never leaves a
/// half-written report where a complete one was.
fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    let err = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    fs::write(&tmp, text).map_err(err)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(e)
    })
}

// ---------------------------------------------------------------------------------------------
// CSV

/// Quotes a CSV field when it holds a comma, a quote or a line break (as Python's csv module
/// does with QUOTE_MINIMAL), doubling inner quotes.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_row(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// Latency of every completed request, failures included, as Locust counts response times.
fn all_latency(o: &OpWindow) -> LatencyHistogram {
    let mut h = o.latency.clone();
    h.merge(&o.failure_latency);
    h
}

/// µs → whole ms, rounded to nearest.
fn ms_int(us: u64) -> String {
    (us.saturating_add(500) / 1000).to_string()
}

/// µs → ms with two decimals.
fn ms_2(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

/// A rate with Locust's history precision (`f"{x:2f}"`: six decimals).
fn rate_6(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        "0.000000".to_string()
    }
}

/// Percentile columns: integer ms, or `N/A` when nothing was measured (as Locust).
fn percentile_fields(h: &LatencyHistogram, requests: u64) -> Vec<String> {
    if requests == 0 {
        return vec!["N/A".to_string(); PERCENTILES.len()];
    }
    PERCENTILES
        .iter()
        .map(|&q| {
            if q >= 1.0 {
                ms_int(h.max_us())
            } else {
                ms_int(h.quantile_us(q))
            }
        })
        .collect()
}

/// Median, average, min and max columns of an entry.
fn time_fields(h: &LatencyHistogram) -> [String; 4] {
    if h.count() == 0 {
        return ["0".into(), "0".into(), "0".into(), "0".into()];
    }
    [
        ms_int(h.quantile_us(0.5)),
        ms_2(h.mean_us()),
        ms_2(h.min_us() as f64),
        ms_2(h.max_us() as f64),
    ]
}

/// The steady-state windows of every stage, per operation, and their total wall time.
fn steady_by_op(r: &RunResult) -> (BTreeMap<String, OpWindow>, f64) {
    let mut per_op: BTreeMap<String, OpWindow> = BTreeMap::new();
    let mut seconds = 0.0;
    for m in &r.measurements.stages {
        if m.steady_seconds.is_finite() && m.steady_seconds > 0.0 {
            seconds += m.steady_seconds;
        }
        for (name, w) in &m.steady.ops {
            per_op.entry(name.clone()).or_default().merge(w);
        }
    }
    (per_op, seconds)
}

/// `{prefix}_stats.csv`: one row per operation over all steady states, then `,Aggregated,`.
///
/// Response times in ms: percentile and median columns as integers (rounded to the nearest ms,
/// as Locust writes integers there), average/min/max with two decimals; failures' response times
/// are included as in Locust. Requests/s and Failures/s are per steady-state second.
pub fn stats_csv(r: &RunResult) -> String {
    let (per_op, seconds) = steady_by_op(r);
    let per_sec = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    let row = |kind: &str, name: &str, o: &OpWindow| {
        let h = all_latency(o);
        let mut fields = vec![
            kind.to_string(),
            name.to_string(),
            o.requests.to_string(),
            o.failures.to_string(),
        ];
        fields.extend(time_fields(&h));
        fields.push("0".to_string());
        fields.push(rate_6(per_sec(o.requests)));
        fields.push(rate_6(per_sec(o.failures)));
        fields.extend(percentile_fields(&h, o.requests));
        csv_row(&fields)
    };
    let mut out = String::new();
    out.push_str(STATS_HEADER);
    out.push('\n');
    let mut total = OpWindow::default();
    for (name, o) in &per_op {
        out.push_str(&row(REQUEST_TYPE, name, o));
        total.merge(o);
    }
    out.push_str(&row("", "Aggregated", &total));
    out
}

/// Unix seconds of an RFC 3339 time, if it parses.
fn unix_seconds(rfc3339: &str) -> Option<i64> {
    rfc3339
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

/// `{prefix}_stats_history.csv`: one `Aggregated` row per second of the run (ramps included;
/// seconds in which nothing completed get a zero row, as Locust writes a row every second).
///
/// Timestamp is unix seconds (start + second; the offset alone when `started_at` does not
/// parse). Requests/s, Failures/s and the percentile columns describe that second alone
/// (percentiles `0` in a second without requests, `N/A` before the first request, as Locust);
/// the `Total …` columns are cumulative from the start up to and including that second.
pub fn stats_history_csv(r: &RunResult) -> String {
    let mut out = String::new();
    out.push_str(STATS_HISTORY_HEADER);
    out.push('\n');
    let base = unix_seconds(&r.started_at).unwrap_or(0);
    let mut cumulative = OpWindow::default();
    let mut cumulative_latency = LatencyHistogram::new();
    let mut users = 0u64;
    let empty = OpWindow::default();
    for (second, sample) in filled_seconds(r) {
        let total = sample.map(|s| s.window.total());
        let t = total.as_ref().unwrap_or(&empty);
        if let Some(s) = sample {
            users = s.window.users;
        }
        let h = all_latency(t);
        cumulative.merge(t);
        cumulative_latency.merge(&h);
        let timestamp = base.saturating_add(i64::try_from(second).unwrap_or(i64::MAX));
        let mut fields = vec![
            timestamp.to_string(),
            users.to_string(),
            String::new(),
            "Aggregated".to_string(),
            rate_6(t.requests as f64),
            rate_6(t.failures as f64),
        ];
        // Locust prints N/A only while the cumulative entry is empty; a quiet second later on
        // gets zeros.
        if cumulative.requests == 0 {
            fields.extend(percentile_fields(&h, 0));
        } else if t.requests == 0 {
            fields.extend(std::iter::repeat_n("0".to_string(), PERCENTILES.len()));
        } else {
            fields.extend(percentile_fields(&h, t.requests));
        }
        fields.push(cumulative.requests.to_string());
        fields.push(cumulative.failures.to_string());
        fields.extend(time_fields(&cumulative_latency));
        fields.push("0".to_string());
        out.push_str(&csv_row(&fields));
    }
    out
}

/// Every second from the first to the last measured one, with its sample when there is one.
fn filled_seconds(r: &RunResult) -> Vec<(u64, Option<&crate::metrics::SecondSample>)> {
    let mut samples: Vec<&crate::metrics::SecondSample> = r.measurements.seconds.iter().collect();
    samples.sort_by_key(|s| s.second);
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Vec::new();
    };
    if last.second - first.second > MAX_GAP_FILL_SECONDS {
        return samples.iter().map(|s| (s.second, Some(*s))).collect();
    }
    let mut out = Vec::new();
    let mut it = samples.iter().peekable();
    for second in first.second..=last.second {
        let mut found = None;
        while let Some(s) = it.peek() {
            if s.second < second {
                it.next();
            } else {
                if s.second == second {
                    found = Some(**s);
                    it.next();
                }
                break;
            }
        }
        out.push((second, found));
    }
    out
}

/// `{prefix}_failures.csv`: one row per (operation, failure kind) over the whole run, most
/// frequent first; `Error` is `kind: example message`.
pub fn failures_csv(r: &RunResult) -> String {
    let mut rows: Vec<&crate::result::FailureSummary> = r.failures.iter().collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.operation.cmp(&b.operation))
            .then_with(|| a.kind.cmp(&b.kind))
    });
    let mut out = String::new();
    out.push_str(FAILURES_HEADER);
    out.push('\n');
    for f in rows {
        let error = if f.example.is_empty() {
            f.kind.clone()
        } else {
            format!("{}: {}", f.kind, f.example)
        };
        out.push_str(&csv_row(&[
            REQUEST_TYPE.to_string(),
            f.operation.clone(),
            error,
            f.count.to_string(),
        ]));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Number formatting for tables

/// Milliseconds with precision that fits their size: 1.23, 12.3, 123.
fn fmt_ms(x: f64) -> String {
    if !x.is_finite() {
        "–".to_string()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

fn fmt_qps(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "–".to_string()
    }
}

/// A share as a percentage with enough decimals to tell 0.05 % from 0.
fn fmt_pct(ratio: f64) -> String {
    if !ratio.is_finite() {
        return "–".to_string();
    }
    let p = ratio * 100.0;
    if p == 0.0 {
        "0%".to_string()
    } else if p < 0.1 {
        format!("{p:.3}%")
    } else if p < 10.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

fn fmt_recall(r: Option<f64>) -> String {
    r.filter(|x| x.is_finite())
        .map_or_else(|| "–".to_string(), |x| format!("{x:.3}"))
}

/// A general number with up to three significant digits (capacity, rates in sentences).
fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_string();
    }
    let a = x.abs();
    let s = if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// What a stage asked for: `50 users`, `500/s`, or `stage 3` when unknown.
fn load_label(s: &StageSummary) -> String {
    match (s.users, s.rate) {
        (Some(1), _) => "1 user".to_string(),
        (Some(u), _) => format!("{u} users"),
        (None, Some(r)) => format!("{}/s", fmt_num(r)),
        (None, None) => format!("stage {}", s.index + 1),
    }
}

fn is_closed(r: &RunResult) -> bool {
    r.model == "Closed"
}

/// The asked load as a number (users or rate), for the concurrency comparison.
fn asked_load(s: &StageSummary) -> Option<f64> {
    s.users.map(|u| u as f64).or(s.rate)
}

/// Requests in flight as a share of the users asked (closed model): a generator that cannot keep
/// its users concurrent (Locust without gevent-aware gRPC) shows a low share here.
fn concurrency_kept(s: &StageSummary) -> Option<f64> {
    s.users
        .filter(|u| *u > 0)
        .map(|u| s.in_flight_mean / u as f64)
}

/// Duration between two RFC 3339 times, e.g. `5m 12s`.
fn run_duration(r: &RunResult) -> Option<String> {
    let (a, b) = (unix_seconds(&r.started_at)?, unix_seconds(&r.finished_at)?);
    let s = b.checked_sub(a).filter(|d| *d >= 0)?;
    Some(if s >= 3600 {
        format!("{}h {}m {}s", s / 3600, s % 3600 / 60, s % 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    })
}

fn stage_sla_note(r: &RunResult, index: usize) -> Option<(bool, String)> {
    let sla = r.sla.as_ref()?;
    let st = sla.stages.iter().find(|s| s.index == index)?;
    let failed: Vec<&str> = st
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    Some(if st.passed {
        (true, "pass".to_string())
    } else {
        (false, format!("fail: {}", failed.join(", ")))
    })
}

// ---------------------------------------------------------------------------------------------
// Terminal summary

/// A plain-text table: columns padded to their widest cell, numbers right-aligned.
fn text_table(head: &[&str], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let cols = head.len();
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(cell.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if numeric.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(head.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).take(cols).collect()));
    }
    out
}

/// The final table printed on the terminal after a run: per stage users/rate, requests,
/// failures, QPS, P50/P95/P99/max ms, recall, in-flight mean/max, valid; then peak, saturation
/// (with its sentence), SLA checks (target/observed/pass), capacity plan. Plain text, aligned
/// columns, no colour.
pub fn render_terminal_summary(r: &RunResult) -> String {
    let mut out = String::new();
    w!(
        out,
        "\n{} — {} model, {} stage{}, {} (Milvus {})\n",
        r.name,
        r.model,
        r.stages.len(),
        if r.stages.len() == 1 { "" } else { "s" },
        r.target,
        if r.server_version.is_empty() {
            "version unknown"
        } else {
            &r.server_version
        }
    );
    if !r.complete {
        w!(
            out,
            "INCOMPLETE: {}\n",
            r.incomplete_reason
                .as_deref()
                .unwrap_or("not every stage ran")
        );
    }
    out.push('\n');
    if r.stages.is_empty() {
        out.push_str("no stage was measured\n");
    } else {
        let head = [
            "stage",
            "load",
            "requests",
            "failures",
            "QPS",
            "P50 ms",
            "P95 ms",
            "P99 ms",
            "max ms",
            "recall",
            "in flight",
            "valid",
        ];
        let numeric = [
            true, false, true, true, true, true, true, true, true, true, true, false,
        ];
        let mut rows: Vec<Vec<String>> = r
            .stages
            .iter()
            .map(|s| {
                vec![
                    (s.index + 1).to_string(),
                    load_label(s),
                    s.requests.to_string(),
                    s.failures.to_string(),
                    fmt_qps(s.qps),
                    fmt_ms(s.p50_ms),
                    fmt_ms(s.p95_ms),
                    fmt_ms(s.p99_ms),
                    fmt_ms(s.max_ms),
                    fmt_recall(s.recall),
                    format!("{:.1}/{}", s.in_flight_mean, s.in_flight_max),
                    if s.valid { "yes" } else { "NO" }.to_string(),
                ]
            })
            .collect();
        let t = &r.totals;
        rows.push(vec![
            "all".to_string(),
            String::new(),
            t.requests.to_string(),
            t.failures.to_string(),
            fmt_qps(t.qps),
            fmt_ms(t.p50_ms),
            fmt_ms(t.p95_ms),
            fmt_ms(t.p99_ms),
            fmt_ms(t.max_ms),
            fmt_recall(t.recall),
            String::new(),
            String::new(),
        ]);
        out.push_str(&text_table(&head, &rows, &numeric));
        for s in r.stages.iter().filter(|s| !s.valid) {
            w!(
                out,
                "stage {} is not valid: {}\n",
                s.index + 1,
                s.invalid_reason.as_deref().unwrap_or("no reason given")
            );
        }
        out.push_str("(steady state of each stage; latency of successful requests; in flight = mean/max requests in flight)\n");
    }
    out.push('\n');
    match &r.peak {
        Some(p) => {
            w!(
                out,
                "peak:        {} QPS at stage {} ({})\n",
                fmt_qps(p.qps),
                p.stage + 1,
                peak_load(p.users, p.rate)
            );
        }
        None => out.push_str("peak:        none (no valid stage)\n"),
    }
    match &r.saturation {
        Some(s) => {
            w!(
                out,
                "saturation:  stage {} ({}) at {} QPS: {}\n",
                s.stage + 1,
                peak_load(s.users, s.rate),
                fmt_qps(s.qps),
                s.reason
            );
        }
        None => out.push_str("saturation:  not reached (throughput kept growing with load)\n"),
    }
    match &r.sla {
        None => out.push_str("SLA:         none set\n"),
        Some(v) => {
            w!(
                out,
                "SLA:         {} (capacity at SLA {} QPS{})\n",
                if v.passed { "PASS" } else { "FAIL" },
                fmt_qps(v.capacity_at_sla_qps),
                v.best_stage
                    .map(|i| format!(", stage {}", i + 1))
                    .unwrap_or_default()
            );
            let rows: Vec<Vec<String>> = v
                .checks
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.target.clone(),
                        c.observed.clone(),
                        if c.passed { "pass" } else { "FAIL" }.to_string(),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                for line in text_table(
                    &["check", "target", "observed", "result"],
                    &rows,
                    &[false, false, false, false],
                )
                .lines()
                {
                    w!(out, "  {line}\n");
                }
            }
        }
    }
    match &r.capacity {
        None => out.push_str("capacity:    not planned (set spec.capacity)\n"),
        Some(c) => {
            w!(
                out,
                "capacity:    {} query node{} ({} without redundancy), {} QPS per node\n             {}\n",
                c.with_redundancy,
                if c.with_redundancy == 1 { "" } else { "s" },
                c.nodes_for_target,
                fmt_qps(c.per_node_qps),
                c.explanation
            );
        }
    }
    out
}

fn peak_load(users: Option<u64>, rate: Option<f64>) -> String {
    match (users, rate) {
        (Some(1), _) => "1 user".to_string(),
        (Some(u), _) => format!("{u} users"),
        (None, Some(r)) => format!("{}/s", fmt_num(r)),
        (None, None) => "load unknown".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// HTML

const CSS: &str = r#"
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --pass:#15803d; --fail:#b91c1c; --warn:#b45309; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; }
main { max-width:1200px; margin:0 auto; padding:24px 20px 48px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:19px; margin:32px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:18px 0 8px; }
p { margin:6px 0; }
.sub { color:var(--muted); margin:0 0 12px; }
.meta { display:grid; grid-template-columns:repeat(auto-fill,minmax(330px,1fr)); gap:4px 24px; margin:12px 0 0; }
.meta div { display:flex; gap:8px; min-width:0; }
.meta dt { color:var(--muted); flex:0 0 95px; }
.meta dd { margin:0; overflow-wrap:anywhere; }
.banner { border-radius:8px; padding:14px 18px; margin:16px 0; border:1px solid; }
.banner.warn { background:#fffbeb; border-color:#f59e0b; color:#78350f; }
.verdict { display:flex; flex-wrap:wrap; gap:14px 24px; align-items:center; border-radius:10px; padding:16px 20px; margin:20px 0 8px; border:2px solid; }
.verdict.pass { background:#f0fdf4; border-color:var(--pass); }
.verdict.fail { background:#fef2f2; border-color:var(--fail); }
.verdict.none { background:#f3f4f6; border-color:#9ca3af; }
.verdict .badge { font-size:30px; font-weight:800; letter-spacing:.02em; padding:4px 18px; border-radius:8px; color:#fff; white-space:nowrap; }
.verdict.pass .badge { background:var(--pass); }
.verdict.fail .badge { background:var(--fail); }
.verdict.none .badge { background:#6b7280; font-size:22px; }
.verdict .what { flex:1 1 320px; font-size:15px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(170px,1fr)); gap:12px; margin:16px 0; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .value { font-size:21px; font-weight:700; white-space:nowrap; }
.card .note { color:var(--muted); font-size:12px; }
.scroll { overflow-x:auto; background:#fff; border:1px solid var(--line); border-radius:8px; }
table { border-collapse:collapse; width:100%; font-size:12.5px; }
th, td { padding:5px 8px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#f3f4f6; font-weight:600; vertical-align:bottom; }
tr:last-child td { border-bottom:none; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr.total td { font-weight:600; background:#f9fafb; }
.ok { color:var(--pass); font-weight:600; }
.bad { color:var(--fail); font-weight:600; }
.warn-text { color:var(--warn); }
.reason { color:var(--muted); font-size:12px; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; }
pre { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px; overflow-x:auto; }
.charts { display:grid; grid-template-columns:repeat(auto-fit,minmax(480px,1fr)); gap:16px; }
figure { margin:0; background:#fff; border:1px solid var(--line); border-radius:8px; padding:8px; min-width:0; }
figure.wide { grid-column:1 / -1; }
figure svg { display:block; width:100%; height:auto; }
figcaption { color:var(--muted); font-size:12px; padding:4px 6px 0; }
details { margin:10px 0; }
summary { cursor:pointer; color:#1d4ed8; }
footer { margin-top:40px; color:var(--muted); font-size:12px; }
@media (max-width:560px) { .charts { grid-template-columns:1fr; } .meta dt { flex-basis:90px; } }
@media print { body { background:#fff; } .scroll, figure { border-color:#ccc; } }
"#;

/// An HTML table; cells are HTML already (escaped by the caller).
struct HtmlTable {
    head: Vec<(&'static str, bool)>,
    rows: Vec<(Vec<String>, &'static str)>,
}

impl HtmlTable {
    fn new(head: &[(&'static str, bool)]) -> Self {
        HtmlTable {
            head: head.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push((cells, ""));
    }

    fn row_class(&mut self, cells: Vec<String>, class: &'static str) {
        self.rows.push((cells, class));
    }

    fn render(&self, out: &mut String) {
        out.push_str("<div class=\"scroll\"><table><thead><tr>");
        for (h, num) in &self.head {
            w!(
                out,
                "<th{}>{}</th>",
                if *num { " class=\"num\"" } else { "" },
                escape(h)
            );
        }
        out.push_str("</tr></thead><tbody>");
        for (cells, class) in &self.rows {
            if class.is_empty() {
                out.push_str("<tr>");
            } else {
                w!(out, "<tr class=\"{class}\">");
            }
            for (i, c) in cells.iter().enumerate() {
                let num = self.head.get(i).is_some_and(|h| h.1);
                w!(
                    out,
                    "<td{}>{c}</td>",
                    if num { " class=\"num\"" } else { "" }
                );
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></div>");
    }
}

fn pass_cell(passed: bool) -> String {
    if passed {
        "<span class=\"ok\">pass</span>".to_string()
    } else {
        "<span class=\"bad\">FAIL</span>".to_string()
    }
}

/// The self-contained HTML report: inline CSS and SVG, no script, no network access (a
/// Content-Security-Policy forbids any), readable from 360 px to wide screens.
pub fn render_html(r: &RunResult) -> String {
    let mut out = String::with_capacity(64 * 1024);
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\"><title>Stampede report — {}</title><style>{CSS}</style></head><body><main>\n",
        escape(&r.name)
    );
    html_header(&mut out, r);
    html_verdict(&mut out, r);
    html_key_figures(&mut out, r);
    html_saturation_and_capacity(&mut out, r);
    html_stage_section(&mut out, r);
    html_timeline(&mut out, r);
    html_operations(&mut out, r);
    html_failures(&mut out, r);
    html_setup(&mut out, r);
    html_method(&mut out, r);
    w!(
        out,
        "<footer>Generated by Stampede {} from result.json (format {}). Re-render with <code>stampede report DIR</code>.</footer>\n</main></body></html>\n",
        escape(env!("CARGO_PKG_VERSION")),
        r.version
    );
    out
}

fn html_header(out: &mut String, r: &RunResult) {
    w!(
        out,
        "<header><h1>{}</h1><p class=\"sub\">Capacity test of Milvus at {}</p>",
        escape(&r.name),
        escape(&r.target)
    );
    if !r.complete {
        w!(
            out,
            "<div class=\"banner warn\" id=\"incomplete\"><strong>Incomplete run.</strong> {} The figures cover what ran.</div>",
            escape(
                r.incomplete_reason
                    .as_deref()
                    .unwrap_or("Not every stage ran.")
            )
        );
    }
    let spec = &r.spec;
    let ops: Vec<String> = spec
        .workload
        .operations
        .iter()
        .map(|o| format!("{} ×{}", o.name, o.weight))
        .collect();
    let index_params: Vec<String> = spec
        .index
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut items: Vec<(&str, String)> = vec![
        ("Target", r.target.clone()),
        (
            "Milvus",
            if r.server_version.is_empty() {
                "version unknown".to_string()
            } else {
                r.server_version.clone()
            },
        ),
        (
            "Collection",
            format!(
                "{} · {}-d {}",
                spec.collection.name,
                spec.collection.dimension,
                spec.collection.metric.as_str()
            ),
        ),
        (
            "Index",
            if index_params.is_empty() {
                spec.index.index_type.clone()
            } else {
                format!("{} ({})", spec.index.index_type, index_params.join(", "))
            },
        ),
        ("Model", r.model.clone()),
        ("Consistency", r.consistency.clone()),
        ("Operations", ops.join(", ")),
        (
            "Load",
            format!(
                "{} stage{}, {} shard{}",
                spec.stages.len(),
                if spec.stages.len() == 1 { "" } else { "s" },
                r.shards,
                if r.shards == 1 { "" } else { "s" }
            ),
        ),
        ("Started", r.started_at.clone()),
        ("Finished", r.finished_at.clone()),
    ];
    if let Some(d) = run_duration(r) {
        items.push(("Duration", d));
    }
    items.push((
        "Status",
        if r.complete {
            "complete".to_string()
        } else {
            format!(
                "incomplete: {}",
                r.incomplete_reason
                    .as_deref()
                    .unwrap_or("not every stage ran")
            )
        },
    ));
    out.push_str("<dl class=\"meta\">");
    for (k, v) in items {
        w!(
            out,
            "<div><dt>{}</dt><dd>{}</dd></div>",
            escape(k),
            escape(&v)
        );
    }
    out.push_str("</dl></header>\n");
}

fn html_verdict(out: &mut String, r: &RunResult) {
    match &r.sla {
        None => {
            out.push_str("<section id=\"sla\" class=\"verdict none\"><div class=\"badge\">NO SLA</div><div class=\"what\">No SLA was set (spec.sla), so the run is not judged. The figures below still show where it saturates.</div></section>\n");
        }
        Some(v) => {
            let (class, badge) = if v.passed {
                ("pass", "SLA PASS")
            } else {
                ("fail", "SLA FAIL")
            };
            let best = v
                .best_stage
                .and_then(|i| r.stages.iter().find(|s| s.index == i))
                .map(|s| format!(" (stage {} · {})", s.index + 1, load_label(s)))
                .unwrap_or_default();
            let what = if v.best_stage.is_some() {
                format!(
                    "Capacity at SLA: <strong>{} QPS</strong>{}, the highest throughput of a valid stage that met every latency, error and recall criterion.",
                    escape(&fmt_qps(v.capacity_at_sla_qps)),
                    escape(&best)
                )
            } else {
                "No valid stage met every latency, error and recall criterion.".to_string()
            };
            w!(
                out,
                "<section id=\"sla\" class=\"verdict {class}\"><div class=\"badge\">{badge}</div><div class=\"what\">{what}</div></section>\n"
            );
            if !v.checks.is_empty() {
                let mut t = HtmlTable::new(&[
                    ("SLA check", false),
                    ("Target", false),
                    ("Observed", false),
                    ("Result", false),
                ]);
                for c in &v.checks {
                    t.row(vec![
                        format!("<code>{}</code>", escape(&c.name)),
                        escape(&c.target),
                        escape(&c.observed),
                        pass_cell(c.passed),
                    ]);
                }
                t.render(out);
            }
        }
    }
}

fn card(out: &mut String, label: &str, value: &str, note: &str) {
    w!(
        out,
        "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"note\">{}</div></div>",
        escape(label),
        escape(value),
        escape(note)
    );
}

fn html_key_figures(out: &mut String, r: &RunResult) {
    out.push_str("<section id=\"key\" class=\"cards\">");
    match &r.peak {
        Some(p) => card(
            out,
            "Peak QPS",
            &fmt_qps(p.qps),
            &format!("stage {} · {}", p.stage + 1, peak_load(p.users, p.rate)),
        ),
        None => card(out, "Peak QPS", "–", "no valid stage"),
    }
    match &r.saturation {
        Some(s) => card(
            out,
            "Saturation",
            &peak_load(s.users, s.rate),
            &format!("stage {} · {} QPS", s.stage + 1, fmt_qps(s.qps)),
        ),
        None => card(out, "Saturation", "not reached", "throughput kept growing"),
    }
    let t = &r.totals;
    card(
        out,
        "P95 / P99 (ms)",
        &format!("{} / {}", fmt_ms(t.p95_ms), fmt_ms(t.p99_ms)),
        "all steady states",
    );
    card(
        out,
        "Requests",
        &t.requests.to_string(),
        &format!("{} QPS over all steady states", fmt_qps(t.qps)),
    );
    card(
        out,
        "Failures",
        &fmt_pct(t.error_ratio),
        &format!("{} failed requests", t.failures),
    );
    card(out, "Recall", &fmt_recall(t.recall), "mean recall@k");
    if let Some(c) = &r.capacity {
        card(
            out,
            "Query nodes",
            &c.with_redundancy.to_string(),
            &format!("for the target, {} without redundancy", c.nodes_for_target),
        );
    }
    out.push_str("</section>\n");
}

fn html_saturation_and_capacity(out: &mut String, r: &RunResult) {
    out.push_str("<section id=\"saturation\"><h2>Saturation</h2>");
    match &r.saturation {
        Some(s) => {
            w!(
                out,
                "<p>Saturation at <strong>stage {} ({})</strong>, {} QPS: {}</p>",
                s.stage + 1,
                escape(&peak_load(s.users, s.rate)),
                escape(&fmt_qps(s.qps)),
                escape(&s.reason)
            );
        }
        None if r.stages.iter().filter(|s| s.valid).count() < 2 => {
            out.push_str(
                "<p>Not determined: saturation needs at least two valid stages to compare.</p>",
            );
        }
        None => {
            out.push_str("<p>Not reached: throughput kept growing with the load asked for. Add stages with more load to find the knee.</p>");
        }
    }
    out.push_str("</section>\n<section id=\"capacity\"><h2>Capacity plan</h2>");
    match (&r.capacity, &r.spec.capacity) {
        (Some(c), spec) => {
            let mut t = HtmlTable::new(&[("", false), ("Value", true)]);
            if let Some(s) = spec {
                t.row(vec![
                    "Target load".into(),
                    format!("{} QPS", escape(&fmt_num(s.target_qps))),
                ]);
                t.row(vec![
                    "Query nodes during the test".into(),
                    s.measured_query_nodes.to_string(),
                ]);
                t.row(vec!["Redundancy".into(), escape(&fmt_num(s.redundancy))]);
            }
            t.row(vec!["Basis".into(), escape(&c.basis)]);
            t.row(vec![
                "QPS per query node".into(),
                escape(&fmt_qps(c.per_node_qps)),
            ]);
            t.row(vec![
                "Query nodes for the target".into(),
                c.nodes_for_target.to_string(),
            ]);
            t.row_class(
                vec![
                    "Query nodes with redundancy".into(),
                    c.with_redundancy.to_string(),
                ],
                "total",
            );
            t.render(out);
            w!(out, "<p class=\"reason\">{}</p>", escape(&c.explanation));
        }
        (None, Some(_)) => {
            out.push_str("<p>No plan: no valid stage gave a capacity to plan from (see the SLA checks and stage validity).</p>");
        }
        (None, None) => {
            out.push_str("<p>Not planned: set <code>spec.capacity.targetQps</code> to get the number of query nodes a target load needs.</p>");
        }
    }
    out.push_str("</section>\n");
}

/// Category labels of the stages; invalid stages are marked so a chart never shows them as
/// trustworthy.
fn stage_categories(r: &RunResult) -> Vec<String> {
    r.stages
        .iter()
        .map(|s| {
            if s.valid {
                load_label(s)
            } else {
                format!("{} ⚠", load_label(s))
            }
        })
        .collect()
}

/// A per-stage chart at the report's size.
fn stage_chart(title: &str, x_title: &str, y_title: &str, style: CategoryStyle) -> CategoryChart {
    let mut c = CategoryChart::new(title, x_title, y_title, style);
    (c.width, c.height) = STAGE_CHART;
    c
}

/// A timeline chart at the report's size.
fn timeline_chart(title: &str, x_title: &str, y_title: &str) -> LineChart {
    let mut c = LineChart::new(title, x_title, y_title);
    (c.width, c.height) = TIMELINE_CHART;
    c
}

fn stage_charts(r: &RunResult) -> Vec<(String, String)> {
    let cats = stage_categories(r);
    let x_title = if is_closed(r) {
        "stage (users)"
    } else {
        "stage (arrival rate, requests/s)"
    };
    let sla = r.spec.sla.as_ref();
    let mut charts = Vec::new();

    let mut qps = stage_chart(
        "Throughput per stage",
        x_title,
        "throughput (requests/s)",
        CategoryStyle::Bars,
    );
    qps.categories = cats.clone();
    qps.series.push(
        CategorySeries::new("QPS", r.stages.iter().map(|s| s.qps).collect()).color("#2563eb"),
    );
    if r.stages
        .iter()
        .any(|s| s.requests > 0 && s.queries != s.requests.saturating_sub(s.failures))
    {
        // Batch searches: a request carries several query vectors; show both rates.
        qps.series.push(
            CategorySeries::new(
                "query vectors/s",
                r.stages.iter().map(|s| s.queries_per_second).collect(),
            )
            .color("#93c5fd"),
        );
    }
    if let Some(min) = sla.and_then(|s| s.min_qps) {
        qps.thresholds.push(Threshold {
            value: min,
            label: format!("SLA min {} QPS", fmt_num(min)),
        });
    }
    charts.push((
        qps.render(),
        "Completed requests (successes + failures) per second of each stage's steady state.".into(),
    ));

    let mut lat = stage_chart(
        "Latency percentiles per stage",
        x_title,
        "latency (ms)",
        CategoryStyle::Points,
    );
    lat.categories = cats.clone();
    let no_latency = |s: &StageSummary, v: f64| {
        if s.requests > s.failures { v } else { f64::NAN }
    };
    lat.series.push(
        CategorySeries::new(
            "P50",
            r.stages.iter().map(|s| no_latency(s, s.p50_ms)).collect(),
        )
        .color("#16a34a"),
    );
    lat.series.push(
        CategorySeries::new(
            "P95",
            r.stages.iter().map(|s| no_latency(s, s.p95_ms)).collect(),
        )
        .color("#d97706"),
    );
    lat.series.push(
        CategorySeries::new(
            "P99",
            r.stages.iter().map(|s| no_latency(s, s.p99_ms)).collect(),
        )
        .color("#dc2626"),
    );
    if let Some(p95) = sla.and_then(|s| s.max_p95) {
        let ms = p95.get().as_secs_f64() * 1000.0;
        lat.thresholds.push(Threshold {
            value: ms,
            label: format!("SLA P95 ≤ {} ms", fmt_num(ms)),
        });
    }
    if let Some(p99) = sla.and_then(|s| s.max_p99) {
        let ms = p99.get().as_secs_f64() * 1000.0;
        lat.thresholds.push(Threshold {
            value: ms,
            label: format!("SLA P99 ≤ {} ms", fmt_num(ms)),
        });
    }
    charts.push((
        lat.render(),
        "Successful requests; percentiles of the merged histograms of all workers.".into(),
    ));

    let mut err = stage_chart(
        "Failed requests per stage",
        x_title,
        "failed requests (% of completed)",
        CategoryStyle::Bars,
    );
    err.categories = cats.clone();
    err.series.push(
        CategorySeries::new(
            "failure ratio",
            r.stages.iter().map(|s| s.error_ratio * 100.0).collect(),
        )
        .color("#dc2626"),
    );
    if let Some(max) = sla.and_then(|s| s.max_error_ratio) {
        err.thresholds.push(Threshold {
            value: max * 100.0,
            label: format!("SLA ≤ {}%", fmt_num(max * 100.0)),
        });
    }
    charts.push((err.render(), "Failed share of completed requests.".into()));

    let mut conc = stage_chart(
        if is_closed(r) {
            "Concurrency asked vs kept"
        } else {
            "Requests in flight per stage"
        },
        x_title,
        if is_closed(r) {
            "concurrent users / requests"
        } else {
            "requests in flight"
        },
        CategoryStyle::Bars,
    );
    conc.categories = cats.clone();
    if is_closed(r) {
        conc.series.push(
            CategorySeries::new(
                "users asked",
                r.stages
                    .iter()
                    .map(|s| asked_load(s).unwrap_or(f64::NAN))
                    .collect(),
            )
            .color("#9ca3af"),
        );
    }
    conc.series.push(
        CategorySeries::new(
            "in flight (mean)",
            r.stages.iter().map(|s| s.in_flight_mean).collect(),
        )
        .color("#7c3aed"),
    );
    conc.series.push(
        CategorySeries::new(
            "in flight (max)",
            r.stages.iter().map(|s| s.in_flight_max as f64).collect(),
        )
        .color("#c4b5fd"),
    );
    charts.push((
        conc.render(),
        if is_closed(r) {
            "Requests really in flight next to the users asked for: users wait between requests (waitTime), so fewer in flight than users is expected; far fewer with no wait means the generator could not keep its users concurrent.".into()
        } else {
            "Requests in flight: with an open model they grow with latency × arrival rate.".into()
        },
    ));

    if r.stages.iter().any(|s| s.recall.is_some()) {
        let mut rec = stage_chart(
            "Recall per stage",
            x_title,
            "recall@k (0–1)",
            CategoryStyle::Points,
        );
        rec.categories = cats;
        rec.series.push(
            CategorySeries::new(
                "recall",
                r.stages
                    .iter()
                    .map(|s| s.recall.unwrap_or(f64::NAN))
                    .collect(),
            )
            .color("#0891b2"),
        );
        if let Some(min) = sla.and_then(|s| s.recall_at_least) {
            rec.thresholds.push(Threshold {
                value: min,
                label: format!("SLA recall ≥ {}", fmt_num(min)),
            });
        }
        charts.push((
            rec.render(),
            "Mean recall@k of the searches that used a ground-truth query vector.".into(),
        ));
    }
    charts
}

fn figure(out: &mut String, svg: &str, caption: &str, wide: bool) {
    w!(
        out,
        "<figure{}>{svg}<figcaption>{}</figcaption></figure>",
        if wide { " class=\"wide\"" } else { "" },
        escape(caption)
    );
}

fn html_stage_section(out: &mut String, r: &RunResult) {
    out.push_str("<section id=\"stages\"><h2>Stages</h2>");
    if r.stages.is_empty() {
        out.push_str("<p>No stage was measured.</p></section>\n");
        return;
    }
    out.push_str("<div class=\"charts\">");
    for (svg, caption) in stage_charts(r) {
        figure(out, &svg, &caption, false);
    }
    out.push_str("</div><h3>Per stage (steady state)</h3>");
    let closed = is_closed(r);
    let mut t = HtmlTable::new(&[
        ("Stage", true),
        (if closed { "Users" } else { "Rate asked" }, true),
        ("Seconds", true),
        ("Requests", true),
        ("Failures", true),
        ("QPS", true),
        ("P50 ms", true),
        ("P95 ms", true),
        ("P99 ms", true),
        ("Max ms", true),
        ("Error ratio", true),
        ("Recall", true),
        ("In flight", true),
        (if closed { "Kept" } else { "Late / dropped" }, true),
        ("Valid", false),
        ("SLA", false),
        ("Milvus CPU / memory", true),
        ("Bottleneck", false),
    ]);
    for s in &r.stages {
        let kept = if closed {
            concurrency_kept(s).map_or_else(|| "–".to_string(), fmt_pct)
        } else {
            format!("{} / {}", s.late, s.dropped)
        };
        let valid = if s.valid {
            "<span class=\"ok\">yes</span>".to_string()
        } else {
            format!(
                "<span class=\"bad\">no</span> <span class=\"reason\">{}</span>",
                escape(s.invalid_reason.as_deref().unwrap_or(""))
            )
        };
        let sla = match stage_sla_note(r, s.index) {
            Some((true, n)) => format!("<span class=\"ok\">{}</span>", escape(&n)),
            Some((false, n)) => format!(
                "<span class=\"bad\">FAIL</span><br><span class=\"reason\">{}</span>",
                escape(n.trim_start_matches("fail: "))
            ),
            None => "–".to_string(),
        };
        t.row(vec![
            (s.index + 1).to_string(),
            match (s.users, s.rate) {
                (Some(u), _) => u.to_string(),
                (None, Some(rate)) => format!("{}/s", escape(&fmt_num(rate))),
                (None, None) => "–".to_string(),
            },
            format!("{:.1}", s.seconds),
            s.requests.to_string(),
            s.failures.to_string(),
            fmt_qps(s.qps),
            fmt_ms(s.p50_ms),
            fmt_ms(s.p95_ms),
            fmt_ms(s.p99_ms),
            fmt_ms(s.max_ms),
            fmt_pct(s.error_ratio),
            fmt_recall(s.recall),
            format!("{:.1} / {}", s.in_flight_mean, s.in_flight_max),
            kept,
            valid,
            sla,
            server_cell(r, s.index),
            bottleneck_cell(r, s.index),
        ]);
    }
    let tot = &r.totals;
    t.row_class(
        vec![
            "all".into(),
            String::new(),
            format!("{:.1}", r.stages.iter().map(|s| s.seconds).sum::<f64>()),
            tot.requests.to_string(),
            tot.failures.to_string(),
            fmt_qps(tot.qps),
            fmt_ms(tot.p50_ms),
            fmt_ms(tot.p95_ms),
            fmt_ms(tot.p99_ms),
            fmt_ms(tot.max_ms),
            fmt_pct(tot.error_ratio),
            fmt_recall(tot.recall),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ],
        "total",
    );
    t.render(out);
    out.push_str("<p class=\"reason\">Seconds: steady-state wall time. In flight: mean / max requests outstanding at once (sampled).");
    if closed {
        out.push_str(" Kept: mean in flight as a share of the users asked for.");
    } else {
        out.push_str(" Late: sent after their intended time (latency counted from it); dropped: not sent (in-flight bound).");
    }
    out.push_str("</p>");
    html_bottlenecks(out, r);
    if r.ramps.iter().any(|s| s.requests > 0) {
        out.push_str(
            "<details><summary>Ramps (users starting; not part of the figures above)</summary>",
        );
        let mut t = HtmlTable::new(&[
            ("Stage", true),
            ("Seconds", true),
            ("Requests", true),
            ("Failures", true),
            ("QPS", true),
            ("P50 ms", true),
            ("P95 ms", true),
            ("P99 ms", true),
        ]);
        for s in &r.ramps {
            t.row(vec![
                (s.index + 1).to_string(),
                format!("{:.1}", s.seconds),
                s.requests.to_string(),
                s.failures.to_string(),
                fmt_qps(s.qps),
                fmt_ms(s.p50_ms),
                fmt_ms(s.p95_ms),
                fmt_ms(s.p99_ms),
            ]);
        }
        t.render(out);
        out.push_str("</details>");
    }
    out.push_str("</section>\n");
}

/// The timeline's per-second values, gap-filled: (second, qps, p50, p95, p99, users, in flight).
struct TimelinePoint {
    second: f64,
    qps: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    users: f64,
    in_flight: f64,
}

fn timeline_points(r: &RunResult) -> Vec<TimelinePoint> {
    let mut pts: Vec<&crate::result::SeriesPoint> = r.series.iter().collect();
    pts.sort_by_key(|p| p.second);
    let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
        return Vec::new();
    };
    let fill = last.second - first.second <= MAX_GAP_FILL_SECONDS;
    let mut out = Vec::new();
    let mut users = 0.0;
    let mut it = pts.iter().peekable();
    let mut push = |p: Option<&crate::result::SeriesPoint>, second: u64, users: &mut f64| {
        match p {
            Some(p) => {
                *users = p.users as f64;
                // A second without a successful request has no latency: a gap, not a zero.
                let lat = |v: f64| if p.requests > p.failures { v } else { f64::NAN };
                out.push(TimelinePoint {
                    second: p.second as f64,
                    qps: p.requests as f64,
                    p50: lat(p.p50_ms),
                    p95: lat(p.p95_ms),
                    p99: lat(p.p99_ms),
                    users: *users,
                    in_flight: p.in_flight_max as f64,
                });
            }
            None => out.push(TimelinePoint {
                second: second as f64,
                qps: 0.0,
                p50: f64::NAN,
                p95: f64::NAN,
                p99: f64::NAN,
                users: *users,
                in_flight: f64::NAN,
            }),
        }
    };
    if fill {
        for second in first.second..=last.second {
            let mut found = None;
            while let Some(p) = it.peek() {
                if p.second < second {
                    it.next();
                } else {
                    if p.second == second {
                        found = Some(**p);
                        it.next();
                    }
                    break;
                }
            }
            push(found, second, &mut users);
        }
    } else {
        for p in pts.iter() {
            push(Some(p), p.second, &mut users);
        }
    }
    out
}

/// Stage boundaries on the timeline: the first second of each stage.
fn stage_markers(r: &RunResult) -> Vec<Marker> {
    let mut markers: Vec<Marker> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut pts: Vec<&crate::result::SeriesPoint> = r.series.iter().collect();
    pts.sort_by_key(|p| p.second);
    for p in pts {
        if seen.insert(p.stage) {
            let load = r
                .stages
                .iter()
                .find(|s| s.index == p.stage)
                .map(load_label)
                .unwrap_or_default();
            let label = if load.is_empty() || load.starts_with("stage") {
                format!("stage {}", p.stage + 1)
            } else {
                format!("stage {} · {}", p.stage + 1, load)
            };
            markers.push(Marker {
                x: p.second as f64,
                label,
            });
        }
    }
    markers
}

fn html_timeline(out: &mut String, r: &RunResult) {
    out.push_str("<section id=\"timeline\"><h2>Timeline</h2>");
    let pts = timeline_points(r);
    if pts.is_empty() {
        out.push_str("<p>No per-second measurements.</p></section>\n");
        return;
    }
    let markers = stage_markers(r);
    let closed = is_closed(r);
    let xy = |f: &dyn Fn(&TimelinePoint) -> f64| -> Vec<(f64, f64)> {
        pts.iter().map(|p| (p.second, f(p))).collect()
    };

    let mut load = timeline_chart(
        "Throughput and load over time",
        "time since start (s)",
        "throughput (requests/s)",
    );
    load.y2_title = Some(if closed {
        "users / requests in flight".to_string()
    } else {
        "requests in flight".to_string()
    });
    load.markers = markers.clone();
    load.series
        .push(Series::new("QPS", xy(&|p| p.qps)).color("#2563eb"));
    if closed {
        load.series.push(
            Series::new("users", xy(&|p| p.users))
                .on_right_axis()
                .dashed()
                .color("#111827"),
        );
    } else {
        load.series.push(
            Series::new("target rate", xy(&|p| p.users))
                .dashed()
                .color("#111827"),
        );
    }
    load.series.push(
        Series::new("in flight (max)", xy(&|p| p.in_flight))
            .on_right_axis()
            .color("#a78bfa"),
    );
    out.push_str("<div class=\"charts\">");
    figure(
        out,
        &load.render(),
        "Requests completed in each second (ramps included), with the load asked for and the most requests in flight; dashed lines mark stage starts.",
        true,
    );

    let mut lat = timeline_chart("Latency over time", "time since start (s)", "latency (ms)");
    lat.markers = markers.clone();
    lat.series
        .push(Series::new("P50", xy(&|p| p.p50)).color("#16a34a"));
    lat.series
        .push(Series::new("P95", xy(&|p| p.p95)).color("#d97706"));
    lat.series
        .push(Series::new("P99", xy(&|p| p.p99)).color("#dc2626"));
    if let Some(p95) = r.spec.sla.as_ref().and_then(|s| s.max_p95) {
        let ms = p95.get().as_secs_f64() * 1000.0;
        lat.thresholds.push(Threshold {
            value: ms,
            label: format!("SLA P95 ≤ {} ms", fmt_num(ms)),
        });
    }
    figure(
        out,
        &lat.render(),
        "Percentiles of the successful requests completed in each second.",
        true,
    );

    server_charts(out, r, &pts, &markers);

    if !r.client_cpu.is_empty() {
        let mut cpu_pts: Vec<&crate::metrics::CpuSample> = r.client_cpu.iter().collect();
        cpu_pts.sort_by_key(|c| c.second);
        let mut cpu = timeline_chart("Load generator CPU", "time since start (s)", "CPU (cores)");
        cpu.markers = markers;
        cpu.series.push(
            Series::new(
                "cores used",
                cpu_pts
                    .iter()
                    .map(|c| (c.second as f64, c.cores_used))
                    .collect(),
            )
            .color("#0891b2"),
        );
        cpu.series.push(
            Series::new(
                "cores available",
                cpu_pts
                    .iter()
                    .map(|c| (c.second as f64, c.cores_available))
                    .collect(),
            )
            .dashed()
            .color("#6b7280"),
        );
        figure(
            out,
            &cpu.render(),
            "CPU used by the load generator itself (all workers); a stage where it nears the cores available measures the client, not Milvus, and is marked invalid.",
            true,
        );
    }
    out.push_str("</div></section>\n");
}

fn html_operations(out: &mut String, r: &RunResult) {
    out.push_str("<section id=\"operations\"><h2>Operations</h2>");
    if r.operations.is_empty() {
        out.push_str("<p>No operation completed a request in a steady state.</p></section>\n");
        return;
    }
    let total_requests: u64 = r.operations.iter().map(|o| o.requests).sum();
    let mut t = HtmlTable::new(&[
        ("Operation", false),
        ("Weight", true),
        ("Requests", true),
        ("Share", true),
        ("Failures", true),
        ("Queries", true),
        ("QPS", true),
        ("P50 ms", true),
        ("P95 ms", true),
        ("P99 ms", true),
        ("Max ms", true),
        ("Error ratio", true),
        ("Recall", true),
    ]);
    for o in &r.operations {
        let weight = r
            .spec
            .workload
            .operations
            .iter()
            .find(|s| s.name == o.name)
            .map_or_else(|| "–".to_string(), |s| s.weight.to_string());
        let share = if total_requests > 0 {
            o.requests as f64 / total_requests as f64
        } else {
            0.0
        };
        t.row(vec![
            format!("<code>{}</code>", escape(&o.name)),
            weight,
            o.requests.to_string(),
            fmt_pct(share),
            o.failures.to_string(),
            o.queries.to_string(),
            fmt_qps(o.qps),
            fmt_ms(o.p50_ms),
            fmt_ms(o.p95_ms),
            fmt_ms(o.p99_ms),
            fmt_ms(o.max_ms),
            fmt_pct(o.error_ratio),
            fmt_recall(o.recall),
        ]);
    }
    t.render(out);
    out.push_str("<p class=\"reason\">All steady states together. Queries counts query vectors of successful requests (a batch search of nq=5 is one request and five queries).</p></section>\n");
}

fn html_failures(out: &mut String, r: &RunResult) {
    out.push_str("<section id=\"failures\"><h2>Failures</h2>");
    if r.failures.is_empty() {
        out.push_str("<p>No request failed.</p></section>\n");
        return;
    }
    let mut rows: Vec<&crate::result::FailureSummary> = r.failures.iter().collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.operation.cmp(&b.operation))
            .then_with(|| a.kind.cmp(&b.kind))
    });
    let mut t = HtmlTable::new(&[
        ("Operation", false),
        ("Kind", false),
        ("Occurrences", true),
        ("First message", false),
    ]);
    for f in rows {
        t.row(vec![
            format!("<code>{}</code>", escape(&f.operation)),
            format!("<code>{}</code>", escape(&f.kind)),
            f.count.to_string(),
            escape(&f.example),
        ]);
    }
    t.render(out);
    out.push_str("<p class=\"reason\">Whole run, ramps included.</p></section>\n");
}

fn html_setup(out: &mut String, r: &RunResult) {
    out.push_str("<section id=\"setup\"><h2>Setup</h2>");
    if let Some(p) = &r.prepare {
        let mut t = HtmlTable::new(&[("Prepare", false), ("", false)]);
        t.row(vec![
            "Collection".into(),
            format!("{} ({:?})", escape(&p.collection), p.action),
        ]);
        t.row(vec![
            "Rows".into(),
            format!(
                "{} ({} existing, {} inserted at {} rows/s)",
                p.rows,
                p.rows_existing,
                p.rows_inserted,
                escape(&fmt_num(p.insert_rows_per_second))
            ),
        ]);
        let params: Vec<String> = p
            .index_params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        t.row(vec![
            "Index".into(),
            format!(
                "{} {}{}",
                escape(&p.index_type),
                escape(&params.join(", ")),
                if p.index_reused { " (reused)" } else { "" }
            ),
        ]);
        t.row(vec!["Load state".into(), escape(&p.load_state)]);
        if let Some(g) = &p.ground_truth {
            t.row(vec!["Ground truth".into(), escape(g)]);
        }
        for ph in &p.phases {
            t.row(vec![
                format!("Time: {}", escape(&ph.phase)),
                format!("{:.1} s", ph.seconds),
            ]);
        }
        t.render(out);
    } else {
        out.push_str("<p>No prepare summary (the data was prepared separately).</p>");
    }
    // The spec holds no credentials (only the name of a Secret), so it is shown in full: it is
    // what reproduces the run.
    let spec_text = serde_yaml_ng::to_string(&r.spec)
        .or_else(|_| serde_json::to_string_pretty(&r.spec))
        .unwrap_or_default();
    w!(
        out,
        "<details><summary>The StressTest spec that ran</summary><pre>{}</pre></details></section>\n",
        escape(&spec_text)
    );
}

fn html_method(out: &mut String, r: &RunResult) {
    out.push_str("<section id=\"method\"><h2>How to read this report</h2><ul>");
    out.push_str("<li>Figures per stage cover its <strong>steady state</strong>: the ramp (users starting) is left out. The timeline shows every second, ramps included.</li>");
    out.push_str("<li><strong>QPS</strong> is completed requests (successes + failures) per second of wall time; a batch search is one request.</li>");
    out.push_str("<li><strong>Latency</strong> percentiles are of successful requests, from HdrHistograms (µs, 3 significant digits) merged exactly across workers, never averaged.</li>");
    if is_closed(r) {
        out.push_str("<li><strong>In flight</strong> is the number of requests really outstanding (sampled), next to the users asked for: users wait between requests, so fewer in flight than users is normal, but a large gap with no wait time means the client, not Milvus, limited the load.</li>");
    } else {
        out.push_str("<li>Open model: latency counts from the intended send time (no coordinated omission); <strong>late</strong> requests were sent after their time, <strong>dropped</strong> ones not at all (in-flight bound reached).</li>");
    }
    out.push_str("<li>A stage is <strong>invalid</strong> when it did not run to its end, measured nothing, or the load generator ran out of CPU.</li>");
    out.push_str("<li>The Locust-compatible CSV files (<code>*_stats.csv</code>, <code>*_stats_history.csv</code>, <code>*_failures.csv</code>) follow Locust's meaning: their response times include failed requests.</li>");
    out.push_str("</ul></section>\n");
}

/// The stage table's server cell: mean cores and peak resident memory, or why not observed.
fn server_cell(r: &RunResult, stage: usize) -> String {
    if !r.server.enabled && r.server.reason.is_none() {
        return "–".to_string();
    }
    match r.server.stages.iter().find(|s| s.stage == stage) {
        Some(s) if s.observed => {
            let cpu = s
                .cpu_cores_mean
                .map_or_else(|| "–".to_string(), |c| format!("{c:.2} cores"));
            let mem = s.resident_bytes_peak.map_or_else(
                || "–".to_string(),
                |b| format!("{:.0} MiB", b / (1024.0 * 1024.0)),
            );
            format!("{cpu}<br>{mem}")
        }
        Some(s) => format!(
            "<span class=\"reason\">{}</span>",
            escape(s.note.as_deref().unwrap_or("not observed"))
        ),
        None => format!(
            "<span class=\"reason\">{}</span>",
            escape(r.server.reason.as_deref().unwrap_or("not observed"))
        ),
    }
}

/// The stage table's bottleneck cell: the limiting resource (details in the table below it).
fn bottleneck_cell(r: &RunResult, stage: usize) -> String {
    use crate::bottleneck::Resource;
    let Some(b) = r.bottlenecks.iter().find(|b| b.stage == stage) else {
        return "–".to_string();
    };
    let class = match b.resource {
        Resource::None => "ok",
        Resource::NotObserved => "reason",
        _ => "bad",
    };
    format!(
        "<span class=\"{class}\" data-bottleneck=\"{}\">{}</span>",
        b.resource.as_str(),
        escape(b.resource.label())
    )
}

/// What limited each stage: the evidence and, on the saturation stage, the recommendations.
fn html_bottlenecks(out: &mut String, r: &RunResult) {
    if r.bottlenecks.is_empty() {
        return;
    }
    out.push_str("<h3 id=\"bottlenecks\">Bottlenecks</h3>");
    let mut t = HtmlTable::new(&[
        ("Stage", true),
        ("Limit", false),
        ("Evidence", false),
        ("Recommendations", false),
    ]);
    for b in &r.bottlenecks {
        let recs = if b.recommendations.is_empty() {
            "–".to_string()
        } else {
            let mut list = String::from("<ul class=\"recommendations\">");
            for rec in &b.recommendations {
                w!(
                    list,
                    "<li data-rule=\"{}\">{}</li>",
                    escape(&rec.rule),
                    escape(&rec.text)
                );
            }
            list.push_str("</ul>");
            list
        };
        t.row(vec![
            (b.stage + 1).to_string(),
            bottleneck_cell(r, b.stage),
            escape(&b.evidence),
            recs,
        ]);
    }
    t.render(out);
    out.push_str("<p class=\"reason\">The limit of a stage is the first of: errors (≥ 1 % failed), server memory (peak ≥ 90 % of the host's), the load generator (≥ 90 % of its cores), server CPU (≥ 90 % busy while requests queued or P95 rose ≥ 1.5×), network (only when the link capacity is known); otherwise none. Recommendations are rules applied to the saturation stage (or the last limited one).</p>");
}

/// A server series clipped to the timeline's x range, with the values at its two ends
/// interpolated, so the server charts share the x axis of the QPS and latency charts.
fn clip_to(points: Vec<(f64, f64)>, x0: f64, x1: f64) -> Vec<(f64, f64)> {
    let at = |x: f64| -> Option<f64> {
        points.windows(2).find_map(|w| {
            let ((a, ya), (b, yb)) = (w[0], w[1]);
            (a <= x && x <= b && b > a).then(|| ya + (yb - ya) * (x - a) / (b - a))
        })
    };
    let mut out = Vec::new();
    if let Some(y) = at(x0) {
        out.push((x0, y));
    }
    out.extend(points.iter().copied().filter(|(x, _)| *x > x0 && *x < x1));
    if let Some(y) = at(x1) {
        out.push((x1, y));
    }
    out
}

/// Milvus CPU and memory over time, on the same x axis and stage markers as the timeline.
fn server_charts(out: &mut String, r: &RunResult, pts: &[TimelinePoint], markers: &[Marker]) {
    let srv = &r.server;
    if !srv.observed {
        if let Some(reason) = &srv.reason {
            w!(
                out,
                "<p class=\"reason\" id=\"server-not-observed\">Milvus server: {}</p>",
                escape(reason)
            );
        }
        return;
    }
    let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
        return;
    };
    let (x0, x1) = (first.second, last.second);
    let mut samples: Vec<&crate::observe::ServerSample> = srv.series.iter().collect();
    samples.sort_by(|a, b| a.second.total_cmp(&b.second));
    // A CPU rate covers the interval before its scrape: drawn at the interval's middle.
    let cpu: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|p| Some((p.second - p.interval / 2.0, p.cpu_cores?)))
        .collect();
    let mut chart = timeline_chart("Milvus CPU", "time since start (s)", "CPU (cores)");
    chart.markers = markers.to_vec();
    chart
        .series
        .push(Series::new("Milvus cores used", clip_to(cpu, x0, x1)).color("#7c3aed"));
    if let Some(c) = srv.cores_available {
        chart.series.push(
            Series::new("host cores", vec![(x0, c), (x1, c)])
                .dashed()
                .color("#6b7280"),
        );
    }
    if srv.shares_host_with_client && !r.client_cpu.is_empty() {
        let mut c: Vec<(f64, f64)> = r
            .client_cpu
            .iter()
            .map(|c| (c.second as f64, c.cores_used))
            .collect();
        c.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .series
            .push(Series::new("load generator cores (same host)", c).color("#0891b2"));
    }
    figure(
        out,
        &chart.render(),
        &format!(
            "CPU used by the Milvus processes (rate of process_cpu_seconds_total, scraped every {} s from {}).",
            fmt_num(srv.interval_seconds),
            srv.endpoints.join(", ")
        ),
        true,
    );
    let mib = 1024.0 * 1024.0;
    let mem: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|p| Some((p.second, p.resident_bytes? / mib)))
        .collect();
    if !mem.is_empty() {
        let mut chart = timeline_chart(
            "Milvus memory",
            "time since start (s)",
            "resident memory (MiB)",
        );
        chart.markers = markers.to_vec();
        chart
            .series
            .push(Series::new("Milvus resident memory", clip_to(mem, x0, x1)).color("#be185d"));
        let limit = srv
            .memory_limit_bytes
            .map(|b| format!(" The host has {:.0} MiB.", b / mib))
            .unwrap_or_default();
        figure(
            out,
            &chart.render(),
            &format!(
                "Resident memory of the Milvus processes (process_resident_memory_bytes).{limit}"
            ),
            true,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CpuSample, SecondSample, Snapshot, StageMeasurement, Window};
    use crate::result::{RunContext, build_result};
    use crate::spec::StressTestSpec;

    const SPEC: &str = r#"
target: {address: "127.0.0.1:19530", credentialsSecret: milvus-auth}
collection: {name: stress_test_collection, dimension: 768, metric: L2}
index: {type: HNSW, params: {M: 16, efConstruction: 200}}
workload:
  model: Closed
  consistency: Bounded
  operations:
    - {name: search_vector, weight: 10, search: {topK: 10, params: {ef: 64}}}
    - {name: "search,with \"filter\"", weight: 3, search: {topK: 10, filter: 'category == "{category}"'}}
    - {name: batch_search, weight: 1, search: {topK: 10, nq: 5}}
stages:
  - {duration: 10s, users: 10, spawnRate: 10}
  - {duration: 10s, users: 50, spawnRate: 50}
  - {duration: 10s, users: 100, spawnRate: 100}
sla: {minQps: 500, maxP95: 100ms, maxP99: 250ms, maxErrorRatio: 0.001, recallAtLeast: 0.9}
capacity: {targetQps: 10000, redundancy: 2, measuredQueryNodes: 1}
"#;

    fn spec() -> StressTestSpec {
        serde_yaml_ng::from_str(SPEC).unwrap()
    }

    /// A deterministic pseudo-random sequence (no rand dependency in the fixture).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Three stages of 10 s (1 s ramp + 9 s steady), QPS growing then flattening, latency rising,
    /// failures in the last stage; every request recorded into its stage window and its second.
    pub(super) fn synthetic_snapshot() -> Snapshot {
        let mut rng = Lcg(42);
        let users = [10u64, 50, 100];
        let qps = [100u64, 480, 560];
        let base_ms = [8.0, 20.0, 90.0];
        let ops = ["search_vector", "search,with \"filter\"", "batch_search"];
        let mut snap = Snapshot {
            shards: 1,
            ..Snapshot::default()
        };
        for (k, &u) in users.iter().enumerate() {
            let mut m = StageMeasurement {
                stage: k,
                ramp_seconds: 1.0,
                steady_seconds: 9.0,
                complete: true,
                ..StageMeasurement::default()
            };
            for sec in 0..10u64 {
                let second = k as u64 * 10 + sec;
                let mut win = Window::default();
                let n = if sec == 0 { qps[k] / 2 } else { qps[k] };
                for i in 0..n {
                    let op = ops[if i % 14 < 10 {
                        0
                    } else if i % 14 < 13 {
                        1
                    } else {
                        2
                    }];
                    let lat_us = ((base_ms[k] * (0.5 + rng.next() * 1.5)) * 1000.0) as u64;
                    let fail = k == 2 && i % 50 == 7;
                    for w in [&mut win, if sec == 0 { &mut m.ramp } else { &mut m.steady }] {
                        let o = w.op_mut(op);
                        if fail {
                            o.record_failure(
                                lat_us / 10,
                                "grpc:UNAVAILABLE",
                                "connection reset, \"peer\" gone",
                            );
                        } else {
                            o.record_success(lat_us, if op == "batch_search" { 5 } else { 1 });
                            if op == "search_vector" && i % 10 == 0 {
                                o.record_recall(0.95 + rng.next() * 0.04);
                            }
                        }
                    }
                }
                let current = if sec == 0 { u / 2 } else { u };
                win.users = current;
                win.sample_in_flight(current * 9 / 10);
                let w = if sec == 0 { &mut m.ramp } else { &mut m.steady };
                w.users = current;
                w.sample_in_flight(current * 9 / 10);
                snap.seconds.push(SecondSample {
                    second,
                    stage: k,
                    window: win,
                });
                snap.client_cpu.push(CpuSample {
                    second,
                    stage: k,
                    cores_used: 0.2 + k as f64 * 0.3,
                    cores_available: 2.0,
                });
            }
            snap.stages.push(m);
        }
        // A quiet second (nothing completed): the history still gets a row for it.
        snap.seconds.retain(|s| s.second != 15);
        snap
    }

    pub(super) fn synthetic() -> RunResult {
        build_result(
            &spec(),
            RunContext {
                name: "classic <scenario>".into(),
                started_at: "2025-01-02T03:04:05Z".into(),
                finished_at: "2025-01-02T03:04:35Z".into(),
                target: "127.0.0.1:19530".into(),
                server_version: "v2.4.15".into(),
                interrupted: None,
                prepare: None,
            },
            synthetic_snapshot(),
        )
    }

    #[test]
    fn an_observed_server_gets_cpu_and_memory_charts_and_a_bottleneck_per_stage() {
        use crate::bottleneck::Resource;
        use crate::observe::{ServerObservation, ServerSample};
        let mut r = synthetic();
        // Scrapes every 2 s over the three 10 s stages: Milvus at 0.3, 1.95 and 1.0 cores.
        let series = (0..=15)
            .map(|k| {
                let second = f64::from(k) * 2.0;
                let cores = if second <= 10.0 {
                    0.3
                } else if second <= 20.0 {
                    1.95
                } else {
                    1.0
                };
                ServerSample {
                    second,
                    interval: if k == 0 { 0.0 } else { 2.0 },
                    cpu_cores: (k > 0).then_some(cores),
                    resident_bytes: Some(500.0 * 1024.0 * 1024.0 + second * 1e6),
                    queued_tasks: Some(if cores > 1.5 { 4.0 } else { 0.0 }),
                    endpoints_observed: 1,
                    ..ServerSample::default()
                }
            })
            .collect();
        crate::result::attach_server(
            &mut r,
            ServerObservation {
                enabled: true,
                observed: true,
                endpoints: vec!["http://127.0.0.1:9091/metrics".into()],
                interval_seconds: 2.0,
                cores_available: Some(2.0),
                memory_limit_bytes: Some(8.0 * 1024.0 * 1024.0 * 1024.0),
                series,
                ..ServerObservation::default()
            },
        );
        assert_eq!(r.server.stages.len(), 3);
        let cpu: Vec<f64> = r
            .server
            .stages
            .iter()
            .map(|s| s.cpu_cores_mean.unwrap())
            .collect();
        assert!((cpu[0] - 0.3).abs() < 1e-9, "{cpu:?}");
        assert!((cpu[1] - 1.95).abs() < 1e-9, "{cpu:?}");
        assert_eq!(r.bottlenecks.len(), 3);
        assert_eq!(r.bottlenecks[0].resource, Resource::None);
        assert_eq!(r.bottlenecks[1].resource, Resource::ServerCpu);
        assert!(
            r.bottlenecks[1]
                .evidence
                .contains("Milvus used 1.95 of 2.00 cores (98 %)"),
            "{}",
            r.bottlenecks[1].evidence
        );
        let html = render_html(&r);
        assert!(html.contains("Milvus CPU"));
        assert!(html.contains("Milvus memory"));
        assert!(html.contains("id=\"bottlenecks\""));
        assert!(html.contains("data-bottleneck=\"serverCpu\""));
        assert!(!html.contains("server-not-observed"));
    }

    fn empty() -> RunResult {
        let mut s = spec();
        s.sla = None;
        s.capacity = None;
        s.stages.clear();
        build_result(&s, RunContext::default(), Snapshot::default())
    }

    /// Splits a CSV text into records of fields (handles quotes, as pandas would).
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut row = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') => quoted = true,
                (false, ',') => row.push(std::mem::take(&mut field)),
                (false, '\n') => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                (false, c) => field.push(c),
            }
        }
        assert!(field.is_empty() && row.is_empty(), "no trailing newline");
        rows
    }

    fn col(rows: &[Vec<String>], name: &str) -> usize {
        rows[0].iter().position(|h| h == name).unwrap()
    }

    #[test]
    fn csv_headers_are_exactly_locusts() {
        let r = synthetic();
        let first = |s: String| s.lines().next().unwrap().to_string();
        assert_eq!(
            first(stats_csv(&r)),
            "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
        );
        assert_eq!(
            first(stats_history_csv(&r)),
            "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,Total Min Response Time,Total Max Response Time,Total Average Content Size"
        );
        assert_eq!(first(failures_csv(&r)), "Method,Name,Error,Occurrences");
    }

    #[test]
    fn stats_csv_has_a_row_per_operation_and_an_aggregated_row_over_steady_states() {
        let r = synthetic();
        let rows = parse_csv(&stats_csv(&r));
        assert_eq!(rows.len(), 1 + 3 + 1);
        assert!(rows.iter().all(|row| row.len() == 22));
        let agg = rows.last().unwrap();
        assert_eq!(&agg[..2], &["".to_string(), "Aggregated".to_string()]);
        // Aggregated = steady-state totals of the result.
        assert_eq!(agg[2], r.totals.requests.to_string());
        assert_eq!(agg[3], r.totals.failures.to_string());
        let rps: f64 = agg[col(&rows, "Requests/s")].parse().unwrap();
        assert!(
            (rps - r.totals.qps).abs() < 1e-3,
            "{rps} vs {}",
            r.totals.qps
        );
        // Operations are `grpc` rows, names CSV-escaped and read back intact.
        let names: Vec<&str> = rows[1..4].iter().map(|r| r[1].as_str()).collect();
        assert_eq!(
            names,
            ["batch_search", "search,with \"filter\"", "search_vector"]
        );
        assert!(rows[1..4].iter().all(|r| r[0] == "grpc"));
        let per_op: u64 = rows[1..4]
            .iter()
            .map(|r| r[2].parse::<u64>().unwrap())
            .sum();
        assert_eq!(per_op, r.totals.requests);
        // Percentiles are integer ms and ordered.
        let p: Vec<u64> = agg[11..].iter().map(|v| v.parse().unwrap()).collect();
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
        assert!(p[0] > 0);
    }

    #[test]
    fn stats_history_has_a_row_per_second_and_its_requests_add_up_to_steady_plus_ramps() {
        let r = synthetic();
        let rows = parse_csv(&stats_history_csv(&r));
        // 30 seconds, one of them (15) without any sample: gap-filled.
        assert_eq!(rows.len(), 1 + 30);
        assert!(rows.iter().all(|row| row.len() == 24));
        let ts0: i64 = rows[1][0].parse().unwrap();
        assert_eq!(ts0, 1_735_787_045); // 2025-01-02T03:04:05Z
        assert_eq!(rows[30][0], (ts0 + 29).to_string());
        let rps = col(&rows, "Requests/s");
        let quiet = &rows[16];
        assert_eq!(quiet[rps], "0.000000");
        assert_eq!(quiet[col(&rows, "95%")], "0");
        assert_eq!(
            quiet[col(&rows, "User Count")],
            rows[15][col(&rows, "User Count")]
        );
        // The history covers ramps too: the per-second requests add up to the steady-state
        // count of _stats.csv plus the ramps' requests (minus the dropped quiet second).
        let history_sum: f64 = rows[1..]
            .iter()
            .map(|r| r[rps].parse::<f64>().unwrap())
            .sum();
        let stats = parse_csv(&stats_csv(&r));
        let steady: u64 = stats.last().unwrap()[2].parse().unwrap();
        let ramps: u64 = r.ramps.iter().map(|s| s.requests).sum();
        let in_seconds: u64 = r
            .measurements
            .seconds
            .iter()
            .map(|s| s.window.total().requests)
            .sum();
        assert_eq!(history_sum as u64, in_seconds);
        // Second 15 was removed from the timeline but not from the stage windows.
        assert_eq!(steady + ramps, in_seconds + 480);
        // Total Request Count is cumulative and ends at the sum.
        let total = col(&rows, "Total Request Count");
        let totals: Vec<u64> = rows[1..]
            .iter()
            .map(|r| r[total].parse().unwrap())
            .collect();
        assert!(totals.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*totals.last().unwrap(), in_seconds);
        assert_eq!(rows[1][col(&rows, "User Count")], "5");
        assert_eq!(rows[1][3], "Aggregated");
    }

    #[test]
    fn history_sums_to_stats_exactly_when_ramps_are_empty_and_no_second_is_missing() {
        let mut snap = synthetic_snapshot();
        for m in &mut snap.stages {
            // Fold the ramp into the steady state: as if the stages had no ramp.
            let ramp = std::mem::take(&mut m.ramp);
            for (name, w) in &ramp.ops {
                m.steady.op_mut(name).merge(w);
            }
            m.steady_seconds += m.ramp_seconds;
            m.ramp_seconds = 0.0;
        }
        // Put back a real second 15 (the fixture's stage windows counted 480 requests there).
        let mut win = Window::default();
        for _ in 0..480 {
            win.op_mut("search_vector").record_success(20_000, 1);
        }
        snap.seconds.push(SecondSample {
            second: 15,
            stage: 1,
            window: win,
        });
        let r = build_result(&spec(), RunContext::default(), snap);
        let history = parse_csv(&stats_history_csv(&r));
        let rps = col(&history, "Requests/s");
        let sum: f64 = history[1..]
            .iter()
            .map(|r| r[rps].parse::<f64>().unwrap())
            .sum();
        let stats = parse_csv(&stats_csv(&r));
        assert_eq!(sum as u64, stats.last().unwrap()[2].parse::<u64>().unwrap());
    }

    #[test]
    fn failures_csv_has_one_row_per_operation_and_kind_with_kind_and_example() {
        let r = synthetic();
        let rows = parse_csv(&failures_csv(&r));
        assert_eq!(rows.len(), 1 + 3, "{rows:?}");
        let total: u64 = rows[1..].iter().map(|r| r[3].parse::<u64>().unwrap()).sum();
        let expected: u64 = r.failures.iter().map(|f| f.count).sum();
        assert_eq!(total, expected);
        for row in &rows[1..] {
            assert_eq!(row[0], "grpc");
            assert_eq!(row[2], "grpc:UNAVAILABLE: connection reset, \"peer\" gone");
        }
        // Most frequent first.
        let counts: Vec<u64> = rows[1..].iter().map(|r| r[3].parse().unwrap()).collect();
        assert!(counts.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn csv_fields_with_commas_quotes_and_newlines_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
        let row = csv_row(&["a,b".into(), "x\"y".into(), "".into()]);
        assert_eq!(row, "\"a,b\",\"x\"\"y\",\n");
        assert_eq!(parse_csv(&row), vec![vec!["a,b", "x\"y", ""]]);
    }

    #[test]
    fn the_html_report_shows_every_stage_the_sla_verdict_and_the_charts() {
        let r = synthetic();
        let html = render_html(&r);
        assert!(html.starts_with("<!DOCTYPE html>"));
        for s in &r.stages {
            assert!(html.contains(&format!("stage {} · {}", s.index + 1, load_label(s))));
        }
        for label in ["10 users", "50 users", "100 users"] {
            assert!(html.contains(label), "{label}");
        }
        let v = r.sla.as_ref().unwrap();
        assert!(html.contains(if v.passed { "SLA PASS" } else { "SLA FAIL" }));
        for c in &v.checks {
            assert!(html.contains(&escape(&c.observed)), "{}", c.observed);
        }
        assert!(html.contains("id=\"capacity\"") && html.contains("Query nodes with redundancy"));
        // Names are escaped: no raw markup from the data.
        assert!(html.contains("classic &lt;scenario&gt;"));
        assert!(!html.contains("<scenario>"));
        // Charts: per-stage and timeline, with axis titles that have units.
        for title in [
            "Throughput per stage",
            "Latency percentiles per stage",
            "Failed requests per stage",
            "Throughput and load over time",
            "Latency over time",
            "Load generator CPU",
        ] {
            assert!(html.contains(&format!("<title>{title}</title>")), "{title}");
        }
        for unit in [
            "latency (ms)",
            "time since start (s)",
            "throughput (requests/s)",
            "CPU (cores)",
        ] {
            assert!(html.contains(unit), "{unit}");
        }
        // Self-contained: no script, no external resource.
        assert!(!html.contains("<script"));
        assert!(!html.contains("http://") || !html.contains("src=\"http"));
        assert!(!html.contains("href=\"http"));
    }

    #[test]
    fn an_empty_result_renders_everything_without_panicking() {
        let r = empty();
        let html = render_html(&r);
        assert!(html.contains("NO SLA"));
        assert!(html.contains("No stage was measured"));
        let stats = stats_csv(&r);
        assert_eq!(stats.lines().count(), 2);
        assert!(
            stats
                .lines()
                .nth(1)
                .unwrap()
                .starts_with(",Aggregated,0,0,0,0,0,0,0,0.000000,0.000000,N/A")
        );
        assert_eq!(stats_history_csv(&r).lines().count(), 1);
        assert_eq!(failures_csv(&r).lines().count(), 1);
        let text = render_terminal_summary(&r);
        assert!(text.contains("no stage was measured") && text.contains("SLA:         none set"));
    }

    #[test]
    fn an_interrupted_open_model_run_says_so_and_labels_stages_by_rate() {
        let mut s = spec();
        s.workload.model = crate::spec::LoadModel::Open;
        for (st, rate) in s.stages.iter_mut().zip([100.0, 500.0, 1000.0]) {
            st.users = None;
            st.spawn_rate = None;
            st.rate = Some(rate);
        }
        let mut snap = synthetic_snapshot();
        snap.stages[2].complete = false;
        let ctx = RunContext {
            interrupted: Some("interrupted by Ctrl-C".into()),
            ..RunContext::default()
        };
        let r = build_result(&s, ctx, snap);
        let html = render_html(&r);
        assert!(html.contains("Incomplete run.") && html.contains("interrupted by Ctrl-C"));
        assert!(html.contains("500/s") && html.contains("stage 2 · 500/s"));
        assert!(html.contains("data-series=\"target rate\""));
        assert!(html.contains("Late / dropped"));
        assert!(html.contains("the stage did not run to its end"));
        let text = render_terminal_summary(&r);
        assert!(text.contains("INCOMPLETE: interrupted by Ctrl-C"), "{text}");
        assert!(
            text.contains("stage 3 is not valid: the stage did not run to its end"),
            "{text}"
        );
    }

    #[test]
    fn the_terminal_summary_aligns_stage_rows_and_lists_peak_saturation_sla_and_capacity() {
        let r = synthetic();
        let text = render_terminal_summary(&r);
        let lines: Vec<&str> = text.lines().collect();
        let head = lines.iter().position(|l| l.starts_with("stage")).unwrap();
        let qps_end = lines[head].find("QPS").unwrap() + 3;
        for l in &lines[head + 1..head + 5] {
            // Right-aligned numbers end in the same column as their header.
            assert!(
                l.chars()
                    .nth(qps_end - 1)
                    .is_some_and(|c| c.is_ascii_digit()),
                "{l}"
            );
        }
        assert!(text.contains("peak:"));
        assert!(text.contains("saturation:"));
        assert!(text.contains("SLA:         PASS") || text.contains("SLA:         FAIL"));
        assert!(text.contains("minQps") && text.contains("maxP95"));
        assert!(text.contains("capacity:"));
        assert!(!text.contains('\x1b'), "no colour codes");
    }

    #[test]
    fn rerendering_a_saved_result_gives_identical_files() {
        let r = synthetic();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let written = write_all(&out, &r, "stampede").unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "result.json",
                "stampede_stats.csv",
                "stampede_stats_history.csv",
                "stampede_failures.csv",
                "report.html"
            ]
        );
        let before: Vec<String> = written
            .iter()
            .map(|p| fs::read_to_string(p).unwrap())
            .collect();
        for p in &written[1..] {
            fs::remove_file(p).unwrap();
        }
        let again = rerender(&out, "stampede").unwrap();
        assert_eq!(again, written[1..].to_vec());
        for (p, old) in written.iter().zip(&before) {
            assert_eq!(&fs::read_to_string(p).unwrap(), old, "{}", p.display());
        }
        // Field by field equality is not asserted: serde_json without its `float_roundtrip`
        // feature may read a float back one ULP off, which the rendered files never show.
        let back = read_result(&out.join(RESULT_FILE)).unwrap();
        assert_eq!(
            (back.stages.len(), back.series.len()),
            (r.stages.len(), r.series.len())
        );
    }

    #[test]
    fn rerender_names_the_file_that_is_not_a_result() {
        let dir = tempfile::tempdir().unwrap();
        let e = rerender(dir.path(), "x").unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("result.json"),
            "{e}"
        );
        fs::write(dir.path().join(RESULT_FILE), "{\"hello\": 1}").unwrap();
        let e = rerender(dir.path(), "x").unwrap_err().to_string();
        assert!(e.contains("result.json is not a Stampede result: "), "{e}");
        fs::write(dir.path().join(RESULT_FILE), "{\"version\": 99}").unwrap();
        let e = rerender(dir.path(), "x").unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
        fs::write(
            dir.path().join(RESULT_FILE),
            "{\"version\": 1, \"name\": 3}",
        )
        .unwrap();
        let e = rerender(dir.path(), "x").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn writing_into_an_unwritable_place_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, "x").unwrap();
        let e = write_all(&file.join("sub"), &synthetic(), "s")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot create ") && e.contains("a-file/sub"),
            "{e}"
        );
    }
}
