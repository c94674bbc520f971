//! The controller's own cost while it drives a test with many workers: `stampede controller`
//! against the in-repo API test server, the kubelet stand-in running 20 real worker processes
//! (one user each, so Milvus is not the subject), and the local Milvus. Prints the controller
//! process's CPU seconds and peak RSS, status writes per minute and snapshot pulls.
//!
//! ```sh
//! scripts/milvus.sh start
//! cargo bench --bench controller            # STAMPEDE_BENCH_WORKERS=20 STAMPEDE_BENCH_STAGE_S=20
//! ```

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::apiserver::ApiServer;
use support::kubelet::Kubelet;

const STAMPEDE: &str = env!("CARGO_BIN_EXE_stampede");
const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/stresstest.yaml");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (utime + stime in seconds, VmHWM in MB, VmRSS in MB) of a process.
fn proc_usage(pid: u32) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0], utime is field 14 overall → [11], stime [12].
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks / 100.0, kb("VmHWM:") / 1024.0, kb("VmRSS:") / 1024.0)
}

/// A sample of the controller's /metrics.
fn metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return f64::NAN;
    };
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    let workers = env_or("STAMPEDE_BENCH_WORKERS", 20);
    let stage_s = env_or("STAMPEDE_BENCH_STAGE_S", 20);
    let server = ApiServer::start();
    let kubelet = Kubelet::start(&server, STAMPEDE.into());
    server.kubectl_ok(&["apply", "-f", CRD]);
    let stderr = tempfile::NamedTempFile::new().expect("temp file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut controller = Command::new(STAMPEDE)
        .args([
            "controller",
            "--health-addr",
            &format!("127.0.0.1:{port}"),
            "--dashboard-addr",
            "off",
        ])
        .env("KUBECONFIG", server.kubeconfig_path())
        .env("STAMPEDE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr.reopen().expect("reopen"))
        .spawn()
        .expect("start the controller");
    let pid = controller.id();

    let users = workers;
    let manifest = format!(
        r#"apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {{name: bench-controller}}
spec:
  target: {{address: "{addr}"}}
  collection: {{name: bench_controller, dimension: 16, onExisting: Recreate}}
  data: {{rows: 1000, batchSize: 1000}}
  index: {{type: FLAT}}
  workload:
    model: Closed
    waitTime: {{min: 50ms, max: 100ms}}
    operations: [{{name: search, weight: 1, search: {{topK: 10}}}}]
  stages:
    - {{duration: {stage_s}s, users: {users}, spawnRate: 100}}
    - {{duration: {stage_s}s, users: {users}, spawnRate: 100}}
  workers: {{replicas: {workers}}}
  recall: {{sampleQueries: 0}}
"#,
        addr = common::milvus_addr()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.yaml");
    std::fs::write(&path, manifest).expect("write manifest");
    let before = proc_usage(pid);
    let t0 = Instant::now();
    server.kubectl_ok(&["apply", "-f", path.to_str().unwrap_or_default()]);

    let mut running_since: Option<(Instant, (f64, f64, f64))> = None;
    let mut peak_running_rss: f64 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(600);
    let phase = loop {
        let st = server.get("stampede.dev", "stresstests", "default", "bench-controller");
        let phase = st
            .as_ref()
            .and_then(|s| s["status"]["phase"].as_str().map(str::to_string))
            .unwrap_or_default();
        let started = st.as_ref().is_some_and(|s| {
            s["metadata"]["annotations"]["stampede.dev/start-unix-ms"].is_string()
        });
        if started && running_since.is_none() {
            running_since = Some((Instant::now(), proc_usage(pid)));
        }
        if running_since.is_some() {
            peak_running_rss = peak_running_rss.max(proc_usage(pid).2);
        }
        if phase == "Succeeded" || phase == "Failed" || Instant::now() > deadline {
            break phase;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let end = proc_usage(pid);
    let status_writes = metric(port, "stampede_status_writes_total");
    let reconciles = metric(port, "stampede_reconciles_total");
    let elapsed = t0.elapsed().as_secs_f64();
    let metrics = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    let st = server
        .get("stampede.dev", "stresstests", "default", "bench-controller")
        .unwrap_or_default();
    let _ = controller.kill();
    let _ = controller.wait();
    drop(kubelet);

    println!(
        "controller driving {workers} workers, 2 stages × {stage_s} s: phase {phase}, {:.0} requests, QPS {}",
        st["status"]["totals"]["requests"].as_f64().unwrap_or(0.0),
        st["status"]["totals"]["qps"]
    );
    println!(
        "  whole test ({elapsed:.0} s from apply): controller CPU {:.2} s ({:.1} % of one core), peak RSS {:.1} MB",
        end.0 - before.0,
        100.0 * (end.0 - before.0) / elapsed,
        end.1
    );
    println!(
        "  status writes {status_writes} ({:.1}/min), reconciles {reconciles} ({:.1}/min)",
        status_writes * 60.0 / elapsed,
        reconciles * 60.0 / elapsed
    );
    if let Some((since, at)) = running_since {
        let secs = since.elapsed().as_secs_f64();
        println!(
            "  while the workers ran ({secs:.0} s): controller CPU {:.2} s ({:.1} % of one core), RSS up to {:.1} MB",
            end.0 - at.0,
            100.0 * (end.0 - at.0) / secs,
            peak_running_rss
        );
    }
    if !metrics.trim().is_empty() {
        println!("  controller warnings:\n{metrics}");
    }
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        rt.block_on(common::drop_collection("bench_controller"));
    }
}
