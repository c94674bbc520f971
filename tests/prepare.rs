//! `stampede::prepare::prepare` against the real Milvus (2.3.5 from `scripts/milvus.sh start`,
//! at `STAMPEDE_MILVUS_ADDR`, default 127.0.0.1:19530). Every test works on its own collection,
//! named `t_prep_<test>`, drops it first (a leftover of an earlier run) and drops it again at the
//! end, pass or fail.

use std::collections::{BTreeMap, BTreeSet};

use stampede::data::{GroundTruth, Metric};
use stampede::milvus::{
    Column, ConnectOptions, ConsistencyLevel, MilvusClient, SearchHits, SearchTemplate,
};
use stampede::prepare::{
    CollectionAction, MAX_INSERT_REQUEST_BYTES, PrepareError, PrepareOptions, PrepareSummary,
    build_columns, bytes_per_row, collection_schema, plan_batches, prepare, scalar_generators,
    vector_generator,
};
use stampede::spec::{StressTestSpec, parse_manifest};

fn address() -> String {
    std::env::var("STAMPEDE_MILVUS_ADDR").unwrap_or_else(|_| "127.0.0.1:19530".to_string())
}

async fn connect() -> MilvusClient {
    MilvusClient::connect(ConnectOptions::new(address()))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test Milvus at {}: {e}", address()))
}

/// Drops the collection when the test ends, pass or fail. Drop runs inside the test's runtime,
/// so the drop call gets its own thread and runtime.
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
                let client = MilvusClient::connect(ConnectOptions::new(address())).await?;
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

/// A fresh collection name for a test: any leftover is dropped now, and the collection is
/// dropped again when the returned guard goes out of scope.
async fn fresh(client: &MilvusClient, test: &str) -> (String, DropOnExit) {
    let name = format!("t_prep_{test}");
    if client.has_collection(&name).await.unwrap() {
        client.drop_collection(&name).await.unwrap();
    }
    (name.clone(), DropOnExit(name))
}

/// A manifest around the given `collection`, `data`, `index` and `recall` flow mappings.
fn spec(collection: &str, data: &str, index: &str, recall: &str) -> StressTestSpec {
    let text = format!(
        r#"
apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {{name: prep}}
spec:
  target: {{address: "{address}"}}
  collection: {collection}
  data: {data}
  index: {index}
  recall: {recall}
  workload:
    operations:
      - {{name: search, weight: 1, search: {{topK: 10}}}}
  stages:
    - {{duration: 1s, users: 1, spawnRate: 1}}
"#,
        address = address()
    );
    parse_manifest(&text, "test.yaml")
        .unwrap_or_else(|e| panic!("the test manifest is invalid: {e}\n{text}"))
        .spec
}

fn options() -> PrepareOptions {
    PrepareOptions {
        ground_truth_path: None,
        threads: 2,
        progress: false,
    }
}

async fn run(client: &MilvusClient, spec: &StressTestSpec) -> PrepareSummary {
    prepare(client, spec, &options())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}"))
}

async fn search(
    client: &MilvusClient,
    spec: &StressTestSpec,
    vectors: &[f32],
    top_k: usize,
    params: serde_json::Value,
    filter: Option<&str>,
) -> SearchHits {
    let params = params.as_object().cloned().unwrap_or_default();
    let template = SearchTemplate::new(
        spec.collection.name.clone(),
        spec.collection.vector_field.clone(),
        spec.collection.metric.as_str(),
        top_k,
        &params,
        Vec::new(),
        ConsistencyLevel::Strong,
    );
    client
        .search(
            &template,
            vectors,
            spec.collection.dimension as usize,
            filter,
        )
        .await
        .unwrap_or_else(|e| panic!("search failed: {e}"))
}

async fn count(client: &MilvusClient, name: &str) -> i64 {
    let rows = client
        .query(
            name,
            "",
            &["count(*)".to_string()],
            None,
            ConsistencyLevel::Strong,
        )
        .await
        .unwrap();
    match rows.columns.first() {
        Some(Column::Int64 { data, .. }) => data[0],
        other => panic!("count(*) answered {other:?}"),
    }
}

fn id_column(rows: &stampede::milvus::QueryRows) -> Vec<i64> {
    match rows.column("id") {
        Some(Column::Int64 { data, .. }) => data.clone(),
        other => panic!("the query returned no id column: {other:?}"),
    }
}

const HNSW: &str = "{type: HNSW, params: {M: 8, efConstruction: 64}}";
const FLAT: &str = "{type: FLAT}";
const NO_RECALL: &str = "{sampleQueries: 0}";

#[tokio::test]
async fn prepare_creates_inserts_indexes_and_loads_and_a_search_finds_a_generated_row() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "creates").await;
    let s = spec(
        &format!("{{name: {name}, dimension: 16}}"),
        "{rows: 2000, batchSize: 500, scalars: [{name: category, values: [A, B, C]}]}",
        HNSW,
        NO_RECALL,
    );

    let summary = run(&client, &s).await;
    assert_eq!(summary.collection, name);
    assert_eq!(summary.action, CollectionAction::Created);
    assert_eq!(summary.rows, 2000);
    assert_eq!(summary.rows_existing, 0);
    assert_eq!(summary.rows_inserted, 2000);
    assert_eq!(summary.index_type, "HNSW");
    assert_eq!(
        summary.index_params,
        BTreeMap::from([
            ("M".to_string(), "8".to_string()),
            ("efConstruction".to_string(), "64".to_string())
        ])
    );
    assert!(!summary.index_reused);
    assert_eq!(summary.load_state, "Loaded");
    assert_eq!(summary.ground_truth, None);
    let phases: Vec<&str> = summary.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(phases, ["collection", "insert", "flush", "index", "load"]);
    assert_eq!(count(&client, &name).await, 2000);

    // Row 1234, regenerated from the spec, is its own nearest neighbour (distance 0).
    let row = vector_generator(&s).rows(1234, 1);
    let hits = search(&client, &s, &row, 5, serde_json::json!({"ef": 64}), None).await;
    assert_eq!(hits.nq, 1);
    assert_eq!(hits.ids[0].len(), 5);
    assert_eq!(hits.ids[0][0], 1234);
    assert!(hits.scores[0][0].abs() < 1e-4, "{:?}", hits.scores[0]);

    // A filtered search returns only rows whose generated category matches.
    let categories = &scalar_generators(&s)[0];
    let category = categories.string_value(1234).to_string();
    let filter = format!("category == \"{category}\"");
    let hits = search(
        &client,
        &s,
        &row,
        50,
        serde_json::json!({"ef": 64}),
        Some(&filter),
    )
    .await;
    assert_eq!(hits.ids[0].len(), 50);
    assert_eq!(hits.ids[0][0], 1234);
    let wrong: Vec<(i64, &str)> = hits.ids[0]
        .iter()
        .map(|&id| (id, categories.string_value(id as u64)))
        .filter(|(_, c)| *c != category)
        .collect();
    assert_eq!(wrong, Vec::<(i64, &str)>::new(), "filter `{filter}`");
}

#[tokio::test]
async fn a_second_prepare_reuses_the_data_and_the_index() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "reuses").await;
    let s = spec(
        &format!("{{name: {name}, dimension: 16}}"),
        "{rows: 2000, batchSize: 1000}",
        HNSW,
        NO_RECALL,
    );
    let first = run(&client, &s).await;
    assert_eq!(first.action, CollectionAction::Created);
    let id = client
        .describe_collection(&name)
        .await
        .unwrap()
        .collection_id;

    let second = run(&client, &s).await;
    assert_eq!(second.action, CollectionAction::Reused);
    assert_eq!(second.rows, 2000);
    assert_eq!(second.rows_inserted, 0);
    assert_eq!(second.rows_existing, 2000);
    assert!(second.index_reused);
    assert_eq!(second.load_state, "Loaded");
    assert_eq!(
        client
            .describe_collection(&name)
            .await
            .unwrap()
            .collection_id,
        id
    );
    assert_eq!(count(&client, &name).await, 2000);
}

#[tokio::test]
async fn reuse_detects_a_wrong_dimension_and_names_the_field() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "wrong_dim").await;
    let small = spec(
        &format!("{{name: {name}, dimension: 8}}"),
        "{rows: 100}",
        FLAT,
        NO_RECALL,
    );
    run(&client, &small).await;

    let big = spec(
        &format!("{{name: {name}, dimension: 16, onExisting: Reuse}}"),
        "{rows: 100}",
        FLAT,
        NO_RECALL,
    );
    let err = prepare(&client, &big, &options()).await.unwrap_err();
    let text = err.to_string();
    match err {
        PrepareError::SchemaDiffers {
            collection,
            differences,
        } => {
            assert_eq!(collection, name);
            assert_eq!(
                differences,
                vec![
                    "field `embedding` is FLOAT_VECTOR(dim=8) but the spec needs FLOAT_VECTOR(dim=16)"
                        .to_string()
                ]
            );
        }
        other => panic!("expected SchemaDiffers, got {other:?}"),
    }
    assert!(
        text.contains("use spec.collection.onExisting: Recreate"),
        "{text}"
    );
    // The collection was left alone.
    assert_eq!(count(&client, &name).await, 100);
}

#[tokio::test]
async fn reuse_detects_data_generated_with_another_seed() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "other_seed").await;
    let collection = format!("{{name: {name}, dimension: 8}}");
    run(
        &client,
        &spec(&collection, "{rows: 100, seed: 42}", FLAT, NO_RECALL),
    )
    .await;

    let err = prepare(
        &client,
        &spec(&collection, "{rows: 100, seed: 7}", FLAT, NO_RECALL),
        &options(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    match err {
        PrepareError::SchemaDiffers {
            collection,
            differences,
        } => {
            assert_eq!(collection, name);
            assert_eq!(
                differences,
                vec![
                    "its rows were generated as `stampede data: seed=42 vectors=normal normalize=true` but the spec generates `stampede data: seed=7 vectors=normal normalize=true`"
                        .to_string()
                ]
            );
        }
        other => panic!("expected SchemaDiffers, got {other:?}"),
    }
    assert!(text.contains("Recreate"), "{text}");
}

#[tokio::test]
async fn recreate_really_recreates() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "recreate").await;
    let first = run(
        &client,
        &spec(
            &format!("{{name: {name}, dimension: 8}}"),
            "{rows: 300}",
            FLAT,
            NO_RECALL,
        ),
    )
    .await;
    assert_eq!(first.rows, 300);
    let old_id = client
        .describe_collection(&name)
        .await
        .unwrap()
        .collection_id;

    let second = run(
        &client,
        &spec(
            &format!("{{name: {name}, dimension: 8, onExisting: Recreate}}"),
            "{rows: 200}",
            FLAT,
            NO_RECALL,
        ),
    )
    .await;
    assert_eq!(second.action, CollectionAction::Recreated);
    assert_eq!(second.rows, 200);
    assert_eq!(second.rows_existing, 0);
    assert_eq!(second.rows_inserted, 200);
    assert!(!second.index_reused);
    let new_id = client
        .describe_collection(&name)
        .await
        .unwrap()
        .collection_id;
    assert_ne!(new_id, old_id);
    assert_eq!(count(&client, &name).await, 200);
}

#[tokio::test]
async fn fail_refuses_an_existing_collection() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "fail").await;
    let first = run(
        &client,
        &spec(
            &format!("{{name: {name}, dimension: 8, onExisting: Fail}}"),
            "{rows: 50}",
            FLAT,
            NO_RECALL,
        ),
    )
    .await;
    assert_eq!(first.action, CollectionAction::Created);
    let id = client
        .describe_collection(&name)
        .await
        .unwrap()
        .collection_id;

    let err = prepare(
        &client,
        &spec(
            &format!("{{name: {name}, dimension: 8, onExisting: Fail}}"),
            "{rows: 80}",
            FLAT,
            NO_RECALL,
        ),
        &options(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, PrepareError::Exists(n) if *n == name),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "collection `{name}` already exists and spec.collection.onExisting is Fail; use Reuse to keep it or Recreate to start over"
        )
    );
    // Untouched: same collection, same rows.
    assert_eq!(
        client
            .describe_collection(&name)
            .await
            .unwrap()
            .collection_id,
        id
    );
    assert_eq!(count(&client, &name).await, 50);
}

#[tokio::test]
async fn resume_after_an_interrupted_insert_ends_with_exactly_the_rows_asked_for() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "resume").await;
    let s = spec(
        &format!("{{name: {name}, dimension: 8, onExisting: Reuse}}"),
        "{rows: 1000, batchSize: 256, scalars: [{name: category, values: [A, B, C]}]}",
        FLAT,
        NO_RECALL,
    );

    // What an interrupted prepare leaves: the collection, two ranges of rows, no flush.
    client
        .create_collection(&collection_schema(&s), 1, ConsistencyLevel::Bounded)
        .await
        .unwrap();
    let vectors = vector_generator(&s);
    let scalars = scalar_generators(&s);
    for range in [0u64..300, 700..800] {
        let ids: Vec<u64> = range.collect();
        let inserted = client
            .insert(
                &name,
                &build_columns(&s, &vectors, &scalars, &ids),
                ids.len(),
            )
            .await
            .unwrap();
        assert_eq!(inserted, ids.len() as u64);
    }

    let summary = run(&client, &s).await;
    assert_eq!(summary.action, CollectionAction::Reused);
    assert_eq!(summary.rows, 1000);
    assert_eq!(summary.rows_existing, 400);
    assert_eq!(summary.rows_inserted, 600);
    assert_eq!(summary.load_state, "Loaded");

    // Milvus does not deduplicate primary keys, so a row inserted twice would show here.
    assert_eq!(count(&client, &name).await, 1000);
    let rows = client
        .query(
            &name,
            "id >= 0",
            &["id".to_string(), "category".to_string()],
            Some(16_384),
            ConsistencyLevel::Strong,
        )
        .await
        .unwrap();
    let ids = id_column(&rows);
    assert_eq!(ids.len(), 1000);
    let distinct: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct, (0..1000).collect::<BTreeSet<i64>>());
    // The resumed rows are the generated ones.
    let Some(Column::VarChar { data: got, .. }) = rows.column("category") else {
        panic!("no category column: {rows:?}");
    };
    for (id, category) in ids.iter().zip(got) {
        assert_eq!(category, scalars[0].string_value(*id as u64), "row {id}");
    }
}

#[tokio::test]
async fn an_index_type_milvus_rejects_fails_with_milvus_message() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "bad_index").await;
    let s = spec(
        &format!("{{name: {name}, dimension: 8}}"),
        "{rows: 100}",
        "{type: NOT_AN_INDEX}",
        NO_RECALL,
    );
    let err = prepare(&client, &s, &options()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, PrepareError::Milvus(_)),
        "expected a Milvus error, got {err:?}"
    );
    assert!(text.contains("invalid index type"), "{text}");
    assert!(text.contains("NOT_AN_INDEX"), "{text}");
}

#[tokio::test]
async fn a_batch_above_the_message_limit_is_split_and_all_rows_arrive() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "big_batch").await;
    // 17,000 rows × 4,106 bytes = 69.8 MB in one batch: above the 60 MiB cap of prepare and
    // above the 64 MiB Milvus accepts (16,000 rows, 65.7 MB, would still fit under Milvus's
    // limit and so would not show that the split is needed).
    let s = spec(
        &format!("{{name: {name}, dimension: 1024}}"),
        "{rows: 17000, batchSize: 17000, insertConcurrency: 1}",
        FLAT,
        NO_RECALL,
    );
    assert_eq!(bytes_per_row(&s), 1024 * 4 + 10);
    assert_eq!(MAX_INSERT_REQUEST_BYTES / bytes_per_row(&s), 15_322);
    assert_eq!(
        plan_batches(
            0..17_000,
            17_000,
            bytes_per_row(&s),
            MAX_INSERT_REQUEST_BYTES
        ),
        vec![0..15_322, 15_322..17_000]
    );
    // The 16,000-row batch of the same rows is split in two as well.
    assert_eq!(
        plan_batches(
            0..16_000,
            16_000,
            bytes_per_row(&s),
            MAX_INSERT_REQUEST_BYTES
        ),
        vec![0..15_322, 15_322..16_000]
    );

    let summary = run(&client, &s).await;
    assert_eq!(summary.action, CollectionAction::Created);
    assert_eq!(summary.rows, 17_000);
    assert_eq!(summary.rows_existing, 0);
    assert_eq!(summary.rows_inserted, 17_000);
    assert_eq!(summary.load_state, "Loaded");
    assert_eq!(count(&client, &name).await, 17_000);

    // Sent as one request, the same rows are refused: the split is what made them arrive.
    let ids: Vec<u64> = (0..17_000).collect();
    let columns = build_columns(&s, &vector_generator(&s), &scalar_generators(&s), &ids);
    let err = client
        .insert(&name, &columns, ids.len())
        .await
        .expect_err("Milvus accepts at most 64 MiB per request");
    assert!(
        err.to_string().contains("larger than max"),
        "unexpected error: {err}"
    );
    assert_eq!(count(&client, &name).await, 17_000);
}

/// The `k` nearest rows of `query` by a naive sort over every generated row, ties to the
/// smaller id.
fn naive_top_k(rows: &[f32], dim: usize, query: &[f32], k: usize, metric: Metric) -> Vec<i64> {
    let mut scored: Vec<(f32, i64)> = rows
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, row)| (stampede::data::distance(metric, query, row), i as i64))
        .collect();
    scored.sort_by(|a, b| {
        let (ka, kb) = if metric.larger_is_closer() {
            (-a.0, -b.0)
        } else {
            (a.0, b.0)
        };
        ka.total_cmp(&kb).then(a.1.cmp(&b.1))
    });
    scored.into_iter().take(k).map(|(_, id)| id).collect()
}

#[tokio::test]
async fn ground_truth_file_matches_a_brute_force_over_the_generated_rows() {
    let client = connect().await;
    let (name, _guard) = fresh(&client, "ground_truth").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out").join("ground_truth.json");
    let s = spec(
        &format!("{{name: {name}, dimension: 16}}"),
        "{rows: 3000, batchSize: 1000}",
        FLAT,
        "{sampleQueries: 20, topK: 5}",
    );
    let summary = prepare(
        &client,
        &s,
        &PrepareOptions {
            ground_truth_path: Some(path.clone()),
            threads: 2,
            progress: false,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("prepare failed: {e}"));
    assert_eq!(summary.ground_truth, Some(path.display().to_string()));
    assert_eq!(
        summary.phases.last().map(|p| p.phase.as_str()),
        Some("groundTruth")
    );

    let truth: GroundTruth =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("ground_truth.json parses");
    assert_eq!(truth.metric, "L2");
    assert_eq!(truth.top_k, 5);
    assert_eq!(truth.rows, 3000);
    assert_eq!(truth.seed, 42);
    assert_eq!(truth.ids.len(), 20);
    assert_eq!(truth.distances.len(), 20);
    assert!(truth.ids.iter().all(|ids| ids.len() == 5));

    let generator = vector_generator(&s);
    let dim = 16;
    let rows = generator.rows(0, 3000);
    let queries = generator.queries(20);
    for q in [0usize, 9, 19] {
        let query = &queries[q * dim..(q + 1) * dim];
        let naive = naive_top_k(&rows, dim, query, 5, Metric::L2);
        assert_eq!(truth.ids[q], naive, "query {q}: file vs brute force");
        for (id, d) in truth.ids[q].iter().zip(&truth.distances[q]) {
            let row = &rows[*id as usize * dim..(*id as usize + 1) * dim];
            assert_eq!(
                *d,
                stampede::data::distance(Metric::L2, query, row),
                "query {q} row {id}"
            );
        }
        // FLAT is an exact index: Milvus finds the same neighbours.
        let hits = search(&client, &s, query, 5, serde_json::json!({}), None).await;
        assert_eq!(hits.ids[0], naive, "query {q}: Milvus FLAT vs brute force");
    }
}
