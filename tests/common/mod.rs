//! Shared setup of the run-level tests: the local Milvus address and small manifests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use stampede::result::RunResult;

/// Address of the local Milvus started by scripts/milvus.sh.
pub fn milvus_addr() -> String {
    std::env::var("STAMPEDE_MILVUS_ADDR").unwrap_or_else(|_| "127.0.0.1:19530".to_string())
}

/// Writes a manifest to `dir/name.yaml` with the target set to the local Milvus.
pub fn write_manifest(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "apiVersion: stampede.dev/v1alpha1\nkind: StressTest\nmetadata: {{name: {name}}}\nspec:\n  target: {{address: \"{}\"}}\n{body}",
        milvus_addr()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Reads `dir/result.json`.
pub fn read_result(dir: &Path) -> RunResult {
    let text = std::fs::read(dir.join("result.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// Rows of a CSV file as maps from column name to value (no quoted commas in our test data).
pub fn csv_rows(path: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

/// Drops a collection, ignoring "not found".
pub async fn drop_collection(name: &str) {
    let client = stampede::milvus::MilvusClient::connect(stampede::milvus::ConnectOptions::new(
        milvus_addr(),
    ))
    .await
    .unwrap();
    if client.has_collection(name).await.unwrap() {
        client.drop_collection(name).await.unwrap();
    }
}

/// Process group of the local Milvus started by scripts/milvus.sh (its wrapper's pid).
pub fn milvus_process_group() -> i32 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".milvus/pid");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; the stall test needs the Milvus started by scripts/milvus.sh",
            path.display()
        )
    });
    text.trim().parse().unwrap()
}

/// Sends a signal to a process group with kill(1).
pub fn signal_group(pgid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), "--".to_string(), format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} -{pgid} failed");
}
