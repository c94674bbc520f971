//! Server observation and bottleneck verdicts of `stampede run` against the real local Milvus
//! (scripts/milvus.sh start): metrics scraped from 127.0.0.1:9091 while the stages run.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::*;
use stampede::bottleneck::Resource;
use stampede::result::RunResult;

/// The runs measure CPU: one at a time, so they do not load the machine for each other.
static SERIAL: Mutex<()> = Mutex::new(());

const COLLECTION: &str = "t_observe";

fn manifest(
    dir: &Path,
    name: &str,
    extra_target: &str,
    workload: &str,
    stages: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        r#"apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {{name: {name}}}
spec:
  target: {{address: "{addr}"{extra_target}}}
  collection: {{name: {COLLECTION}, dimension: 32}}
  data:
    rows: 3000
    batchSize: 3000
    vectors: {{distribution: Clustered, clusters: 20, spread: 0.2}}
  index: {{type: HNSW, params: {{M: 8, efConstruction: 64}}}}
  recall: {{sampleQueries: 20, topK: 10, share: 0.2}}
  workload:
    model: Closed
{workload}
    operations:
      - {{name: search, weight: 1, search: {{topK: 10, params: {{ef: 64}}}}}}
  stages:
{stages}
  sla: {{maxErrorRatio: 0.5}}
"#,
        addr = milvus_addr()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary and returns its exit code and the result.
fn run_binary(manifest: &Path, out: &Path, shards: Option<u32>) -> (Option<i32>, RunResult) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stampede"));
    cmd.args(["run", "--quiet", "-f"])
        .arg(manifest)
        .arg("-o")
        .arg(out);
    if let Some(n) = shards {
        cmd.args(["--shards", &n.to_string()]);
    }
    let output = cmd.output().unwrap();
    assert!(
        output.status.code() != Some(2),
        "stampede run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), read_result(out))
}

/// A process's `VmRSS` and `VmHWM` (peak) in bytes, from /proc/<pid>/status.
fn rss_of(pid: i32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|k| k * 1024.0)
    };
    Some((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// Pids of a process group, from the 5th field of /proc/<pid>/stat.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(2)
            .and_then(|g| g.parse::<i32>().ok())
            == Some(pgid)
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_run_with_observation_on_shows_server_cpu_under_load_and_memory_within_the_servers_rss() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "observe-on",
        "",
        "    waitTime: {min: 0ms, max: 5ms}",
        "    - {duration: 6s, users: 2, spawnRate: 20}\n    - {duration: 6s, users: 12, spawnRate: 50}",
    );
    let out = dir.path().join("out");
    let (code, r) = run_binary(&m, &out, Some(2));
    assert_eq!(code, Some(0));

    // Observation defaults to the local server's metrics endpoint for a loopback target.
    let srv = &r.server;
    assert!(srv.enabled && srv.observed, "{:?}", srv.reason);
    assert_eq!(srv.endpoints, ["http://127.0.0.1:9091/metrics"]);
    assert!(
        srv.signals
            .contains(&"process_cpu_seconds_total".to_string())
    );
    assert!(srv.signals.contains(&"milvus_proxy_sq_latency".to_string()));
    assert!(
        srv.signals
            .contains(&"milvus_querynode_sq_queue_latency".to_string())
    );
    assert_eq!(srv.missing, Vec::<String>::new());
    assert!(srv.shares_host_with_client);
    // One scrape every 2 s over 12 s of stages (+ the first and the last).
    assert!(srv.series.len() >= 6, "{} scrapes", srv.series.len());
    assert_eq!(srv.stages.len(), 2);
    for s in &srv.stages {
        assert!(s.observed, "stage {}: {:?}", s.stage + 1, s.note);
        assert!(s.samples >= 1);
        assert!(s.search_latency_ms.is_some_and(|l| l > 0.0), "{s:?}");
    }
    let loaded = &srv.stages[1];
    let cpu = loaded.cpu_cores_mean.unwrap();
    assert!(cpu > 0.0, "Milvus used {cpu} cores under load");
    assert!(cpu <= srv.cores_available.unwrap() + 0.05);
    eprintln!(
        "stage CPU: {:?}; peak RSS: {:?}; host busy: {:?}",
        srv.stages
            .iter()
            .map(|s| s.cpu_cores_mean)
            .collect::<Vec<_>>(),
        srv.stages
            .iter()
            .map(|s| s.resident_bytes_peak)
            .collect::<Vec<_>>(),
        srv.stages
            .iter()
            .map(|s| s.host_busy_cores_mean)
            .collect::<Vec<_>>()
    );

    // process_resident_memory_bytes is the RSS of the `milvus` process itself. The process
    // group started by scripts/milvus.sh also holds the Python `milvus-server` wrapper, which
    // the metrics do not cover, so the comparison is with the group's largest process (the
    // server), not with the sum.
    let members = group_members(milvus_process_group());
    let (rss, hwm) = members
        .iter()
        .filter_map(|&p| rss_of(p))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .expect("no process of the Milvus group is readable");
    let peak = srv
        .stages
        .iter()
        .filter_map(|s| s.resident_bytes_peak)
        .fold(0.0, f64::max);
    eprintln!("Milvus RSS from /proc: now {rss} B, peak {hwm} B; observed peak {peak} B");
    assert!(peak > 0.0);
    assert!(
        peak <= hwm * 1.01,
        "observed {peak} B above the process's peak RSS {hwm} B"
    );
    assert!(
        peak >= rss * 0.5,
        "observed {peak} B, far below the RSS now ({rss} B)"
    );

    // Every stage has a verdict with evidence; the report shows the server charts.
    assert_eq!(r.bottlenecks.len(), 2);
    assert!(r.bottlenecks.iter().all(|b| !b.evidence.is_empty()));
    assert!(
        r.bottlenecks
            .iter()
            .all(|b| b.resource != Resource::NotObserved)
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Milvus CPU"));
    assert!(html.contains("Milvus memory"));
    assert!(html.contains("data-bottleneck="));
}

#[test]
fn a_stage_that_saturates_the_machine_is_attributed_to_cpu() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "observe-saturate",
        "",
        "    waitTime: {min: 0ms, max: 0ms}",
        "    - {duration: 5s, users: 1, spawnRate: 10}\n    - {duration: 8s, users: 64, spawnRate: 200}",
    );
    // Heavy searches (10 queries of top 100 at ef 512 per request): the server's work per
    // request dwarfs the client's, so Milvus, not the load generator, runs out of CPU.
    let text = std::fs::read_to_string(&m).unwrap().replace(
        "search: {topK: 10, params: {ef: 64}}",
        "search: {topK: 100, nq: 10, params: {ef: 512}}",
    );
    std::fs::write(&m, text).unwrap();
    let out = dir.path().join("out");
    let (code, r) = run_binary(&m, &out, Some(2));
    assert_eq!(code, Some(0));
    let stage = &r.server.stages[1];
    let b = &r.bottlenecks[1];
    eprintln!(
        "saturated stage: Milvus {:?} cores, host busy {:?}, client {:?}; verdict {:?}: {}; recommendations {:?}",
        stage.cpu_cores_mean,
        stage.host_busy_cores_mean,
        r.client_cpu
            .iter()
            .filter(|c| c.stage == 1)
            .map(|c| c.cores_used)
            .collect::<Vec<_>>(),
        b.resource,
        b.evidence,
        b.recommendations
    );
    let cpu = stage.cpu_cores_mean.unwrap();
    let client = {
        let c: Vec<f64> = r
            .client_cpu
            .iter()
            .filter(|c| c.stage == 1)
            .map(|c| c.cores_used)
            .collect();
        c.iter().sum::<f64>() / c.len().max(1) as f64
    };
    // Other work on this shared machine (parallel builds, other tests) takes cores Milvus would
    // otherwise get; the verdict names it, and then the bar for Milvus's own share is lower.
    let others = stage.host_busy_cores_mean.unwrap_or(0.0) - cpu - client;
    if others < 0.5 {
        assert!(
            cpu > 1.0,
            "Milvus used only {cpu} cores with 64 users and no wait"
        );
    } else {
        assert!(
            cpu > 0.5,
            "Milvus used only {cpu} cores (other processes {others})"
        );
        assert!(b.evidence.contains("other processes"), "{}", b.evidence);
    }
    assert!(
        matches!(b.resource, Resource::ServerCpu | Resource::Client),
        "{:?}: {}",
        b.resource,
        b.evidence
    );
    if b.resource == Resource::ServerCpu {
        assert!(
            b.evidence.starts_with("at 64 users, P95 ") && b.evidence.contains("Milvus used "),
            "{}",
            b.evidence
        );
    } else {
        // The load generator's self-check fired too: the verdict says what Milvus did as well.
        assert!(b.evidence.contains("Milvus used "), "{}", b.evidence);
    }
    // The first stage (one user) is nowhere near a limit, unless other work on this shared
    // machine took the cores (then the verdict must say so).
    let first = &r.server.stages[0];
    let first_client: f64 = {
        let c: Vec<f64> = r
            .client_cpu
            .iter()
            .filter(|c| c.stage == 0)
            .map(|c| c.cores_used)
            .collect();
        c.iter().sum::<f64>() / c.len().max(1) as f64
    };
    let first_others = first.host_busy_cores_mean.unwrap_or(0.0)
        - first.cpu_cores_mean.unwrap_or(0.0)
        - first_client;
    if first_others < 0.5 {
        assert_eq!(
            r.bottlenecks[0].resource,
            Resource::None,
            "{}",
            r.bottlenecks[0].evidence
        );
    } else {
        assert!(
            r.bottlenecks[0].evidence.contains("other processes"),
            "{}",
            r.bottlenecks[0].evidence
        );
    }
}

#[test]
fn with_the_metrics_endpoint_unreachable_the_run_completes_and_says_not_observed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/metrics");
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "observe-closed",
        &format!(", metrics: {{urls: [\"{url}\"], interval: 1s}}"),
        "    waitTime: {min: 0ms, max: 5ms}",
        "    - {duration: 5s, users: 4, spawnRate: 20}",
    );
    let out = dir.path().join("out");
    let (code, r) = run_binary(&m, &out, Some(1));
    assert!(matches!(code, Some(0 | 1)), "exit {code:?}");
    assert!(r.complete, "{:?}", r.incomplete_reason);
    assert!(r.totals.requests > 0);

    let srv = &r.server;
    assert!(srv.enabled);
    assert!(!srv.observed);
    assert_eq!(srv.endpoints.as_slice(), std::slice::from_ref(&url));
    let reason = srv.reason.as_deref().unwrap();
    assert!(
        reason.starts_with(&format!("not observed: cannot connect to {url}: ")),
        "{reason}"
    );
    assert_eq!(srv.stages.len(), 1);
    assert!(!srv.stages[0].observed);
    assert_eq!(srv.stages[0].note.as_deref(), Some(reason));
    let b = &r.bottlenecks[0];
    assert_eq!(b.resource, Resource::NotObserved);
    assert!(
        b.evidence.starts_with(&format!("server {reason}")),
        "{}",
        b.evidence
    );

    // result.json says it in so many words; the report too.
    let json = std::fs::read_to_string(out.join("result.json")).unwrap();
    assert!(json.contains("\"not observed: cannot connect to"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("id=\"server-not-observed\""));
}
