//! Charts as inline SVG, written by hand: every series is a `<g class="series"
//! data-series="…">` with a `<title>` on each point, so that a browser test can count what
//! rendered and a reader can hover for the values. Series whose points coincide are drawn
//! side by side (dodged) where the x axis has few values, and the chart says which coincide.

use std::fmt::Write as _;

use super::escape;

/// Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), then more.
const PALETTE: [&str; 10] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C6D1F", "#000000",
    "#7F7F7F", "#F0E442",
];

/// Dash patterns by style index: solid, dashed, dotted.
const DASHES: [&str; 3] = ["", "7 4", "2 3"];

/// The colour of palette index `i`.
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// One point: y with its interval, and what hovering it says.
#[derive(Clone, Debug)]
pub struct Point {
    /// Position on the x axis (a category's index on a category axis).
    pub x: f64,
    /// Value.
    pub y: f64,
    /// Lower and upper end of its interval.
    pub interval: Option<(f64, f64)>,
    /// Tooltip.
    pub tip: String,
}

/// A line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Name, in the legend and in `data-series`.
    pub name: String,
    /// Palette index: colour and marker shape.
    pub color: usize,
    /// Dash index: solid, dashed, dotted.
    pub dash: usize,
    /// Points in x order; a gap in a line where `y` is not finite.
    pub points: Vec<Point>,
    /// Where a sample failed (x and why): marked on the x axis, never drawn as a value.
    pub failures: Vec<(f64, String)>,
}

/// The x axis.
#[derive(Clone, Debug)]
pub enum XAxis {
    /// Numbers from `min` to `max`, with the ticks given, or chosen when none are.
    Linear {
        /// Title.
        label: String,
        /// Left end.
        min: f64,
        /// Right end.
        max: f64,
        /// Tick positions and labels.
        ticks: Vec<(f64, String)>,
    },
    /// Named positions 0, 1, 2, …
    Categories {
        /// Title.
        label: String,
        /// Names.
        names: Vec<String>,
    },
}

/// A shaded x range with a label: a stage's work or its settling.
#[derive(Clone, Debug)]
pub struct Band {
    /// Start.
    pub from: f64,
    /// End.
    pub to: f64,
    /// Label at its top.
    pub label: String,
    /// A settle band is hatched grey, a stage band tinted.
    pub settle: bool,
}

/// A line chart with 95 % intervals as whiskers.
#[derive(Clone, Debug)]
pub struct LineChart {
    /// `data-chart` id, unique in the page.
    pub id: String,
    /// Caption.
    pub title: String,
    /// X axis.
    pub x: XAxis,
    /// Y axis title.
    pub y_label: String,
    /// Logarithmic y axis (values ≤ 0 are left out).
    pub log_y: bool,
    /// Lines.
    pub series: Vec<Series>,
    /// Shaded ranges.
    pub bands: Vec<Band>,
    /// Vertical markers at x with a label.
    pub marks: Vec<(f64, String)>,
    /// Offset coinciding series sideways (for axes with few x values).
    pub dodge: bool,
    /// The y axis includes 0 (off for sizes over time, whose changes are small).
    pub zero: bool,
    /// Size in pixels.
    pub size: (f64, f64),
    /// A sentence under the chart.
    pub caption: String,
}

/// Plot area margins: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (58.0, 14.0, 12.0, 44.0);

/// Two series coincide when every shared point lies within this share of the y axis.
pub const COINCIDE: f64 = 0.01;

/// A number for an axis tick: as few decimals as the step needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6
        })
        .unwrap_or(6) as usize;
    format!("{v:.decimals$}")
}

/// About `n` round ticks covering `lo..hi`: (first, step, count).
fn nice_ticks(lo: f64, hi: f64, n: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() * step;
    let mut out = Vec::new();
    let mut v = first;
    while v <= hi + step * 0.5 {
        out.push(v);
        v += step;
    }
    out
}

/// A y scale: value → pixel.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    top: f64,
    bottom: f64,
}

impl Scale {
    fn t(&self, v: f64) -> f64 {
        if self.log { v.log10() } else { v }
    }

    fn px(&self, v: f64) -> f64 {
        let (lo, hi) = (self.t(self.lo), self.t(self.hi));
        self.bottom - (self.t(v) - lo) / (hi - lo) * (self.bottom - self.top)
    }

    /// Share of the axis between two values.
    fn share(&self, a: f64, b: f64) -> f64 {
        let (lo, hi) = (self.t(self.lo), self.t(self.hi));
        (self.t(a) - self.t(b)).abs() / (hi - lo)
    }
}

/// Marker `shape` at (x, y) as an SVG path.
fn marker(shape: usize, x: f64, y: f64) -> String {
    let r = 4.0;
    match shape % 5 {
        0 => format!(
            "M{:.1} {y:.1}a{r} {r} 0 1 0 {:.1} 0a{r} {r} 0 1 0 {:.1} 0Z",
            x - r,
            2.0 * r,
            -2.0 * r
        ),
        1 => format!(
            "M{:.1} {:.1}h{:.1}v{:.1}h{:.1}Z",
            x - r,
            y - r,
            2.0 * r,
            2.0 * r,
            -2.0 * r
        ),
        2 => format!(
            "M{x:.1} {:.1}L{:.1} {:.1}L{:.1} {:.1}Z",
            y - r - 1.0,
            x + r + 1.0,
            y + r,
            x - r - 1.0,
            y + r
        ),
        3 => format!(
            "M{x:.1} {:.1}L{:.1} {y:.1}L{x:.1} {:.1}L{:.1} {y:.1}Z",
            y - r - 1.0,
            x + r + 1.0,
            y + r + 1.0,
            x - r - 1.0
        ),
        _ => format!(
            "M{x:.1} {:.1}L{:.1} {:.1}L{:.1} {:.1}Z",
            y + r + 1.0,
            x + r + 1.0,
            y - r,
            x - r - 1.0,
            y - r
        ),
    }
}

/// A legend entry: a short line in the series' style with its marker, and the name.
pub fn legend_item(name: &str, color_index: usize, dash: usize) -> String {
    format!(
        "<button type=\"button\" class=\"key\" data-series=\"{n}\" aria-pressed=\"true\">\
         <svg width=\"30\" height=\"12\" aria-hidden=\"true\"><path d=\"M1 6H29\" \
         stroke=\"{c}\" stroke-width=\"2\" stroke-dasharray=\"{d}\"/><path d=\"{m}\" \
         fill=\"{c}\"/></svg>{n}</button>",
        n = escape(name),
        c = color(color_index),
        d = DASHES[dash % DASHES.len()],
        m = marker(color_index, 15.0, 6.0),
    )
}

impl LineChart {
    /// The y range: every value and interval end, 0 on a linear axis, a little room.
    fn y_range(&self) -> (f64, f64) {
        let values = self.series.iter().flat_map(|s| {
            s.points.iter().flat_map(|p| {
                let (lo, hi) = p.interval.unwrap_or((p.y, p.y));
                [p.y, lo, hi]
            })
        });
        let values: Vec<f64> = values
            .filter(|v| v.is_finite() && (!self.log_y || *v > 0.0))
            .collect();
        if self.log_y {
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if !lo.is_finite() {
                return (1.0, 10.0);
            }
            let lo = 10f64.powf(lo.log10().floor());
            let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
            return (lo, hi);
        }
        let start = if self.zero { 0.0 } else { f64::INFINITY };
        let lo = values.iter().copied().fold(start, f64::min);
        let hi = values.iter().copied().fold(-start, f64::max);
        if !lo.is_finite() || !hi.is_finite() {
            return (0.0, 1.0);
        }
        let hi = if hi - lo < 1e-9 { lo + 1.0 } else { hi };
        let pad = (hi - lo) * 0.05;
        let lo = if lo < 0.0 || !self.zero { lo - pad } else { lo };
        (lo, hi + pad)
    }

    fn y_scale(&self) -> Scale {
        let (lo, hi) = self.y_range();
        Scale {
            lo,
            hi,
            log: self.log_y,
            top: MARGIN.2,
            bottom: self.size.1 - MARGIN.3,
        }
    }

    /// Groups of series (by name) whose points coincide: the same x values, each y within
    /// [`COINCIDE`] of the axis. Empty series coincide with nothing.
    pub fn coincident(&self) -> Vec<Vec<String>> {
        let scale = self.y_scale();
        // Every point of the series with fewer points has a twin in the other: a sample that
        // failed in one series does not part two lines that lie on each other elsewhere.
        let same = |a: &Series, b: &Series| {
            let finite = |s: &Series| -> Vec<(f64, f64)> {
                s.points
                    .iter()
                    .filter(|p| p.y.is_finite())
                    .map(|p| (p.x, p.y))
                    .collect()
            };
            let (pa, pb) = (finite(a), finite(b));
            let (few, many) = if pa.len() <= pb.len() {
                (pa, pb)
            } else {
                (pb, pa)
            };
            !few.is_empty()
                && few.iter().all(|(x, y)| {
                    many.iter()
                        .any(|(u, v)| u == x && scale.share(*y, *v) <= COINCIDE)
                })
        };
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, s) in self.series.iter().enumerate() {
            match groups.iter_mut().find(|g| same(&self.series[g[0]], s)) {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        groups
            .into_iter()
            .filter(|g| g.len() > 1)
            .map(|g| g.into_iter().map(|i| self.series[i].name.clone()).collect())
            .collect()
    }

    /// The chart as a `<figure>`: caption, SVG, legend, and a note naming coinciding series.
    pub fn render(&self) -> String {
        let (w, h) = self.size;
        let (left, right) = (MARGIN.0, w - MARGIN.1);
        let scale = self.y_scale();
        let (x_lo, x_hi) = match &self.x {
            XAxis::Linear { min, max, .. } => (*min, *max),
            XAxis::Categories { names, .. } => (-0.5, names.len() as f64 - 0.5),
        };
        let xpx = |x: f64| left + (x - x_lo) / (x_hi - x_lo).max(f64::EPSILON) * (right - left);
        let mut svg = String::new();
        let _ = write!(
            svg,
            "<svg class=\"plot\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
             role=\"img\" aria-label=\"{}\">",
            escape(&self.title)
        );
        // Bands and horizontal grid first, under everything.
        for b in &self.bands {
            let (x0, x1) = (xpx(b.from), xpx(b.to).max(xpx(b.from) + 1.0));
            // The label where it fits (about 6 px a character); the title always.
            let label = if (x1 - x0) >= 6.0 * b.label.chars().count() as f64 {
                format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                    x0 + 2.0,
                    scale.top + if b.settle { 22.0 } else { 10.0 },
                    escape(&b.label)
                )
            } else {
                String::new()
            };
            let _ = write!(
                svg,
                "<g class=\"band{}\"><rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
                 height=\"{:.1}\"/>{label}<title>{}</title></g>",
                if b.settle { " settle" } else { "" },
                scale.top,
                x1 - x0,
                scale.bottom - scale.top,
                escape(&b.label),
            );
        }
        svg.push_str("<g class=\"grid\">");
        let y_ticks: Vec<f64> = if self.log_y {
            let (a, b) = (
                scale.lo.log10().round() as i32,
                scale.hi.log10().round() as i32,
            );
            (a..=b).map(|e| 10f64.powi(e)).collect()
        } else {
            nice_ticks(scale.lo, scale.hi, 5.0)
                .into_iter()
                .filter(|v| *v >= scale.lo - 1e-9 && *v <= scale.hi + 1e-9)
                .collect()
        };
        let step = if y_ticks.len() > 1 {
            y_ticks[1] - y_ticks[0]
        } else {
            1.0
        };
        for v in &y_ticks {
            let y = scale.px(*v);
            let label = if self.log_y {
                format!("{v}")
            } else {
                tick_label(*v, step)
            };
            let _ = write!(
                svg,
                "<path d=\"M{left:.1} {y:.1}H{right:.1}\"/><text class=\"yt\" x=\"{:.1}\" \
                 y=\"{:.1}\">{label}</text>",
                left - 5.0,
                y + 4.0
            );
        }
        let x_ticks: Vec<(f64, String)> = match &self.x {
            XAxis::Linear {
                ticks, min, max, ..
            } if ticks.is_empty() => {
                let t = nice_ticks(*min, *max, 8.0);
                let step = if t.len() > 1 { t[1] - t[0] } else { 1.0 };
                t.into_iter()
                    .filter(|v| *v >= *min && *v <= *max)
                    .map(|v| (v, tick_label(v, step)))
                    .collect()
            }
            XAxis::Linear { ticks, .. } => ticks.clone(),
            XAxis::Categories { names, .. } => names
                .iter()
                .enumerate()
                .map(|(i, n)| (i as f64, n.clone()))
                .collect(),
        };
        for (v, label) in &x_ticks {
            let x = xpx(*v);
            let _ = write!(
                svg,
                "<path d=\"M{x:.1} {:.1}V{:.1}\"/><text class=\"xt\" x=\"{x:.1}\" \
                 y=\"{:.1}\">{}</text>",
                scale.top,
                scale.bottom,
                scale.bottom + 15.0,
                escape(label)
            );
        }
        svg.push_str("</g>");
        let x_label = match &self.x {
            XAxis::Linear { label, .. } | XAxis::Categories { label, .. } => label,
        };
        let _ = write!(
            svg,
            "<g class=\"axes\"><path d=\"M{left:.1} {:.1}V{:.1}H{right:.1}\"/>\
             <text class=\"xl\" x=\"{:.1}\" y=\"{:.1}\">{}</text>\
             <text class=\"yl\" transform=\"translate(13 {:.1}) rotate(-90)\">{}</text></g>",
            scale.top,
            scale.bottom,
            (left + right) / 2.0,
            h - 6.0,
            escape(x_label),
            (scale.top + scale.bottom) / 2.0,
            escape(&self.y_label)
        );
        // Series, dodged: series i of k moves by (i − (k − 1) / 2) × step pixels.
        let k = self.series.len();
        let dodge_step = if self.dodge && k > 1 {
            (36.0 / k as f64).min(7.0)
        } else {
            0.0
        };
        for (i, s) in self.series.iter().enumerate() {
            let dx = (i as f64 - (k as f64 - 1.0) / 2.0) * dodge_step;
            let c = color(s.color);
            let _ = write!(
                svg,
                "<g class=\"series\" data-series=\"{}\" stroke=\"{c}\" fill=\"{c}\">",
                escape(&s.name)
            );
            let visible = |p: &&Point| p.y.is_finite() && (!self.log_y || p.y > 0.0);
            let mut d = String::new();
            let mut pen_down = false;
            for p in &s.points {
                if visible(&p) {
                    let _ = write!(
                        d,
                        "{}{:.1} {:.1}",
                        if pen_down { "L" } else { "M" },
                        xpx(p.x) + dx,
                        scale.px(p.y)
                    );
                    pen_down = true;
                } else {
                    pen_down = false;
                }
            }
            if !d.is_empty() {
                let _ = write!(
                    svg,
                    "<path class=\"line\" d=\"{d}\" fill=\"none\" stroke-dasharray=\"{}\"/>",
                    DASHES[s.dash % DASHES.len()]
                );
            }
            for p in s.points.iter().filter(visible) {
                let x = xpx(p.x) + dx;
                if let Some((lo, hi)) = p.interval
                    && lo.is_finite()
                    && hi.is_finite()
                    && (!self.log_y || lo > 0.0)
                {
                    let (y0, y1) = (scale.px(lo), scale.px(hi));
                    let _ = write!(
                        svg,
                        "<path class=\"ci\" d=\"M{x:.1} {y0:.1}V{y1:.1}M{:.1} {y0:.1}h6M{:.1} \
                         {y1:.1}h6\"/>",
                        x - 3.0,
                        x - 3.0
                    );
                }
                let _ = write!(
                    svg,
                    "<path class=\"pt\" d=\"{}\"><title>{}</title></path>",
                    marker(s.color, x, scale.px(p.y)),
                    escape(&p.tip)
                );
            }
            for (x, why) in &s.failures {
                let (x, y) = (xpx(*x), scale.bottom - 6.0);
                let _ = write!(
                    svg,
                    "<path class=\"fail\" d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\"><title>{}</title>\
                     </path>",
                    x - 4.0,
                    y - 4.0,
                    escape(&format!("{}: sample failed: {why}", s.name))
                );
            }
            svg.push_str("</g>");
        }
        for (x, label) in &self.marks {
            let x = xpx(*x);
            // Near the right edge the label goes to the left of its line.
            let (tx, anchor) = if x > right - 90.0 {
                (x - 3.0, "end")
            } else {
                (x + 3.0, "start")
            };
            let _ = write!(
                svg,
                "<g class=\"mark\"><path d=\"M{x:.1} {:.1}V{:.1}\"/><text x=\"{tx:.1}\" \
                 y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text><title>{}</title></g>",
                scale.top,
                scale.bottom,
                scale.bottom - 16.0,
                escape(label),
                escape(label)
            );
        }
        svg.push_str("</svg>");
        let legend: String = self
            .series
            .iter()
            .map(|s| legend_item(&s.name, s.color, s.dash))
            .collect();
        let notes: String = self
            .coincident()
            .into_iter()
            .map(|names| {
                format!(
                    "<p class=\"coincide\">{} coincide{}.</p>",
                    escape(&and_list(&names)),
                    if self.dodge && dodge_step > 0.0 {
                        ": drawn side by side"
                    } else {
                        ": the line drawn last hides the others"
                    }
                )
            })
            .collect();
        format!(
            "<figure class=\"chart\" data-chart=\"{}\"><figcaption>{}</figcaption>{svg}\
             <div class=\"legend\">{legend}</div>{notes}<p class=\"cap\">{}</p></figure>",
            escape(&self.id),
            escape(&self.title),
            escape(&self.caption)
        )
    }
}

/// `a`, `a and b`, `a, b and c`.
pub fn and_list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// One bar: a mean with its interval, and the values it is the mean of.
#[derive(Clone, Debug)]
pub struct Bar {
    /// Height.
    pub value: f64,
    /// Interval.
    pub interval: Option<(f64, f64)>,
    /// Tooltip.
    pub tip: String,
    /// The values behind it, each with its tooltip: drawn as dots.
    pub dots: Vec<(f64, String)>,
}

/// Bars of one kind, one per category (or none).
#[derive(Clone, Debug)]
pub struct BarSeries {
    /// Name.
    pub name: String,
    /// Palette index.
    pub color: usize,
    /// Per category.
    pub bars: Vec<Option<Bar>>,
}

/// A grouped bar chart: per category one bar of each series.
#[derive(Clone, Debug)]
pub struct BarChart {
    /// `data-chart` id.
    pub id: String,
    /// Caption.
    pub title: String,
    /// Category names.
    pub categories: Vec<String>,
    /// Y axis title.
    pub y_label: String,
    /// Series.
    pub series: Vec<BarSeries>,
    /// Size in pixels.
    pub size: (f64, f64),
    /// A sentence under the chart.
    pub caption: String,
}

impl BarChart {
    /// The chart as a `<figure>`.
    pub fn render(&self) -> String {
        let (w, h) = self.size;
        let (left, right) = (MARGIN.0, w - MARGIN.1);
        let values: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.bars.iter().flatten())
            .flat_map(|b| {
                let (lo, hi) = b.interval.unwrap_or((b.value, b.value));
                [b.value, lo, hi]
                    .into_iter()
                    .chain(b.dots.iter().map(|d| d.0))
            })
            .filter(|v| v.is_finite())
            .collect();
        let lo = values.iter().copied().fold(0.0, f64::min);
        let hi = values.iter().copied().fold(1.0, f64::max);
        let pad = (hi - lo) * 0.05;
        let scale = Scale {
            lo: if lo < 0.0 { lo - pad } else { 0.0 },
            hi: hi + pad,
            log: false,
            top: MARGIN.2,
            bottom: h - MARGIN.3,
        };
        let n = self.categories.len().max(1) as f64;
        let slot = (right - left) / n;
        let k = self.series.len().max(1) as f64;
        let bar_w = (slot * 0.7 / k).min(46.0);
        let mut svg = format!(
            "<svg class=\"plot\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
             role=\"img\" aria-label=\"{}\"><g class=\"grid\">",
            escape(&self.title)
        );
        let ticks = nice_ticks(scale.lo, scale.hi, 5.0);
        let step = if ticks.len() > 1 {
            ticks[1] - ticks[0]
        } else {
            1.0
        };
        for v in ticks
            .iter()
            .filter(|v| **v >= scale.lo - 1e-9 && **v <= scale.hi)
        {
            let y = scale.px(*v);
            let _ = write!(
                svg,
                "<path d=\"M{left:.1} {y:.1}H{right:.1}\"/><text class=\"yt\" x=\"{:.1}\" \
                 y=\"{:.1}\">{}</text>",
                left - 5.0,
                y + 4.0,
                tick_label(*v, step)
            );
        }
        for (i, c) in self.categories.iter().enumerate() {
            let _ = write!(
                svg,
                "<text class=\"xt\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                left + slot * (i as f64 + 0.5),
                scale.bottom + 15.0,
                escape(c)
            );
        }
        let zero = scale.px(0.0);
        let _ = write!(
            svg,
            "</g><g class=\"axes\"><path d=\"M{left:.1} {:.1}V{:.1}\"/><path d=\"M{left:.1} \
             {zero:.1}H{right:.1}\"/><text class=\"yl\" transform=\"translate(13 {:.1}) \
             rotate(-90)\">{}</text></g>",
            scale.top,
            scale.bottom,
            (scale.top + scale.bottom) / 2.0,
            escape(&self.y_label)
        );
        for (si, s) in self.series.iter().enumerate() {
            let c = color(s.color);
            let _ = write!(
                svg,
                "<g class=\"series\" data-series=\"{}\" stroke=\"{c}\" fill=\"{c}\">",
                escape(&s.name)
            );
            for (ci, bar) in s.bars.iter().enumerate() {
                let Some(b) = bar else { continue };
                let x0 = left + slot * (ci as f64 + 0.5) + (si as f64 - k / 2.0) * bar_w;
                let (y0, y1) = (scale.px(b.value.max(0.0)), scale.px(b.value.min(0.0)));
                let _ = write!(
                    svg,
                    "<rect class=\"bar\" x=\"{:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" \
                     height=\"{:.1}\"><title>{}</title></rect>",
                    x0 + 1.0,
                    bar_w - 2.0,
                    (y1 - y0).max(1.0),
                    escape(&b.tip)
                );
                let mid = x0 + bar_w / 2.0;
                if let Some((lo, hi)) = b.interval {
                    let (a, z) = (scale.px(lo), scale.px(hi));
                    let _ = write!(
                        svg,
                        "<path class=\"ci\" d=\"M{mid:.1} {a:.1}V{z:.1}M{:.1} {a:.1}h8M{:.1} \
                         {z:.1}h8\"/>",
                        mid - 4.0,
                        mid - 4.0
                    );
                }
                let m = b.dots.len().max(1) as f64;
                for (j, (v, tip)) in b.dots.iter().enumerate() {
                    // Spread across the bar so that equal values stay countable.
                    let x = x0 + 4.0 + (bar_w - 8.0) * (j as f64 + 0.5) / m;
                    let _ = write!(
                        svg,
                        "<circle class=\"dot\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"2.5\"><title>{}\
                         </title></circle>",
                        scale.px(*v),
                        escape(tip)
                    );
                }
            }
            svg.push_str("</g>");
        }
        svg.push_str("</svg>");
        let legend: String = self
            .series
            .iter()
            .map(|s| legend_item(&s.name, s.color, 0))
            .collect();
        format!(
            "<figure class=\"chart\" data-chart=\"{}\"><figcaption>{}</figcaption>{svg}\
             <div class=\"legend\">{legend}</div><p class=\"cap\">{}</p></figure>",
            escape(&self.id),
            escape(&self.title),
            escape(&self.caption)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, ys: &[f64]) -> Series {
        Series {
            name: name.into(),
            color: 0,
            dash: 0,
            points: ys
                .iter()
                .enumerate()
                .map(|(i, y)| Point {
                    x: 50.0 + 40.0 * i as f64,
                    y: *y,
                    interval: None,
                    tip: format!("{name} {y}"),
                })
                .collect(),
            failures: Vec::new(),
        }
    }

    fn chart(series: Vec<Series>, dodge: bool) -> LineChart {
        LineChart {
            id: "t".into(),
            title: "t".into(),
            x: XAxis::Linear {
                label: "grade".into(),
                min: 0.0,
                max: 100.0,
                ticks: Vec::new(),
            },
            y_label: "capture".into(),
            log_y: false,
            series,
            bands: Vec::new(),
            marks: Vec::new(),
            dodge,
            zero: true,
            size: (400.0, 300.0),
            caption: String::new(),
        }
    }

    /// The x coordinate of every marker of series `name`.
    fn marker_xs(svg: &str, name: &str) -> Vec<String> {
        let start = svg.find(&format!("data-series=\"{name}\"")).unwrap();
        let group = &svg[start..start + svg[start..].find("</g>").unwrap()];
        group
            .split("class=\"pt\" d=\"M")
            .skip(1)
            .map(|s| s.split(' ').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn coinciding_series_are_named_and_drawn_side_by_side() {
        // Axis 0..1.05: 0.005 apart is within 1 % of it, 0.05 is not.
        let c = chart(
            vec![
                series("fs", &[0.0, 1.0]),
                series("sqlite", &[0.005, 1.0]),
                series("garage", &[0.05, 1.0]),
                series("empty", &[]),
            ],
            true,
        );
        assert_eq!(
            c.coincident(),
            vec![vec!["fs".to_string(), "sqlite".into()]]
        );
        let html = c.render();
        assert!(
            html.contains("<p class=\"coincide\">fs and sqlite coincide: drawn side by side.</p>"),
            "{html}"
        );
        assert_ne!(marker_xs(&html, "fs"), marker_xs(&html, "sqlite"));
        assert_eq!(html.matches("<g class=\"series\"").count(), 4);
        // Without dodging the markers stay on the grade, and the note says what hides.
        let html = chart(vec![series("fs", &[0.0]), series("sqlite", &[0.0])], false).render();
        assert_eq!(marker_xs(&html, "fs"), marker_xs(&html, "sqlite"));
        assert!(html.contains("the line drawn last hides the others"));
        // Apart: no note.
        let html = chart(vec![series("fs", &[0.0]), series("sqlite", &[0.5])], true).render();
        assert!(!html.contains("coincide"));
    }

    #[test]
    fn a_gap_or_a_failure_is_never_drawn_as_a_value() {
        let mut s = series("fs", &[1.0, f64::NAN, 3.0]);
        s.failures.push((90.0, "locked".into()));
        let html = chart(vec![s], false).render();
        // Two line pieces (two moves), two markers, one failure mark; no NaN anywhere.
        let line = html.split("class=\"line\" d=\"").nth(1).unwrap();
        let d = line.split('"').next().unwrap();
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(html.matches("class=\"pt\"").count(), 2);
        assert!(html.contains("fs: sample failed: locked"));
        assert!(!html.contains("NaN") && !html.contains("inf"), "{html}");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 1.05, 5.0), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(tick_label(0.25, 0.25), "0.25");
        assert_eq!(tick_label(0.5, 0.25), "0.50");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(20.0, 10.0), "20");
        assert_eq!(
            and_list(&["a".into(), "b".into(), "c".into()]),
            "a, b and c"
        );
    }
}
