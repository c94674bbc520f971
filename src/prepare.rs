//! `stampede prepare`: makes the collection of a StressTest ready for load — create or reuse it,
//! insert the generated rows (resuming an interrupted run), flush, build the index, load it, and
//! compute exact ground truth for recall.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::data::{
    GroundTruth, Metric, ScalarGenerator, ScalarValues, VectorDistribution, VectorGenerator,
};
use crate::milvus::{
    CollectionSchemaDef, Column, FieldDef, FieldType, IndexDef, LoadState, MilvusClient,
    MilvusError,
};
use crate::spec::{Distribution, MetricType, OnExisting, StressTestSpec};

/// Milvus proxies refuse gRPC messages above 64 MiB by default (`grpc.serverMaxRecvSize`);
/// larger batches are split into several insert requests below this size.
pub const MAX_INSERT_REQUEST_BYTES: usize = 60 * 1024 * 1024;

/// Milvus returns at most 16384 rows per query, which bounds the id look-ups of a resume.
const QUERY_LIMIT: u64 = 16_384;

/// Why prepare stopped.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A Milvus call failed.
    #[error(transparent)]
    Milvus(#[from] MilvusError),
    /// The collection exists and `onExisting: Fail` was asked for.
    #[error(
        "collection `{0}` already exists and spec.collection.onExisting is Fail; use Reuse to keep it or Recreate to start over"
    )]
    Exists(String),
    /// The existing collection does not match the spec.
    #[error(
        "collection `{collection}` exists with a different schema:\n{}\nuse spec.collection.onExisting: Recreate to drop and recreate it, or change the spec to match",
        differences.iter().map(|d| format!("  - {d}")).collect::<Vec<_>>().join("\n")
    )]
    SchemaDiffers {
        /// The collection.
        collection: String,
        /// Each difference, as a sentence.
        differences: Vec<String>,
    },
    /// The existing collection's rows cannot be reused.
    #[error("collection `{collection}`: {message}")]
    Rows {
        /// The collection.
        collection: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Milvus reported that the index build failed.
    #[error("building the {index_type} index on `{collection}` failed: {reason}")]
    IndexFailed {
        /// The collection.
        collection: String,
        /// Index type.
        index_type: String,
        /// Milvus's reason.
        reason: String,
    },
    /// A wait ran out of time.
    #[error("{0} did not finish within {1:?}; Milvus may be overloaded — check its logs")]
    Timeout(&'static str, Duration),
    /// Writing the ground truth or summary failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A background task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What prepare did with an existing collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CollectionAction {
    /// It did not exist and was created.
    Created,
    /// It existed and was dropped and created again.
    Recreated,
    /// It existed with a matching schema and was kept.
    Reused,
}

/// Time spent in one phase of prepare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTime {
    /// Phase name.
    pub phase: String,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// What prepare did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareSummary {
    /// Collection name.
    pub collection: String,
    /// Milvus server version.
    pub server_version: String,
    /// Created, Recreated or Reused.
    pub action: CollectionAction,
    /// Rows the collection holds at the end.
    pub rows: u64,
    /// Rows that were already there.
    pub rows_existing: u64,
    /// Rows this run inserted.
    pub rows_inserted: u64,
    /// Insert throughput of this run (rows/s).
    pub insert_rows_per_second: f64,
    /// Index type.
    pub index_type: String,
    /// Index parameters as sent.
    pub index_params: BTreeMap<String, String>,
    /// Whether an existing index was kept.
    pub index_reused: bool,
    /// Load state at the end.
    pub load_state: String,
    /// Ground truth file, when computed.
    pub ground_truth: Option<String>,
    /// Time per phase.
    pub phases: Vec<PhaseTime>,
}

/// Options of a prepare run that are not part of the spec.
#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Where to write `ground_truth.json` (None: don't compute it).
    pub ground_truth_path: Option<PathBuf>,
    /// Threads for ground truth (0 = all cores).
    pub threads: usize,
    /// Print progress lines on stderr.
    pub progress: bool,
}

/// The schema a spec asks for. The description records how the data was generated, so a later
/// Reuse can tell whether the rows are the ones the spec would generate.
pub fn collection_schema(spec: &StressTestSpec) -> CollectionSchemaDef {
    let c = &spec.collection;
    let mut fields = vec![
        FieldDef {
            name: c.primary_field.clone(),
            field_type: FieldType::Int64,
            primary_key: true,
            auto_id: c.auto_id,
        },
        FieldDef {
            name: c.vector_field.clone(),
            field_type: FieldType::FloatVector { dim: c.dimension },
            primary_key: false,
            auto_id: false,
        },
    ];
    for s in &spec.data.scalars {
        let field_type = match (&s.values, s.max_length) {
            (Some(_), Some(max)) => FieldType::VarChar { max_length: max },
            (Some(values), None) => FieldType::VarChar {
                max_length: values.iter().map(|v| v.len()).max().unwrap_or(1).max(1) as u32,
            },
            (None, _) => FieldType::Int64,
        };
        fields.push(FieldDef {
            name: s.name.clone(),
            field_type,
            primary_key: false,
            auto_id: false,
        });
    }
    CollectionSchemaDef {
        name: c.name.clone(),
        description: data_fingerprint(spec),
        fields,
    }
}

/// A one-line description of the generated data, stored as the collection description.
pub fn data_fingerprint(spec: &StressTestSpec) -> String {
    let v = &spec.data.vectors;
    let dist = match v.distribution {
        Distribution::Normal => "normal".to_string(),
        Distribution::Uniform => format!("uniform[{},{})", v.low, v.high),
        Distribution::Clustered => format!("clustered(k={},spread={})", v.clusters, v.spread),
    };
    format!(
        "stampede data: seed={} vectors={} normalize={}",
        spec.data.seed, dist, v.normalize
    )
}

/// The vector generator a spec describes.
pub fn vector_generator(spec: &StressTestSpec) -> VectorGenerator {
    let v = &spec.data.vectors;
    let distribution = match v.distribution {
        Distribution::Normal => VectorDistribution::Normal,
        Distribution::Uniform => VectorDistribution::Uniform {
            low: v.low,
            high: v.high,
        },
        Distribution::Clustered => VectorDistribution::Clustered {
            centers: v.clusters,
            spread: v.spread,
        },
    };
    VectorGenerator::new(
        spec.collection.dimension as usize,
        distribution,
        v.normalize,
        spec.data.seed,
    )
}

/// The scalar generators a spec describes, in field order.
pub fn scalar_generators(spec: &StressTestSpec) -> Vec<ScalarGenerator> {
    spec.data
        .scalars
        .iter()
        .map(|s| {
            let values = match (&s.values, &s.range) {
                (Some(values), _) => ScalarValues::Categorical(values.clone()),
                (None, Some(r)) => ScalarValues::IntRange {
                    min: r.min,
                    max: r.max,
                },
                (None, None) => ScalarValues::IntRange { min: 0, max: 0 },
            };
            ScalarGenerator::new(&s.name, values, spec.data.seed)
        })
        .collect()
}

/// The metric in the data module's terms.
pub fn metric_of(m: MetricType) -> Metric {
    match m {
        MetricType::L2 => Metric::L2,
        MetricType::IP => Metric::Ip,
        MetricType::COSINE => Metric::Cosine,
    }
}

/// The index a spec asks for, with parameters as the strings Milvus receives.
pub fn index_def(spec: &StressTestSpec) -> IndexDef {
    IndexDef {
        index_name: format!("{}_idx", spec.collection.vector_field),
        index_type: spec.index.index_type.clone(),
        metric_type: spec.collection.metric.as_str().to_string(),
        params: spec
            .index
            .params
            .iter()
            .map(|(k, v)| (k.clone(), json_scalar_string(v)))
            .collect(),
    }
}

/// A JSON scalar as Milvus expects it in a key/value pair (`16`, not `"16"`).
pub fn json_scalar_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every difference between the fields a spec asks for and those a collection has.
pub fn schema_differences(expected: &CollectionSchemaDef, actual: &[FieldDef]) -> Vec<String> {
    let mut diffs = Vec::new();
    for want in &expected.fields {
        match actual.iter().find(|f| f.name == want.name) {
            None => diffs.push(format!(
                "field `{}` ({}) is missing",
                want.name, want.field_type
            )),
            Some(have) => {
                if have.field_type != want.field_type {
                    diffs.push(format!(
                        "field `{}` is {} but the spec needs {}",
                        want.name, have.field_type, want.field_type
                    ));
                }
                if have.primary_key != want.primary_key {
                    diffs.push(format!(
                        "field `{}` {} the primary key but the spec {}",
                        want.name,
                        if have.primary_key { "is" } else { "is not" },
                        if want.primary_key {
                            "needs it to be"
                        } else {
                            "does not"
                        }
                    ));
                }
                if want.primary_key && have.auto_id != want.auto_id {
                    diffs.push(format!(
                        "primary key `{}` has autoId={} but spec.collection.autoId is {}",
                        want.name, have.auto_id, want.auto_id
                    ));
                }
            }
        }
    }
    for have in actual {
        if !expected.fields.iter().any(|f| f.name == have.name) {
            diffs.push(format!(
                "field `{}` ({}) is not in the spec",
                have.name, have.field_type
            ));
        }
    }
    diffs
}

/// Splits rows into insert batches of at most `batch_size` rows and `max_bytes` bytes each.
pub fn plan_batches(
    rows: std::ops::Range<u64>,
    batch_size: u32,
    bytes_per_row: usize,
    max_bytes: usize,
) -> Vec<std::ops::Range<u64>> {
    let by_bytes = (max_bytes / bytes_per_row.max(1)).max(1) as u64;
    let step = u64::from(batch_size.max(1)).min(by_bytes);
    let mut out = Vec::new();
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + step).min(rows.end);
        out.push(start..end);
        start = end;
    }
    out
}

/// Bytes one row takes on the wire (vector, key and scalars).
pub fn bytes_per_row(spec: &StressTestSpec) -> usize {
    let scalars: usize = spec
        .data
        .scalars
        .iter()
        .map(|s| match &s.values {
            Some(values) => values.iter().map(|v| v.len()).max().unwrap_or(0) + 2,
            // A negative INT64 takes 10 bytes as a protobuf varint.
            None => 10,
        })
        .sum();
    spec.collection.dimension as usize * 4 + 10 + scalars
}

/// Builds the insert columns for the given row numbers.
pub fn build_columns(
    spec: &StressTestSpec,
    vectors: &VectorGenerator,
    scalars: &[ScalarGenerator],
    ids: &[u64],
) -> Vec<Column> {
    let dim = vectors.dim();
    let mut data = vec![0f32; ids.len() * dim];
    for (row, out) in ids.iter().zip(data.chunks_exact_mut(dim.max(1))) {
        vectors.fill_row(*row, out);
    }
    let mut columns = Vec::with_capacity(2 + scalars.len());
    if !spec.collection.auto_id {
        columns.push(Column::Int64 {
            name: spec.collection.primary_field.clone(),
            data: ids.iter().map(|&i| i as i64).collect(),
        });
    }
    columns.push(Column::FloatVector {
        name: spec.collection.vector_field.clone(),
        dim: dim as u32,
        data,
    });
    for (scalar, s) in scalars.iter().zip(&spec.data.scalars) {
        if s.values.is_some() {
            columns.push(Column::VarChar {
                name: s.name.clone(),
                data: ids
                    .iter()
                    .map(|&i| scalar.string_value(i).to_string())
                    .collect(),
            });
        } else {
            columns.push(Column::Int64 {
                name: s.name.clone(),
                data: ids.iter().map(|&i| scalar.int_value(i)).collect(),
            });
        }
    }
    columns
}

/// A progress line on stderr: redrawn in place on a terminal, one line per update otherwise.
struct ProgressLine {
    enabled: bool,
    tty: bool,
    last: Option<Instant>,
    every: Duration,
}

impl ProgressLine {
    fn new(enabled: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        ProgressLine {
            enabled,
            tty,
            last: None,
            every: if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(2)
            },
        }
    }

    fn update(&mut self, text: &str) {
        if !self.enabled {
            return;
        }
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        if self.tty {
            eprint!("\r\x1b[2K{text}");
        } else {
            eprintln!("{text}");
        }
    }

    fn finish(&mut self, text: &str) {
        if !self.enabled {
            return;
        }
        if self.tty {
            eprintln!("\r\x1b[2K{text}");
        } else {
            eprintln!("{text}");
        }
        self.last = None;
    }
}

/// Formats a duration of seconds as `1m23s` or `4.2s`.
pub fn human_seconds(s: f64) -> String {
    if !s.is_finite() {
        return "?".to_string();
    }
    if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.1}s")
    }
}

/// Runs every phase of prepare against a connected client.
pub async fn prepare(
    client: &MilvusClient,
    spec: &StressTestSpec,
    opts: &PrepareOptions,
) -> Result<PrepareSummary, PrepareError> {
    let name = spec.collection.name.clone();
    let mut phases = Vec::new();
    let mut progress = ProgressLine::new(opts.progress);
    let schema = collection_schema(spec);

    // 1. Collection.
    let t = Instant::now();
    let exists = client.has_collection(&name).await?;
    let action = match (exists, spec.collection.on_existing) {
        (false, _) => {
            create(client, spec, &schema).await?;
            CollectionAction::Created
        }
        (true, OnExisting::Fail) => return Err(PrepareError::Exists(name)),
        (true, OnExisting::Recreate) => {
            info!(collection = %name, "dropping the existing collection (onExisting: Recreate)");
            client.drop_collection(&name).await?;
            create(client, spec, &schema).await?;
            CollectionAction::Recreated
        }
        (true, OnExisting::Reuse) => {
            let info = client.describe_collection(&name).await?;
            let mut differences = schema_differences(&schema, &info.fields);
            if !info.description.is_empty()
                && info.description.starts_with("stampede data:")
                && info.description != schema.description
            {
                differences.push(format!(
                    "its rows were generated as `{}` but the spec generates `{}`",
                    info.description, schema.description
                ));
            }
            if !differences.is_empty() {
                return Err(PrepareError::SchemaDiffers {
                    collection: name,
                    differences,
                });
            }
            CollectionAction::Reused
        }
    };
    phases.push(phase("collection", t));
    info!(collection = %name, ?action, "collection ready");

    // 2. Rows.
    let t = Instant::now();
    let wanted = spec.data.rows;
    let mut index_ready = false;
    let existing = if action == CollectionAction::Reused {
        // Unflushed rows of an interrupted run are invisible to the row count of an unloaded
        // collection; flushing first makes them count, so they are not inserted twice.
        client.flush(&name).await?;
        client.row_count(&name).await?
    } else {
        0
    };
    let to_insert: Vec<std::ops::Range<u64>> = if existing == wanted {
        Vec::new()
    } else if existing > wanted {
        return Err(PrepareError::Rows {
            collection: name,
            message: format!(
                "it holds {existing} rows but spec.data.rows is {wanted}; set rows to {existing} or use onExisting: Recreate"
            ),
        });
    } else if existing == 0 {
        plan_batches(
            0..wanted,
            spec.data.batch_size,
            bytes_per_row(spec),
            MAX_INSERT_REQUEST_BYTES,
        )
    } else if spec.collection.auto_id {
        return Err(PrepareError::Rows {
            collection: name,
            message: format!(
                "it holds {existing} of {wanted} rows and autoId is on, so the missing rows cannot be told apart; use onExisting: Recreate (or autoId: false, which makes prepare resumable)"
            ),
        });
    } else {
        // Resume: the key is the row number, so the missing rows can be found by key. Counting
        // by key needs a loaded collection, and loading needs an index.
        progress.finish(&format!(
            "resuming: `{name}` holds {existing} of {wanted} rows; finding the missing ones"
        ));
        ensure_index(client, spec, &mut progress).await?;
        load(client, &name, &mut progress).await?;
        index_ready = true;
        missing_rows(client, spec, wanted).await?
    };
    let missing: u64 = to_insert.iter().map(|r| r.end - r.start).sum();
    let inserted = insert_rows(client, spec, to_insert, &mut progress).await?;
    let insert_seconds = t.elapsed().as_secs_f64();
    phases.push(phase("insert", t));
    if inserted != missing {
        return Err(PrepareError::Rows {
            collection: name,
            message: format!("Milvus acknowledged {inserted} of {missing} inserted rows"),
        });
    }

    // 3. Flush.
    let t = Instant::now();
    if inserted > 0 {
        progress.finish("flushing…");
        client.flush(&name).await?;
    }
    phases.push(phase("flush", t));

    // 4. Index.
    let t = Instant::now();
    let index_reused = if index_ready {
        wait_index(client, spec, &mut progress).await?;
        true
    } else {
        let reused = ensure_index(client, spec, &mut progress).await?;
        wait_index(client, spec, &mut progress).await?;
        reused
    };
    phases.push(phase("index", t));

    // 5. Load.
    let t = Instant::now();
    let state = load(client, &name, &mut progress).await?;
    phases.push(phase("load", t));

    let rows = client.row_count(&name).await?;
    if rows != wanted {
        return Err(PrepareError::Rows {
            collection: name,
            message: format!("it holds {rows} rows after prepare, expected {wanted}"),
        });
    }

    // 6. Ground truth.
    let mut ground_truth = None;
    if let Some(path) = &opts.ground_truth_path
        && spec.recall.sample_queries > 0
        && !spec.collection.auto_id
    {
        let t = Instant::now();
        let gt = compute_ground_truth(spec, opts.threads, opts.progress).await?;
        save_json(path, &gt)?;
        progress.finish(&format!(
            "ground truth: {} queries × top {} over {} rows in {}",
            gt.ids.len(),
            gt.top_k,
            gt.rows,
            human_seconds(t.elapsed().as_secs_f64())
        ));
        ground_truth = Some(path.display().to_string());
        phases.push(phase("groundTruth", t));
    }

    let index = index_def(spec);
    Ok(PrepareSummary {
        collection: name,
        server_version: client.server_version().to_string(),
        action,
        rows,
        rows_existing: existing,
        rows_inserted: inserted,
        insert_rows_per_second: if insert_seconds > 0.0 {
            inserted as f64 / insert_seconds
        } else {
            0.0
        },
        index_type: index.index_type,
        index_params: index.params,
        index_reused,
        load_state: format!("{state:?}"),
        ground_truth,
        phases,
    })
}

fn phase(name: &str, t: Instant) -> PhaseTime {
    PhaseTime {
        phase: name.to_string(),
        seconds: t.elapsed().as_secs_f64(),
    }
}

async fn create(
    client: &MilvusClient,
    spec: &StressTestSpec,
    schema: &CollectionSchemaDef,
) -> Result<(), PrepareError> {
    client
        .create_collection(schema, spec.collection.shards, consistency_of(spec))
        .await?;
    Ok(())
}

/// The Milvus consistency level a spec's workload asks for.
pub fn consistency_of(spec: &StressTestSpec) -> crate::milvus::ConsistencyLevel {
    use crate::milvus::ConsistencyLevel as L;
    use crate::spec::Consistency as C;
    match spec.workload.consistency {
        C::Strong => L::Strong,
        C::Session => L::Session,
        C::Bounded => L::Bounded,
        C::Eventually => L::Eventually,
    }
}

/// The row ranges whose keys are absent from the collection (which must be loaded).
async fn missing_rows(
    client: &MilvusClient,
    spec: &StressTestSpec,
    wanted: u64,
) -> Result<Vec<std::ops::Range<u64>>, PrepareError> {
    let name = &spec.collection.name;
    let pk = &spec.collection.primary_field;
    let beyond = client
        .query(
            name,
            &format!("{pk} >= {wanted}"),
            std::slice::from_ref(pk),
            Some(1),
            crate::milvus::ConsistencyLevel::Strong,
        )
        .await?;
    if beyond.rows > 0 {
        return Err(PrepareError::Rows {
            collection: name.clone(),
            message: format!(
                "it holds rows with {pk} >= {wanted}, beyond spec.data.rows; set rows to the collection's size or use onExisting: Recreate"
            ),
        });
    }
    let mut missing = Vec::new();
    let mut start = 0;
    while start < wanted {
        let end = (start + QUERY_LIMIT).min(wanted);
        let rows = client
            .query(
                name,
                &format!("{pk} >= {start} && {pk} < {end}"),
                std::slice::from_ref(pk),
                Some(QUERY_LIMIT),
                crate::milvus::ConsistencyLevel::Strong,
            )
            .await?;
        let mut present: Vec<u64> = rows
            .columns
            .iter()
            .find_map(|c| match c {
                Column::Int64 { name: n, data } if n == pk => {
                    Some(data.iter().map(|&v| v as u64).collect())
                }
                _ => None,
            })
            .unwrap_or_default();
        present.sort_unstable();
        present.dedup();
        let mut next = start;
        for id in present {
            if id > next {
                missing.push(next..id);
            }
            next = id + 1;
        }
        if next < end {
            missing.push(next..end);
        }
        start = end;
    }
    // Re-split long gaps into batches of the configured size.
    let per_row = bytes_per_row(spec);
    Ok(missing
        .into_iter()
        .flat_map(|r| plan_batches(r, spec.data.batch_size, per_row, MAX_INSERT_REQUEST_BYTES))
        .collect())
}

async fn insert_rows(
    client: &MilvusClient,
    spec: &StressTestSpec,
    batches: Vec<std::ops::Range<u64>>,
    progress: &mut ProgressLine,
) -> Result<u64, PrepareError> {
    let total: u64 = batches.iter().map(|r| r.end - r.start).sum();
    if total == 0 {
        return Ok(0);
    }
    let per_row = bytes_per_row(spec);
    if u64::from(spec.data.batch_size) * per_row as u64 > MAX_INSERT_REQUEST_BYTES as u64 {
        info!(
            batch_size = spec.data.batch_size,
            bytes = u64::from(spec.data.batch_size) * per_row as u64,
            limit = MAX_INSERT_REQUEST_BYTES,
            "batch exceeds Milvus's default 64 MiB gRPC message limit; sending smaller requests"
        );
    }
    let shared = Arc::new((
        spec.clone(),
        vector_generator(spec),
        scalar_generators(spec),
    ));
    let name = spec.collection.name.clone();
    let started = Instant::now();
    let mut done = 0u64;
    let mut results = futures::stream::iter(batches)
        .map(|range| {
            let shared = Arc::clone(&shared);
            let client = client.clone();
            let name = name.clone();
            async move {
                let n = range.end - range.start;
                let columns = tokio::task::spawn_blocking(move || {
                    let (spec, vectors, scalars) = &*shared;
                    let ids: Vec<u64> = range.collect();
                    build_columns(spec, vectors, scalars, &ids)
                })
                .await
                .map_err(|e| PrepareError::Internal(format!("row generation failed: {e}")))?;
                let inserted = client.insert(&name, &columns, n as usize).await?;
                Ok::<u64, PrepareError>(inserted)
            }
        })
        .buffer_unordered(spec.data.insert_concurrency.max(1) as usize);
    while let Some(result) = results.next().await {
        done += result?;
        let secs = started.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        let eta = (total - done.min(total)) as f64 / rate.max(1e-9);
        let line = format!(
            "insert: {done}/{total} rows ({:.0}%), {rate:.0} rows/s, ETA {}",
            100.0 * done as f64 / total as f64,
            human_seconds(eta)
        );
        progress.update(&line);
        tracing::debug!(done, total, rows_per_second = rate, "insert progress");
    }
    let secs = started.elapsed().as_secs_f64();
    progress.finish(&format!(
        "insert: {done} rows in {} ({:.0} rows/s)",
        human_seconds(secs),
        done as f64 / secs.max(1e-9)
    ));
    info!(rows = done, seconds = secs, "insert finished");
    Ok(done)
}

/// Creates the spec's index unless an identical one exists; returns whether it was reused.
async fn ensure_index(
    client: &MilvusClient,
    spec: &StressTestSpec,
    progress: &mut ProgressLine,
) -> Result<bool, PrepareError> {
    let name = &spec.collection.name;
    let field = &spec.collection.vector_field;
    let want = index_def(spec);
    if let Some(have) = client.describe_index(name, field).await? {
        let same_type = have.index_type.eq_ignore_ascii_case(&want.index_type);
        let same_metric = have.metric_type.is_empty() || have.metric_type == want.metric_type;
        let same_params = want
            .params
            .iter()
            .all(|(k, v)| have.params.get(k).is_some_and(|h| h == v));
        if same_type && same_metric && same_params {
            return Ok(true);
        }
        progress.finish(&format!(
            "the existing {} index differs from the spec's {} {:?}: dropping and rebuilding it",
            have.index_type, want.index_type, want.params
        ));
        client.release_collection(name).await?;
        client.drop_index(name, field).await?;
    }
    client.create_index(name, field, &want).await?;
    Ok(false)
}

async fn wait_index(
    client: &MilvusClient,
    spec: &StressTestSpec,
    progress: &mut ProgressLine,
) -> Result<(), PrepareError> {
    let name = &spec.collection.name;
    let limit = Duration::from_secs(6 * 3600);
    let started = Instant::now();
    loop {
        let Some(p) = client
            .index_progress(name, &spec.collection.vector_field)
            .await?
        else {
            return Err(PrepareError::IndexFailed {
                collection: name.clone(),
                index_type: spec.index.index_type.clone(),
                reason: "the index disappeared while it was being built".to_string(),
            });
        };
        if p.failed() {
            return Err(PrepareError::IndexFailed {
                collection: name.clone(),
                index_type: spec.index.index_type.clone(),
                reason: p.fail_reason.clone(),
            });
        }
        if p.finished() {
            progress.finish(&format!(
                "index {}: {} rows indexed in {}",
                spec.index.index_type,
                p.indexed_rows,
                human_seconds(started.elapsed().as_secs_f64())
            ));
            return Ok(());
        }
        progress.update(&format!(
            "index {}: {}/{} rows ({:.0}%), {} elapsed",
            spec.index.index_type,
            p.indexed_rows,
            p.total_rows,
            100.0 * p.indexed_rows as f64 / (p.total_rows.max(1)) as f64,
            human_seconds(started.elapsed().as_secs_f64())
        ));
        if started.elapsed() > limit {
            return Err(PrepareError::Timeout("index build", limit));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn load(
    client: &MilvusClient,
    name: &str,
    progress: &mut ProgressLine,
) -> Result<LoadState, PrepareError> {
    let limit = Duration::from_secs(3600);
    let started = Instant::now();
    if client.load_state(name).await? == LoadState::Loaded {
        return Ok(LoadState::Loaded);
    }
    client.load_collection(name, 1).await?;
    loop {
        let pct = client.loading_progress(name).await?;
        if pct >= 100 {
            let state = client.load_state(name).await?;
            if state == LoadState::Loaded {
                progress.finish(&format!(
                    "load: loaded in {}",
                    human_seconds(started.elapsed().as_secs_f64())
                ));
                return Ok(state);
            }
        }
        progress.update(&format!("load: {pct}%"));
        if started.elapsed() > limit {
            return Err(PrepareError::Timeout("load", limit));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Computes exact ground truth for the spec's sample queries (all cores by default).
pub async fn compute_ground_truth(
    spec: &StressTestSpec,
    threads: usize,
    show_progress: bool,
) -> Result<GroundTruth, PrepareError> {
    let vectors = vector_generator(spec);
    let rows = spec.data.rows;
    let nq = spec.recall.sample_queries as usize;
    let top_k = spec.recall.top_k as usize;
    let metric = metric_of(spec.collection.metric);
    tokio::task::spawn_blocking(move || {
        let queries = vectors.queries(nq);
        let started = Instant::now();
        let last = std::sync::Mutex::new(Instant::now());
        let report = |done: u64| {
            if !show_progress {
                return;
            }
            if let Ok(mut last) = last.lock()
                && last.elapsed() >= Duration::from_secs(2)
            {
                *last = Instant::now();
                eprintln!(
                    "ground truth: {done}/{rows} rows scanned, {} elapsed",
                    human_seconds(started.elapsed().as_secs_f64())
                );
            }
        };
        crate::data::ground_truth(&vectors, rows, &queries, top_k, metric, threads, &report)
    })
    .await
    .map_err(|e| PrepareError::Internal(format!("ground truth failed: {e}")))
}

/// Writes a value as pretty JSON, creating the parent directory.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), PrepareError> {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    };
    write().map_err(|source| PrepareError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StressTestSpec {
        crate::spec::parse_manifest(
            r#"
apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {name: t}
spec:
  target: {address: "127.0.0.1:19530"}
  collection: {name: c, dimension: 4}
  data: {rows: 10, batchSize: 4, scalars: [{name: category, values: [A, BB]}, {name: year, range: {min: 1, max: 3}}]}
"#,
            "t.yaml",
        )
        .unwrap()
        .spec
    }

    #[test]
    fn batches_cover_every_row_once_and_respect_the_byte_limit() {
        assert_eq!(
            plan_batches(0..10, 4, 100, 1_000_000),
            vec![0..4, 4..8, 8..10]
        );
        assert_eq!(
            plan_batches(3..10, 100, 100, 250),
            vec![3..5, 5..7, 7..9, 9..10]
        );
        assert_eq!(
            plan_batches(5..5, 4, 100, 1000),
            Vec::<std::ops::Range<u64>>::new()
        );
    }

    #[test]
    fn the_schema_follows_the_spec_with_varchar_sized_to_the_longest_value() {
        let s = collection_schema(&spec());
        let types: Vec<_> = s
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.field_type.clone()))
            .collect();
        assert_eq!(
            types,
            vec![
                ("id", FieldType::Int64),
                ("embedding", FieldType::FloatVector { dim: 4 }),
                ("category", FieldType::VarChar { max_length: 2 }),
                ("year", FieldType::Int64),
            ]
        );
        assert!(s.fields[0].primary_key && !s.fields[0].auto_id);
        assert_eq!(
            s.description,
            "stampede data: seed=42 vectors=normal normalize=true"
        );
    }

    #[test]
    fn schema_differences_name_each_field_that_differs() {
        let want = collection_schema(&spec());
        let mut have = want.fields.clone();
        have[1].field_type = FieldType::FloatVector { dim: 8 };
        have.remove(3);
        have.push(FieldDef {
            name: "extra".into(),
            field_type: FieldType::Int64,
            primary_key: false,
            auto_id: false,
        });
        assert_eq!(
            schema_differences(&want, &have),
            vec![
                format!(
                    "field `embedding` is {} but the spec needs {}",
                    FieldType::FloatVector { dim: 8 },
                    FieldType::FloatVector { dim: 4 }
                ),
                format!("field `year` ({}) is missing", FieldType::Int64),
                format!("field `extra` ({}) is not in the spec", FieldType::Int64),
            ]
        );
    }

    #[test]
    fn columns_hold_the_generated_rows_for_the_given_ids() {
        let s = spec();
        let v = vector_generator(&s);
        let sc = scalar_generators(&s);
        let cols = build_columns(&s, &v, &sc, &[7, 2]);
        assert_eq!(cols.len(), 4);
        match &cols[0] {
            Column::Int64 { data, .. } => assert_eq!(data, &vec![7, 2]),
            other => panic!("unexpected {other:?}"),
        }
        match &cols[1] {
            Column::FloatVector { data, dim, .. } => {
                assert_eq!(*dim, 4);
                assert_eq!(&data[..4], v.rows(7, 1).as_slice());
                assert_eq!(&data[4..], v.rows(2, 1).as_slice());
            }
            other => panic!("unexpected {other:?}"),
        }
        match &cols[2] {
            Column::VarChar { data, .. } => {
                assert_eq!(
                    data,
                    &vec![
                        sc[0].string_value(7).to_string(),
                        sc[0].string_value(2).to_string()
                    ]
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn index_params_are_sent_as_plain_strings() {
        let mut s = spec();
        s.index.params.insert("M".into(), serde_json::json!(16));
        s.index
            .params
            .insert("efConstruction".into(), serde_json::json!("200"));
        let d = index_def(&s);
        assert_eq!(d.params["M"], "16");
        assert_eq!(d.params["efConstruction"], "200");
        assert_eq!(d.metric_type, "L2");
    }

    #[test]
    fn seconds_are_shown_compactly() {
        assert_eq!(human_seconds(4.24), "4.2s");
        assert_eq!(human_seconds(83.0), "1m23s");
        assert_eq!(human_seconds(f64::INFINITY), "?");
    }
}
