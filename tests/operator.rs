//! End to end through the operator: the in-repo API server, the kubelet stand-in running pods as
//! local processes, the real `stampede controller` as a child process, `kubectl apply`, and the
//! real local Milvus.

mod common;
mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use serde_json::Value;
use stampede::controller::decide::{
    ANNOTATION_START_UNIX_MS, REPORT_RESULT_KEY, report_configmap_name,
};
use stampede::result::RunResult;
use support::apiserver::ApiServer;
use support::kubelet::Kubelet;

const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/stresstest.yaml");
const SCHEDULE_CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/stresstestschedule.yaml");
const STAMPEDE: &str = env!("CARGO_BIN_EXE_stampede");

/// The bearer token the controllers send, to tell their requests apart.
const CONTROLLER_TOKEN: &str = "stampede-controller";

/// One test against Milvus at a time: two cores are shared, and the latency figures of one test
/// must not measure the other.
static MILVUS: Mutex<()> = Mutex::new(());

/// The `stampede controller` child process; killed on drop.
struct Controller {
    child: Child,
    port: u16,
    dashboard_port: u16,
    stderr: std::path::PathBuf,
}

impl Controller {
    /// Starts a controller that writes its log to `stderr`.
    fn start(server: &ApiServer, stderr: &Path, extra: &[&str]) -> Controller {
        // Both held while the ports are picked, so they differ.
        let listeners = [(); 2].map(|()| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let [port, dashboard_port] = listeners.each_ref().map(|l| l.local_addr().unwrap().port());
        drop(listeners);
        let child = Command::new(STAMPEDE)
            .args(["controller", "--health-addr", &format!("127.0.0.1:{port}")])
            .args(["--dashboard-addr", &format!("127.0.0.1:{dashboard_port}")])
            .args(extra)
            .env("KUBECONFIG", server.kubeconfig_with_token(CONTROLLER_TOKEN))
            .env("STAMPEDE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .unwrap();
        Controller {
            child,
            port,
            dashboard_port,
            stderr: stderr.to_path_buf(),
        }
    }

    /// GET a path of the health/metrics server (body only), waiting up to 10 s for the server.
    fn http_get(&self, path: &str) -> String {
        self.http_get_on(self.port, path)
    }

    /// GET a path of the dashboard: (status line, body).
    fn dashboard_get(&self, path: &str) -> (String, String) {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.dashboard_port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    fn http_get_on(&self, port: u16, path: &str) -> String {
        use std::io::Write;
        // Retried while the controller starts (connection refused or reset).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            });
            match attempt {
                Ok(out) if out.starts_with("HTTP/1.1") => {
                    return out
                        .split_once("\r\n\r\n")
                        .map(|(_, b)| b.to_string())
                        .unwrap_or_default();
                }
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => panic!(
                    "GET {path} on the controller's port {port}: {other:?}\n--- controller stderr\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// API server, kubelet, the CRD applied and a controller running.
struct Env {
    // Dropped in this order: the controller first, the server last.
    controller: Option<Controller>,
    kubelet: Kubelet,
    server: ApiServer,
    dir: tempfile::TempDir,
    controllers_started: usize,
}

impl Env {
    fn start() -> Env {
        let server = ApiServer::start();
        let kubelet = Kubelet::start(&server, STAMPEDE.into());
        server.kubectl_ok(&["apply", "-f", CRD]);
        let mut env = Env {
            controller: None,
            kubelet,
            server,
            dir: tempfile::tempdir().unwrap(),
            controllers_started: 0,
        };
        env.start_controller();
        env
    }

    fn start_controller(&mut self) {
        self.controllers_started += 1;
        let log = self
            .dir
            .path()
            .join(format!("controller-{}.stderr", self.controllers_started));
        self.controller = Some(Controller::start(&self.server, &log, &[]));
    }

    fn kill_controller(&mut self) {
        self.controller = None;
    }

    fn apply(&self, name: &str, body: &str) {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, body).unwrap();
        self.server
            .kubectl_ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    fn get_st(&self, name: &str) -> Value {
        serde_json::from_str(&self.server.kubectl_ok(&["get", "st", name, "-o", "json"])).unwrap()
    }

    /// Everything useful when a run did not end as expected.
    fn diagnostics(&self, st: &Value) -> String {
        let mut out = String::new();
        for i in 1..=self.controllers_started {
            let log =
                std::fs::read_to_string(self.dir.path().join(format!("controller-{i}.stderr")))
                    .unwrap_or_default();
            out.push_str(&format!("--- controller {i} stderr\n{log}\n"));
        }
        for pod in self.server.list("", "pods") {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            out.push_str(&format!("--- pod {name}\n{}\n", self.kubelet.logs(name)));
        }
        out.push_str(&format!(
            "--- status\n{}\n",
            serde_json::to_string_pretty(&st["status"]).unwrap()
        ));
        out
    }

    /// Polls until `done` holds for the StressTest.
    fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.get_st(name);
            if done(&st) {
                return st;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: no {what} in {timeout:?}\n{}",
                    self.diagnostics(&st)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls until the StressTest's phase is Succeeded or Failed.
    fn wait_finished(&self, name: &str, timeout: Duration) -> Value {
        self.wait_for(name, "end", timeout, |st| {
            matches!(
                st["status"]["phase"].as_str(),
                Some("Succeeded") | Some("Failed")
            )
        })
    }

    /// The run result in the report ConfigMap, gunzipped.
    fn report(&self, name: &str, st: &Value) -> RunResult {
        let report_name = report_configmap_name(name);
        let cm = self
            .server
            .get("", "configmaps", "default", &report_name)
            .unwrap_or_else(|| panic!("no ConfigMap {report_name}\n{}", self.diagnostics(st)));
        let b64 = cm["binaryData"][REPORT_RESULT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no binaryData {REPORT_RESULT_KEY} in {cm:#}"));
        let gz = base64_decode(b64);
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut json)
            .unwrap();
        serde_json::from_slice(&json).unwrap()
    }
}

fn stresstests(server: &ApiServer) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("stampede.dev", "v1alpha1", "StressTest");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "stresstests");
    Api::namespaced_with(server.client(), "default", &ar)
}

/// A small StressTest: 1,000 rows × 16 dims, FLAT, two closed stages of 2 then 4 users, two
/// workers, an SLA that passes.
fn manifest(name: &str, collection: &str, rows: u64, stage_seconds: u32) -> String {
    format!(
        r#"apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata:
  name: {name}
spec:
  target: {{address: "{addr}"}}
  collection: {{name: {collection}, dimension: 16, onExisting: Recreate}}
  data: {{rows: {rows}, batchSize: 1000}}
  index: {{type: FLAT}}
  workload:
    model: Closed
    operations: [{{name: search, weight: 1, search: {{topK: 10}}}}]
  stages:
    - {{duration: {stage_seconds}s, users: 2, spawnRate: 10}}
    - {{duration: {stage_seconds}s, users: 4, spawnRate: 10}}
  workers: {{replicas: 2}}
  sla: {{maxP99: 10s}}
  capacity: {{targetQps: 1000}}
  recall: {{sampleQueries: 20, topK: 10}}
"#,
        addr = common::milvus_addr()
    )
}

fn condition<'a>(st: &'a Value, kind: &str) -> &'a Value {
    st["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no condition {kind} in {:#}", st["status"]))
}

/// Watch events on one StressTest (a kube-rs watcher on a thread of its own): every MODIFIED
/// event, and those that changed the status.
#[derive(Default)]
struct Modifications {
    all: AtomicU64,
    status: AtomicU64,
}

fn count_modifications(server: &ApiServer, name: &str) -> Arc<Modifications> {
    let count = Arc::new(Modifications::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api = {
        let _guard = rt.enter();
        stresstests(server)
    };
    let counter = count.clone();
    let name = name.to_string();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut events = watcher(api, config).boxed();
            let mut last: Option<(String, Value)> = None;
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event {
                    let rv = o.metadata.resource_version.clone().unwrap_or_default();
                    let status = o.data.get("status").cloned().unwrap_or(Value::Null);
                    if let Some((last_rv, last_status)) = &last
                        && *last_rv != rv
                    {
                        counter.all.fetch_add(1, Ordering::SeqCst);
                        if *last_status != status {
                            counter.status.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    last = Some((rv, status));
                }
            }
        });
    });
    count
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn drop_collection(name: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(common::drop_collection(name));
}

/// Σ status.stages[].requests, each stage checked to have some.
fn stage_requests(env: &Env, st: &Value) -> u64 {
    let stages = st["status"]["stages"].as_array().expect("status.stages");
    assert_eq!(stages.len(), 2, "{}", env.diagnostics(st));
    stages
        .iter()
        .map(|s| {
            let r = s["requests"].as_u64().unwrap();
            assert!(r > 0, "{s}");
            r
        })
        .sum()
}

/// Requests in the merged raw measurements (the workers' snapshots), steady states only.
fn measured_requests(result: &RunResult) -> u64 {
    result
        .measurements
        .stages
        .iter()
        .map(|s| s.steady.total().requests)
        .sum()
}

#[test]
fn a_stresstest_applied_with_kubectl_runs_through_prepare_and_workers_and_ends_succeeded_with_results_in_status()
 {
    let _milvus = MILVUS.lock().unwrap_or_else(|e| e.into_inner());
    let collection = "t_op_e2e";
    let name = "op-e2e";
    drop_collection(collection);
    let env = Env::start();
    let writes = count_modifications(&env.server, name);

    let applied = Instant::now();
    let applied_at = k8s_openapi::jiff::Timestamp::now();
    env.apply(name, &manifest(name, collection, 1000, 3));
    let st = env.wait_finished(name, Duration::from_secs(180));
    let elapsed = applied.elapsed();
    let why = || env.diagnostics(&st);

    assert_eq!(st["status"]["phase"], "Succeeded", "{}", why());
    for kind in ["Prepared", "WorkersReady", "Complete", "SLAMet"] {
        assert_eq!(condition(&st, kind)["status"], "True", "{kind}: {}", why());
    }
    let stage_requests = stage_requests(&env, &st);
    let totals = &st["status"]["totals"];
    assert!(totals["qps"].as_f64().unwrap() > 0.0, "{totals}");
    assert_eq!(
        totals["requests"].as_u64(),
        Some(stage_requests),
        "{totals}"
    );
    for p in ["p95", "p99"] {
        let text = totals[p]
            .as_str()
            .unwrap_or_else(|| panic!("{p}: {totals}"));
        let number = text.trim_end_matches(|c: char| c.is_alphabetic() || c == 'µ');
        assert!(
            number.parse::<f64>().is_ok() && number.len() < text.len(),
            "{p}: {text}"
        );
    }
    assert_eq!(st["status"]["sla"]["verdict"], "PASS", "{}", why());
    assert!(
        st["status"]["capacity"]["nodesForTarget"].as_u64().unwrap() >= 1,
        "{}",
        why()
    );

    let result = env.report(name, &st);
    assert!(result.complete, "{:?}", result.incomplete_reason);
    assert_eq!(result.totals.requests, stage_requests);
    assert_eq!(measured_requests(&result), stage_requests);
    assert_eq!(result.measurements.shards, 2);
    assert_eq!(result.shards, 2);

    // Prometheus metrics of the controller.
    let metrics = env.controller.as_ref().unwrap().http_get("/metrics");
    let sample = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert!(sample("stampede_reconciles_total ") > 0.0, "{metrics}");
    assert_eq!(sample("stampede_running_tests "), 0.0, "{metrics}");
    assert_eq!(
        sample("stampede_tests{phase=\"Succeeded\"} "),
        1.0,
        "{metrics}"
    );
    let qps = sample(&format!(
        "stampede_test_qps{{namespace=\"default\",name=\"{name}\""
    ));
    assert_eq!(qps, totals["qps"].as_f64().unwrap(), "{metrics}");
    let status_writes = sample("stampede_status_writes_total ");

    // The controller's dashboard serves the finished test from its report ConfigMap.
    let controller = env.controller.as_ref().unwrap();
    let (code, body) = controller.dashboard_get(&format!("/api/tests/default/{name}"));
    assert!(code.contains("200"), "{code}\n{body}");
    let detail: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["phase"], "Succeeded", "{body}");
    // The status rounds QPS to 0.1.
    let qps_gap = detail["qps"].as_f64().unwrap() - totals["qps"].as_f64().unwrap();
    assert!(qps_gap.abs() <= 0.05, "{body}");
    assert_eq!(detail["stages"].as_array().map(Vec::len), Some(2), "{body}");
    assert!(!detail["series"].as_array().unwrap().is_empty(), "{body}");
    let (code, body) = controller.dashboard_get(&format!("/tests/default/{name}/result.json"));
    assert!(code.contains("200"), "{code}");
    let downloaded: RunResult = serde_json::from_str(&body).unwrap();
    assert_eq!(downloaded.totals.requests, stage_requests);
    let (code, list) = controller.dashboard_get("/api/tests");
    assert!(
        code.contains("200") && list.contains(name),
        "{code}\n{list}"
    );
    let (code, _) = controller.dashboard_get("/api/tests/default/nope");
    assert!(code.contains("404"), "{code}");

    let out = env.server.kubectl_ok(&["get", "st"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "STAGE", "QPS", "P95", "P99", "SLA", "AGE"]
    );
    let row: Vec<&str> = lines
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "Succeeded", "{out}");
    assert!(row.contains(&"PASS"), "{out}");

    // From kubectl apply to the first worker request: the run's start instant (the one the
    // workers were told to start at, whole seconds) relative to the apply.
    let started: k8s_openapi::jiff::Timestamp = result.started_at.parse().unwrap();
    let to_first_request = started.duration_since(applied_at).as_secs_f64();
    println!(
        "apply at {applied_at}, run started_at {}, finished_at {}: apply→first request \
         {to_first_request:.1}s (±1 s), apply→Succeeded {:.1}s, MODIFIED events {} of which \
         status changes {}, status writes by the controller {status_writes} \
         ({:.1}/min)",
        result.started_at,
        result.finished_at,
        elapsed.as_secs_f64(),
        writes.all.load(Ordering::SeqCst),
        writes.status.load(Ordering::SeqCst),
        status_writes * 60.0 / elapsed.as_secs_f64(),
    );
    println!(
        "Prepared at {}, WorkersReady at {}, startTime {}, completionTime {}",
        condition(&st, "Prepared")["lastTransitionTime"],
        condition(&st, "WorkersReady")["lastTransitionTime"],
        st["status"]["startTime"],
        st["status"]["completionTime"],
    );
    println!("{out}");
    drop(env);
    drop_collection(collection);
}

#[test]
fn a_controller_killed_mid_run_and_restarted_completes_with_totals_equal_to_the_worker_snapshots() {
    let _milvus = MILVUS.lock().unwrap_or_else(|e| e.into_inner());
    let collection = "t_op_e2e_restart";
    let name = "op-restart";
    drop_collection(collection);
    let mut env = Env::start();
    env.apply(name, &manifest(name, collection, 1000, 4));

    // Killed once the workers were told to start (the start instant is recorded), in the
    // first stage; down for 2 s, across the stage boundary.
    env.wait_for(name, "start", Duration::from_secs(120), |st| {
        st["status"]["phase"] == "Running"
            && st["metadata"]["annotations"][ANNOTATION_START_UNIX_MS].is_string()
    });
    std::thread::sleep(Duration::from_millis(5000));
    let before = env.get_st(name);
    assert_eq!(
        before["status"]["phase"],
        "Running",
        "{}",
        env.diagnostics(&before)
    );
    let killed_at = Instant::now();
    env.kill_controller();
    std::thread::sleep(Duration::from_secs(2));
    env.start_controller();

    let st = env.wait_finished(name, Duration::from_secs(120));
    let why = || env.diagnostics(&st);
    assert_eq!(st["status"]["phase"], "Succeeded", "{}", why());
    for kind in ["Prepared", "WorkersReady", "Complete", "SLAMet"] {
        assert_eq!(condition(&st, kind)["status"], "True", "{kind}: {}", why());
    }
    let stage_requests = stage_requests(&env, &st);
    assert_eq!(
        st["status"]["totals"]["requests"].as_u64(),
        Some(stage_requests),
        "{}",
        why()
    );
    let result = env.report(name, &st);
    assert!(result.complete, "{:?}", result.incomplete_reason);
    assert!(result.stages.iter().all(|s| s.valid), "{:?}", result.stages);
    assert_eq!(result.measurements.shards, 2);
    assert_eq!(result.totals.requests, stage_requests);
    assert_eq!(measured_requests(&result), stage_requests);
    // The workers ran on: no pod was replaced (one prepare pod, one pod per shard).
    assert_eq!(env.server.list("", "pods").len(), 3, "{}", why());
    println!(
        "controller killed at stage {} ({} requests in status), restarted 2 s later; \
         Succeeded {:.1}s after the kill with {stage_requests} requests",
        before["status"]["currentStage"],
        before["status"]["totals"]["requests"],
        killed_at.elapsed().as_secs_f64(),
    );
    drop(env);
    drop_collection(collection);
}

#[test]
fn an_invalid_manifest_gets_invalid_spec_and_no_children() {
    let env = Env::start();
    let name = "op-invalid";
    env.apply(name, &manifest(name, "t_op_e2e_invalid", 0, 3));
    let st = env.wait_finished(name, Duration::from_secs(60));
    let why = || env.diagnostics(&st);
    assert_eq!(st["status"]["phase"], "Failed", "{}", why());
    let complete = condition(&st, "Complete");
    assert_eq!(complete["status"], "False", "{}", why());
    assert_eq!(complete["reason"], "InvalidSpec", "{}", why());
    let message = complete["message"].as_str().unwrap();
    assert!(message.contains("spec.data.rows"), "{message}");
    // A later reconcile must not create anything either.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.server.list("batch", "jobs"), Vec::<Value>::new());
    assert_eq!(env.server.list("", "configmaps"), Vec::<Value>::new());
    assert_eq!(env.server.list("", "pods"), Vec::<Value>::new());
}

/// Waits until the run's start instant is recorded; returns it (ms since the Unix epoch).
fn wait_started(env: &Env, name: &str) -> i64 {
    let st = env.wait_for(name, "start", Duration::from_secs(120), |st| {
        st["status"]["phase"] == "Running"
            && st["metadata"]["annotations"][ANNOTATION_START_UNIX_MS].is_string()
    });
    let value = st["metadata"]["annotations"][ANNOTATION_START_UNIX_MS]
        .as_str()
        .unwrap();
    value.split_once('/').unwrap().1.parse().unwrap()
}

fn unix_ms_now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// Events (events.k8s.io/v1) recorded on the StressTest `name`, as (reason, note).
fn events_of(server: &ApiServer, name: &str) -> Vec<(String, String)> {
    server
        .list("events.k8s.io", "events")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_worker_killed_mid_run_marks_its_missed_stages_incomplete_with_the_reason() {
    let _milvus = MILVUS.lock().unwrap_or_else(|e| e.into_inner());
    let collection = "t_op_e2e_killed";
    let name = "op-killed";
    drop_collection(collection);
    let env = Env::start();
    let body = manifest(name, collection, 1000, 4).replace(
        "    - {duration: 4s, users: 4, spawnRate: 10}\n",
        "    - {duration: 4s, users: 4, spawnRate: 10}\n    - {duration: 4s, users: 6, spawnRate: 10}\n",
    );
    env.apply(name, &body);
    let start = wait_started(&env, name);
    // Late in the second stage (stages of 4 s from the start instant), after a pull (every
    // 2 s) has seen the first stage complete on both shards.
    let kill_at = start + 7_000;
    let wait = kill_at - unix_ms_now();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let pod = env
        .server
        .list("", "pods")
        .into_iter()
        .find(|p| {
            p["metadata"]["labels"]["stampede.dev/role"] == "worker"
                && p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1"
        })
        .expect("a worker pod for shard 1");
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
    assert!(
        env.kubelet.kill(&pod_name),
        "pod {pod_name} was not running"
    );

    let st = env.wait_finished(name, Duration::from_secs(120));
    let why = || env.diagnostics(&st);
    assert_eq!(st["status"]["phase"], "Failed", "{}", why());
    assert_eq!(
        condition(&st, "Complete")["reason"],
        "RunIncomplete",
        "{}",
        why()
    );
    let workers = condition(&st, "WorkersReady");
    assert_eq!(workers["reason"], "WorkerLost", "{}", why());
    assert!(
        workers["message"].as_str().unwrap().contains("shard 1"),
        "{workers}"
    );
    let stages = st["status"]["stages"].as_array().expect("status.stages");
    assert_eq!(stages.len(), 3, "{}", why());
    assert_eq!(stages[0]["valid"], true, "{}", why());
    for s in &stages[1..] {
        assert_eq!(s["valid"], false, "stage after the kill: {s}");
        assert!(
            s["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "no reason on {s}"
        );
    }
    // The measured requests are kept, not dropped: the report has both shards' first stage.
    let result = env.report(name, &st);
    assert!(!result.complete);
    assert!(result.stages[0].valid && result.stages[0].requests > 0);
    let events = events_of(&env.server, name);
    assert!(
        events.iter().any(|(reason, _)| reason == "WorkerLost"),
        "{events:?}"
    );
    println!(
        "killed {pod_name} 7 s after the start; stages: {}",
        serde_json::to_string(stages).unwrap()
    );
    drop(env);
    drop_collection(collection);
}

#[test]
fn each_of_twelve_invalid_manifests_gets_invalid_spec_naming_the_field_and_no_children() {
    let env = Env::start();
    let base = manifest("NAME", "t_op_invalid", 1000, 3);
    let cases: [(&str, &str, &str, &str); 12] = [
        ("rows", "rows: 1000", "rows: 0", "spec.data.rows"),
        (
            "dim",
            "dimension: 16",
            "dimension: 0",
            "spec.collection.dimension",
        ),
        (
            "batch",
            "batchSize: 1000",
            "batchSize: 0",
            "spec.data.batchSize",
        ),
        (
            "conc",
            "batchSize: 1000",
            "batchSize: 1000, insertConcurrency: 100",
            "spec.data.insertConcurrency",
        ),
        ("index", "{type: FLAT}", "{type: \"\"}", "spec.index.type"),
        (
            "weight",
            "weight: 1",
            "weight: 0",
            "spec.workload.operations",
        ),
        (
            "users",
            "{duration: 3s, users: 2, spawnRate: 10}",
            "{duration: 3s, spawnRate: 10}",
            "spec.stages[0].users",
        ),
        (
            "recall-sla",
            "sla: {maxP99: 10s}",
            "sla: {maxP99: 10s, recallAtLeast: 1.5}",
            "spec.sla.recallAtLeast",
        ),
        (
            "target-qps",
            "targetQps: 1000",
            "targetQps: 0",
            "spec.capacity.targetQps",
        ),
        (
            "share",
            "sampleQueries: 20, topK: 10",
            "sampleQueries: 20, topK: 10, share: 2",
            "spec.recall.share",
        ),
        (
            "address",
            &format!("address: \"{}\"", common::milvus_addr()),
            "address: \"\"",
            "spec.target.address",
        ),
        (
            "filter",
            "search: {topK: 10}",
            "search: {topK: 10, filter: 'category == \"{nope}\"'}",
            "spec.workload.operations[0].search.filter",
        ),
    ];
    for (suffix, from, to, _) in &cases {
        let name = format!("op-invalid-{suffix}");
        assert!(base.contains(from), "{from} not in the base manifest");
        env.apply(&name, &base.replace("NAME", &name).replacen(from, to, 1));
    }
    for (suffix, _, _, field) in &cases {
        let name = format!("op-invalid-{suffix}");
        let st = env.wait_finished(&name, Duration::from_secs(60));
        let why = || env.diagnostics(&st);
        assert_eq!(st["status"]["phase"], "Failed", "{name}: {}", why());
        let complete = condition(&st, "Complete");
        assert_eq!(complete["reason"], "InvalidSpec", "{name}: {}", why());
        let message = complete["message"].as_str().unwrap();
        assert!(message.contains(field), "{name}: {field} not in {message}");
        let events = events_of(&env.server, &name);
        assert!(
            events
                .iter()
                .any(|(r, note)| r == "InvalidSpec" && note.contains(field)),
            "{name}: {events:?}"
        );
    }
    // A later reconcile must not create anything either.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.server.list("batch", "jobs"), Vec::<Value>::new());
    assert_eq!(env.server.list("", "configmaps"), Vec::<Value>::new());
    assert_eq!(env.server.list("", "pods"), Vec::<Value>::new());
}

#[test]
fn with_leader_election_only_the_lease_holder_drives_and_the_standby_takes_over_when_it_dies() {
    let _milvus = MILVUS.lock().unwrap_or_else(|e| e.into_inner());
    let collection = "t_op_e2e_leader";
    let name = "op-leader";
    drop_collection(collection);
    let mut env = Env::start();
    // Replace the plain controller with two electing ones.
    env.kill_controller();
    let logs = [
        env.dir.path().join("a.stderr"),
        env.dir.path().join("b.stderr"),
    ];
    let a = Controller::start(&env.server, &logs[0], &["--leader-elect"]);
    std::thread::sleep(Duration::from_secs(1));
    let b = Controller::start(&env.server, &logs[1], &["--leader-elect"]);
    let lease = || {
        env.server.get(
            "coordination.k8s.io",
            "leases",
            "default",
            "stampede-controller",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while lease().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let holder = lease().expect("a Lease")["spec"]["holderIdentity"].clone();
    assert!(holder.is_string(), "{holder}");
    let leader_of = |c: &Controller| c.http_get("/metrics").contains("\nstampede_leader 1\n");
    assert!(leader_of(&a), "the first controller should lead");
    assert!(!leader_of(&b), "the second controller must stand by");
    assert_eq!(b.http_get("/readyz"), "ok\n", "a standby is ready");

    env.apply(name, &manifest(name, collection, 1000, 4));
    wait_started(&env, name);
    std::thread::sleep(Duration::from_secs(2));
    // The standby has reconciled nothing.
    assert!(
        b.http_get("/metrics")
            .contains("\nstampede_reconciles_total 0\n"),
        "{}",
        b.http_get("/metrics")
    );
    let killed = Instant::now();
    drop(a);
    let st = env.wait_finished(name, Duration::from_secs(150));
    let log_b = std::fs::read_to_string(&logs[1]).unwrap_or_default();
    assert_eq!(
        st["status"]["phase"],
        "Succeeded",
        "{}\n--- b\n{log_b}",
        env.diagnostics(&st)
    );
    assert!(leader_of(&b), "the standby should lead now");
    let now_holder = lease().unwrap()["spec"]["holderIdentity"].clone();
    assert_ne!(now_holder, holder);
    let result = env.report(name, &st);
    assert!(result.complete, "{:?}", result.incomplete_reason);
    assert_eq!(measured_requests(&result), stage_requests(&env, &st));
    println!(
        "leader killed; standby took over and the test Succeeded {:.1}s later",
        killed.elapsed().as_secs_f64()
    );
    drop(b);
    drop(env);
    drop_collection(collection);
}

fn collection_exists(name: &str) -> bool {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            stampede::milvus::MilvusClient::connect(stampede::milvus::ConnectOptions::new(
                common::milvus_addr(),
            ))
            .await
            .unwrap()
            .has_collection(name)
            .await
            .unwrap()
        })
}

#[test]
fn drop_collection_drops_it_after_the_test_and_when_a_running_test_is_deleted_within_the_chart_rbac()
 {
    let _milvus = MILVUS.lock().unwrap_or_else(|e| e.into_inner());
    let mut env = Env::start();
    // As the chart runs it: with leader election.
    env.kill_controller();
    env.controllers_started += 1;
    let log = env
        .dir
        .path()
        .join(format!("controller-{}.stderr", env.controllers_started));
    env.controller = Some(Controller::start(&env.server, &log, &["--leader-elect"]));
    let with_drop = |name: &str, collection: &str| {
        manifest(name, collection, 1000, 3).replace(
            "  recall: {sampleQueries: 20, topK: 10}\n",
            "  recall: {sampleQueries: 20, topK: 10}\n  cleanup: {dropCollection: true}\n",
        )
    };

    // 1. Runs to its end, then the cleanup Job drops the collection and the finalizer goes.
    let (name, collection) = ("op-drop", "t_op_e2e_drop");
    env.apply(name, &with_drop(name, collection));
    env.wait_for(name, "finalizer", Duration::from_secs(60), |st| {
        st["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "stampede.dev/drop-collection"))
    });
    let st = env.wait_finished(name, Duration::from_secs(150));
    assert_eq!(
        st["status"]["phase"],
        "Succeeded",
        "{}",
        env.diagnostics(&st)
    );
    let st = env.wait_for(name, "finalizer removal", Duration::from_secs(60), |st| {
        st["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())
    });
    assert!(!collection_exists(collection), "{}", env.diagnostics(&st));
    assert!(
        events_of(&env.server, name)
            .iter()
            .any(|(r, _)| r == "CollectionDropped"),
        "{:?}",
        events_of(&env.server, name)
    );

    // 2. Deleted while running: the workers stop, the collection is dropped, the test goes.
    let (name, collection) = ("op-drop-deleted", "t_op_e2e_drop_deleted");
    env.apply(name, &with_drop(name, collection));
    wait_started(&env, name);
    assert!(collection_exists(collection));
    env.server
        .kubectl_ok(&["delete", "st", name, "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while env
        .server
        .get("stampede.dev", "stresstests", "default", name)
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "{name} still exists\n{}",
            env.diagnostics(&env.get_st(name))
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!collection_exists(collection));
    // Its children are garbage-collected with it.
    let left: Vec<String> = env
        .server
        .list("batch", "jobs")
        .iter()
        .map(|j| {
            j["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|n| n.starts_with(name))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Every request the controller made (create, run, finish, clean up, delete, lead) is
    // allowed by the RBAC rules the Helm chart renders.
    let made = assert_within_chart_rbac(&env);
    assert!(made.len() > 10, "{made:?}");
    println!("controller requests: {}", made.join(", "));
}

#[test]
fn an_unreachable_milvus_fails_the_test_after_the_prepare_jobs_retries_with_the_cause() {
    let env = Env::start();
    let name = "op-unreachable";
    let body =
        manifest(name, "t_op_unreachable", 1000, 3).replace(&common::milvus_addr(), "127.0.0.1:9");
    env.apply(name, &body);
    let st = env.wait_finished(name, Duration::from_secs(150));
    let why = || env.diagnostics(&st);
    assert_eq!(st["status"]["phase"], "Failed", "{}", why());
    let prepared = condition(&st, "Prepared");
    assert_eq!(prepared["status"], "False", "{}", why());
    assert_eq!(prepared["reason"], "PrepareFailed", "{}", why());
    let message = st["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("prepare Job failed"), "{message}");
    // The Job retried (backoffLimit 2: three pods), and the pods say why.
    let pods = env.server.list("", "pods");
    assert_eq!(pods.len(), 3, "{}", why());
    let log = env
        .kubelet
        .logs(pods[0]["metadata"]["name"].as_str().unwrap());
    assert!(log.contains("127.0.0.1:9"), "{log}");
    assert!(
        events_of(&env.server, name)
            .iter()
            .any(|(r, _)| r == "PrepareFailed"),
        "{:?}",
        events_of(&env.server, name)
    );
    assert!(env.server.list("batch", "jobs").len() == 1, "no worker Job");
}

/// Patches the status of pod `name` in `default` (merge patch through the status subresource).
fn patch_pod_status(env: &Env, name: &str, status: &Value) {
    env.server.kubectl_ok(&[
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}

/// The status of a Milvus pod that the test sets itself: Running on 127.0.0.1 (where the local
/// Milvus serves its metrics on 9091), its container restarted `restarts` times, last in
/// `last_state`.
fn milvus_pod_status(restarts: i32, last_state: Value) -> Value {
    serde_json::json!({"status": {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "containerStatuses": [{
            "name": "milvus", "image": "milvusdb/milvus:v2.3.5", "imageID": "", "ready": true,
            "restartCount": restarts, "state": {"running": {}}, "lastState": last_state,
        }],
    }})
}

/// Creates the Milvus pod `name` labelled `app.kubernetes.io/name=milvus`, with the YAML
/// `extra_spec` lines in its spec (e.g. a nodeName) and `resources` as its container's
/// resources (flow style), and makes it Running (see [`milvus_pod_status`]). No Job owns it, so
/// the kubelet stand-in leaves it alone.
fn add_milvus_pod(env: &Env, name: &str, extra_spec: &str, resources: &str) {
    env.apply(
        name,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app.kubernetes.io/name: milvus}}
spec:
{extra_spec}  containers:
    - name: milvus
      image: milvusdb/milvus:v2.3.5
      resources: {resources}
"#
        ),
    );
    patch_pod_status(env, name, &milvus_pod_status(0, serde_json::json!({})));
}

/// [`manifest`] with server observation of the pods labelled `app.kubernetes.io/name=milvus`,
/// scraped every second.
fn observed_manifest(name: &str, collection: &str, stage_seconds: u32) -> String {
    let target = format!("target: {{address: \"{}\"}}", common::milvus_addr());
    let base = manifest(name, collection, 1000, stage_seconds);
    assert!(base.contains(&target));
    base.replace(
        &target,
        &format!(
            "target: {{address: \"{}\", metrics: {{selector: app.kubernetes.io/name=milvus, interval: 1s}}}}",
            common::milvus_addr()
        ),
    )
}

#[test]
fn the_controller_scrapes_the_milvus_pods_found_by_the_selector_and_records_an_oom_kill_in_its_stage()
 {
    let _milvus = MILVUS.lock().unwrap_or_else(|e| e.into_inner());
    let collection = "t_op_e2e_observe";
    let name = "op-observe";
    let milvus_pod = "milvus-standalone-0";
    drop_collection(collection);
    let env = Env::start();
    add_milvus_pod(
        &env,
        milvus_pod,
        "",
        r#"{limits: {cpu: "4", memory: 16Gi}}"#,
    );
    let body = observed_manifest(name, collection, 6).replace(
        "    - {duration: 6s, users: 4, spawnRate: 10}\n",
        "    - {duration: 6s, users: 4, spawnRate: 10}\n    - {duration: 6s, users: 6, spawnRate: 10}\n",
    );
    env.apply(name, &body);
    let start = wait_started(&env, name);
    // In the middle of the second stage (6–12 s after the start): the container was OOM-killed
    // and restarted.
    let kill_at = start + 8_500;
    let wait = kill_at - unix_ms_now();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let last = serde_json::json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}});
    patch_pod_status(&env, milvus_pod, &milvus_pod_status(1, last));
    let patched_after = (unix_ms_now() - start) as f64 / 1000.0;

    let st = env.wait_finished(name, Duration::from_secs(120));
    let why = || env.diagnostics(&st);
    assert_eq!(st["status"]["phase"], "Succeeded", "{}", why());
    let stages = st["status"]["stages"].as_array().expect("status.stages");
    assert_eq!(stages.len(), 3, "{}", why());
    let bottleneck = |i: usize| -> (&str, &str) {
        let b = &stages[i]["bottleneck"];
        (
            b["resource"]
                .as_str()
                .unwrap_or_else(|| panic!("stage {i}: no bottleneck\n{}", why())),
            b["evidence"].as_str().unwrap_or_default(),
        )
    };
    let (first, first_evidence) = bottleneck(0);
    assert_ne!(first, "notObserved", "{first_evidence}\n{}", why());
    assert!(
        first_evidence.contains("Milvus used"),
        "{first_evidence}\n{}",
        why()
    );
    let restart = format!("Milvus pod {milvus_pod} restarted (OOMKilled) during this stage");
    assert!(!first_evidence.contains("restarted"), "{first_evidence}");
    let (second, second_evidence) = bottleneck(1);
    assert!(
        second_evidence.contains(&restart),
        "{second}: {second_evidence}\n{}",
        why()
    );
    assert_eq!(second, "serverMemory", "{second_evidence}");
    let (third, third_evidence) = bottleneck(2);
    assert!(!third_evidence.contains("restarted"), "{third_evidence}");

    let result = env.report(name, &st);
    let server = &result.server;
    assert!(server.enabled && server.observed, "{:?}", server.reason);
    assert_eq!(server.endpoints, ["http://127.0.0.1:9091/metrics"]);
    // The pod's limits are what Milvus may use.
    assert_eq!(server.cores_available, Some(4.0));
    assert_eq!(
        server.memory_limit_bytes,
        Some(16.0 * 1024.0 * 1024.0 * 1024.0)
    );
    assert_eq!(
        server.capacity_source.as_deref(),
        Some("cores and memory: the Milvus pods' limits")
    );
    assert!(
        !env.server
            .requests_of(CONTROLLER_TOKEN)
            .iter()
            .any(|r| r.resource == "nodes"),
        "the pods' limits are known: no node is read"
    );
    assert_eq!(server.restarts.len(), 1, "{:?}", server.restarts);
    assert!(server.restarts[0].oom_killed());
    assert_eq!(server.stages.len(), 3);
    assert!(server.stages[0].restarts.is_empty());
    assert_eq!(server.stages[1].restarts.len(), 1);
    assert!(server.stages[2].restarts.is_empty());
    let cpu: Vec<f64> = server
        .stages
        .iter()
        .filter_map(|s| s.cpu_cores_mean)
        .collect();
    assert!(cpu.iter().any(|c| *c > 0.0), "{:?}", server.stages);
    let rss: Vec<f64> = server
        .stages
        .iter()
        .filter_map(|s| s.resident_bytes_peak)
        .collect();
    assert!(rss.iter().all(|r| *r > 50e6), "{rss:?}");
    println!(
        "pod status patched {patched_after:.1} s after the start, restart seen at {:.1} s; CPU cores per stage {cpu:?}, peak RSS MiB {:?}; bottlenecks: {first}: {first_evidence} | {second}: {second_evidence} | {third}: {third_evidence}",
        server.restarts[0].second,
        rss.iter()
            .map(|r| (r / 1048576.0).round())
            .collect::<Vec<_>>()
    );
    drop(env);
    drop_collection(collection);
}

#[test]
fn a_milvus_pod_without_limits_gets_the_allocatable_cpu_and_memory_of_its_node_as_capacity() {
    let _milvus = MILVUS.lock().unwrap_or_else(|e| e.into_inner());
    let collection = "t_op_e2e_node_capacity";
    let name = "op-node-capacity";
    drop_collection(collection);
    let env = Env::start();
    env.server.add_node("node-a", "2", "8Gi");
    let node: Value = serde_json::from_str(
        &env.server
            .kubectl_ok(&["get", "node", "node-a", "-o", "json"]),
    )
    .unwrap();
    assert_eq!(node["status"]["allocatable"]["memory"], "8Gi");
    add_milvus_pod(&env, "milvus-standalone-0", "  nodeName: node-a\n", "{}");
    env.apply(name, &observed_manifest(name, collection, 4));

    let st = env.wait_finished(name, Duration::from_secs(120));
    let why = || env.diagnostics(&st);
    assert_eq!(st["status"]["phase"], "Succeeded", "{}", why());
    let stages = st["status"]["stages"].as_array().expect("status.stages");
    assert_eq!(stages.len(), 2, "{}", why());
    let source = "cores and memory: allocatable of node node-a (the Milvus pods set no limits)";
    let mut evidences = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        let resource = stage["bottleneck"]["resource"].as_str().unwrap_or_default();
        let evidence = stage["bottleneck"]["evidence"].as_str().unwrap_or_default();
        assert!(
            evidence.contains("of 2.00 cores") && evidence.ends_with(source),
            "stage {i}: {resource}: {evidence}\n{}",
            why()
        );
        // CPU-bound evidence names the cores only; every other verdict the memory too.
        assert!(
            resource == "serverCpu" || evidence.contains("of 8.0 GiB"),
            "stage {i}: {resource}: {evidence}"
        );
        evidences.push(format!("{resource}: {evidence}"));
    }

    let result = env.report(name, &st);
    let server = &result.server;
    assert!(server.enabled && server.observed, "{:?}", server.reason);
    assert_eq!(server.cores_available, Some(2.0));
    assert_eq!(
        server.memory_limit_bytes,
        Some(8.0 * 1024.0 * 1024.0 * 1024.0)
    );
    assert_eq!(server.capacity_source.as_deref(), Some(source));
    // The node was read by name, within the chart's RBAC, and once for an unchanged pod set.
    let node_reads = env
        .server
        .requests_of(CONTROLLER_TOKEN)
        .iter()
        .filter(|r| r.resource == "nodes")
        .map(|r| format!("{} {}", r.verb, r.namespace))
        .collect::<Vec<_>>();
    assert_eq!(node_reads, ["get "], "{node_reads:?}");
    let requests = assert_within_chart_rbac(&env);
    assert!(requests.contains(&"get /nodes".to_string()), "{requests:?}");
    println!("bottlenecks: {}", evidences.join(" | "));
    drop(env);
    drop_collection(collection);
}

/// Every request the controller made in this environment is granted by the RBAC rules the Helm
/// chart renders.
fn assert_within_chart_rbac(env: &Env) -> Vec<String> {
    let rules = support::chart::cluster_rules(&support::chart::helm_template(&[]));
    let mut made: Vec<_> = env.server.requests_of(CONTROLLER_TOKEN);
    made.sort();
    made.dedup_by(|a, b| a.verb == b.verb && a.group == b.group && a.resource == b.resource);
    let denied: Vec<String> = made
        .iter()
        .filter(|r| !support::chart::allows(&rules, &r.group, &r.resource, &r.verb))
        .map(|r| format!("{} {}/{}", r.verb, r.group, r.resource))
        .collect();
    assert!(denied.is_empty(), "not granted by the chart: {denied:?}");
    made.iter()
        .map(|r| format!("{} {}/{}", r.verb, r.group, r.resource))
        .collect()
}

#[test]
fn a_schedule_in_the_controller_starts_a_run_that_is_driven_to_the_end_and_judged() {
    let _milvus = MILVUS.lock().unwrap_or_else(|e| e.into_inner());
    let collection = "t_op_e2e_schedule";
    let name = "op-sched";
    drop_collection(collection);
    let env = Env::start();
    env.server.kubectl_ok(&["apply", "-f", SCHEDULE_CRD]);
    let test = manifest("unused", collection, 1000, 3);
    let spec = test.split_once("\nspec:\n").unwrap().1;
    let body = format!(
        "apiVersion: stampede.dev/v1alpha1\nkind: StressTestSchedule\nmetadata:\n  name: {name}\nspec:\n  schedule: \"* * * * *\"\n  regression: {{maxQpsDropPercent: 50}}\n  template:\n    spec:\n{}",
        spec.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    env.apply(name, &body);

    // The next minute starts a run: an ordinary StressTest owned by the schedule.
    let deadline = Instant::now() + Duration::from_secs(90);
    let run = loop {
        let runs: Vec<Value> = env
            .server
            .list("stampede.dev", "stresstests")
            .into_iter()
            .filter(|t| t["metadata"]["labels"]["stampede.dev/schedule"] == name)
            .collect();
        if let Some(r) = runs.first() {
            break r["metadata"]["name"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no run of {name} in 90 s");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(run.starts_with("op-sched-"), "{run}");
    let st = env.wait_finished(&run, Duration::from_secs(150));
    assert_eq!(
        st["status"]["phase"],
        "Succeeded",
        "{}",
        env.diagnostics(&st)
    );
    let owner = &st["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "StressTestSchedule");
    assert_eq!(owner["name"], name);

    // The schedule judged the finished run: the first successful one has no baseline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let schedule = loop {
        let s = env
            .server
            .get("stampede.dev", "stresstestschedules", "default", name)
            .unwrap();
        if s["status"]["lastRun"]["verdict"].is_string() {
            break s;
        }
        assert!(Instant::now() < deadline, "no verdict: {:#}", s["status"]);
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(schedule["status"]["lastRun"]["name"], run.as_str());
    assert_eq!(schedule["status"]["lastRun"]["verdict"], "NoBaseline");
    assert_eq!(
        schedule["status"]["lastSuccessfulRun"]["name"],
        run.as_str()
    );
    let judged = env.get_st(&run);
    assert_eq!(
        judged["status"]["regression"]["verdict"], "NoBaseline",
        "{:#}",
        judged["status"]
    );
    let requests = assert_within_chart_rbac(&env);
    assert!(
        requests.iter().any(|r| r.contains("stresstestschedules")),
        "{requests:?}"
    );
    // No more runs.
    env.server
        .kubectl_ok(&["delete", "sts", name, "--wait=false"]);
    drop(env);
    drop_collection(collection);
}
