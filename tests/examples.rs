//! The manifests in examples/: every document fits the schema of the generated CRD of its kind
//! (or, for a Secret, its k8s-openapi type), every StressTest example is accepted by
//! `stampede run --dry-run`, and the examples say what their comments promise (the classic
//! capacity scenario, an open model, credentials and TLS through Secrets).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Secret;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use stampede::spec::{LoadModel, StressTest, parse_manifest};

mod support;
use support::schema::validate_object;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary from the crate root with logging settings that cannot change its output.
fn stampede(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(args)
        .current_dir(crate_dir())
        .env_remove("STAMPEDE_LOG")
        .env_remove("STAMPEDE_LOG_FORMAT")
        .env_remove("MILVUS_USERNAME")
        .env_remove("MILVUS_PASSWORD")
        .env_remove("MILVUS_TOKEN")
        .env_remove("MILVUS_CA_CERT")
        .output()
        .unwrap_or_else(|e| panic!("cannot run stampede {args:?}: {e}"))
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("examples"))
        .expect("read examples/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// The documents of a YAML file, as JSON, empty documents left out.
fn documents(file: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            serde_json::to_value(value).expect("YAML converts to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The first document of an example, parsed as Stampede parses a manifest.
fn stress_test(name: &str) -> StressTest {
    let file = crate_dir().join("examples").join(name);
    let first = documents(&file).remove(0);
    let text = serde_yaml_ng::to_string(&first).expect("JSON converts to YAML");
    parse_manifest(&text, name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The openAPIV3Schema of every CRD in crds/ (the generated ones), by kind.
fn crd_schemas() -> Vec<(String, Value)> {
    let mut schemas = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("crds"))
        .expect("read crds/")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    for file in files {
        for crd in documents(&file) {
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .expect("spec.names.kind");
            let versions = crd["spec"]["versions"].as_array().expect("spec.versions");
            assert_eq!(versions.len(), 1, "{}: one version", file.display());
            schemas.push((
                kind.to_string(),
                versions[0]["schema"]["openAPIV3Schema"].clone(),
            ));
        }
    }
    schemas
}

/// Parses a Secret strictly: an unknown field or a wrong type fails.
fn strict_secret(value: &Value) -> Secret {
    let mut unknown = Vec::new();
    let secret: Secret = serde_ignored::deserialize(value.clone(), |p| unknown.push(p.to_string()))
        .unwrap_or_else(|e| panic!("not a valid Secret: {e}"));
    assert_eq!(
        unknown,
        Vec::<String>::new(),
        "unknown fields of the Secret"
    );
    secret
}

#[test]
fn every_example_document_fits_the_generated_crd_schema_of_its_kind() {
    let schemas = crd_schemas();
    let mut checked = Vec::new();
    for file in example_files() {
        let name = file
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        for (i, doc) in documents(&file).iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or_default();
            if doc["apiVersion"] == "v1" && kind == "Secret" {
                strict_secret(doc);
                checked.push(format!("{name}#{i} Secret"));
                continue;
            }
            assert_eq!(
                doc["apiVersion"], "stampede.dev/v1alpha1",
                "{name} document {i}"
            );
            let (_, schema) = schemas.iter().find(|(k, _)| k == kind).unwrap_or_else(|| {
                panic!("{name} document {i}: no CRD in crds/ for kind {kind:?}")
            });
            assert_eq!(
                validate_object(schema, doc),
                Vec::<String>::new(),
                "{name} document {i} ({kind})"
            );
            checked.push(format!("{name}#{i} {kind}"));
        }
    }
    for expected in [
        "milvus-capacity.yaml#0 StressTest",
        "open-model.yaml#0 StressTest",
        "quickstart.yaml#0 StressTest",
        "with-auth.yaml#0 StressTest",
        "with-auth.yaml#1 Secret",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} not checked: {checked:?}"
        );
    }
}

#[test]
fn the_schema_check_rejects_an_unknown_field_a_wrong_type_and_a_bad_enum() {
    let schema = StressTest::crd().spec.versions[0]
        .schema
        .clone()
        .and_then(|s| s.open_api_v3_schema)
        .expect("the StressTest CRD has a schema");
    let schema = serde_json::to_value(schema).expect("a schema serializes");
    let mut doc = documents(&crate_dir().join("examples/milvus-capacity.yaml")).remove(0);
    doc["spec"]["collection"]["dimensions"] = json!(768);
    doc["spec"]["data"]["rows"] = json!("a million");
    doc["spec"]["workload"]["model"] = json!("Closd");
    assert_eq!(
        validate_object(&schema, &doc),
        [
            "spec.collection.dimensions: unknown field",
            "spec.data.rows: expected integer, found \"a million\"",
            "spec.workload.model: \"Closd\" is not one of [\"Closed\",\"Open\"]",
        ]
    );
}

#[test]
fn every_stress_test_example_is_accepted_by_stampede_run_dry_run() {
    let mut accepted = Vec::new();
    for file in example_files() {
        if documents(&file)[0]["kind"] != "StressTest" {
            continue;
        }
        let path = file.to_string_lossy().into_owned();
        let out = stampede(&["run", "--dry-run", "-f", &path]);
        assert!(
            out.status.success(),
            "stampede run --dry-run -f {path} exited {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(" is valid."), "{stdout}");
        accepted.push(
            file.file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    for expected in [
        "milvus-capacity.yaml",
        "open-model.yaml",
        "quickstart.yaml",
        "with-auth.yaml",
    ] {
        assert!(accepted.iter().any(|a| a == expected), "{accepted:?}");
    }
}

#[test]
fn the_capacity_example_dry_run_prints_the_classic_five_stages() {
    let out = stampede(&[
        "run",
        "--dry-run",
        "--shards",
        "4",
        "-f",
        "examples/milvus-capacity.yaml",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "StressTest `milvus-capacity` is valid.
  target      my-milvus.milvus.svc:19530 (database default)
  collection  stress_test_collection (768 dims, L2, 1000000 rows, index HNSW)
  workload    Closed model, Bounded consistency, 3 operation(s): search_vector×10, search_with_filter×3, batch_search×1
  shards      4
  stage 1     10 users (+10/s) for 60s
  stage 2     50 users (+10/s) for 60s
  stage 3     100 users (+10/s) for 60s
  stage 4     200 users (+20/s) for 60s
  stage 5     500 users (+50/s) for 60s
"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn the_capacity_example_is_the_classic_scenario() {
    let spec = stress_test("milvus-capacity.yaml").spec;
    assert_eq!(spec.collection.dimension, 768);
    assert_eq!(spec.data.rows, 1_000_000);
    assert_eq!(spec.index.index_type, "HNSW");
    assert_eq!(
        serde_json::to_value(&spec.index.params).expect("params"),
        json!({"M": 16, "efConstruction": 200})
    );
    assert_eq!(spec.workload.model, LoadModel::Closed);
    let operations = serde_json::to_value(&spec.workload.operations).expect("operations");
    let shape: Vec<(String, u64, Option<String>, u64)> = operations
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap_or_default().to_string(),
                o["weight"].as_u64().unwrap_or_default(),
                o["search"]["filter"].as_str().map(str::to_string),
                o["search"]["nq"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("search_vector".to_string(), 10, None, 1),
            (
                "search_with_filter".to_string(),
                3,
                Some("category == \"{category}\"".to_string()),
                1
            ),
            ("batch_search".to_string(), 1, None, 5),
        ]
    );
    let stages: Vec<(Option<u32>, Option<f64>)> = spec
        .stages
        .iter()
        .map(|s| (s.users, s.spawn_rate))
        .collect();
    assert_eq!(
        stages,
        [
            (Some(10), Some(10.0)),
            (Some(50), Some(10.0)),
            (Some(100), Some(10.0)),
            (Some(200), Some(20.0)),
            (Some(500), Some(50.0)),
        ]
    );
    let sla = serde_json::to_value(&spec.sla).expect("sla");
    assert_eq!(sla["minQps"], json!(1000.0));
    assert_eq!(sla["maxP95"], json!("100ms"));
    assert_eq!(sla["maxErrorRatio"], json!(0.001));
    let capacity = serde_json::to_value(&spec.capacity).expect("capacity");
    assert_eq!(capacity["targetQps"], json!(10000.0));
    assert_eq!(capacity["redundancy"], json!(2.0));
}

#[test]
fn the_open_model_example_runs_arrival_rate_stages_with_an_in_flight_bound() {
    let spec = stress_test("open-model.yaml").spec;
    assert_eq!(spec.workload.model, LoadModel::Open);
    assert_eq!(spec.workload.max_in_flight, 2000);
    let rates: Vec<(Option<f64>, Option<u32>)> =
        spec.stages.iter().map(|s| (s.rate, s.users)).collect();
    assert_eq!(
        rates,
        [
            (Some(200.0), None),
            (Some(500.0), None),
            (Some(1000.0), None),
            (Some(2000.0), None)
        ]
    );
    let out = stampede(&["run", "--dry-run", "-f", "examples/open-model.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Open model"), "{stdout}");
    assert!(
        stdout.contains("stage 4     2000 requests/s for 60s"),
        "{stdout}"
    );
}

#[test]
fn the_auth_example_takes_credentials_and_the_ca_from_secrets_and_ships_a_placeholder_secret() {
    let spec = stress_test("with-auth.yaml").spec;
    assert_eq!(
        spec.target.credentials_secret.as_deref(),
        Some("milvus-auth")
    );
    assert!(spec.target.tls.enabled);
    assert_eq!(spec.target.tls.ca_secret.as_deref(), Some("milvus-ca"));
    assert_eq!(
        spec.target.tls.server_name.as_deref(),
        Some("my-milvus.milvus.svc")
    );

    let docs = documents(&crate_dir().join("examples/with-auth.yaml"));
    assert_eq!(docs.len(), 2);
    let secret = strict_secret(&docs[1]);
    assert_eq!(secret.metadata.name.as_deref(), Some("milvus-auth"));
    let data = secret.string_data.expect("stringData");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["password", "username"]
    );
    assert_eq!(
        data["password"], "CHANGE-ME",
        "a placeholder, never a real password"
    );
    // No credential in the StressTest itself.
    let test = serde_json::to_string(&docs[0]).expect("serialize");
    assert!(!test.contains("CHANGE-ME") && !test.to_lowercase().contains("password"));
}
