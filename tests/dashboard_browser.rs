//! The live dashboard in headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`): during a short `stampede run --ui` against the local Milvus the page
//! shows the stage and a QPS number that grows from stage 1 to stage 3 without reloading, the
//! charts hold data points, and after the run the SLA verdict appears. A screenshot goes to
//! `target/test-artifacts/dashboard.png`; page weight and time to first render are printed.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`apt-get install -y chromium
//! chromium-driver`), or the binaries named by `STAMPEDE_CHROMIUM` / `STAMPEDE_CHROMEDRIVER`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const RUN_BODY: &str = r#"  collection: {name: t_dashboard_browser, dimension: 32}
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
    - {duration: 6s, users: 12, spawnRate: 24}
  sla: {maxP99: 10s, maxErrorRatio: 0.01}
"#;

fn binary(env: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} not found: this test drives the dashboard in headless Chromium over WebDriver; \
         install it with `apt-get install -y {package}` (or point {env} at it)",
        path.display()
    );
    path
}

/// Kills a child process of this test when dropped (a failed assertion must not leave it).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body (chunked or not).
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    s.write_all(req.as_bytes()).expect("send");
    // ChromeDriver keeps the connection open whatever the request says: read the header, then
    // exactly the body it announces.
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).expect("a status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = v.parse::<usize>().ok();
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("a chunk size");
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).expect("a chunk");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body).expect("the body");
    } else {
        r.read_to_end(&mut body).expect("the body");
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    (status, body)
}

/// A WebDriver session of headless Chromium.
struct Browser {
    driver: String,
    session: String,
    _child: Guard,
}

impl Browser {
    fn start() -> Browser {
        let chromium = binary("STAMPEDE_CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = binary(
            "STAMPEDE_CHROMEDRIVER",
            "/usr/bin/chromedriver",
            "chromium-driver",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let child = Guard(child);
        let driver = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&driver).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,2400", "--hide-scrollbars", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update"]
            }
        }}});
        let (status, body) = http(&driver, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "new session: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            session,
            _child: child,
        }
    }

    fn call(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let (status, text) = http(
            &self.driver,
            method,
            &format!("/session/{}/{what}", self.session),
            body,
        );
        assert_eq!(status, 200, "{what}: {text:.500}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "url", Some(&json!({ "url": url })));
    }

    fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", "screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            &self.driver,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What the page shows, read in the browser.
const READ: &str = r#"
const s = document.getElementById('stage-now');
const q = document.getElementById('qps-now');
const box = document.getElementById('sections');
const paths = [...document.querySelectorAll('#chart-qps g.series path')];
const v = document.getElementById('sla-verdict');
return {
  load: window.__load || (window.__load = performance.timeOrigin),
  stage: s ? s.textContent : null,
  qps: q ? parseFloat(q.dataset.value) : null,
  qpsText: q ? q.textContent : null,
  phase: box ? box.dataset.phase : null,
  points: paths.length ? parseInt(paths[0].getAttribute('data-points')) : 0,
  verdict: v ? v.textContent : null,
};
"#;

/// Starts `stampede run --ui-addr 127.0.0.1:0`; returns the child and the dashboard address.
fn start_run(manifest: &Path, output: &Path) -> (Guard, String) {
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
    std::thread::spawn(move || for _ in lines {});
    (Guard(child), url)
}

#[test]
fn the_live_page_shows_the_stage_a_growing_qps_charts_and_then_the_sla_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = common::write_manifest(dir.path(), "dashbrowser", RUN_BODY);
    let output = dir.path().join("results").join("live");
    let (mut run, url) = start_run(&manifest, &output);
    let addr = url.split('/').next().unwrap().to_string();
    let browser = Browser::start();
    browser.open(&format!("http://{url}"));

    // Read the page every 250 ms until the run ends; it must never reload.
    let first = browser.eval(READ);
    let load = first["load"].clone();
    let mut reads: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut fragment_bytes = Vec::new();
    loop {
        let r = browser.eval(READ);
        assert_eq!(r["load"], load, "the page updates itself without reloading");
        let phase = r["phase"].as_str().unwrap_or("").to_string();
        if phase == "Running" && fragment_bytes.len() < 5 {
            let sizes = browser.eval(
                "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/fragment')).map(e => e.transferSize);",
            );
            if let Some(last) = sizes.as_array().and_then(|a| a.last()) {
                fragment_bytes.push(last.as_f64().unwrap_or(0.0));
            }
        }
        reads.push(r);
        if phase == "Succeeded" || phase == "Failed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {reads:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let in_stage = |n: &str| -> Vec<&Value> {
        reads
            .iter()
            .filter(|r| r["phase"] == "Running")
            .filter(|r| r["stage"].as_str().is_some_and(|s| s.starts_with(n)))
            .filter(|r| r["qps"].as_f64().is_some_and(|q| q > 0.0))
            .collect()
    };
    let (s1, s3) = (in_stage("1/3"), in_stage("3/3"));
    assert!(!s1.is_empty(), "stage 1 was shown with a QPS: {reads:?}");
    assert!(s3.len() >= 3, "stage 3 was shown with a QPS: {reads:?}");
    assert!(
        s1[0]["stage"].as_str().unwrap().contains("1 user"),
        "{}",
        s1[0]
    );
    let q1 = s1
        .iter()
        .map(|r| r["qps"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let q3 = s3.last().unwrap()["qps"].as_f64().unwrap();
    assert!(q3 > q1, "QPS grows from 1 user ({q1}) to 12 users ({q3})");
    let text: f64 = s3.last().unwrap()["qpsText"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (text - q3).abs() <= 0.5 + q3 * 0.01,
        "the shown number is the value"
    );
    let running_points: Vec<i64> = reads
        .iter()
        .filter(|r| r["phase"] == "Running")
        .map(|r| r["points"].as_i64().unwrap())
        .collect();
    assert!(
        running_points.iter().any(|&p| p >= 5),
        "the QPS chart fills while running: {running_points:?}"
    );

    // After the run: the verdict, and every second in the chart.
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let r = browser.eval(READ);
        if r["verdict"].is_string() {
            break r;
        }
        assert!(Instant::now() < deadline, "no SLA verdict: {r}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(last["verdict"], "SLA PASS");
    assert_eq!(last["phase"], "Succeeded");
    assert!(last["points"].as_i64().unwrap() >= 15, "{last}");
    let png = artifacts_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    browser.screenshot(&png);
    assert!(std::fs::metadata(&png).unwrap().len() > 20_000);
    eprintln!("screenshot: {}", png.display());

    // Numbers: a fresh load of the finished page.
    browser.open(&format!("http://{url}"));
    // Paint timings are reported a moment after the load completes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = browser.eval(
            r#"
const n = performance.getEntriesByType('navigation')[0];
const p = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint');
return {bytes: n.transferSize, body: n.decodedBodySize, fcp: p ? p.startTime : null,
        dcl: n.domContentLoadedEventEnd, svgs: document.querySelectorAll('svg').length};
"#,
        );
        if m["fcp"].is_number() || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let fcp = m["fcp"].as_f64().expect("a first contentful paint");
    eprintln!(
        "finished page: {:.1} KB transferred ({:.1} KB HTML), first contentful paint {fcp:.0} ms, DOMContentLoaded {:.0} ms, {} charts; live fragment polled each second: {:?} bytes",
        m["bytes"].as_f64().unwrap_or(0.0) / 1024.0,
        m["body"].as_f64().unwrap_or(0.0) / 1024.0,
        m["dcl"].as_f64().unwrap_or(0.0),
        m["svgs"],
        fragment_bytes
    );
    assert_eq!(m["svgs"], 4);
    assert!(fcp < 3000.0, "first render took {fcp} ms");
    let (status, _) = http(&addr, "GET", "/api/tests", None);
    assert_eq!(status, 200);

    // Ctrl-C ends the serving; exit 0 as the SLA passed.
    let pid = run.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "stampede did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0));
}
