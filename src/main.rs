//! The `stampede` command: one binary for the controller, the prepare Job, the load workers and
//! local runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kube::CustomResourceExt;

use stampede::cli::{self, CliError};
use stampede::spec::StressTest;

/// Capacity and stress tests for Milvus vector databases.
#[derive(Parser, Debug)]
#[command(
    name = "stampede",
    version,
    about = "Capacity and stress tests for Milvus vector databases: prepare data, run load stages, report QPS, latency percentiles, recall, saturation, SLA verdicts and a capacity plan.",
    long_about = None
)]
struct Cli {
    /// More detail: -v shows the cause chain of errors and info logs, -vv debug logs.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format for structured logs on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "STAMPEDE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a StressTest's collection ready: create or reuse it, insert the generated rows
    /// (resuming an interrupted run), flush, build the index, load it, compute ground truth.
    Prepare(PrepareArgs),
    /// Run a whole StressTest on this machine: prepare (reusing data already there), the load
    /// stages, analysis and reports. Exit code 0 when the SLA passes (or none is set), 1 when it
    /// fails, 2 on error.
    Run(RunArgs),
    /// Re-render report.html and the CSV files of a result directory from its result.json.
    Report(ReportArgs),
    /// Check a StressTest or StressTestSchedule manifest and print every problem found (exit 2 when invalid).
    Validate(FileArgs),
    /// Print the CustomResourceDefinitions of StressTest and StressTestSchedule (generated from
    /// the Rust types) as two YAML documents separated by `---`; crds/ holds one file per CRD.
    Crd,
    /// Run one shard of a StressTest's load as a worker pod does: serve gRPC (Start, Snapshot,
    /// Stop) and run the stages from the instant Start names. Exit 0 after a run.
    Worker(WorkerArgs),
    /// Run the operator: watch StressTests, create their prepare and worker Jobs, collect the
    /// workers' measurements and write results into status (uses the in-cluster or kubeconfig
    /// credentials).
    Controller(ControllerArgs),
    /// Drop the manifest's collection (what the cleanup Job of a test with
    /// cleanup.dropCollection runs). Succeeds when the collection does not exist.
    Cleanup(CleanupArgs),
}

#[derive(Args, Debug)]
struct ControllerArgs {
    /// Image of the prepare and worker pods.
    #[arg(
        long,
        env = "STAMPEDE_IMAGE",
        default_value = "ghcr.io/stampede-dev/stampede:latest"
    )]
    image: String,
    /// Port the workers serve gRPC on.
    #[arg(long, env = "STAMPEDE_WORKER_PORT", default_value_t = stampede::worker::DEFAULT_PORT)]
    worker_port: u16,
    /// Watch only this namespace [default: all namespaces].
    #[arg(long, env = "STAMPEDE_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the /healthz, /readyz and /metrics (Prometheus) server.
    #[arg(long, env = "STAMPEDE_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    health_addr: std::net::SocketAddr,
    /// Address of the read-only web dashboard of every test the controller manages ("off" to
    /// disable it).
    #[arg(long, env = "STAMPEDE_DASHBOARD_ADDR", default_value = "0.0.0.0:8089")]
    dashboard_addr: String,
    /// Elect a leader with a Lease so that only one replica drives tests (run with it on when
    /// more than one replica may run, e.g. during a rolling update).
    #[arg(long, env = "STAMPEDE_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "STAMPEDE_LEASE_NAME", default_value = stampede::controller::leader::DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// Namespace of the leader Lease (the controller's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Where prepare, worker and cleanup pods may run, as JSON:
    /// {"nodeSelector":{..},"tolerations":[..],"affinity":{..}}.
    #[arg(long, env = "STAMPEDE_WORKER_SCHEDULING", default_value = "")]
    worker_scheduling: String,
}

#[derive(Args, Debug)]
struct CleanupArgs {
    /// StressTest manifest (YAML), or the plan the controller mounts.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Milvus address to use instead of spec.target.address (e.g. 127.0.0.1:19530).
    #[arg(long, env = "STAMPEDE_TARGET")]
    target: Option<String>,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// StressTest manifest (YAML), or the resolved plan the controller mounts.
    #[arg(long)]
    plan: PathBuf,
    /// This worker's shard as INDEX/COUNT, e.g. 0/4 [default: JOB_COMPLETION_INDEX/STAMPEDE_SHARDS].
    #[arg(long)]
    shard: Option<stampede::worker::ShardIndex>,
    /// Address to serve gRPC on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "0.0.0.0:7070")]
    listen: std::net::SocketAddr,
    /// Milvus address to use instead of spec.target.address (e.g. 127.0.0.1:19530).
    #[arg(long, env = "STAMPEDE_TARGET")]
    target: Option<String>,
    /// Ground truth written by `stampede prepare` [default: computed here when
    /// spec.recall.sampleQueries > 0].
    #[arg(long)]
    ground_truth: Option<PathBuf>,
    /// How long a finished worker keeps serving its snapshot before exiting, unless Stop comes
    /// first (e.g. 10m, 30s).
    #[arg(long, default_value = "10m")]
    linger: stampede::spec::DurationSpec,
}

#[derive(Args, Debug)]
struct FileArgs {
    /// StressTest manifest (YAML).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// StressTest manifest (YAML), the same file `kubectl apply` takes.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Milvus address to use instead of spec.target.address (e.g. 127.0.0.1:19530).
    #[arg(long, env = "STAMPEDE_TARGET")]
    target: Option<String>,
    /// Output directory [default: stampede-results/<name>-<time>].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// In-process load shards (0 = one per core, at most 4).
    #[arg(long, default_value_t = 0)]
    shards: u32,
    /// Validate the manifest and print the resolved plan without sending anything.
    #[arg(long)]
    dry_run: bool,
    /// Prefix of the Locust-compatible CSV files ({prefix}_stats.csv, …).
    #[arg(long, default_value = "stampede")]
    csv_prefix: String,
    /// No progress lines on stderr.
    #[arg(short, long)]
    quiet: bool,
    /// Serve the live dashboard (http://127.0.0.1:8089 by default) while the test runs, and
    /// the results afterwards until Ctrl-C.
    #[arg(long)]
    ui: bool,
    /// Address of the dashboard (implies --ui). Loopback by default: anyone who can reach it
    /// can read the results. Port 0 picks a free port (the URL is printed).
    #[arg(long)]
    ui_addr: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// A result directory written by `stampede run` (holds result.json).
    dir: PathBuf,
    /// Prefix of the Locust-compatible CSV files.
    #[arg(long, default_value = "stampede")]
    csv_prefix: String,
}

#[derive(Args, Debug)]
struct PrepareArgs {
    /// StressTest manifest (YAML), the same file `kubectl apply` takes.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Milvus address to use instead of spec.target.address (e.g. 127.0.0.1:19530).
    #[arg(long, env = "STAMPEDE_TARGET")]
    target: Option<String>,
    /// Directory for prepare.json and ground_truth.json.
    #[arg(short, long, default_value = "stampede-results/prepare")]
    output: PathBuf,
    /// Threads for the ground-truth computation (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress lines on stderr (logs and the summary still print).
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    init_logging(args.verbose, args.log_format);
    let verbose = args.verbose;
    let result = match args.command {
        Command::Crd => print_crds(),
        Command::Validate(a) => cli::validate(&a.file),
        Command::Report(a) => cli::report(&a.dir, &a.csv_prefix),
        Command::Run(a) => runtime().and_then(|rt| {
            rt.block_on(stampede::run::run(
                &a.file,
                stampede::run::RunOptions {
                    target: a.target,
                    output: a.output,
                    shards: a.shards,
                    dry_run: a.dry_run,
                    progress: !a.quiet,
                    csv_prefix: a.csv_prefix,
                    ui: a
                        .ui_addr
                        .or(a.ui.then_some(std::net::SocketAddr::from(([127, 0, 0, 1], 8089)))),
                },
            ))
        }),
        Command::Worker(a) => runtime().and_then(|rt| {
            rt.block_on(stampede::worker::run(stampede::worker::WorkerOptions {
                plan: a.plan,
                shard: a.shard,
                listen: a.listen,
                target: a.target,
                ground_truth: a.ground_truth,
                linger: a.linger.get(),
            }))
        }),
        Command::Cleanup(a) => runtime().and_then(|rt| {
            rt.block_on(cli::cleanup(&a.file, a.target.as_deref()))
        }),
        Command::Controller(a) => runtime().and_then(|rt| {
            let placement = stampede::controller::builders::Placement::from_json(
                &a.worker_scheduling,
            )
            .map_err(CliError::Runtime)?;
            let dashboard_addr = match a.dashboard_addr.as_str() {
                "off" | "" => None,
                text => Some(text.parse::<std::net::SocketAddr>().map_err(|e| {
                    CliError::Runtime(format!(
                        "--dashboard-addr `{text}` is not HOST:PORT or `off`: {e}"
                    ))
                })?),
            };
            rt.block_on(async {
                let client = kube::Client::try_default().await.map_err(|e| {
                    CliError::Runtime(format!(
                        "cannot connect to the Kubernetes API: {e} (set KUBECONFIG or run in a pod with a service account)"
                    ))
                })?;
                stampede::controller::reconcile::run_controller(
                    client,
                    stampede::controller::reconcile::ControllerOptions {
                        image: a.image,
                        worker_port: a.worker_port,
                        namespace: a.namespace,
                        health_addr: Some(a.health_addr),
                        dashboard_addr,
                        leader_election: a.leader_elect.then_some(
                            stampede::controller::reconcile::LeaderElection {
                                namespace: a.lease_namespace,
                                name: a.lease_name,
                            },
                        ),
                        placement,
                    },
                )
                .await
                .map_err(|e| CliError::Runtime(e.to_string()))?;
                Ok(ExitCode::SUCCESS)
            })
        }),
        Command::Prepare(a) => runtime().and_then(|rt| {
            rt.block_on(cli::prepare(cli::PrepareCommand {
                file: a.file,
                target: a.target,
                output: a.output,
                threads: a.threads,
                progress: !a.quiet,
            }))
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if verbose > 0 {
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    eprintln!("  caused by: {s}");
                    source = s.source();
                }
            } else if e.has_detail() {
                eprintln!("(run with -v for details)");
            }
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(e.to_string()))
}

/// Prints the StressTest and StressTestSchedule CRDs as two YAML documents, in the order (and
/// with the text) of crds/stresstest.yaml and crds/stresstestschedule.yaml.
fn print_crds() -> Result<ExitCode, CliError> {
    let docs = [
        serde_yaml_ng::to_string(&StressTest::crd()),
        serde_yaml_ng::to_string(&stampede::schedule::StressTestSchedule::crd()),
    ];
    let mut out = String::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&doc.map_err(|e| CliError::Runtime(e.to_string()))?);
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STAMPEDE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},h2=warn,hyper=warn,tower=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
