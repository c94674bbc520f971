//! The controller's Prometheus metrics: counters it bumps as it works and per-test gauges taken
//! from the status it writes. Rendered by hand in the text exposition format (version 0.0.4):
//! a handful of series need no client library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::spec::{Phase, StressTestStatus};

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one test shows in the gauges.
#[derive(Clone, Debug, Default, PartialEq)]
struct TestGauges {
    phase: Option<Phase>,
    stage: Option<String>,
    qps: Option<f64>,
    p95_seconds: Option<f64>,
    p99_seconds: Option<f64>,
}

/// Counters and gauges of one controller process.
#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    reconcile_errors: AtomicU64,
    status_writes: AtomicU64,
    leader: AtomicBool,
    tests: Mutex<BTreeMap<(String, String), TestGauges>>,
}

impl Metrics {
    /// A reconcile ran (successfully or not).
    pub fn reconciled(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
    }

    /// A reconcile failed.
    pub fn reconcile_failed(&self) {
        self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A status was written.
    pub fn status_written(&self) {
        self.status_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Status writes so far.
    pub fn status_writes(&self) -> u64 {
        self.status_writes.load(Ordering::Relaxed)
    }

    /// Whether this process holds the leader Lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Records the status of a test as last written or read.
    pub fn observe_test(&self, namespace: &str, name: &str, status: &StressTestStatus) {
        let gauges = TestGauges {
            phase: status.phase,
            stage: status.current_stage.clone(),
            qps: status.totals.as_ref().map(|t| t.qps),
            p95_seconds: status.totals.as_ref().map(|t| t.p95_ms / 1000.0),
            p99_seconds: status.totals.as_ref().map(|t| t.p99_ms / 1000.0),
        };
        if let Ok(mut tests) = self.tests.lock() {
            tests.insert((namespace.to_string(), name.to_string()), gauges);
        }
    }

    /// Forgets a deleted test.
    pub fn forget_test(&self, namespace: &str, name: &str) {
        if let Ok(mut tests) = self.tests.lock() {
            tests.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "stampede_reconciles_total",
            "Reconciles of StressTests, successful or not.",
            self.reconciles.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "stampede_reconcile_errors_total",
            "Reconciles that failed (retried with backoff).",
            self.reconcile_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "stampede_status_writes_total",
            "Writes of a StressTest's status.",
            self.status_writes.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP stampede_leader 1 when this controller holds the leader Lease (or runs without leader election).\n# TYPE stampede_leader gauge\nstampede_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        let tests = match self.tests.lock() {
            Ok(t) => t.clone(),
            Err(_) => BTreeMap::new(),
        };
        let mut by_phase: BTreeMap<&'static str, u64> = [
            "Pending",
            "Preparing",
            "Running",
            "Analyzing",
            "Succeeded",
            "Failed",
        ]
        .into_iter()
        .map(|p| (p, 0))
        .collect();
        for g in tests.values() {
            *by_phase.entry(phase_name(g.phase)).or_insert(0) += 1;
        }
        let running = tests
            .values()
            .filter(|g| {
                matches!(
                    g.phase,
                    Some(Phase::Preparing | Phase::Running | Phase::Analyzing)
                )
            })
            .count();
        let _ = writeln!(
            out,
            "# HELP stampede_running_tests StressTests preparing, running or being analysed.\n# TYPE stampede_running_tests gauge\nstampede_running_tests {running}"
        );
        let _ = writeln!(
            out,
            "# HELP stampede_tests StressTests known to this controller, by phase.\n# TYPE stampede_tests gauge"
        );
        for (phase, n) in &by_phase {
            let _ = writeln!(out, "stampede_tests{{phase=\"{phase}\"}} {n}");
        }
        let gauge = |out: &mut String,
                     name: &str,
                     help: &str,
                     pick: &dyn Fn(&TestGauges) -> Option<f64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for ((ns, n), g) in &tests {
                if let Some(v) = pick(g) {
                    let _ = writeln!(
                        out,
                        "{name}{{namespace=\"{}\",name=\"{}\",stage=\"{}\"}} {}",
                        escape(ns),
                        escape(n),
                        escape(g.stage.as_deref().unwrap_or("")),
                        number(v)
                    );
                }
            }
        };
        gauge(
            &mut out,
            "stampede_test_qps",
            "Requests per second of a test: live over the last seconds while it runs, the steady-state total when it ended.",
            &|g| g.qps,
        );
        gauge(
            &mut out,
            "stampede_test_p95_seconds",
            "95th percentile latency of a test's successful requests (live while it runs, total when it ended).",
            &|g| g.p95_seconds,
        );
        gauge(
            &mut out,
            "stampede_test_p99_seconds",
            "99th percentile latency of a test's successful requests (live while it runs, total when it ended).",
            &|g| g.p99_seconds,
        );
        out
    }
}

fn phase_name(phase: Option<Phase>) -> &'static str {
    match phase {
        None | Some(Phase::Pending) => "Pending",
        Some(Phase::Preparing) => "Preparing",
        Some(Phase::Running) => "Running",
        Some(Phase::Analyzing) => "Analyzing",
        Some(Phase::Succeeded) => "Succeeded",
        Some(Phase::Failed) => "Failed",
    }
}

/// A label value escaped per the exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".to_string()
    } else if v > 0.0 {
        "+Inf".to_string()
    } else {
        "-Inf".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TotalsStatus;

    fn running(qps: f64, p95_ms: f64) -> StressTestStatus {
        StressTestStatus {
            phase: Some(Phase::Running),
            current_stage: Some("2/3 (16 users)".to_string()),
            totals: Some(TotalsStatus {
                qps,
                p95_ms,
                p99_ms: p95_ms * 2.0,
                ..TotalsStatus::default()
            }),
            ..StressTestStatus::default()
        }
    }

    #[test]
    fn counters_and_gauges_render_in_the_exposition_format() {
        let m = Metrics::default();
        m.reconciled();
        m.reconciled();
        m.reconcile_failed();
        m.status_written();
        m.set_leader(true);
        m.observe_test("team-a", "nightly", &running(812.5, 12.0));
        let text = m.render();
        assert!(text.contains("stampede_reconciles_total 2\n"), "{text}");
        assert!(
            text.contains("stampede_reconcile_errors_total 1\n"),
            "{text}"
        );
        assert!(text.contains("stampede_status_writes_total 1\n"), "{text}");
        assert!(text.contains("stampede_leader 1\n"), "{text}");
        assert!(text.contains("stampede_running_tests 1\n"), "{text}");
        assert!(
            text.contains("stampede_tests{phase=\"Running\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "stampede_test_qps{namespace=\"team-a\",name=\"nightly\",stage=\"2/3 (16 users)\"} 812.5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "stampede_test_p95_seconds{namespace=\"team-a\",name=\"nightly\",stage=\"2/3 (16 users)\"} 0.012\n"
            ),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
        }
    }

    #[test]
    fn a_finished_test_leaves_the_running_count_and_a_forgotten_one_leaves_the_gauges() {
        let m = Metrics::default();
        m.observe_test("ns", "a", &running(10.0, 1.0));
        let mut done = running(10.0, 1.0);
        done.phase = Some(Phase::Succeeded);
        m.observe_test("ns", "a", &done);
        assert!(m.render().contains("stampede_running_tests 0\n"));
        assert!(
            m.render()
                .contains("stampede_tests{phase=\"Succeeded\"} 1\n")
        );
        m.forget_test("ns", "a");
        assert!(!m.render().contains("name=\"a\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
