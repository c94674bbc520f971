//! The dashboard's HTTP endpoints: status codes, content types and JSON shapes, first against a
//! fixed in-memory source (no Milvus), then during and after a real `stampede run --ui` against
//! the local Milvus, with a saved earlier result beside it to compare with.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede::dashboard::local::LOCAL_NAMESPACE;
use stampede::dashboard::{
    BoxFuture, Download, SourceError, TestDetail, TestSource, TestSummary, serve,
};
use stampede::metrics::{SecondSample, Snapshot, StageMeasurement, Window};
use stampede::result::{RunContext, RunResult, build_result};
use stampede::spec::{Phase, StressTestSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "s3cr3t-Pa55word";

const SPEC: &str = r#"
target: {address: "https://admin:s3cr3t-Pa55word@milvus.db.svc:19530", credentialsSecret: milvus-auth}
collection: {name: stress_test_collection, dimension: 64}
workload:
  model: Closed
  operations:
    - {name: search_vector, weight: 3, search: {topK: 10}}
    - {name: search_with_filter, weight: 1, search: {topK: 10}}
stages:
  - {duration: 10s, users: 10, spawnRate: 10}
  - {duration: 10s, users: 50, spawnRate: 50}
sla: {minQps: 100, maxP95: 100ms, maxErrorRatio: 0.01}
capacity: {targetQps: 1000, redundancy: 2}
"#;

/// A two-stage result: 60 then 240 requests per second, 2 of which fail each second of stage
/// 2 (`grpc:UNAVAILABLE`); latencies scaled by `slower`.
fn synthetic_result(slower: f64) -> RunResult {
    let spec: StressTestSpec = serde_yaml_ng::from_str(SPEC).expect("the test spec parses");
    let mut snap = Snapshot {
        shards: 1,
        ..Snapshot::default()
    };
    for (k, qps) in [60u64, 240].into_iter().enumerate() {
        let mut m = StageMeasurement {
            stage: k,
            steady_seconds: 10.0,
            complete: true,
            ..StageMeasurement::default()
        };
        for sec in 0..10u64 {
            let mut w = Window::default();
            for i in 0..qps {
                let op = if i % 4 == 0 {
                    "search_with_filter"
                } else {
                    "search_vector"
                };
                let us = ((5_000 + (i * 37) % 20_000) as f64 * (1.0 + k as f64) * slower) as u64;
                for win in [&mut w, &mut m.steady] {
                    if k == 1 && i % 200 == 7 {
                        win.op_mut(op).record_failure(
                            us,
                            "grpc:UNAVAILABLE",
                            "tcp connect error: Connection refused <b>",
                        );
                    } else {
                        win.op_mut(op).record_success(us, 1);
                    }
                }
            }
            w.users = [10, 50][k];
            w.sample_in_flight([10, 50][k]);
            m.steady.users = w.users;
            m.steady.sample_in_flight(w.users);
            snap.seconds.push(SecondSample {
                second: k as u64 * 10 + sec,
                stage: k,
                window: w,
            });
        }
        snap.stages.push(m);
    }
    build_result(
        &spec,
        RunContext {
            name: "fixed".into(),
            started_at: "2026-01-02T03:04:05Z".into(),
            finished_at: "2026-01-02T03:04:25Z".into(),
            target: spec.target.address.clone(),
            server_version: "v2.4.15".into(),
            interrupted: None,
            prepare: None,
        },
        snap,
    )
}

/// Two finished tests in namespace `team`, one that is running, and one failing list.
struct FixedSource {
    tests: Vec<TestDetail>,
    fail: bool,
}

impl FixedSource {
    fn new() -> Self {
        let mut base = TestDetail::from_result("team", "baseline", &synthetic_result(1.0));
        base.downloads = vec![Download {
            name: "result.json".into(),
            url: String::new(),
        }];
        let slower = TestDetail::from_result("team", "slower", &synthetic_result(1.5));
        let mut running = TestDetail::new("team", "running", Phase::Running, None);
        running.live = Some(stampede::dashboard::LiveFigures {
            stages: 2,
            qps: 12.0,
            ..Default::default()
        });
        FixedSource {
            tests: vec![base, slower, running],
            fail: false,
        }
    }
}

impl TestSource for FixedSource {
    fn list(&self) -> BoxFuture<'_, Result<Vec<TestSummary>, SourceError>> {
        Box::pin(async move {
            if self.fail {
                return Err(SourceError("the API server is unreachable".into()));
            }
            Ok(self.tests.iter().map(|t| t.summary.clone()).collect())
        })
    }

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<TestDetail>, SourceError>> {
        Box::pin(async move {
            Ok(self
                .tests
                .iter()
                .find(|t| t.summary.namespace == namespace && t.summary.name == name)
                .cloned())
        })
    }

    fn file<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        file: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, SourceError>> {
        Box::pin(async move {
            Ok(
                (namespace == "team" && name == "baseline" && file == "result.json")
                    .then(|| b"{\"version\":1}".to_vec()),
            )
        })
    }
}

/// A response: status, content type, body.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:.300}", self.body))
    }
}

/// GET over HTTP/1.1 with `Connection: close` (the dashboard answers with Content-Length).
async fn get(addr: &str, path: &str) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        body: body.to_string(),
    }
}

async fn start(source: FixedSource) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(listener, Arc::new(source)));
    addr
}

#[tokio::test]
async fn every_endpoint_answers_with_its_status_and_content_type() {
    let addr = start(FixedSource::new()).await;
    let cases: &[(&str, u16, &str)] = &[
        ("/", 200, "text/html"),
        ("/?part=rows", 200, "text/html"),
        ("/tests/team/baseline", 200, "text/html"),
        ("/tests/team/baseline/fragment", 200, "text/html"),
        ("/tests/team/baseline/result.json", 200, "application/json"),
        ("/compare?a=team/baseline&b=team/slower", 200, "text/html"),
        ("/api/tests", 200, "application/json"),
        ("/api/tests/team/baseline", 200, "application/json"),
        (
            "/api/tests/team/baseline/charts/qps.svg",
            200,
            "image/svg+xml",
        ),
        (
            "/api/tests/team/baseline/charts/latency.svg",
            200,
            "image/svg+xml",
        ),
        (
            "/api/tests/team/baseline/charts/users.svg",
            200,
            "image/svg+xml",
        ),
        (
            "/api/tests/team/baseline/charts/failures.svg",
            200,
            "image/svg+xml",
        ),
        (
            "/api/compare?a=team%2Fbaseline&b=team%2Fslower",
            200,
            "application/json",
        ),
        ("/tests/team/running", 200, "text/html"),
        // Unknown things are 404s with a message, JSON under /api.
        ("/tests/team/nope", 404, "text/html"),
        ("/tests/team/nope/fragment", 404, "text/html"),
        ("/tests/team/baseline/report.html", 404, "text/html"),
        ("/tests/team/nope/result.json", 404, "text/html"),
        ("/api/tests/team/nope", 404, "application/json"),
        ("/api/tests/other/baseline", 404, "application/json"),
        (
            "/api/tests/team/nope/charts/qps.svg",
            404,
            "application/json",
        ),
        (
            "/api/tests/team/baseline/charts/cpu.svg",
            404,
            "application/json",
        ),
        ("/compare?a=team/baseline&b=team/nope", 404, "text/html"),
        (
            "/api/compare?a=team/nope&b=team/slower",
            404,
            "application/json",
        ),
        ("/api/nothing", 404, "application/json"),
        ("/nothing", 404, "text/html"),
        // A compare without both runs is a bad request.
        ("/compare?a=team/baseline", 400, "text/html"),
        ("/api/compare", 400, "application/json"),
    ];
    for (path, status, ct) in cases {
        let r = get(&addr, path).await;
        assert_eq!(r.status, *status, "{path}: {:.300}", r.body);
        assert!(r.content_type.starts_with(ct), "{path}: {}", r.content_type);
        if *status >= 400 {
            assert!(
                r.body.contains("no test team/nope")
                    || r.body.contains("no chart")
                    || r.body.contains("nothing at")
                    || r.body.contains("has no file report.html")
                    || r.body.contains("no test other/baseline")
                    || r.body.contains("compare needs two tests"),
                "{path} says why: {:.300}",
                r.body
            );
        }
        if path.starts_with("/api/") && *status >= 400 {
            let j = r.json();
            assert_eq!(j["status"], *status);
            assert!(j["error"].as_str().is_some_and(|m| !m.is_empty()), "{path}");
        }
    }
}

#[tokio::test]
async fn the_test_json_has_the_documented_fields_in_camel_case() {
    let addr = start(FixedSource::new()).await;
    let list = get(&addr, "/api/tests").await.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["baseline", "slower", "running"]);
    let first = &list[0];
    assert_eq!(first["namespace"], "team");
    assert_eq!(first["phase"], "Succeeded");
    assert_eq!(first["sla"], "PASS");
    assert_eq!(first["currentStage"], "2/2 · 50 users");
    assert_eq!(first["startedAt"], "2026-01-02T03:04:05Z");
    for key in ["qps", "p95Ms", "p99Ms", "errorRatio"] {
        assert!(first[key].is_number(), "{key} in {first}");
    }

    let d = get(&addr, "/api/tests/team/baseline").await.json();
    for key in [
        "namespace",
        "name",
        "phase",
        "model",
        "target",
        "series",
        "stages",
        "operations",
        "failures",
        "totals",
        "peak",
        "sla",
        "capacity",
        "downloads",
        "spec",
    ] {
        assert!(!d[key].is_null(), "{key} missing from the test JSON");
    }
    assert_eq!(d["series"].as_array().unwrap().len(), 20);
    assert_eq!(d["series"][0]["requests"], 60);
    assert_eq!(d["stages"].as_array().unwrap().len(), 2);
    assert_eq!(d["stages"][1]["users"], 50);
    assert_eq!(d["stages"][1]["qps"], 240.0);
    assert_eq!(d["operations"].as_array().unwrap().len(), 2);
    let f = &d["failures"][0];
    assert_eq!(f["kind"], "grpc:UNAVAILABLE");
    assert_eq!(f["count"], 20);
    assert_eq!(f["operation"], "search_vector");
    assert!(
        f["example"]
            .as_str()
            .unwrap()
            .contains("Connection refused")
    );
    assert_eq!(d["sla"]["passed"], true);
    assert!(d["sla"]["checks"].as_array().unwrap().len() >= 3);
    assert_eq!(
        d["downloads"][0],
        serde_json::json!({"name": "result.json", "url": "/tests/team/baseline/result.json"})
    );
    assert!(d.get("live").is_none(), "no live figures once finished");

    let running = get(&addr, "/api/tests/team/running").await.json();
    assert_eq!(running["phase"], "Running");
    assert_eq!(running["live"]["qps"], 12.0);
    for key in [
        "stage",
        "stages",
        "users",
        "inFlight",
        "p95Ms",
        "requests",
        "elapsedSeconds",
    ] {
        assert!(running["live"][key].is_number(), "live.{key}");
    }

    let c = get(&addr, "/api/compare?a=team/baseline&b=team/slower")
        .await
        .json();
    assert_eq!(c["a"]["name"], "baseline");
    assert_eq!(c["stages"].as_array().unwrap().len(), 2);
    let p95 = c["stages"][0]["p95DeltaPct"].as_f64().unwrap();
    assert!((45.0..55.0).contains(&p95), "P95 1.5 × slower: {p95}");
    assert_eq!(c["stages"][0]["qpsDeltaPct"], 0.0);
    assert!(
        c["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "maxP95")
    );
}

#[tokio::test]
async fn charts_hold_one_point_per_second_with_units_and_stage_markers() {
    let addr = start(FixedSource::new()).await;
    for kind in ["qps", "latency", "users", "failures"] {
        let svg = get(
            &addr,
            &format!("/api/tests/team/baseline/charts/{kind}.svg"),
        )
        .await
        .body;
        assert!(svg.starts_with("<svg"), "{kind}");
        assert!(svg.contains("data-points=\"20\""), "{kind}: 20 seconds");
        assert!(svg.contains("time since start (s)"), "{kind}: x unit");
        assert_eq!(
            svg.matches("class=\"marker\"").count(),
            2,
            "{kind}: stage starts"
        );
        assert!(svg.contains("stage 2 · 50 users"), "{kind}");
    }
    let latency = get(&addr, "/api/tests/team/baseline/charts/latency.svg")
        .await
        .body;
    assert!(latency.contains("latency (ms)") && latency.contains("SLA P95 ≤ 100 ms"));
    let page = get(&addr, "/tests/team/baseline").await.body;
    assert_eq!(
        page.matches("<svg").count(),
        4,
        "the page inlines the four charts"
    );
    assert!(page.contains("id=\"sla-verdict\" class=\"verdict pass\">SLA PASS"));
    assert!(
        !page.contains("src=\"http"),
        "nothing loaded from the network"
    );
}

#[tokio::test]
async fn no_page_or_endpoint_shows_a_credential() {
    let addr = start(FixedSource::new()).await;
    for path in [
        "/",
        "/tests/team/baseline",
        "/tests/team/baseline/fragment",
        "/compare?a=team/baseline&b=team/slower",
        "/api/tests",
        "/api/tests/team/baseline",
        "/api/compare?a=team/baseline&b=team/slower",
    ] {
        let r = get(&addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.body.contains(SECRET), "{path} shows the password");
        assert!(!r.body.contains("admin:"), "{path} shows the user");
    }
    let d = get(&addr, "/api/tests/team/baseline").await.json();
    assert_eq!(d["target"], "https://milvus.db.svc:19530");
    assert_eq!(
        d["spec"]["target"]["address"],
        "https://milvus.db.svc:19530"
    );
    assert_eq!(d["spec"]["target"]["credentialsSecret"], "milvus-auth");
    let page = get(&addr, "/tests/team/baseline").await.body;
    assert!(!page.contains("<b>"), "failure examples are escaped");
}

#[tokio::test]
async fn a_source_that_cannot_list_gives_a_503_with_its_reason() {
    let mut source = FixedSource::new();
    source.fail = true;
    let addr = start(source).await;
    for path in ["/", "/api/tests"] {
        let r = get(&addr, path).await;
        assert_eq!(r.status, 503, "{path}");
        assert!(r.body.contains("the API server is unreachable"), "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// A real run with --ui

/// Starts `stampede run --ui-addr 127.0.0.1:0`; returns the child and the dashboard address.
pub fn start_run(manifest: &Path, output: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(["run", "-q", "-f"])
        .arg(manifest)
        .arg("-o")
        .arg(output)
        .args(["--shards", "2", "--ui-addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stampede starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(u) = l.strip_prefix("dashboard: http://") {
                    break u.to_string();
                }
            }
            _ => panic!("stampede ended without printing the dashboard address"),
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let addr = url.split('/').next().unwrap().to_string();
    (child, addr)
}

/// Sends SIGINT (Ctrl-C) and waits; returns the exit code.
pub fn interrupt(child: &mut Child) -> Option<i32> {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        assert!(Instant::now() < deadline, "stampede did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const RUN_BODY: &str = r#"  collection: {name: t_dashboard_run, dimension: 32}
  data:
    rows: 3000
    batchSize: 1000
    vectors: {distribution: Clustered, clusters: 20, spread: 0.2}
    scalars: [{name: category, values: [A, B, C, D]}]
  index: {type: HNSW, params: {M: 8, efConstruction: 64}}
  recall: {sampleQueries: 50, topK: 10, share: 0.5}
  workload:
    model: Closed
    waitTime: {min: 0ms, max: 5ms}
    operations:
      - {name: search, weight: 6, search: {topK: 10, params: {ef: 32}}}
      - {name: filtered, weight: 2, search: {topK: 5, filter: 'category == "{category}"'}}
  stages:
    - {duration: 5s, users: 1, spawnRate: 10}
    - {duration: 5s, users: 4, spawnRate: 10}
    - {duration: 5s, users: 12, spawnRate: 20}
  sla: {maxP99: 10s, maxErrorRatio: 0.01}
  capacity: {targetQps: 5000, redundancy: 2}
"#;

async fn wait_for(addr: &str, path: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = get(addr, path).await;
        if r.status == 200 {
            let v = r.json();
            if f(&v) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_ui_serves_live_figures_then_the_final_result_and_compares_with_a_saved_run() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    stampede::report::write_all(&results.join("earlier"), &synthetic_result(1.0), "stampede")
        .unwrap();
    let manifest = common::write_manifest(dir.path(), "dashrun", RUN_BODY);
    let (mut child, addr) = start_run(&manifest, &results.join("now"));
    let api = "/api/tests/local/now";

    // While running: the phase, the stage, live figures and a growing series.
    let live = wait_for(&addr, api, "the load to run", |v| {
        v["phase"] == "Running" && v["series"].as_array().is_some_and(|s| s.len() >= 2)
    })
    .await;
    assert_eq!(live["namespace"], LOCAL_NAMESPACE);
    assert_eq!(live["live"]["stages"], 3);
    assert_eq!(live["live"]["plannedSeconds"], 15.0);
    assert!(live["currentStage"].as_str().unwrap().contains("/3 · "));
    assert!(
        live["live"]["qps"].as_f64().unwrap() > 0.0,
        "{}",
        live["live"]
    );
    let running_stage = live["stages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(running_stage["invalidReason"], "running");
    let page = get(&addr, "/tests/local/now").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"stage-now\""));
    assert!(page.body.contains("id=\"qps-now\""));
    let svg = get(&addr, "/api/tests/local/now/charts/qps.svg").await.body;
    assert!(svg.contains("data-points=\""), "{svg:.200}");
    // Downloads appear only with the result: the directory may hold an older run's files.
    assert_eq!(get(&addr, "/tests/local/now/result.json").await.status, 404);

    let list = get(&addr, "/api/tests").await.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["now", "earlier"],
        "the run first, then saved results"
    );
    let c = get(&addr, "/api/compare?a=local/earlier&b=local/now").await;
    assert_eq!(c.status, 200, "{}", c.body);

    // After the run: the final result, until Ctrl-C.
    let done = wait_for(&addr, api, "the run to finish", |v| {
        v["phase"] == "Succeeded" || v["phase"] == "Failed"
    })
    .await;
    assert_eq!(done["phase"], "Succeeded", "{}", done["message"]);
    assert_eq!(done["sla"]["passed"], true);
    assert_eq!(done["stages"].as_array().unwrap().len(), 3);
    assert!(done.get("live").is_none());
    assert!(done["capacity"]["withRedundancy"].as_u64().unwrap() >= 2);
    assert!(done["recall"].as_f64().unwrap() > 0.5);
    let series_total: u64 = done["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .sum();
    let saved = common::read_result(&results.join("now"));
    assert_eq!(
        series_total,
        saved.series.iter().map(|p| p.requests).sum::<u64>(),
        "the page shows what result.json holds"
    );
    let files: Vec<&str> = done["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for f in [
        "result.json",
        "report.html",
        "stampede_stats.csv",
        "stampede_stats_history.csv",
        "stampede_failures.csv",
    ] {
        assert!(files.contains(&f), "{f} in {files:?}");
        let r = get(&addr, &format!("/tests/local/now/{f}")).await;
        assert_eq!(r.status, 200, "{f}");
        assert!(!r.body.is_empty(), "{f}");
    }
    let downloaded: RunResult =
        serde_json::from_str(&get(&addr, "/tests/local/now/result.json").await.body).unwrap();
    assert_eq!(downloaded, saved);
    assert_eq!(
        get(&addr, "/tests/local/now/ground_truth.json")
            .await
            .status,
        404
    );
    let page = get(&addr, "/compare?a=local/earlier&b=local/now").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Δ QPS"));

    assert_eq!(interrupt(&mut child), Some(0), "exit 0: the SLA passed");
}
