//! `stampede worker` as the worker Job runs it: the real binary, controlled over gRPC with the
//! client calls of `stampede::worker`, against the real local Milvus
//! (`STAMPEDE_MILVUS_ADDR`, default 127.0.0.1:19530). Every test that needs data prepares its own
//! collection `t_worker_<test>` (1000 rows, 16 dims, FLAT) and drops it at the end, pass or fail;
//! every worker process is killed when its test ends.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{milvus_addr, write_manifest};
use stampede::metrics::{Snapshot, merge_snapshots};
use stampede::milvus::{ConnectOptions, MilvusClient};
use stampede::prepare::{PrepareOptions, prepare};
use stampede::worker::{
    WorkerError, WorkerState, WorkerStatus, decode_snapshot, encode_snapshot, pull_snapshot,
    pull_status, start_worker, stop_worker, unix_ms_now,
};

/// Drops the collection when the test ends, pass or fail (on its own thread and runtime, since
/// Drop runs inside the test's runtime).
struct DropOnExit(String);

impl Drop for DropOnExit {
    fn drop(&mut self) {
        let name = self.0.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            rt.block_on(async {
                let client = MilvusClient::connect(ConnectOptions::new(milvus_addr())).await?;
                if client.has_collection(&name).await? {
                    client.drop_collection(&name).await?;
                }
                Ok::<(), stampede::milvus::MilvusError>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleanup: cannot drop `{}`: {e}", self.0),
            Err(_) => eprintln!("cleanup: dropping `{}` panicked", self.0),
        }
    }
}

/// Writes a manifest for collection `t_worker_<test>` with these stages and prepares the
/// collection (1000 rows × 16 dims, FLAT). Returns the manifest and the cleanup guard.
async fn prepared(
    dir: &Path,
    test: &str,
    stages: &str,
    ground_truth: Option<&Path>,
) -> (PathBuf, DropOnExit) {
    let collection = format!("t_worker_{test}");
    let guard = DropOnExit(collection.clone());
    let manifest = write_manifest(
        dir,
        test,
        &format!(
            r#"  collection: {{name: {collection}, dimension: 16, onExisting: Recreate}}
  data: {{rows: 1000, batchSize: 1000}}
  index: {{type: FLAT}}
  recall: {{sampleQueries: 20, topK: 10, share: 0.5}}
  workload:
    model: Closed
    requestTimeout: 2s
    waitTime: {{min: 5ms, max: 20ms}}
    operations:
      - {{name: search, weight: 1, search: {{topK: 10}}}}
  stages:
{stages}"#
        ),
    );
    let spec = stampede::spec::load_manifest(&manifest).unwrap().spec;
    let client = MilvusClient::connect(ConnectOptions::new(milvus_addr()))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test Milvus at {}: {e}",
                milvus_addr()
            )
        });
    prepare(
        &client,
        &spec,
        &PrepareOptions {
            ground_truth_path: ground_truth.map(Path::to_path_buf),
            threads: 1,
            progress: false,
        },
    )
    .await
    .unwrap();
    (manifest, guard)
}

/// A `stampede worker` process, killed when dropped; its stderr is printed if the test fails.
struct WorkerProcess {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl WorkerProcess {
    /// Starts `stampede worker --plan MANIFEST --shard SHARD --listen 127.0.0.1:0 EXTRA…` and
    /// reads the address it bound from its stdout.
    fn spawn(manifest: &Path, shard: &str, extra: &[&str]) -> WorkerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stampede"))
            .arg("worker")
            .arg("--plan")
            .arg(manifest)
            .args(["--shard", shard, "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("STAMPEDE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        // Stdout is read to its end, so the worker never writes into a closed pipe.
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut process = WorkerProcess {
            child,
            addr: String::new(),
            stderr,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("worker {shard} printed no address: {e}"));
        let prefix = format!("worker shard {shard} listening on ");
        process.addr = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("unexpected first line `{line}`"))
            .to_string();
        process
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit by itself.
    async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} still running after {limit:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of worker {} ---\n{}",
                self.addr,
                self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
            );
        }
    }
}

/// Pulls `addr` every 100 ms until `done` holds, for at most `limit`.
async fn pull_until(
    addr: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&WorkerStatus) -> bool,
) -> WorkerStatus {
    let deadline = Instant::now() + limit;
    loop {
        let status = pull_status(addr).await.unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{addr}: not {what} after {limit:?}: state {}, {}",
            status.state,
            status.message
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests of a snapshot: every stage, ramp and steady.
fn stage_requests(s: &Snapshot) -> u64 {
    s.stages
        .iter()
        .map(|m| m.ramp.total().requests + m.steady.total().requests)
        .sum()
}

/// Requests of a snapshot's per-second series.
fn series_requests(s: &Snapshot) -> u64 {
    s.seconds.iter().map(|p| p.window.total().requests).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_started_at_one_instant_merge_to_the_sum_of_their_requests() {
    let dir = tempfile::tempdir().unwrap();
    let stages = "    - {duration: 2s, users: 4, spawnRate: 8}\n    - {duration: 2s, users: 4, spawnRate: 8}\n";
    let (manifest, _collection) = prepared(dir.path(), "two", stages, None).await;
    let mut workers = [
        WorkerProcess::spawn(&manifest, "0/2", &["--linger", "60s"]),
        WorkerProcess::spawn(&manifest, "1/2", &["--linger", "60s"]),
    ];
    for (i, w) in workers.iter().enumerate() {
        // Each worker computes its own ground truth (sampleQueries 20, no --ground-truth).
        let s = pull_until(&w.addr, Duration::from_secs(60), "ready", |s| s.ready).await;
        assert_eq!(s.state, WorkerState::Idle);
        assert_eq!((s.shard.index, s.shard.count), (i as u32, 2));
        assert_eq!(s.start_unix_ms, None);
    }

    let at = unix_ms_now() + 1000;
    for w in &workers {
        let started = start_worker(&w.addr, at).await.unwrap();
        assert_eq!(started.start_unix_ms, at);
        assert_eq!(started.late, Duration::ZERO);
    }
    // The same Start again is harmless; another instant is refused.
    assert_eq!(
        start_worker(&workers[0].addr, at)
            .await
            .unwrap()
            .start_unix_ms,
        at
    );
    match start_worker(&workers[0].addr, at + 1).await {
        Err(WorkerError::Refused { code, call, .. }) => {
            assert_eq!((code, call), (tonic::Code::FailedPrecondition, "Start"))
        }
        other => panic!("a conflicting Start was not refused: {other:?}"),
    }

    let mut snaps = Vec::new();
    for w in &workers {
        let s = pull_until(&w.addr, Duration::from_secs(30), "finished", |s| {
            s.state == WorkerState::Finished
        })
        .await;
        assert_eq!(s.message, "all 2 stage(s) complete");
        assert_eq!(s.start_unix_ms, Some(at));
        snaps.push(s.snapshot);
    }

    for (i, s) in snaps.iter().enumerate() {
        assert_eq!((s.shard, s.shards), (i as u32, 2));
        assert_eq!(s.stages.len(), 2);
        for m in &s.stages {
            assert!(m.complete, "shard {i} stage {}", m.stage);
            assert_eq!(m.steady.users, 2, "shard {i} stage {}", m.stage);
            assert_eq!(m.steady.total().failures, 0, "{:?}", m.steady);
        }
        assert!(stage_requests(s) > 0, "shard {i} sent nothing");
        assert_eq!(series_requests(s), stage_requests(s), "shard {i}");
    }

    let merged = merge_snapshots(&snaps);
    assert_eq!(merged.shards, 2);
    assert_eq!(
        stage_requests(&merged),
        stage_requests(&snaps[0]) + stage_requests(&snaps[1])
    );
    assert_eq!(series_requests(&merged), stage_requests(&merged));
    for m in &merged.stages {
        assert!(m.complete);
        assert_eq!(m.steady.users, 4);
        let hist = m.ramp.total().latency.count() + m.steady.total().latency.count();
        assert_eq!(hist, m.ramp.total().requests + m.steady.total().requests);
    }
    // Recall was measured with the ground truth the workers computed.
    let recall_samples: u64 = merged
        .stages
        .iter()
        .map(|m| m.steady.total().recall_samples)
        .sum();
    assert!(recall_samples > 0);

    for w in &mut workers {
        let stopped = stop_worker(&w.addr).await.unwrap();
        assert!(stopped.exiting);
        assert_eq!(stopped.state, WorkerState::Finished);
        let status = w.exit_within(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_pulled_twice_is_cumulative_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("ground_truth.json");
    let stages = "    - {duration: 4s, users: 2, spawnRate: 10}\n";
    let (manifest, _collection) = prepared(dir.path(), "twice", stages, Some(&truth)).await;
    let truth_arg = truth.display().to_string();
    let w = WorkerProcess::spawn(
        &manifest,
        "0/1",
        &["--ground-truth", &truth_arg, "--linger", "60s"],
    );
    pull_until(&w.addr, Duration::from_secs(30), "ready", |s| s.ready).await;
    start_worker(&w.addr, unix_ms_now()).await.unwrap();

    let first = pull_until(&w.addr, Duration::from_secs(10), "measuring", |s| {
        s.snapshot.seconds.len() >= 2
    })
    .await;
    assert_eq!(first.state, WorkerState::Running);
    let second = pull_until(&w.addr, Duration::from_secs(10), "a second later", |s| {
        s.snapshot.seconds.len() > first.snapshot.seconds.len()
    })
    .await;
    let (a, b) = (&first.snapshot, &second.snapshot);
    assert!(stage_requests(a) > 0);
    assert!(stage_requests(b) > stage_requests(a));
    // Seconds before the newest one of the first pull are closed: the second pull repeats them.
    let closed = a.seconds.len() - 1;
    assert_eq!(&b.seconds[..closed], &a.seconds[..closed]);
    // Per operation, nothing went down.
    let (ta, tb) = (a.stages[0].steady.total(), b.stages[0].steady.total());
    assert!(tb.requests >= ta.requests);
    assert!(tb.latency.count() >= ta.latency.count());

    let done = pull_until(&w.addr, Duration::from_secs(20), "finished", |s| {
        s.state == WorkerState::Finished
    })
    .await;
    assert!(stage_requests(&done.snapshot) >= stage_requests(b));
    // Once finished, pulls repeat exactly.
    let (state, again) = pull_snapshot(&w.addr).await.unwrap();
    assert_eq!(state, WorkerState::Finished);
    assert_eq!(again, done.snapshot);
    // The ground truth file was used: recall was measured.
    assert!(done.snapshot.stages[0].steady.total().recall_samples > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_load_early_and_marks_the_unfinished_stage_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let stages = "    - {duration: 2s, users: 2, spawnRate: 10}\n    - {duration: 60s, users: 2, spawnRate: 10}\n";
    let (manifest, _collection) = prepared(dir.path(), "stop", stages, None).await;
    let mut w = WorkerProcess::spawn(&manifest, "0/1", &["--linger", "60s"]);
    pull_until(&w.addr, Duration::from_secs(30), "ready", |s| s.ready).await;
    start_worker(&w.addr, unix_ms_now() + 200).await.unwrap();
    let in_second = pull_until(&w.addr, Duration::from_secs(20), "in stage 2", |s| {
        s.snapshot.stages[0].complete && s.snapshot.stages[1].steady.total().requests > 0
    })
    .await;
    assert_eq!(in_second.state, WorkerState::Running);

    let stopped = stop_worker(&w.addr).await.unwrap();
    assert!(!stopped.exiting);
    assert_eq!(stopped.state, WorkerState::Running);
    let done = pull_until(&w.addr, Duration::from_secs(15), "finished", |s| {
        s.state == WorkerState::Finished
    })
    .await;
    assert_eq!(
        done.message,
        "stopped early (a Stop request): stage(s) 2 of 2 incomplete"
    );
    let stages = &done.snapshot.stages;
    assert!(stages[0].complete);
    assert!(!stages[1].complete);
    assert!(
        stages[1].steady_seconds < 30.0,
        "{}",
        stages[1].steady_seconds
    );
    assert!(
        stages[1].steady.total().requests >= in_second.snapshot.stages[1].steady.total().requests
    );
    assert_eq!(
        series_requests(&done.snapshot),
        stage_requests(&done.snapshot)
    );

    // The worker still serves its snapshot, and a second Stop lets it exit 0.
    let (state, again) = pull_snapshot(&w.addr).await.unwrap();
    assert_eq!(state, WorkerState::Finished);
    assert_eq!(again, done.snapshot);
    assert!(stop_worker(&w.addr).await.unwrap().exiting);
    assert_eq!(w.exit_within(Duration::from_secs(10)).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_leaves_its_last_snapshot_usable() {
    let dir = tempfile::tempdir().unwrap();
    let stages = "    - {duration: 60s, users: 2, spawnRate: 10}\n";
    let (manifest, _collection) = prepared(dir.path(), "killed", stages, None).await;
    let mut w = WorkerProcess::spawn(&manifest, "0/1", &["--linger", "60s"]);
    pull_until(&w.addr, Duration::from_secs(30), "ready", |s| s.ready).await;
    start_worker(&w.addr, unix_ms_now()).await.unwrap();
    let last = pull_until(&w.addr, Duration::from_secs(10), "measuring", |s| {
        s.snapshot.stages[0].steady.total().requests > 0
    })
    .await
    .snapshot;

    w.child.kill().unwrap();
    w.child.wait().unwrap();

    // What was pulled stays usable: it encodes and decodes to itself and merges.
    assert_eq!(
        decode_snapshot(&encode_snapshot(&last).unwrap()).unwrap(),
        last
    );
    let merged = merge_snapshots(std::slice::from_ref(&last));
    assert_eq!(stage_requests(&merged), stage_requests(&last));
    assert!(stage_requests(&merged) > 0);
    assert!(!merged.stages[0].complete);
    assert!(merged.stages[0].steady.total().latency.quantile_us(0.99) > 0);

    let err = pull_snapshot(&w.addr).await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "worker at {} is unreachable: tcp connect error: Connection refused (os error 111)",
            w.addr
        )
    );
    assert_eq!(
        err.for_shard(0).to_string(),
        format!(
            "worker shard 0 at {} is unreachable: tcp connect error: Connection refused (os error 111)",
            w.addr
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_load_serves_the_final_pull_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let stages = "    - {duration: 60s, users: 2, spawnRate: 10}\n";
    let (manifest, _collection) = prepared(dir.path(), "sigterm", stages, None).await;
    // After SIGTERM the worker stays min(--linger, 25 s).
    let mut w = WorkerProcess::spawn(&manifest, "0/1", &["--linger", "8s"]);
    pull_until(&w.addr, Duration::from_secs(30), "ready", |s| s.ready).await;
    start_worker(&w.addr, unix_ms_now()).await.unwrap();
    pull_until(&w.addr, Duration::from_secs(10), "measuring", |s| {
        stage_requests(&s.snapshot) > 0
    })
    .await;

    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &w.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let done = pull_until(&w.addr, Duration::from_secs(6), "finished", |s| {
        s.state == WorkerState::Finished
    })
    .await;
    assert_eq!(
        done.message,
        "stopped early (SIGTERM): stage(s) 1 of 1 incomplete"
    );
    assert!(!done.snapshot.stages[0].complete);
    assert!(stage_requests(&done.snapshot) > 0);
    assert_eq!(w.exit_within(Duration::from_secs(20)).await.code(), Some(0));
    let lived = sent.elapsed();
    assert!(
        lived >= Duration::from_secs(7) && lived < Duration::from_secs(12),
        "exited {lived:?} after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_reach_milvus_reports_failed_refuses_start_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(
        dir.path(),
        "unreachable",
        "  collection: {name: t_worker_never_created, dimension: 16}\n  recall: {sampleQueries: 0}\n  stages: [{duration: 1s, users: 1, spawnRate: 1}]\n",
    );
    let mut w = WorkerProcess::spawn(
        &manifest,
        "0/1",
        &["--target", "127.0.0.1:1", "--linger", "2s"],
    );
    let failed = pull_until(&w.addr, Duration::from_secs(30), "failed", |s| {
        s.state == WorkerState::Failed
    })
    .await;
    assert!(!failed.ready);
    assert!(
        failed
            .message
            .starts_with("cannot connect to Milvus at 127.0.0.1:1: "),
        "{}",
        failed.message
    );
    match start_worker(&w.addr, unix_ms_now()).await {
        Err(WorkerError::Refused { code, message, .. }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition);
            assert_eq!(
                message,
                format!("cannot start: the worker failed: {}", failed.message)
            );
        }
        other => panic!("Start after a failed setup was not refused: {other:?}"),
    }
    assert_eq!(w.exit_within(Duration::from_secs(10)).await.code(), Some(2));
}
