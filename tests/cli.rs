//! The `stampede` binary as a user runs it: exit codes, the one-line errors on stderr, `--help`,
//! `crd`, `validate`, `run --dry-run`, `report`, and `prepare` against the real Milvus
//! (`STAMPEDE_MILVUS_ADDR`, default 127.0.0.1:19530) on collections named `t_cli_<test>`, dropped
//! first and again at the end, pass or fail.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use stampede::milvus::{ConnectOptions, MilvusClient, MilvusError};

fn address() -> String {
    std::env::var("STAMPEDE_MILVUS_ADDR").unwrap_or_else(|_| "127.0.0.1:19530".to_string())
}

/// Runs the binary from the crate root with an environment that cannot change its behaviour
/// (no address override, no credentials, default logging).
fn stampede(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stampede"));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for var in [
        "STAMPEDE_TARGET",
        "STAMPEDE_LOG",
        "STAMPEDE_LOG_FORMAT",
        "MILVUS_TOKEN",
        "MILVUS_USERNAME",
        "MILVUS_PASSWORD",
        "MILVUS_CA_CERT",
    ] {
        cmd.env_remove(var);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run stampede {args:?}: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Asserts that stderr is exactly one line, `error: …`, and returns it.
#[track_caller]
fn one_error_line(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

/// A manifest for `collection` (a flow mapping) with small data and a FLAT index.
fn manifest(collection: &str, target: &str) -> String {
    format!(
        r#"apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {{name: cli}}
spec:
  target: {{address: "{target}"}}
  collection: {collection}
  data: {{rows: 100, batchSize: 100}}
  index: {{type: FLAT}}
  recall: {{sampleQueries: 0}}
  stages:
    - {{duration: 1s, users: 1, spawnRate: 1}}
"#
    )
}

fn write(dir: &Path, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn drop_if_exists(name: &str) -> Result<(), MilvusError> {
    let client = MilvusClient::connect(ConnectOptions::new(address())).await?;
    if client.has_collection(name).await? {
        client.drop_collection(name).await?;
    }
    Ok(())
}

/// Drops a collection now (a leftover of an earlier run) and again when the test ends, pass or
/// fail.
struct Collection(String);

impl Collection {
    fn fresh(test: &str) -> Collection {
        let c = Collection(format!("t_cli_{test}"));
        c.drop_now()
            .unwrap_or_else(|e| panic!("cannot drop `{}` before the test: {e}", c.0));
        c
    }

    fn drop_now(&self) -> Result<(), MilvusError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(drop_if_exists(&self.0))
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        if let Err(e) = self.drop_now() {
            eprintln!("cleanup: cannot drop `{}`: {e}", self.0);
        }
    }
}

#[test]
fn an_unreachable_address_fails_quickly_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // The manifest names the real server; --target must win.
    let file = write(
        dir.path(),
        "m.yaml",
        &manifest("{name: t_cli_unreachable, dimension: 8}", "127.0.0.1:19530"),
    );
    let out = dir.path().join("out").display().to_string();

    let started = Instant::now();
    let o = stampede(&[
        "prepare",
        "-f",
        &file,
        "--target",
        "127.0.0.1:1",
        "-o",
        &out,
    ]);
    let took = started.elapsed();
    assert_exit(&o, 2);
    assert_eq!(
        one_error_line(&o),
        "error: cannot reach Milvus at 127.0.0.1:1: connection refused (is it running? see README \"Local Milvus\")"
    );
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} to report an unreachable address"
    );
    assert_eq!(stdout(&o), "");
    assert!(!Path::new(&out).join("prepare.json").exists());

    // -v keeps the error line (and the exit code).
    let o = stampede(&[
        "-v",
        "prepare",
        "-f",
        &file,
        "--target",
        "127.0.0.1:1",
        "-o",
        &out,
    ]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).lines().any(|l| l
            == "error: cannot reach Milvus at 127.0.0.1:1: connection refused (is it running? see README \"Local Milvus\")"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_manifest_with_a_wrong_type_names_the_field_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = manifest("{name: t_cli_type, dimension: big}", "127.0.0.1:19530");
    // Where `big` is, 1-based.
    let (row, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("big").map(|c| (i + 1, c + 1)))
        .unwrap();
    assert_eq!((row, col), (6, 45));
    let file = write(dir.path(), "m.yaml", &text);
    let o = stampede(&["validate", "-f", &file]);
    assert_exit(&o, 2);
    let line = one_error_line(&o);
    assert_eq!(
        line,
        format!(
            "error: {file}: spec.collection.dimension: invalid type: string \"big\", expected u32 at line 6 column 45"
        )
    );
    assert_eq!(stdout(&o), "");

    // The same for a command that would connect: the manifest is checked first.
    let o = stampede(&["prepare", "-f", &file, "--target", "127.0.0.1:1"]);
    assert_exit(&o, 2);
    assert_eq!(one_error_line(&o), line);
}

#[test]
fn every_problem_of_a_manifest_is_listed_with_its_path_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "m.yaml",
        r#"apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata: {name: cli}
spec:
  target: {address: "127.0.0.1:19530"}
  collection: {name: t_cli_invalid, dimension: 8}
  data: {rows: 0, batchsize: 5, scalars: [{name: category, values: [A, B]}]}
  workload:
    operations:
      - {name: a, weight: 0, search: {topK: 10, filter: 'category == "{colour}"'}}
      - {name: b, weight: 0, search: {topK: 10}}
  stages:
    - {duration: 10s, users: 4}
"#,
    );
    let expected = format!(
        "error: {file}: 5 problem(s) in the StressTest:
  - spec.data.batchsize: unknown field (check its spelling and indentation against README \"StressTest reference\")
  - spec.data.rows: must be at least 1 (a stress test needs data to search)
  - spec.workload.operations: weights sum to 0; give at least one operation a positive weight
  - spec.workload.operations[0].search.filter: `{{colour}}` names no scalar field; defined: [category]
  - spec.stages[0].spawnRate: the Closed model needs a spawnRate (users started per second)
"
    );
    let o = stampede(&["validate", "-f", &file]);
    assert_exit(&o, 2);
    assert_eq!(stderr(&o), expected);
    assert_eq!(stdout(&o), "");

    // run checks the manifest before anything else, and reports the same problems.
    let o = stampede(&["run", "-f", &file, "--target", "127.0.0.1:1"]);
    assert_exit(&o, 2);
    assert_eq!(stderr(&o), expected);
}

#[test]
fn the_quickstart_validates_and_its_dry_run_prints_the_three_stages() {
    let o = stampede(&["validate", "-f", "examples/quickstart.yaml"]);
    assert_exit(&o, 0);
    assert_eq!(
        stdout(&o),
        "examples/quickstart.yaml: StressTest `quickstart` is valid (3 stage(s), 3 operation(s))\n"
    );
    assert_eq!(stderr(&o), "");

    // --dry-run sends nothing: an unreachable target does not matter.
    let o = stampede(&[
        "run",
        "-f",
        "examples/quickstart.yaml",
        "--dry-run",
        "--shards",
        "3",
        "--target",
        "127.0.0.1:1",
    ]);
    assert_exit(&o, 0);
    assert_eq!(
        stdout(&o),
        "StressTest `quickstart` is valid.
  target      127.0.0.1:19530 (database default)
  collection  stampede_quickstart (64 dims, L2, 5000 rows, index HNSW)
  workload    Closed model, Bounded consistency, 3 operation(s): search_vector×10, search_with_filter×3, batch_search×1
  shards      3
  stage 1     4 users (+4/s) for 10s
  stage 2     16 users (+16/s) for 10s
  stage 3     32 users (+32/s) for 10s
"
    );
    assert_eq!(stderr(&o), "");
}

#[test]
fn crd_prints_the_stresstest_and_schedule_custom_resource_definitions() {
    let o = stampede(&["crd"]);
    assert_exit(&o, 0);
    assert_eq!(stderr(&o), "");
    let text = stdout(&o);
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            <serde_json::Value as serde::Deserialize>::deserialize(d)
                .expect("stampede crd prints valid YAML")
        })
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[1]["metadata"]["name"],
        "stresstestschedules.stampede.dev"
    );
    let crd = docs[0].clone();
    assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"], "stresstests.stampede.dev");
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "stampede.dev");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "StressTest");
    assert_eq!(spec["names"]["plural"], "stresstests");
    assert_eq!(spec["names"]["singular"], "stresstest");
    assert_eq!(spec["names"]["shortNames"], serde_json::json!(["st"]));
    let versions = spec["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 1);
    let v = &versions[0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["served"], true);
    assert_eq!(v["storage"], true);
    assert_eq!(v["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Stage", "QPS", "P95", "P99", "SLA", "Age"]
    );
    let schema = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        schema["required"],
        serde_json::json!(["collection", "target"])
    );
    assert_eq!(
        schema["properties"]["collection"]["properties"]["dimension"]["type"],
        "integer"
    );
}

#[test]
fn a_wrong_dimension_against_an_existing_collection_names_the_field() {
    let collection = Collection::fresh("wrong_dim");
    let name = collection.0.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").display().to_string();
    let target = address();

    let small = write(
        dir.path(),
        "small.yaml",
        &manifest(&format!("{{name: {name}, dimension: 8}}"), &target),
    );
    let o = stampede(&["prepare", "-q", "-f", &small, "-o", &out]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains(&format!("Prepared `{name}` on Milvus ")),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("  collection   Created\n"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("  rows         100 (0 existing, 100 inserted at "),
        "{}",
        stdout(&o)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&out).join("prepare.json")).unwrap())
            .unwrap();
    assert_eq!(summary["collection"], name.as_str());
    assert_eq!(summary["rows"], 100);

    let big = write(
        dir.path(),
        "big.yaml",
        &manifest(
            &format!("{{name: {name}, dimension: 16, onExisting: Reuse}}"),
            &target,
        ),
    );
    let expected = format!(
        "error: collection `{name}` exists with a different schema:
  - field `embedding` is FLOAT_VECTOR(dim=8) but the spec needs FLOAT_VECTOR(dim=16)
use spec.collection.onExisting: Recreate to drop and recreate it, or change the spec to match
"
    );
    let o = stampede(&["prepare", "-q", "-f", &big, "-o", &out]);
    assert_exit(&o, 2);
    assert_eq!(stderr(&o), expected);

    // Without -q the progress lines come first; the error still ends stderr.
    let o = stampede(&["prepare", "-f", &big, "-o", &out]);
    assert_exit(&o, 2);
    assert!(stderr(&o).ends_with(&expected), "{}", stderr(&o));

    // The same through `run`, which prepares first.
    let o = stampede(&["run", "-q", "-f", &big, "-o", &out]);
    assert_exit(&o, 2);
    assert_eq!(stderr(&o), expected);
}

#[test]
fn an_index_type_milvus_rejects_is_one_line_and_v_adds_the_logs() {
    let collection = Collection::fresh("bad_index");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").display().to_string();
    let file = write(
        dir.path(),
        "m.yaml",
        &manifest(
            &format!("{{name: {}, dimension: 8}}", collection.0),
            &address(),
        )
        .replace("{type: FLAT}", "{type: NOT_AN_INDEX}"),
    );

    let o = stampede(&["prepare", "-q", "-f", &file, "-o", &out]);
    assert_exit(&o, 2);
    let line = one_error_line(&o);
    assert!(
        line.starts_with("error: Milvus rejected CreateIndex: invalid index type: NOT_AN_INDEX"),
        "{line}"
    );

    // -v: the same error line, after the info logs of what was done before it.
    let o = stampede(&["-v", "prepare", "-q", "-f", &file, "-o", &out]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(err.lines().count() > 1, "{err}");
    assert_eq!(err.lines().last(), Some(line.as_str()), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("INFO") && l.contains("collection ready")),
        "{err}"
    );
}

/// Help lines compared with runs of spaces collapsed: clap pads columns to the longest name.
fn has_help_line(help: &str, line: &str) -> bool {
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let want = squeeze(line);
    help.lines().any(|l| squeeze(l) == want)
}

#[test]
fn help_explains_the_commands() {
    let o = stampede(&["--help"]);
    assert_exit(&o, 0);
    let help = stdout(&o);
    for line in [
        "Usage: stampede [OPTIONS] <COMMAND>",
        "  prepare   Make a StressTest's collection ready: create or reuse it, insert the generated rows (resuming an interrupted run), flush, build the index, load it, compute ground truth",
        "  run       Run a whole StressTest on this machine: prepare (reusing data already there), the load stages, analysis and reports. Exit code 0 when the SLA passes (or none is set), 1 when it fails, 2 on error",
        "  report    Re-render report.html and the CSV files of a result directory from its result.json",
        "  validate  Check a StressTest or StressTestSchedule manifest and print every problem found (exit 2 when invalid)",
        "  crd       Print the CustomResourceDefinitions of StressTest and StressTestSchedule (generated from the Rust types) as two YAML documents separated by `---`; crds/ holds one file per CRD",
        "  -v, --verbose...               More detail: -v shows the cause chain of errors and info logs, -vv debug logs",
    ] {
        assert!(
            has_help_line(&help, line),
            "`stampede --help` lacks the line\n{line}\n---\n{help}"
        );
    }

    let o = stampede(&["run", "--help"]);
    assert_exit(&o, 0);
    let help = stdout(&o);
    assert!(
        help.starts_with("Run a whole StressTest on this machine: prepare (reusing data already there), the load stages, analysis and reports. Exit code 0 when the SLA passes (or none is set), 1 when it fails, 2 on error\n"),
        "{help}"
    );
    for line in [
        "Usage: stampede run [OPTIONS] --file <FILE>",
        "  -f, --file <FILE>              StressTest manifest (YAML), the same file `kubectl apply` takes",
        "      --target <TARGET>          Milvus address to use instead of spec.target.address (e.g. 127.0.0.1:19530) [env: STAMPEDE_TARGET=]",
        "  -o, --output <OUTPUT>          Output directory [default: stampede-results/<name>-<time>]",
        "      --shards <SHARDS>          In-process load shards (0 = one per core, at most 4) [default: 0]",
        "      --dry-run                  Validate the manifest and print the resolved plan without sending anything",
        "  -q, --quiet                    No progress lines on stderr",
    ] {
        assert!(
            has_help_line(&help, line),
            "`stampede run --help` lacks the line\n{line}\n---\n{help}"
        );
    }
}

#[test]
fn report_on_a_directory_without_result_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let o = stampede(&["report", &d]);
    assert_exit(&o, 2);
    let line = one_error_line(&o);
    let file = dir.path().join("result.json").display().to_string();
    assert!(
        line.starts_with(&format!("error: cannot read {file}: ")),
        "{line}"
    );
    assert_eq!(stdout(&o), "");
    // Nothing was written.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
