//! `stampede run` against the real local Milvus, with stages of a few seconds.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use stampede::run::{RunOptions, run};

const DATA: &str = r#"
  data:
    rows: 2000
    batchSize: 1000
    vectors: {distribution: Clustered, clusters: 20, spread: 0.2}
    scalars: [{name: category, values: [A, B, C, D]}]
  index: {type: HNSW, params: {M: 8, efConstruction: 64}}
  recall: {sampleQueries: 50, topK: 10, share: 0.5}
"#;

fn options(dir: &std::path::Path) -> RunOptions {
    RunOptions {
        output: Some(dir.to_path_buf()),
        shards: 2,
        progress: false,
        csv_prefix: "stampede".to_string(),
        ..RunOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_run_counts_every_request_once_in_result_series_and_csv() {
    let collection = "t_run_closed";
    drop_collection(collection).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(
        dir.path(),
        "closed",
        &format!(
            r#"  collection: {{name: {collection}, dimension: 16}}
{DATA}
  workload:
    model: Closed
    waitTime: {{min: 0ms, max: 5ms}}
    operations:
      - {{name: search, weight: 6, search: {{topK: 10, params: {{ef: 32}}}}}}
      - {{name: filtered, weight: 2, search: {{topK: 5, filter: 'category == "{{category}}"'}}}}
      - {{name: batch, weight: 1, search: {{topK: 10, nq: 3}}}}
      - {{name: lookup, weight: 1, query: {{expr: 'category == "{{category}}"', limit: 5, outputFields: [category]}}}}
  stages:
    - {{duration: 3s, users: 4, spawnRate: 8}}
    - {{duration: 3s, users: 8, spawnRate: 8}}
  sla: {{maxP99: 10s, maxErrorRatio: 0.01}}
"#
        ),
    );
    let out = dir.path().join("out");
    let code = run(&manifest, options(&out)).await.unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::SUCCESS)
    );
    let r = read_result(&out);

    assert!(r.complete, "{:?}", r.incomplete_reason);
    assert_eq!(r.stages.len(), 2);
    assert_eq!(r.shards, 2);
    assert_eq!(r.totals.failures, 0, "{:?}", r.failures);
    assert!(
        r.totals.requests > 100,
        "only {} requests",
        r.totals.requests
    );

    // Every completed request is counted once in its stage (ramp or steady) and once per second.
    let steady: u64 = r.stages.iter().map(|s| s.requests).sum();
    let ramps: u64 = r.ramps.iter().map(|s| s.requests).sum();
    let series: u64 = r.series.iter().map(|p| p.requests).sum();
    assert_eq!(steady, r.totals.requests);
    assert_eq!(series, steady + ramps);

    // The Locust CSVs say the same.
    let stats = csv_rows(&out.join("stampede_stats.csv"));
    let aggregated = stats
        .iter()
        .find(|row| row["Name"] == "Aggregated")
        .unwrap();
    assert_eq!(aggregated["Request Count"], steady.to_string());
    let per_op: u64 = stats
        .iter()
        .filter(|row| row["Name"] != "Aggregated")
        .map(|row| row["Request Count"].parse::<u64>().unwrap())
        .sum();
    assert_eq!(per_op, steady);
    let history = csv_rows(&out.join("stampede_stats_history.csv"));
    let last_total: u64 = history.last().unwrap()["Total Request Count"]
        .parse()
        .unwrap();
    assert_eq!(last_total, steady + ramps);

    // Weights 6:2:1:1 are honoured within sampling tolerance.
    let share = |name: &str| {
        let op = r.operations.iter().find(|o| o.name == name).unwrap();
        op.requests as f64 / steady as f64
    };
    for (name, expected) in [
        ("search", 0.6),
        ("filtered", 0.2),
        ("batch", 0.1),
        ("lookup", 0.1),
    ] {
        let got = share(name);
        assert!(
            (got - expected).abs() < 0.08,
            "{name}: share {got:.3}, expected {expected}"
        );
    }
    // A batch search of nq=3 is one request and three queries.
    let batch = r.operations.iter().find(|o| o.name == "batch").unwrap();
    assert_eq!(batch.queries, 3 * batch.requests);
    // Recall is measured on unfiltered searches only.
    let search = r.operations.iter().find(|o| o.name == "search").unwrap();
    let recall = search.recall.expect("recall measured");
    assert!(
        (0.0..=1.0).contains(&recall) && recall > 0.5,
        "recall {recall}"
    );
    assert_eq!(
        r.operations
            .iter()
            .find(|o| o.name == "filtered")
            .unwrap()
            .recall,
        None
    );
    // The users asked for are reported with the concurrency really achieved.
    assert_eq!(r.stages[1].users, Some(8));
    assert!(
        r.stages[1].in_flight_max <= 8,
        "{}",
        r.stages[1].in_flight_max
    );
    assert!(r.sla.as_ref().unwrap().passed);
    drop_collection(collection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_run_sends_the_asked_rate_and_reports_it_per_stage() {
    let collection = "t_run_open";
    drop_collection(collection).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(
        dir.path(),
        "open",
        &format!(
            r#"  collection: {{name: {collection}, dimension: 16}}
{DATA}
  workload:
    model: Open
    maxInFlight: 50
    operations:
      - {{name: search, weight: 1, search: {{topK: 10}}}}
  stages:
    - {{duration: 3s, rate: 40}}
    - {{duration: 3s, rate: 80}}
"#
        ),
    );
    let out = dir.path().join("out");
    run(&manifest, options(&out)).await.unwrap();
    let r = read_result(&out);
    assert!(r.complete, "{:?}", r.incomplete_reason);
    assert_eq!(r.model, "Open");
    assert_eq!(r.stages[0].rate, Some(40.0));
    assert_eq!(r.stages[1].rate, Some(80.0));
    // An open model sends exactly rate × duration requests (none dropped at this rate). A
    // request counts in the stage where it completes, so the split may move by a request or two.
    assert_eq!(r.stages[0].dropped + r.stages[1].dropped, 0);
    assert_eq!(r.stages[0].requests + r.stages[1].requests, 360);
    assert!(
        r.stages[0].requests.abs_diff(120) <= 3,
        "{}",
        r.stages[0].requests
    );
    let series: u64 = r.series.iter().map(|p| p.requests).sum();
    assert_eq!(series, 360);
    assert!(
        (r.stages[1].qps - 80.0).abs() < 8.0,
        "qps {}",
        r.stages[1].qps
    );
    drop_collection(collection).await;
}

#[test]
fn ctrl_c_writes_the_results_measured_so_far_marked_incomplete() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let collection = "t_run_interrupt";
    rt.block_on(drop_collection(collection));
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(
        dir.path(),
        "interrupted",
        &format!(
            r#"  collection: {{name: {collection}, dimension: 16}}
{DATA}
  workload:
    waitTime: {{min: 1ms, max: 5ms}}
  stages:
    - {{duration: 2s, users: 2, spawnRate: 10}}
    - {{duration: 60s, users: 4, spawnRate: 10}}
"#
        ),
    );
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(["run", "--quiet", "-f"])
        .arg(&manifest)
        .arg("-o")
        .arg(&out)
        .spawn()
        .unwrap();
    // Wait until the load runs (prepare done, stage 2 started), then interrupt.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !out.join("ground_truth.json").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "prepare did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "no SLA set: exit 0 even when interrupted"
    );
    let r = read_result(&out);
    assert!(!r.complete);
    assert!(
        r.incomplete_reason
            .as_deref()
            .unwrap_or("")
            .contains("Ctrl-C"),
        "{:?}",
        r.incomplete_reason
    );
    assert!(r.measurements.stages[0].complete);
    assert!(!r.measurements.stages[1].complete);
    assert!(!r.stages[1].valid);
    assert!(r.stages[0].requests > 0 && r.stages[1].requests > 0);
    assert!(out.join("report.html").exists());
    rt.block_on(drop_collection(collection));
}
