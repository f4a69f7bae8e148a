//! Server-side SVG charts for the dashboard: one small renderer (stacked bars with a legend and
//! a value axis), no JavaScript chart library. The output is plain SVG 1.1 text with every label
//! XML-escaped, so it is safe to show as an image and deterministic to test.
//!
//! Small values stay visible: a non-zero segment is at least [`MIN_SEGMENT`] px tall (a route
//! earning 0.000068 USD beside one earning 50 USD is a thin band, not nothing), and its exact
//! value is in its tooltip and, summed over the chart, in the legend. A log axis was the other
//! way; it would misstate stacked sums, which are the point of the chart.

use std::fmt::Write as _;

/// Colours of the series, in order (colour-blind friendly, Okabe-Ito); repeats past 8.
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
];

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 44.0;
/// The least height of a non-zero segment, px.
pub const MIN_SEGMENT: f64 = 3.0;

/// One stacked series: a name (legend) and one value per x label.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// One value per x position (missing positions count as zero), for the geometry.
    pub values: Vec<f64>,
    /// The exact text of each value (tooltips; e.g. `0.000068 USD`); where missing, the value
    /// itself.
    pub labels: Vec<String>,
    /// The series' total, exact, shown in the legend after its name.
    pub total: Option<String>,
}

impl Series {
    /// A series labelled by its values alone.
    pub fn plain(name: impl Into<String>, values: Vec<f64>) -> Self {
        Series {
            name: name.into(),
            values,
            ..Series::default()
        }
    }

    fn legend(&self) -> String {
        match &self.total {
            Some(t) => format!("{} ({t})", self.name),
            None => self.name.clone(),
        }
    }
}

/// A stacked bar chart.
#[derive(Debug, Clone)]
pub struct BarChart {
    /// Title, top left.
    pub title: String,
    /// Unit shown after axis values (e.g. `USD`, `requests`).
    pub unit: String,
    /// One label per bar.
    pub labels: Vec<String>,
    /// Stacked bottom to top, in order.
    pub series: Vec<Series>,
}

/// Escape text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A "nice" axis maximum and step for values up to `max` (1, 2 or 5 times a power of ten).
fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// An axis value without float noise (`0.30000000000000004` -> `0.3`).
fn axis_label(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.to_owned()
    }
}

impl BarChart {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let n = self.labels.len().max(1);
        let totals: Vec<f64> = (0..n)
            .map(|i| {
                self.series
                    .iter()
                    .map(|s| s.values.get(i).copied().unwrap_or(0.0).max(0.0))
                    .sum()
            })
            .collect();
        let max = totals.iter().copied().fold(0.0, f64::max);
        let (axis_max, step) = nice_axis(max);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let slot = plot_w / n as f64;
        let bar = (slot * 0.7).max(1.0);
        let y = |v: f64| TOP + plot_h - v / axis_max * plot_h;

        let mut out = String::new();
        let _ = write!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\" font-size=\"11\">",
            escape(&self.title)
        );
        let _ = write!(
            out,
            "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/><text x=\"{LEFT}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{}</text>",
            escape(&self.title)
        );
        // Value axis: gridlines and labels.
        let mut v = 0.0;
        while v <= axis_max + step / 2.0 {
            let yy = y(v);
            let _ = write!(
                out,
                "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e5e5e5\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
                WIDTH - RIGHT,
                LEFT - 4.0,
                yy + 4.0,
                escape(&axis_label(v))
            );
            v += step;
        }
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{:.1}\" fill=\"#555\">{}</text>",
            TOP - 6.0,
            escape(&self.unit)
        );
        // Bars, stacked bottom to top; every non-zero segment at least MIN_SEGMENT tall.
        for i in 0..n {
            let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
            let mut top = y(0.0);
            for (k, s) in self.series.iter().enumerate() {
                let val = s.values.get(i).copied().unwrap_or(0.0).max(0.0);
                if val <= 0.0 {
                    continue;
                }
                let h = (val / axis_max * plot_h).max(MIN_SEGMENT);
                let y1 = (top - h).max(TOP - MIN_SEGMENT * 4.0);
                let label = s.labels.get(i).cloned().unwrap_or_else(|| axis_label(val));
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y1:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
                    top - y1,
                    PALETTE[k % PALETTE.len()],
                    escape(&s.name),
                    escape(&label)
                );
                top = y1;
            }
        }
        // Category labels, thinned to at most ~12.
        let every = n.div_ceil(12);
        for (i, label) in self.labels.iter().enumerate() {
            if i % every != 0 {
                continue;
            }
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
                LEFT + slot * (i as f64 + 0.5),
                HEIGHT - BOTTOM + 14.0,
                escape(label)
            );
        }
        // Legend.
        let mut lx = LEFT;
        for (k, s) in self.series.iter().enumerate() {
            let text = s.legend();
            let _ = write!(
                out,
                "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                HEIGHT - 16.0,
                PALETTE[k % PALETTE.len()],
                lx + 14.0,
                HEIGHT - 7.0,
                escape(&text)
            );
            lx += 24.0 + 6.2 * text.chars().count() as f64;
        }
        if self.series.is_empty() || max <= 0.0 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#888\">no data in this range</text>",
                LEFT + plot_w / 2.0,
                TOP + plot_h / 2.0
            );
        }
        out.push_str("</svg>");
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn axis_is_nice() {
        assert_eq!(nice_axis(0.0), (1.0, 0.25));
        assert_eq!(nice_axis(7.0), (8.0, 2.0));
        assert_eq!(nice_axis(100.0), (100.0, 25.0));
        assert_eq!(axis_label(0.1 + 0.2), "0.3");
        assert_eq!(axis_label(20.0), "20");
    }

    #[test]
    fn renders_escaped_stacked_bars() {
        let svg = BarChart {
            title: "Revenue <USD>".into(),
            unit: "USD".into(),
            labels: vec!["a".into(), "b".into()],
            series: vec![
                Series::plain("r&1", vec![1.0, 2.0]),
                Series::plain("r2", vec![3.0]),
            ],
        }
        .render();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains("Revenue &lt;USD&gt;"));
        assert!(svg.contains("<title>r&amp;1: 2</title>"));
        assert!(svg.contains("<title>r2: 3</title>"));
        assert!(!svg.contains("<USD>"));
        // Three non-zero segments, plus the legend's two swatches and the background.
        assert_eq!(svg.matches("<rect").count(), 3 + 2 + 1);
        assert!(!svg.contains("no data"));
    }

    #[test]
    fn a_tiny_value_stays_visible_with_its_exact_label() {
        let svg = BarChart {
            title: "Revenue".into(),
            unit: "USD".into(),
            labels: vec!["d1".into()],
            series: vec![
                Series {
                    name: "big".into(),
                    values: vec![50.0],
                    labels: vec!["50.000000 USD".into()],
                    total: Some("50.000000 USD".into()),
                },
                Series {
                    name: "tiny".into(),
                    values: vec![0.000068],
                    labels: vec!["0.000068 USD".into()],
                    total: Some("0.000068 USD".into()),
                },
            ],
        }
        .render();
        // MIN_SEGMENT (3 px) tall, in the second colour, with its exact value.
        assert!(
            svg.contains("height=\"3.0\" fill=\"#E69F00\"><title>tiny: 0.000068 USD</title>"),
            "{svg}"
        );
        assert!(svg.contains(">tiny (0.000068 USD)</text>"));
    }

    #[test]
    fn empty_chart_says_so() {
        let svg = BarChart {
            title: "t".into(),
            unit: "u".into(),
            labels: vec![],
            series: vec![],
        }
        .render();
        assert!(svg.contains("no data in this range"));
    }
}
