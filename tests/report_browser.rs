//! Renders report.html for a synthetic five-stage run and opens it in headless Chromium: the
//! DOM the browser builds must hold the chart SVGs with every data point, and a screenshot is
//! saved under `target/test-artifacts/` for a human to look at.
//!
//! Needs `/usr/bin/chromium` (Debian: `apt-get install -y chromium`), or the browser named by
//! `STAMPEDE_CHROMIUM`. The test does not install it; it fails with that instruction instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stampede::metrics::{CpuSample, SecondSample, Snapshot, StageMeasurement, Window};
use stampede::report;
use stampede::result::{RunContext, RunResult, build_result};
use stampede::spec::StressTestSpec;

const SPEC: &str = r#"
target: {address: "milvus.db.svc:19530", credentialsSecret: milvus-auth}
collection: {name: stress_test_collection, dimension: 768, metric: L2}
index: {type: HNSW, params: {M: 16, efConstruction: 200}}
workload:
  model: Closed
  consistency: Bounded
  waitTime: {min: 100ms, max: 500ms}
  operations:
    - {name: search_vector, weight: 10, search: {topK: 10, params: {ef: 64}}}
    - {name: search_with_filter, weight: 3, search: {topK: 10, filter: 'category == "{category}"'}}
    - {name: batch_search, weight: 1, search: {topK: 10, nq: 5}}
stages:
  - {duration: 12s, users: 10, spawnRate: 10}
  - {duration: 12s, users: 50, spawnRate: 50}
  - {duration: 12s, users: 100, spawnRate: 100}
  - {duration: 12s, users: 200, spawnRate: 200}
  - {duration: 12s, users: 500, spawnRate: 500}
sla: {minQps: 1000, maxP95: 100ms, maxP99: 250ms, maxErrorRatio: 0.001, recallAtLeast: 0.9}
capacity: {targetQps: 10000, redundancy: 2, measuredQueryNodes: 1}
"#;

const STAGE_SECONDS: u64 = 12;
const RAMP_SECONDS: u64 = 2;
const USERS: [u64; 5] = [10, 50, 100, 200, 500];
/// Per-second throughput of each stage's steady state: grows, then flattens past 200 users.
const QPS: [u64; 5] = [60, 290, 560, 1050, 1080];
/// Typical latency of each stage, ms.
const BASE_MS: [f64; 5] = [6.0, 9.0, 14.0, 38.0, 160.0];

/// Deterministic pseudo-random numbers in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Every request is recorded into its stage window (ramp or steady) and its second, as the load
/// engine does.
fn synthetic_result() -> RunResult {
    let spec: StressTestSpec = serde_yaml_ng::from_str(SPEC).expect("the test spec parses");
    let mut rng = Lcg(7);
    let ops = ["search_vector", "search_with_filter", "batch_search"];
    let mut snap = Snapshot {
        shards: 2,
        ..Snapshot::default()
    };
    for (k, &users) in USERS.iter().enumerate() {
        let mut m = StageMeasurement {
            stage: k,
            ramp_seconds: RAMP_SECONDS as f64,
            steady_seconds: (STAGE_SECONDS - RAMP_SECONDS) as f64,
            complete: true,
            ..StageMeasurement::default()
        };
        for sec in 0..STAGE_SECONDS {
            let ramp = sec < RAMP_SECONDS;
            let second = k as u64 * STAGE_SECONDS + sec;
            let current = if ramp {
                users * (sec + 1) / (RAMP_SECONDS + 1)
            } else {
                users
            };
            let n = if ramp {
                QPS[k] * (sec + 1) / (RAMP_SECONDS + 1)
            } else {
                QPS[k] + (rng.next() * QPS[k] as f64 * 0.06) as u64
            };
            let mut win = Window::default();
            for i in 0..n {
                let op = ops[match i % 14 {
                    0..=9 => 0,
                    10..=12 => 1,
                    _ => 2,
                }];
                let tail = if rng.next() < 0.02 { 3.0 } else { 1.0 };
                let us = (BASE_MS[k] * (0.6 + rng.next()) * tail * 1000.0) as u64;
                let fail = k == 4 && i % 40 == 3;
                let stage_window = if ramp { &mut m.ramp } else { &mut m.steady };
                for w in [&mut win, stage_window] {
                    let o = w.op_mut(op);
                    if fail {
                        o.record_failure(
                            us / 20,
                            "grpc:UNAVAILABLE",
                            "tcp connect error: Connection refused",
                        );
                    } else if k == 4 && i % 333 == 5 {
                        o.record_failure(10_000_000, "timeout", "deadline of 10s exceeded");
                    } else {
                        o.record_success(us, if op == "batch_search" { 5 } else { 1 });
                        if op == "search_vector" && i % 10 == 0 {
                            o.record_recall(0.93 + rng.next() * 0.05);
                        }
                    }
                }
            }
            let in_flight = (current as f64 * (0.2 + 0.5 * (k as f64 / 4.0))) as u64;
            win.users = current;
            win.sample_in_flight(in_flight);
            let stage_window = if ramp { &mut m.ramp } else { &mut m.steady };
            stage_window.users = current;
            stage_window.sample_in_flight(in_flight);
            snap.seconds.push(SecondSample {
                second,
                stage: k,
                window: win,
            });
            snap.client_cpu.push(CpuSample {
                second,
                stage: k,
                cores_used: 0.15 + 0.3 * k as f64 + rng.next() * 0.1,
                cores_available: 4.0,
            });
        }
        snap.stages.push(m);
    }
    build_result(
        &spec,
        RunContext {
            name: "classic-search-capacity".into(),
            started_at: "2025-03-04T10:00:00Z".into(),
            finished_at: "2025-03-04T10:01:00Z".into(),
            target: "milvus.db.svc:19530".into(),
            server_version: "v2.4.15".into(),
            interrupted: None,
            prepare: None,
        },
        snap,
    )
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("STAMPEDE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: this test renders report.html in headless Chromium; install it with \
         `apt-get install -y chromium` (or point STAMPEDE_CHROMIUM at a Chromium binary)",
        path.display()
    );
    path
}

/// Runs headless Chromium with a fresh profile; returns its stdout. Killed after two minutes.
fn run_chromium(extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("temp profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    // Read both pipes on threads so a chatty browser cannot block on a full pipe.
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within two minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}): {stderr}");
    stdout
}

fn artifacts_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp; artifacts go next to it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// The value of attribute `name` in the tag starting at `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let end = tag.find('>')?;
    let tag = &tag[..end];
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// The `<svg class="chart …">` elements of the DOM, as (title, markup).
fn charts(dom: &str) -> Vec<(String, String)> {
    dom.match_indices("<svg")
        .filter_map(|(i, _)| {
            let rest = &dom[i..];
            let end = rest.find("</svg>")? + "</svg>".len();
            let svg = &rest[..end];
            attr(svg, "class")?.contains("chart").then_some(())?;
            let t0 = svg.find("<title>")? + "<title>".len();
            let t1 = svg[t0..].find("</title>")?;
            Some((svg[t0..t0 + t1].to_string(), svg.to_string()))
        })
        .collect()
}

/// For each `<path>` inside a `data-series` group: (series, declared points, M/L commands).
fn series_paths(svg: &str) -> Vec<(String, usize, usize)> {
    svg.match_indices("<g class=\"series\"")
        .filter_map(|(i, _)| {
            let g = &svg[i..];
            let name = attr(g, "data-series")?.to_string();
            let p = g.find("<path")?;
            let path = &g[p..];
            let d = attr(path, "d")?;
            let declared = attr(path, "data-points")
                .or_else(|| attr(g, "data-points"))?
                .parse()
                .ok()?;
            Some((name, declared, d.matches(['M', 'L']).count()))
        })
        .collect()
}

#[test]
fn the_report_renders_in_chromium_with_every_chart_and_data_point() {
    let result = synthetic_result();
    let dir = tempfile::tempdir().expect("temp dir");
    let written = report::write_all(dir.path(), &result, "stampede").expect("reports written");
    let html = dir.path().join("report.html");
    assert!(written.contains(&html));
    let artifacts = artifacts_dir();
    std::fs::copy(&html, artifacts.join("report.html")).expect("copy report.html");
    let url = format!("file://{}", html.display());

    let dom = run_chromium(&["--dump-dom".to_string(), url.clone()]);
    assert!(dom.contains("SLA"), "the DOM has the report: {dom:.400}");
    let charts = charts(&dom);
    let titles: Vec<&str> = charts.iter().map(|(t, _)| t.as_str()).collect();
    for expected in [
        "Throughput per stage",
        "Latency percentiles per stage",
        "Failed requests per stage",
        "Concurrency asked vs kept",
        "Recall per stage",
        "Throughput and load over time",
        "Latency over time",
        "Load generator CPU",
    ] {
        assert!(
            titles.contains(&expected),
            "{expected} missing from {titles:?}"
        );
    }
    let seconds = (USERS.len() as u64 * STAGE_SECONDS) as usize;
    for (title, svg) in &charts {
        assert!(
            svg.contains("viewBox=\"0 0 "),
            "{title} scales with its box"
        );
        let paths = series_paths(svg);
        if title.ends_with("over time") || title == "Load generator CPU" {
            // Line charts: one path per series, one M/L command per second.
            assert!(!paths.is_empty(), "{title} has series paths");
            for (series, declared, commands) in &paths {
                assert_eq!(
                    declared, commands,
                    "{title}/{series}: path commands vs points"
                );
            }
            let qps = paths.iter().find(|p| p.0 == "QPS" || p.0 == "cores used");
            if let Some((_, n, _)) = qps {
                assert_eq!(*n, seconds, "{title}: one point per second");
            }
            // Stage boundaries are marked and labelled.
            assert_eq!(
                svg.matches("class=\"marker\"").count(),
                USERS.len(),
                "{title}"
            );
            assert!(svg.contains("stage 2 · 50 users"), "{title}");
        } else {
            // Per-stage charts: one bar or dot per stage and series.
            let groups = svg.matches("data-series=").count();
            let points = svg.matches("class=\"point\"").count();
            assert!(groups >= 1, "{title}");
            assert_eq!(
                points,
                groups * USERS.len(),
                "{title}: a point per stage and series"
            );
            for label in ["10 users", "500 users"] {
                assert!(svg.contains(label), "{title} labels {label}");
            }
        }
    }
    // Units on the axes.
    for unit in [
        "time since start (s)",
        "latency (ms)",
        "throughput (requests/s)",
        "CPU (cores)",
    ] {
        assert!(dom.contains(unit), "axis title {unit}");
    }

    let png = artifacts.join("report.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1280,2400".to_string(),
        url,
    ]);
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        bytes.len() > 20_000,
        "a screenshot with content ({} bytes)",
        bytes.len()
    );
    eprintln!("screenshot: {}", png.display());
}

#[test]
fn an_empty_report_renders_in_chromium_without_charts_breaking() {
    let mut spec: StressTestSpec = serde_yaml_ng::from_str(SPEC).expect("the test spec parses");
    spec.sla = None;
    let result = build_result(&spec, RunContext::default(), Snapshot::default());
    let dir = tempfile::tempdir().expect("temp dir");
    report::write_all(dir.path(), &result, "stampede").expect("reports written");
    let dom = run_chromium(&[
        "--dump-dom".to_string(),
        format!("file://{}", dir.path().join("report.html").display()),
    ]);
    assert!(dom.contains("NO SLA"));
    assert!(dom.contains("No stage was measured"));
    assert!(dom.contains("</html>"));
}
