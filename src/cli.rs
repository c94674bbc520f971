//! The commands of the `stampede` binary, as library functions (the binary only parses flags).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::milvus::{ConnectOptions, Credentials, MilvusClient, MilvusError, TlsOptions};
use crate::prepare::{self, PrepareError, PrepareOptions, PrepareSummary};
use crate::spec::{SpecError, StressTestSpec};

/// An error a command ends with: printed as one line, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The manifest is unreadable or invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Milvus could not be reached or refused something.
    #[error(transparent)]
    Milvus(#[from] MilvusError),
    /// Prepare failed.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// Reports could not be written or read.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// A local problem (runtime, files).
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    /// Whether `-v` would show more than the one line.
    pub fn has_detail(&self) -> bool {
        std::error::Error::source(self)
            .and_then(std::error::Error::source)
            .is_some()
    }
}

/// `stampede validate -f FILE`.
pub fn validate(file: &Path) -> Result<ExitCode, CliError> {
    let text = std::fs::read_to_string(file).map_err(|source| crate::spec::SpecError::Read {
        path: file.display().to_string(),
        source,
    })?;
    let is_schedule = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
        .is_some_and(|k| k == "StressTestSchedule");
    if is_schedule {
        let s = crate::schedule::spec::parse_manifest(&text, &file.display().to_string())?;
        println!(
            "{}: StressTestSchedule `{}` is valid (schedule `{}` in {}, {} stage(s) per run)",
            file.display(),
            s.metadata.name.as_deref().unwrap_or(""),
            s.spec.schedule,
            s.spec.time_zone,
            s.spec.template.spec.stages.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let st = crate::spec::parse_manifest(&text, &file.display().to_string())?;
    println!(
        "{}: StressTest `{}` is valid ({} stage(s), {} operation(s))",
        file.display(),
        st.metadata.name.as_deref().unwrap_or(""),
        st.spec.stages.len(),
        st.spec.workload.operations.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Connection options for a spec's target, with credentials from the environment
/// (MILVUS_USERNAME/MILVUS_PASSWORD or MILVUS_TOKEN; MILVUS_CA_CERT for a CA file).
pub fn connect_options(
    spec: &StressTestSpec,
    address_override: Option<&str>,
) -> Result<ConnectOptions, CliError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let credentials = match (env("MILVUS_TOKEN"), env("MILVUS_USERNAME")) {
        (Some(token), _) => Some(Credentials::Token(token)),
        (None, Some(username)) => Some(Credentials::UserPassword {
            username,
            password: env("MILVUS_PASSWORD").unwrap_or_default(),
        }),
        (None, None) => None,
    };
    let ca_pem = match env("MILVUS_CA_CERT") {
        Some(path) => Some(std::fs::read(&path).map_err(|e| {
            CliError::Runtime(format!(
                "cannot read the CA file MILVUS_CA_CERT={path}: {e}"
            ))
        })?),
        None => None,
    };
    let mut opts = ConnectOptions::new(address_override.unwrap_or(&spec.target.address));
    opts.database = spec.target.database.clone();
    opts.tls = TlsOptions {
        enabled: spec.target.tls.enabled,
        ca_pem,
        server_name: spec.target.tls.server_name.clone(),
    };
    opts.credentials = credentials;
    opts.request_timeout = Duration::from_secs(60);
    Ok(opts)
}

/// Arguments of `stampede prepare`.
#[derive(Debug, Clone)]
pub struct PrepareCommand {
    /// The manifest.
    pub file: PathBuf,
    /// Address override.
    pub target: Option<String>,
    /// Output directory.
    pub output: PathBuf,
    /// Ground-truth threads.
    pub threads: usize,
    /// Progress lines on stderr.
    pub progress: bool,
}

/// `stampede prepare -f FILE`.
pub async fn prepare(cmd: PrepareCommand) -> Result<ExitCode, CliError> {
    let st = crate::spec::load_manifest(&cmd.file)?;
    let opts = connect_options(&st.spec, cmd.target.as_deref())?;
    tracing::info!(address = %opts.address, database = %opts.database, "connecting to Milvus");
    let client = MilvusClient::connect(opts).await?;
    if cmd.progress {
        eprintln!(
            "connected to Milvus {} at {}",
            client.server_version(),
            cmd.target.as_deref().unwrap_or(&st.spec.target.address)
        );
    }
    let summary = prepare::prepare(
        &client,
        &st.spec,
        &PrepareOptions {
            ground_truth_path: Some(cmd.output.join("ground_truth.json")),
            threads: cmd.threads,
            progress: cmd.progress,
        },
    )
    .await?;
    prepare::save_json(&cmd.output.join("prepare.json"), &summary)?;
    print!("{}", render_prepare_summary(&summary));
    Ok(ExitCode::SUCCESS)
}

/// `stampede cleanup -f FILE`: drops the manifest's collection (the cleanup Job of a test with
/// `cleanup.dropCollection`). A collection that does not exist counts as dropped.
pub async fn cleanup(file: &Path, target: Option<&str>) -> Result<ExitCode, CliError> {
    let st = crate::spec::load_manifest(file)?;
    let opts = connect_options(&st.spec, target)?;
    let address = opts.address.clone();
    let client = MilvusClient::connect(opts).await?;
    let name = &st.spec.collection.name;
    if client.has_collection(name).await? {
        client.drop_collection(name).await?;
        println!("dropped collection {name} at {address}");
    } else {
        println!("collection {name} does not exist at {address}; nothing to drop");
    }
    Ok(ExitCode::SUCCESS)
}

/// The summary table `stampede prepare` prints.
pub fn render_prepare_summary(s: &PrepareSummary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\nPrepared `{}` on Milvus {}\n",
        s.collection, s.server_version
    ));
    out.push_str(&format!("  collection   {:?}\n", s.action));
    out.push_str(&format!(
        "  rows         {} ({} existing, {} inserted at {:.0} rows/s)\n",
        s.rows, s.rows_existing, s.rows_inserted, s.insert_rows_per_second
    ));
    let params: Vec<String> = s
        .index_params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push_str(&format!(
        "  index        {} {}{}\n",
        s.index_type,
        params.join(" "),
        if s.index_reused { " (kept)" } else { "" }
    ));
    out.push_str(&format!("  load state   {}\n", s.load_state));
    if let Some(gt) = &s.ground_truth {
        out.push_str(&format!("  ground truth {gt}\n"));
    }
    out.push_str("  time        ");
    for p in &s.phases {
        out.push_str(&format!(
            " {} {}",
            p.phase,
            prepare::human_seconds(p.seconds)
        ));
    }
    out.push('\n');
    out
}

/// `stampede report DIR`.
pub fn report(dir: &Path, prefix: &str) -> Result<ExitCode, CliError> {
    let written = crate::report::rerender(dir, prefix)?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
