//! The `StressTestSchedule` custom resource: Rust types (the CRD is generated from them),
//! defaults and validation (pure: spec in, field errors out).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{FieldError, Phase, StressTestSpec};

/// StressTests run on a cron schedule, each compared with the last successful run (GitOps: the
/// schedule lives in git, every run is an ordinary StressTest owned by the schedule).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stampede.dev",
    version = "v1alpha1",
    kind = "StressTestSchedule",
    namespaced,
    shortname = "sts",
    status = "StressTestScheduleStatus",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Last Run","type":"string","jsonPath":".status.lastRun.name"}"#,
    printcolumn = r#"{"name":"Verdict","type":"string","jsonPath":".status.lastRun.verdict"}"#,
    printcolumn = r#"{"name":"Last Schedule","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StressTestScheduleSpec {
    /// When runs start: a 5-field cron expression `minute hour day-of-month month day-of-week`
    /// with `*`, ranges (`1-5`), lists (`1,15`), steps (`*/15`, `0-30/10`) and names (`JAN`,
    /// `MON-FRI`), or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. When both
    /// day-of-month and day-of-week are restricted, a day matching either fires (as in cron).
    pub schedule: String,
    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`. A time the clock skips
    /// (DST start) fires after the jump (02:30 → 03:30); a time that happens twice (DST end)
    /// fires once, unless the hour field is `*`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// The StressTest each run creates.
    pub template: StressTestTemplate,
    /// What happens when an instant comes while a run is still active: `Forbid` skips the
    /// instant, `Replace` deletes the active run and starts the new one.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Finished runs with phase Succeeded to keep; older ones are deleted.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0))]
    pub successful_runs_history_limit: u32,
    /// Finished runs with phase Failed to keep; older ones are deleted.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0))]
    pub failed_runs_history_limit: u32,
    /// Start no new runs (active runs continue).
    #[serde(default)]
    pub suspend: bool,
    /// Seconds after its instant a run may still start; an instant missed by more (controller
    /// down, Forbid) is skipped. Unset: a missed instant starts as soon as it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<u64>,
    /// When a finished run counts as a regression against the last successful run. A limit that
    /// is not set is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionGate>,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}
fn default_successful_history() -> u32 {
    3
}
fn default_failed_history() -> u32 {
    1
}

/// The StressTest a run creates.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StressTestTemplate {
    /// Labels and annotations of each run.
    #[serde(default, skip_serializing_if = "TemplateMetadata::is_empty")]
    pub metadata: TemplateMetadata,
    /// The spec of each run (see the StressTest reference).
    pub spec: StressTestSpec,
}

/// Labels and annotations copied to each run.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels of each run (the controller adds `stampede.dev/schedule`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of each run (the controller adds `stampede.dev/scheduled-time`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl TemplateMetadata {
    /// No labels and no annotations.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

/// What happens when an instant comes while a run is still active.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip the instant (an Event and status.lastSkipped say so).
    #[default]
    Forbid,
    /// Delete the active run and start the new one.
    Replace,
}

/// Limits beyond which a finished run is a regression against the last successful run.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegressionGate {
    /// Largest acceptable drop of the QPS at SLA (status.sla.capacityAtSlaQps; the peak QPS when
    /// the template sets no SLA), in percent of the baseline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_qps_drop_percent: Option<f64>,
    /// Largest acceptable rise of the P99 latency (status.totals.p99Ms), in percent of the
    /// baseline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_increase_percent: Option<f64>,
    /// Largest acceptable drop of recall (status.recall), absolute: 0.02 allows 0.95 → 0.93.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recall_drop: Option<f64>,
    /// Finished runs kept in status.trend.
    #[serde(default = "default_trend_length")]
    #[schemars(range(min = 1))]
    pub trend_length: u32,
}

impl Default for RegressionGate {
    fn default() -> Self {
        RegressionGate {
            max_qps_drop_percent: None,
            max_p99_increase_percent: None,
            max_recall_drop: None,
            trend_length: default_trend_length(),
        }
    }
}

fn default_trend_length() -> u32 {
    10
}

/// Observed state of a StressTestSchedule.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StressTestScheduleStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The instant of the last run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The last instant skipped, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped: Option<SkippedStatus>,
    /// When the next run is due (absent while suspended or invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The most recent run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunSummary>,
    /// The most recent run that Succeeded: the baseline of the next comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_run: Option<RunSummary>,
    /// Names of the runs not finished yet.
    #[serde(default)]
    pub active: Vec<String>,
    /// The last spec.regression.trendLength finished runs, oldest first.
    #[serde(default)]
    pub trend: Vec<TrendPoint>,
    /// Standard conditions, by type: Ready (the spec is valid), Regressed (the last compared
    /// run regressed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A skipped instant.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedStatus {
    /// The instant.
    pub time: Time,
    /// Why: ConcurrencyForbid, MissedDeadline or Suspended.
    pub reason: String,
    /// A sentence naming the run that blocked it or the delay.
    pub message: String,
}

/// One run in the schedule's status.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Name of the StressTest.
    pub name: String,
    /// Its scheduled instant.
    pub scheduled_time: Time,
    /// Its phase (Pending until its controller writes one).
    #[serde(default)]
    pub phase: Phase,
    /// QPS at SLA (peak QPS without an SLA), requests/s, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps: Option<f64>,
    /// P99 latency over the run, ms, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Mean recall@k, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    /// The regression verdict, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// One finished run in the trend.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrendPoint {
    /// Name of the StressTest.
    pub name: String,
    /// Its scheduled instant.
    pub time: Time,
    /// Succeeded or Failed.
    pub phase: Phase,
    /// QPS at SLA (peak QPS without an SLA), requests/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps_at_sla: Option<f64>,
    /// P99 latency over the run, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Mean recall@k, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    /// Its regression verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// The outcome of comparing a finished run with the last successful one.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    /// At least one metric is beyond spec.regression's limit.
    Regressed,
    /// Every gated metric is within its limit.
    NoRegression,
    /// No earlier run succeeded: this one becomes the baseline.
    NoBaseline,
    /// The run failed: nothing to compare.
    NotCompared,
}

impl Verdict {
    /// The name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Regressed => "Regressed",
            Verdict::NoRegression => "NoRegression",
            Verdict::NoBaseline => "NoBaseline",
            Verdict::NotCompared => "NotCompared",
        }
    }
}

/// The regression verdict of a scheduled run, written to the run's status.regression.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegressionStatus {
    /// Regressed, NoRegression, NoBaseline or NotCompared.
    pub verdict: Verdict,
    /// The run compared against: the last successful run of the schedule before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// A sentence naming each regressed metric, by how much, against which run.
    pub message: String,
    /// Each compared metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<RegressionCheck>,
}

/// One metric against the baseline.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegressionCheck {
    /// qpsAtSla, p99Ms or recall.
    pub metric: String,
    /// The baseline run's value.
    pub baseline: f64,
    /// This run's value.
    pub observed: f64,
    /// Change from the baseline: percent for qpsAtSla and p99Ms (negative is a drop), absolute
    /// for recall.
    pub change: f64,
    /// The limit from spec.regression (absent: not gated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// Beyond the limit.
    pub regressed: bool,
}

/// Condition types, reasons and Event reasons of a StressTestSchedule: use these, never ad-hoc
/// strings.
pub mod conditions {
    /// The spec is valid and the schedule runs.
    pub const READY: &str = "Ready";
    /// The last compared run regressed against its baseline.
    pub const REGRESSED: &str = "Regressed";

    /// Reasons (conditions, Events and status.lastSkipped).
    pub mod reasons {
        /// The spec has field errors; nothing runs until it changes.
        pub const INVALID_SPEC: &str = "InvalidSpec";
        /// The spec is valid; runs start on schedule.
        pub const SCHEDULED: &str = "Scheduled";
        /// spec.suspend is true.
        pub const SUSPENDED: &str = "Suspended";
        /// A run regressed (also the Event reason).
        pub const REGRESSED: &str = "Regressed";
        /// A run did not regress (also the Event reason).
        pub const NO_REGRESSION: &str = "NoRegression";
        /// The first successful run: nothing to compare yet (also the Event reason).
        pub const NO_BASELINE: &str = "NoBaseline";
        /// No finished run compared yet.
        pub const NO_RUN_YET: &str = "NoRunYet";
        /// Event: a run was started.
        pub const STARTED_RUN: &str = "StartedRun";
        /// Event: an active run was deleted for a new one (Replace).
        pub const REPLACED_RUN: &str = "ReplacedRun";
        /// Event: a finished run was deleted by a history limit.
        pub const DELETED_RUN: &str = "DeletedRun";
        /// Event and skip reason: an instant came while a run was active (Forbid).
        pub const CONCURRENCY_FORBID: &str = "ConcurrencyForbid";
        /// Event and skip reason: an instant was missed by more than startingDeadlineSeconds.
        pub const MISSED_DEADLINE: &str = "MissedDeadline";
        /// Event: a run failed, so it was not compared.
        pub const RUN_FAILED: &str = "RunFailed";
    }
}

/// Label on every run: the name of its schedule.
pub const LABEL_SCHEDULE: &str = "stampede.dev/schedule";
/// Annotation on every run: its scheduled instant, seconds since the Unix epoch.
pub const ANNOTATION_SCHEDULED_TIME: &str = "stampede.dev/scheduled-time";
/// Longest schedule name: a run's name adds `-` and ten digits and must stay a valid name.
pub const MAX_SCHEDULE_NAME: usize = 52;

/// Checks a schedule for every problem at once (pure). Empty means valid.
pub fn validate(name: &str, spec: &StressTestScheduleSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |path: &str, message: String| {
        errors.push(FieldError {
            path: path.to_string(),
            message,
        })
    };
    if name.len() > MAX_SCHEDULE_NAME {
        err(
            "metadata.name",
            format!(
                "at most {MAX_SCHEDULE_NAME} characters (runs are named `<schedule>-<unix time>`), not {}",
                name.len()
            ),
        );
    }
    if let Err(e) = super::cron::Cron::parse(&spec.schedule) {
        err("spec.schedule", e.to_string());
    }
    if let Err(e) = super::cron::time_zone(&spec.time_zone) {
        err("spec.timeZone", e);
    }
    if let Some(gate) = &spec.regression {
        for (path, value) in [
            (
                "spec.regression.maxQpsDropPercent",
                gate.max_qps_drop_percent,
            ),
            (
                "spec.regression.maxP99IncreasePercent",
                gate.max_p99_increase_percent,
            ),
            ("spec.regression.maxRecallDrop", gate.max_recall_drop),
        ] {
            if let Some(v) = value
                && !(v.is_finite() && v >= 0.0)
            {
                err(path, format!("must be a non-negative number, not {v}"));
            }
        }
        if gate.max_qps_drop_percent.is_some_and(|v| v > 100.0) {
            err(
                "spec.regression.maxQpsDropPercent",
                "at most 100 (a drop of more than 100 % is impossible)".to_string(),
            );
        }
        if gate.trend_length == 0 {
            err("spec.regression.trendLength", "must be at least 1".into());
        }
    }
    for e in crate::spec::validate(&spec.template.spec) {
        let path = match e.path.strip_prefix("spec.") {
            Some(rest) => format!("spec.template.spec.{rest}"),
            None => format!("spec.template.{}", e.path),
        };
        err(&path, e.message);
    }
    errors
}

/// Parses a StressTestSchedule manifest from YAML text (pure, as `stampede validate` does for a
/// StressTest): unknown fields and validation errors all at once, parse errors with line and
/// column. The errors are [`crate::spec::SpecError`]s, whose messages name the field path.
pub fn parse_manifest(
    text: &str,
    origin: &str,
) -> Result<StressTestSchedule, crate::spec::SpecError> {
    use crate::spec::SpecError;
    let mut unknown = Vec::new();
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let parsed: Result<StressTestSchedule, _> = serde_ignored::deserialize(de, |path| {
        unknown.push(path.to_string());
    });
    let schedule = parsed.map_err(|e| SpecError::Parse {
        path: origin.to_string(),
        message: match e.location() {
            Some(loc) if !e.to_string().contains("line") => {
                format!("line {} column {}: {e}", loc.line(), loc.column())
            }
            _ => e.to_string(),
        },
    })?;
    let mut errors: Vec<FieldError> = unknown
        .into_iter()
        .filter(|p| {
            !(p == "status" || p.starts_with("status.") || p == "apiVersion" || p == "kind")
        })
        .map(|path| FieldError {
            path,
            message: "unknown field (check its spelling and indentation against README \"StressTestSchedule reference\")".to_string(),
        })
        .collect();
    let name = schedule.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(FieldError {
            path: "metadata.name".to_string(),
            message: "a StressTestSchedule needs a name".to_string(),
        });
    }
    let value: Option<serde_yaml_ng::Value> = serde_yaml_ng::from_str(text).ok();
    let top = |key: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let api_version = top("apiVersion");
    if api_version != format!("{}/v1alpha1", crate::spec::GROUP) {
        errors.push(FieldError {
            path: "apiVersion".to_string(),
            message: format!(
                "expected `{}/v1alpha1`, found `{api_version}`",
                crate::spec::GROUP
            ),
        });
    }
    let kind = top("kind");
    if kind != "StressTestSchedule" {
        errors.push(FieldError {
            path: "kind".to_string(),
            message: format!("expected `StressTestSchedule`, found `{kind}`"),
        });
    }
    errors.extend(validate(&name, &schedule.spec));
    if errors.is_empty() {
        Ok(schedule)
    } else {
        Err(SpecError::Invalid {
            path: origin.to_string(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/schedule.yaml");

    #[test]
    fn the_example_schedule_parses_with_its_values() {
        let s = parse_manifest(EXAMPLE, "schedule.yaml").unwrap();
        assert_eq!(s.spec.schedule, "0 2 * * *");
        assert_eq!(s.spec.time_zone, "Europe/Berlin");
        assert_eq!(s.spec.concurrency_policy, ConcurrencyPolicy::Forbid);
        let gate = s.spec.regression.unwrap();
        assert_eq!(gate.max_qps_drop_percent, Some(10.0));
        assert_eq!(gate.max_p99_increase_percent, Some(20.0));
        assert_eq!(gate.max_recall_drop, Some(0.02));
        assert_eq!(s.spec.template.spec.collection.dimension, 128);
    }

    #[test]
    fn defaults_are_utc_forbid_three_and_one_runs_kept_not_suspended() {
        let s = parse_manifest(
            "apiVersion: stampede.dev/v1alpha1\nkind: StressTestSchedule\nmetadata: {name: n}\nspec:\n  schedule: '@daily'\n  template:\n    spec:\n      target: {address: 'm:19530'}\n      collection: {name: c, dimension: 8}\n      stages: [{duration: 10s, users: 1, spawnRate: 1}]\n",
            "x.yaml",
        )
        .unwrap();
        assert_eq!(s.spec.time_zone, "UTC");
        assert_eq!(s.spec.concurrency_policy, ConcurrencyPolicy::Forbid);
        assert_eq!(
            (
                s.spec.successful_runs_history_limit,
                s.spec.failed_runs_history_limit
            ),
            (3, 1)
        );
        assert!(!s.spec.suspend);
        assert_eq!(s.spec.starting_deadline_seconds, None);
        assert_eq!(s.spec.regression, None);
    }

    #[test]
    fn unknown_and_invalid_fields_are_reported_with_their_paths() {
        let text = EXAMPLE
            .replace(
                "timeZone: Europe/Berlin",
                "timeZone: Europe/Berlin\n  timezone: UTC",
            )
            .replace("\"0 2 * * *\"", "\"0 2 * * * *\"")
            .replace("maxRecallDrop: 0.02", "maxRecallDrop: -1")
            .replace("dimension: 128", "dimension: 0");
        let Err(crate::spec::SpecError::Invalid { errors, .. }) = parse_manifest(&text, "x.yaml")
        else {
            panic!("expected invalid");
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.timezone",
                "spec.schedule",
                "spec.regression.maxRecallDrop",
                "spec.template.spec.collection.dimension"
            ]
        );
        assert_eq!(
            errors[1].message,
            "`0 2 * * * *`: has 6 fields; a schedule has 5: minute hour day-of-month month day-of-week (e.g. `0 2 * * *`)"
        );
    }
}
