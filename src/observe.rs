//! Server observation: scrape Milvus Prometheus endpoints during a test.
//!
//! A scraper task (off the load's hot path) fetches each endpoint every few seconds with a bounded
//! timeout, parses the text exposition format, and turns consecutive readings into a time series
//! of server CPU, memory, network and Milvus-internal saturation signals. Per-stage figures are
//! then aggregated over each stage's steady state by pure functions. A scrape that fails is kept
//! in the series as "not observed: <reason>", never as a failure of the test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Time between two scrapes unless the spec says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Port of the Milvus metrics endpoint (standalone and every component).
pub const DEFAULT_METRICS_PORT: u16 = 9091;
/// Path of the Milvus metrics endpoint.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
/// Longest a single scrape may take, whatever the interval.
const MAX_SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body accepted (the 2.3.5 standalone server answers ~40–100 KB).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Text exposition format

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name, with `_sum`/`_count`/`_bucket` suffixes as written.
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// Value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl Sample {
    /// The value of a label, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// Metric family types from `# TYPE` lines.
    pub types: BTreeMap<String, String>,
    /// Lines that could not be parsed (they are skipped, as one bad line should not hide the rest).
    pub skipped: usize,
    /// The first unparsable line, with its number, for the record.
    pub first_error: Option<String>,
}

impl Exposition {
    /// Samples of one metric name.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Whether any sample has this name.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// Parses Prometheus text exposition format 0.0.4. Never fails: lines it cannot read are counted
/// in `skipped` and the first one is kept in `first_error`.
pub fn parse_exposition(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE")
                && let (Some(name), Some(kind)) = (words.next(), words.next())
            {
                out.types.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        match parse_sample(line) {
            Ok(s) => out.samples.push(s),
            Err(e) => {
                out.skipped += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("line {}: {e}: {}", i + 1, clip(line, 80)));
                }
            }
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return Err("no metric name".into());
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("`{value}` is not a number"))?;
    // An optional timestamp may follow; anything after it is malformed.
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("`{ts}` is not a timestamp"));
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads `k="v",...}` and returns the pairs and the text after the closing brace.
type Labels<'a> = (Vec<(String, String)>, &'a str);

fn parse_labels(s: &str) -> Result<Labels<'_>, String> {
    let mut labels = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        // Skip spaces and separators before the next label or the end.
        while let Some(&(_, c)) = chars.peek() {
            if c == ' ' || c == ',' {
                chars.next();
            } else {
                break;
            }
        }
        match chars.peek() {
            None => return Err("unterminated label set".into()),
            Some(&(i, '}')) => return Ok((labels, &s[i + 1..])),
            Some(_) => {}
        }
        let mut key = String::new();
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            if !is_name_char(c, key.is_empty()) {
                return Err(format!("bad character `{c}` in a label name"));
            }
            key.push(c);
        }
        if key.is_empty() {
            return Err("empty label name".into());
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label `{key}` has no quoted value"));
        }
        let mut value = String::new();
        let mut closed = false;
        while let Some((_, c)) = chars.next() {
            match c {
                '"' => {
                    closed = true;
                    break;
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some(other) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => return Err("unterminated label value".into()),
                },
                c => value.push(c),
            }
        }
        if !closed {
            return Err(format!("label `{key}` has an unterminated value"));
        }
        labels.push((key, value));
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

// ---------------------------------------------------------------------------------------------
// Signals: the few numbers Stampede reads from a scrape, with fallbacks between versions

/// A metric to read, optionally restricted to samples with one label value.
#[derive(Clone, Copy, Debug)]
struct Signal {
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
}

const fn signal(name: &'static str) -> Signal {
    Signal { name, label: None }
}

const fn signal_with(name: &'static str, key: &'static str, value: &'static str) -> Signal {
    Signal {
        name,
        label: Some((key, value)),
    }
}

/// Process CPU seconds (every Go process exposes it).
const CPU: &[Signal] = &[signal("process_cpu_seconds_total")];
/// Resident memory.
const RSS: &[Signal] = &[signal("process_resident_memory_bytes")];
/// Process start time (a restart changes it).
const START_TIME: &[Signal] = &[signal("process_start_time_seconds")];
/// Bytes the proxy received from clients (2.2+: `_count` is part of the counter's name).
const RECEIVED: &[Signal] = &[
    signal("milvus_proxy_receive_bytes_count"),
    signal("milvus_proxy_receive_bytes"),
];
/// Bytes the proxy sent back to clients.
const SENT: &[Signal] = &[
    signal("milvus_proxy_send_bytes_count"),
    signal("milvus_proxy_send_bytes"),
];
/// Proxy-side search latency histograms, ms (2.2–2.4 `sq_latency`; newer servers also have the
/// per-function request latency).
const SEARCH_LATENCY: &[Signal] = &[
    signal_with("milvus_proxy_sq_latency", "query_type", "search"),
    signal_with("milvus_proxy_search_latency", "query_type", "search"),
    signal_with("milvus_proxy_req_latency", "function_name", "Search"),
];
/// Query-node queue wait histograms, ms.
const QUEUE_LATENCY: &[Signal] = &[
    signal_with("milvus_querynode_sq_queue_latency", "query_type", "search"),
    signal_with(
        "milvus_querynode_sq_latency_in_queue",
        "query_type",
        "search",
    ),
];
/// Query-node tasks waiting (gauges; summed over the names found).
const QUEUED_TASKS: &[&[Signal]] = &[
    &[
        signal("milvus_querynode_read_task_unsolved_len"),
        signal("milvus_querynode_read_task_ready_len"),
    ],
    &[signal("milvus_querynode_sq_wait_tasks")],
];

/// A histogram's running sum and count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SumCount {
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
}

/// What one scrape of one endpoint said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// Process CPU seconds (counter).
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes (gauge).
    pub resident_bytes: Option<f64>,
    /// Process start time, Unix seconds (a change means a restart).
    pub start_time: Option<f64>,
    /// Bytes received from clients (counter).
    pub received_bytes: Option<f64>,
    /// Bytes sent to clients (counter).
    pub sent_bytes: Option<f64>,
    /// Proxy search latency histogram, ms.
    pub search_latency: Option<SumCount>,
    /// Query-node queue wait histogram, ms.
    pub queue_latency: Option<SumCount>,
    /// Query-node tasks waiting (gauge).
    pub queued_tasks: Option<f64>,
    /// Metric names the values came from.
    pub names: Vec<String>,
}

fn sum_of(e: &Exposition, s: &Signal, suffix: &str) -> Option<f64> {
    let name = format!("{}{suffix}", s.name);
    let mut found = false;
    let mut total = 0.0;
    for x in e.named(&name) {
        if let Some((k, v)) = s.label
            && x.label(k).is_some_and(|got| got != v)
        {
            continue;
        }
        if x.value.is_finite() {
            found = true;
            total += x.value;
        }
    }
    found.then_some(total)
}

fn first_value(e: &Exposition, signals: &[Signal], names: &mut Vec<String>) -> Option<f64> {
    signals.iter().find_map(|s| {
        let v = sum_of(e, s, "")?;
        names.push(s.name.to_string());
        Some(v)
    })
}

fn first_histogram(
    e: &Exposition,
    signals: &[Signal],
    names: &mut Vec<String>,
) -> Option<SumCount> {
    signals.iter().find_map(|s| {
        let sum = sum_of(e, s, "_sum")?;
        let count = sum_of(e, s, "_count")?;
        names.push(s.name.to_string());
        Some(SumCount { sum, count })
    })
}

/// Reads the signals Stampede uses from a scrape, taking for each the first name this server
/// version exposes.
pub fn read_signals(e: &Exposition) -> Reading {
    let mut names = Vec::new();
    let mut r = Reading {
        cpu_seconds: first_value(e, CPU, &mut names),
        resident_bytes: first_value(e, RSS, &mut names),
        start_time: first_value(e, START_TIME, &mut names),
        received_bytes: first_value(e, RECEIVED, &mut names),
        sent_bytes: first_value(e, SENT, &mut names),
        search_latency: first_histogram(e, SEARCH_LATENCY, &mut names),
        queue_latency: first_histogram(e, QUEUE_LATENCY, &mut names),
        ..Reading::default()
    };
    for group in QUEUED_TASKS {
        let mut found = false;
        let mut total = 0.0;
        for s in *group {
            if let Some(v) = sum_of(e, s, "") {
                found = true;
                total += v;
                names.push(s.name.to_string());
            }
        }
        if found {
            r.queued_tasks = Some(total);
            break;
        }
    }
    r.names = names;
    r
}

/// The signals a reading lacks, by what they measure (for "not observed" notes).
pub fn missing_signals(r: &Reading) -> Vec<String> {
    let mut out = Vec::new();
    let mut miss = |present: bool, what: &str| {
        if !present {
            out.push(what.to_string());
        }
    };
    miss(r.cpu_seconds.is_some(), "CPU (process_cpu_seconds_total)");
    miss(
        r.resident_bytes.is_some(),
        "memory (process_resident_memory_bytes)",
    );
    miss(
        r.received_bytes.is_some() || r.sent_bytes.is_some(),
        "network bytes (milvus_proxy_receive_bytes_count / milvus_proxy_send_bytes_count)",
    );
    miss(
        r.search_latency.is_some(),
        "proxy search latency (milvus_proxy_sq_latency)",
    );
    miss(
        r.queue_latency.is_some(),
        "query node queue wait (milvus_querynode_sq_queue_latency)",
    );
    miss(
        r.queued_tasks.is_some(),
        "query node waiting tasks (milvus_querynode_read_task_unsolved_len)",
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Time series

/// One point of the server time series: the interval since the previous scrape, all endpoints
/// together (CPU and bytes summed, memory summed, latencies averaged over every request).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerSample {
    /// Seconds since the test start at the scrape (end of the interval; negative before it).
    pub second: f64,
    /// Seconds the interval covers (0 for the first scrape: only gauges).
    pub interval: f64,
    /// CPU cores busy over the interval (rate of process_cpu_seconds_total).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// Resident memory at the scrape, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<f64>,
    /// Bytes per second the proxy received from clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_bytes_per_second: Option<f64>,
    /// Bytes per second the proxy sent to clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_bytes_per_second: Option<f64>,
    /// Mean proxy search latency over the interval, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_latency_ms: Option<f64>,
    /// Mean query-node queue wait over the interval, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_latency_ms: Option<f64>,
    /// Query-node tasks waiting at the scrape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_tasks: Option<f64>,
    /// Cores busy on the whole host over the interval (all processes), when the server runs on
    /// this machine: what Milvus competed with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_busy_cores: Option<f64>,
    /// Endpoints that answered.
    pub endpoints_observed: u32,
    /// Why an endpoint did not answer, or why a counter went backwards (a restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A reading with the time (seconds since the test start) it was taken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimedReading {
    /// The endpoint's URL.
    pub endpoint: String,
    /// Seconds since the test start.
    pub second: f64,
    /// What the endpoint said.
    pub reading: Reading,
}

fn rate(prev: Option<f64>, cur: Option<f64>, dt: f64) -> Result<Option<f64>, ()> {
    match (prev, cur) {
        (Some(p), Some(c)) if dt > 0.0 => {
            if c < p {
                Err(())
            } else {
                Ok(Some((c - p) / dt))
            }
        }
        _ => Ok(None),
    }
}

fn add(acc: &mut Option<f64>, v: Option<f64>) {
    if let Some(v) = v {
        *acc = Some(acc.unwrap_or(0.0) + v);
    }
}

/// One series point from each endpoint's previous and current scrape (pure). `current[i]` is the
/// scrape of endpoint i or why it failed; `previous[i]` its last successful scrape.
pub fn series_point(
    second: f64,
    previous: &[Option<TimedReading>],
    current: &[Result<TimedReading, String>],
) -> ServerSample {
    let mut p = ServerSample {
        second,
        ..ServerSample::default()
    };
    let mut errors: Vec<String> = Vec::new();
    let mut search = SumCount::default();
    let mut queue = SumCount::default();
    let mut search_seen = false;
    let mut queue_seen = false;
    let mut interval: f64 = 0.0;
    for (i, cur) in current.iter().enumerate() {
        let cur = match cur {
            Ok(c) => c,
            Err(e) => {
                errors.push(e.clone());
                continue;
            }
        };
        p.endpoints_observed += 1;
        let r = &cur.reading;
        add(&mut p.resident_bytes, r.resident_bytes);
        add(&mut p.queued_tasks, r.queued_tasks);
        let Some(prev) = previous.get(i).and_then(Option::as_ref) else {
            continue;
        };
        let dt = cur.second - prev.second;
        if dt <= 0.0 {
            continue;
        }
        interval = interval.max(dt);
        let q = &prev.reading;
        let cpu = rate(q.cpu_seconds, r.cpu_seconds, dt);
        let new_process = matches!((q.start_time, r.start_time), (Some(a), Some(b)) if a != b);
        if new_process || cpu.is_err() {
            errors.push(format!(
                "{} restarted during this interval (its process start time or CPU counter changed)",
                cur.endpoint
            ));
            continue;
        }
        let cpu = cpu.ok().flatten();
        // A byte counter summed over collections goes down when a collection is dropped (its
        // label set disappears): no rate for that interval rather than a negative one.
        let rx = rate(q.received_bytes, r.received_bytes, dt).ok().flatten();
        let tx = rate(q.sent_bytes, r.sent_bytes, dt).ok().flatten();
        add(&mut p.cpu_cores, cpu);
        add(&mut p.received_bytes_per_second, rx);
        add(&mut p.sent_bytes_per_second, tx);
        if let (Some(a), Some(b)) = (q.search_latency, r.search_latency)
            && b.count >= a.count
        {
            search_seen = true;
            search.sum += b.sum - a.sum;
            search.count += b.count - a.count;
        }
        if let (Some(a), Some(b)) = (q.queue_latency, r.queue_latency)
            && b.count >= a.count
        {
            queue_seen = true;
            queue.sum += b.sum - a.sum;
            queue.count += b.count - a.count;
        }
    }
    p.interval = interval;
    if search_seen && search.count > 0.0 {
        p.search_latency_ms = Some(search.sum / search.count);
    }
    if queue_seen && queue.count > 0.0 {
        p.queue_latency_ms = Some(queue.sum / queue.count);
    }
    if !errors.is_empty() {
        errors.dedup();
        p.error = Some(errors.join("; "));
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Per-stage aggregation

/// A stage's place on the test clock, seconds since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageWindow {
    /// Stage start (its ramp starts here).
    pub start: f64,
    /// Steady state start.
    pub steady_start: f64,
    /// Steady state end.
    pub end: f64,
}

/// What the server did during one stage's steady state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StageServer {
    /// Stage index, from 0.
    pub stage: usize,
    /// Whether any scrape covered the stage.
    pub observed: bool,
    /// "not observed: <reason>" when it was not (or when a scrape inside it failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Scrape intervals that fell in the stage.
    pub samples: u32,
    /// Mean CPU cores busy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores_mean: Option<f64>,
    /// Busiest interval, cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores_max: Option<f64>,
    /// Mean resident memory, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_bytes_mean: Option<f64>,
    /// Peak resident memory, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_bytes_peak: Option<f64>,
    /// Mean bytes per second received by the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_bytes_per_second: Option<f64>,
    /// Mean bytes per second sent by the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_bytes_per_second: Option<f64>,
    /// Mean proxy search latency, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_latency_ms: Option<f64>,
    /// Mean query-node queue wait, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_latency_ms: Option<f64>,
    /// Mean query-node tasks waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_tasks_mean: Option<f64>,
    /// Mean cores busy on the server's host (all processes), when it is this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_busy_cores_mean: Option<f64>,
    /// Milvus containers that restarted (or were OOM-killed) during the stage (cluster only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<ContainerRestart>,
}

/// Everything observed about the server during a run (result.json `server`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerObservation {
    /// Whether observation was switched on.
    pub enabled: bool,
    /// Whether at least one scrape succeeded.
    pub observed: bool,
    /// "not observed: <reason>" when it was off or never succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Endpoints scraped.
    pub endpoints: Vec<String>,
    /// Seconds between scrapes.
    pub interval_seconds: f64,
    /// Metric names the figures come from (the names this server version exposes).
    pub signals: Vec<String>,
    /// Signals this server does not expose.
    pub missing: Vec<String>,
    /// Cores of the host the server runs on, when known (a loopback endpoint: this machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores_available: Option<f64>,
    /// Memory of that host (or its cgroup limit), bytes, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<f64>,
    /// Where `coresAvailable` and `memoryLimitBytes` came from, or why one is unknown, in words
    /// (cluster: the Milvus pods' limits, or the allocatable of their nodes when the pods set
    /// no limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_source: Option<String>,
    /// Whether the load generator runs on the same host (then its CPU competes with the server's).
    pub shares_host_with_client: bool,
    /// The time series, one point per scrape.
    pub series: Vec<ServerSample>,
    /// Restarts and OOM kills of the Milvus containers seen during the test (cluster only:
    /// from the container statuses of the pods found by `spec.target.metrics.selector`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<ContainerRestart>,
    /// Per stage, steady state.
    pub stages: Vec<StageServer>,
}

/// The stages' windows on the test clock: stage i starts when the durations before it add up
/// (the engine keeps that clock), its steady state after its ramp, for `steady_seconds`.
pub fn stage_windows(
    durations: &[f64],
    ramp_seconds: &[f64],
    steady_seconds: &[f64],
) -> Vec<StageWindow> {
    let mut start = 0.0;
    let mut out = Vec::new();
    for (i, d) in durations.iter().enumerate() {
        let ramp = ramp_seconds.get(i).copied().unwrap_or(0.0);
        let steady = steady_seconds.get(i).copied().unwrap_or(d - ramp);
        out.push(StageWindow {
            start,
            steady_start: start + ramp,
            end: start + ramp + steady.max(0.0),
        });
        start += d;
    }
    out
}

fn overlap(a0: f64, a1: f64, b0: f64, b1: f64) -> f64 {
    (a1.min(b1) - a0.max(b0)).max(0.0)
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Aggregates the series over each stage (pure). An interval counts for a stage when at least
/// half of it lies in the stage's steady state; when no interval does (short stages), the
/// intervals ending inside the stage are used. Gauges use the scrapes taken in the same span.
pub fn aggregate_stages(series: &[ServerSample], windows: &[StageWindow]) -> Vec<StageServer> {
    windows
        .iter()
        .enumerate()
        .map(|(i, w)| aggregate_stage(i, series, w))
        .collect()
}

fn aggregate_stage(stage: usize, series: &[ServerSample], w: &StageWindow) -> StageServer {
    let in_steady = |p: &&ServerSample| {
        p.interval > 0.0
            && overlap(p.second - p.interval, p.second, w.steady_start, w.end) >= 0.5 * p.interval
    };
    let ends_in_stage = |p: &&ServerSample| p.second > w.start && p.second <= w.end + 1e-9;
    let mut chosen: Vec<&ServerSample> = series.iter().filter(in_steady).collect();
    if chosen.iter().all(|p| p.cpu_cores.is_none()) {
        chosen = series.iter().filter(ends_in_stage).collect();
    }
    let mut out = StageServer {
        stage,
        ..StageServer::default()
    };
    let errors: Vec<&str> = chosen.iter().filter_map(|p| p.error.as_deref()).collect();
    let answered: Vec<&&ServerSample> =
        chosen.iter().filter(|p| p.endpoints_observed > 0).collect();
    if answered.is_empty() {
        out.note = Some(match errors.first() {
            Some(e) => format!("not observed: {e}"),
            None => "not observed: no scrape fell inside this stage (stage shorter than the scrape interval?)".to_string(),
        });
        return out;
    }
    out.observed = true;
    out.samples = answered.len() as u32;
    if let Some(e) = errors.first() {
        out.note = Some(format!(
            "partly observed: {e} (in {} of {} scrapes)",
            errors.len(),
            chosen.len()
        ));
    }
    let collect = |f: fn(&ServerSample) -> Option<f64>| -> Vec<f64> {
        answered.iter().filter_map(|p| f(p)).collect()
    };
    let cpu = collect(|p| p.cpu_cores);
    out.cpu_cores_mean = mean(&cpu);
    out.cpu_cores_max = cpu.iter().copied().reduce(f64::max);
    let rss = collect(|p| p.resident_bytes);
    out.resident_bytes_mean = mean(&rss);
    out.resident_bytes_peak = rss.iter().copied().reduce(f64::max);
    out.received_bytes_per_second = mean(&collect(|p| p.received_bytes_per_second));
    out.sent_bytes_per_second = mean(&collect(|p| p.sent_bytes_per_second));
    out.search_latency_ms = mean(&collect(|p| p.search_latency_ms));
    out.queue_latency_ms = mean(&collect(|p| p.queue_latency_ms));
    out.queued_tasks_mean = mean(&collect(|p| p.queued_tasks));
    out.host_busy_cores_mean = mean(&collect(|p| p.host_busy_cores));
    if out.cpu_cores_mean.is_none() && out.note.is_none() {
        out.note = Some(
            "partly observed: no two consecutive scrapes inside this stage, so no CPU rate"
                .to_string(),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/// Where to scrape, decided from the spec before the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservePlan {
    /// Whether to scrape at all.
    pub enabled: bool,
    /// URLs to scrape.
    pub urls: Vec<String>,
    /// Time between scrapes.
    pub interval: Duration,
    /// Why observation is off ("not observed: …"), when it is.
    pub reason: Option<String>,
}

/// Whether a host name or address is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host part of a Milvus address (`host:port` or `http(s)://host:port`).
pub fn address_host(address: &str) -> String {
    let a = address
        .trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let a = a.split('/').next().unwrap_or(a);
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match a.rsplit_once(':') {
        Some((h, _)) => h.to_string(),
        None => a.to_string(),
    }
}

/// What `stampede run` scrapes (pure): `metrics.urls` when given; otherwise, when the Milvus
/// address is on loopback, `http://<host>:<port><path>` (port 9091 and `/metrics` unless set);
/// nothing when `metrics.enabled` is false or there is no URL to use.
pub fn local_plan(metrics: Option<&crate::spec::MetricsSpec>, address: &str) -> ObservePlan {
    let interval = metrics
        .and_then(|m| m.interval)
        .map_or(DEFAULT_INTERVAL, |d| d.get())
        .max(Duration::from_millis(100));
    let off = |reason: &str| ObservePlan {
        enabled: false,
        urls: Vec::new(),
        interval,
        reason: Some(format!("not observed: {reason}")),
    };
    if metrics.and_then(|m| m.enabled) == Some(false) {
        return off("spec.target.metrics.enabled is false");
    }
    if let Some(m) = metrics
        && !m.urls.is_empty()
    {
        return ObservePlan {
            enabled: true,
            urls: m.urls.clone(),
            interval,
            reason: None,
        };
    }
    let host = address_host(address);
    if is_loopback_host(&host) {
        let port = metrics.and_then(|m| m.port).unwrap_or(DEFAULT_METRICS_PORT);
        let path = metrics
            .and_then(|m| m.path.clone())
            .unwrap_or_else(|| DEFAULT_METRICS_PATH.to_string());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        return ObservePlan {
            enabled: true,
            urls: vec![format!("http://{host}:{port}{path}")],
            interval,
            reason: None,
        };
    }
    if metrics.is_some_and(|m| m.selector.is_some()) {
        return off(
            "spec.target.metrics.selector finds pods in a cluster; `stampede run` needs spec.target.metrics.urls",
        );
    }
    off(&format!(
        "Milvus at {host} is not on this machine and spec.target.metrics.urls is not set"
    ))
}

/// Busy and total CPU seconds of the whole machine since boot, from /proc/stat (Linux).
pub fn host_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&stat)
}

/// Busy and total CPU seconds from the `cpu` line of /proc/stat (USER_HZ = 100 on Linux).
pub fn parse_proc_stat(stat: &str) -> Option<(f64, f64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let idle = get(3) + get(4);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some((busy / 100.0, (busy + idle) / 100.0))
}

/// Cores and memory of this machine (cgroup limits included), for a server on loopback.
pub fn host_capacity() -> (Option<f64>, Option<f64>) {
    let cores = crate::load::available_cores();
    let mem_total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb * 1024.0)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok());
    let memory = match (mem_total, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    };
    (Some(cores), memory)
}

// ---------------------------------------------------------------------------------------------
// HTTP over plain TCP

/// A parsed `http://host:port/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 when not given).
    pub port: u16,
    /// Path and query, from `/`.
    pub path: String,
}

/// Parses an `http://` URL (https is not supported: Milvus serves metrics in plain HTTP).
pub fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}` is not an http:// URL (https is not supported)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| format!("`{url}`: unclosed [ in the host"))?;
        let port = after.strip_prefix(':').unwrap_or("");
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (authority.to_string(), ""),
        }
    };
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    let port = if port.is_empty() {
        80
    } else {
        port.parse()
            .map_err(|_| format!("`{url}`: `{port}` is not a port"))?
    };
    Ok(HttpUrl { host, port, path })
}

/// GETs a URL with HTTP/1.0 (no chunking, the server closes the connection) within `timeout`.
pub async fn http_get(url: &str, timeout: Duration) -> Result<String, String> {
    let u = parse_http_url(url)?;
    let work = async {
        let mut stream = tokio::net::TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let host = if u.host.contains(':') {
            format!("[{}]", u.host)
        } else {
            u.host.clone()
        };
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {host}:{}\r\nAccept: text/plain\r\nUser-Agent: stampede\r\n\r\n",
            u.path, u.port
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send to {url}: {e}"))?;
        let mut body = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("cannot read from {url}: {e}"))?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
            if body.len() > MAX_BODY_BYTES {
                return Err(format!("{url} answered more than {MAX_BODY_BYTES} bytes"));
            }
        }
        Ok::<Vec<u8>, String>(body)
    };
    let raw = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{url} did not answer within {} ms", timeout.as_millis()))??;
    parse_http_response(&raw).map_err(|e| format!("{url}: {e}"))
}

/// Splits a raw HTTP/1.x response into its body, checking the status (chunked bodies decoded).
pub fn parse_http_response(raw: &[u8]) -> Result<String, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no header end")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("");
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line `{}`", clip(status, 60)))?;
    if code != 200 {
        return Err(format!(
            "HTTP status {}",
            status.split_once(' ').map_or(status, |x| x.1)
        ));
    }
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        decode_chunked(body)?
    } else {
        body.to_vec()
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn decode_chunked(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_text = String::from_utf8_lossy(&b[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size `{}`", clip(size_text, 20)))?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

// ---------------------------------------------------------------------------------------------
// The scraper task

/// A running scraper; `finish` stops it and returns what it saw.
pub struct Scraper {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<ServerObservation>>,
    plan: ObservePlan,
}

/// Starts scraping `plan.urls` every `plan.interval`, timing samples from `t0` (the test start).
/// A disabled plan starts nothing. The first scrape happens at once, so the first stage has a
/// baseline.
pub fn start_scraper(plan: ObservePlan, t0: Instant) -> Scraper {
    let (stop, stop_rx) = watch::channel(false);
    let task = plan
        .enabled
        .then(|| tokio::spawn(scrape_loop(plan.clone(), t0, stop_rx)));
    Scraper { stop, task, plan }
}

impl Scraper {
    /// Takes a last scrape, stops, and returns the observation (series only; stages are filled
    /// by [`aggregate_stages`] once the stage windows are known).
    pub async fn finish(mut self) -> ServerObservation {
        let _ = self.stop.send(true);
        let fallback = ServerObservation {
            enabled: self.plan.enabled,
            observed: false,
            reason: self.plan.reason.clone(),
            endpoints: self.plan.urls.clone(),
            interval_seconds: self.plan.interval.as_secs_f64(),
            ..ServerObservation::default()
        };
        match self.task.take() {
            None => fallback,
            Some(task) => match task.await {
                Ok(obs) => obs,
                Err(e) => ServerObservation {
                    reason: Some(format!("not observed: the scraper stopped: {e}")),
                    ..fallback
                },
            },
        }
    }
}

fn since(t0: Instant, now: Instant) -> f64 {
    if now >= t0 {
        now.duration_since(t0).as_secs_f64()
    } else {
        -(t0.duration_since(now).as_secs_f64())
    }
}

/// How long one scrape may take with this interval: 80 % of it, at most 5 s.
pub fn scrape_timeout(interval: Duration) -> Duration {
    interval.mul_f64(0.8).min(MAX_SCRAPE_TIMEOUT)
}

/// Scrapes one endpoint and reads its signals; `second` is the time stamp to give the reading.
pub async fn scrape_endpoint(
    url: &str,
    second: f64,
    timeout: Duration,
) -> Result<TimedReading, String> {
    let text = http_get(url, timeout).await?;
    let e = parse_exposition(&text);
    if e.samples.is_empty() {
        return Err(match e.first_error {
            Some(err) => format!("no metrics in the response ({err})"),
            None => "the response holds no metrics".to_string(),
        });
    }
    Ok(TimedReading {
        endpoint: url.to_string(),
        second,
        reading: read_signals(&e),
    })
}

/// Scrapes every endpoint at once (one result per URL, in order).
pub async fn scrape_all(
    urls: &[String],
    second: f64,
    timeout: Duration,
) -> Vec<Result<TimedReading, String>> {
    futures::future::join_all(urls.iter().map(|u| scrape_endpoint(u, second, timeout))).await
}

async fn scrape_loop(
    plan: ObservePlan,
    t0: Instant,
    mut stop: watch::Receiver<bool>,
) -> ServerObservation {
    let timeout = scrape_timeout(plan.interval);
    let mut previous: Vec<Option<TimedReading>> = vec![None; plan.urls.len()];
    let mut series = Vec::new();
    let mut signals: Vec<String> = Vec::new();
    let mut last_reading: Option<Reading> = None;
    let mut first_error: Option<String> = None;
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_round = false;
    let local = plan
        .urls
        .iter()
        .all(|u| parse_http_url(u).is_ok_and(|x| is_loopback_host(&x.host)));
    let (total_cores, memory_limit) = if local { host_capacity() } else { (None, None) };
    let mut last_host: Option<(f64, f64)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed() => {
                // Stopped (or the sender is gone): one last scrape closes the last interval.
                let _ = changed;
                last_round = true;
            }
        }
        let now = Instant::now();
        let second = since(t0, now);
        let current = scrape_all(&plan.urls, second, timeout).await;
        let host = if local { host_cpu_seconds() } else { None };
        let mut point = series_point(second, &previous, &current);
        if let (Some((t_prev, busy_prev)), Some((busy, total))) = (last_host, host) {
            let dt = second - t_prev;
            let cores = total_cores.unwrap_or(1.0);
            // /proc/stat counts every core: busy CPU seconds per second are busy cores.
            if dt > 0.0 && busy >= busy_prev && total > 0.0 {
                point.host_busy_cores = Some(((busy - busy_prev) / dt).min(cores));
            }
        }
        if let Some((busy, _)) = host {
            last_host = Some((second, busy));
        }
        series.push(point);
        for (i, c) in current.into_iter().enumerate() {
            match c {
                Ok(r) => {
                    for n in &r.reading.names {
                        if !signals.contains(n) {
                            signals.push(n.clone());
                        }
                    }
                    last_reading = Some(r.reading.clone());
                    if let Some(slot) = previous.get_mut(i) {
                        *slot = Some(r);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "metrics scrape failed");
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        if last_round || *stop.borrow() {
            break;
        }
    }
    let observed = last_reading.is_some();
    let (cores, memory) = (total_cores, memory_limit);
    let shares_host = local;
    ServerObservation {
        enabled: true,
        observed,
        reason: (!observed).then(|| {
            format!(
                "not observed: {}",
                first_error.unwrap_or_else(|| "no scrape completed".to_string())
            )
        }),
        endpoints: plan.urls.clone(),
        interval_seconds: plan.interval.as_secs_f64(),
        signals,
        missing: last_reading
            .as_ref()
            .map(missing_signals)
            .unwrap_or_default(),
        cores_available: cores,
        memory_limit_bytes: memory,
        capacity_source: None,
        shares_host_with_client: shares_host,
        series,
        restarts: Vec::new(),
        stages: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster tier: pure pieces the controller calls (discovery by label, restarts and OOM kills)

/// Metrics URLs of the Milvus pods found by `spec.target.metrics.selector`: one per running pod
/// with an IP, `http://<podIP>:<port><path>`, in pod-name order.
pub fn pod_metrics_urls(
    pods: &[k8s_openapi::api::core::v1::Pod],
    port: Option<u16>,
    path: Option<&str>,
) -> Vec<String> {
    let port = port.unwrap_or(DEFAULT_METRICS_PORT);
    let path = path.unwrap_or(DEFAULT_METRICS_PATH);
    let mut found: Vec<(String, String)> = pods
        .iter()
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            Some((
                p.metadata.name.clone().unwrap_or_default(),
                format!("http://{host}:{port}{path}"),
            ))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, url)| url).collect()
}

/// A restart (or OOM kill) of a Milvus container between two looks at its pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRestart {
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Seconds since the test start when it was seen.
    pub second: f64,
    /// Restarts seen since the previous look.
    pub restarts: i32,
    /// Why the previous instance ended, e.g. `OOMKilled`, `Error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl ContainerRestart {
    /// Whether the kernel killed it for memory.
    pub fn oom_killed(&self) -> bool {
        self.reason.as_deref() == Some("OOMKilled") || self.exit_code == Some(137)
    }
}

fn restart_counts(
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Vec<(String, i32, Option<String>, Option<i32>)> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let last = c.last_state.as_ref().and_then(|l| l.terminated.as_ref());
                    (
                        c.name.clone(),
                        c.restart_count,
                        last.and_then(|t| t.reason.clone()),
                        last.map(|t| t.exit_code),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Restarts between two looks at the Milvus pods (pure): a container whose restart count grew,
/// with the reason its last instance ended. Pods are matched by name; a pod that is new in
/// `after` counts its restarts from zero.
pub fn container_restarts(
    before: &[k8s_openapi::api::core::v1::Pod],
    after: &[k8s_openapi::api::core::v1::Pod],
    second: f64,
) -> Vec<ContainerRestart> {
    let mut out = Vec::new();
    for pod in after {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let old = before
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
            .map(restart_counts)
            .unwrap_or_default();
        for (container, count, reason, exit_code) in restart_counts(pod) {
            let was = old
                .iter()
                .find(|(c, ..)| *c == container)
                .map_or(0, |x| x.1);
            if count > was {
                out.push(ContainerRestart {
                    pod: name.clone(),
                    container,
                    second,
                    restarts: count - was,
                    reason,
                    exit_code,
                });
            }
        }
    }
    out
}

/// The restarts that happened during each stage (from its start to its steady state's end).
pub fn restarts_per_stage(
    restarts: &[ContainerRestart],
    windows: &[StageWindow],
) -> Vec<Vec<ContainerRestart>> {
    windows
        .iter()
        .map(|w| {
            restarts
                .iter()
                .filter(|r| r.second > w.start && r.second <= w.end + 1e-9)
                .cloned()
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/milvus-2.3.5-metrics.txt");

    #[test]
    fn a_real_milvus_2_3_5_scrape_parses_without_skipping_a_line() {
        let e = parse_exposition(FIXTURE);
        assert_eq!(e.skipped, 0, "{:?}", e.first_error);
        assert_eq!(e.types["process_cpu_seconds_total"], "counter");
        assert_eq!(e.types["milvus_proxy_sq_latency"], "histogram");
        let cpu: Vec<&Sample> = e.named("process_cpu_seconds_total").collect();
        assert_eq!(cpu.len(), 1);
        assert_eq!(cpu[0].value, 13.0);
        let rss = e.named("process_resident_memory_bytes").next().unwrap();
        assert_eq!(rss.value, 360_030_208.0);
        let go = e.named("go_info").next().unwrap();
        assert_eq!(go.label("version"), Some("go1.20.4"));
        let inf = e
            .named("milvus_proxy_sq_latency_bucket")
            .find(|s| s.label("le") == Some("+Inf") && s.label("query_type") == Some("search"))
            .unwrap();
        assert_eq!(inf.value, 2627.0);
    }

    #[test]
    fn the_signals_of_a_2_3_5_server_are_read_from_their_2_3_names() {
        let r = read_signals(&parse_exposition(FIXTURE));
        assert_eq!(r.cpu_seconds, Some(13.0));
        assert_eq!(r.resident_bytes, Some(360_030_208.0));
        // Received bytes: insert + query + search messages.
        assert_eq!(r.received_bytes, Some(1_305_060.0 + 31.0 + 1_312_415.0));
        assert_eq!(r.sent_bytes, Some(282_951.0));
        // Only query_type="search" counts as search latency.
        assert_eq!(
            r.search_latency,
            Some(SumCount {
                sum: 14890.0,
                count: 2627.0
            })
        );
        assert_eq!(
            r.queue_latency,
            Some(SumCount {
                sum: 451.0,
                count: 2627.0
            })
        );
        assert_eq!(r.queued_tasks, Some(0.0));
        assert!(
            r.names
                .contains(&"milvus_querynode_read_task_unsolved_len".to_string())
        );
        assert_eq!(missing_signals(&r), Vec::<String>::new());
    }

    #[test]
    fn an_older_or_newer_name_is_used_when_the_2_3_name_is_absent() {
        let text = "milvus_querynode_sq_latency_in_queue_sum{query_type=\"search\"} 30\n\
                    milvus_querynode_sq_latency_in_queue_count{query_type=\"search\"} 10\n\
                    milvus_proxy_req_latency_sum{function_name=\"Search\"} 50\n\
                    milvus_proxy_req_latency_count{function_name=\"Search\"} 5\n\
                    milvus_proxy_req_latency_sum{function_name=\"Insert\"} 999\n\
                    milvus_proxy_req_latency_count{function_name=\"Insert\"} 1\n\
                    milvus_querynode_sq_wait_tasks 7\n";
        let r = read_signals(&parse_exposition(text));
        assert_eq!(
            r.queue_latency,
            Some(SumCount {
                sum: 30.0,
                count: 10.0
            })
        );
        assert_eq!(
            r.search_latency,
            Some(SumCount {
                sum: 50.0,
                count: 5.0
            })
        );
        assert_eq!(r.queued_tasks, Some(7.0));
        assert_eq!(r.cpu_seconds, None);
        let missing = missing_signals(&r);
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert!(missing[0].starts_with("CPU"));
    }

    #[test]
    fn label_values_with_escapes_timestamps_and_special_values_parse() {
        let text = "# HELP x a metric\n# TYPE x gauge\n\
                    x{path=\"C:\\\\dir\",msg=\"say \\\"hi\\\"\\n\",} 1.5e3 1700000000000\n\
                    y +Inf\nz NaN\nw{} -Inf\n";
        let e = parse_exposition(text);
        assert_eq!(e.skipped, 0, "{:?}", e.first_error);
        assert_eq!(e.samples.len(), 4);
        assert_eq!(e.samples[0].label("path"), Some("C:\\dir"));
        assert_eq!(e.samples[0].label("msg"), Some("say \"hi\"\n"));
        assert_eq!(e.samples[0].value, 1500.0);
        assert_eq!(e.samples[1].value, f64::INFINITY);
        assert!(e.samples[2].value.is_nan());
        assert_eq!(e.samples[3].value, f64::NEG_INFINITY);
    }

    #[test]
    fn malformed_lines_are_skipped_and_the_first_is_reported_without_a_panic() {
        let text = "good 1\n{no_name=\"x\"} 2\nbad{a=\"unterminated} 3\nbad2{a=b} 4\n\
                    bad3 notanumber\nbad4 1 2 3\nbad5{a=\"x\"\nalso_good{a=\"é\"} 2\n\u{0}\n";
        let e = parse_exposition(text);
        assert_eq!(
            e.samples
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["good", "also_good"]
        );
        assert_eq!(e.skipped, 7);
        assert!(
            e.first_error
                .as_deref()
                .unwrap()
                .starts_with("line 2: no metric name")
        );
    }

    fn reading(cpu: f64, rss: f64, search: (f64, f64)) -> Reading {
        Reading {
            cpu_seconds: Some(cpu),
            resident_bytes: Some(rss),
            start_time: Some(1_796_314_500.0),
            received_bytes: Some(cpu * 1000.0),
            sent_bytes: None,
            search_latency: Some(SumCount {
                sum: search.0,
                count: search.1,
            }),
            queue_latency: None,
            queued_tasks: Some(2.0),
            names: Vec::new(),
        }
    }

    fn timed(second: f64, r: Reading) -> TimedReading {
        TimedReading {
            endpoint: "http://127.0.0.1:9091/metrics".into(),
            second,
            reading: r,
        }
    }

    #[test]
    fn cpu_cores_are_the_rate_of_cpu_seconds_summed_over_endpoints() {
        let prev = vec![
            Some(timed(0.0, reading(10.0, 100.0, (0.0, 0.0)))),
            Some(timed(0.0, reading(5.0, 50.0, (100.0, 10.0)))),
        ];
        let cur = vec![
            Ok(timed(2.0, reading(13.0, 200.0, (40.0, 10.0)))),
            Ok(timed(2.0, reading(6.0, 60.0, (160.0, 20.0)))),
        ];
        let p = series_point(2.0, &prev, &cur);
        assert_eq!(p.interval, 2.0);
        assert_eq!(p.cpu_cores, Some(1.5 + 0.5));
        assert_eq!(p.resident_bytes, Some(260.0));
        assert_eq!(p.received_bytes_per_second, Some(1500.0 + 500.0));
        assert_eq!(p.sent_bytes_per_second, None);
        // (40 + 60) ms over (10 + 10) searches.
        assert_eq!(p.search_latency_ms, Some(5.0));
        assert_eq!(p.queued_tasks, Some(4.0));
        assert_eq!(p.endpoints_observed, 2);
        assert_eq!(p.error, None);
    }

    #[test]
    fn the_first_scrape_gives_gauges_only_and_a_failed_endpoint_is_noted() {
        let cur = vec![
            Ok(timed(0.0, reading(10.0, 100.0, (0.0, 0.0)))),
            Err("cannot connect to http://127.0.0.1:1/metrics: refused".to_string()),
        ];
        let p = series_point(0.0, &[None, None], &cur);
        assert_eq!(p.cpu_cores, None);
        assert_eq!(p.resident_bytes, Some(100.0));
        assert_eq!(p.endpoints_observed, 1);
        assert_eq!(
            p.error.as_deref(),
            Some("cannot connect to http://127.0.0.1:1/metrics: refused")
        );
    }

    #[test]
    fn a_cpu_counter_that_goes_backwards_or_a_new_start_time_is_reported_as_a_restart() {
        let prev = vec![Some(timed(0.0, reading(100.0, 100.0, (0.0, 0.0))))];
        let cur = vec![Ok(timed(2.0, reading(1.0, 100.0, (0.0, 0.0))))];
        let p = series_point(2.0, &prev, &cur);
        assert_eq!(p.cpu_cores, None);
        assert_eq!(
            p.error.as_deref(),
            Some(
                "http://127.0.0.1:9091/metrics restarted during this interval (its process start time or CPU counter changed)"
            )
        );
        let mut restarted = reading(101.0, 100.0, (0.0, 0.0));
        restarted.start_time = Some(1_796_314_600.0);
        let p = series_point(2.0, &prev, &[Ok(timed(2.0, restarted))]);
        assert_eq!(p.cpu_cores, None);
        assert!(p.error.unwrap().contains("restarted"));
    }

    #[test]
    fn a_byte_counter_that_shrinks_when_a_collection_is_dropped_gives_no_rate_and_no_error() {
        let prev = vec![Some(timed(0.0, reading(10.0, 100.0, (0.0, 0.0))))];
        let mut cur = reading(12.0, 100.0, (0.0, 0.0));
        cur.received_bytes = Some(5.0);
        let p = series_point(2.0, &prev, &[Ok(timed(2.0, cur))]);
        assert_eq!(p.cpu_cores, Some(1.0));
        assert_eq!(p.received_bytes_per_second, None);
        assert_eq!(p.error, None);
    }

    #[test]
    fn host_cpu_is_read_from_the_cpu_line_of_proc_stat() {
        let stat = "cpu  100 20 30 400 50 5 5 10 0 0\ncpu0 50 10 15 200 25 2 3 5 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some((1.7, 6.2)));
        assert_eq!(parse_proc_stat("intr 1 2 3"), None);
        assert!(host_cpu_seconds().is_some_and(|(busy, total)| busy > 0.0 && total >= busy));
    }

    fn point(second: f64, cpu: f64, rss: f64) -> ServerSample {
        ServerSample {
            second,
            interval: 2.0,
            cpu_cores: Some(cpu),
            resident_bytes: Some(rss),
            endpoints_observed: 1,
            ..ServerSample::default()
        }
    }

    #[test]
    fn stage_windows_follow_the_stage_clock_and_the_measured_ramps() {
        let w = stage_windows(&[6.0, 6.0], &[1.0, 0.5], &[5.0, 5.5]);
        assert_eq!(
            w,
            vec![
                StageWindow {
                    start: 0.0,
                    steady_start: 1.0,
                    end: 6.0
                },
                StageWindow {
                    start: 6.0,
                    steady_start: 6.5,
                    end: 12.0
                }
            ]
        );
    }

    #[test]
    fn each_stage_averages_the_intervals_mostly_inside_its_steady_state() {
        let series = vec![
            ServerSample {
                second: 0.0,
                resident_bytes: Some(100.0),
                endpoints_observed: 1,
                ..ServerSample::default()
            },
            point(2.0, 0.2, 100.0), // [0,2]: half in stage 1's steady state [1,6]
            point(4.0, 0.4, 110.0),
            point(6.0, 0.6, 120.0),
            point(8.0, 1.6, 300.0), // [6,8]: stage 2 steady from 6.5
            point(10.0, 1.8, 320.0),
            point(12.0, 2.0, 310.0),
        ];
        let w = stage_windows(&[6.0, 6.0], &[1.0, 0.5], &[5.0, 5.5]);
        let s = aggregate_stages(&series, &w);
        assert_eq!(s[0].samples, 3);
        assert!((s[0].cpu_cores_mean.unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(s[0].cpu_cores_max, Some(0.6));
        assert_eq!(s[0].resident_bytes_peak, Some(120.0));
        assert!(s[0].observed);
        assert_eq!(s[0].note, None);
        assert_eq!(s[1].samples, 3);
        assert!((s[1].cpu_cores_mean.unwrap() - 1.8).abs() < 1e-9);
        assert_eq!(s[1].resident_bytes_peak, Some(320.0));
        assert!((s[1].resident_bytes_mean.unwrap() - 310.0).abs() < 1e-9);
    }

    #[test]
    fn a_stage_whose_scrapes_all_failed_is_not_observed_with_the_reason() {
        let failed = |second| ServerSample {
            second,
            interval: 0.0,
            error: Some("cannot connect to http://127.0.0.1:1/metrics: Connection refused".into()),
            ..ServerSample::default()
        };
        let series = vec![failed(0.0), failed(2.0), failed(4.0)];
        let s = aggregate_stages(&series, &stage_windows(&[5.0], &[0.0], &[5.0]));
        assert!(!s[0].observed);
        assert_eq!(
            s[0].note.as_deref(),
            Some("not observed: cannot connect to http://127.0.0.1:1/metrics: Connection refused")
        );
    }

    #[test]
    fn a_stage_shorter_than_the_interval_falls_back_to_the_scrape_ending_in_it() {
        let series = vec![point(2.0, 1.0, 1.0), point(4.0, 1.5, 1.0)];
        // Stage 1 runs [0, 3] with its steady state [2.9, 3]: no interval is half inside that,
        // so the scrape at 2 s (inside the stage) stands in. Stage 2 runs [3, 3.5]: no interval
        // is half inside and no scrape ends in it, so it is not observed.
        let s = aggregate_stages(
            &series,
            &stage_windows(&[3.0, 0.5], &[2.9, 0.0], &[0.1, 0.5]),
        );
        assert_eq!(s[0].cpu_cores_mean, Some(1.0));
        assert!(!s[1].observed);
        assert!(
            s[1].note
                .as_deref()
                .unwrap()
                .contains("no scrape fell inside")
        );
    }

    #[test]
    fn loopback_targets_get_the_default_metrics_url_and_remote_ones_need_urls() {
        let p = local_plan(None, "127.0.0.1:19530");
        assert!(p.enabled);
        assert_eq!(p.urls, ["http://127.0.0.1:9091/metrics"]);
        assert_eq!(p.interval, DEFAULT_INTERVAL);
        let p = local_plan(None, "http://localhost:19530");
        assert_eq!(p.urls, ["http://localhost:9091/metrics"]);
        let p = local_plan(None, "milvus.db.svc:19530");
        assert!(!p.enabled);
        assert_eq!(
            p.reason.as_deref(),
            Some(
                "not observed: Milvus at milvus.db.svc is not on this machine and spec.target.metrics.urls is not set"
            )
        );
        let off = crate::spec::MetricsSpec {
            enabled: Some(false),
            ..Default::default()
        };
        assert!(!local_plan(Some(&off), "127.0.0.1:19530").enabled);
        let urls = crate::spec::MetricsSpec {
            urls: vec!["http://10.0.0.5:9091/metrics".into()],
            port: Some(1),
            ..Default::default()
        };
        assert_eq!(
            local_plan(Some(&urls), "milvus:19530").urls,
            ["http://10.0.0.5:9091/metrics"]
        );
        let port = crate::spec::MetricsSpec {
            port: Some(9999),
            path: Some("/m".into()),
            ..Default::default()
        };
        assert_eq!(
            local_plan(Some(&port), "[::1]:19530").urls,
            ["http://[::1]:9999/m"]
        );
    }

    #[test]
    fn bad_metrics_settings_are_field_errors_of_the_spec() {
        let yaml = r#"
target:
  address: 127.0.0.1:19530
  metrics: {urls: ["https://x/metrics", "http://ok:9091/metrics"], path: metrics, port: 0, interval: 10ms, selector: " "}
collection: {name: c, dimension: 8}
stages: [{duration: 5s, users: 1, spawnRate: 1}]
"#;
        let spec: crate::spec::StressTestSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let paths: Vec<String> = crate::spec::validate(&spec)
            .into_iter()
            .map(|e| e.path)
            .filter(|p| p.starts_with("spec.target.metrics"))
            .collect();
        assert_eq!(
            paths,
            [
                "spec.target.metrics.urls[0]",
                "spec.target.metrics.selector",
                "spec.target.metrics.path",
                "spec.target.metrics.port",
                "spec.target.metrics.interval"
            ]
        );
    }

    fn pod(
        name: &str,
        ip: &str,
        phase: &str,
        restarts: i32,
        reason: Option<&str>,
    ) -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {
                "phase": phase,
                "podIP": ip,
                "containerStatuses": [{
                    "name": "querynode", "image": "milvus", "imageID": "", "ready": true,
                    "restartCount": restarts,
                    "lastState": reason.map_or(serde_json::json!({}), |r| serde_json::json!({
                        "terminated": {"reason": r, "exitCode": 137}
                    }))
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn running_pods_found_by_the_selector_become_metrics_urls() {
        let pods = [
            pod("milvus-querynode-b", "10.0.0.7", "Running", 0, None),
            pod("milvus-querynode-a", "10.0.0.6", "Running", 0, None),
            pod("milvus-proxy-x", "", "Pending", 0, None),
            pod("milvus-v6", "fd00::5", "Running", 0, None),
        ];
        assert_eq!(
            pod_metrics_urls(&pods, None, None),
            [
                "http://10.0.0.6:9091/metrics",
                "http://10.0.0.7:9091/metrics",
                "http://[fd00::5]:9091/metrics"
            ]
        );
        assert_eq!(
            pod_metrics_urls(&pods[..1], Some(9100), Some("/m")),
            ["http://10.0.0.7:9100/m"]
        );
    }

    #[test]
    fn an_oom_killed_query_node_is_a_restart_in_the_stage_it_happened() {
        let before = [
            pod("qn-0", "10.0.0.6", "Running", 1, Some("Error")),
            pod("qn-1", "10.0.0.7", "Running", 0, None),
        ];
        let after = [
            pod("qn-0", "10.0.0.6", "Running", 1, Some("Error")),
            pod("qn-1", "10.0.0.7", "Running", 1, Some("OOMKilled")),
        ];
        let r = container_restarts(&before, &after, 14.0);
        assert_eq!(
            r,
            [ContainerRestart {
                pod: "qn-1".into(),
                container: "querynode".into(),
                second: 14.0,
                restarts: 1,
                reason: Some("OOMKilled".into()),
                exit_code: Some(137),
            }]
        );
        assert!(r[0].oom_killed());
        assert_eq!(container_restarts(&after, &after, 16.0), []);
        let per_stage =
            restarts_per_stage(&r, &stage_windows(&[10.0, 10.0], &[1.0, 1.0], &[9.0, 9.0]));
        assert_eq!(per_stage[0].len(), 0);
        assert_eq!(per_stage[1].len(), 1);
    }

    #[test]
    fn http_urls_parse_and_https_is_refused_with_a_reason() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:9091/metrics").unwrap(),
            HttpUrl {
                host: "127.0.0.1".into(),
                port: 9091,
                path: "/metrics".into()
            }
        );
        assert_eq!(parse_http_url("http://[::1]").unwrap().port, 80);
        assert!(
            parse_http_url("https://x/metrics")
                .unwrap_err()
                .contains("https")
        );
        assert!(parse_http_url("http://x:port/").is_err());
        assert!(parse_http_url("http://:9091/").is_err());
    }

    #[test]
    fn http_responses_are_checked_and_chunked_bodies_decoded() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\na 1\n";
        assert_eq!(parse_http_response(ok).unwrap(), "a 1\n");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\na 1\n\r\n3;x=y\r\nb 2\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked).unwrap(), "a 1\nb 2");
        let missing = b"HTTP/1.1 404 Not Found\r\n\r\nnope";
        assert_eq!(
            parse_http_response(missing).unwrap_err(),
            "HTTP status 404 Not Found"
        );
        assert!(parse_http_response(b"garbage").is_err());
        assert!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_a_reason_not_an_error_of_the_run() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let plan = ObservePlan {
            enabled: true,
            urls: vec![format!("http://127.0.0.1:{port}/metrics")],
            interval: Duration::from_millis(100),
            reason: None,
        };
        let scraper = start_scraper(plan, Instant::now());
        tokio::time::sleep(Duration::from_millis(250)).await;
        let obs = scraper.finish().await;
        assert!(obs.enabled);
        assert!(!obs.observed);
        let reason = obs.reason.unwrap();
        assert!(
            reason.starts_with(&format!(
                "not observed: cannot connect to http://127.0.0.1:{port}/metrics"
            )),
            "{reason}"
        );
        assert!(obs.series.len() >= 2);
        assert!(obs.series.iter().all(|p| p.endpoints_observed == 0));
    }
}
