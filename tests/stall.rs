//! A server stall (the Milvus processes stopped with SIGSTOP for 2 s) seen by both load models.
//! Its own test binary: cargo runs test binaries one after another, so no other test talks to
//! the stopped server.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use stampede::result::RunResult;
use stampede::run::{RunOptions, run};

/// Sends SIGCONT when dropped, so a failing test never leaves Milvus stopped.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal_group(self.0, "CONT");
    }
}

const STALL: Duration = Duration::from_secs(2);

/// Runs `manifest` in the background and stops Milvus for 2 s, 1.5 s into its second stage
/// (which starts `first_stage` after the load starts). Returns the result.
fn run_with_stall(manifest: PathBuf, out: &Path, first_stage: Duration) -> RunResult {
    let pgid = milvus_process_group();
    let out_dir = out.to_path_buf();
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(run(
            &manifest,
            RunOptions {
                output: Some(out_dir),
                shards: 1,
                progress: false,
                csv_prefix: "stampede".to_string(),
                ..RunOptions::default()
            },
        ))
        .unwrap();
    });
    // The load starts ~0.2 s after prepare writes the ground truth.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("ground_truth.json").exists() {
        assert!(Instant::now() < deadline, "prepare did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(first_stage + Duration::from_millis(1700));
    {
        signal_group(pgid, "STOP");
        let _resume = Stopped(pgid);
        std::thread::sleep(STALL);
    }
    runner.join().unwrap();
    read_result(out)
}

fn manifest(dir: &Path, name: &str, collection: &str, workload: &str, stages: &str) -> PathBuf {
    write_manifest(
        dir,
        name,
        &format!(
            r#"  collection: {{name: {collection}, dimension: 16}}
  data: {{rows: 2000, batchSize: 2000}}
  index: {{type: FLAT}}
  recall: {{sampleQueries: 5, share: 0}}
  workload:
{workload}
    requestTimeout: 20s
    operations: [{{name: search, weight: 1, search: {{topK: 10}}}}]
  stages:
{stages}
"#
        ),
    )
}

#[test]
fn a_stall_raises_the_open_model_p99_above_2s_and_shows_as_fewer_requests_in_the_closed_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let collection = "t_stall";
    rt.block_on(drop_collection(collection));
    let dir = tempfile::tempdir().unwrap();

    // Open model: arrivals keep their schedule during the stall, and their latency counts from
    // the intended send time, so the stall is in the percentiles.
    let open = manifest(
        dir.path(),
        "stall-open",
        collection,
        "    model: Open\n    maxInFlight: 2000",
        "    - {duration: 3s, rate: 200}\n    - {duration: 4s, rate: 200}",
    );
    let r = run_with_stall(open, &dir.path().join("open"), Duration::from_secs(3));
    let (before, during) = (&r.stages[0], &r.stages[1]);
    assert!(before.p99_ms < 1000.0, "baseline P99 {} ms", before.p99_ms);
    assert!(
        during.p99_ms > 2000.0,
        "open model P99 during a 2 s stall: {} ms",
        during.p99_ms
    );
    assert!(during.max_ms > 2000.0, "max {} ms", during.max_ms);
    // Every scheduled request was sent and answered: the stall is not hidden as missing load.
    assert_eq!(before.requests + during.requests, 1400);
    assert!(during.in_flight_max >= 200, "{during:?}");

    // Closed model: users wait for their answer, so the stall shows as fewer requests while
    // the few requests in flight during it carry the whole wait.
    let closed = manifest(
        dir.path(),
        "stall-closed",
        collection,
        "    model: Closed\n    waitTime: {min: 0ms, max: 0ms}",
        "    - {duration: 3s, users: 4, spawnRate: 100}\n    - {duration: 4s, users: 4, spawnRate: 100}",
    );
    let r = run_with_stall(closed, &dir.path().join("closed"), Duration::from_secs(3));
    let (before, during) = (&r.stages[0], &r.stages[1]);
    assert!(
        during.qps < 0.8 * before.qps,
        "closed model QPS {} during the stall vs {} before",
        during.qps,
        before.qps
    );
    assert!(during.max_ms > 1500.0, "max {} ms", during.max_ms);
    rt.block_on(drop_collection(collection));
}
