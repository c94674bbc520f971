//! The live web dashboard (`stampede run --ui`, and the controller's dashboard).
//!
//! One read-only HTTP server ([`serve`]) over a [`TestSource`]: the local run implements it with
//! [`local::LocalSource`] (the running test plus the results saved next to its output
//! directory), the controller with its StressTests' statuses and report ConfigMaps. Pages are
//! rendered on the server, charts are SVG drawn by [`crate::chart`] (the module report.html
//! uses), and a test's page refreshes itself every second with a small inline script; nothing
//! is loaded from the network (no CDN, works air-gapped).
//!
//! # Endpoints
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /` | list page: every test with phase, stage, QPS, P95, P99, errors, SLA; a compare form |
//! | `GET /tests/{ns}/{name}` | test page (locally `ns` is `local`), live while the test runs |
//! | `GET /tests/{ns}/{name}/fragment` | the test page's sections (HTML), what the page polls |
//! | `GET /tests/{ns}/{name}/{file}` | a download: `result.json`, `report.html`, `{prefix}_stats.csv`, `{prefix}_stats_history.csv`, `{prefix}_failures.csv` |
//! | `GET /compare?a={ns}/{name}&b={ns}/{name}` | two runs side by side: per-stage QPS and latency deltas, SLA verdicts |
//! | `GET /api/tests` | JSON array of [`TestSummary`] |
//! | `GET /api/tests/{ns}/{name}` | JSON [`TestDetail`]: phase, live figures, per-second series, stages, operations, failures, SLA, saturation, capacity, recall, downloads |
//! | `GET /api/tests/{ns}/{name}/charts/{kind}.svg` | chart `qps`, `latency`, `users` or `failures` as SVG |
//! | `GET /api/compare?a=…&b=…` | JSON [`compare::Comparison`] |
//!
//! An unknown test, file or chart is a 404 with a message (JSON under `/api`, a page
//! otherwise); a compare without `a` or `b` is a 400. JSON field names are camelCase; latency is
//! in milliseconds (`p95Ms`), throughput in requests per second (`qps`), ratios in 0..1.
//! No page or endpoint carries a secret: results never hold credentials, and addresses are
//! shown without any `user:password@` part.

pub mod charts;
pub mod compare;
pub mod local;
pub mod model;
pub mod pages;
pub mod server;

use std::future::Future;
use std::pin::Pin;

pub use model::{Download, LiveFigures, TestDetail, TestSummary};
pub use server::{router, serve};

/// A boxed future, as the methods of [`TestSource`] return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a source could not answer (e.g. the Kubernetes API is unreachable): a 503 with this
/// message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// Where the dashboard's tests come from.
pub trait TestSource: Send + Sync + 'static {
    /// Every test, in the order the list page shows them (newest first is a good order).
    fn list(&self) -> BoxFuture<'_, Result<Vec<TestSummary>, SourceError>>;

    /// One test; `Ok(None)` when there is no such test (a 404).
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<TestDetail>, SourceError>>;

    /// The bytes of a download named in [`TestDetail::downloads`]; `Ok(None)` when the test or
    /// file is unknown. By default there are no downloads.
    fn file<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        file: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, SourceError>> {
        let _ = (namespace, name, file);
        Box::pin(async { Ok(None) })
    }
}
