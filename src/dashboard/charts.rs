//! The dashboard's four timeline charts, drawn with the same chart module as report.html
//! ([`crate::chart`]): throughput, latency percentiles, load (users or rate, and requests in
//! flight) and failures, each with the stage boundaries marked.

use crate::chart::{LineChart, Marker, Series, Threshold, format_number};
use crate::result::SeriesPoint;

use super::model::TestDetail;

/// A timeline longer than this many points is drawn in buckets of several seconds (a chart
/// about 760 units wide cannot show more, and the page reloads the charts every second).
pub const MAX_POINTS: usize = 600;

/// The chart kinds of `GET /api/tests/{ns}/{name}/charts/{kind}.svg`.
pub const CHART_KINDS: [&str; 4] = ["qps", "latency", "users", "failures"];

const X_TITLE: &str = "time since start (s)";

/// One point of a drawn timeline (a second, or a bucket of seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    second: f64,
    qps: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    users: f64,
    in_flight: f64,
    failures: f64,
    error_pct: f64,
}

/// Renders chart `kind` (one of [`CHART_KINDS`]) as an `<svg>`; `None` for an unknown kind.
pub fn render(kind: &str, d: &TestDetail) -> Option<String> {
    let pts = points(&d.series);
    let markers = markers(d);
    let xy = |f: &dyn Fn(&Point) -> f64| -> Vec<(f64, f64)> {
        pts.iter().map(|p| (p.second, f(p))).collect()
    };
    let closed = d.model != "Open";
    let sla = d.spec.as_ref().and_then(|s| s.sla.as_ref());
    let mut c = match kind {
        "qps" => {
            let mut c = LineChart::new("Throughput", X_TITLE, "throughput (requests/s)");
            c.series
                .push(Series::new("QPS", xy(&|p| p.qps)).color("#2563eb"));
            if let Some(min) = sla.and_then(|s| s.min_qps) {
                c.thresholds.push(Threshold {
                    value: min,
                    label: format!("SLA QPS ≥ {}", format_number(min)),
                });
            }
            c
        }
        "latency" => {
            let mut c = LineChart::new("Latency", X_TITLE, "latency (ms)");
            c.series
                .push(Series::new("P50", xy(&|p| p.p50)).color("#16a34a"));
            c.series
                .push(Series::new("P95", xy(&|p| p.p95)).color("#d97706"));
            c.series
                .push(Series::new("P99", xy(&|p| p.p99)).color("#dc2626"));
            for (limit, name) in [
                (sla.and_then(|s| s.max_p95), "P95"),
                (sla.and_then(|s| s.max_p99), "P99"),
            ] {
                if let Some(limit) = limit {
                    let ms = limit.get().as_secs_f64() * 1000.0;
                    c.thresholds.push(Threshold {
                        value: ms,
                        label: format!("SLA {name} ≤ {} ms", format_number(ms)),
                    });
                }
            }
            c
        }
        "users" => {
            if closed {
                let mut c = LineChart::new("Load", X_TITLE, "users / requests in flight");
                c.series.push(
                    Series::new("users", xy(&|p| p.users))
                        .dashed()
                        .color("#111827"),
                );
                c.series
                    .push(Series::new("in flight (max)", xy(&|p| p.in_flight)).color("#7c3aed"));
                c
            } else {
                let mut c = LineChart::new("Load", X_TITLE, "arrival rate (requests/s)");
                c.y2_title = Some("requests in flight".to_string());
                c.series.push(
                    Series::new("target rate", xy(&|p| p.users))
                        .dashed()
                        .color("#111827"),
                );
                c.series.push(
                    Series::new("in flight (max)", xy(&|p| p.in_flight))
                        .on_right_axis()
                        .color("#7c3aed"),
                );
                c
            }
        }
        "failures" => {
            let mut c = LineChart::new("Failures", X_TITLE, "failed requests (per s)");
            c.y2_title = Some("failed share (%)".to_string());
            c.series
                .push(Series::new("failures", xy(&|p| p.failures)).color("#dc2626"));
            c.series.push(
                Series::new("failed share", xy(&|p| p.error_pct))
                    .on_right_axis()
                    .dashed()
                    .color("#6b7280"),
            );
            c
        }
        _ => return None,
    };
    c.markers = markers;
    c.height = 280.0;
    Some(c.render())
}

/// The series as drawn: missing seconds filled (no requests, no latency), seconds without a
/// successful request without latency (a gap, not a zero), and long series in buckets of
/// `ceil(n / MAX_POINTS)` seconds (throughput and failures averaged, latency and in-flight the
/// bucket's maximum, so a spike is never averaged away).
fn points(series: &[SeriesPoint]) -> Vec<Point> {
    let mut sorted: Vec<&SeriesPoint> = series.iter().collect();
    sorted.sort_by_key(|p| p.second);
    let (Some(first), Some(last)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    let span = (last.second - first.second + 1) as usize;
    let bucket = span.div_ceil(MAX_POINTS).max(1);
    let mut out: Vec<Point> = Vec::with_capacity(span.min(MAX_POINTS));
    let mut it = sorted.iter().peekable();
    let mut users = 0.0;
    let mut start = first.second;
    while start <= last.second {
        let end = start + bucket as u64;
        let (mut requests, mut failures) = (0u64, 0u64);
        let (mut p50, mut p95, mut p99, mut in_flight) = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
        let max = |a: f64, b: f64| if a.is_nan() { b } else { a.max(b) };
        while let Some(p) = it.next_if(|p| p.second < end) {
            requests += p.requests;
            failures += p.failures;
            users = p.users as f64;
            in_flight = max(in_flight, p.in_flight_max as f64);
            if p.requests > p.failures {
                p50 = max(p50, p.p50_ms);
                p95 = max(p95, p.p95_ms);
                p99 = max(p99, p.p99_ms);
            }
        }
        let seconds = (end.min(last.second + 1) - start) as f64;
        out.push(Point {
            second: start as f64,
            qps: requests as f64 / seconds,
            p50,
            p95,
            p99,
            users,
            in_flight,
            failures: failures as f64 / seconds,
            error_pct: if requests > 0 {
                failures as f64 / requests as f64 * 100.0
            } else {
                f64::NAN
            },
        });
        start = end;
    }
    out
}

/// Stage boundaries: the first second of each stage, labelled with its load.
fn markers(d: &TestDetail) -> Vec<Marker> {
    let mut markers: Vec<Marker> = Vec::new();
    let mut sorted: Vec<&SeriesPoint> = d.series.iter().collect();
    sorted.sort_by_key(|p| p.second);
    let mut seen = std::collections::BTreeSet::new();
    for p in sorted {
        if !seen.insert(p.stage) {
            continue;
        }
        let load = d
            .spec
            .as_ref()
            .and_then(|s| s.stages.get(p.stage))
            .and_then(|s| match (s.users, s.rate) {
                (Some(u), _) => Some(format!(" · {}", super::model::users_words(u.into()))),
                (None, Some(r)) => Some(format!(" · {}/s", format_number(r))),
                _ => None,
            })
            .unwrap_or_default();
        markers.push(Marker {
            x: p.second as f64,
            label: format!("stage {}{load}", p.stage + 1),
        });
    }
    markers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Phase;

    fn point(second: u64, stage: usize, requests: u64, failures: u64) -> SeriesPoint {
        SeriesPoint {
            second,
            stage,
            users: 4,
            requests,
            failures,
            p50_ms: 1.0 + second as f64,
            p95_ms: 2.0 + second as f64,
            p99_ms: 3.0 + second as f64,
            in_flight_max: 4,
        }
    }

    #[test]
    fn missing_seconds_are_filled_with_zero_throughput_and_no_latency() {
        let pts = points(&[point(3, 0, 10, 0), point(5, 1, 20, 20)]);
        assert_eq!(pts.len(), 3);
        assert_eq!(pts[1].second, 4.0);
        assert_eq!(pts[1].qps, 0.0);
        assert!(pts[1].p95.is_nan());
        assert!(
            pts[2].p95.is_nan(),
            "a second of only failures has no latency"
        );
        assert_eq!(pts[2].error_pct, 100.0);
    }

    #[test]
    fn a_long_series_is_drawn_in_buckets_that_keep_the_latency_peaks() {
        let series: Vec<SeriesPoint> = (0..1800).map(|s| point(s, 0, 10, 1)).collect();
        let pts = points(&series);
        assert_eq!(pts.len(), 600);
        assert_eq!(pts[0].qps, 10.0);
        assert_eq!(pts[0].p99, 3.0 + 2.0, "the bucket's highest P99");
        assert!((pts[0].failures - 1.0).abs() < 1e-9);
    }

    #[test]
    fn every_chart_kind_renders_with_units_and_stage_markers() {
        let mut d = TestDetail::new("local", "t", Phase::Running, None);
        d.series = (0..10).map(|s| point(s, (s / 5) as usize, 10, 0)).collect();
        for kind in CHART_KINDS {
            let svg = render(kind, &d).unwrap();
            assert!(svg.contains("time since start (s)"), "{kind}");
            assert_eq!(svg.matches("class=\"marker\"").count(), 2, "{kind}");
            assert!(svg.contains("data-points=\"10\""), "{kind}");
        }
        assert!(render("cpu", &d).is_none());
    }
}
