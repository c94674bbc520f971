//! `stampede run -f FILE`: the whole test on one machine — prepare (reusing the data when it is
//! already there), the stages run by in-process shards, analysis, reports.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::cli::{CliError, connect_options};
use crate::load::{self, Recorder};
use crate::metrics::{SecondSample, merge_snapshots};
use crate::milvus::MilvusClient;
use crate::prepare::{self, PrepareOptions};
use crate::result::{RunContext, RunResult, build_result};
use crate::spec::{LoadModel, StressTest, StressTestSpec};

/// Options of `stampede run` that are not in the manifest.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Milvus address to use instead of spec.target.address.
    pub target: Option<String>,
    /// Output directory (default `stampede-results/<name>-<time>`).
    pub output: Option<PathBuf>,
    /// In-process shards (0 = one per core, at most 4).
    pub shards: u32,
    /// Check and print the plan, send nothing.
    pub dry_run: bool,
    /// Progress on stderr.
    pub progress: bool,
    /// Prefix of the Locust-compatible CSV files.
    pub csv_prefix: String,
    /// Serve the live dashboard on this address (`--ui`), and keep serving after the run.
    pub ui: Option<std::net::SocketAddr>,
}

/// Number of shards `run` uses by default: one per core, at most 4, never more than the peak
/// users of a closed test (a shard with no users would idle).
pub fn default_shards(spec: &StressTestSpec) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let mut n = cores.clamp(1, 4);
    if spec.workload.model == LoadModel::Closed {
        let peak = spec
            .stages
            .iter()
            .filter_map(|s| s.users)
            .max()
            .unwrap_or(1);
        n = n.min(peak.max(1));
    }
    n
}

/// `stampede run -f FILE`.
pub async fn run(file: &Path, opts: RunOptions) -> Result<ExitCode, CliError> {
    let st = crate::spec::load_manifest(file)?;
    let name = st.metadata.name.clone().unwrap_or_default();
    let spec = st.spec.clone();
    let shards = if opts.shards == 0 {
        default_shards(&spec)
    } else {
        opts.shards
    };
    if opts.dry_run {
        print!("{}", describe_plan(&st, shards));
        return Ok(ExitCode::SUCCESS);
    }
    let output = opts
        .output
        .clone()
        .unwrap_or_else(|| default_output_dir(&name));
    std::fs::create_dir_all(&output).map_err(|e| {
        CliError::Runtime(format!(
            "cannot create output directory {}: {e}",
            output.display()
        ))
    })?;
    let ui = crate::dashboard::local::LocalDashboard::start(opts.ui, &spec, &output)
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let address = opts.target.clone().unwrap_or(spec.target.address.clone());
    tracing::info!(%address, database = %spec.target.database, "connecting to Milvus");
    let client = MilvusClient::connect(connect_options(&spec, opts.target.as_deref())?).await?;
    if opts.progress {
        eprintln!(
            "connected to Milvus {} at {address}; results go to {}",
            client.server_version(),
            output.display()
        );
    }

    ui.connected(&address, client.server_version());
    let started_at = now_rfc3339();
    let gt_path = output.join("ground_truth.json");
    let prepared = prepare::prepare(
        &client,
        &spec,
        &PrepareOptions {
            ground_truth_path: Some(gt_path.clone()),
            threads: 0,
            progress: opts.progress,
        },
    )
    .await?;
    let truth = if prepared.ground_truth.is_some() {
        let text = std::fs::read(&gt_path)
            .map_err(|e| CliError::Runtime(format!("cannot read {}: {e}", gt_path.display())))?;
        Some(Arc::new(serde_json::from_slice(&text).map_err(|e| {
            CliError::Runtime(format!(
                "{} is not valid ground truth: {e}",
                gt_path.display()
            ))
        })?))
    } else {
        None
    };

    // One connection per shard, as separate worker pods would have.
    let mut clients = Vec::new();
    for _ in 0..shards {
        clients.push(MilvusClient::connect(connect_options(&spec, opts.target.as_deref())?).await?);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now() + Duration::from_millis(200);
    // Server metrics are scraped by their own task; a scrape never blocks or fails the load.
    let scraper = crate::observe::start_scraper(
        crate::observe::local_plan(spec.target.metrics.as_ref(), &address),
        t0,
    );
    let mut recorders = Vec::new();
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let mut plan = load::shard_plan(&spec, i as u32, shards, truth.clone());
        // The shards share this process: one of them measures its CPU.
        plan.sample_cpu = i == 0;
        let plan = Arc::new(plan);
        let recorder = Arc::new(Recorder::new(i as u32, shards, spec.stages.len(), t0));
        recorders.push(Arc::clone(&recorder));
        tasks.push(tokio::spawn(load::run_shard(
            c,
            plan,
            recorder,
            t0,
            stop_rx.clone(),
        )));
    }

    ui.running(&recorders, t0);
    let total: Duration = spec.stages.iter().map(|s| s.duration.get()).sum();
    if opts.progress {
        eprintln!(
            "running {} stage(s) for {} with {shards} shard(s) ({:?} model, {:?} consistency); Ctrl-C stops and keeps the results",
            spec.stages.len(),
            prepare::human_seconds(total.as_secs_f64()),
            spec.workload.model,
            spec.workload.consistency
        );
    }
    let mut interrupted = None;
    let mut live = LiveProgress::new(opts.progress);
    let all_done = futures::future::join_all(tasks);
    tokio::pin!(all_done);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut all_done => break,
            _ = tokio::signal::ctrl_c(), if interrupted.is_none() => {
                interrupted = Some("interrupted by Ctrl-C; the results cover what ran until then".to_string());
                let _ = stop_tx.send(true);
                if opts.progress {
                    eprintln!("\nstopping: waiting for requests in flight, then writing the results measured so far");
                }
            }
            _ = tick.tick() => live.show(&spec, &recorders, t0),
        }
    }
    live.finish();
    let server = scraper.finish().await;
    ui.analyzing();

    let merged = merge_snapshots(&recorders.iter().map(|r| r.snapshot()).collect::<Vec<_>>());
    let mut result = build_result(
        &spec,
        RunContext {
            name: name.clone(),
            started_at,
            finished_at: now_rfc3339(),
            target: address,
            server_version: client.server_version().to_string(),
            interrupted,
            prepare: Some(prepared),
        },
        merged,
    );
    crate::result::attach_server(&mut result, server);
    let written = crate::report::write_all(&output, &result, &opts.csv_prefix)?;
    ui.finished(&result);
    print!("{}", crate::report::render_terminal_summary(&result));
    println!("\nresults: {}", output.display());
    for p in written {
        println!("  {}", p.display());
    }
    if spec.cleanup.drop_collection {
        // The results are written: a failed drop is reported but changes no verdict.
        match client.drop_collection(&spec.collection.name).await {
            Ok(()) => println!(
                "dropped collection {} (cleanup.dropCollection)",
                spec.collection.name
            ),
            Err(e) => eprintln!(
                "warning: cannot drop collection {} (cleanup.dropCollection): {e}",
                spec.collection.name
            ),
        }
    }
    ui.serve_until_ctrl_c().await;
    Ok(exit_code(&result))
}

/// 0 when the SLA passes (or none is set), 1 when it fails.
pub fn exit_code(result: &RunResult) -> ExitCode {
    if result.sla_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn default_output_dir(name: &str) -> PathBuf {
    let stamp: String = now_rfc3339()
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(14)
        .collect();
    PathBuf::from("stampede-results").join(format!("{name}-{stamp}"))
}

/// Current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// What `run --dry-run` prints: the resolved plan.
pub fn describe_plan(st: &StressTest, shards: u32) -> String {
    let spec = &st.spec;
    let mut out = format!(
        "StressTest `{}` is valid.\n  target      {} (database {})\n  collection  {} ({} dims, {}, {} rows, index {})\n  workload    {:?} model, {:?} consistency, {} operation(s): {}\n  shards      {shards}\n",
        st.metadata.name.as_deref().unwrap_or(""),
        spec.target.address,
        spec.target.database,
        spec.collection.name,
        spec.collection.dimension,
        spec.collection.metric.as_str(),
        spec.data.rows,
        spec.index.index_type,
        spec.workload.model,
        spec.workload.consistency,
        spec.workload.operations.len(),
        spec.workload
            .operations
            .iter()
            .map(|o| format!("{}×{}", o.name, o.weight))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (i, s) in spec.stages.iter().enumerate() {
        let load = match (s.users, s.rate) {
            (Some(u), _) => format!("{u} users (+{}/s)", s.spawn_rate.unwrap_or(0.0)),
            (None, Some(r)) => format!("{r} requests/s"),
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "  stage {}     {} for {}\n",
            i + 1,
            load,
            s.duration
        ));
    }
    out
}

/// The live progress line: stage, users, QPS and latency of the last complete second.
struct LiveProgress {
    enabled: bool,
    tty: bool,
    drawn: bool,
}

impl LiveProgress {
    fn new(enabled: bool) -> Self {
        LiveProgress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    fn show(&mut self, spec: &StressTestSpec, recorders: &[Arc<Recorder>], t0: Instant) {
        if !self.enabled || Instant::now() < t0 {
            return;
        }
        let second = t0.elapsed().as_secs().saturating_sub(1);
        let mut merged: Option<SecondSample> = None;
        let mut stage = 0;
        let mut in_flight = 0;
        for r in recorders {
            if let Some((s, _)) = r.position() {
                stage = stage.max(s);
            }
            in_flight += r.in_flight();
            if let Some(s) = r.second(second) {
                match &mut merged {
                    Some(m) => m.window.merge(&s.window),
                    None => merged = Some(s),
                }
            }
        }
        let Some(s) = merged else { return };
        let t = s.window.total();
        let load = match spec.workload.model {
            LoadModel::Closed => format!("{} users", s.window.users),
            LoadModel::Open => format!("{} req/s asked", s.window.users),
        };
        let line = format!(
            "[{:>4}s] stage {}/{} · {load} · {} req/s · P95 {:.1} ms · P99 {:.1} ms · errors {} · in flight {in_flight}",
            second,
            stage + 1,
            spec.stages.len(),
            t.requests,
            t.latency.quantile_us(0.95) as f64 / 1000.0,
            t.latency.quantile_us(0.99) as f64 / 1000.0,
            t.failures,
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            self.drawn = true;
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}
