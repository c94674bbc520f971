//! Request ceiling of the load engine: how many requests per second one shard of Stampede's real
//! engine (`load::run_shard` + `Recorder` + `MilvusClient`) drives on one core, against a trivial
//! in-process Milvus gRPC server that answers every Search at once.
//!
//! The server runs on its own tokio runtime (one worker thread, named `ceil-server`), the client
//! on another (one worker thread, named `ceil-client`), so the CPU of each side is read separately
//! from `/proc/self/task/<tid>/stat`. The goal (issue): ≥ 50,000 requests/s per client core.
//!
//! Run with `cargo bench --bench ceiling`. Environment:
//! - `CEILING_USERS` (64): closed-model users, wait time 0.
//! - `CEILING_RATE` (unset): run the open model at this many requests/s instead (engine mode), to
//!   see the engine's CPU per request at a fixed offered load rather than at its ceiling.
//! - `CEILING_SECS` (10): stage length, s.
//! - `CEILING_RUNTIME` (`multi`): `multi` = multi-thread runtime with 1 worker (as `stampede run`
//!   builds its runtime), `current` = current-thread runtime.
//! - `CEILING_NQ` (1), `CEILING_DIM` (128): search shape.
//! - `CEILING_MODE` (`engine`): `engine` = `load::run_shard` (the benchmark proper); `client` =
//!   `MilvusClient::search` looped by plain tasks (the client library without the engine); `raw` =
//!   the generated tonic client on a default channel (the floor tonic + hyper + h2 set).
//! - Raw mode only: `CEILING_RAW_H2` = `keepalive` and/or `window` adds MilvusClient's HTTP/2
//!   keep-alive settings and/or `http2_adaptive_window(true)` (`CEILING_RAW_ADAPTIVE=1`: both);
//!   `CEILING_RAW_TIMEOUTS=1` adds the three timers an engine request carries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stampede::load::{self, Recorder};
use stampede::milvus::{ConnectOptions, MilvusClient};
use stampede::pb::milvus::common as pbc;
use stampede::pb::milvus::schema as pbs;
use stampede::pb::milvus::service as pbm;
use stampede::pb::milvus::service::milvus_service_server::{MilvusService, MilvusServiceServer};
use tonic::{Request, Response, Status};

/// Reads a numeric environment variable, falling back to `default` when unset or malformed.
fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("ignoring {name}={v:?}: not a number");
            default
        }),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------
// The trivial server
// ---------------------------------------------------------------------------------------------

/// A Milvus that answers Search instantly with `topk` made-up hits per query.
#[derive(Default)]
struct TrivialMilvus {
    searches: AtomicU64,
}

fn ok_status() -> Option<pbc::Status> {
    Some(pbc::Status {
        error_code: 0,
        reason: String::new(),
        code: 0,
        retriable: false,
        detail: String::new(),
    })
}

fn unimplemented<T>(method: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{method} is not served by the ceiling benchmark's trivial server"
    )))
}

/// topK from the request's search params (`topk`), 10 when absent.
fn top_k_of(req: &pbm::SearchRequest) -> usize {
    req.search_params
        .iter()
        .find(|kv| kv.key == "topk")
        .and_then(|kv| kv.value.parse().ok())
        .unwrap_or(10)
}

#[tonic::async_trait]
impl MilvusService for TrivialMilvus {
    async fn connect(
        &self,
        _: Request<pbm::ConnectRequest>,
    ) -> Result<Response<pbm::ConnectResponse>, Status> {
        Ok(Response::new(pbm::ConnectResponse {
            status: ok_status(),
            server_info: Some(pbc::ServerInfo {
                build_tags: "ceiling-trivial".to_string(),
                ..Default::default()
            }),
            identifier: 1,
        }))
    }

    async fn get_version(
        &self,
        _: Request<pbm::GetVersionRequest>,
    ) -> Result<Response<pbm::GetVersionResponse>, Status> {
        Ok(Response::new(pbm::GetVersionResponse {
            status: ok_status(),
            version: "v0.0.0-ceiling".to_string(),
        }))
    }

    async fn check_health(
        &self,
        _: Request<pbm::CheckHealthRequest>,
    ) -> Result<Response<pbm::CheckHealthResponse>, Status> {
        Ok(Response::new(pbm::CheckHealthResponse {
            status: ok_status(),
            is_healthy: true,
            reasons: Vec::new(),
        }))
    }

    async fn search(
        &self,
        request: Request<pbm::SearchRequest>,
    ) -> Result<Response<pbm::SearchResults>, Status> {
        self.searches.fetch_add(1, Ordering::Relaxed);
        let req = request.into_inner();
        let nq = req.nq.max(1) as usize;
        let k = top_k_of(&req);
        let ids: Vec<i64> = (0..(nq * k) as i64).collect();
        let scores: Vec<f32> = (0..nq * k).map(|i| (i % k) as f32 * 0.01).collect();
        Ok(Response::new(pbm::SearchResults {
            status: ok_status(),
            results: Some(pbs::SearchResultData {
                num_queries: nq as i64,
                top_k: k as i64,
                fields_data: Vec::new(),
                scores,
                ids: Some(pbs::IDs {
                    id_field: Some(pbs::i_ds::IdField::IntId(pbs::LongArray { data: ids })),
                }),
                topks: vec![k as i64; nq],
                output_fields: Vec::new(),
            }),
            collection_name: req.collection_name,
        }))
    }

    async fn create_collection(
        &self,
        _: Request<pbm::CreateCollectionRequest>,
    ) -> Result<Response<pbc::Status>, Status> {
        unimplemented("CreateCollection")
    }
    async fn describe_collection(
        &self,
        _: Request<pbm::DescribeCollectionRequest>,
    ) -> Result<Response<pbm::DescribeCollectionResponse>, Status> {
        unimplemented("DescribeCollection")
    }
    async fn has_collection(
        &self,
        _: Request<pbm::HasCollectionRequest>,
    ) -> Result<Response<pbm::BoolResponse>, Status> {
        unimplemented("HasCollection")
    }
    async fn drop_collection(
        &self,
        _: Request<pbm::DropCollectionRequest>,
    ) -> Result<Response<pbc::Status>, Status> {
        unimplemented("DropCollection")
    }
    async fn get_collection_statistics(
        &self,
        _: Request<pbm::GetCollectionStatisticsRequest>,
    ) -> Result<Response<pbm::GetCollectionStatisticsResponse>, Status> {
        unimplemented("GetCollectionStatistics")
    }
    async fn insert(
        &self,
        _: Request<pbm::InsertRequest>,
    ) -> Result<Response<pbm::MutationResult>, Status> {
        unimplemented("Insert")
    }
    async fn flush(
        &self,
        _: Request<pbm::FlushRequest>,
    ) -> Result<Response<pbm::FlushResponse>, Status> {
        unimplemented("Flush")
    }
    async fn get_flush_state(
        &self,
        _: Request<pbm::GetFlushStateRequest>,
    ) -> Result<Response<pbm::GetFlushStateResponse>, Status> {
        unimplemented("GetFlushState")
    }
    async fn create_index(
        &self,
        _: Request<pbm::CreateIndexRequest>,
    ) -> Result<Response<pbc::Status>, Status> {
        unimplemented("CreateIndex")
    }
    async fn describe_index(
        &self,
        _: Request<pbm::DescribeIndexRequest>,
    ) -> Result<Response<pbm::DescribeIndexResponse>, Status> {
        unimplemented("DescribeIndex")
    }
    async fn get_index_build_progress(
        &self,
        _: Request<pbm::GetIndexBuildProgressRequest>,
    ) -> Result<Response<pbm::GetIndexBuildProgressResponse>, Status> {
        unimplemented("GetIndexBuildProgress")
    }
    async fn drop_index(
        &self,
        _: Request<pbm::DropIndexRequest>,
    ) -> Result<Response<pbc::Status>, Status> {
        unimplemented("DropIndex")
    }
    async fn load_collection(
        &self,
        _: Request<pbm::LoadCollectionRequest>,
    ) -> Result<Response<pbc::Status>, Status> {
        unimplemented("LoadCollection")
    }
    async fn release_collection(
        &self,
        _: Request<pbm::ReleaseCollectionRequest>,
    ) -> Result<Response<pbc::Status>, Status> {
        unimplemented("ReleaseCollection")
    }
    async fn get_load_state(
        &self,
        _: Request<pbm::GetLoadStateRequest>,
    ) -> Result<Response<pbm::GetLoadStateResponse>, Status> {
        unimplemented("GetLoadState")
    }
    async fn get_loading_progress(
        &self,
        _: Request<pbm::GetLoadingProgressRequest>,
    ) -> Result<Response<pbm::GetLoadingProgressResponse>, Status> {
        unimplemented("GetLoadingProgress")
    }
    async fn query(
        &self,
        _: Request<pbm::QueryRequest>,
    ) -> Result<Response<pbm::QueryResults>, Status> {
        unimplemented("Query")
    }
}

/// A running trivial server: its address, its search counter, and how to stop it.
struct Server {
    addr: std::net::SocketAddr,
    svc: Arc<TrivialMilvus>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts the trivial server on 127.0.0.1:0 on its own runtime (one worker thread).
fn start_server() -> Server {
    let svc = Arc::new(TrivialMilvus::default());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let served = Arc::clone(&svc);
    let thread = std::thread::Builder::new()
        .name("ceil-srv-main".to_string())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("ceil-server")
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let serve = async move {
                    let incoming = tonic::transport::server::TcpIncoming::bind(
                        "127.0.0.1:0".parse().expect("address"),
                    )
                    .expect("bind 127.0.0.1:0")
                    .with_nodelay(Some(true));
                    addr_tx
                        .send(incoming.local_addr().expect("local address"))
                        .expect("send address");
                    tonic::transport::Server::builder()
                        .add_service(MilvusServiceServer::from_arc(served))
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = shutdown_rx.await;
                        })
                        .await
                        .expect("serve");
                };
                // Run the server on the runtime's worker, not on this thread.
                tokio::spawn(serve).await.expect("server task");
            });
        })
        .expect("server thread");
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server address");
    Server {
        addr,
        svc,
        shutdown,
        thread,
    }
}

// ---------------------------------------------------------------------------------------------
// Per-thread CPU
// ---------------------------------------------------------------------------------------------

/// CPU seconds (user + system) of every thread of this process, by thread name.
fn cpu_by_thread_name() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime, stime: fields 14 and 15 of stat(5), the 12th and 13th after the name.
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        if let (Some(u), Some(s)) = (ticks(11), ticks(12)) {
            *out.entry(name).or_insert(0.0) += (u + s) / 100.0;
        }
    }
    out
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

/// The benchmark's StressTest: closed model with `users` and no wait, or, when `rate` is set,
/// the open model at `rate` requests/s.
fn manifest(
    addr: std::net::SocketAddr,
    users: u64,
    rate: Option<u64>,
    secs: u64,
    nq: u64,
    dim: u64,
) -> String {
    let (model, stage) = match rate {
        Some(r) => ("Open", format!("{{duration: {secs}s, rate: {r}}}")),
        None => (
            "Closed",
            format!(
                "{{duration: {secs}s, users: {users}, spawnRate: {}}}",
                users * 100
            ),
        ),
    };
    format!(
        r#"apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {{name: ceiling}}
spec:
  target: {{address: "{addr}"}}
  collection: {{name: ceiling, dimension: {dim}}}
  data: {{rows: 1000}}
  index: {{type: FLAT}}
  workload:
    model: {model}
    consistency: Bounded
    waitTime: {{min: 0ms, max: 0ms}}
    operations:
      - {{name: search, weight: 1, search: {{topK: 10, nq: {nq}}}}}
  stages:
    - {stage}
  recall: {{sampleQueries: 0}}
"#
    )
}

/// What one run measured.
struct Measured {
    /// Requests completed in the measured window (steady state for the engine).
    requests: u64,
    /// Length of that window, s.
    window_secs: f64,
    /// Requests over the whole CPU-measured interval.
    all_requests: u64,
    /// Wall time of the CPU-measured interval, s.
    wall: f64,
    /// CPU seconds per thread name over that interval.
    cpu: BTreeMap<String, f64>,
    /// Extra lines to print.
    notes: Vec<String>,
}

/// The engine: `load::run_shard` with a `Recorder`, as `stampede run` drives one shard.
async fn run_engine(addr: String, plan: Arc<load::ShardPlan>) -> Measured {
    let client = MilvusClient::connect(ConnectOptions::new(addr))
        .await
        .expect("connect to the trivial server");
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now() + Duration::from_millis(100);
    let recorder = Arc::new(Recorder::new(0, 1, plan.stages.len(), t0));
    let cpu_before = cpu_by_thread_name();
    let wall = Instant::now();
    load::run_shard(client, plan, Arc::clone(&recorder), t0, stop_rx).await;
    let wall = wall.elapsed().as_secs_f64();
    let cpu = delta(&cpu_by_thread_name(), &cpu_before);
    let snapshot = recorder.snapshot();
    let stage = &snapshot.stages[0];
    let steady = stage.steady.total();
    let ramp = stage.ramp.total();
    let mut notes = vec![
        format!(
            "steady state: {} failures, in flight mean {:.1} (max {}), ramp {:.3} s",
            steady.failures,
            stage.steady.in_flight_mean(),
            stage.steady.in_flight_max,
            stage.ramp_seconds
        ),
        format!(
            "latency: P50 {} µs, P95 {} µs, P99 {} µs, max {} µs",
            steady.latency.quantile_us(0.5),
            steady.latency.quantile_us(0.95),
            steady.latency.quantile_us(0.99),
            steady.latency.max_us()
        ),
    ];
    if let Some((kind, f)) = steady.failures_by_kind.iter().next() {
        notes.push(format!("first failure kind: {kind}: {}", f.example));
    }
    Measured {
        requests: steady.requests,
        window_secs: stage.steady_seconds,
        all_requests: steady.requests + ramp.requests,
        wall,
        cpu,
        notes,
    }
}

/// `users` tasks looping until `deadline`, each counting its completed calls of `call`.
async fn run_loops<F, Fut>(users: u64, secs: u64, call: F) -> Measured
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let cpu_before = cpu_by_thread_name();
    let wall = Instant::now();
    let deadline = wall + Duration::from_secs(secs);
    let failures = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..users)
        .map(|u| {
            let call = call.clone();
            let failures = Arc::clone(&failures);
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if !call(u).await {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut requests = 0;
    for t in tasks {
        requests += t.await.expect("user task");
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu = delta(&cpu_by_thread_name(), &cpu_before);
    Measured {
        requests,
        window_secs: wall,
        all_requests: requests,
        wall,
        cpu,
        notes: vec![format!(
            "{} failures (no latency recorded in this mode)",
            failures.load(Ordering::Relaxed)
        )],
    }
}

/// `MilvusClient::search` in a loop per user, without the engine (no Recorder, no picker, no
/// timeout wrapper): what the client library alone costs.
async fn run_client(addr: String, plan: Arc<load::ShardPlan>, users: u64, secs: u64) -> Measured {
    let client = MilvusClient::connect(ConnectOptions::new(addr))
        .await
        .expect("connect to the trivial server");
    let load::OpKind::Search { template, .. } = plan.ops[0].kind.clone() else {
        panic!("the ceiling manifest has one search operation")
    };
    let template = Arc::new(template);
    {
        // Size of the future one search is (moved, i.e. memcpy'd, at every await boundary that
        // wraps it: tokio::time::timeout, boxing, spawning).
        let v = &plan.queries[..plan.dim];
        let f = client.search(&template, v, plan.dim, None);
        println!(
            "  size of the MilvusClient::search future: {} bytes",
            std::mem::size_of_val(&f)
        );
    }
    run_loops(users, secs, move |u| {
        let (client, plan, template) = (client.clone(), Arc::clone(&plan), Arc::clone(&template));
        async move {
            let pool = plan.queries.len() / plan.dim;
            let from = (u as usize % pool) * plan.dim;
            let v = &plan.queries[from..from + plan.dim];
            client.search(&template, v, plan.dim, None).await.is_ok()
        }
    })
    .await
}

/// The first error of the raw mode, with its full Debug form.
static FIRST_ERROR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The generated tonic client on a plain channel, one prebuilt request cloned per call: the floor
/// that tonic + hyper + h2 set.
async fn run_raw(addr: String, plan: Arc<load::ShardPlan>, users: u64, secs: u64) -> Measured {
    use stampede::pb::milvus::service::milvus_service_client::MilvusServiceClient;
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true);
    // MilvusClient::connect's HTTP/2 settings (src/milvus.rs), to isolate their cost:
    // CEILING_RAW_H2=keepalive,window (or CEILING_RAW_ADAPTIVE=1 for both).
    let mut h2 = std::env::var("CEILING_RAW_H2").unwrap_or_default();
    if std::env::var("CEILING_RAW_ADAPTIVE").is_ok_and(|v| v == "1") {
        h2 = "keepalive,window".to_string();
    }
    if h2.contains("keepalive") {
        endpoint = endpoint
            .http2_keep_alive_interval(Duration::from_secs(55))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
    }
    if h2.contains("window") {
        endpoint = endpoint.http2_adaptive_window(true);
    }
    let channel = endpoint.connect().await.expect("connect");
    let client = MilvusServiceClient::new(channel);
    let mut placeholder = Vec::new();
    // PlaceholderGroup { placeholders: [{ tag: "$0", type: FloatVector, values: [vector] }] }
    let value = pbc::PlaceholderValue {
        tag: "$0".to_string(),
        r#type: pbc::PlaceholderType::FloatVector as i32,
        values: vec![
            plan.queries[..plan.dim]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ],
    };
    prost::Message::encode(
        &pbc::PlaceholderGroup {
            placeholders: vec![value],
        },
        &mut placeholder,
    )
    .expect("encode");
    let request = pbm::SearchRequest {
        collection_name: plan.collection.clone(),
        placeholder_group: placeholder,
        dsl_type: pbc::DslType::BoolExprV1 as i32,
        nq: 1,
        search_params: vec![pbc::KeyValuePair {
            key: "topk".to_string(),
            value: "10".to_string(),
        }],
        ..Default::default()
    };
    {
        let mut c = client.clone();
        let f = c.search(request.clone());
        println!(
            "  size of the generated tonic client's search future: {} bytes",
            std::mem::size_of_val(&f)
        );
    }
    let timeouts = std::env::var("CEILING_RAW_TIMEOUTS").is_ok_and(|v| v == "1");
    let measured = run_loops(users, secs, move |_| {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            if timeouts {
                // The three timers a request of the engine carries: execute()'s timeout,
                // MilvusClient::call's timeout, and the grpc-timeout header (tonic's
                // GrpcTimeout layer arms a Sleep for it).
                let t = Duration::from_secs(10);
                let mut request = tonic::Request::new(request);
                request.set_timeout(t);
                let call = tokio::time::timeout(t, client.search(request));
                matches!(tokio::time::timeout(t, call).await, Ok(Ok(Ok(_))))
            } else {
                match client.search(request).await {
                    Ok(_) => true,
                    Err(status) => {
                        let _ = FIRST_ERROR.set(format!("{status:?}"));
                        false
                    }
                }
            }
        }
    })
    .await;
    let mut measured = measured;
    if let Some(e) = FIRST_ERROR.get() {
        measured.notes.push(format!("first error: {e}"));
    }
    measured
}

fn main() {
    // Logging as `stampede run` sets it up (warn). Without any subscriber, tracing's `log`
    // fallback (enabled by kube) would make h2's disabled spans cost ~2 % of the client's CPU,
    // which the real binary never pays.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,h2=warn,hyper=warn,tower=warn",
        ))
        .with_writer(std::io::stderr)
        .init();
    let users = env_or("CEILING_USERS", 64);
    let secs = env_or("CEILING_SECS", 10).clamp(1, 120);
    let nq = env_or("CEILING_NQ", 1).max(1);
    let dim = env_or("CEILING_DIM", 128).max(1);
    let multi = std::env::var("CEILING_RUNTIME").map_or(true, |v| v != "current");
    let mode = std::env::var("CEILING_MODE").unwrap_or_else(|_| "engine".to_string());
    let rate = std::env::var("CEILING_RATE")
        .ok()
        .and_then(|r| r.trim().parse::<u64>().ok())
        .filter(|&r| r > 0);

    let server = start_server();
    let spec = stampede::spec::parse_manifest(
        &manifest(server.addr, users, rate, secs, nq, dim),
        "ceiling manifest",
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .spec;
    let plan = Arc::new(load::shard_plan(&spec, 0, 1, None));

    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ceil-client")
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("client runtime");

    let addr = server.addr.to_string();
    // The whole client (connect, stage driver, users) runs as one task on the client runtime.
    let job = async move {
        match mode.as_str() {
            "client" => run_client(addr, plan, users, secs).await,
            "raw" => run_raw(addr, plan, users, secs).await,
            _ => run_engine(addr, plan).await,
        }
    };
    let m = if multi {
        rt.block_on(async { tokio::spawn(job).await.expect("client task") })
    } else {
        // current-thread: everything runs on this (the main) thread.
        rt.block_on(job)
    };

    let searches = server.svc.searches.load(Ordering::Relaxed);
    // Dropping the client runtime closes its connection (a current-thread runtime no longer
    // polls its connection task once block_on returned, and the server's graceful shutdown
    // would wait for that connection forever).
    drop(rt);
    let _ = server.shutdown.send(());
    let waited = Instant::now();
    while !server.thread.is_finished() && waited.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if server.thread.is_finished() {
        let _ = server.thread.join();
    }

    let mode = std::env::var("CEILING_MODE").unwrap_or_else(|_| "engine".to_string());
    let client_threads: Vec<&String> = m
        .cpu
        .keys()
        .filter(|n| {
            if multi {
                n.starts_with("ceil-client")
            } else {
                !n.starts_with("ceil-s")
            }
        })
        .collect();
    let client_cpu: f64 = client_threads.iter().map(|n| m.cpu[*n]).sum();
    let server_cpu: f64 = m
        .cpu
        .iter()
        .filter(|(n, _)| n.starts_with("ceil-s"))
        .map(|(_, v)| v)
        .sum();
    let process_cpu: f64 = m.cpu.values().sum();

    println!(
        "request ceiling [{mode}]: 1 shard, {}, search nq={nq} topK=10 dim={dim}; client runtime {} \
         with 1 worker; trivial server on its own 1-worker runtime",
        match rate {
            Some(r) if mode == "engine" => format!("open model at {r} requests/s"),
            _ => format!("{users} users (closed, wait 0)"),
        },
        if multi {
            "multi-thread"
        } else {
            "current-thread"
        }
    );
    println!(
        "  {} requests in {:.2} s = {:.0} requests/s",
        m.requests,
        m.window_secs,
        m.requests as f64 / m.window_secs.max(1e-9)
    );
    for n in &m.notes {
        println!("  {n}");
    }
    println!(
        "  CPU-measured interval: {:.2} s wall, {} requests recorded, {searches} served",
        m.wall, m.all_requests
    );
    println!(
        "  CPU: client {client_cpu:.2} s ({:.0} % of one core), server {server_cpu:.2} s, whole process {process_cpu:.2} s",
        100.0 * client_cpu / m.wall.max(1e-9)
    );
    if m.all_requests > 0 && client_cpu > 0.0 {
        let per_k = client_cpu / m.all_requests as f64 * 1000.0;
        println!(
            "  client CPU per 1,000 requests: {:.1} ms  ->  {:.0} requests per client CPU-second (goal ≥ 50,000)",
            per_k * 1000.0,
            1000.0 / per_k
        );
        println!(
            "  server CPU per 1,000 requests: {:.1} ms",
            server_cpu / m.all_requests as f64 * 1e6
        );
    }
    println!(
        "  CPU s per thread: {:?} (client side: {client_threads:?})",
        m.cpu
    );
}
