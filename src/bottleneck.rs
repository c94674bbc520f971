//! Bottleneck identification: the limiting resource per stage and recommendations.
//!
//! Pure functions over per-stage facts (the stage's summary, the server observation, the load
//! generator's CPU). The verdict names one resource with the numbers behind it; the
//! recommendations are rules, each a small function that fires on its own condition.

use serde::{Deserialize, Serialize};

use crate::observe::{ContainerRestart, StageServer};
use crate::spec::{BottleneckStatus, StressTestSpec};

/// What limited a stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Resource {
    /// The Milvus processes used (nearly) all the CPU left to them.
    ServerCpu,
    /// The Milvus processes used (nearly) all the memory of their host.
    ServerMemory,
    /// The link between client and server was full (judged only when its capacity is known).
    Network,
    /// The load generator ran out of CPU: the stage measures the client.
    Client,
    /// Requests failed or timed out.
    Errors,
    /// Nothing was near its limit.
    #[default]
    None,
    /// The server was not observed and nothing on the client side explains the stage.
    NotObserved,
}

impl Resource {
    /// The name used in result.json and the StressTest status.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::ServerCpu => "serverCpu",
            Resource::ServerMemory => "serverMemory",
            Resource::Network => "network",
            Resource::Client => "client",
            Resource::Errors => "errors",
            Resource::None => "none",
            Resource::NotObserved => "notObserved",
        }
    }

    /// Words for reports.
    pub fn label(self) -> &'static str {
        match self {
            Resource::ServerCpu => "server CPU",
            Resource::ServerMemory => "server memory",
            Resource::Network => "network",
            Resource::Client => "load generator",
            Resource::Errors => "errors",
            Resource::None => "none",
            Resource::NotObserved => "not observed",
        }
    }
}

/// One actionable recommendation and the rule that made it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// Rule name: `cpu`, `memory`, `recall`, `timeouts`, `client`.
    pub rule: String,
    /// What to do, with the numbers that triggered it.
    pub text: String,
}

/// The verdict on one stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageBottleneck {
    /// Stage index, from 0.
    pub stage: usize,
    /// The limiting resource.
    pub resource: Resource,
    /// The numbers behind the verdict.
    pub evidence: String,
    /// What to do (on the saturation stage, or the last limited one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<Recommendation>,
}

impl StageBottleneck {
    /// The form written into the StressTest status.
    pub fn to_status(&self) -> BottleneckStatus {
        BottleneckStatus {
            resource: self.resource.as_str().to_string(),
            evidence: self.evidence.clone(),
            recommendations: self
                .recommendations
                .iter()
                .map(|r| r.text.clone())
                .collect(),
        }
    }
}

/// Limits of the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Share of the available cores above which the server CPU is the limit.
    pub cpu_share: f64,
    /// Share of the memory limit above which memory is the limit.
    pub memory_share: f64,
    /// Failed share above which errors are the limit.
    pub error_ratio: f64,
    /// P95 rise (vs the first stage) that counts as "latency rose".
    pub p95_rise: f64,
    /// Share of failures of one kind that makes it dominant.
    pub dominant_share: f64,
    /// Link capacity, bytes/s; network is judged only when it is known.
    pub link_bytes_per_second: Option<f64>,
    /// Mean query-node tasks waiting that shows requests queueing for the server.
    pub queued_tasks: f64,
    /// Mean query-node queue wait, ms, that shows requests queueing for the server.
    pub queue_wait_ms: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            cpu_share: 0.9,
            memory_share: 0.9,
            error_ratio: 0.01,
            p95_rise: 1.5,
            dominant_share: 0.5,
            link_bytes_per_second: None,
            queued_tasks: 1.0,
            queue_wait_ms: 1.0,
        }
    }
}

impl Thresholds {
    /// The default limits with what the spec knows: the link capacity of
    /// `spec.target.metrics.linkCapacity` (an invalid one, refused by validation, is unknown).
    pub fn for_spec(spec: &StressTestSpec) -> Thresholds {
        Thresholds {
            link_bytes_per_second: spec
                .target
                .metrics
                .as_ref()
                .and_then(|m| m.link_capacity.as_deref())
                .and_then(|c| crate::spec::parse_link_capacity(c).ok()),
            ..Thresholds::default()
        }
    }
}

/// Everything the rules know about one stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageFacts {
    /// Stage index, from 0.
    pub stage: usize,
    /// The load asked for, in words: `200 users` or `500 req/s`.
    pub load: String,
    /// Completed requests.
    pub requests: u64,
    /// Failed requests.
    pub failures: u64,
    /// Failed share.
    pub error_ratio: f64,
    /// Failures of this stage by kind (`timeout`, `grpc:DEADLINE_EXCEEDED`, …).
    pub failures_by_kind: Vec<(String, u64)>,
    /// P95 of this stage, ms.
    pub p95_ms: f64,
    /// P95 of the first stage (the baseline), ms.
    pub baseline_p95_ms: Option<f64>,
    /// Mean recall@k, when measured.
    pub recall: Option<f64>,
    /// The load generator's self-check fired (it used ≥ 90 % of its cores).
    pub client_saturated: bool,
    /// Mean cores the load generator used.
    pub client_cores: Option<f64>,
    /// Cores available to the load generator.
    pub client_cores_available: Option<f64>,
    /// What the server did (None when not observed).
    pub server: Option<StageServer>,
    /// Why the server was not (fully) observed.
    pub server_note: Option<String>,
    /// Cores of the server's host, when known.
    pub cores_available: Option<f64>,
    /// Memory of the server's host, bytes, when known.
    pub memory_limit_bytes: Option<f64>,
    /// Where `cores_available` and `memory_limit_bytes` came from (or why they are unknown),
    /// in words, when it is worth saying (cluster: pod limits or node allocatable).
    pub capacity_source: Option<String>,
    /// Whether the load generator shares the server's host (its CPU then competes).
    pub shares_host: bool,
    /// Milvus containers that restarted or were OOM-killed during the stage (cluster only).
    pub restarts: Vec<ContainerRestart>,
}

/// Index and search settings the recommendations name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tuning {
    /// Index type (`HNSW`, `IVF_FLAT`, …).
    pub index_type: String,
    /// The search parameter that trades recall for CPU and its current value, e.g. (`ef`, `64`).
    pub search_param: Option<(String, String)>,
    /// The SLA's lowest recall.
    pub recall_at_least: Option<f64>,
    /// The per-request timeout, for the timeout rule's words.
    pub request_timeout: String,
}

/// The search parameter that trades recall for CPU for an index type.
pub fn search_param_name(index_type: &str) -> Option<&'static str> {
    let t = index_type.to_ascii_uppercase();
    if t == "HNSW" {
        Some("ef")
    } else if t.starts_with("IVF") || t == "SCANN" || t.starts_with("GPU_IVF") {
        Some("nprobe")
    } else if t == "DISKANN" {
        Some("search_list")
    } else if t == "AUTOINDEX" {
        Some("level")
    } else {
        None
    }
}

/// The tuning facts of a spec: its index type and the first search operation's value of the
/// index's search parameter.
pub fn tuning_of(spec: &StressTestSpec) -> Tuning {
    let name = search_param_name(&spec.index.index_type);
    let value = name.and_then(|n| {
        spec.workload
            .operations
            .iter()
            .filter_map(|o| o.search.as_ref())
            .find_map(|s| s.params.get(n))
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    });
    Tuning {
        index_type: spec.index.index_type.clone(),
        search_param: name.zip(value).map(|(n, v)| (n.to_string(), v)),
        recall_at_least: spec.sla.as_ref().and_then(|s| s.recall_at_least),
        request_timeout: spec.workload.request_timeout.to_string(),
    }
}

fn cores(x: f64) -> String {
    format!("{x:.2}")
}

fn bytes(x: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if x >= 1024.0 * MIB {
        format!("{:.1} GiB", x / (1024.0 * MIB))
    } else {
        format!("{:.0} MiB", x / MIB)
    }
}

fn bits(bytes_per_second: f64) -> String {
    let b = bytes_per_second * 8.0;
    if b >= 1e9 {
        format!("{} Gbit/s", trim_number(b / 1e9))
    } else {
        format!("{} Mbit/s", trim_number(b / 1e6))
    }
}

fn trim_number(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// Server CPU against what was left to it: (cores used, cores available to it, share). On a
/// host shared with the load generator (or other work), their cores are not available to
/// Milvus; when the host's busy time is measured, the share is how busy the whole host was
/// (Milvus could only have had the idle rest), otherwise Milvus's share of what the load
/// generator left.
pub fn server_cpu_share(f: &StageFacts) -> Option<(f64, f64, f64)> {
    let s = f.server.as_ref()?;
    let used = s.cpu_cores_mean?;
    let total = f.cores_available?;
    match (f.shares_host, s.host_busy_cores_mean) {
        (true, Some(busy)) => {
            let busy = busy.max(used);
            let left = (total - (busy - used)).max(0.1);
            Some((used, left, busy / total.max(0.1)))
        }
        (true, None) => {
            let left = (total - f.client_cores.unwrap_or(0.0)).max(0.1);
            Some((used, left, used / left))
        }
        (false, _) => {
            let left = total.max(0.1);
            Some((used, left, used / left))
        }
    }
}

/// Peak server memory against the host's: (peak, limit, share).
pub fn memory_share(f: &StageFacts) -> Option<(f64, f64, f64)> {
    let peak = f.server.as_ref()?.resident_bytes_peak?;
    let limit = f.memory_limit_bytes.filter(|l| *l > 0.0)?;
    Some((peak, limit, peak / limit))
}

/// Whether a failure kind is a timeout (ours, or the server's DEADLINE_EXCEEDED).
pub fn is_timeout_kind(kind: &str) -> bool {
    kind == "timeout" || kind.contains("DEADLINE_EXCEEDED")
}

/// The most frequent failure kind: (kind, count, share of failures).
pub fn dominant_failure(f: &StageFacts) -> Option<(String, u64, f64)> {
    let total: u64 = f.failures_by_kind.iter().map(|(_, n)| n).sum();
    let (kind, n) = f.failures_by_kind.iter().max_by_key(|(_, n)| *n)?;
    (total > 0).then(|| (kind.clone(), *n, *n as f64 / total as f64))
}

fn timeout_failures(f: &StageFacts) -> (u64, u64) {
    let total: u64 = f.failures_by_kind.iter().map(|(_, n)| n).sum();
    let timeouts = f
        .failures_by_kind
        .iter()
        .filter(|(k, _)| is_timeout_kind(k))
        .map(|(_, n)| n)
        .sum();
    (timeouts, total)
}

fn p95_rise(f: &StageFacts) -> Option<f64> {
    let base = f.baseline_p95_ms.filter(|b| *b > 0.0)?;
    Some(f.p95_ms / base)
}

/// Whether requests had to wait for the server: P95 rose against the first stage, or the query
/// node queued tasks or made them wait. None when no such signal is known. Busy cores alone do
/// not make CPU the limit: on a host shared with other work a lightly loaded Milvus may use all
/// that is left without anything waiting for it.
pub fn demand_exceeded_supply(f: &StageFacts, t: &Thresholds) -> Option<bool> {
    let rise = p95_rise(f).filter(|_| f.stage > 0);
    let tasks = f.server.as_ref().and_then(|s| s.queued_tasks_mean);
    let wait = f.server.as_ref().and_then(|s| s.queue_latency_ms);
    if rise.is_none() && tasks.is_none() && wait.is_none() {
        return None;
    }
    Some(
        rise.is_some_and(|r| r >= t.p95_rise)
            || tasks.is_some_and(|n| n >= t.queued_tasks)
            || wait.is_some_and(|ms| ms >= t.queue_wait_ms),
    )
}

fn server_cpu_words(f: &StageFacts) -> Option<String> {
    let (used, left, share) = server_cpu_share(f)?;
    let total = f.cores_available.unwrap_or(left);
    let busy = f.server.as_ref().and_then(|s| s.host_busy_cores_mean);
    Some(if let (true, Some(busy)) = (f.shares_host, busy) {
        let client = f.client_cores.unwrap_or(0.0);
        let others = (busy - used - client).max(0.0);
        format!(
            "Milvus used {} cores of the {} left to it; the host's {} cores were {} busy ({}) with Milvus, the load generator {}, other processes {}",
            cores(used),
            cores(left),
            cores(total),
            cores(busy),
            pct(share),
            cores(client),
            cores(others)
        )
    } else if f.shares_host && f.client_cores.is_some() {
        format!(
            "Milvus used {} cores of the {} left to it ({}; the host has {}, the load generator on it used {})",
            cores(used),
            cores(left),
            pct(share),
            cores(total),
            cores(f.client_cores.unwrap_or(0.0))
        )
    } else {
        format!(
            "Milvus used {} of {} cores ({})",
            cores(used),
            cores(left),
            pct(share)
        )
    })
}

fn queue_words(f: &StageFacts) -> String {
    let Some(s) = &f.server else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(q) = s.queue_latency_ms {
        parts.push(format!("query node queue wait {q:.1} ms"));
    }
    if let Some(t) = s.queued_tasks_mean.filter(|t| *t > 0.0) {
        parts.push(format!("{t:.1} tasks waiting"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("; {}", parts.join(", "))
    }
}

/// The restarts of a stage in words: `Milvus pod milvus-0 restarted (OOMKilled) during this
/// stage`, one sentence per container, joined by `; `.
pub fn restart_words(restarts: &[ContainerRestart]) -> String {
    restarts
        .iter()
        .map(|r| {
            let times = if r.restarts > 1 {
                format!(" {} times", r.restarts)
            } else {
                String::new()
            };
            let why = match (&r.reason, r.exit_code) {
                (Some(reason), _) => format!(" ({reason})"),
                (None, Some(code)) => format!(" (exit code {code})"),
                (None, None) => String::new(),
            };
            format!(
                "Milvus pod {} restarted{times}{why} during this stage",
                r.pod
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The limiting resource of a stage with its evidence (no recommendations). Order: errors, then
/// memory, then the load generator, then server CPU, then network; otherwise none. A Milvus
/// container restart during the stage is added to the evidence; an OOM kill makes memory the
/// limit unless errors or the load generator already explain the stage.
pub fn stage_verdict(f: &StageFacts, t: &Thresholds) -> StageBottleneck {
    let mut v = measured_verdict(f, t);
    if let Some(source) = &f.capacity_source
        && matches!(
            v.resource,
            Resource::ServerCpu | Resource::ServerMemory | Resource::Client | Resource::None
        )
    {
        v.evidence = format!("{}; {source}", v.evidence);
    }
    if f.restarts.is_empty() {
        return v;
    }
    let words = restart_words(&f.restarts);
    let oom = f.restarts.iter().any(ContainerRestart::oom_killed);
    if oom && !matches!(v.resource, Resource::Errors | Resource::Client) {
        if v.resource != Resource::ServerMemory {
            // "nothing near its limit" no longer holds: keep only the figures.
            let prefix = format!("nothing near its limit at {}: ", f.load);
            let figures = v.evidence.strip_prefix(&prefix).unwrap_or(&v.evidence);
            v.evidence = format!("{words} at {}; {figures}", f.load);
            v.resource = Resource::ServerMemory;
        } else {
            v.evidence = format!("{}; {words}", v.evidence);
        }
    } else {
        v.evidence = format!("{}; {words}", v.evidence);
    }
    v
}

fn measured_verdict(f: &StageFacts, t: &Thresholds) -> StageBottleneck {
    let verdict = |resource, evidence: String| StageBottleneck {
        stage: f.stage,
        resource,
        evidence,
        recommendations: Vec::new(),
    };
    if f.requests > 0 && f.error_ratio >= t.error_ratio {
        let kind = dominant_failure(f)
            .map(|(k, n, share)| format!(", mostly {k} ({n} of them, {})", pct(share)))
            .unwrap_or_default();
        return verdict(
            Resource::Errors,
            format!(
                "{} of {} requests failed ({:.1} %) at {}{kind}{}",
                f.failures,
                f.requests,
                f.error_ratio * 100.0,
                f.load,
                queue_words(f)
            ),
        );
    }
    if let Some((peak, limit, share)) = memory_share(f)
        && share >= t.memory_share
    {
        return verdict(
            Resource::ServerMemory,
            format!(
                "Milvus peaked at {} resident of {} ({})",
                bytes(peak),
                bytes(limit),
                pct(share)
            ),
        );
    }
    if f.client_saturated {
        let client = match (f.client_cores, f.client_cores_available) {
            (Some(u), Some(a)) => {
                format!("the load generator used {} of {} cores", cores(u), cores(a))
            }
            _ => "the load generator ran out of CPU".to_string(),
        };
        let server = match server_cpu_words(f) {
            Some(w) => format!("; {w}"),
            None => String::new(),
        };
        return verdict(
            Resource::Client,
            format!("{client}, so this stage measures the client, not Milvus{server}"),
        );
    }
    if let Some((_, _, share)) = server_cpu_share(f)
        && share >= t.cpu_share
        && demand_exceeded_supply(f, t) != Some(false)
    {
        let rise = p95_rise(f)
            .filter(|_| f.stage > 0)
            .map(|r| format!(" ({r:.1}× the first stage's)"))
            .unwrap_or_default();
        return verdict(
            Resource::ServerCpu,
            format!(
                "at {}, P95 {:.1} ms{rise}: {}{}",
                f.load,
                f.p95_ms,
                server_cpu_words(f).unwrap_or_default(),
                queue_words(f)
            ),
        );
    }
    if let (Some(link), Some(s)) = (t.link_bytes_per_second, &f.server) {
        // A link is full duplex: it is full when either direction is.
        let received = s.received_bytes_per_second.unwrap_or(0.0);
        let sent = s.sent_bytes_per_second.unwrap_or(0.0);
        let (busier, direction, other, other_direction) = if sent >= received {
            (sent, "sent", received, "received")
        } else {
            (received, "received", sent, "sent")
        };
        if link > 0.0 && busier >= t.cpu_share * link {
            return verdict(
                Resource::Network,
                format!(
                    "at {}, the proxy {direction} {}/s ({other_direction} {}/s) on a {}/s link ({}, {}): P95 {:.1} ms",
                    f.load,
                    bytes(busier),
                    bytes(other),
                    bytes(link),
                    bits(link),
                    pct(busier / link),
                    f.p95_ms
                ),
            );
        }
    }
    let Some(s) = &f.server else {
        let note = f
            .server_note
            .clone()
            .unwrap_or_else(|| "not observed".to_string());
        let client = f
            .client_cores
            .map(|c| format!("the load generator used {} cores, ", cores(c)))
            .unwrap_or_default();
        return verdict(
            Resource::NotObserved,
            format!(
                "server {note}; {client}{:.1} % of requests failed: neither is a limit",
                f.error_ratio * 100.0
            ),
        );
    };
    let mut parts = Vec::new();
    if let Some(w) = server_cpu_words(f) {
        parts.push(w);
    } else if let Some(c) = s.cpu_cores_mean {
        parts.push(format!("Milvus used {} cores", cores(c)));
    }
    if let Some((peak, limit, share)) = memory_share(f) {
        parts.push(format!(
            "peak memory {} of {} ({})",
            bytes(peak),
            bytes(limit),
            pct(share)
        ));
    } else if let Some(peak) = s.resident_bytes_peak {
        parts.push(format!("peak memory {}", bytes(peak)));
    }
    let q = queue_words(f);
    verdict(
        Resource::None,
        format!(
            "nothing near its limit at {}: {}{q}",
            f.load,
            if parts.is_empty() {
                "no CPU or memory figures".to_string()
            } else {
                parts.join(", ")
            }
        ),
    )
}

fn recommendation(rule: &str, text: String) -> Recommendation {
    Recommendation {
        rule: rule.to_string(),
        text,
    }
}

fn lower_param(t: &Tuning) -> String {
    match (&t.search_param, search_param_name(&t.index_type)) {
        (Some((name, value)), _) => format!("lower {name} from {value}"),
        (None, Some(name)) => {
            format!("set a lower {name} (the search sets none, so Milvus uses its default)")
        }
        (None, None) => format!("use a cheaper index than {}", t.index_type),
    }
}

/// Rule: server CPU ≥ 90 % of what it had while P95 rose ≥ 1.5× → add query nodes, or lower the
/// search parameter (naming its current value).
pub fn cpu_rule(f: &StageFacts, t: &Tuning, th: &Thresholds) -> Option<Recommendation> {
    let (_, _, share) = server_cpu_share(f)?;
    let rise = p95_rise(f)?;
    if share < th.cpu_share || rise < th.p95_rise {
        return None;
    }
    let colocated = if f.shares_host {
        "; or run the load generator on another machine"
    } else {
        ""
    };
    Some(recommendation(
        "cpu",
        format!(
            "P95 rose {rise:.1}× ({:.1} → {:.1} ms) at {} while {}: add query nodes (or cores), or {}{colocated}",
            f.baseline_p95_ms.unwrap_or(0.0),
            f.p95_ms,
            f.load,
            server_cpu_words(f).unwrap_or_default(),
            lower_param(t)
        ),
    ))
}

/// Rule: peak memory ≥ 90 % of the host's → quantised index, partitions, more memory.
pub fn memory_rule(f: &StageFacts, t: &Tuning, th: &Thresholds) -> Option<Recommendation> {
    let (peak, limit, share) = memory_share(f)?;
    if share < th.memory_share {
        return None;
    }
    let index = if t.index_type.eq_ignore_ascii_case("IVF_SQ8")
        || t.index_type.eq_ignore_ascii_case("IVF_PQ")
    {
        "a more compressed index (IVF_PQ)".to_string()
    } else {
        format!("a quantised index (IVF_SQ8 instead of {})", t.index_type)
    };
    Some(recommendation(
        "memory",
        format!(
            "Milvus peaked at {} of {} ({}): use {index}, split the data into partitions and load only those searched, or give the query nodes more memory",
            bytes(peak),
            bytes(limit),
            pct(share)
        ),
    ))
}

/// Rule: a Milvus container was OOM-killed during the stage → more memory for it, a quantised
/// index, partitions.
pub fn oom_rule(f: &StageFacts, t: &Tuning) -> Option<Recommendation> {
    let killed: Vec<&str> = f
        .restarts
        .iter()
        .filter(|r| r.oom_killed())
        .map(|r| r.pod.as_str())
        .collect();
    if killed.is_empty() {
        return None;
    }
    Some(recommendation(
        "oom",
        format!(
            "Milvus pod{} {} {} OOM-killed at {}: raise {} memory limit, use a quantised index (IVF_SQ8 instead of {}), or split the data into partitions and load only those searched",
            if killed.len() > 1 { "s" } else { "" },
            killed.join(", "),
            if killed.len() > 1 { "were" } else { "was" },
            f.load,
            if killed.len() > 1 { "their" } else { "its" },
            t.index_type
        ),
    ))
}

/// Rule: recall below the SLA's `recallAtLeast` → raise the search parameter.
pub fn recall_rule(f: &StageFacts, t: &Tuning) -> Option<Recommendation> {
    let recall = f.recall?;
    let floor = t.recall_at_least?;
    if recall >= floor {
        return None;
    }
    let at = t
        .search_param
        .as_ref()
        .map(|(n, v)| format!(" at {n}={v}"))
        .unwrap_or_default();
    let action = match (&t.search_param, search_param_name(&t.index_type)) {
        (Some((n, _)), _) => format!("raise {n}"),
        (None, Some(n)) => format!("set {n} higher than Milvus's default"),
        (None, None) => format!("use a more exact index than {}", t.index_type),
    };
    Some(recommendation(
        "recall",
        format!(
            "recall {recall:.2} is below the SLA's {floor:.2}{at}: {action} (each search then costs more CPU)"
        ),
    ))
}

/// Rule: failures dominated by DEADLINE_EXCEEDED or timeouts → the server is queueing.
pub fn timeout_rule(f: &StageFacts, t: &Tuning, th: &Thresholds) -> Option<Recommendation> {
    let (timeouts, total) = timeout_failures(f);
    if total == 0 || (timeouts as f64) < th.dominant_share * total as f64 {
        return None;
    }
    let kinds: Vec<&str> = f
        .failures_by_kind
        .iter()
        .filter(|(k, _)| is_timeout_kind(k))
        .map(|(k, _)| k.as_str())
        .collect();
    Some(recommendation(
        "timeouts",
        format!(
            "{timeouts} of {total} failures are {} at {}: the server is queueing requests{}; lower the load or add query nodes (raise requestTimeout, now {}, only if such waits are acceptable)",
            kinds.join("/"),
            f.load,
            queue_words(f),
            t.request_timeout
        ),
    ))
}

/// Rule: the load generator saturated → more workers or shards.
pub fn client_rule(f: &StageFacts) -> Option<Recommendation> {
    if !f.client_saturated {
        return None;
    }
    let used = match (f.client_cores, f.client_cores_available) {
        (Some(u), Some(a)) => format!("the load generator used {} of {} cores", cores(u), cores(a)),
        _ => "the load generator ran out of CPU".to_string(),
    };
    Some(recommendation(
        "client",
        format!(
            "{used} at {}: run more workers (spec.workers.replicas in a cluster, more --shards or another machine locally) so the stage measures Milvus",
            f.load
        ),
    ))
}

/// Every rule that fires on a stage, in a fixed order.
pub fn recommendations(f: &StageFacts, t: &Tuning, th: &Thresholds) -> Vec<Recommendation> {
    [
        client_rule(f),
        timeout_rule(f, t, th),
        memory_rule(f, t, th),
        oom_rule(f, t),
        cpu_rule(f, t, th),
        recall_rule(f, t),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The verdict for every stage; recommendations on the saturation stage, or when there is none
/// on the last stage with a limit (or the last stage, when a rule fires there).
pub fn judge(
    facts: &[StageFacts],
    tuning: &Tuning,
    saturation_stage: Option<usize>,
    th: &Thresholds,
) -> Vec<StageBottleneck> {
    let mut out: Vec<StageBottleneck> = facts.iter().map(|f| stage_verdict(f, th)).collect();
    let limited =
        |b: &StageBottleneck| !matches!(b.resource, Resource::None | Resource::NotObserved);
    let target = saturation_stage
        .and_then(|s| out.iter().position(|b| b.stage == s))
        .or_else(|| out.iter().rposition(limited))
        .or_else(|| out.len().checked_sub(1));
    if let Some(i) = target
        && let (Some(f), Some(b)) = (facts.get(i), out.get_mut(i))
    {
        b.recommendations = recommendations(f, tuning, th);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

    fn server(cpu: f64, rss: f64) -> StageServer {
        StageServer {
            observed: true,
            samples: 3,
            cpu_cores_mean: Some(cpu),
            cpu_cores_max: Some(cpu),
            resident_bytes_mean: Some(rss),
            resident_bytes_peak: Some(rss),
            queue_latency_ms: Some(4.0),
            ..StageServer::default()
        }
    }

    /// A stage on a dedicated 2-core, 8 GiB server host.
    fn facts(cpu: f64, rss: f64, p95: f64) -> StageFacts {
        StageFacts {
            stage: 2,
            load: "200 users".into(),
            requests: 10_000,
            failures: 0,
            error_ratio: 0.0,
            p95_ms: p95,
            baseline_p95_ms: Some(3.0),
            server: Some(server(cpu, rss)),
            cores_available: Some(2.0),
            memory_limit_bytes: Some(8.0 * GIB),
            client_cores: Some(0.3),
            client_cores_available: Some(4.0),
            ..StageFacts::default()
        }
    }

    fn hnsw(ef: Option<&str>) -> Tuning {
        Tuning {
            index_type: "HNSW".into(),
            search_param: ef.map(|v| ("ef".to_string(), v.to_string())),
            recall_at_least: Some(0.9),
            request_timeout: "10s".into(),
        }
    }

    #[test]
    fn cpu_above_nine_tenths_while_p95_rose_recommends_query_nodes_or_a_lower_ef() {
        let f = facts(1.9, 2.0 * GIB, 12.0);
        let r = cpu_rule(&f, &hnsw(Some("64")), &Thresholds::default()).unwrap();
        assert_eq!(r.rule, "cpu");
        assert_eq!(
            r.text,
            "P95 rose 4.0× (3.0 → 12.0 ms) at 200 users while Milvus used 1.90 of 2.00 cores (95 %): add query nodes (or cores), or lower ef from 64"
        );
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::ServerCpu);
        assert_eq!(
            v.evidence,
            "at 200 users, P95 12.0 ms (4.0× the first stage's): Milvus used 1.90 of 2.00 cores (95 %); query node queue wait 4.0 ms"
        );
    }

    #[test]
    fn cpu_rule_stays_quiet_when_p95_did_not_rise_or_cpu_had_room() {
        let th = Thresholds::default();
        assert_eq!(
            cpu_rule(&facts(1.9, GIB, 3.5), &hnsw(Some("64")), &th),
            None
        );
        assert_eq!(
            cpu_rule(&facts(1.0, GIB, 30.0), &hnsw(Some("64")), &th),
            None
        );
    }

    #[test]
    fn on_a_shared_host_the_load_generators_cores_are_not_available_to_milvus() {
        let mut f = facts(1.3, GIB, 12.0);
        f.shares_host = true;
        f.client_cores = Some(0.6);
        f.client_cores_available = Some(2.0);
        let (used, left, share) = server_cpu_share(&f).unwrap();
        assert_eq!((used, left), (1.3, 1.4));
        assert!((share - 1.3 / 1.4).abs() < 1e-12);
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::ServerCpu);
        assert!(
            v.evidence.contains("Milvus used 1.30 cores of the 1.40 left to it (93 %; the host has 2.00, the load generator on it used 0.60)"),
            "{}",
            v.evidence
        );
        let r = cpu_rule(&f, &hnsw(None), &Thresholds::default()).unwrap();
        assert!(
            r.text.ends_with("or set a lower ef (the search sets none, so Milvus uses its default); or run the load generator on another machine"),
            "{}",
            r.text
        );
    }

    #[test]
    fn cpu_taken_by_other_processes_on_the_host_is_not_available_to_milvus_either() {
        let mut f = facts(0.9, GIB, 12.0);
        f.shares_host = true;
        f.client_cores = Some(0.3);
        if let Some(s) = f.server.as_mut() {
            s.host_busy_cores_mean = Some(1.95);
        }
        let (used, left, share) = server_cpu_share(&f).unwrap();
        assert_eq!(used, 0.9);
        assert!((left - 0.95).abs() < 1e-12);
        assert!(share > 0.9);
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::ServerCpu);
        assert!(
            v.evidence.contains(
                "Milvus used 0.90 cores of the 0.95 left to it; the host's 2.00 cores were 1.95 busy (98 %) with Milvus, the load generator 0.30, other processes 0.75"
            ),
            "{}",
            v.evidence
        );
    }

    #[test]
    fn busy_cores_without_anything_waiting_do_not_make_cpu_the_limit() {
        // One user on a host that other work keeps busy: Milvus uses all that is left, but
        // nothing queues and P95 did not rise.
        let mut f = facts(0.3, GIB, 3.0);
        f.stage = 0;
        f.shares_host = true;
        if let Some(s) = f.server.as_mut() {
            s.host_busy_cores_mean = Some(2.0);
            s.queue_latency_ms = Some(0.1);
            s.queued_tasks_mean = Some(0.5);
        }
        assert!(server_cpu_share(&f).is_some_and(|x| (x.2 - 1.0).abs() < 1e-9));
        assert_eq!(
            demand_exceeded_supply(&f, &Thresholds::default()),
            Some(false)
        );
        assert_eq!(
            stage_verdict(&f, &Thresholds::default()).resource,
            Resource::None
        );
        // The same stage with tasks waiting is CPU-bound.
        if let Some(s) = f.server.as_mut() {
            s.queued_tasks_mean = Some(2.5);
        }
        assert_eq!(
            stage_verdict(&f, &Thresholds::default()).resource,
            Resource::ServerCpu
        );
    }

    #[test]
    fn memory_above_nine_tenths_recommends_a_quantised_index_partitions_or_more_memory() {
        let f = facts(0.5, 7.5 * GIB, 3.0);
        let r = memory_rule(&f, &hnsw(Some("64")), &Thresholds::default()).unwrap();
        assert_eq!(
            r.text,
            "Milvus peaked at 7.5 GiB of 8.0 GiB (94 %): use a quantised index (IVF_SQ8 instead of HNSW), split the data into partitions and load only those searched, or give the query nodes more memory"
        );
        assert_eq!(
            stage_verdict(&f, &Thresholds::default()).resource,
            Resource::ServerMemory
        );
        assert_eq!(
            memory_rule(
                &facts(0.5, 4.0 * GIB, 3.0),
                &hnsw(None),
                &Thresholds::default()
            ),
            None
        );
    }

    #[test]
    fn recall_below_the_sla_recommends_raising_ef_naming_its_value() {
        let mut f = facts(0.5, GIB, 3.0);
        f.recall = Some(0.62);
        let r = recall_rule(&f, &hnsw(Some("64"))).unwrap();
        assert_eq!(
            r.text,
            "recall 0.62 is below the SLA's 0.90 at ef=64: raise ef (each search then costs more CPU)"
        );
        f.recall = Some(0.95);
        assert_eq!(recall_rule(&f, &hnsw(Some("64"))), None);
        f.recall = Some(0.5);
        let ivf = Tuning {
            index_type: "IVF_FLAT".into(),
            search_param: Some(("nprobe".into(), "8".into())),
            ..hnsw(None)
        };
        assert!(
            recall_rule(&f, &ivf)
                .unwrap()
                .text
                .contains("at nprobe=8: raise nprobe")
        );
    }

    #[test]
    fn failures_dominated_by_deadline_exceeded_are_attributed_to_server_queueing() {
        let mut f = facts(1.2, GIB, 900.0);
        f.failures = 90;
        f.error_ratio = 0.09;
        f.requests = 1000;
        f.failures_by_kind = vec![
            ("grpc:DEADLINE_EXCEEDED".into(), 60),
            ("timeout".into(), 27),
            ("grpc:UNAVAILABLE".into(), 3),
        ];
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::Errors);
        assert_eq!(
            v.evidence,
            "90 of 1000 requests failed (9.0 %) at 200 users, mostly grpc:DEADLINE_EXCEEDED (60 of them, 67 %); query node queue wait 4.0 ms"
        );
        let r = timeout_rule(&f, &hnsw(Some("64")), &Thresholds::default()).unwrap();
        assert_eq!(
            r.text,
            "87 of 90 failures are grpc:DEADLINE_EXCEEDED/timeout at 200 users: the server is queueing requests; query node queue wait 4.0 ms; lower the load or add query nodes (raise requestTimeout, now 10s, only if such waits are acceptable)"
        );
        f.failures_by_kind = vec![("grpc:UNAVAILABLE".into(), 90)];
        assert_eq!(timeout_rule(&f, &hnsw(None), &Thresholds::default()), None);
    }

    fn restart(pod: &str, reason: Option<&str>, exit_code: Option<i32>) -> ContainerRestart {
        ContainerRestart {
            pod: pod.into(),
            container: "milvus".into(),
            second: 14.0,
            restarts: 1,
            reason: reason.map(str::to_string),
            exit_code,
        }
    }

    #[test]
    fn a_pod_oom_killed_during_a_stage_makes_memory_its_limit_and_shows_in_the_evidence() {
        let quiet = facts(0.5, GIB, 3.0);
        let before = stage_verdict(&quiet, &Thresholds::default());
        assert_eq!(before.resource, Resource::None);
        let mut f = quiet.clone();
        f.restarts = vec![restart("milvus-0", Some("OOMKilled"), Some(137))];
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::ServerMemory);
        assert_eq!(
            v.evidence,
            "Milvus pod milvus-0 restarted (OOMKilled) during this stage at 200 users; Milvus used 0.50 of 2.00 cores (25 %), peak memory 1.0 GiB of 8.0 GiB (12 %); query node queue wait 4.0 ms"
        );
        assert!(before.evidence.starts_with("nothing near its limit"));
        let r = oom_rule(&f, &hnsw(Some("64"))).unwrap();
        assert_eq!(
            r.text,
            "Milvus pod milvus-0 was OOM-killed at 200 users: raise its memory limit, use a quantised index (IVF_SQ8 instead of HNSW), or split the data into partitions and load only those searched"
        );
        assert!(
            recommendations(&f, &hnsw(Some("64")), &Thresholds::default())
                .iter()
                .any(|r| r.rule == "oom")
        );
        assert_eq!(oom_rule(&quiet, &hnsw(None)), None);
    }

    #[test]
    fn any_other_restart_is_added_to_the_evidence_without_changing_the_verdict() {
        let mut f = facts(0.5, GIB, 3.0);
        f.restarts = vec![
            restart("milvus-querynode-1", Some("Error"), Some(2)),
            ContainerRestart {
                restarts: 3,
                ..restart("milvus-proxy-0", None, Some(1))
            },
        ];
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::None);
        assert!(
            v.evidence.ends_with(
                "; Milvus pod milvus-querynode-1 restarted (Error) during this stage; Milvus pod milvus-proxy-0 restarted 3 times (exit code 1) during this stage"
            ),
            "{}",
            v.evidence
        );
        assert_eq!(oom_rule(&f, &hnsw(None)), None);
        // Failures stay the verdict when the stage had them; the OOM kill is their context.
        f.restarts = vec![restart("milvus-0", Some("OOMKilled"), None)];
        f.failures = 100;
        f.error_ratio = 0.1;
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::Errors);
        assert!(
            v.evidence
                .ends_with("; Milvus pod milvus-0 restarted (OOMKilled) during this stage"),
            "{}",
            v.evidence
        );
    }

    #[test]
    fn a_saturated_client_is_the_verdict_and_says_what_the_server_did_too() {
        let mut f = facts(1.0, GIB, 12.0);
        f.client_saturated = true;
        f.client_cores = Some(1.85);
        f.client_cores_available = Some(2.0);
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::Client);
        assert_eq!(
            v.evidence,
            "the load generator used 1.85 of 2.00 cores, so this stage measures the client, not Milvus; Milvus used 1.00 of 2.00 cores (50 %)"
        );
        let r = client_rule(&f).unwrap();
        assert!(
            r.text.starts_with(
                "the load generator used 1.85 of 2.00 cores at 200 users: run more workers"
            ),
            "{}",
            r.text
        );
        f.client_saturated = false;
        assert_eq!(client_rule(&f), None);
    }

    #[test]
    fn a_stage_with_room_everywhere_is_none_and_an_unobserved_one_says_why() {
        let v = stage_verdict(&facts(0.4, GIB, 3.0), &Thresholds::default());
        assert_eq!(v.resource, Resource::None);
        assert_eq!(
            v.evidence,
            "nothing near its limit at 200 users: Milvus used 0.40 of 2.00 cores (20 %), peak memory 1.0 GiB of 8.0 GiB (12 %); query node queue wait 4.0 ms"
        );
        let mut f = facts(0.4, GIB, 3.0);
        f.server = None;
        f.server_note = Some(
            "not observed: cannot connect to http://127.0.0.1:1/metrics: Connection refused".into(),
        );
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::NotObserved);
        assert_eq!(
            v.evidence,
            "server not observed: cannot connect to http://127.0.0.1:1/metrics: Connection refused; the load generator used 0.30 cores, 0.0 % of requests failed: neither is a limit"
        );
    }

    #[test]
    fn network_is_judged_only_when_the_link_capacity_is_known() {
        let mut f = facts(0.4, GIB, 3.0);
        if let Some(s) = f.server.as_mut() {
            s.received_bytes_per_second = Some(20.0 * 1024.0 * 1024.0);
            s.sent_bytes_per_second = Some(120.0 * 1024.0 * 1024.0);
        }
        assert_eq!(
            stage_verdict(&f, &Thresholds::default()).resource,
            Resource::None
        );
        let th = Thresholds {
            link_bytes_per_second: Some(125.0 * 1024.0 * 1024.0),
            ..Thresholds::default()
        };
        let v = stage_verdict(&f, &th);
        assert_eq!(v.resource, Resource::Network);
        assert_eq!(
            v.evidence,
            "at 200 users, the proxy sent 120 MiB/s (received 20 MiB/s) on a 125 MiB/s link (1.05 Gbit/s, 96 %): P95 3.0 ms"
        );
    }

    #[test]
    fn a_full_duplex_link_is_full_when_one_direction_is_not_when_both_add_up_to_it() {
        let th = Thresholds {
            link_bytes_per_second: Some(125e6),
            ..Thresholds::default()
        };
        let mut f = facts(0.4, GIB, 3.0);
        if let Some(s) = f.server.as_mut() {
            s.received_bytes_per_second = Some(70e6);
            s.sent_bytes_per_second = Some(70e6);
        }
        assert_eq!(stage_verdict(&f, &th).resource, Resource::None);
        if let Some(s) = f.server.as_mut() {
            s.received_bytes_per_second = Some(115e6);
        }
        let v = stage_verdict(&f, &th);
        assert_eq!(v.resource, Resource::Network);
        assert!(
            v.evidence.contains(
                "received 110 MiB/s (sent 67 MiB/s) on a 119 MiB/s link (1 Gbit/s, 92 %)"
            ),
            "{}",
            v.evidence
        );
    }

    #[test]
    fn the_link_capacity_of_the_spec_becomes_the_network_threshold() {
        let spec = |metrics: &str| -> StressTestSpec {
            serde_yaml_ng::from_str(&format!(
                "target: {{address: \"10.0.0.5:19530\"{metrics}}}\ncollection: {{name: c, dimension: 8}}\nindex: {{type: HNSW}}\nworkload: {{operations: [{{name: s, weight: 1, search: {{topK: 10}}}}]}}\nstages: [{{duration: 10s, users: 5, spawnRate: 5}}]\n"
            ))
            .unwrap()
        };
        assert_eq!(Thresholds::for_spec(&spec("")), Thresholds::default());
        assert_eq!(
            Thresholds::for_spec(&spec(", metrics: {linkCapacity: 10Gbit}")).link_bytes_per_second,
            Some(1.25e9)
        );
        assert_eq!(
            Thresholds::for_spec(&spec(", metrics: {linkCapacity: 1GiB}")).link_bytes_per_second,
            Some(GIB)
        );
        // An invalid value never gets here (validation refuses it); were it to, it is unknown.
        assert_eq!(
            Thresholds::for_spec(&spec(", metrics: {linkCapacity: fast}")).link_bytes_per_second,
            None
        );
    }

    #[test]
    fn the_source_of_the_capacity_is_named_in_the_evidence() {
        let mut f = facts(0.4, GIB, 3.0);
        f.capacity_source = Some(
            "cores and memory: allocatable of node node-a (the Milvus pods set no limits)".into(),
        );
        let v = stage_verdict(&f, &Thresholds::default());
        assert_eq!(v.resource, Resource::None);
        assert!(
            v.evidence.ends_with(
                "of 2.00 cores (20 %), peak memory 1.0 GiB of 8.0 GiB (12 %); query node queue wait 4.0 ms; cores and memory: allocatable of node node-a (the Milvus pods set no limits)"
            ),
            "{}",
            v.evidence
        );
        f.requests = 100;
        f.failures = 50;
        f.error_ratio = 0.5;
        let errors = stage_verdict(&f, &Thresholds::default());
        assert_eq!(errors.resource, Resource::Errors);
        assert!(
            !errors.evidence.contains("allocatable"),
            "{}",
            errors.evidence
        );
    }

    #[test]
    fn recommendations_go_to_the_saturation_stage_only() {
        let low = StageFacts {
            stage: 0,
            ..facts(0.4, GIB, 3.0)
        };
        let high = StageFacts {
            stage: 1,
            ..facts(1.95, GIB, 15.0)
        };
        let verdicts = judge(
            &[low.clone(), high.clone()],
            &hnsw(Some("64")),
            Some(1),
            &Thresholds::default(),
        );
        assert_eq!(verdicts[0].recommendations, vec![]);
        assert_eq!(verdicts[1].resource, Resource::ServerCpu);
        assert_eq!(
            verdicts[1]
                .recommendations
                .iter()
                .map(|r| r.rule.as_str())
                .collect::<Vec<_>>(),
            ["cpu"]
        );
        // No saturation: the last limited stage gets them.
        let verdicts = judge(
            &[high, low],
            &hnsw(Some("64")),
            None,
            &Thresholds::default(),
        );
        assert_eq!(verdicts[0].recommendations.len(), 1);
        assert!(verdicts[1].recommendations.is_empty());
        let status = verdicts[0].to_status();
        assert_eq!(status.resource, "serverCpu");
        assert_eq!(status.recommendations.len(), 1);
    }

    #[test]
    fn the_search_parameter_is_read_from_the_spec_for_the_index_type() {
        assert_eq!(search_param_name("HNSW"), Some("ef"));
        assert_eq!(search_param_name("ivf_sq8"), Some("nprobe"));
        assert_eq!(search_param_name("DISKANN"), Some("search_list"));
        assert_eq!(search_param_name("FLAT"), None);
    }
}
