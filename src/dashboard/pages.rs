//! The dashboard's HTML: list page, test page (and the sections it polls), compare page, error
//! page. Rendered on the server; the charts are the SVG of [`super::charts`].

use std::fmt::Write as _;

use crate::analysis::StageSummary;
use crate::chart::{CategoryChart, CategorySeries, CategoryStyle, escape, format_number};
use crate::spec::{Phase, SlaVerdictLabel};

use super::charts;
use super::compare::Comparison;
use super::model::{TestDetail, TestSummary, stage_label, users_words};
use super::server::enc;

/// Writes into a `String`; `fmt::Write` for `String` never fails.
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {
        let _ = write!($dst, $($arg)*);
    };
}

const CSS: &str = r#"
:root{--fg:#111827;--muted:#4b5563;--line:#e5e7eb;--bg:#f9fafb;--ok:#15803d;--bad:#b91c1c;--warn:#b45309;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header.top{background:#111827;color:#fff;padding:8px 20px;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
header.top a{color:#fff;text-decoration:none;font-weight:600}
header.top .refresh{margin-left:auto;font-size:12px;color:#d1d5db}
main{max-width:1240px;margin:0 auto;padding:12px 20px 40px}
h1{font-size:22px;margin:8px 0 4px}
h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
section{margin-bottom:8px}
.sub{color:var(--muted);margin:0 0 8px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;background:#e5e7eb;color:var(--fg);vertical-align:middle}
.badge.Running,.badge.Preparing,.badge.Analyzing{background:#dbeafe;color:#1e40af}
.badge.Succeeded,.badge.PASS{background:#dcfce7;color:var(--ok)}
.badge.Failed,.badge.FAIL{background:#fee2e2;color:var(--bad)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px;margin:10px 0}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px 10px}
.card .label{font-size:12px;color:var(--muted)}
.card .value{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
.card .unit{font-size:12px;color:var(--muted);margin-left:3px}
.progress{height:8px;background:#e5e7eb;border-radius:4px;overflow:hidden;max-width:560px}
.progress>div{height:100%;background:var(--accent)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:10px}
figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:6px;padding:4px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600;font-size:13px;white-space:nowrap}
td.num,th.num{text-align:right;white-space:nowrap}
tr.running td{background:#eff6ff}
tr.invalid td{color:var(--muted)}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}.warn{color:var(--warn)}
.verdict{font-size:20px;font-weight:700;padding:8px 12px;border-radius:6px;display:inline-block}
.verdict.pass{background:#dcfce7;color:var(--ok)}.verdict.fail{background:#fee2e2;color:var(--bad)}
code{font-size:12px;background:#f3f4f6;padding:1px 3px;border-radius:3px;word-break:break-word}
form.compare{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin:12px 0}
select,button{font:inherit;padding:3px 6px}
.better{color:var(--ok)}.worse{color:var(--bad)}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
"#;

/// The page around `body`.
fn document(title: &str, refresh_note: &str, body: &str, script: &str) -> String {
    let mut out = String::with_capacity(body.len() + CSS.len() + script.len() + 600);
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><link rel=\"icon\" href=\"data:,\"><title>{} · Stampede</title><style>{CSS}</style></head><body><header class=\"top\"><a href=\"/\">Stampede dashboard</a><a href=\"/api/tests\">JSON API</a><span class=\"refresh\" id=\"refresh\" aria-live=\"polite\">{}</span></header><main>{body}</main>",
        escape(title),
        escape(refresh_note)
    );
    if !script.is_empty() {
        w!(out, "<script>{script}</script>");
    }
    out.push_str("</body></html>\n");
    out
}

/// Milliseconds with sensible precision: `0.42`, `8.31`, `42.5`, `318`; `–` when not finite.
pub fn fmt_ms(v: f64) -> String {
    if !v.is_finite() {
        "–".to_string()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Requests per second: `3.25`, `42.1`, `1234`.
pub fn fmt_qps(v: f64) -> String {
    if !v.is_finite() {
        "–".to_string()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A ratio as a percentage: `0 %`, `0.012 %`, `1.25 %`, `12.5 %`.
pub fn fmt_pct(ratio: f64) -> String {
    let p = ratio * 100.0;
    if !p.is_finite() {
        "–".to_string()
    } else if p == 0.0 {
        "0 %".to_string()
    } else if p < 0.1 {
        format!("{p:.3} %")
    } else if p < 10.0 {
        format!("{p:.2} %")
    } else {
        format!("{p:.1} %")
    }
}

fn fmt_opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "–".to_string(), f)
}

fn fmt_recall(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |r| format!("{r:.3}"))
}

fn badge(phase: Phase) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", phase.as_str())
}

fn sla_cell(s: Option<SlaVerdictLabel>) -> String {
    match s {
        Some(SlaVerdictLabel::Pass) => "<span class=\"badge PASS\">PASS</span>".to_string(),
        Some(SlaVerdictLabel::Fail) => "<span class=\"badge FAIL\">FAIL</span>".to_string(),
        None => "–".to_string(),
    }
}

fn test_url(ns: &str, name: &str) -> String {
    format!("/tests/{}/{}", enc(ns), enc(name))
}

fn table(out: &mut String, head: &[(&str, bool)], rows: &[(Vec<String>, &str)]) {
    out.push_str("<div class=\"scroll\"><table><thead><tr>");
    for (h, num) in head {
        w!(
            out,
            "<th scope=\"col\"{}>{h}</th>",
            if *num { " class=\"num\"" } else { "" }
        );
    }
    out.push_str("</tr></thead><tbody>");
    for (cells, class) in rows {
        if class.is_empty() {
            out.push_str("<tr>");
        } else {
            w!(out, "<tr class=\"{class}\">");
        }
        for (i, c) in cells.iter().enumerate() {
            let num = head.get(i).is_some_and(|h| h.1);
            w!(
                out,
                "<td{}>{c}</td>",
                if num { " class=\"num\"" } else { "" }
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}

// ---------------------------------------------------------------------------------------------
// List page

/// The `<tbody>` rows of the list (what the list page polls while a test runs).
pub fn list_rows(tests: &[TestSummary]) -> String {
    let mut out = String::new();
    let running = tests.iter().any(|t| !t.phase.is_finished());
    w!(out, "<tbody id=\"rows\" data-running=\"{running}\">");
    if tests.is_empty() {
        out.push_str("<tr><td colspan=\"9\">No tests yet.</td></tr>");
    }
    for t in tests {
        w!(
            out,
            "<tr data-test=\"{}/{}\"><td><a href=\"{}\">{}/{}</a></td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&t.namespace),
            escape(&t.name),
            test_url(&t.namespace, &t.name),
            escape(&t.namespace),
            escape(&t.name),
            badge(t.phase),
            escape(t.current_stage.as_deref().unwrap_or("–")),
            fmt_opt(t.qps, fmt_qps),
            fmt_opt(t.p95_ms, fmt_ms),
            fmt_opt(t.p99_ms, fmt_ms),
            fmt_opt(t.error_ratio, fmt_pct),
            sla_cell(t.sla),
            escape(t.started_at.as_deref().unwrap_or("–")),
        );
    }
    out.push_str("</tbody>");
    out
}

const LIST_SCRIPT: &str = r#"
(function(){
  const note=document.getElementById('refresh');
  async function tick(){
    const rows=document.getElementById('rows');
    if(!rows||rows.dataset.running!=='true'){note.textContent='';return;}
    try{
      const r=await fetch('/?part=rows',{cache:'no-store'});
      if(!r.ok)throw new Error('HTTP '+r.status);
      const t=document.createElement('template');t.innerHTML=(await r.text()).trim();
      const next=t.content.querySelector('tbody');
      if(next){rows.replaceWith(next);}
      note.textContent='live · updated '+new Date().toLocaleTimeString();
    }catch(e){note.textContent='connection lost, retrying ('+e.message+')';}
    setTimeout(tick,2000);
  }
  setTimeout(tick,2000);
})();
"#;

/// `GET /`: every test, and a form to compare two of them.
pub fn list_page(tests: &[TestSummary]) -> String {
    let mut body = String::from("<h1>Tests</h1>");
    body.push_str("<p class=\"sub\">QPS and latency are over every stage's steady state once a test has finished, and over the last seconds while it runs.</p>");
    body.push_str("<div class=\"scroll\"><table><thead><tr><th scope=\"col\">test</th><th scope=\"col\">phase</th><th scope=\"col\">stage</th><th scope=\"col\" class=\"num\">QPS (requests/s)</th><th scope=\"col\" class=\"num\">P95 (ms)</th><th scope=\"col\" class=\"num\">P99 (ms)</th><th scope=\"col\" class=\"num\">errors</th><th scope=\"col\">SLA</th><th scope=\"col\">started</th></tr></thead>");
    body.push_str(&list_rows(tests));
    body.push_str("</table></div>");
    if tests.len() >= 2 {
        body.push_str("<h2>Compare two runs</h2><form class=\"compare\" action=\"/compare\" method=\"get\"><label>baseline (a) <select name=\"a\">");
        for (i, t) in tests.iter().enumerate() {
            let v = escape(&format!("{}/{}", t.namespace, t.name));
            w!(
                body,
                "<option value=\"{v}\"{}>{v}</option>",
                if i == 1 { " selected" } else { "" }
            );
        }
        body.push_str("</select></label><label>compared (b) <select name=\"b\">");
        for (i, t) in tests.iter().enumerate() {
            let v = escape(&format!("{}/{}", t.namespace, t.name));
            w!(
                body,
                "<option value=\"{v}\"{}>{v}</option>",
                if i == 0 { " selected" } else { "" }
            );
        }
        body.push_str("</select></label><button type=\"submit\">compare</button></form>");
    }
    document("Tests", "", &body, LIST_SCRIPT)
}

// ---------------------------------------------------------------------------------------------
// Test page

const TEST_SCRIPT: &str = r#"
(function(){
  const box=document.getElementById('sections');
  const note=document.getElementById('refresh');
  let failures=0;
  async function tick(){
    const cur=document.getElementById('sections');
    if(cur.dataset.finished==='true'){note.textContent='final results';return;}
    try{
      const r=await fetch(box.dataset.fragment,{cache:'no-store'});
      if(!r.ok)throw new Error('HTTP '+r.status);
      const t=document.createElement('template');t.innerHTML=(await r.text()).trim();
      const next=t.content.firstElementChild;
      if(next&&next.id==='sections'){
        const oldIds=[...cur.children].map(e=>e.id).join(' ');
        const newIds=[...next.children].map(e=>e.id).join(' ');
        if(oldIds!==newIds){cur.replaceWith(next);}
        else{
          [...next.children].forEach(function(n){
            const o=document.getElementById(n.id);
            if(o&&o.outerHTML!==n.outerHTML){o.replaceWith(n);}
          });
          for(const k in next.dataset){cur.dataset[k]=next.dataset[k];}
        }
        document.title=next.dataset.title||document.title;
      }
      failures=0;
      if(document.getElementById('sections').dataset.finished==='true'){note.textContent='final results';return;}
      note.textContent='live · updated '+new Date().toLocaleTimeString();
    }catch(e){failures++;note.textContent='connection lost, retrying ('+e.message+')';}
    setTimeout(tick,failures?3000:1000);
  }
  setTimeout(tick,1000);
})();
"#;

/// `GET /tests/{ns}/{name}`: the sections, refreshed every second until the test finishes.
pub fn test_page(d: &TestDetail) -> String {
    let title = format!("{}/{}", d.summary.namespace, d.summary.name);
    let note = if d.is_finished() {
        "final results"
    } else {
        "live"
    };
    document(&title, note, &test_sections(d), TEST_SCRIPT)
}

/// The test page's sections in one `<div id="sections">` (`GET /tests/{ns}/{name}/fragment`).
pub fn test_sections(d: &TestDetail) -> String {
    let s = &d.summary;
    let mut out = String::new();
    w!(
        out,
        "<div id=\"sections\" data-phase=\"{}\" data-finished=\"{}\" data-fragment=\"{}/fragment\" data-title=\"{} · {} · Stampede\">",
        s.phase.as_str(),
        d.is_finished(),
        test_url(&s.namespace, &s.name),
        escape(&format!("{}/{}", s.namespace, s.name)),
        s.phase.as_str()
    );
    status_section(&mut out, d);
    verdict_section(&mut out, d);
    charts_section(&mut out, d);
    stages_section(&mut out, d);
    bottlenecks_section(&mut out, d);
    operations_section(&mut out, d);
    failures_section(&mut out, d);
    downloads_section(&mut out, d);
    setup_section(&mut out, d);
    out.push_str("</div>");
    out
}

fn card(out: &mut String, id: &str, label: &str, value: &str, raw: f64, unit: &str) {
    w!(
        out,
        "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\"><span id=\"{id}\" data-value=\"{}\">{}</span><span class=\"unit\">{}</span></div></div>",
        escape(label),
        if raw.is_finite() { raw } else { 0.0 },
        escape(value),
        escape(unit)
    );
}

fn status_section(out: &mut String, d: &TestDetail) {
    let s = &d.summary;
    w!(
        out,
        "<section id=\"status\"><h1>{} {}</h1>",
        escape(&format!("{}/{}", s.namespace, s.name)),
        badge(s.phase)
    );
    let stage = match &d.live {
        Some(l) => {
            let plan = d.spec.as_ref().and_then(|p| p.stages.get(l.stage));
            let mut label = stage_label(
                l.stage,
                l.stages,
                plan.and_then(|p| p.users).map(u64::from),
                plan.and_then(|p| p.rate),
            );
            if l.ramping {
                label.push_str(" (ramping)");
            }
            label
        }
        None => s.current_stage.clone().unwrap_or_else(|| "–".to_string()),
    };
    w!(
        out,
        "<p class=\"sub\">Stage <strong id=\"stage-now\">{}</strong> · {} model · {} consistency · Milvus {} {}</p>",
        escape(&stage),
        escape(&d.model),
        escape(if d.consistency.is_empty() {
            "–"
        } else {
            &d.consistency
        }),
        escape(&d.target),
        escape(&d.server_version)
    );
    if let Some(m) = &s.message {
        w!(out, "<p id=\"message\">{}</p>", escape(m));
    }
    if let Some(l) = &d.live {
        let done = if l.planned_seconds > 0.0 {
            (l.elapsed_seconds / l.planned_seconds).clamp(0.0, 1.0)
        } else {
            0.0
        };
        w!(
            out,
            "<div class=\"progress\" role=\"progressbar\" aria-label=\"time elapsed\" aria-valuemin=\"0\" aria-valuemax=\"{:.0}\" aria-valuenow=\"{:.0}\"><div style=\"width:{:.1}%\"></div></div><p class=\"sub\">{:.0} s of {:.0} s</p>",
            l.planned_seconds,
            l.elapsed_seconds.min(l.planned_seconds),
            done * 100.0,
            l.elapsed_seconds.min(l.planned_seconds),
            l.planned_seconds
        );
        out.push_str("<div class=\"cards\">");
        card(
            out,
            "qps-now",
            "QPS (last 3 s)",
            &fmt_qps(l.qps),
            l.qps,
            "requests/s",
        );
        card(out, "p50-now", "P50", &fmt_ms(l.p50_ms), l.p50_ms, "ms");
        card(out, "p95-now", "P95", &fmt_ms(l.p95_ms), l.p95_ms, "ms");
        card(out, "p99-now", "P99", &fmt_ms(l.p99_ms), l.p99_ms, "ms");
        if d.model == "Open" {
            card(
                out,
                "users-now",
                "arrival rate asked",
                &format_number(l.users as f64),
                l.users as f64,
                "requests/s",
            );
        } else {
            card(
                out,
                "users-now",
                "users",
                &format!("{} of {}", l.users, format_number(l.asked)),
                l.users as f64,
                "",
            );
        }
        card(
            out,
            "in-flight-now",
            "in flight now",
            &l.in_flight.to_string(),
            l.in_flight as f64,
            "requests",
        );
        card(
            out,
            "requests-now",
            "requests so far",
            &l.requests.to_string(),
            l.requests as f64,
            "",
        );
        card(
            out,
            "failures-now",
            "failed so far",
            &l.failures.to_string(),
            l.failures as f64,
            "",
        );
        out.push_str("</div>");
    } else if let Some(t) = &d.totals {
        out.push_str("<div class=\"cards\">");
        card(
            out,
            "qps-total",
            "QPS (steady states)",
            &fmt_qps(t.qps),
            t.qps,
            "requests/s",
        );
        card(out, "p50-total", "P50", &fmt_ms(t.p50_ms), t.p50_ms, "ms");
        card(out, "p95-total", "P95", &fmt_ms(t.p95_ms), t.p95_ms, "ms");
        card(out, "p99-total", "P99", &fmt_ms(t.p99_ms), t.p99_ms, "ms");
        card(
            out,
            "errors-total",
            "failed",
            &fmt_pct(t.error_ratio),
            t.error_ratio,
            "",
        );
        card(
            out,
            "requests-total",
            "requests",
            &t.requests.to_string(),
            t.requests as f64,
            "",
        );
        if let Some(r) = t.recall {
            card(out, "recall-total", "recall@k", &format!("{r:.3}"), r, "");
        }
        out.push_str("</div>");
    }
    out.push_str("</section>");
}

fn verdict_section(out: &mut String, d: &TestDetail) {
    if !d.is_finished() {
        return;
    }
    out.push_str("<section id=\"verdict\"><h2>Verdict</h2>");
    match &d.sla {
        Some(v) => {
            w!(
                out,
                "<p id=\"sla-verdict\" class=\"verdict {}\">SLA {}</p>",
                if v.passed { "pass" } else { "fail" },
                if v.passed { "PASS" } else { "FAIL" }
            );
            w!(
                out,
                "<p>Capacity at the SLA: <strong>{} requests/s</strong>{}.</p>",
                fmt_qps(v.capacity_at_sla_qps),
                v.best_stage
                    .map(|s| format!(" (stage {})", s + 1))
                    .unwrap_or_default()
            );
            let rows: Vec<(Vec<String>, &str)> = v
                .checks
                .iter()
                .map(|c| {
                    (
                        vec![
                            escape(&c.name),
                            escape(&c.target),
                            escape(&c.observed),
                            if c.passed {
                                "<span class=\"ok\">pass</span>".to_string()
                            } else {
                                "<span class=\"bad\">FAIL</span>".to_string()
                            },
                        ],
                        "",
                    )
                })
                .collect();
            table(
                out,
                &[
                    ("criterion", false),
                    ("target", false),
                    ("observed", false),
                    ("result", false),
                ],
                &rows,
            );
        }
        None => out.push_str("<p id=\"sla-verdict\" class=\"verdict\">NO SLA set</p>"),
    }
    out.push_str("<dl class=\"facts\">");
    if let Some(p) = &d.peak {
        w!(
            out,
            "<dt>peak</dt><dd>{} requests/s at stage {}{}</dd>",
            fmt_qps(p.qps),
            p.stage + 1,
            load_words(p.users, p.rate)
        );
    }
    match &d.saturation {
        Some(s) => {
            w!(
                out,
                "<dt>saturation</dt><dd id=\"saturation\">stage {}{}: {}</dd>",
                s.stage + 1,
                load_words(s.users, s.rate),
                escape(&s.reason)
            );
        }
        None => out.push_str("<dt>saturation</dt><dd id=\"saturation\">not reached: throughput kept growing with the load</dd>"),
    }
    if let Some(c) = &d.capacity {
        w!(
            out,
            "<dt>capacity plan</dt><dd id=\"capacity\">{} query node(s) for the target, {} with redundancy ({} requests/s per node, from the {}). {}</dd>",
            c.nodes_for_target,
            c.with_redundancy,
            fmt_qps(c.per_node_qps),
            escape(&c.basis),
            escape(&c.explanation)
        );
    }
    if let Some(r) = d.recall {
        w!(out, "<dt>recall@k</dt><dd id=\"recall\">{r:.3}</dd>");
    }
    out.push_str("</dl></section>");
}

fn load_words(users: Option<u64>, rate: Option<f64>) -> String {
    match (users, rate) {
        (Some(u), _) => format!(" ({})", users_words(u)),
        (None, Some(r)) => format!(" ({} requests/s asked)", format_number(r)),
        _ => String::new(),
    }
}

fn charts_section(out: &mut String, d: &TestDetail) {
    out.push_str("<section id=\"charts\"><h2>Over time</h2>");
    if d.series.is_empty() {
        out.push_str("<p>The charts appear when the first requests complete.</p></section>");
        return;
    }
    out.push_str("<div class=\"charts\">");
    for kind in charts::CHART_KINDS {
        if let Some(svg) = charts::render(kind, d) {
            w!(out, "<figure id=\"chart-{kind}\">{svg}</figure>");
        }
    }
    out.push_str("</div><p class=\"sub\">Each point is one second (ramps included); dashed vertical lines mark stage starts.</p></section>");
}

fn stage_row(s: &StageSummary, running: bool) -> (Vec<String>, &'static str) {
    let load = match (s.users, s.rate) {
        (Some(u), _) => users_words(u),
        (None, Some(r)) => format!("{} requests/s", format_number(r)),
        _ => "–".to_string(),
    };
    let note = if running {
        "running (so far, ramp included)".to_string()
    } else if s.valid {
        "<span class=\"ok\">valid</span>".to_string()
    } else {
        format!(
            "<span class=\"warn\">invalid: {}</span>",
            escape(s.invalid_reason.as_deref().unwrap_or("?"))
        )
    };
    (
        vec![
            (s.index + 1).to_string(),
            load,
            format!("{:.1}", s.seconds),
            s.requests.to_string(),
            fmt_qps(s.qps),
            fmt_ms(s.p50_ms),
            fmt_ms(s.p95_ms),
            fmt_ms(s.p99_ms),
            fmt_ms(s.max_ms),
            fmt_pct(s.error_ratio),
            format!("{:.1} / {}", s.in_flight_mean, s.in_flight_max),
            fmt_recall(s.recall),
            note,
        ],
        if running {
            "running"
        } else if s.valid {
            ""
        } else {
            "invalid"
        },
    )
}

fn stages_section(out: &mut String, d: &TestDetail) {
    if d.stages.is_empty() {
        return;
    }
    out.push_str("<section id=\"stages\"><h2>Stages</h2>");
    let rows: Vec<(Vec<String>, &str)> = d
        .stages
        .iter()
        .map(|s| {
            let running = !d.is_finished() && s.invalid_reason.as_deref() == Some("running");
            stage_row(s, running)
        })
        .collect();
    table(
        out,
        &[
            ("stage", true),
            ("load asked", false),
            ("steady (s)", true),
            ("requests", true),
            ("QPS (requests/s)", true),
            ("P50 (ms)", true),
            ("P95 (ms)", true),
            ("P99 (ms)", true),
            ("max (ms)", true),
            ("errors", true),
            ("in flight mean / max", true),
            ("recall", true),
            ("", false),
        ],
        &rows,
    );
    out.push_str("</section>");
}

fn bottlenecks_section(out: &mut String, d: &TestDetail) {
    if d.bottlenecks.is_empty() {
        return;
    }
    out.push_str("<section id=\"bottlenecks\"><h2>Bottlenecks</h2><p class=\"sub\">What limited the server in each stage, from Milvus's metrics and the load generator's self-check.</p>");
    let rows: Vec<(Vec<String>, &str)> = d
        .bottlenecks
        .iter()
        .map(|b| {
            let advice = b
                .recommendations
                .iter()
                .map(|r| escape(&r.text))
                .collect::<Vec<_>>()
                .join("<br>");
            (
                vec![
                    (b.stage + 1).to_string(),
                    escape(b.resource.as_str()),
                    escape(&b.evidence),
                    advice,
                ],
                "",
            )
        })
        .collect();
    table(
        out,
        &[
            ("stage", true),
            ("limited by", false),
            ("evidence", false),
            ("what to do", false),
        ],
        &rows,
    );
    out.push_str("</section>");
}

fn operations_section(out: &mut String, d: &TestDetail) {
    if d.operations.is_empty() {
        return;
    }
    w!(
        out,
        "<section id=\"operations\"><h2>Operations</h2><p class=\"sub\">{}</p>",
        if d.is_finished() {
            "Over every stage's steady state."
        } else {
            "Since the start, ramps included."
        }
    );
    let rows: Vec<(Vec<String>, &str)> = d
        .operations
        .iter()
        .map(|o| {
            (
                vec![
                    escape(&o.name),
                    o.requests.to_string(),
                    fmt_qps(o.qps),
                    fmt_ms(o.p50_ms),
                    fmt_ms(o.p95_ms),
                    fmt_ms(o.p99_ms),
                    fmt_ms(o.max_ms),
                    fmt_pct(o.error_ratio),
                    fmt_recall(o.recall),
                ],
                "",
            )
        })
        .collect();
    table(
        out,
        &[
            ("operation", false),
            ("requests", true),
            ("QPS (requests/s)", true),
            ("P50 (ms)", true),
            ("P95 (ms)", true),
            ("P99 (ms)", true),
            ("max (ms)", true),
            ("errors", true),
            ("recall", true),
        ],
        &rows,
    );
    out.push_str("</section>");
}

fn failures_section(out: &mut String, d: &TestDetail) {
    out.push_str("<section id=\"failures\"><h2>Failures</h2>");
    if d.failures.is_empty() {
        out.push_str("<p>No request failed.</p></section>");
        return;
    }
    let mut kinds: Vec<&crate::result::FailureSummary> = d.failures.iter().collect();
    kinds.sort_by(|a, b| a.kind.cmp(&b.kind).then(b.count.cmp(&a.count)));
    let rows: Vec<(Vec<String>, &str)> = kinds
        .iter()
        .map(|f| {
            (
                vec![
                    format!("<code>{}</code>", escape(&f.kind)),
                    escape(&f.operation),
                    f.count.to_string(),
                    format!("<code>{}</code>", escape(&f.example)),
                ],
                "",
            )
        })
        .collect();
    table(
        out,
        &[
            ("kind", false),
            ("operation", false),
            ("count", true),
            ("first message", false),
        ],
        &rows,
    );
    out.push_str("</section>");
}

fn downloads_section(out: &mut String, d: &TestDetail) {
    let s = &d.summary;
    let api = format!("/api/tests/{}/{}", enc(&s.namespace), enc(&s.name));
    out.push_str("<section id=\"downloads\"><h2>Downloads</h2><p>");
    for f in &d.downloads {
        w!(
            out,
            "<a href=\"{}\">{}</a> · ",
            escape(&f.url),
            escape(&f.name)
        );
    }
    if d.downloads.is_empty() {
        out.push_str("The files are written when the test ends. ");
    }
    w!(
        out,
        "<a href=\"{api}\">this test as JSON</a> · charts: {}</p></section>",
        charts::CHART_KINDS
            .map(|k| format!("<a href=\"{api}/charts/{k}.svg\">{k}.svg</a>"))
            .join(", ")
    );
}

fn setup_section(out: &mut String, d: &TestDetail) {
    let Some(spec) = &d.spec else { return };
    out.push_str("<section id=\"setup\"><h2>Setup</h2><dl class=\"facts\">");
    w!(
        out,
        "<dt>collection</dt><dd>{} ({} dimensions, {}, {} rows)</dd><dt>index</dt><dd>{}</dd><dt>operations</dt><dd>{}</dd><dt>stages</dt><dd>{}</dd>",
        escape(&spec.collection.name),
        spec.collection.dimension,
        escape(spec.collection.metric.as_str()),
        spec.data.rows,
        escape(&spec.index.index_type),
        escape(
            &spec
                .workload
                .operations
                .iter()
                .map(|o| format!("{} ×{}", o.name, o.weight))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        escape(
            &spec
                .stages
                .iter()
                .map(|s| match (s.users, s.rate) {
                    (Some(u), _) => format!("{} for {}", users_words(u.into()), s.duration),
                    (None, Some(r)) => format!("{}/s for {}", format_number(r), s.duration),
                    _ => s.duration.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" → ")
        )
    );
    if let Some(secret) = &spec.target.credentials_secret {
        w!(
            out,
            "<dt>credentials</dt><dd>from Secret <code>{}</code> (content not shown)</dd>",
            escape(secret)
        );
    }
    out.push_str("</dl></section>");
}

// ---------------------------------------------------------------------------------------------
// Compare page

fn delta_cell(d: Option<f64>, higher_is_better: bool) -> String {
    let Some(d) = d else {
        return "–".to_string();
    };
    let class = if d.abs() < 5.0 {
        ""
    } else if (d > 0.0) == higher_is_better {
        "better"
    } else {
        "worse"
    };
    format!("<span class=\"{class}\">{d:+.1} %</span>")
}

/// `GET /compare?a=…&b=…`.
pub fn compare_page(a: &TestDetail, b: &TestDetail, c: &Comparison) -> String {
    let name = |d: &TestDetail| format!("{}/{}", d.summary.namespace, d.summary.name);
    let link = |d: &TestDetail| {
        format!(
            "<a href=\"{}\">{}</a>",
            test_url(&d.summary.namespace, &d.summary.name),
            escape(&name(d))
        )
    };
    let mut body = format!(
        "<h1>Compare</h1><p class=\"sub\">a = {} (baseline) · b = {}. Δ is (b − a) / a; green is better, red worse (changes under 5 % are not coloured).</p>",
        link(a),
        link(b)
    );
    body.push_str("<section id=\"totals\"><h2>Totals</h2>");
    let t = |d: &TestDetail, f: fn(&TestSummary) -> Option<f64>, fmt: fn(f64) -> String| {
        fmt_opt(f(&d.summary), fmt)
    };
    let sla = |p: Option<bool>| match p {
        Some(true) => "<span class=\"badge PASS\">PASS</span>".to_string(),
        Some(false) => "<span class=\"badge FAIL\">FAIL</span>".to_string(),
        None => "–".to_string(),
    };
    let rows = vec![
        (
            vec![
                "phase".into(),
                badge(a.summary.phase),
                badge(b.summary.phase),
                String::new(),
            ],
            "",
        ),
        (
            vec![
                "started".into(),
                escape(a.summary.started_at.as_deref().unwrap_or("–")),
                escape(b.summary.started_at.as_deref().unwrap_or("–")),
                String::new(),
            ],
            "",
        ),
        (
            vec![
                "Milvus".into(),
                escape(&format!("{} {}", a.target, a.server_version)),
                escape(&format!("{} {}", b.target, b.server_version)),
                String::new(),
            ],
            "",
        ),
        (
            vec![
                "QPS (requests/s)".into(),
                t(a, |s| s.qps, fmt_qps),
                t(b, |s| s.qps, fmt_qps),
                delta_cell(c.qps_delta_pct, true),
            ],
            "",
        ),
        (
            vec![
                "P95 (ms)".into(),
                t(a, |s| s.p95_ms, fmt_ms),
                t(b, |s| s.p95_ms, fmt_ms),
                delta_cell(c.p95_delta_pct, false),
            ],
            "",
        ),
        (
            vec![
                "P99 (ms)".into(),
                t(a, |s| s.p99_ms, fmt_ms),
                t(b, |s| s.p99_ms, fmt_ms),
                delta_cell(c.p99_delta_pct, false),
            ],
            "",
        ),
        (
            vec![
                "errors".into(),
                t(a, |s| s.error_ratio, fmt_pct),
                t(b, |s| s.error_ratio, fmt_pct),
                String::new(),
            ],
            "",
        ),
        (
            vec![
                "SLA".into(),
                sla(c.sla_passed_a),
                sla(c.sla_passed_b),
                String::new(),
            ],
            "",
        ),
    ];
    table(
        &mut body,
        &[
            ("", false),
            ("a (baseline)", true),
            ("b", true),
            ("Δ", true),
        ],
        &rows,
    );
    body.push_str("</section><section id=\"stages\"><h2>Per stage</h2>");
    let fig = |f: &Option<super::compare::StageFigures>,
               g: fn(&super::compare::StageFigures) -> String| {
        f.as_ref().map_or_else(|| "–".to_string(), g)
    };
    let load = |f: &super::compare::StageFigures| match (f.users, f.rate) {
        (Some(u), _) => users_words(u),
        (None, Some(r)) => format!("{}/s", format_number(r)),
        _ => "–".to_string(),
    };
    let rows: Vec<(Vec<String>, &str)> = c
        .stages
        .iter()
        .map(|s| {
            (
                vec![
                    (s.stage + 1).to_string(),
                    fig(&s.a, load),
                    fig(&s.b, load),
                    fig(&s.a, |f| fmt_qps(f.qps)),
                    fig(&s.b, |f| fmt_qps(f.qps)),
                    delta_cell(s.qps_delta_pct, true),
                    fig(&s.a, |f| fmt_ms(f.p95_ms)),
                    fig(&s.b, |f| fmt_ms(f.p95_ms)),
                    delta_cell(s.p95_delta_pct, false),
                    fig(&s.a, |f| fmt_ms(f.p99_ms)),
                    fig(&s.b, |f| fmt_ms(f.p99_ms)),
                    delta_cell(s.p99_delta_pct, false),
                    fig(&s.a, |f| fmt_pct(f.error_ratio)),
                    fig(&s.b, |f| fmt_pct(f.error_ratio)),
                ],
                "",
            )
        })
        .collect();
    table(
        &mut body,
        &[
            ("stage", true),
            ("load a", false),
            ("load b", false),
            ("QPS a", true),
            ("QPS b", true),
            ("Δ QPS", true),
            ("P95 a (ms)", true),
            ("P95 b (ms)", true),
            ("Δ P95", true),
            ("P99 a (ms)", true),
            ("P99 b (ms)", true),
            ("Δ P99", true),
            ("errors a", true),
            ("errors b", true),
        ],
        &rows,
    );
    if !c.stages.is_empty() {
        let cats: Vec<String> = c
            .stages
            .iter()
            .map(|s| format!("stage {}", s.stage + 1))
            .collect();
        let values = |side: bool, f: fn(&super::compare::StageFigures) -> f64| -> Vec<f64> {
            c.stages
                .iter()
                .map(|s| {
                    let x = if side { &s.b } else { &s.a };
                    x.as_ref().map_or(f64::NAN, f)
                })
                .collect()
        };
        let mut qps = CategoryChart::new(
            "Throughput per stage",
            "stage",
            "throughput (requests/s)",
            CategoryStyle::Bars,
        );
        qps.categories = cats.clone();
        qps.series
            .push(CategorySeries::new("a", values(false, |f| f.qps)).color("#9ca3af"));
        qps.series
            .push(CategorySeries::new("b", values(true, |f| f.qps)).color("#2563eb"));
        let mut p95 = CategoryChart::new(
            "P95 latency per stage",
            "stage",
            "latency (ms)",
            CategoryStyle::Points,
        );
        p95.categories = cats;
        p95.series
            .push(CategorySeries::new("a", values(false, |f| f.p95_ms)).color("#9ca3af"));
        p95.series
            .push(CategorySeries::new("b", values(true, |f| f.p95_ms)).color("#d97706"));
        w!(
            body,
            "<div class=\"charts\"><figure>{}</figure><figure>{}</figure></div>",
            qps.render(),
            p95.render()
        );
    }
    body.push_str("</section><section id=\"sla\"><h2>SLA checks</h2>");
    if c.checks.is_empty() {
        body.push_str("<p>Neither run has SLA checks (no SLA set, or not finished).</p>");
    } else {
        let obs = |o: &Option<(String, bool)>| match o {
            Some((v, true)) => format!("{} <span class=\"ok\">pass</span>", escape(v)),
            Some((v, false)) => format!("{} <span class=\"bad\">FAIL</span>", escape(v)),
            None => "–".to_string(),
        };
        let rows: Vec<(Vec<String>, &str)> = c
            .checks
            .iter()
            .map(|x| {
                (
                    vec![escape(&x.name), escape(&x.target), obs(&x.a), obs(&x.b)],
                    "",
                )
            })
            .collect();
        table(
            &mut body,
            &[
                ("criterion", false),
                ("target", false),
                ("a", false),
                ("b", false),
            ],
            &rows,
        );
    }
    body.push_str("</section>");
    document(&format!("compare {} · {}", name(a), name(b)), "", &body, "")
}

/// A page for an error status, with the message.
pub fn error_page(status: u16, message: &str) -> String {
    document(
        &format!("{status}"),
        "",
        &format!(
            "<h1>{status}</h1><p id=\"error\">{}</p><p><a href=\"/\">all tests</a></p>",
            escape(message)
        ),
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_sensible_precision() {
        assert_eq!(fmt_ms(0.4231), "0.42");
        assert_eq!(fmt_ms(42.46), "42.5");
        assert_eq!(fmt_ms(318.2), "318");
        assert_eq!(fmt_ms(f64::NAN), "–");
        assert_eq!(fmt_qps(1234.4), "1234");
        assert_eq!(fmt_pct(0.0), "0 %");
        assert_eq!(fmt_pct(0.00012), "0.012 %");
        assert_eq!(fmt_pct(0.0125), "1.25 %");
        assert_eq!(fmt_pct(0.5), "50.0 %");
    }

    #[test]
    fn the_bottleneck_of_each_stage_is_shown_with_its_evidence_and_advice() {
        use crate::bottleneck::{Recommendation, Resource, StageBottleneck};
        let mut d = TestDetail::new("local", "t", Phase::Succeeded, None);
        d.bottlenecks = vec![
            StageBottleneck {
                stage: 0,
                resource: Resource::None,
                evidence: "nothing near its limit".into(),
                recommendations: Vec::new(),
            },
            StageBottleneck {
                stage: 1,
                resource: Resource::ServerCpu,
                evidence: "Milvus used 1.9 of 2 cores <while> P95 rose 4×".into(),
                recommendations: vec![Recommendation {
                    rule: "cpu".into(),
                    text: "add query nodes, or lower ef from 64".into(),
                }],
            },
        ];
        let html = test_sections(&d);
        let section = &html[html
            .find("id=\"bottlenecks\"")
            .expect("a bottlenecks section")..];
        assert!(section.contains("serverCpu"), "{section}");
        assert!(
            section.contains("1.9 of 2 cores &lt;while&gt;"),
            "{section}"
        );
        assert!(section.contains("lower ef from 64"), "{section}");
        let none = TestDetail::new("local", "t", Phase::Succeeded, None);
        assert!(!test_sections(&none).contains("id=\"bottlenecks\""));
    }

    #[test]
    fn a_running_test_page_polls_its_fragment_and_escapes_names() {
        let mut d = TestDetail::new("local", "a<b>", Phase::Running, None);
        d.live = Some(super::super::LiveFigures {
            stages: 2,
            qps: 12.5,
            ..Default::default()
        });
        let page = test_page(&d);
        assert!(page.contains("data-fragment=\"/tests/local/a%3Cb%3E/fragment\""));
        assert!(page.contains("a&lt;b&gt;") && !page.contains("a<b>"));
        assert!(page.contains("id=\"qps-now\" data-value=\"12.5\""));
        assert!(
            !page.contains("id=\"sla-verdict\""),
            "no verdict while running"
        );
    }
}
