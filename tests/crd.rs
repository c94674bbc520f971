//! The generated CustomResourceDefinition as the API server and `kubectl` see it: checked in and
//! current, structural, with the printer columns, short name and status subresource; every
//! example manifest passes `stampede validate` and the CRD's own openAPIV3Schema, checked by the
//! small validator below (types, required fields, enums, bounds, unknown fields), no cluster
//! needed. A status built from a run fits the status schema too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use stampede::analysis::{CapacityPlan, Peak, Saturation};
use stampede::controller::status::{StatusContext, invalid_spec_status, status_from_result};
use stampede::metrics::{Snapshot, StageMeasurement};
use stampede::result::{RunContext, build_result};
use stampede::spec::{FieldError, StressTest, parse_manifest};

mod support;
use support::schema::{validate_object, validate_value};

/// The files of crds/, in the order `stampede crd` prints their documents.
const CRD_FILES: [&str; 2] = ["crds/stresstest.yaml", "crds/stresstestschedule.yaml"];
const STALE: &str = "is stale: regenerate crds/ with `cargo run -q -- crd | awk 'BEGIN{f=\"crds/stresstest.yaml\"} /^---$/{f=\"crds/stresstestschedule.yaml\"; next} {print > f}'`";

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
        .output()
        .unwrap_or_else(|e| panic!("cannot run stampede {args:?}: {e}"))
}

fn crd() -> Value {
    serde_json::to_value(StressTest::crd()).unwrap()
}

fn version(crd: &Value) -> &Value {
    let versions = crd["spec"]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "one version, v1alpha1");
    &versions[0]
}

fn schema(crd: &Value) -> &Value {
    &version(crd)["schema"]["openAPIV3Schema"]
}

/// The examples of one kind (StressTest or StressTestSchedule).
fn example_files_of(kind: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| {
            // By line, not by parsing: an example may hold several documents (e.g. a Secret).
            let text = std::fs::read_to_string(p).unwrap();
            let is_schedule = text
                .lines()
                .any(|l| l.trim_end() == "kind: StressTestSchedule");
            is_schedule == (kind == "StressTestSchedule")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples/*.yaml of kind {kind}");
    files
}

fn example_files() -> Vec<PathBuf> {
    example_files_of("StressTest")
}

#[test]
fn the_checked_in_crd_matches_the_generated_one() {
    let out = stampede(&["crd"]);
    assert!(
        out.status.success(),
        "stampede crd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let generated: Vec<String> = stdout
        .split("\n---\n")
        .enumerate()
        .map(|(i, doc)| {
            if i + 1 < CRD_FILES.len() {
                format!("{doc}\n")
            } else {
                doc.to_string()
            }
        })
        .collect();
    assert_eq!(
        generated.len(),
        CRD_FILES.len(),
        "`stampede crd` printed {} documents, crds/ has {}",
        generated.len(),
        CRD_FILES.len()
    );
    for (file, generated) in CRD_FILES.iter().zip(&generated) {
        let checked_in =
            String::from_utf8(std::fs::read(crate_dir().join(file)).unwrap_or_default()).unwrap();
        if *generated != checked_in {
            let line = generated
                .lines()
                .zip(checked_in.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| generated.lines().count().min(checked_in.lines().count()));
            panic!("{file} {STALE}\n(first difference at line {})", line + 1);
        }
    }
}

#[test]
fn every_schedule_example_fits_the_schedule_crd_schema() {
    let crd = serde_json::to_value(stampede::schedule::StressTestSchedule::crd()).unwrap();
    for file in example_files_of("StressTestSchedule") {
        let text = std::fs::read_to_string(&file).unwrap();
        let object = yaml_to_json(&text, &file);
        assert_eq!(object["apiVersion"], "stampede.dev/v1alpha1");
        assert_eq!(
            validate_object(schema(&crd), &object),
            Vec::<String>::new(),
            "{}",
            file.display()
        );
        let parsed: stampede::schedule::StressTestSchedule =
            serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(
            stampede::schedule::spec::validate(&parsed.metadata.name.unwrap(), &parsed.spec),
            Vec::<FieldError>::new(),
            "{}",
            file.display()
        );
    }
}

#[test]
fn the_crd_names_group_scope_and_short_name_are_the_documented_ones() {
    let crd = crd();
    assert_eq!(crd["metadata"]["name"], "stresstests.stampede.dev");
    assert_eq!(crd["spec"]["group"], "stampede.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "StressTest");
    assert_eq!(crd["spec"]["names"]["plural"], "stresstests");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["st"]));
    let v = version(&crd);
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["served"], true);
    assert_eq!(v["storage"], true);
}

#[test]
fn the_status_subresource_is_enabled() {
    let crd = crd();
    assert_eq!(version(&crd)["subresources"], json!({"status": {}}));
}

#[test]
fn the_printer_columns_are_phase_stage_qps_p95_p99_sla_and_age() {
    let crd = crd();
    let columns: Vec<(&str, &str, &str)> = version(&crd)["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["type"].as_str().unwrap(),
                c["jsonPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        vec![
            ("Phase", "string", ".status.phase"),
            ("Stage", "string", ".status.currentStage"),
            ("QPS", "number", ".status.totals.qps"),
            ("P95", "string", ".status.totals.p95"),
            ("P99", "string", ".status.totals.p99"),
            ("SLA", "string", ".status.sla.verdict"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ]
    );
}

#[test]
fn the_printer_columns_point_at_status_fields_of_their_type() {
    let crd = crd();
    let root = schema(&crd);
    for column in version(&crd)["additionalPrinterColumns"]
        .as_array()
        .unwrap()
    {
        let path = column["jsonPath"].as_str().unwrap();
        if path.starts_with(".metadata.") {
            continue;
        }
        let mut node = root;
        for part in path.trim_start_matches('.').split('.') {
            node = &node["properties"][part];
            assert!(node.is_object(), "{path}: no `{part}` in the schema");
        }
        assert_eq!(node["type"], column["type"], "{path}");
    }
}

#[test]
fn the_crd_schema_is_structural() {
    let crd = crd();
    let root = schema(&crd);
    let mut problems = Vec::new();
    let mut nodes = 0;
    structural_problems(root, "openAPIV3Schema", false, &mut problems, &mut nodes);
    if let Some(metadata) = root["properties"].get("metadata") {
        for (key, _) in metadata["properties"].as_object().into_iter().flatten() {
            if key != "name" && key != "generateName" {
                problems.push(format!(
                    "metadata.{key}: only name and generateName may be set"
                ));
            }
        }
    }
    assert_eq!(problems, Vec::<String>::new());
    assert!(nodes > 150, "walked only {nodes} schema nodes");
}

#[test]
fn the_structural_check_flags_untyped_nodes_refs_and_typed_branches() {
    let bad = json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "reference": {"$ref": "#/definitions/X", "type": "object"},
            "list": {"type": "array"},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "quantity": {"x-kubernetes-int-or-string": true},
            "free": {"x-kubernetes-preserve-unknown-fields": true},
            "choice": {"type": "string", "anyOf": [{"type": "string", "description": "x"}]}
        }
    });
    let mut problems = Vec::new();
    let mut nodes = 0;
    structural_problems(&bad, "s", false, &mut problems, &mut nodes);
    assert_eq!(
        problems,
        vec![
            "s.both: properties and additionalProperties exclude each other",
            "s.choice.anyOf[0]: `type` is not allowed here",
            "s.choice.anyOf[0]: `description` is not allowed in a value validation",
            "s.list: an array needs items",
            "s.reference: `$ref` is not allowed",
            "s.untyped: no type (and neither x-kubernetes-int-or-string nor x-kubernetes-preserve-unknown-fields)",
        ]
    );
}

#[test]
fn the_stage_rules_of_each_load_model_are_cel_validations_on_the_spec() {
    let crd = crd();
    let rules = schema(&crd)["properties"]["spec"]["x-kubernetes-validations"]
        .as_array()
        .expect("CEL rules on spec");
    let summary: Vec<(&str, &str, &str)> = rules
        .iter()
        .map(|r| {
            (
                r["fieldPath"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
                r["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                ".stages",
                "FieldValueRequired",
                "the Closed model needs users and spawnRate (and no rate) in every stage"
            ),
            (
                ".stages",
                "FieldValueRequired",
                "the Open model needs a rate (and no users or spawnRate) in every stage"
            ),
        ]
    );
    for r in rules {
        let rule = r["rule"].as_str().unwrap();
        assert!(rule.contains("self.stages.all(s, "), "{rule}");
        assert_eq!(
            rule.matches('(').count(),
            rule.matches(')').count(),
            "{rule}"
        );
    }
}

#[test]
fn every_example_is_accepted_by_stampede_validate() {
    for file in example_files() {
        let path = file.to_string_lossy().into_owned();
        let out = stampede(&["validate", "-f", &path]);
        assert!(
            out.status.success(),
            "{path}: stampede validate exited {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_example_fits_the_crd_schema() {
    let crd = crd();
    for file in example_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let object = yaml_to_json(&text, &file);
        assert_eq!(object["kind"], "StressTest", "{}", file.display());
        assert_eq!(object["apiVersion"], "stampede.dev/v1alpha1");
        assert_eq!(
            validate_object(schema(&crd), &object),
            Vec::<String>::new(),
            "{}",
            file.display()
        );
    }
}

#[test]
fn the_schema_check_rejects_what_the_api_server_would() {
    let crd = crd();
    let file = crate_dir().join("examples/quickstart.yaml");
    let mut object = yaml_to_json(&std::fs::read_to_string(&file).unwrap(), &file);
    let spec = &mut object["spec"];
    spec["data"]["batchsize"] = json!(5);
    spec["collection"]["dimension"] = json!("big");
    spec["collection"]["metric"] = json!("L3");
    spec["workload"]["operations"][0]["weight"] = json!(-1);
    spec["stages"][0]["duration"] = json!(null);
    spec["target"].as_object_mut().unwrap().remove("address");
    spec["workers"] = json!({"replicas": true});
    assert_eq!(
        validate_object(schema(&crd), &object),
        vec![
            "spec.collection.dimension: expected integer, found \"big\"",
            "spec.collection.metric: \"L3\" is not one of [\"L2\",\"IP\",\"COSINE\"]",
            "spec.data.batchsize: unknown field",
            "spec.stages[0].duration: null is not allowed",
            "spec.target: missing required field address",
            "spec.workers.replicas: expected an integer or a string, found true",
            "spec.workload.operations[0].weight: -1 is below the minimum 0",
        ]
    );
}

#[test]
fn a_status_built_from_a_run_fits_the_status_schema() {
    let crd = crd();
    let status_schema = &schema(&crd)["properties"]["status"];
    let file = crate_dir().join("examples/quickstart.yaml");
    let st = parse_manifest(&std::fs::read_to_string(&file).unwrap(), "quickstart").unwrap();
    let merged = Snapshot {
        shards: 2,
        stages: vec![StageMeasurement {
            stage: 0,
            complete: true,
            ..StageMeasurement::default()
        }],
        ..Snapshot::default()
    };
    let ctx = RunContext {
        name: "quickstart".to_string(),
        started_at: "2025-03-01T10:00:00Z".to_string(),
        finished_at: "2025-03-01T10:01:00Z".to_string(),
        ..RunContext::default()
    };
    let mut r = build_result(&st.spec, ctx, merged);
    r.peak = Some(Peak {
        stage: 0,
        users: Some(4),
        rate: None,
        qps: 812.25,
    });
    r.saturation = Some(Saturation {
        stage: 0,
        users: Some(4),
        rate: None,
        qps: 812.25,
        reason: "QPS fell".to_string(),
    });
    r.capacity = Some(CapacityPlan {
        per_node_qps: 812.25,
        nodes_for_target: 13,
        with_redundancy: 26,
        basis: "capacity at SLA".to_string(),
        explanation: String::new(),
    });
    r.totals.recall = Some(0.93);
    let now = Time("2025-03-01T10:01:02Z".parse().unwrap());
    let status = status_from_result(
        &r,
        &StatusContext {
            generation: Some(1),
            now: now.clone(),
            previous: None,
        },
        Some("quickstart-report"),
    );
    let value = serde_json::to_value(&status).unwrap();
    for field in [
        "phase",
        "observedGeneration",
        "startTime",
        "completionTime",
        "currentStage",
        "message",
        "conditions",
        "stages",
        "totals",
        "peak",
        "saturation",
        "sla",
        "capacity",
        "recall",
        "report",
    ] {
        assert!(value.get(field).is_some(), "status has no {field}: {value}");
    }
    let mut errors = Vec::new();
    validate_value(status_schema, &value, "status", &mut errors);
    assert_eq!(errors, Vec::<String>::new());

    let invalid = invalid_spec_status(
        &[FieldError {
            path: "spec.data.rows".to_string(),
            message: "must be at least 1".to_string(),
        }],
        &StatusContext {
            generation: Some(2),
            now,
            previous: Some(&status),
        },
    );
    let mut errors = Vec::new();
    validate_value(
        status_schema,
        &serde_json::to_value(&invalid).unwrap(),
        "status",
        &mut errors,
    );
    assert_eq!(errors, Vec::<String>::new());
}

/// The stampede.dev document of a file (an example may also hold e.g. its Secret), as JSON.
fn yaml_to_json(text: &str, file: &Path) -> Value {
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            let yaml = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            serde_json::to_value(yaml).unwrap()
        })
        .collect();
    docs.iter()
        .find(|d| {
            d["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("stampede.dev/"))
        })
        .or(docs.first())
        .cloned()
        .unwrap_or_else(|| panic!("{}: no YAML document", file.display()))
}

/// Collects why `node` is not a structural schema node (see "Specifying a structural schema" in
/// the Kubernetes CRD documentation): every node has a type unless it is int-or-string or
/// preserves unknown fields; no $ref; arrays have items; properties and additionalProperties
/// exclude each other; value-validation branches (anyOf, allOf, oneOf, not) carry no type,
/// description, default, nullable or additionalProperties, except the int-or-string pattern.
fn structural_problems(
    node: &Value,
    path: &str,
    in_logic: bool,
    problems: &mut Vec<String>,
    nodes: &mut usize,
) {
    *nodes += 1;
    let Some(obj) = node.as_object() else {
        problems.push(format!("{path}: not a schema object"));
        return;
    };
    for key in ["$ref", "$schema", "definitions", "$defs", "$id"] {
        if obj.contains_key(key) {
            problems.push(format!("{path}: `{key}` is not allowed"));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if in_logic {
        for key in ["description", "default", "nullable", "additionalProperties"] {
            if obj.contains_key(key) {
                problems.push(format!(
                    "{path}: `{key}` is not allowed in a value validation"
                ));
            }
        }
    } else {
        match obj.get("type").and_then(Value::as_str) {
            Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {
                if int_or_string {
                    problems.push(format!("{path}: int-or-string must not set a type"));
                }
            }
            Some(other) => problems.push(format!("{path}: unknown type `{other}`")),
            None if int_or_string || preserve => {}
            None => problems.push(format!(
                "{path}: no type (and neither x-kubernetes-int-or-string nor x-kubernetes-preserve-unknown-fields)"
            )),
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("array") && !obj.contains_key("items") {
        problems.push(format!("{path}: an array needs items"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!(
            "{path}: properties and additionalProperties exclude each other"
        ));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural_problems(child, &format!("{path}.{name}"), in_logic, problems, nodes);
        }
    }
    if let Some(child) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        structural_problems(child, &format!("{path}.*"), in_logic, problems, nodes);
    }
    if let Some(items) = obj.get("items") {
        if items.is_object() {
            structural_problems(items, &format!("{path}[]"), in_logic, problems, nodes);
        } else {
            problems.push(format!("{path}: items must be one schema"));
        }
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        for (i, branch) in obj
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let type_allowed = int_or_string && key == "anyOf";
            if !type_allowed && branch.get("type").is_some() && !in_logic {
                problems.push(format!("{path}.{key}[{i}]: `type` is not allowed here"));
            }
            structural_problems(branch, &format!("{path}.{key}[{i}]"), true, problems, nodes);
        }
    }
    if let Some(not) = obj.get("not") {
        structural_problems(not, &format!("{path}.not"), true, problems, nodes);
    }
}
