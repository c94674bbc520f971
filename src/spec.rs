//! The `StressTest` custom resource: Rust types (the CRD is generated from them), defaults,
//! manifest loading with line/column errors, and validation (pure: spec in, field errors out).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of Stampede's resources.
pub const GROUP: &str = "stampede.dev";

/// A capacity/stress test against one Milvus collection.
// KubeSchema (instead of JsonSchema) adds the CEL rules below to the CRD; they mirror the stage
// checks of `validate` so `kubectl apply` rejects a stage that does not fit the load model.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[kube(
    group = "stampede.dev",
    version = "v1alpha1",
    kind = "StressTest",
    namespaced,
    shortname = "st",
    status = "StressTestStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.currentStage"}"#,
    printcolumn = r#"{"name":"QPS","type":"number","jsonPath":".status.totals.qps"}"#,
    printcolumn = r#"{"name":"P95","type":"string","jsonPath":".status.totals.p95"}"#,
    printcolumn = r#"{"name":"P99","type":"string","jsonPath":".status.totals.p99"}"#,
    printcolumn = r#"{"name":"SLA","type":"string","jsonPath":".status.sla.verdict"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = ::kube::core::Rule::new(
        "(has(self.workload) && has(self.workload.model) && self.workload.model == 'Open') || !has(self.stages) || self.stages.all(s, has(s.users) && has(s.spawnRate) && !has(s.rate))"
    )
    .message("the Closed model needs users and spawnRate (and no rate) in every stage")
    .field_path(".stages")
    .reason(::kube::core::Reason::FieldValueRequired),
    validation = ::kube::core::Rule::new(
        "!(has(self.workload) && has(self.workload.model) && self.workload.model == 'Open') || !has(self.stages) || self.stages.all(s, has(s.rate) && !has(s.users) && !has(s.spawnRate))"
    )
    .message("the Open model needs a rate (and no users or spawnRate) in every stage")
    .field_path(".stages")
    .reason(::kube::core::Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase")]
pub struct StressTestSpec {
    /// The Milvus server to test.
    pub target: TargetSpec,
    /// The collection that holds the test data.
    pub collection: CollectionSpec,
    /// The rows to generate and insert.
    #[serde(default)]
    pub data: DataSpec,
    /// The vector index to build.
    #[serde(default)]
    pub index: IndexSpec,
    /// What each simulated user (or arrival) does.
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// Load stages, run in order; each has its own duration.
    #[serde(default)]
    pub stages: Vec<StageSpec>,
    /// How many load workers run the stages.
    #[serde(default)]
    pub workers: WorkersSpec,
    /// Service-level objectives the result is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SlaSpec>,
    /// Capacity planning: how many query nodes a target load needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySpec>,
    /// Recall measurement against exact ground truth.
    #[serde(default)]
    pub recall: RecallSpec,
    /// What is removed after the test.
    #[serde(default)]
    pub cleanup: CleanupSpec,
}

/// Where Milvus is and how to log in.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// Milvus gRPC address, `host:port` (e.g. `milvus.db.svc:19530`), or an `http://`/`https://` URL.
    pub address: String,
    /// Database name.
    #[serde(default = "default_database")]
    pub database: String,
    /// TLS to the Milvus proxy.
    #[serde(default)]
    pub tls: TlsSpec,
    /// Name of a Secret with keys `username` and `password`, or `token`. Locally (`stampede run`,
    /// `stampede prepare`) the same values come from MILVUS_USERNAME/MILVUS_PASSWORD or MILVUS_TOKEN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Where to read the Milvus servers' Prometheus metrics during the test (server CPU, memory,
    /// network and queueing per stage, used to name each stage's bottleneck). Without this
    /// section `stampede run` scrapes `http://<target host>:9091/metrics` when the target is on
    /// loopback (the local standalone server) and observes nothing otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
}

/// Server observation: the Prometheus endpoints of the Milvus components under test.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Scrape during the test. Default: on when `urls` or `selector` is set, and for
    /// `stampede run` also when the target is on loopback (then the URL is
    /// `http://<target host>:<port><path>`); `false` turns observation off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Metrics URLs to scrape (`http://host:port/path`), e.g. `http://127.0.0.1:9091/metrics`
    /// for a standalone server. Used by `stampede run`; CPU and memory are summed over them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Cluster: label selector of the Milvus pods to scrape (in the StressTest's namespace),
    /// e.g. `app.kubernetes.io/instance=my-release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Metrics port: of the pods found by `selector`, and of the default loopback URL.
    /// Default 9091.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Metrics path: of the pods found by `selector`, and of the default loopback URL.
    /// Default `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between scrapes (each scrape may take at most 80 % of it, and at most 5 s).
    /// Default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationSpec>,
    /// Network bandwidth of the Milvus host's (or pod's) link, e.g. `1Gbit`, `10Gbit`,
    /// `100Mbit` (bits per second, decimal: `bit`, `Kbit`, `Mbit`, `Gbit`) or `125MB` (bytes per
    /// second: `B`, `KB`, `MB`, `GB`, binary `KiB`, `MiB`, `GiB`). When set, a stage whose proxy
    /// traffic in either direction reaches 90 % of it is judged `network`; unset, the network
    /// is never the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_capacity: Option<String>,
}

/// A link capacity (`1Gbit`, `100Mbit`, `125MB`, `1GiB`, …) in bytes per second (pure). Bit
/// units are decimal (`1Gbit` = 10⁹ bit/s = 1.25 × 10⁸ B/s); byte units are decimal (`KB`,
/// `MB`, `GB`) or binary (`KiB`, `MiB`, `GiB`). A `/s` suffix is accepted.
pub fn parse_link_capacity(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let hint = "write e.g. 1Gbit, 10Gbit, 100Mbit or 125MB";
    if number.is_empty() {
        return Err(format!("`{text}` does not start with a number; {hint}"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` has a malformed number; {hint}"))?;
    let factor = match unit {
        "bit" => 1.0 / 8.0,
        "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "" => return Err(format!("`{text}` has no unit; {hint}")),
        other => {
            return Err(format!(
                "`{text}` has unknown unit `{other}`; use bit, Kbit, Mbit, Gbit (bits per second) or B, KB, MB, GB, KiB, MiB, GiB (bytes per second)"
            ));
        }
    };
    let bytes = value * factor;
    if !(bytes.is_finite() && bytes > 0.0) {
        return Err(format!("`{text}` must be more than zero; {hint}"));
    }
    Ok(bytes)
}

fn default_database() -> String {
    "default".to_string()
}

/// TLS settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Use TLS.
    #[serde(default)]
    pub enabled: bool,
    /// Server name to verify instead of the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Name of a Secret whose key `ca.crt` holds the CA bundle (locally: the file named by MILVUS_CA_CERT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
}

/// Distance metric of the vector field.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MetricType {
    /// Squared Euclidean distance (smaller is closer).
    #[default]
    L2,
    /// Inner product (larger is closer).
    IP,
    /// Cosine similarity (larger is closer).
    COSINE,
}

impl MetricType {
    /// The name Milvus uses.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::L2 => "L2",
            MetricType::IP => "IP",
            MetricType::COSINE => "COSINE",
        }
    }
}

/// What to do when the collection already exists.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnExisting {
    /// Keep it if its schema matches; insert only missing rows (resume).
    #[default]
    Reuse,
    /// Drop it and create it again.
    Recreate,
    /// Stop with an error.
    Fail,
}

/// The collection under test.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectionSpec {
    /// Collection name.
    pub name: String,
    /// Vector dimension.
    pub dimension: u32,
    /// Distance metric.
    #[serde(default)]
    pub metric: MetricType,
    /// What to do when the collection exists.
    #[serde(default)]
    pub on_existing: OnExisting,
    /// Name of the INT64 primary key field.
    #[serde(default = "default_primary_field")]
    pub primary_field: String,
    /// Name of the FLOAT_VECTOR field.
    #[serde(default = "default_vector_field")]
    pub vector_field: String,
    /// Let Milvus assign primary keys. Off by default: the row number is the key, which makes an
    /// interrupted prepare resumable and recall measurable.
    #[serde(default)]
    pub auto_id: bool,
    /// Number of shards (virtual channels).
    #[serde(default = "default_shards")]
    pub shards: i32,
}

fn default_primary_field() -> String {
    "id".to_string()
}
fn default_vector_field() -> String {
    "embedding".to_string()
}
fn default_shards() -> i32 {
    1
}

/// How vectors are drawn.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Distribution {
    /// Standard normal components (the classic Locust scenario, usually with `normalize`).
    #[default]
    Normal,
    /// Uniform components in [low, high).
    Uniform,
    /// Gaussian clusters around `clusters` centres: realistic recall.
    Clustered,
}

/// Vector generation.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VectorsSpec {
    /// Distribution of the components.
    #[serde(default)]
    pub distribution: Distribution,
    /// Scale every vector to unit length.
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Uniform: lower bound.
    #[serde(default)]
    pub low: f32,
    /// Uniform: upper bound.
    #[serde(default = "default_one")]
    pub high: f32,
    /// Clustered: number of centres.
    #[serde(default = "default_clusters")]
    pub clusters: u32,
    /// Clustered: standard deviation of the noise around a centre.
    #[serde(default = "default_spread")]
    pub spread: f32,
}

impl Default for VectorsSpec {
    fn default() -> Self {
        VectorsSpec {
            distribution: Distribution::Normal,
            normalize: true,
            low: 0.0,
            high: 1.0,
            clusters: default_clusters(),
            spread: default_spread(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_one() -> f32 {
    1.0
}
fn default_clusters() -> u32 {
    100
}
fn default_spread() -> f32 {
    0.1
}

/// An inclusive integer range.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct IntRange {
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
}

/// A scalar field: categorical (VARCHAR from `values`) or integer (INT64 from `range`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalarSpec {
    /// Field name; filter templates refer to it as `{name}`.
    pub name: String,
    /// Categorical values, drawn uniformly (a VARCHAR field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// Integer range, drawn uniformly (an INT64 field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<IntRange>,
    /// VARCHAR max length; defaults to the longest value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
}

/// The generated rows.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSpec {
    /// Number of rows.
    #[serde(default = "default_rows")]
    pub rows: u64,
    /// Rows per insert batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Insert requests in flight at once.
    #[serde(default = "default_insert_concurrency")]
    pub insert_concurrency: u32,
    /// Seed of every random stream: the same seed gives bit-identical rows and queries.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Vector generation.
    #[serde(default)]
    pub vectors: VectorsSpec,
    /// Scalar fields.
    #[serde(default)]
    pub scalars: Vec<ScalarSpec>,
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            rows: default_rows(),
            batch_size: default_batch_size(),
            insert_concurrency: default_insert_concurrency(),
            seed: default_seed(),
            vectors: VectorsSpec::default(),
            scalars: Vec::new(),
        }
    }
}

fn default_rows() -> u64 {
    10_000
}
fn default_batch_size() -> u32 {
    10_000
}
fn default_insert_concurrency() -> u32 {
    2
}
fn default_seed() -> u64 {
    42
}

/// The vector index.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexSpec {
    /// Index type as Milvus names it: HNSW, IVF_FLAT, IVF_SQ8, DISKANN, AUTOINDEX, FLAT, …
    #[serde(rename = "type", default = "default_index_type")]
    pub index_type: String,
    /// Build parameters passed through to Milvus, e.g. `{M: 16, efConstruction: 200}`.
    #[serde(default)]
    #[schemars(schema_with = "scalar_map_schema")]
    pub params: BTreeMap<String, serde_json::Value>,
}

impl Default for IndexSpec {
    fn default() -> Self {
        IndexSpec {
            index_type: default_index_type(),
            params: BTreeMap::new(),
        }
    }
}

fn default_index_type() -> String {
    "HNSW".to_string()
}

fn scalar_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"x-kubernetes-int-or-string": true}
    })
}

/// Closed (users) or open (arrival rate) load model.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LoadModel {
    /// A fixed number of users, each looping request → wait (as Locust users).
    #[default]
    Closed,
    /// Requests arrive at a fixed rate whatever the latency.
    Open,
}

/// Milvus consistency level of searches and queries.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Consistency {
    /// Waits for every write before the request (slow: ~200 ms per search on 2.3).
    Strong,
    /// Sees this client's own writes.
    Session,
    /// Tolerates a short staleness (Milvus's default).
    #[default]
    Bounded,
    /// No guarantee.
    Eventually,
}

/// Uniform random wait between two requests of a user.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct WaitTime {
    /// Shortest wait, e.g. `100ms`.
    #[serde(default)]
    pub min: DurationSpec,
    /// Longest wait, e.g. `500ms`.
    #[serde(default)]
    pub max: DurationSpec,
}

/// A vector search.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchOp {
    /// Results per query vector.
    #[serde(default = "default_top_k")]
    pub top_k: u32,
    /// Query vectors per request (nq); more than 1 is a batch search.
    #[serde(default = "default_nq")]
    pub nq: u32,
    /// Search parameters, e.g. `{ef: 64}` (HNSW) or `{nprobe: 16}` (IVF).
    #[serde(default)]
    #[schemars(schema_with = "scalar_map_schema")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Boolean filter template; `{field}` is replaced by a random value of that scalar field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Fields to return with each hit.
    #[serde(default)]
    pub output_fields: Vec<String>,
}

fn default_top_k() -> u32 {
    10
}
fn default_nq() -> u32 {
    1
}

/// A scalar query by expression.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryOp {
    /// Boolean expression template, e.g. `category == "{category}"`.
    pub expr: String,
    /// Maximum rows returned.
    #[serde(default = "default_query_limit")]
    pub limit: u64,
    /// Fields to return.
    #[serde(default)]
    pub output_fields: Vec<String>,
}

fn default_query_limit() -> u64 {
    10
}

/// One weighted operation of the workload: exactly one of `search` or `query`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationSpec {
    /// Name shown in the results.
    pub name: String,
    /// Relative weight among the operations.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// A vector search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchOp>,
    /// A scalar query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryOp>,
}

fn default_weight() -> u32 {
    1
}

/// The workload.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Closed (users) or Open (arrival rate).
    #[serde(default)]
    pub model: LoadModel,
    /// Consistency level of every search and query.
    #[serde(default)]
    pub consistency: Consistency,
    /// Closed model: wait between two requests of a user.
    #[serde(default)]
    pub wait_time: WaitTime,
    /// Weighted operations.
    #[serde(default = "default_operations")]
    pub operations: Vec<OperationSpec>,
    /// Open model: most requests in flight at once (per test); arrivals beyond are counted as dropped.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Per-request timeout.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: DurationSpec,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            model: LoadModel::Closed,
            consistency: Consistency::Bounded,
            wait_time: WaitTime::default(),
            operations: default_operations(),
            max_in_flight: default_max_in_flight(),
            request_timeout: default_request_timeout(),
        }
    }
}

fn default_operations() -> Vec<OperationSpec> {
    vec![OperationSpec {
        name: "search".to_string(),
        weight: 1,
        search: Some(SearchOp {
            top_k: default_top_k(),
            nq: 1,
            params: BTreeMap::new(),
            filter: None,
            output_fields: Vec::new(),
        }),
        query: None,
    }]
}
fn default_max_in_flight() -> u32 {
    1000
}
fn default_request_timeout() -> DurationSpec {
    DurationSpec(Duration::from_secs(10))
}

/// One load stage.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageSpec {
    /// How long the stage lasts, ramp included, e.g. `60s`.
    pub duration: DurationSpec,
    /// Closed model: concurrent users at the end of the ramp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u32>,
    /// Closed model: users started (or stopped) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_rate: Option<f64>,
    /// Open model: requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

/// Worker count: `auto` or a number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Replicas {
    /// Peak users / maxUsersPerWorker (or peak rate / maxRatePerWorker), at least 1.
    #[default]
    Auto,
    /// A fixed number of workers.
    Fixed(u32),
}

impl Serialize for Replicas {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Replicas::Auto => s.serialize_str("auto"),
            Replicas::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Replicas::Fixed(n)),
            Raw::S(s) if s == "auto" => Ok(Replicas::Auto),
            Raw::S(s) => s.parse().map(Replicas::Fixed).map_err(|_| {
                serde::de::Error::custom(format!(
                    "replicas must be `auto` or a number of workers, not `{s}`"
                ))
            }),
        }
    }
}

impl JsonSchema for Replicas {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Replicas".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "description": "`auto` or a number of workers"
        })
    }
}

/// The load workers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// `auto` or a number of workers.
    #[serde(default)]
    pub replicas: Replicas,
    /// Closed model: users per worker when replicas is `auto`.
    #[serde(default = "default_max_users_per_worker")]
    pub max_users_per_worker: u32,
    /// Open model: requests/s per worker when replicas is `auto`.
    #[serde(default = "default_max_rate_per_worker")]
    pub max_rate_per_worker: f64,
    /// Resources of each worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

impl Default for WorkersSpec {
    fn default() -> Self {
        WorkersSpec {
            replicas: Replicas::Auto,
            max_users_per_worker: default_max_users_per_worker(),
            max_rate_per_worker: default_max_rate_per_worker(),
            resources: None,
        }
    }
}

fn default_max_users_per_worker() -> u32 {
    250
}
fn default_max_rate_per_worker() -> f64 {
    5000.0
}

/// Service-level objectives.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlaSpec {
    /// Throughput the service must sustain within the other criteria (requests/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_qps: Option<f64>,
    /// Highest acceptable 95th percentile latency, e.g. `100ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p95: Option<DurationSpec>,
    /// Highest acceptable 99th percentile latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<DurationSpec>,
    /// Highest acceptable share of failed requests (0.001 = 0.1 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_ratio: Option<f64>,
    /// Lowest acceptable recall@k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_at_least: Option<f64>,
}

/// Capacity planning inputs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacitySpec {
    /// The production load to plan for (requests/s).
    pub target_qps: f64,
    /// Replication factor applied on top (e.g. 2 for N+N).
    #[serde(default = "default_redundancy")]
    pub redundancy: f64,
    /// Query nodes serving the collection during this test.
    #[serde(default = "default_query_nodes")]
    pub measured_query_nodes: u32,
}

fn default_redundancy() -> f64 {
    1.0
}
fn default_query_nodes() -> u32 {
    1
}

/// Recall measurement.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecallSpec {
    /// Query vectors with exact ground truth computed by prepare (0 turns recall off).
    #[serde(default = "default_sample_queries")]
    pub sample_queries: u32,
    /// Depth of the ground truth (the largest topK recall is measured at).
    #[serde(default = "default_top_k")]
    pub top_k: u32,
    /// Share of unfiltered searches that use a ground-truth query (0..1).
    #[serde(default = "default_recall_share")]
    pub share: f64,
}

impl Default for RecallSpec {
    fn default() -> Self {
        RecallSpec {
            sample_queries: default_sample_queries(),
            top_k: default_top_k(),
            share: default_recall_share(),
        }
    }
}

fn default_sample_queries() -> u32 {
    200
}
fn default_recall_share() -> f64 {
    0.1
}

/// Cleanup after the test.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupSpec {
    /// Drop the collection when the test ends.
    #[serde(default)]
    pub drop_collection: bool,
    /// Delete the finished test's Jobs this long after it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u32>,
}

/// Observed state of a StressTest: progress while it runs, then the results. Compact by design
/// (no histograms, no per-second series): the full result goes to the report ConfigMap.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StressTestStatus {
    /// Where the test is: Pending, Preparing, Running, Analyzing, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the test started (prepare included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the test ended, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Stage being run (or the last one run), e.g. `2/5 (50 users)` or `3/4 (500/s)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// Human-readable state, result or error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Standard conditions, by type: Prepared, WorkersReady, Complete, SLAMet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// Per stage, steady state, in the order run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// Per operation, over every stage's steady state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<OperationStatus>,
    /// All operations over every stage's steady state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<TotalsStatus>,
    /// The highest-QPS valid stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<PeakStatus>,
    /// Where more load stopped buying throughput; absent when throughput kept growing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation: Option<SaturationStatus>,
    /// The SLA verdict; absent when the spec sets no SLA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SlaStatus>,
    /// Query nodes needed for spec.capacity.targetQps; absent without spec.capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityStatus>,
    /// Mean recall@k over every search that used a ground-truth query, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    /// Where the full report is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportStatus>,
    /// For a run of a StressTestSchedule: how it compares with the schedule's last successful
    /// run (written by the schedule controller once the run has finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regression: Option<crate::schedule::RegressionStatus>,
}

/// The phase of a StressTest.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing started yet.
    #[default]
    Pending,
    /// The prepare Job is loading data and building the index.
    Preparing,
    /// The workers are running the stages.
    Running,
    /// The stages are over; results are being merged and analysed.
    Analyzing,
    /// The test ran to its end (the SLA verdict is in the SLAMet condition).
    Succeeded,
    /// The test could not run or did not finish (see message and conditions).
    Failed,
}

impl Phase {
    /// The name as written in status.phase.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Preparing => "Preparing",
            Phase::Running => "Running",
            Phase::Analyzing => "Analyzing",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Succeeded or Failed: nothing more happens until the spec changes.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stage's steady state.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Stage number, from 1 (as in currentStage).
    pub stage: u32,
    /// Users asked for (Closed model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    /// Arrival rate asked for, requests/s (Open model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Completed requests, successes + failures.
    pub requests: u64,
    /// Failed requests.
    pub failures: u64,
    /// Completed requests per second.
    pub qps: f64,
    /// Median latency of successful requests, ms.
    pub p50_ms: f64,
    /// 95th percentile latency, ms.
    pub p95_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Slowest successful request, ms.
    pub max_ms: f64,
    /// Mean recall@k, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    /// Mean requests in flight: the concurrency actually achieved.
    pub in_flight_mean: f64,
    /// Most requests in flight at once.
    pub in_flight_max: u64,
    /// Whether the stage measured something usable.
    pub valid: bool,
    /// Why it did not, when `valid` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What limited this stage, with the evidence, when it was judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<BottleneckStatus>,
}

/// The limiting resource of a stage.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BottleneckStatus {
    /// `serverCpu`, `serverMemory`, `network`, `client`, `errors`, `none` or `notObserved`.
    pub resource: String,
    /// The numbers behind the verdict, as a sentence.
    pub evidence: String,
    /// What to do about it (on the saturation stage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<String>,
}

/// One operation over every stage's steady state.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// Operation name from spec.workload.operations.
    pub name: String,
    /// Completed requests, successes + failures.
    pub requests: u64,
    /// Failed requests.
    pub failures: u64,
    /// Completed requests per second.
    pub qps: f64,
    /// 95th percentile latency, ms.
    pub p95_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// All operations over every stage's steady state.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TotalsStatus {
    /// Completed requests per second (the QPS printer column).
    pub qps: f64,
    /// 95th percentile latency for display, e.g. `12.3ms` (the P95 printer column).
    pub p95: String,
    /// 99th percentile latency for display, e.g. `48.1ms` (the P99 printer column).
    pub p99: String,
    /// Completed requests, successes + failures.
    pub requests: u64,
    /// Failed requests.
    pub failures: u64,
    /// Failed share of completed requests.
    pub error_ratio: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile latency, ms.
    pub p95_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Slowest successful request, ms.
    pub max_ms: f64,
}

/// The highest-QPS valid stage.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeakStatus {
    /// Stage number, from 1.
    pub stage: u32,
    /// Users of that stage (Closed model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    /// Rate of that stage, requests/s (Open model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Its QPS.
    pub qps: f64,
}

/// The first stage where more load stopped buying throughput.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SaturationStatus {
    /// Stage number, from 1.
    pub stage: u32,
    /// Users of that stage (Closed model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    /// Rate of that stage, requests/s (Open model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Its QPS.
    pub qps: f64,
    /// A sentence with the numbers that show it.
    pub reason: String,
}

/// PASS or FAIL, as the SLA printer column shows it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SlaVerdictLabel {
    /// Every criterion met.
    #[default]
    #[serde(rename = "PASS")]
    Pass,
    /// At least one criterion missed.
    #[serde(rename = "FAIL")]
    Fail,
}

/// The SLA verdict.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlaStatus {
    /// PASS or FAIL (the SLA printer column).
    pub verdict: SlaVerdictLabel,
    /// The SLA is met.
    pub passed: bool,
    /// Highest QPS of a valid stage meeting every latency, error and recall criterion; 0 when
    /// none did.
    pub capacity_at_sla_qps: f64,
    /// Each criterion against the best stage (or the highest-QPS one when none met them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<SlaCheckStatus>,
}

/// One SLA criterion against one observation.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlaCheckStatus {
    /// Criterion as named in spec.sla: minQps, maxP95, maxP99, maxErrorRatio, recallAtLeast
    /// (validStage when no stage measured anything usable).
    pub name: String,
    /// What was asked, e.g. `≤ 100 ms`.
    pub target: String,
    /// What was measured, e.g. `87 ms`.
    pub observed: String,
    /// Whether the observation meets the target.
    pub passed: bool,
}

/// How many query nodes spec.capacity.targetQps needs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityStatus {
    /// Measured QPS per query node.
    pub per_node_qps: f64,
    /// Query nodes for the target QPS.
    pub nodes_for_target: u64,
    /// Query nodes with spec.capacity.redundancy applied.
    pub with_redundancy: u64,
    /// What the per-node figure is based on: `capacity at SLA` or `peak QPS (no SLA set)`.
    pub basis: String,
}

/// Where the full report is.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportStatus {
    /// Name of the ConfigMap (same namespace) holding result.json and the CSV files.
    pub config_map: String,
}

/// Condition types and reasons of a StressTest's status: use these, never ad-hoc strings.
pub mod conditions {
    /// The collection is ready: data inserted, index built, collection loaded.
    pub const PREPARED: &str = "Prepared";
    /// Every worker pod is serving and ready to start.
    pub const WORKERS_READY: &str = "WorkersReady";
    /// The test ran to its end (False when it could not run or stopped early).
    pub const COMPLETE: &str = "Complete";
    /// The result meets spec.sla.
    pub const SLA_MET: &str = "SLAMet";

    /// Condition status: the condition holds.
    pub const TRUE: &str = "True";
    /// Condition status: the condition does not hold.
    pub const FALSE: &str = "False";
    /// Condition status: not known yet.
    pub const UNKNOWN: &str = "Unknown";

    /// Reasons, CamelCase as Kubernetes expects.
    pub mod reasons {
        /// The spec has field errors; nothing runs until it changes.
        pub const INVALID_SPEC: &str = "InvalidSpec";
        /// The prepare Job is running.
        pub const PREPARING: &str = "Preparing";
        /// The prepare Job succeeded.
        pub const PREPARE_SUCCEEDED: &str = "PrepareSucceeded";
        /// The prepare Job failed.
        pub const PREPARE_FAILED: &str = "PrepareFailed";
        /// Worker pods are being created or are not ready yet.
        pub const WORKERS_STARTING: &str = "WorkersStarting";
        /// Every worker pod is ready.
        pub const WORKERS_RUNNING: &str = "WorkersRunning";
        /// A worker pod was lost during the run.
        pub const WORKER_LOST: &str = "WorkerLost";
        /// The stages are running.
        pub const RUNNING: &str = "Running";
        /// Every stage ran to its end.
        pub const RUN_SUCCEEDED: &str = "RunSucceeded";
        /// The run stopped before its last stage ended.
        pub const RUN_INCOMPLETE: &str = "RunIncomplete";
        /// The run failed (see the message).
        pub const RUN_FAILED: &str = "RunFailed";
        /// Every SLA criterion was met.
        pub const SLA_PASSED: &str = "SLAPassed";
        /// At least one SLA criterion was missed.
        pub const SLA_FAILED: &str = "SLAFailed";
        /// The spec sets no SLA, so there is nothing to miss.
        pub const NO_SLA: &str = "NoSLA";
    }
}

/// A duration written as `500ms`, `60s`, `5m`, `1h` or combinations such as `1m30s`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationSpec(pub Duration);

impl DurationSpec {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for DurationSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        if text.is_empty() {
            return Err("empty duration; write e.g. `60s`, `500ms` or `1m30s`".to_string());
        }
        if text == "0" {
            return Ok(DurationSpec(Duration::ZERO));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("`{s}` has a number without a unit (ms, s, m or h)"))?;
            if digits == 0 {
                return Err(format!(
                    "`{s}` is not a duration; write e.g. `60s`, `500ms`, `1m30s`"
                ));
            }
            let value: f64 = rest[..digits]
                .parse()
                .map_err(|_| format!("`{s}` has a malformed number"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let seconds = match &rest[..unit_len] {
                "ms" => value / 1000.0,
                "s" => value,
                "m" => value * 60.0,
                "h" => value * 3600.0,
                other => {
                    return Err(format!(
                        "`{s}` has unknown unit `{other}`; use ms, s, m or h"
                    ));
                }
            };
            rest = &rest[unit_len..];
            total += Duration::from_secs_f64(seconds);
        }
        Ok(DurationSpec(total))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) || ms == 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$|^0$",
            "description": "A duration such as 500ms, 60s, 5m, 1h or 1m30s"
        })
    }
}

/// One problem with a manifest, at a field path such as `spec.stages[2].users`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or does not fit the StressTest schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Parser message with line and column.
        message: String,
    },
    /// The manifest parses but has invalid or unknown fields.
    #[error("{path}: {} problem(s) in the StressTest:\n{}", errors.len(), errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

/// Parses a StressTest manifest from YAML text: reports unknown fields and validation errors
/// all at once, and parse errors with line and column.
pub fn parse_manifest(text: &str, origin: &str) -> Result<StressTest, SpecError> {
    // A file may carry other documents next to the StressTest (e.g. its credentials Secret):
    // the StressTest document is the one read; line numbers stay those of the whole file.
    let parse_error = |e: &serde_yaml_ng::Error| SpecError::Parse {
        path: origin.to_string(),
        message: describe_yaml_error(e),
    };
    let mut documents = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| parse_error(&e))?;
        documents.push(value);
    }
    let tests: Vec<usize> = documents
        .iter()
        .enumerate()
        .filter(|(_, v)| v.get("kind").and_then(|k| k.as_str()) == Some("StressTest"))
        .map(|(i, _)| i)
        .collect();
    let non_empty = documents.iter().filter(|v| !v.is_null()).count();
    let index = match tests.as_slice() {
        [i] => *i,
        [] if non_empty <= 1 => documents.iter().position(|v| !v.is_null()).unwrap_or(0),
        [] => {
            return Err(SpecError::Parse {
                path: origin.to_string(),
                message: format!(
                    "none of its {non_empty} YAML documents is a StressTest (kind: StressTest)"
                ),
            });
        }
        _ => {
            return Err(SpecError::Parse {
                path: origin.to_string(),
                message: format!(
                    "{} YAML documents are StressTests; put one StressTest per file",
                    tests.len()
                ),
            });
        }
    };
    let header = |key: &str| {
        documents
            .get(index)
            .and_then(|v| v.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let mut unknown = Vec::new();
    let Some(de) = serde_yaml_ng::Deserializer::from_str(text).nth(index) else {
        return Err(SpecError::Parse {
            path: origin.to_string(),
            message: "the file is empty; expected a StressTest manifest".to_string(),
        });
    };
    let parsed: Result<StressTest, _> = serde_ignored::deserialize(de, |path| {
        unknown.push(path.to_string());
    });
    let test = parsed.map_err(|e| SpecError::Parse {
        path: origin.to_string(),
        message: describe_yaml_error(&e),
    })?;
    let mut errors: Vec<FieldError> = unknown
        .into_iter()
        .filter(|p| !is_ignorable_unknown(p))
        .map(|path| FieldError {
            path,
            message: "unknown field (check its spelling and indentation against README \"StressTest reference\")".to_string(),
        })
        .collect();
    if test.metadata.name.as_deref().unwrap_or("").is_empty() {
        errors.push(FieldError {
            path: "metadata.name".to_string(),
            message: "a StressTest needs a name".to_string(),
        });
    }
    let api_version = header("apiVersion").unwrap_or_default();
    if api_version != format!("{GROUP}/v1alpha1") {
        errors.push(FieldError {
            path: "apiVersion".to_string(),
            message: format!("expected `{GROUP}/v1alpha1`, found `{api_version}`"),
        });
    }
    let kind = header("kind").unwrap_or_default();
    if kind != "StressTest" {
        errors.push(FieldError {
            path: "kind".to_string(),
            message: format!("expected `StressTest`, found `{kind}`"),
        });
    }
    errors.extend(validate(&test.spec));
    if errors.is_empty() {
        Ok(test)
    } else {
        Err(SpecError::Invalid {
            path: origin.to_string(),
            errors,
        })
    }
}

/// Reads and parses a StressTest manifest file.
pub fn load_manifest(path: &Path) -> Result<StressTest, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_manifest(&text, &path.display().to_string())
}

// Metadata fields the API server manages (uid, resourceVersion, …) are typed by k8s-openapi and
// so never reported; `status` in a manifest (e.g. from `kubectl get -o yaml`) is ignored.
// apiVersion and kind are read by kube's generated Deserialize without being fields, and are
// checked separately.
fn is_ignorable_unknown(path: &str) -> bool {
    path == "status" || path.starts_with("status.") || path == "apiVersion" || path == "kind"
}

fn describe_yaml_error(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(loc) if !text.contains("line") => {
            format!("line {} column {}: {text}", loc.line(), loc.column())
        }
        _ => text,
    }
}

/// Checks a spec for every problem at once (pure). Empty means valid.
pub fn validate(spec: &StressTestSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(FieldError { path, message });

    if spec.target.address.trim().is_empty() {
        err(
            "spec.target.address".into(),
            "must be host:port of the Milvus proxy, e.g. 127.0.0.1:19530".into(),
        );
    }
    if let Some(m) = &spec.target.metrics {
        for (i, url) in m.urls.iter().enumerate() {
            if let Err(e) = crate::observe::parse_http_url(url) {
                err(
                    format!("spec.target.metrics.urls[{i}]"),
                    format!("{e}; write e.g. http://127.0.0.1:9091/metrics"),
                );
            }
        }
        if m.selector.as_deref().is_some_and(|s| s.trim().is_empty()) {
            err(
                "spec.target.metrics.selector".into(),
                "must be a label selector such as app.kubernetes.io/instance=milvus, or be left out".into(),
            );
        }
        if m.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            err(
                "spec.target.metrics.path".into(),
                "must start with /, e.g. /metrics".into(),
            );
        }
        if m.port == Some(0) {
            err(
                "spec.target.metrics.port".into(),
                "must be between 1 and 65535".into(),
            );
        }
        if m.interval
            .is_some_and(|d| d.get() < Duration::from_millis(100))
        {
            err(
                "spec.target.metrics.interval".into(),
                "must be at least 100ms, e.g. 2s".into(),
            );
        }
        if let Some(Err(e)) = m.link_capacity.as_deref().map(parse_link_capacity) {
            err("spec.target.metrics.linkCapacity".into(), e);
        }
    }
    let c = &spec.collection;
    if !is_milvus_name(&c.name) {
        err(
            "spec.collection.name".into(),
            format!(
                "`{}` is not a valid Milvus collection name (letters, digits and _, starting with a letter or _, at most 255 characters)",
                c.name
            ),
        );
    }
    if c.dimension == 0 || c.dimension > 32_768 {
        err(
            "spec.collection.dimension".into(),
            format!("must be between 1 and 32768, not {}", c.dimension),
        );
    }
    if c.shards < 1 || c.shards > 16 {
        err(
            "spec.collection.shards".into(),
            format!("must be between 1 and 16, not {}", c.shards),
        );
    }
    for (path, name) in [
        ("spec.collection.primaryField", &c.primary_field),
        ("spec.collection.vectorField", &c.vector_field),
    ] {
        if !is_milvus_name(name) {
            err(path.into(), format!("`{name}` is not a valid field name"));
        }
    }
    if c.primary_field == c.vector_field {
        err(
            "spec.collection.vectorField".into(),
            "must differ from primaryField".into(),
        );
    }

    let d = &spec.data;
    if d.rows == 0 {
        err(
            "spec.data.rows".into(),
            "must be at least 1 (a stress test needs data to search)".into(),
        );
    }
    if d.batch_size == 0 {
        err("spec.data.batchSize".into(), "must be at least 1".into());
    }
    if d.insert_concurrency == 0 || d.insert_concurrency > 64 {
        err(
            "spec.data.insertConcurrency".into(),
            format!("must be between 1 and 64, not {}", d.insert_concurrency),
        );
    }
    let v = &d.vectors;
    if v.distribution == Distribution::Uniform
        && v.low.partial_cmp(&v.high) != Some(std::cmp::Ordering::Less)
    {
        err(
            "spec.data.vectors".into(),
            format!(
                "uniform needs low < high, got low={} high={}",
                v.low, v.high
            ),
        );
    }
    if v.distribution == Distribution::Clustered {
        if v.clusters == 0 {
            err(
                "spec.data.vectors.clusters".into(),
                "must be at least 1".into(),
            );
        }
        if !(v.spread.is_finite() && v.spread >= 0.0) {
            err(
                "spec.data.vectors.spread".into(),
                "must be a non-negative number".into(),
            );
        }
    }
    let mut scalar_names: Vec<&str> = Vec::new();
    for (i, s) in d.scalars.iter().enumerate() {
        let path = format!("spec.data.scalars[{i}]");
        if !is_milvus_name(&s.name) {
            err(
                format!("{path}.name"),
                format!("`{}` is not a valid field name", s.name),
            );
        }
        if s.name == c.primary_field
            || s.name == c.vector_field
            || scalar_names.contains(&s.name.as_str())
        {
            err(
                format!("{path}.name"),
                format!("field `{}` is defined twice", s.name),
            );
        }
        scalar_names.push(&s.name);
        match (&s.values, &s.range) {
            (Some(values), None) => {
                if values.is_empty() {
                    err(format!("{path}.values"), "needs at least one value".into());
                }
                let longest = values.iter().map(|v| v.len()).max().unwrap_or(0);
                if let Some(max) = s.max_length
                    && (max as usize) < longest
                {
                    err(
                        format!("{path}.maxLength"),
                        format!("{max} is shorter than the longest value ({longest} bytes)"),
                    );
                }
            }
            (None, Some(range)) => {
                if range.min > range.max {
                    err(
                        format!("{path}.range"),
                        format!("min {} is larger than max {}", range.min, range.max),
                    );
                }
            }
            _ => err(
                path.clone(),
                "needs exactly one of `values` (categorical) or `range` (integer)".into(),
            ),
        }
    }

    if spec.index.index_type.trim().is_empty() {
        err(
            "spec.index.type".into(),
            "must name an index type, e.g. HNSW".into(),
        );
    }
    for (k, value) in &spec.index.params {
        if !(value.is_number() || value.is_string() || value.is_boolean()) {
            err(
                format!("spec.index.params.{k}"),
                "must be a number or a string".into(),
            );
        }
    }

    validate_workload(spec, &scalar_names, &mut err);

    if let Some(sla) = &spec.sla {
        if let Some(q) = sla.min_qps
            && !(q.is_finite() && q >= 0.0)
        {
            err(
                "spec.sla.minQps".into(),
                "must be a non-negative number".into(),
            );
        }
        if let Some(r) = sla.max_error_ratio
            && !(0.0..=1.0).contains(&r)
        {
            err(
                "spec.sla.maxErrorRatio".into(),
                format!("must be between 0 and 1 (0.001 = 0.1 %), not {r}"),
            );
        }
        if let Some(r) = sla.recall_at_least
            && !(0.0..=1.0).contains(&r)
        {
            err(
                "spec.sla.recallAtLeast".into(),
                format!("must be between 0 and 1, not {r}"),
            );
        }
        if sla.recall_at_least.is_some() && (spec.recall.sample_queries == 0 || c.auto_id) {
            err(
                "spec.sla.recallAtLeast".into(),
                "needs recall measurement: recall.sampleQueries > 0 and collection.autoId false"
                    .into(),
            );
        }
    }
    if let Some(cap) = &spec.capacity {
        if !(cap.target_qps.is_finite() && cap.target_qps > 0.0) {
            err(
                "spec.capacity.targetQps".into(),
                "must be a positive number".into(),
            );
        }
        if !(cap.redundancy.is_finite() && cap.redundancy >= 1.0) {
            err(
                "spec.capacity.redundancy".into(),
                format!("must be at least 1, not {}", cap.redundancy),
            );
        }
        if cap.measured_query_nodes == 0 {
            err(
                "spec.capacity.measuredQueryNodes".into(),
                "must be at least 1".into(),
            );
        }
    }
    let r = &spec.recall;
    if !(0.0..=1.0).contains(&r.share) {
        err(
            "spec.recall.share".into(),
            format!("must be between 0 and 1, not {}", r.share),
        );
    }
    if r.sample_queries > 0 && r.top_k == 0 {
        err("spec.recall.topK".into(), "must be at least 1".into());
    }
    if r.sample_queries > 100_000 {
        err(
            "spec.recall.sampleQueries".into(),
            "at most 100000 ground-truth queries".into(),
        );
    }
    if spec.workers.max_users_per_worker == 0 {
        err(
            "spec.workers.maxUsersPerWorker".into(),
            "must be at least 1".into(),
        );
    }
    if !(spec.workers.max_rate_per_worker.is_finite() && spec.workers.max_rate_per_worker > 0.0) {
        err(
            "spec.workers.maxRatePerWorker".into(),
            "must be a positive number".into(),
        );
    }
    if spec.workers.replicas == Replicas::Fixed(0) {
        err(
            "spec.workers.replicas".into(),
            "must be `auto` or at least 1".into(),
        );
    }
    errors
}

fn validate_workload(
    spec: &StressTestSpec,
    scalar_names: &[&str],
    err: &mut impl FnMut(String, String),
) {
    let w = &spec.workload;
    if w.wait_time.min > w.wait_time.max {
        err(
            "spec.workload.waitTime".into(),
            format!(
                "min {} is longer than max {}",
                w.wait_time.min, w.wait_time.max
            ),
        );
    }
    if w.request_timeout.get().is_zero() {
        err(
            "spec.workload.requestTimeout".into(),
            "must be longer than 0".into(),
        );
    }
    if w.model == LoadModel::Open && w.max_in_flight == 0 {
        err(
            "spec.workload.maxInFlight".into(),
            "must be at least 1".into(),
        );
    }
    if w.operations.is_empty() {
        err(
            "spec.workload.operations".into(),
            "needs at least one operation".into(),
        );
    } else if w.operations.iter().all(|o| o.weight == 0) {
        err(
            "spec.workload.operations".into(),
            "weights sum to 0; give at least one operation a positive weight".into(),
        );
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, op) in w.operations.iter().enumerate() {
        let path = format!("spec.workload.operations[{i}]");
        if op.name.trim().is_empty() {
            err(format!("{path}.name"), "must not be empty".into());
        }
        if names.contains(&op.name.as_str()) {
            err(
                format!("{path}.name"),
                format!("`{}` is used twice", op.name),
            );
        }
        names.push(&op.name);
        let check_template = |field: &str, template: &str| -> Vec<(String, String)> {
            crate::data::filter_placeholders(template)
                .into_iter()
                .filter(|name| !scalar_names.contains(&name.as_str()))
                .map(|name| {
                    (
                        format!("{path}.{field}"),
                        format!(
                            "`{{{name}}}` names no scalar field; defined: [{}]",
                            scalar_names.join(", ")
                        ),
                    )
                })
                .collect()
        };
        match (&op.search, &op.query) {
            (Some(s), None) => {
                if s.top_k == 0 || s.top_k > 16_384 {
                    err(
                        format!("{path}.search.topK"),
                        format!("must be between 1 and 16384, not {}", s.top_k),
                    );
                }
                if s.nq == 0 || s.nq > 16_384 {
                    err(
                        format!("{path}.search.nq"),
                        format!("must be between 1 and 16384, not {}", s.nq),
                    );
                }
                if let Some(f) = &s.filter {
                    for (p, m) in check_template("search.filter", f) {
                        err(p, m);
                    }
                }
            }
            (None, Some(q)) => {
                if q.expr.trim().is_empty() {
                    err(format!("{path}.query.expr"), "must not be empty".into());
                }
                for (p, m) in check_template("query.expr", &q.expr) {
                    err(p, m);
                }
                if q.limit == 0 || q.limit > 16_384 {
                    err(
                        format!("{path}.query.limit"),
                        format!("must be between 1 and 16384, not {}", q.limit),
                    );
                }
            }
            _ => err(
                path.clone(),
                "needs exactly one of `search` or `query`".into(),
            ),
        }
    }
    for (i, st) in spec.stages.iter().enumerate() {
        let path = format!("spec.stages[{i}]");
        if st.duration.get().is_zero() {
            err(format!("{path}.duration"), "must be longer than 0".into());
        }
        match w.model {
            LoadModel::Closed => {
                if st.users.is_none() {
                    err(
                        format!("{path}.users"),
                        "the Closed model needs users in every stage".into(),
                    );
                }
                match st.spawn_rate {
                    None => err(
                        format!("{path}.spawnRate"),
                        "the Closed model needs a spawnRate (users started per second)".into(),
                    ),
                    Some(r) if !(r.is_finite() && r > 0.0) => err(
                        format!("{path}.spawnRate"),
                        format!("must be a positive number, not {r}"),
                    ),
                    _ => {}
                }
                if st.rate.is_some() {
                    err(
                        format!("{path}.rate"),
                        "rate belongs to the Open model; set workload.model: Open or use users"
                            .into(),
                    );
                }
            }
            LoadModel::Open => {
                match st.rate {
                    None => err(
                        format!("{path}.rate"),
                        "the Open model needs a rate (requests per second) in every stage".into(),
                    ),
                    Some(r) if !(r.is_finite() && r > 0.0) => err(
                        format!("{path}.rate"),
                        format!("must be a positive number, not {r}"),
                    ),
                    _ => {}
                }
                if st.users.is_some() || st.spawn_rate.is_some() {
                    err(
                        path.clone(),
                        "users/spawnRate belong to the Closed model; set workload.model: Closed or use rate".into(),
                    );
                }
            }
        }
    }
}

fn is_milvus_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    name.len() <= 255 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC: &str = r#"
apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata:
  name: milvus-capacity
spec:
  target: {address: "milvus.db.svc:19530"}
  collection: {name: stress_test_collection, dimension: 768, metric: L2}
  data:
    rows: 1000000
    batchSize: 10000
    seed: 42
    vectors: {distribution: Normal, normalize: true}
    scalars: [{name: category, values: [A, B, C, D]}]
  index: {type: HNSW, params: {M: 16, efConstruction: 200}}
  workload:
    model: Closed
    waitTime: {min: 100ms, max: 500ms}
    operations:
      - {name: search_vector, weight: 10, search: {topK: 10, params: {ef: 64}}}
      - {name: search_with_filter, weight: 3, search: {topK: 10, filter: 'category == "{category}"'}}
      - {name: batch_search, weight: 1, search: {topK: 10, nq: 5}}
  stages:
    - {duration: 60s, users: 10, spawnRate: 10}
    - {duration: 60s, users: 500, spawnRate: 50}
  sla: {minQps: 1000, maxP95: 100ms, maxErrorRatio: 0.001}
  capacity: {targetQps: 10000, redundancy: 2}
"#;

    #[test]
    fn the_classic_scenario_parses_with_its_values() {
        let st = parse_manifest(CLASSIC, "classic.yaml").unwrap();
        assert_eq!(st.metadata.name.as_deref(), Some("milvus-capacity"));
        assert_eq!(st.spec.collection.dimension, 768);
        assert_eq!(st.spec.data.rows, 1_000_000);
        assert_eq!(st.spec.index.params["M"], serde_json::json!(16));
        assert_eq!(
            st.spec.workload.operations[2].search.as_ref().unwrap().nq,
            5
        );
        assert_eq!(
            st.spec.workload.wait_time.max.get(),
            Duration::from_millis(500)
        );
        assert_eq!(st.spec.workload.consistency, Consistency::Bounded);
        assert_eq!(st.spec.target.database, "default");
        assert_eq!(st.spec.collection.on_existing, OnExisting::Reuse);
    }

    #[test]
    fn a_file_with_a_secret_next_to_the_stresstest_reads_the_stresstest() {
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: milvus-auth}\nstringData: {username: u, password: p}\n";
        let text = format!("{secret}---{CLASSIC}---\n{secret}");
        let st = parse_manifest(&text, "with-auth.yaml").unwrap();
        assert_eq!(st.metadata.name.as_deref(), Some("milvus-capacity"));
        // Errors in the StressTest document keep the file's line numbers.
        let broken = format!(
            "{secret}---{}",
            CLASSIC.replace("rows: 1000000", "rows: many")
        );
        let Err(SpecError::Parse { message, .. }) = parse_manifest(&broken, "x.yaml") else {
            panic!("a type error must be a parse error")
        };
        assert!(message.contains("line 14"), "{message}");
    }

    #[test]
    fn a_file_without_or_with_two_stresstests_is_refused_with_a_reason() {
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: b}\n";
        let Err(SpecError::Parse { message, .. }) = parse_manifest(secret, "x.yaml") else {
            panic!("no StressTest must be refused")
        };
        assert!(
            message.contains("none of its 2 YAML documents"),
            "{message}"
        );
        let two = format!("{CLASSIC}---{CLASSIC}");
        let Err(SpecError::Parse { message, .. }) = parse_manifest(&two, "x.yaml") else {
            panic!("two StressTests must be refused")
        };
        assert!(message.contains("one StressTest per file"), "{message}");
    }

    #[test]
    fn unknown_fields_are_all_reported_with_their_paths() {
        let text = CLASSIC
            .replace("batchSize: 10000", "batchSize: 10000\n    batchsize: 5")
            .replace("metric: L2}", "metric: L2, dimensions: 3}");
        let Err(SpecError::Invalid { errors, .. }) = parse_manifest(&text, "x.yaml") else {
            panic!("expected invalid");
        };
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["spec.collection.dimensions", "spec.data.batchsize"]
        );
    }

    #[test]
    fn a_type_error_names_the_line_and_column() {
        let text = CLASSIC.replace("dimension: 768", "dimension: big");
        let Err(SpecError::Parse { message, .. }) = parse_manifest(&text, "x.yaml") else {
            panic!("expected parse error");
        };
        assert!(message.contains("line 8"), "{message}");
        assert!(message.contains("column"), "{message}");
        assert!(message.contains("dimension"), "{message}");
    }

    #[test]
    fn every_validation_error_is_reported_at_once() {
        let text = CLASSIC
            .replace("rows: 1000000", "rows: 0")
            .replace(
                "{duration: 60s, users: 10, spawnRate: 10}",
                "{duration: 0s, users: 10}",
            )
            .replace("weight: 10,", "weight: 0,")
            .replace("weight: 3,", "weight: 0,")
            .replace("weight: 1,", "weight: 0,")
            .replace("{category}", "{colour}");
        let Err(SpecError::Invalid { errors, .. }) = parse_manifest(&text, "x.yaml") else {
            panic!("expected invalid");
        };
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.data.rows",
                "spec.workload.operations",
                "spec.workload.operations[1].search.filter",
                "spec.stages[0].duration",
                "spec.stages[0].spawnRate",
            ]
        );
        assert!(
            errors[2].message.contains("{colour}"),
            "{}",
            errors[2].message
        );
        assert!(
            errors[2].message.contains("category"),
            "{}",
            errors[2].message
        );
    }

    #[test]
    fn open_model_stages_need_a_rate_and_no_users() {
        let text = CLASSIC.replace("model: Closed", "model: Open");
        let Err(SpecError::Invalid { errors, .. }) = parse_manifest(&text, "x.yaml") else {
            panic!("expected invalid");
        };
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.stages[0].rate",
                "spec.stages[0]",
                "spec.stages[1].rate",
                "spec.stages[1]"
            ]
        );
    }

    #[test]
    fn durations_parse_in_every_unit_and_reject_garbage() {
        let p = |s: &str| s.parse::<DurationSpec>().map(|d| d.get());
        assert_eq!(p("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(p("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(p("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(p("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(p("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(p("0"), Ok(Duration::ZERO));
        assert!(p("10").unwrap_err().contains("without a unit"));
        assert!(p("10d").unwrap_err().contains("unknown unit `d`"));
        assert!(p("").is_err());
        assert!(p("s").is_err());
        assert_eq!(
            DurationSpec(Duration::from_millis(250)).to_string(),
            "250ms"
        );
        assert_eq!(DurationSpec(Duration::from_secs(60)).to_string(), "60s");
    }

    #[test]
    fn replicas_accept_auto_or_a_number() {
        let r: Replicas = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(r, Replicas::Auto);
        let r: Replicas = serde_json::from_str("3").unwrap();
        assert_eq!(r, Replicas::Fixed(3));
        let e = serde_json::from_str::<Replicas>("\"many\"").unwrap_err();
        assert!(e.to_string().contains("`auto` or a number"), "{e}");
    }

    #[test]
    fn a_scalar_needs_exactly_one_of_values_or_range() {
        let text = CLASSIC.replace(
            "scalars: [{name: category, values: [A, B, C, D]}]",
            "scalars: [{name: category, values: [A, B, C, D]}, {name: price}, {name: year, range: {min: 2030, max: 2000}}]",
        );
        let Err(SpecError::Invalid { errors, .. }) = parse_manifest(&text, "x.yaml") else {
            panic!("expected invalid");
        };
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["spec.data.scalars[1]", "spec.data.scalars[2].range"]
        );
    }

    #[test]
    fn link_capacities_in_bits_and_bytes_per_second_are_read_as_bytes_per_second() {
        assert_eq!(parse_link_capacity("1Gbit"), Ok(125e6));
        assert_eq!(parse_link_capacity("10Gbit"), Ok(1.25e9));
        assert_eq!(parse_link_capacity("100Mbit"), Ok(12.5e6));
        assert_eq!(parse_link_capacity("800Kbit"), Ok(1e5));
        assert_eq!(parse_link_capacity("8bit"), Ok(1.0));
        assert_eq!(parse_link_capacity("125MB"), Ok(125e6));
        assert_eq!(parse_link_capacity("2.5GB"), Ok(2.5e9));
        assert_eq!(parse_link_capacity("1KB"), Ok(1e3));
        assert_eq!(parse_link_capacity("64B"), Ok(64.0));
        assert_eq!(parse_link_capacity("1KiB"), Ok(1024.0));
        assert_eq!(parse_link_capacity("100MiB"), Ok(100.0 * 1024.0 * 1024.0));
        assert_eq!(parse_link_capacity("1GiB"), Ok(1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_link_capacity(" 1 Gbit/s "), Ok(125e6));
    }

    #[test]
    fn a_link_capacity_without_a_known_unit_or_above_zero_is_refused_with_a_hint() {
        let no_unit = parse_link_capacity("1000").unwrap_err();
        assert!(no_unit.contains("has no unit"), "{no_unit}");
        let unknown = parse_link_capacity("1Gb").unwrap_err();
        assert!(unknown.contains("unknown unit `Gb`"), "{unknown}");
        assert!(
            parse_link_capacity("1gbit").is_err(),
            "units are case-sensitive"
        );
        assert!(parse_link_capacity("Gbit").unwrap_err().contains("number"));
        assert!(parse_link_capacity("1.2.3Gbit").is_err());
        assert!(
            parse_link_capacity("0Gbit")
                .unwrap_err()
                .contains("more than zero")
        );
        assert!(parse_link_capacity("").is_err());
    }

    #[test]
    fn a_bad_link_capacity_is_reported_at_its_path_with_the_other_errors() {
        let text = CLASSIC.replace(
            r#"target: {address: "milvus.db.svc:19530"}"#,
            r#"target: {address: "milvus.db.svc:19530", metrics: {linkCapacity: 10Gbps, port: 0}}"#,
        );
        let Err(SpecError::Invalid { errors, .. }) = parse_manifest(&text, "x.yaml") else {
            panic!("expected invalid");
        };
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.target.metrics.port",
                "spec.target.metrics.linkCapacity"
            ]
        );
        assert!(
            errors[1].message.contains("unknown unit `Gbps`"),
            "{}",
            errors[1]
        );
        let good = CLASSIC.replace(
            r#"target: {address: "milvus.db.svc:19530"}"#,
            r#"target: {address: "milvus.db.svc:19530", metrics: {linkCapacity: 10Gbit}}"#,
        );
        let st = parse_manifest(&good, "x.yaml").unwrap();
        let m = st.spec.target.metrics.unwrap();
        assert_eq!(m.link_capacity.as_deref(), Some("10Gbit"));
    }

    #[test]
    fn invalid_collection_names_are_rejected() {
        assert!(is_milvus_name("stress_test_collection"));
        assert!(is_milvus_name("_a1"));
        assert!(!is_milvus_name("1abc"));
        assert!(!is_milvus_name("with-dash"));
        assert!(!is_milvus_name(""));
    }
}
