//! Small, dependency-free SVG charts for report.html and the live dashboard.
//!
//! Two kinds of chart, both rendered to an inline `<svg>` string:
//! - [`LineChart`]: named series over a numeric x axis (seconds), an optional right-hand y axis,
//!   vertical markers (stage boundaries) and horizontal thresholds (SLA limits);
//! - [`CategoryChart`]: bars or points over a categorical x axis (one category per stage).
//!
//! The output is deterministic (same input, same bytes: coordinates are printed with one decimal),
//! scales with its container (`viewBox` + `width="100%"`), escapes every text, and carries
//! `data-series` / `data-points` attributes so tests and scripts can find the data again.
//! A charting crate was considered (plotters' SVG backend), but it renders text as positioned
//! glyph runs without `viewBox` scaling or accessibility hooks, and we need only two chart types.

use std::fmt::Write as _;

/// Writes into a `String`; `fmt::Write` for `String` never fails, so the result is ignored.
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {
        let _ = write!($dst, $($arg)*);
    };
}

/// Colours of series without their own colour, in order (colour-blind-safe-ish, high contrast).
pub const PALETTE: [&str; 8] = [
    "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563",
];

const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
const TICK_FONT: f64 = 11.0;
const TITLE_FONT: f64 = 14.0;
const LEGEND_FONT: f64 = 12.0;
/// Series with at most this many points also get a dot per point; longer ones (per-second
/// timelines) would turn into a smear of dots.
const MAX_DOTS: usize = 40;

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than tab/newline are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Formats a number for a chart label: three significant digits at most, trailing zeros
/// dropped, and k/M/G suffixes from a thousand on (`1200` → `1.2k`, `0.35` → `0.35`,
/// `12.5` → `12.5`, `125.4` → `125`). Non-finite values print as `–`.
pub fn format_number(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    // Round to 3 significant digits first, so 999.7 becomes 1k rather than "1000".
    let a = round_sig(a, 3);
    let (scaled, suffix) = if a >= 1e9 {
        (a / 1e9, "G")
    } else if a >= 1e6 {
        (a / 1e6, "M")
    } else if a >= 1e3 {
        (a / 1e3, "k")
    } else {
        (a, "")
    };
    format!("{sign}{}{suffix}", sig_digits(scaled, 3))
}

fn round_sig(a: f64, digits: i32) -> f64 {
    if a == 0.0 || !a.is_finite() {
        return a;
    }
    let mag = a.log10().floor() as i32;
    let factor = 10f64.powi(digits - 1 - mag);
    (a * factor).round() / factor
}

/// `a` (non-negative) with `digits` significant digits, trailing zeros trimmed.
fn sig_digits(a: f64, digits: i32) -> String {
    if a == 0.0 {
        return "0".to_string();
    }
    let mag = a.log10().floor() as i32;
    let decimals = (digits - 1 - mag).clamp(0, 12) as usize;
    trim_zeros(format!("{a:.decimals$}"))
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        let t = s.trim_end_matches('0').trim_end_matches('.');
        if t.is_empty() || t == "-" || t == "-0" {
            "0".to_string()
        } else {
            t.to_string()
        }
    } else {
        s
    }
}

/// A "nice" step (1, 2 or 5 × 10ⁿ) for about `target` intervals over `range`.
fn nice_step(range: f64, target: usize) -> f64 {
    let raw = range / target.max(1) as f64;
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let exp = raw.log10().floor();
    let base = 10f64.powf(exp);
    let f = raw / base;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * base
}

/// Tick values at round numbers (steps of 1, 2 or 5 × 10ⁿ) within `[min, max]`, about `target`
/// intervals: `nice_ticks(0.0, 87.0, 5)` is `[0, 20, 40, 60, 80]`. Empty when the range is
/// not finite or reversed.
pub fn nice_ticks(min: f64, max: f64, target: usize) -> Vec<f64> {
    if !min.is_finite() || !max.is_finite() || max < min {
        return Vec::new();
    }
    if max == min {
        return vec![min];
    }
    let step = nice_step(max - min, target);
    let eps = step * 1e-9;
    let first = ((min - eps) / step).ceil() as i64;
    let last = ((max + eps) / step).floor() as i64;
    // A range too wide for f64 steps (±1e308) would make the count explode; such a range has
    // no useful ticks.
    if !(max - min).is_finite() || last.saturating_sub(first) > 10 * target.max(1) as i64 {
        return Vec::new();
    }
    // Multiplying an integer index by the step (rather than adding steps up) keeps 0.1 × 3 from
    // drifting to 0.30000000000000004 over many ticks; clean_tick removes the rest.
    (first..=last)
        .map(|k| clean_tick(k as f64 * step, step))
        .collect()
}

fn clean_tick(v: f64, step: f64) -> f64 {
    let decimals = (-step.log10().floor()).max(0.0) as i32 + 1;
    let f = 10f64.powi(decimals);
    let r = (v * f).round() / f;
    if r == 0.0 { 0.0 } else { r }
}

/// The y domain for values up to `max`: from 0 (or the negative minimum) up to the next nice
/// tick, so the top gridline is labelled.
fn y_domain(min: f64, max: f64) -> (f64, f64) {
    let lo = if min.is_finite() { min.min(0.0) } else { 0.0 };
    let hi = if max.is_finite() && max > lo {
        max
    } else {
        lo + 1.0
    };
    let step = nice_step(hi - lo, 5);
    let lo = (lo / step).floor() * step;
    let hi = (hi / step).ceil() * step;
    (lo, if hi > lo { hi } else { lo + step })
}

fn text_width(s: &str, font: f64) -> f64 {
    // A proportional sans-serif averages a bit over half an em per character.
    s.chars().count() as f64 * font * 0.58
}

/// Which y axis a series is drawn against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum YAxis {
    /// The left axis (titled by `y_title`).
    #[default]
    Left,
    /// The right axis (titled by `y2_title`).
    Right,
}

/// A named line of (x, y) points. A non-finite y leaves a gap in the line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Name shown in the legend and in `data-series`.
    pub name: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
    /// The axis the series uses.
    pub axis: YAxis,
    /// CSS colour; the palette's next colour when `None`.
    pub color: Option<String>,
    /// Draw dashed (e.g. the load asked for, as opposed to what was measured).
    pub dashed: bool,
}

impl Series {
    /// A solid series on the left axis with a palette colour.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            ..Series::default()
        }
    }

    /// Draws the series against the right axis.
    pub fn on_right_axis(mut self) -> Self {
        self.axis = YAxis::Right;
        self
    }

    /// Draws the series dashed.
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }

    /// Sets the colour.
    pub fn color(mut self, color: impl Into<String>) -> Self {
        self.color = Some(color.into());
        self
    }
}

/// A labelled vertical line at `x` (a stage boundary).
#[derive(Clone, Debug, PartialEq)]
pub struct Marker {
    /// Position on the x axis.
    pub x: f64,
    /// Label, e.g. `stage 2 · 50 users`.
    pub label: String,
}

/// A labelled horizontal line at `value` on the left axis (an SLA limit).
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// Position on the left y axis.
    pub value: f64,
    /// Label, e.g. `SLA P95 ≤ 100 ms`.
    pub label: String,
}

/// A line chart over a numeric x axis.
#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    /// Title, shown on top and as the SVG `<title>`.
    pub title: String,
    /// X axis title with its unit, e.g. `time (s)`.
    pub x_title: String,
    /// Left y axis title with its unit, e.g. `latency (ms)`.
    pub y_title: String,
    /// Right y axis title, when a series uses it.
    pub y2_title: Option<String>,
    /// The lines.
    pub series: Vec<Series>,
    /// Vertical markers.
    pub markers: Vec<Marker>,
    /// Horizontal thresholds on the left axis.
    pub thresholds: Vec<Threshold>,
    /// Width of the coordinate system (the SVG scales to its container).
    pub width: f64,
    /// Height of the coordinate system.
    pub height: f64,
}

impl LineChart {
    /// An empty chart with axis titles (give units: `time (s)`, `requests/s`).
    pub fn new(
        title: impl Into<String>,
        x_title: impl Into<String>,
        y_title: impl Into<String>,
    ) -> Self {
        LineChart {
            title: title.into(),
            x_title: x_title.into(),
            y_title: y_title.into(),
            y2_title: None,
            series: Vec::new(),
            markers: Vec::new(),
            thresholds: Vec::new(),
            width: 760.0,
            height: 320.0,
        }
    }

    /// Renders the chart as an `<svg>` element.
    pub fn render(&self) -> String {
        let colors: Vec<String> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| series_color(s.color.as_deref(), i))
            .collect();
        let legend: Vec<LegendItem> = self
            .series
            .iter()
            .zip(&colors)
            .map(|(s, c)| LegendItem {
                name: s.name.clone(),
                color: c.clone(),
                dashed: s.dashed,
                bar: false,
            })
            .collect();

        let finite = |axis: YAxis| {
            self.series
                .iter()
                .filter(move |s| s.axis == axis)
                .flat_map(|s| s.points.iter())
                .filter(|(x, y)| x.is_finite() && y.is_finite())
        };
        let (mut ymin, mut ymax) = min_max(finite(YAxis::Left).map(|p| p.1));
        let data_ymax = ymax;
        for t in &self.thresholds {
            // A limit far above the data would squash the data into a flat line at the bottom;
            // such a limit is named in a note instead of drawn.
            if t.value.is_finite() && (!data_ymax.is_finite() || t.value <= data_ymax * 2.0) {
                ymin = ymin.min(t.value);
                ymax = if ymax.is_finite() {
                    ymax.max(t.value)
                } else {
                    t.value
                };
            }
        }
        let (y2min, y2max) = min_max(finite(YAxis::Right).map(|p| p.1));
        let has_right = self.series.iter().any(|s| s.axis == YAxis::Right);
        let (xmin, xmax) = {
            let (a, b) = min_max(
                self.series
                    .iter()
                    .flat_map(|s| s.points.iter())
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .map(|p| p.0)
                    .chain(self.markers.iter().map(|m| m.x).filter(|x| x.is_finite())),
            );
            if !a.is_finite() {
                (0.0, 1.0)
            } else if a == b {
                (a - 1.0, b + 1.0)
            } else {
                (a, b)
            }
        };
        let ydom = y_domain(ymin, ymax);
        let y2dom = y_domain(y2min, y2max);
        let yticks = nice_ticks(ydom.0, ydom.1, 5);
        let y2ticks = nice_ticks(y2dom.0, y2dom.1, 5);
        let xticks = nice_ticks(xmin, xmax, 6);

        let mut frame = Frame::new(self.width, self.height, &legend);
        frame.left = 22.0 + max_label_width(&yticks) + 8.0;
        if has_right {
            frame.right = 22.0 + max_label_width(&y2ticks) + 8.0;
        }
        frame.bottom = 44.0;

        let mut out = String::new();
        frame.open(&mut out, "line", &self.title);
        frame.legend(&mut out, &legend);

        let px = |x: f64| frame.left + (x - xmin) / (xmax - xmin) * frame.plot_w();
        let py = |y: f64, dom: (f64, f64)| {
            frame.top + frame.plot_h() - (y - dom.0) / (dom.1 - dom.0) * frame.plot_h()
        };

        // Grid and axes.
        out.push_str("<g class=\"grid\" stroke=\"#e5e7eb\" stroke-width=\"1\">");
        for t in &yticks {
            let y = py(*t, ydom);
            w!(
                out,
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>",
                frame.left,
                frame.left + frame.plot_w()
            );
        }
        out.push_str("</g>");
        frame.axes(&mut out, has_right);
        out.push_str(&format!(
            "<g class=\"y-ticks\" font-size=\"{TICK_FONT}\" fill=\"#374151\" text-anchor=\"end\">"
        ));
        for t in &yticks {
            w!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" dominant-baseline=\"middle\">{}</text>",
                frame.left - 6.0,
                py(*t, ydom),
                escape(&format_number(*t))
            );
        }
        out.push_str("</g>");
        if has_right {
            w!(
                out,
                "<g class=\"y2-ticks\" font-size=\"{TICK_FONT}\" fill=\"#374151\" text-anchor=\"start\">"
            );
            for t in &y2ticks {
                w!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" dominant-baseline=\"middle\">{}</text>",
                    frame.left + frame.plot_w() + 6.0,
                    py(*t, y2dom),
                    escape(&format_number(*t))
                );
            }
            out.push_str("</g>");
        }
        w!(
            out,
            "<g class=\"x-ticks\" font-size=\"{TICK_FONT}\" fill=\"#374151\" text-anchor=\"middle\">"
        );
        for t in &xticks {
            let x = px(*t);
            w!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#9ca3af\"/><text x=\"{x:.1}\" y=\"{:.1}\">{}</text>",
                frame.top + frame.plot_h(),
                frame.top + frame.plot_h() + 4.0,
                frame.top + frame.plot_h() + 16.0,
                escape(&format_number(*t))
            );
        }
        out.push_str("</g>");
        frame.axis_titles(
            &mut out,
            &self.x_title,
            &self.y_title,
            self.y2_title.as_deref().filter(|_| has_right),
        );

        // Markers under the data; thresholds go on top of it (below).
        for m in &self.markers {
            if !m.x.is_finite() {
                continue;
            }
            let x = px(m.x);
            // Labels run vertically along their line, so close boundaries never overlap.
            w!(
                out,
                "<g class=\"marker\"><line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#6b7280\" stroke-width=\"1\" stroke-dasharray=\"3 3\"/><text x=\"{:.1}\" y=\"{:.1}\" transform=\"rotate(-90 {:.1} {:.1})\" font-size=\"10\" fill=\"#4b5563\" text-anchor=\"end\" {HALO}>{}</text></g>",
                frame.top,
                frame.top + frame.plot_h(),
                x + 10.0,
                frame.top + 4.0,
                x + 10.0,
                frame.top + 4.0,
                escape(&m.label)
            );
        }
        for (s, color) in self.series.iter().zip(&colors) {
            let dom = if s.axis == YAxis::Right { y2dom } else { ydom };
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|(x, _)| x.is_finite())
                .map(|&(x, y)| (px(x), if y.is_finite() { py(y, dom) } else { f64::NAN }))
                .collect();
            let n = pts.iter().filter(|p| p.1.is_finite()).count();
            let mut d = String::new();
            let mut pen_down = false;
            for (x, y) in &pts {
                if !y.is_finite() {
                    pen_down = false;
                    continue;
                }
                w!(d, "{}{x:.1} {y:.1}", if pen_down { " L" } else { " M" });
                pen_down = true;
            }
            let dash = if s.dashed {
                " stroke-dasharray=\"6 4\""
            } else {
                ""
            };
            w!(
                out,
                "<g class=\"series\" data-series=\"{}\"><path d=\"{}\" data-points=\"{n}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-linejoin=\"round\"{dash}/>",
                escape(&s.name),
                d.trim_start(),
                escape(color)
            );
            if n <= MAX_DOTS {
                for (x, y) in pts.iter().filter(|p| p.1.is_finite()) {
                    w!(
                        out,
                        "<circle class=\"point\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\"/>",
                        escape(color)
                    );
                }
            }
            out.push_str("</g>");
        }
        frame.thresholds(&mut out, &self.thresholds, ydom.1, |v| py(v, ydom));
        if !self
            .series
            .iter()
            .flat_map(|s| &s.points)
            .any(|(x, y)| x.is_finite() && y.is_finite())
        {
            frame.no_data(&mut out);
        }
        out.push_str("</svg>");
        out
    }
}

/// How a [`CategoryChart`] draws its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CategoryStyle {
    /// Grouped bars, one per series in each category.
    #[default]
    Bars,
    /// A dot per value, joined by a line per series.
    Points,
}

/// Values of one series, one per category; a non-finite value is left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CategorySeries {
    /// Name shown in the legend and in `data-series`.
    pub name: String,
    /// One value per category.
    pub values: Vec<f64>,
    /// CSS colour; the palette's next colour when `None`.
    pub color: Option<String>,
}

impl CategorySeries {
    /// A series with a palette colour.
    pub fn new(name: impl Into<String>, values: Vec<f64>) -> Self {
        CategorySeries {
            name: name.into(),
            values,
            color: None,
        }
    }

    /// Sets the colour.
    pub fn color(mut self, color: impl Into<String>) -> Self {
        self.color = Some(color.into());
        self
    }
}

/// A bar or point chart over categories (one per stage: `10 users`, `50 users`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct CategoryChart {
    /// Title, shown on top and as the SVG `<title>`.
    pub title: String,
    /// X axis title, e.g. `stage (users)`.
    pub x_title: String,
    /// Y axis title with its unit, e.g. `requests/s`.
    pub y_title: String,
    /// Category labels, left to right.
    pub categories: Vec<String>,
    /// The series.
    pub series: Vec<CategorySeries>,
    /// Bars or points.
    pub style: CategoryStyle,
    /// Horizontal thresholds (SLA limits).
    pub thresholds: Vec<Threshold>,
    /// Write each value above its bar or dot.
    pub value_labels: bool,
    /// Width of the coordinate system (the SVG scales to its container).
    pub width: f64,
    /// Height of the coordinate system.
    pub height: f64,
}

impl CategoryChart {
    /// An empty chart with axis titles.
    pub fn new(
        title: impl Into<String>,
        x_title: impl Into<String>,
        y_title: impl Into<String>,
        style: CategoryStyle,
    ) -> Self {
        CategoryChart {
            title: title.into(),
            x_title: x_title.into(),
            y_title: y_title.into(),
            categories: Vec::new(),
            series: Vec::new(),
            style,
            thresholds: Vec::new(),
            value_labels: true,
            width: 760.0,
            height: 320.0,
        }
    }

    /// Renders the chart as an `<svg>` element.
    pub fn render(&self) -> String {
        let colors: Vec<String> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| series_color(s.color.as_deref(), i))
            .collect();
        let legend: Vec<LegendItem> = self
            .series
            .iter()
            .zip(&colors)
            .map(|(s, c)| LegendItem {
                name: s.name.clone(),
                color: c.clone(),
                dashed: false,
                bar: self.style == CategoryStyle::Bars,
            })
            .collect();
        let n_cat = self.categories.len();
        let values = || {
            self.series
                .iter()
                .flat_map(|s| s.values.iter().take(n_cat))
                .copied()
                .filter(|v| v.is_finite())
        };
        let (mut ymin, mut ymax) = min_max(values());
        let data_ymax = ymax;
        for t in &self.thresholds {
            if t.value.is_finite() && (!data_ymax.is_finite() || t.value <= data_ymax * 2.0) {
                ymin = ymin.min(t.value);
                ymax = if ymax.is_finite() {
                    ymax.max(t.value)
                } else {
                    t.value
                };
            }
        }
        let ydom = y_domain(ymin, ymax);
        let yticks = nice_ticks(ydom.0, ydom.1, 5);

        let mut frame = Frame::new(self.width, self.height, &legend);
        frame.left = 22.0 + max_label_width(&yticks) + 8.0;
        let band = frame.plot_w() / n_cat.max(1) as f64;
        let widest = self
            .categories
            .iter()
            .map(|c| text_width(c, TICK_FONT))
            .fold(0.0, f64::max);
        // Labels wider than their band are slanted so they don't run into each other.
        let slanted = widest > band - 6.0;
        frame.bottom = if slanted {
            30.0 + (widest * 0.64).min(90.0)
        } else {
            44.0
        };

        let mut out = String::new();
        frame.open(&mut out, "category", &self.title);
        frame.legend(&mut out, &legend);
        let py =
            |y: f64| frame.top + frame.plot_h() - (y - ydom.0) / (ydom.1 - ydom.0) * frame.plot_h();
        let base_y = py(0.0f64.clamp(ydom.0, ydom.1));

        out.push_str("<g class=\"grid\" stroke=\"#e5e7eb\" stroke-width=\"1\">");
        for t in &yticks {
            let y = py(*t);
            w!(
                out,
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>",
                frame.left,
                frame.left + frame.plot_w()
            );
        }
        out.push_str("</g>");
        frame.axes(&mut out, false);
        w!(
            out,
            "<g class=\"y-ticks\" font-size=\"{TICK_FONT}\" fill=\"#374151\" text-anchor=\"end\">"
        );
        for t in &yticks {
            w!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" dominant-baseline=\"middle\">{}</text>",
                frame.left - 6.0,
                py(*t),
                escape(&format_number(*t))
            );
        }
        out.push_str("</g>");
        w!(
            out,
            "<g class=\"x-ticks\" font-size=\"{TICK_FONT}\" fill=\"#374151\">"
        );
        let axis_y = frame.top + frame.plot_h();
        for (i, c) in self.categories.iter().enumerate() {
            let x = frame.left + band * (i as f64 + 0.5);
            if slanted {
                w!(
                    out,
                    "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"end\" transform=\"rotate(-40 {x:.1} {:.1})\">{}</text>",
                    axis_y + 14.0,
                    axis_y + 14.0,
                    escape(c)
                );
            } else {
                w!(
                    out,
                    "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    axis_y + 16.0,
                    escape(c)
                );
            }
        }
        out.push_str("</g>");
        frame.axis_titles(&mut out, &self.x_title, &self.y_title, None);

        let n_series = self.series.len().max(1) as f64;
        let group_w = band * 0.72;
        let bar_w = group_w / n_series;
        let label_fits = match self.style {
            CategoryStyle::Bars => bar_w >= 26.0,
            CategoryStyle::Points => band >= 40.0 && self.series.len() <= 1,
        };
        for (si, (s, color)) in self.series.iter().zip(&colors).enumerate() {
            let color = escape(color);
            let points: Vec<(usize, f64)> = s
                .values
                .iter()
                .take(n_cat)
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| (i, *v))
                .collect();
            w!(
                out,
                "<g class=\"series\" data-series=\"{}\" data-points=\"{}\">",
                escape(&s.name),
                points.len()
            );
            match self.style {
                CategoryStyle::Bars => {
                    for &(i, v) in &points {
                        let x = frame.left
                            + band * i as f64
                            + (band - group_w) / 2.0
                            + bar_w * si as f64;
                        let y = py(v);
                        let (top, h) = if y < base_y {
                            (y, base_y - y)
                        } else {
                            (base_y, y - base_y)
                        };
                        w!(
                            out,
                            "<rect class=\"point\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}: {}</title></rect>",
                            x + 0.5,
                            (bar_w - 1.0).max(1.0),
                            h.max(0.0),
                            escape(&self.categories[i]),
                            escape(&format_number(v))
                        );
                        if self.value_labels && label_fits {
                            w!(
                                out,
                                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#111827\" text-anchor=\"middle\">{}</text>",
                                x + bar_w / 2.0,
                                top - 3.0,
                                escape(&format_number(v))
                            );
                        }
                    }
                }
                CategoryStyle::Points => {
                    let mut d = String::new();
                    let mut prev: Option<usize> = None;
                    for &(i, v) in &points {
                        let x = frame.left + band * (i as f64 + 0.5);
                        // A missing category breaks the line rather than bridging it.
                        let cmd = if prev.is_some_and(|p| p + 1 == i) {
                            " L"
                        } else {
                            " M"
                        };
                        w!(d, "{cmd}{x:.1} {:.1}", py(v));
                        prev = Some(i);
                    }
                    w!(
                        out,
                        "<path d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-linejoin=\"round\"/>",
                        d.trim_start()
                    );
                    for &(i, v) in &points {
                        let x = frame.left + band * (i as f64 + 0.5);
                        let y = py(v);
                        w!(
                            out,
                            "<circle class=\"point\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{color}\"><title>{}: {}</title></circle>",
                            escape(&self.categories[i]),
                            escape(&format_number(v))
                        );
                        if self.value_labels && label_fits {
                            w!(
                                out,
                                "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#111827\" text-anchor=\"middle\" {HALO}>{}</text>",
                                y - 8.0,
                                escape(&format_number(v))
                            );
                        }
                    }
                }
            }
            out.push_str("</g>");
        }
        frame.thresholds(&mut out, &self.thresholds, ydom.1, py);
        if n_cat == 0 || values().next().is_none() {
            frame.no_data(&mut out);
        }
        out.push_str("</svg>");
        out
    }
}

/// A white outline behind text, so labels stay readable where they cross lines.
const HALO: &str =
    "paint-order=\"stroke\" stroke=\"#ffffff\" stroke-width=\"3\" stroke-linejoin=\"round\"";

fn series_color(own: Option<&str>, i: usize) -> String {
    own.map_or_else(|| PALETTE[i % PALETTE.len()].to_string(), str::to_string)
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

fn max_label_width(ticks: &[f64]) -> f64 {
    ticks
        .iter()
        .map(|t| text_width(&format_number(*t), TICK_FONT))
        .fold(0.0, f64::max)
}

struct LegendItem {
    name: String,
    color: String,
    dashed: bool,
    bar: bool,
}

/// The common layout: title, legend rows, plot area margins.
struct Frame {
    width: f64,
    height: f64,
    top: f64,
    left: f64,
    right: f64,
    bottom: f64,
    /// Legend rows: (x, item index) per row.
    legend_rows: Vec<Vec<(f64, usize)>>,
}

impl Frame {
    fn new(width: f64, height: f64, legend: &[LegendItem]) -> Self {
        let width = if width.is_finite() && width >= 200.0 {
            width
        } else {
            760.0
        };
        let height = if height.is_finite() && height >= 150.0 {
            height
        } else {
            320.0
        };
        // Lay the legend out in rows under the title, wrapping when a row is full.
        let mut rows: Vec<Vec<(f64, usize)>> = Vec::new();
        let mut x = 12.0;
        for (i, item) in legend.iter().enumerate() {
            let w = 26.0 + text_width(&item.name, LEGEND_FONT) + 16.0;
            if rows.is_empty() || (x + w > width - 12.0 && x > 12.0) {
                rows.push(Vec::new());
                x = 12.0;
            }
            if let Some(row) = rows.last_mut() {
                row.push((x, i));
            }
            x += w;
        }
        let top = 30.0 + rows.len() as f64 * 18.0 + 10.0;
        Frame {
            width,
            height,
            top,
            left: 60.0,
            right: 20.0,
            bottom: 44.0,
            legend_rows: rows,
        }
    }

    fn plot_w(&self) -> f64 {
        (self.width - self.left - self.right).max(10.0)
    }

    fn plot_h(&self) -> f64 {
        (self.height - self.top - self.bottom).max(10.0)
    }

    fn open(&self, out: &mut String, kind: &str, title: &str) {
        let t = escape(title);
        w!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart chart-{kind}\" viewBox=\"0 0 {:.0} {:.0}\" width=\"100%\" preserveAspectRatio=\"xMidYMid meet\" role=\"img\" aria-label=\"{t}\" font-family=\"{FONT}\"><title>{t}</title><rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/><text x=\"12\" y=\"20\" font-size=\"{TITLE_FONT}\" font-weight=\"600\" fill=\"#111827\">{t}</text>",
            self.width,
            self.height
        );
    }

    fn legend(&self, out: &mut String, items: &[LegendItem]) {
        out.push_str(&format!(
            "<g class=\"legend\" font-size=\"{LEGEND_FONT}\" fill=\"#374151\">"
        ));
        for (r, row) in self.legend_rows.iter().enumerate() {
            let y = 30.0 + r as f64 * 18.0 + 9.0;
            for &(x, i) in row {
                let Some(item) = items.get(i) else { continue };
                let color = escape(&item.color);
                if item.bar {
                    w!(
                        out,
                        "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"18\" height=\"10\" fill=\"{color}\"/>",
                        y - 5.0
                    );
                } else {
                    let dash = if item.dashed {
                        " stroke-dasharray=\"5 3\""
                    } else {
                        ""
                    };
                    w!(
                        out,
                        "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-width=\"2.5\"{dash}/>",
                        x + 18.0
                    );
                }
                w!(
                    out,
                    "<text x=\"{:.1}\" y=\"{y:.1}\" dominant-baseline=\"middle\">{}</text>",
                    x + 24.0,
                    escape(&item.name)
                );
            }
        }
        out.push_str("</g>");
    }

    fn axes(&self, out: &mut String, right: bool) {
        let (l, t, b) = (self.left, self.top, self.top + self.plot_h());
        let r = self.left + self.plot_w();
        w!(
            out,
            "<g class=\"axes\" stroke=\"#6b7280\" stroke-width=\"1\"><line x1=\"{l:.1}\" y1=\"{t:.1}\" x2=\"{l:.1}\" y2=\"{b:.1}\"/><line x1=\"{l:.1}\" y1=\"{b:.1}\" x2=\"{r:.1}\" y2=\"{b:.1}\"/>"
        );
        if right {
            w!(
                out,
                "<line x1=\"{r:.1}\" y1=\"{t:.1}\" x2=\"{r:.1}\" y2=\"{b:.1}\"/>"
            );
        }
        out.push_str("</g>");
    }

    fn axis_titles(&self, out: &mut String, x: &str, y: &str, y2: Option<&str>) {
        let cx = self.left + self.plot_w() / 2.0;
        let cy = self.top + self.plot_h() / 2.0;
        w!(
            out,
            "<g class=\"axis-titles\" font-size=\"12\" fill=\"#111827\" text-anchor=\"middle\"><text class=\"x-title\" x=\"{cx:.1}\" y=\"{:.1}\">{}</text><text class=\"y-title\" x=\"14\" y=\"{cy:.1}\" transform=\"rotate(-90 14 {cy:.1})\">{}</text>",
            self.height - 8.0,
            escape(x),
            escape(y)
        );
        if let Some(y2) = y2 {
            let x2 = self.width - 10.0;
            w!(
                out,
                "<text class=\"y2-title\" x=\"{x2:.1}\" y=\"{cy:.1}\" transform=\"rotate(90 {x2:.1} {cy:.1})\">{}</text>",
                escape(y2)
            );
        }
        out.push_str("</g>");
    }

    /// Horizontal limit lines, drawn over the data so bars cannot hide them; the label sits at
    /// the left end, where the load (and so the data) is usually lowest. A limit above the
    /// scale (`top`) is named in a note instead.
    fn thresholds(
        &self,
        out: &mut String,
        thresholds: &[Threshold],
        top: f64,
        py: impl Fn(f64) -> f64,
    ) {
        for t in thresholds {
            if !t.value.is_finite() {
                continue;
            }
            if t.value > top {
                w!(
                    out,
                    "<text class=\"threshold-note\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"{TICK_FONT}\" fill=\"#b91c1c\" text-anchor=\"end\" {HALO}>↑ {} (above this scale)</text>",
                    self.left + self.plot_w() - 4.0,
                    self.top + 12.0,
                    escape(&t.label)
                );
                continue;
            }
            let y = py(t.value);
            w!(
                out,
                "<g class=\"threshold\"><line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#b91c1c\" stroke-width=\"1.2\" stroke-dasharray=\"6 4\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{TICK_FONT}\" fill=\"#b91c1c\" text-anchor=\"start\" {HALO}>{}</text></g>",
                self.left,
                self.left + self.plot_w(),
                self.left + 6.0,
                y - 4.0,
                escape(&t.label)
            );
        }
    }

    fn no_data(&self, out: &mut String) {
        w!(
            out,
            "<text class=\"no-data\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" fill=\"#6b7280\" text-anchor=\"middle\">no data</text>",
            self.left + self.plot_w() / 2.0,
            self.top + self.plot_h() / 2.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_points(svg: &str) -> Vec<usize> {
        // Counts the M/L commands of every <path d="…">.
        svg.match_indices("<path d=\"")
            .map(|(i, m)| {
                let rest = &svg[i + m.len()..];
                let d = &rest[..rest.find('"').unwrap()];
                d.matches(['M', 'L']).count()
            })
            .collect()
    }

    #[test]
    fn ticks_from_0_to_87_are_every_20() {
        assert_eq!(nice_ticks(0.0, 87.0, 5), vec![0.0, 20.0, 40.0, 60.0, 80.0]);
    }

    #[test]
    fn ticks_are_round_for_small_and_offset_ranges() {
        assert_eq!(nice_ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(0.0, 0.3, 3), vec![0.0, 0.1, 0.2, 0.3]);
        assert_eq!(
            nice_ticks(13.0, 61.0, 5),
            vec![20.0, 30.0, 40.0, 50.0, 60.0]
        );
        assert_eq!(
            nice_ticks(0.0, 300.0, 6),
            vec![0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0]
        );
        assert_eq!(nice_ticks(5.0, 5.0, 5), vec![5.0]);
        assert!(nice_ticks(f64::NAN, 1.0, 5).is_empty());
        assert!(nice_ticks(2.0, 1.0, 5).is_empty());
        assert!(nice_ticks(-f64::MAX, f64::MAX, 5).is_empty());
    }

    #[test]
    fn numbers_are_short_and_round() {
        assert_eq!(format_number(1200.0), "1.2k");
        assert_eq!(format_number(0.35), "0.35");
        assert_eq!(format_number(12.5), "12.5");
        assert_eq!(format_number(125.4), "125");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(80.0), "80");
        assert_eq!(format_number(999.7), "1k");
        assert_eq!(format_number(2_500_000.0), "2.5M");
        assert_eq!(format_number(-40.0), "-40");
        assert_eq!(format_number(0.001234), "0.00123");
        assert_eq!(format_number(f64::NAN), "–");
    }

    #[test]
    fn text_is_xml_escaped_everywhere() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;"
        );
        let mut c = LineChart::new("<script>&", "time (s)", "latency (ms)");
        c.series
            .push(Series::new("p95 \"<x>\"", vec![(0.0, 1.0), (1.0, 2.0)]));
        c.markers.push(Marker {
            x: 0.5,
            label: "stage <2>".into(),
        });
        let svg = c.render();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;&amp;"));
        assert!(svg.contains("data-series=\"p95 &quot;&lt;x&gt;&quot;\""));
        assert!(svg.contains("stage &lt;2&gt;"));
    }

    #[test]
    fn a_line_chart_with_n_points_has_n_points_in_its_path() {
        for n in [1usize, 2, 7, 300] {
            let mut c = LineChart::new("qps", "time (s)", "requests/s");
            c.series.push(Series::new(
                "qps",
                (0..n).map(|i| (i as f64, (i * i) as f64)).collect(),
            ));
            let svg = c.render();
            assert_eq!(path_points(&svg), vec![n], "n = {n}");
            assert!(svg.contains(&format!("data-points=\"{n}\"")));
            assert!(svg.contains("data-series=\"qps\""));
            assert!(svg.contains("<title>qps</title>"));
            assert!(svg.contains("time (s)") && svg.contains("requests/s"));
        }
    }

    #[test]
    fn a_gap_in_a_series_starts_a_new_subpath() {
        let mut c = LineChart::new("t", "time (s)", "ms");
        c.series.push(Series::new(
            "p95",
            vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, 4.0)],
        ));
        let svg = c.render();
        let d_start = svg.find("<path d=\"").unwrap() + 9;
        let d = &svg[d_start..d_start + svg[d_start..].find('"').unwrap()];
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
    }

    #[test]
    fn empty_charts_do_not_panic_and_say_no_data() {
        let c = LineChart::new("empty", "time (s)", "requests/s");
        assert!(c.render().contains("no data"));
        let mut c = LineChart::new("empty series", "time (s)", "requests/s");
        c.series.push(Series::new("qps", Vec::new()));
        c.series
            .push(Series::new("users", Vec::new()).on_right_axis());
        let svg = c.render();
        assert!(svg.contains("no data") && svg.ends_with("</svg>"));
        let c = CategoryChart::new("empty", "stage", "requests/s", CategoryStyle::Bars);
        assert!(c.render().contains("no data"));
        let mut c = CategoryChart::new("nan", "stage", "ms", CategoryStyle::Points);
        c.categories = vec!["10 users".into()];
        c.series
            .push(CategorySeries::new("p95", vec![f64::NAN, 3.0]));
        assert!(c.render().contains("no data"));
        let mut c = LineChart::new("huge", "time (s)", "ms");
        c.series.push(Series::new(
            "x",
            vec![(0.0, -f64::MAX), (f64::MAX, f64::MAX)],
        ));
        assert!(c.render().ends_with("</svg>"));
    }

    #[test]
    fn a_category_chart_has_one_bar_or_dot_per_value() {
        let mut c = CategoryChart::new("QPS", "stage", "requests/s", CategoryStyle::Bars);
        c.categories = vec!["10 users".into(), "50 users".into(), "100 users".into()];
        c.series
            .push(CategorySeries::new("qps", vec![100.0, 480.0, 900.0]));
        let svg = c.render();
        assert_eq!(svg.matches("<rect class=\"point\"").count(), 3);
        assert!(svg.contains("50 users") && svg.contains("data-points=\"3\""));
        c.style = CategoryStyle::Points;
        c.series
            .push(CategorySeries::new("other", vec![1.0, f64::NAN, 3.0]));
        let svg = c.render();
        assert_eq!(svg.matches("<circle class=\"point\"").count(), 5);
        // The missing middle value splits the second line in two.
        assert_eq!(path_points(&svg), vec![3, 2]);
    }

    #[test]
    fn the_right_axis_and_thresholds_are_drawn_with_titles() {
        let mut c = LineChart::new("load", "time (s)", "requests/s");
        c.y2_title = Some("users".into());
        c.series
            .push(Series::new("qps", vec![(0.0, 10.0), (10.0, 90.0)]));
        c.series.push(
            Series::new("users", vec![(0.0, 10.0), (10.0, 50.0)])
                .on_right_axis()
                .dashed(),
        );
        c.thresholds.push(Threshold {
            value: 100.0,
            label: "SLA QPS ≥ 100".into(),
        });
        c.thresholds.push(Threshold {
            value: 10_000.0,
            label: "far".into(),
        });
        let svg = c.render();
        assert!(svg.contains("class=\"y2-title\"") && svg.contains(">users</text>"));
        assert!(svg.contains("SLA QPS ≥ 100"));
        assert!(svg.contains("far (above this scale)"));
    }

    #[test]
    fn rendering_is_deterministic() {
        let mut c = LineChart::new("d", "time (s)", "ms");
        c.series
            .push(Series::new("a", vec![(0.0, 0.1), (1.0, 0.2), (2.0, 0.3)]));
        assert_eq!(c.render(), c.clone().render());
    }
}
