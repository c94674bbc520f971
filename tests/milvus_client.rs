//! The Milvus client against a real Milvus (2.3.5 from `scripts/milvus.sh start`, at
//! `STAMPEDE_MILVUS_ADDR`, default 127.0.0.1:19530). Every test works on its own collection,
//! named `t_client_<test>_<pid>`, and drops it at the end, pass or fail.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use stampede::milvus::{
    CollectionSchemaDef, Column, ConnectOptions, ConsistencyLevel, Credentials, FieldDef,
    FieldType, IndexDef, IndexState, LoadState, MilvusClient, MilvusError, SearchTemplate,
    TlsOptions,
};

const DIM: usize = 8;
const ROWS: usize = 500;

fn address() -> String {
    std::env::var("STAMPEDE_MILVUS_ADDR").unwrap_or_else(|_| "127.0.0.1:19530".to_string())
}

async fn connect() -> MilvusClient {
    MilvusClient::connect(ConnectOptions::new(address()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `body` on a fresh collection name and drops the collection afterwards, even if the
/// body panics.
async fn with_collection<F, Fut>(test: &str, body: F)
where
    F: FnOnce(MilvusClient, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let client = connect().await;
    let name = format!("t_client_{test}_{}", std::process::id());
    if client.has_collection(&name).await.unwrap() {
        client.drop_collection(&name).await.unwrap();
    }
    let outcome = AssertUnwindSafe(body(client.clone(), name.clone()))
        .catch_unwind()
        .await;
    let dropped = client.drop_collection(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.unwrap();
    assert!(!client.has_collection(&name).await.unwrap());
}

fn schema(name: &str, dim: u32) -> CollectionSchemaDef {
    CollectionSchemaDef {
        name: name.to_string(),
        description: "stampede client test".to_string(),
        fields: vec![
            FieldDef {
                name: "id".into(),
                field_type: FieldType::Int64,
                primary_key: true,
                auto_id: false,
            },
            FieldDef {
                name: "embedding".into(),
                field_type: FieldType::FloatVector { dim },
                primary_key: false,
                auto_id: false,
            },
            FieldDef {
                name: "category".into(),
                field_type: FieldType::VarChar { max_length: 10 },
                primary_key: false,
                auto_id: false,
            },
        ],
    }
}

/// Row `i`'s vector: distinct for every row, far from its neighbours.
fn vector_of(i: usize) -> Vec<f32> {
    (0..DIM)
        .map(|d| ((i * 31 + d * 17) % 97) as f32 / 97.0 + (i as f32) * 0.01 * (d % 2) as f32)
        .collect()
}

fn category_of(i: usize) -> &'static str {
    ["A", "B", "C", "D"][i % 4]
}

fn rows(range: std::ops::Range<usize>) -> Vec<Column> {
    vec![
        Column::Int64 {
            name: "id".into(),
            data: range.clone().map(|i| i as i64).collect(),
        },
        Column::FloatVector {
            name: "embedding".into(),
            dim: DIM as u32,
            data: range.clone().flat_map(vector_of).collect(),
        },
        Column::VarChar {
            name: "category".into(),
            data: range.map(|i| category_of(i).to_string()).collect(),
        },
    ]
}

fn hnsw() -> IndexDef {
    IndexDef {
        index_type: "HNSW".into(),
        metric_type: "L2".into(),
        params: BTreeMap::from([
            ("M".to_string(), "8".to_string()),
            ("efConstruction".to_string(), "64".to_string()),
        ]),
        index_name: "embedding_idx".into(),
    }
}

async fn wait_for_index(client: &MilvusClient, name: &str) {
    let started = Instant::now();
    loop {
        let progress = client
            .index_progress(name, "embedding")
            .await
            .unwrap()
            .unwrap();
        assert!(!progress.failed(), "index failed: {}", progress.fail_reason);
        if progress.finished() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "index not built: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn load(client: &MilvusClient, name: &str) {
    client.load_collection(name, 1).await.unwrap();
    let started = Instant::now();
    while client.loading_progress(name).await.unwrap() < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "collection not loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.load_state(name).await.unwrap(), LoadState::Loaded);
}

fn ef(ef: u64) -> serde_json::Map<String, serde_json::Value> {
    let mut params = serde_json::Map::new();
    params.insert("ef".into(), serde_json::json!(ef));
    params
}

#[tokio::test]
async fn round_trip_create_insert_flush_index_load_search_finds_the_given_row() {
    with_collection("roundtrip", |client, name| async move {
        assert!(
            client.server_version().starts_with("v2."),
            "{}",
            client.server_version()
        );
        assert!(client.check_health().await.unwrap());
        assert_ne!(client.identifier(), 0, "Connect hands out an identifier");

        client
            .create_collection(&schema(&name, DIM as u32), 1, ConsistencyLevel::Bounded)
            .await
            .unwrap();
        assert!(client.has_collection(&name).await.unwrap());
        let info = client.describe_collection(&name).await.unwrap();
        assert_eq!(info.name, name);
        assert_eq!(info.description, "stampede client test");
        assert_eq!(info.shards, 1);
        assert_eq!(info.consistency, Some(ConsistencyLevel::Bounded));
        assert!(!info.auto_id);
        assert_eq!(info.fields, schema(&name, DIM as u32).fields);
        assert_eq!(client.load_state(&name).await.unwrap(), LoadState::NotLoad);
        assert_eq!(
            client.describe_index(&name, "embedding").await.unwrap(),
            None
        );
        assert_eq!(
            client.index_progress(&name, "embedding").await.unwrap(),
            None
        );

        assert_eq!(client.insert(&name, &rows(0..300), 300).await.unwrap(), 300);
        assert_eq!(
            client
                .insert(&name, &rows(300..ROWS), ROWS - 300)
                .await
                .unwrap(),
            200
        );
        client.flush(&name).await.unwrap();
        // Not loaded yet: the count comes from the collection statistics.
        assert_eq!(client.row_count(&name).await.unwrap(), ROWS as u64);

        client
            .create_index(&name, "embedding", &hnsw())
            .await
            .unwrap();
        wait_for_index(&client, &name).await;
        let progress = client
            .index_progress(&name, "embedding")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(progress.state, IndexState::Finished);
        assert_eq!(progress.index_name, "embedding_idx");
        assert_eq!(
            (progress.indexed_rows, progress.total_rows),
            (ROWS as u64, ROWS as u64)
        );
        let index = client
            .describe_index(&name, "embedding")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(index.index_name, "embedding_idx");
        assert_eq!(index.field_name, "embedding");
        assert_eq!(index.index_type, "HNSW");
        assert_eq!(index.metric_type, "L2");
        assert_eq!(index.params, hnsw().params);

        load(&client, &name).await;
        // Loaded: an exact count(*) query.
        assert_eq!(client.row_count(&name).await.unwrap(), ROWS as u64);

        let template = SearchTemplate::new(
            &name,
            "embedding",
            "L2",
            5,
            &ef(64),
            vec!["category".into()],
            ConsistencyLevel::Bounded,
        );
        let hits = client
            .search(&template, &vector_of(123), DIM, None)
            .await
            .unwrap();
        assert_eq!(hits.nq, 1);
        assert_eq!(hits.ids[0].len(), 5);
        assert_eq!(hits.ids[0][0], 123);
        assert!(
            hits.scores[0][0].abs() < 1e-6,
            "distance {}",
            hits.scores[0][0]
        );
        assert!(
            hits.scores[0].windows(2).all(|w| w[0] <= w[1]),
            "{:?}",
            hits.scores[0]
        );

        let filtered = client
            .search(&template, &vector_of(123), DIM, Some("category == \"B\""))
            .await
            .unwrap();
        assert_eq!(filtered.ids[0].len(), 5);
        for id in &filtered.ids[0] {
            assert_eq!(category_of(*id as usize), "B", "id {id}");
        }
        // Row 123 is category D, so it must not be among them.
        assert!(!filtered.ids[0].contains(&123));

        let queries = [7usize, 42, 123, 256, 499];
        let batch: Vec<f32> = queries.iter().flat_map(|&i| vector_of(i)).collect();
        let hits = client.search(&template, &batch, DIM, None).await.unwrap();
        assert_eq!(hits.nq, 5);
        assert_eq!(hits.ids.len(), 5);
        assert_eq!(hits.scores.len(), 5);
        let best: Vec<i64> = hits.ids.iter().map(|ids| ids[0]).collect();
        assert_eq!(best, queries.iter().map(|&i| i as i64).collect::<Vec<_>>());

        for level in [
            ConsistencyLevel::Strong,
            ConsistencyLevel::Session,
            ConsistencyLevel::Eventually,
        ] {
            let t = SearchTemplate::new(&name, "embedding", "L2", 3, &ef(64), vec![], level);
            let hits = client.search(&t, &vector_of(42), DIM, None).await.unwrap();
            assert_eq!(hits.ids[0][0], 42, "{level}");
        }

        let rows = client
            .query(
                &name,
                "id in [3, 4, 123]",
                &["id".into(), "category".into(), "embedding".into()],
                None,
                ConsistencyLevel::Strong,
            )
            .await
            .unwrap();
        assert_eq!(rows.rows, 3);
        let Some(Column::Int64 { data: ids, .. }) = rows.column("id") else {
            panic!("no id column: {rows:?}");
        };
        let Some(Column::VarChar {
            data: categories, ..
        }) = rows.column("category")
        else {
            panic!("no category column: {rows:?}");
        };
        let Some(Column::FloatVector {
            dim, data: vectors, ..
        }) = rows.column("embedding")
        else {
            panic!("no embedding column: {rows:?}");
        };
        assert_eq!(*dim, DIM as u32);
        let mut got: Vec<(i64, String, Vec<f32>)> = (0..3)
            .map(|r| {
                (
                    ids[r],
                    categories[r].clone(),
                    vectors[r * DIM..(r + 1) * DIM].to_vec(),
                )
            })
            .collect();
        got.sort_by_key(|row| row.0);
        let want: Vec<(i64, String, Vec<f32>)> = [3usize, 4, 123]
            .iter()
            .map(|&i| (i as i64, category_of(i).to_string(), vector_of(i)))
            .collect();
        assert_eq!(got, want);

        let limited = client
            .query(
                &name,
                "",
                &["id".into()],
                Some(7),
                ConsistencyLevel::Eventually,
            )
            .await
            .unwrap();
        assert_eq!(limited.rows, 7);

        client.release_collection(&name).await.unwrap();
        assert_eq!(client.load_state(&name).await.unwrap(), LoadState::NotLoad);
        client.drop_index(&name, "embedding").await.unwrap();
        assert_eq!(
            client.describe_index(&name, "embedding").await.unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn session_consistency_sees_the_rows_this_client_just_inserted() {
    with_collection("session", |client, name| async move {
        client
            .create_collection(&schema(&name, DIM as u32), 1, ConsistencyLevel::Bounded)
            .await
            .unwrap();
        client.insert(&name, &rows(0..50), 50).await.unwrap();
        client.flush(&name).await.unwrap();
        client
            .create_index(&name, "embedding", &hnsw())
            .await
            .unwrap();
        wait_for_index(&client, &name).await;
        load(&client, &name).await;
        // Growing rows, not flushed: visible at once only if the search waits for this
        // client's insert timestamp.
        client.insert(&name, &rows(50..60), 10).await.unwrap();
        let t = SearchTemplate::new(
            &name,
            "embedding",
            "L2",
            1,
            &ef(32),
            vec![],
            ConsistencyLevel::Session,
        );
        let hits = client.search(&t, &vector_of(57), DIM, None).await.unwrap();
        assert_eq!(hits.ids, vec![vec![57]]);
        assert_eq!(client.row_count(&name).await.unwrap(), 60);
    })
    .await;
}

#[tokio::test]
async fn connecting_to_an_address_nobody_listens_on_fails_fast_with_a_connect_error() {
    let started = Instant::now();
    let err = MilvusClient::connect(ConnectOptions::new("127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let MilvusError::Connect { address, reason } = &err else {
        panic!("expected a connect error, got {err:?}");
    };
    assert_eq!(address, "127.0.0.1:1");
    assert_eq!(
        reason,
        "connection refused (is it running? see README \"Local Milvus\")"
    );
    assert_eq!(
        err.to_string(),
        "cannot reach Milvus at 127.0.0.1:1: connection refused (is it running? see README \"Local Milvus\")"
    );
    assert_eq!(err.kind(), "connect");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn tls_against_a_plaintext_server_fails_with_a_connect_error() {
    let opts = ConnectOptions {
        tls: TlsOptions {
            enabled: true,
            ca_pem: None,
            server_name: Some("localhost".into()),
        },
        connect_timeout: Duration::from_secs(3),
        ..ConnectOptions::new(address())
    };
    let err = MilvusClient::connect(opts).await.unwrap_err();
    let MilvusError::Connect { reason, .. } = &err else {
        panic!("expected a connect error, got {err:?}");
    };
    assert!(reason.contains("TLS is on"), "{reason}");
}

#[tokio::test]
async fn describing_a_missing_collection_returns_collection_not_found() {
    let client = connect().await;
    let name = format!("t_client_missing_{}", std::process::id());
    assert!(!client.has_collection(&name).await.unwrap());
    let err = client.describe_collection(&name).await.unwrap_err();
    assert!(
        matches!(&err, MilvusError::CollectionNotFound { name: n } if *n == name),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "collection `{name}` does not exist in Milvus (check the collection name and the database)"
        )
    );
    let err = client.insert(&name, &rows(0..1), 1).await.unwrap_err();
    assert!(
        matches!(err, MilvusError::CollectionNotFound { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn inserting_vectors_of_the_wrong_dimension_returns_schema_mismatch() {
    with_collection("wrongdim", |client, name| async move {
        client
            .create_collection(&schema(&name, DIM as u32), 1, ConsistencyLevel::Bounded)
            .await
            .unwrap();
        let columns = vec![
            Column::Int64 {
                name: "id".into(),
                data: vec![1, 2],
            },
            Column::FloatVector {
                name: "embedding".into(),
                dim: 4,
                data: vec![0.5; 8],
            },
            Column::VarChar {
                name: "category".into(),
                data: vec!["A".into(), "B".into()],
            },
        ];
        // Milvus 2.3.5 itself would answer "the num_rows (1) of field (embedding) is not equal
        // to passed num_rows (2)" (code 1100); the client checks the dimension first.
        let err = client.insert(&name, &columns, 2).await.unwrap_err();
        let MilvusError::SchemaMismatch { reason } = &err else {
            panic!("expected a schema mismatch, got {err:?}");
        };
        assert_eq!(
            reason,
            &format!(
                "collection `{name}` stores `embedding` vectors of dimension 8, but the inserted vectors have dimension 4"
            )
        );
        assert_eq!(err.kind(), "schema_mismatch");

        // A column whose length disagrees with the row count never reaches the server.
        let err = client.insert(&name, &rows(0..3), 4).await.unwrap_err();
        let MilvusError::SchemaMismatch { reason } = &err else {
            panic!("expected a schema mismatch, got {err:?}");
        };
        assert_eq!(reason, "column `id` holds 3 values but the batch has 4 rows");

        // A missing field is found by the server.
        let mut missing = rows(0..2);
        missing.pop();
        let err = client.insert(&name, &missing, 2).await.unwrap_err();
        let MilvusError::SchemaMismatch { reason } = &err else {
            panic!("expected a schema mismatch, got {err:?}");
        };
        if client.server_version().starts_with("v2.3.5") {
            assert_eq!(
                reason,
                "varchar field 'category' is illegal, array type mismatch: invalid parameter[expected=need string array][actual=got nil]"
            );
        } else {
            assert!(reason.contains("category"), "{reason}");
        }
        assert_eq!(client.row_count(&name).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn an_index_type_the_server_rejects_returns_a_server_error_with_milvus_message() {
    with_collection("badindex", |client, name| async move {
        client
            .create_collection(&schema(&name, DIM as u32), 1, ConsistencyLevel::Bounded)
            .await
            .unwrap();
        let index = IndexDef {
            index_type: "NOT_AN_INDEX".into(),
            ..hnsw()
        };
        let err = client
            .create_index(&name, "embedding", &index)
            .await
            .unwrap_err();
        let MilvusError::Server {
            method,
            code,
            error_code,
            reason,
            ..
        } = &err
        else {
            panic!("expected a server error, got {err:?}");
        };
        assert_eq!(*method, "CreateIndex");
        if client.server_version().starts_with("v2.3.5") {
            // Milvus 2.3.5's own words and codes.
            assert_eq!(reason, "invalid index type: NOT_AN_INDEX");
            assert_eq!((*code, *error_code), (65535, 1));
            assert_eq!(err.kind(), "milvus:65535");
            assert_eq!(
                err.to_string(),
                "Milvus rejected CreateIndex: invalid index type: NOT_AN_INDEX (code 65535, error_code 1)"
            );
        } else {
            assert!(reason.contains("NOT_AN_INDEX"), "{reason}");
        }
        assert!(!err.is_transient());
        assert_eq!(
            client.describe_index(&name, "embedding").await.unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn a_server_without_auth_ignores_credentials() {
    for credentials in [
        Credentials::UserPassword {
            username: "root".into(),
            password: "definitely-wrong".into(),
        },
        Credentials::Token("not-a-token".into()),
    ] {
        let opts = ConnectOptions {
            credentials: Some(credentials),
            ..ConnectOptions::new(address())
        };
        let client = MilvusClient::connect(opts).await.unwrap();
        assert!(client.check_health().await.unwrap());
        assert!(!client.has_collection("t_client_auth_absent").await.unwrap());
    }
}
