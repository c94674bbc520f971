//! Server observation in a cluster: while a test's stages run, the controller finds the Milvus
//! pods by `spec.target.metrics.selector` (in the test's namespace), scrapes their metrics
//! endpoints every `spec.target.metrics.interval`, and records restarts and OOM kills of their
//! containers from the pods' container statuses. One scraper task per test, kept in the
//! controller's [`Context`](crate::controller::reconcile::Context) and read when the test is
//! analysed; the time axis is seconds since the test's start instant (the
//! `stampede.dev/start-unix-ms` annotation), the clock the workers' stages follow.
//!
//! Observation never fails a test: a pod list or a scrape that fails is a series point with its
//! reason ("not observed: …" when nothing ever answered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::observe::{
    self, ContainerRestart, DEFAULT_INTERVAL, ServerObservation, ServerSample, TimedReading,
};
use crate::spec::MetricsSpec;

/// What to scrape in the cluster, from `spec.target.metrics` (pure).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPlan {
    /// Label selector of the Milvus pods.
    pub selector: String,
    /// Metrics port of the pods (default 9091).
    pub port: Option<u16>,
    /// Metrics path (default `/metrics`).
    pub path: Option<String>,
    /// Time between scrapes.
    pub interval: Duration,
}

/// The cluster plan of a spec: None when `selector` is not set or `enabled` is false.
pub fn cluster_plan(metrics: Option<&MetricsSpec>) -> Option<ClusterPlan> {
    let m = metrics?;
    if m.enabled == Some(false) {
        return None;
    }
    let selector = m
        .selector
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())?;
    Some(ClusterPlan {
        selector: selector.to_string(),
        port: m.port,
        path: m.path.clone(),
        interval: m
            .interval
            .map_or(DEFAULT_INTERVAL, |d| d.get())
            .max(Duration::from_millis(100)),
    })
}

/// A Kubernetes quantity as a number: `500m` → 0.5, `2` → 2, `8Gi` → 8 × 2³⁰, `1G` → 10⁹.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let units: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse().ok()
}

/// The CPU cores and memory (bytes) the running Milvus pods may use: the sums of their
/// containers' limits, each only when every container of every such pod sets it.
pub fn pod_limits(pods: &[Pod]) -> (Option<f64>, Option<f64>) {
    let containers: Vec<_> = running(pods)
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| s.containers.iter())
        .collect();
    let sum = |key: &str| -> Option<f64> {
        if containers.is_empty() {
            return None;
        }
        containers
            .iter()
            .map(|c| {
                let limits = c.resources.as_ref()?.limits.as_ref()?;
                parse_quantity(&limits.get(key)?.0)
            })
            .sum()
    };
    (sum("cpu"), sum("memory"))
}

fn running(pods: &[Pod]) -> impl Iterator<Item = &Pod> {
    pods.iter().filter(|p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.metadata.deletion_timestamp.is_none()
    })
}

/// The distinct nodes the running pods are on, sorted (pods not yet bound to a node are left
/// out).
fn nodes_of(pods: &[Pod]) -> Vec<String> {
    let mut names: Vec<String> = running(pods)
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The nodes whose allocatable resources are needed: those the running Milvus pods are on, when
/// the pods' limits leave the CPU or the memory unknown; none when the limits say both.
pub fn nodes_to_read(pods: &[Pod]) -> Vec<String> {
    match pod_limits(pods) {
        (Some(_), Some(_)) => Vec::new(),
        _ => nodes_of(pods),
    }
}

/// The capacity of the server (the CPU cores and memory the Milvus pods may use) and where it
/// came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Capacity {
    /// Cores, when known.
    pub cores: Option<f64>,
    /// Memory, bytes, when known.
    pub memory_bytes: Option<f64>,
    /// Where the figures came from, or why one is unknown, in words (None without running pods).
    pub source: Option<String>,
}

/// Where one capacity figure came from.
#[derive(Clone, Debug, PartialEq)]
enum Origin {
    Limits,
    Nodes(Vec<String>),
    Unknown(String),
}

fn node_words(names: &[String]) -> String {
    match names {
        [one] => format!("node {one}"),
        _ => format!("nodes {}", names.join(", ")),
    }
}

/// The capacity of the running Milvus pods (pure): per resource, the sum of their containers'
/// limits when every container sets one; otherwise the sum of the allocatable resources of the
/// distinct nodes they run on (`nodes`, as read; `errors`: (node, why) for those that could not
/// be read). Allocatable is an upper bound: other pods on those nodes share it.
pub fn capacity(pods: &[Pod], nodes: &[Node], errors: &[(String, String)]) -> Capacity {
    if running(pods).next().is_none() {
        return Capacity::default();
    }
    let (cpu_limit, memory_limit) = pod_limits(pods);
    let names = nodes_of(pods);
    let unbound: Vec<String> = running(pods)
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_none_or(str::is_empty)
        })
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    let allocatable = |key: &str| -> Result<f64, String> {
        if let Some(pod) = unbound.first() {
            return Err(format!("pod {pod} has no node"));
        }
        let mut sum = 0.0;
        for name in &names {
            if let Some((_, why)) = errors.iter().find(|(n, _)| n == name) {
                return Err(format!("node {name} could not be read: {why}"));
            }
            let node = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(name.as_str()))
                .ok_or_else(|| format!("node {name} was not read"))?;
            let value = node
                .status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get(key))
                .and_then(|q| parse_quantity(&q.0))
                .ok_or_else(|| format!("node {name} reports no allocatable {key}"))?;
            sum += value;
        }
        Ok(sum)
    };
    let pick = |limit: Option<f64>, key: &str| -> (Option<f64>, Origin) {
        match limit {
            Some(v) => (Some(v), Origin::Limits),
            None => match allocatable(key) {
                Ok(v) => (Some(v), Origin::Nodes(names.clone())),
                Err(why) => (None, Origin::Unknown(why)),
            },
        }
    };
    let (cores, cpu_from) = pick(cpu_limit, "cpu");
    let (memory_bytes, memory_from) = pick(memory_limit, "memory");
    let words = |from: &Origin, limit: &str| match from {
        Origin::Limits => "the Milvus pods' limits".to_string(),
        Origin::Nodes(n) => format!(
            "allocatable of {} (the Milvus pods set no {limit})",
            node_words(n)
        ),
        Origin::Unknown(why) => format!("unknown (the Milvus pods set no {limit} and {why})"),
    };
    let source = if cpu_from == memory_from {
        format!("cores and memory: {}", words(&cpu_from, "limits"))
    } else {
        format!(
            "cores: {}; memory: {}",
            words(&cpu_from, "CPU limit"),
            words(&memory_from, "memory limit")
        )
    };
    Capacity {
        cores,
        memory_bytes,
        source: Some(source),
    }
}

/// Reads the nodes by name, each with at most `timeout`: the nodes read and, for the others,
/// why not (e.g. 403 when the controller's RBAC does not grant `get` on nodes).
async fn read_nodes(
    api: &Api<Node>,
    names: &[String],
    timeout: Duration,
) -> (Vec<Node>, Vec<(String, String)>) {
    let mut nodes = Vec::new();
    let mut errors = Vec::new();
    for name in names {
        match tokio::time::timeout(timeout, api.get(name)).await {
            Ok(Ok(node)) => nodes.push(node),
            Ok(Err(e)) => errors.push((name.clone(), e.to_string())),
            Err(_) => errors.push((
                name.clone(),
                format!("no answer in {} ms", timeout.as_millis()),
            )),
        }
    }
    for (name, why) in &errors {
        tracing::debug!(node = %name, error = %why, "cannot read the node of a Milvus pod; its allocatable CPU and memory stay unknown");
    }
    (nodes, errors)
}

/// What the scraper has seen so far.
#[derive(Default)]
struct Seen {
    capacity: Capacity,
    series: Vec<ServerSample>,
    restarts: Vec<ContainerRestart>,
    endpoints: Vec<String>,
    signals: Vec<String>,
    missing: Vec<String>,
    observed: bool,
    first_error: Option<String>,
}

/// A running per-test scraper; dropping it (or [`ClusterObserver::stop`]) ends its task.
pub struct ClusterObserver {
    /// The start instant it times samples from (ms since the Unix epoch).
    pub start_unix_ms: i64,
    plan: ClusterPlan,
    seen: Arc<Mutex<Seen>>,
    stop: watch::Sender<bool>,
}

impl ClusterObserver {
    /// Starts scraping the pods of `plan` in `namespace`, timed from `start_unix_ms`. The first
    /// look happens at once (a baseline for restarts and CPU counters).
    pub fn start(
        client: Client,
        namespace: &str,
        plan: ClusterPlan,
        start_unix_ms: i64,
    ) -> ClusterObserver {
        let (stop, stop_rx) = watch::channel(false);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let nodes: Api<Node> = Api::all(client);
        tokio::spawn(scrape_pods(
            pods,
            nodes,
            plan.clone(),
            start_unix_ms,
            seen.clone(),
            stop_rx,
        ));
        ClusterObserver {
            start_unix_ms,
            plan,
            seen,
            stop,
        }
    }

    /// What was observed so far (series and restarts; the per-stage figures are computed by
    /// [`crate::result::attach_server`]).
    pub fn snapshot(&self) -> ServerObservation {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let reason = (!seen.observed).then(|| {
            format!(
                "not observed: {}",
                seen.first_error.clone().unwrap_or_else(|| {
                    format!("no scrape of the pods `{}` completed", self.plan.selector)
                })
            )
        });
        ServerObservation {
            enabled: true,
            observed: seen.observed,
            reason,
            endpoints: seen.endpoints.clone(),
            interval_seconds: self.plan.interval.as_secs_f64(),
            signals: seen.signals.clone(),
            missing: seen.missing.clone(),
            cores_available: seen.capacity.cores,
            memory_limit_bytes: seen.capacity.memory_bytes,
            capacity_source: seen.capacity.source.clone(),
            shares_host_with_client: false,
            series: seen.series.clone(),
            restarts: seen.restarts.clone(),
            stages: Vec::new(),
        }
    }

    /// Stops the scraper task.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for ClusterObserver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The observation to hand to the analysis when no scraper ran for the test in this process
/// (the controller restarted after the stages).
pub fn lost_observation(plan: &ClusterPlan) -> ServerObservation {
    ServerObservation {
        enabled: true,
        observed: false,
        reason: Some(
            "not observed: the controller restarted after the stages and lost its scrapes of the Milvus pods"
                .to_string(),
        ),
        interval_seconds: plan.interval.as_secs_f64(),
        ..ServerObservation::default()
    }
}

fn seconds_since(start_unix_ms: i64) -> f64 {
    (Timestamp::now().as_millisecond() - start_unix_ms) as f64 / 1000.0
}

async fn scrape_pods(
    pods: Api<Pod>,
    nodes_api: Api<Node>,
    plan: ClusterPlan,
    start_unix_ms: i64,
    seen: Arc<Mutex<Seen>>,
    mut stop: watch::Receiver<bool>,
) {
    let timeout = observe::scrape_timeout(plan.interval);
    let mut previous: HashMap<String, TimedReading> = HashMap::new();
    let mut last_pods: Option<Vec<Pod>> = None;
    // The nodes last read (by name), read again only when the set the pods need changes.
    let mut nodes_read: Option<Vec<String>> = None;
    let mut nodes: Vec<Node> = Vec::new();
    let mut node_errors: Vec<(String, String)> = Vec::new();
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let listed = tokio::time::timeout(
            timeout,
            pods.list(&ListParams::default().labels(&plan.selector)),
        )
        .await;
        let second = seconds_since(start_unix_ms);
        let items = match listed {
            Ok(Ok(list)) => list.items,
            Ok(Err(e)) => {
                record_error(
                    &seen,
                    second,
                    format!("cannot list the pods `{}`: {e}", plan.selector),
                );
                continue;
            }
            Err(_) => {
                record_error(
                    &seen,
                    second,
                    format!(
                        "listing the pods `{}` took longer than {} ms",
                        plan.selector,
                        timeout.as_millis()
                    ),
                );
                continue;
            }
        };
        let restarts = last_pods
            .as_ref()
            .map(|before| observe::container_restarts(before, &items, second))
            .unwrap_or_default();
        for r in &restarts {
            tracing::info!(pod = %r.pod, container = %r.container, reason = ?r.reason, second = r.second, "Milvus container restarted during the test");
        }
        let urls = observe::pod_metrics_urls(&items, plan.port, plan.path.as_deref());
        let wanted = nodes_to_read(&items);
        if nodes_read.as_ref() != Some(&wanted) {
            (nodes, node_errors) = read_nodes(&nodes_api, &wanted, timeout).await;
            nodes_read = Some(wanted);
        }
        let capacity = capacity(&items, &nodes, &node_errors);
        last_pods = Some(items);
        if !urls.is_empty() {
            seen.lock().unwrap_or_else(|e| e.into_inner()).capacity = capacity;
        }
        if urls.is_empty() {
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            s.restarts.extend(restarts);
            drop(s);
            record_error(
                &seen,
                second,
                format!(
                    "no running pod with an IP matches the selector `{}`",
                    plan.selector
                ),
            );
            continue;
        }
        let current = observe::scrape_all(&urls, second, timeout).await;
        let before: Vec<Option<TimedReading>> =
            urls.iter().map(|u| previous.get(u).cloned()).collect();
        let point = observe::series_point(second, &before, &current);
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        s.restarts.extend(restarts);
        s.series.push(point);
        for u in &urls {
            if !s.endpoints.contains(u) {
                s.endpoints.push(u.clone());
            }
        }
        for c in current {
            match c {
                Ok(r) => {
                    for n in &r.reading.names {
                        if !s.signals.contains(n) {
                            s.signals.push(n.clone());
                        }
                    }
                    s.missing = observe::missing_signals(&r.reading);
                    s.observed = true;
                    previous.insert(r.endpoint.clone(), r);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "metrics scrape failed");
                    if s.first_error.is_none() {
                        s.first_error = Some(e);
                    }
                }
            }
        }
    }
}

fn record_error(seen: &Arc<Mutex<Seen>>, second: f64, error: String) {
    tracing::debug!(%error, "server observation");
    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
    s.series.push(ServerSample {
        second,
        error: Some(error.clone()),
        ..ServerSample::default()
    });
    if s.first_error.is_none() {
        s.first_error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_the_limits_of_running_pods_are_read() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("8Gi"), Some(8.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("512Mi"), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("lots"), None);
        let pod = |phase: &str, limits: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "m"},
                "spec": {"containers": [{"name": "milvus", "resources": {"limits": limits}}]},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let pods = [
            pod("Running", serde_json::json!({"cpu": "2", "memory": "8Gi"})),
            pod(
                "Running",
                serde_json::json!({"cpu": "1500m", "memory": "4Gi"}),
            ),
            pod("Pending", serde_json::json!({"cpu": "8"})),
        ];
        assert_eq!(
            pod_limits(&pods),
            (Some(3.5), Some(12.0 * 1024.0 * 1024.0 * 1024.0))
        );
        // One container without a memory limit: the pods' memory is not bounded.
        let partly = [
            pods[0].clone(),
            pod("Running", serde_json::json!({"cpu": "1"})),
        ];
        assert_eq!(pod_limits(&partly), (Some(3.0), None));
        assert_eq!(pod_limits(&[]), (None, None));
    }

    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

    fn pod_on(name: &str, node: Option<&str>, limits: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "milvus", "resources": {"limits": limits}}],
            },
            "status": {"phase": "Running"},
        }))
        .unwrap()
    }

    fn node(name: &str, allocatable: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"allocatable": allocatable},
        }))
        .unwrap()
    }

    #[test]
    fn pods_without_limits_get_the_allocatable_of_their_distinct_nodes() {
        let none = serde_json::json!({});
        let pods = [
            pod_on("milvus-proxy", Some("node-a"), none.clone()),
            pod_on("milvus-querynode-0", Some("node-b"), none.clone()),
            pod_on("milvus-querynode-1", Some("node-a"), none.clone()),
        ];
        assert_eq!(nodes_to_read(&pods), ["node-a", "node-b"]);
        let nodes = [
            node("node-a", serde_json::json!({"cpu": "2", "memory": "8Gi"})),
            node(
                "node-b",
                serde_json::json!({"cpu": "3500m", "memory": "4Gi"}),
            ),
        ];
        assert_eq!(
            capacity(&pods, &nodes, &[]),
            Capacity {
                cores: Some(5.5),
                memory_bytes: Some(12.0 * GIB),
                source: Some(
                    "cores and memory: allocatable of nodes node-a, node-b (the Milvus pods set no limits)"
                        .into()
                ),
            }
        );
    }

    #[test]
    fn pod_limits_win_over_node_allocatable_resource_by_resource() {
        let both = [pod_on(
            "m",
            Some("node-a"),
            serde_json::json!({"cpu": "4", "memory": "16Gi"}),
        )];
        assert_eq!(nodes_to_read(&both), Vec::<String>::new());
        let nodes = [node(
            "node-a",
            serde_json::json!({"cpu": "2", "memory": "8Gi"}),
        )];
        assert_eq!(
            capacity(&both, &[], &[]),
            Capacity {
                cores: Some(4.0),
                memory_bytes: Some(16.0 * GIB),
                source: Some("cores and memory: the Milvus pods' limits".into()),
            }
        );
        let cpu_only = [pod_on("m", Some("node-a"), serde_json::json!({"cpu": "1"}))];
        assert_eq!(nodes_to_read(&cpu_only), ["node-a"]);
        assert_eq!(
            capacity(&cpu_only, &nodes, &[]),
            Capacity {
                cores: Some(1.0),
                memory_bytes: Some(8.0 * GIB),
                source: Some(
                    "cores: the Milvus pods' limits; memory: allocatable of node node-a (the Milvus pods set no memory limit)"
                        .into()
                ),
            }
        );
    }

    #[test]
    fn a_node_that_cannot_be_read_leaves_the_capacity_unknown_with_the_reason() {
        let pods = [pod_on("m", Some("node-a"), serde_json::json!({}))];
        let forbidden = [(
            "node-a".to_string(),
            "nodes \"node-a\" is forbidden: 403".to_string(),
        )];
        assert_eq!(
            capacity(&pods, &[], &forbidden),
            Capacity {
                cores: None,
                memory_bytes: None,
                source: Some(
                    "cores and memory: unknown (the Milvus pods set no limits and node node-a could not be read: nodes \"node-a\" is forbidden: 403)"
                        .into()
                ),
            }
        );
        // A node without an allocatable memory figure: only the CPU is known.
        let partial = [node("node-a", serde_json::json!({"cpu": "8"}))];
        let c = capacity(&pods, &partial, &[]);
        assert_eq!((c.cores, c.memory_bytes), (Some(8.0), None));
        assert_eq!(
            c.source.as_deref(),
            Some(
                "cores: allocatable of node node-a (the Milvus pods set no CPU limit); memory: unknown (the Milvus pods set no memory limit and node node-a reports no allocatable memory)"
            )
        );
        // A running pod not bound to a node: its node's share is unknown.
        let unbound = [pods[0].clone(), pod_on("n", None, serde_json::json!({}))];
        let c = capacity(&unbound, &partial, &[]);
        assert_eq!((c.cores, c.memory_bytes), (None, None));
        assert!(c.source.unwrap().contains("pod n has no node"));
        assert_eq!(capacity(&[], &partial, &[]), Capacity::default());
    }

    #[test]
    fn only_a_selector_makes_a_cluster_plan() {
        assert_eq!(cluster_plan(None), None);
        let urls = MetricsSpec {
            urls: vec!["http://10.0.0.5:9091/metrics".into()],
            ..MetricsSpec::default()
        };
        assert_eq!(cluster_plan(Some(&urls)), None);
        let m = MetricsSpec {
            selector: Some("app.kubernetes.io/name=milvus".into()),
            port: Some(9100),
            ..MetricsSpec::default()
        };
        assert_eq!(
            cluster_plan(Some(&m)),
            Some(ClusterPlan {
                selector: "app.kubernetes.io/name=milvus".into(),
                port: Some(9100),
                path: None,
                interval: DEFAULT_INTERVAL,
            })
        );
        let off = MetricsSpec {
            enabled: Some(false),
            ..m
        };
        assert_eq!(cluster_plan(Some(&off)), None);
    }
}
