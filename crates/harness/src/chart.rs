//! The picture of `bench migrate --svg FILE`: each row's throughput and downtime as bars,
//! beside each row's bytes on the stream over time (the `query-migrate` samples polled
//! while it ran). Drawn with `plotters`' SVG backend; the data series are built by pure
//! functions, tested on their own.

use crate::bench_migrate::{MigrateReport, Row};
use plotters::{
    coord::{ranged1d::SegmentValue, Shift},
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// Bytes on the stream at one moment of a migration, as `query-migrate` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Milliseconds since `migrate`, on the benchmark's clock (the VMMs differ in when
    /// they update `total-time`: ours at the end of each round, QEMU continuously).
    pub ms: u64,
    /// `ram.transferred`.
    pub bytes: u64,
}

impl Sample {
    /// The sample in a `query-migrate` reply received `since_migrate` after `migrate`;
    /// None without a byte count (QEMU's "setup" has none).
    pub fn from_reply(info: &Value, since_migrate: Duration) -> Option<Sample> {
        Some(Sample {
            ms: since_migrate.as_millis() as u64,
            bytes: info.get("ram")?.get("transferred")?.as_u64()?,
        })
    }
}

/// One row's line: (seconds since `migrate`, GiB sent).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The row's name.
    pub name: String,
    /// Points in time order, from (0, 0).
    pub points: Vec<(f64, f64)>,
}

/// Why the chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// Nothing was measured: no row ran.
    #[error("no row to draw: every row failed or was skipped")]
    Empty,
    /// plotters failed.
    #[error("cannot draw the chart: {0}")]
    Draw(String),
    /// The file could not be written.
    #[error("cannot write {file}")]
    Write {
        /// The file.
        file: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

const GIB: f64 = (1u64 << 30) as f64;

/// The line of `name` from its samples: from (0, 0), in time order, one point per
/// moment (the last reply of a moment wins), and never falling (the count only grows; a
/// smaller one is a reply that raced its predecessor). None without a sample.
pub fn series(name: &str, samples: &[Sample]) -> Option<Series> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by_key(|s| s.ms);
    let mut points = vec![(0.0, 0.0)];
    let mut high = 0u64;
    for s in sorted {
        high = high.max(s.bytes);
        let point = (s.ms as f64 / 1e3, high as f64 / GIB);
        match points.last_mut() {
            Some(last) if last.0 == point.0 => *last = point,
            _ => points.push(point),
        }
    }
    Some(Series {
        name: name.to_string(),
        points,
    })
}

/// The rows that ran, with their colour (the same in every panel).
fn drawn(rows: &[Row]) -> Vec<(&Row, RGBColor)> {
    // Ours in blues and greens, QEMU's in warm colours, so the two families read apart.
    const OURS: [RGBColor; 4] = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(23, 190, 207),
        RGBColor(148, 103, 189),
    ];
    const QEMU: [RGBColor; 5] = [
        RGBColor(255, 127, 14),
        RGBColor(214, 39, 40),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(188, 189, 34),
    ];
    let (mut ours, mut qemu) = (0, 0);
    rows.iter()
        .filter(|r| r.ran())
        .map(|r| {
            let color = if r.name.starts_with("qemu") {
                qemu += 1;
                QEMU[(qemu - 1) % QEMU.len()]
            } else {
                ours += 1;
                OURS[(ours - 1) % OURS.len()]
            };
            (r, color)
        })
        .collect()
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Horizontal bars, the first row on top, each labelled with its value.
fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    bars: &[(String, f64, RGBColor)],
    decimals: usize,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = bars.len();
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-3) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(24)
        .y_label_area_size(120)
        // A segmented 0..k has k + 1 segments (its end is a value too): one per bar; an
        // empty range draws no labels, so one bar gets a blank band above it.
        .build_cartesian_2d(0f64..max, (0..n.saturating_sub(1).max(1)).into_segmented())?;
    // Segment i shows bar n-1-i, so the table's first row is the top bar.
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => n
            .checked_sub(i + 1)
            .and_then(|j| bars.get(j))
            .map_or_else(String::new, |b| b.0.clone()),
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(n.max(1))
        .y_label_formatter(&label)
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(j, (_, v, color))| {
        let i = n - 1 - j;
        let mut r = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (*v, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        );
        r.set_margin(4, 4, 0, 0);
        r
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(j, (_, v, _))| {
        Text::new(
            format!(" {v:.decimals$}"),
            (*v, SegmentValue::CenterOf(n - 1 - j)),
            TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    }))?;
    Ok(())
}

/// Bytes sent over time, one line per row.
fn lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lines: &[(Series, RGBColor)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let all = || lines.iter().flat_map(|(s, _)| s.points.iter());
    let max_t = all().map(|p| p.0).fold(0.0, f64::max).max(1e-3) * 1.05;
    let max_b = all().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption("bytes on the stream since migrate", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..max_t, 0f64..max_b)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("seconds")
        .y_desc("GiB sent")
        .draw()?;
    for (s, color) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The report's chart as SVG text.
pub fn render(report: &MigrateReport) -> Result<String, ChartError> {
    let rows = drawn(&report.rows);
    if rows.is_empty() {
        return Err(ChartError::Empty);
    }
    let throughput: Vec<_> = rows
        .iter()
        .map(|(r, c)| (r.name.clone(), r.throughput_gib_s, *c))
        .collect();
    let downtime: Vec<_> = rows
        .iter()
        .map(|(r, c)| (r.name.clone(), r.downtime_ms as f64, *c))
        .collect();
    let series: Vec<_> = rows
        .iter()
        .filter_map(|(r, c)| series(&r.name, &r.samples).map(|s| (s, *c)))
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1280, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root
            .titled(&report.title(), ("sans-serif", 18))
            .map_err(draw_err)?;
        let (left, right) = root.split_horizontally(560);
        let (top, bottom) = left.split_vertically(300);
        bars(&top, "throughput, GiB/s of guest RAM", &throughput, 2).map_err(draw_err)?;
        bars(&bottom, "downtime, ms", &downtime, 0).map_err(draw_err)?;
        lines(&right, &series).map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// Draws the report's chart into `path`.
pub fn write_svg(report: &MigrateReport, path: &std::path::Path) -> Result<(), ChartError> {
    let svg = render(report)?;
    std::fs::write(path, svg).map_err(|source| ChartError::Write {
        file: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(ms: u64, bytes: u64) -> Sample {
        Sample { ms, bytes }
    }

    #[test]
    fn samples_come_from_query_migrate_replies() {
        let at = Duration::from_millis(120);
        // The VMM's own total-time is not the sample's clock (ours updates it per round).
        let active = json!({"status": "active", "total-time": 0, "ram": {"transferred": 4096}});
        assert_eq!(Sample::from_reply(&active, at), Some(s(120, 4096)));
        // QEMU in "setup" has no RAM figures yet: no sample.
        assert_eq!(Sample::from_reply(&json!({"status": "setup"}), at), None);
        assert_eq!(
            Sample::from_reply(&json!({"ram": {"transferred": -1}}), at),
            None
        );
    }

    #[test]
    fn a_series_starts_at_zero_and_never_falls() {
        let g = 1u64 << 30;
        let line = series(
            "helper-1",
            &[
                s(500, g / 2),
                s(250, g / 4),
                s(500, g / 2 + 1),
                s(750, g / 4),
                s(1000, g),
            ],
        )
        .unwrap();
        assert_eq!(line.name, "helper-1");
        let xs: Vec<f64> = line.points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [0.0, 0.25, 0.5, 0.75, 1.0]);
        // One point per moment, the last reply of it; a smaller count later is held level.
        assert_eq!(line.points[2].1, (g / 2 + 1) as f64 / GIB);
        assert_eq!(line.points[3].1, line.points[2].1);
        assert_eq!(line.points[4], (1.0, 1.0));
        assert!(series("qemu", &[]).is_none());
    }

    fn row(name: &str, verdict: &'static str, samples: Vec<Sample>) -> Row {
        Row {
            name: name.into(),
            throughput_gib_s: 1.5,
            total_ms: 700,
            downtime_ms: 12,
            setup_ms: 3,
            cpu_s: 1.0,
            rounds: 2,
            transferred_bytes: 1 << 30,
            verdict,
            note: None,
            samples,
        }
    }

    #[test]
    fn the_svg_shows_every_row_that_ran_and_no_other() {
        let mut report = MigrateReport::example();
        report.rows = vec![
            row("plain", "pass", vec![s(100, 1 << 29), s(300, 1 << 30)]),
            row("helper-1", "pass", vec![s(700, 1 << 30)]),
            row("qemu-tls", "not run", Vec::new()),
            row("qemu", "unchecked", vec![s(2000, 1 << 30)]),
        ];
        let svg = render(&report).unwrap();
        if let Some(path) = std::env::var_os("SEVMIRROR_CHART_TEST_SVG") {
            std::fs::write(path, &svg).unwrap();
        }
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        // plotters writes each text's content on a line of its own.
        let texts = |name: &str| svg.lines().filter(|l| l.trim() == name).count();
        for name in ["plain", "helper-1", "qemu"] {
            // Two bar labels (throughput, downtime) and a legend entry each.
            assert_eq!(texts(name), 3, "{name}");
        }
        assert!(!svg.contains("qemu-tls"));
        assert!(svg.contains("polyline"), "no line drawn");
        // One row alone still draws (one bar per panel, one line).
        report.rows.truncate(1);
        let one = render(&report).unwrap();
        assert_eq!(one.lines().filter(|l| l.trim() == "plain").count(), 3);
        report.rows[0].verdict = "not run";
        assert!(matches!(render(&report), Err(ChartError::Empty)));
    }
}
