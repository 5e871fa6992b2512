//! The PNG chart of a run: latency over time, the latency distribution,
//! deliveries per second over time and memory per session, each for Otako
//! and the peer, and for a reconnect storm the sessions back and the node's
//! memory over the storm, drawn with plotters' bitmap backend. Text uses a font
//! embedded in the binary, so it renders on machines without system fonts.

use crate::latency::SecondPoint;
use crate::report::{Report, SystemResult};
use crate::storm::StormResult;
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the embedded font does not load")]
    Font,
    #[error("drawing the chart: {0}")]
    Draw(String),
}

const FONT: &[u8] = include_bytes!("../assets/bench-sans.ttf");
const FAMILY: &str = "sans-serif";
static REGISTER: Once = Once::new();

fn register_font() -> Result<(), PlotError> {
    let mut ok = true;
    REGISTER.call_once(|| {
        ok = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok();
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// Otako in blue, the peer in orange.
fn color(i: usize) -> RGBColor {
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14)][i % 2]
}

/// x of quantile `q` on the "nines" axis: 0 → 0, 0.9 → 1, 0.99 → 2, ...
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        6.0
    } else {
        -(1.0 - q).log10()
    }
}

fn nines_label(x: &f64) -> String {
    match x.round() as i32 {
        0 => "p0".into(),
        1 => "p90".into(),
        2 => "p99".into(),
        3 => "p99.9".into(),
        4 => "p99.99".into(),
        5 => "p99.999".into(),
        _ => "max".into(),
    }
}

/// Axis labels for counts: plain below 10,000, else in thousands.
fn count_label(v: f64, max: f64) -> String {
    if max < 10_000.0 {
        format!("{v:.0}")
    } else {
        format!("{:.0}k", v / 1e3)
    }
}

/// Axis labels for other numbers: no trailing zeros ("2", "0.5", not "2.0").
fn number_label(v: &f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

enum Panel {
    LatencyOverTime,
    Distribution,
    Throughput,
    Memory,
    StormSessions,
    StormMemory,
}

fn systems(r: &Report) -> Vec<&SystemResult> {
    std::iter::once(&r.otako).chain(r.peer.as_ref()).collect()
}

/// Draws the report's chart to `path` (PNG).
pub fn draw(r: &Report, path: &Path) -> Result<(), PlotError> {
    register_font()?;
    let sys = systems(r);
    let has_latency = sys
        .iter()
        .any(|s| s.drive.as_ref().is_some_and(|d| !d.series.is_empty()));
    let has_memory = sys.iter().any(|s| !s.rss_curve.is_empty());
    let mut panels = Vec::new();
    if has_latency {
        panels.extend([
            Panel::LatencyOverTime,
            Panel::Distribution,
            Panel::Throughput,
        ]);
    }
    if has_memory {
        panels.push(Panel::Memory);
    }
    if r.storm.is_some() {
        panels.extend([Panel::StormSessions, Panel::StormMemory]);
    }
    let rows = panels.len().div_ceil(2).max(1);
    let cols = if panels.len() > 1 { 2 } else { 1 };
    let title = format!(
        "otako-bench {}: {} sessions, {} node(s), layout {}, rate {}",
        r.scenario, r.plan.sessions, r.plan.nodes, r.plan.layout, r.plan.rate
    );
    let title_font = (FAMILY, 20).into_font();
    let (title_w, _) = title_font.box_size(&title).map_err(draw_err)?;
    // A single panel is narrower than the title: widen the picture to fit it.
    let w = (560 * cols as u32).max(title_w + 40);
    let h = TITLE_HEIGHT + 340 * rows as u32;
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (top, body) = root.split_vertically(TITLE_HEIGHT);
    let centred = Pos::new(HPos::Center, VPos::Center);
    top.draw(&Text::new(
        title,
        (w as i32 / 2, TITLE_HEIGHT as i32 / 2),
        title_font.into_text_style(&top).pos(centred),
    ))
    .map_err(draw_err)?;
    let areas = body.split_evenly((rows, cols));
    if panels.is_empty() {
        areas[0]
            .draw(&Text::new(
                "nothing was measured",
                (20, 20),
                (FAMILY, 16).into_font(),
            ))
            .map_err(draw_err)?;
    }
    for (panel, area) in panels.iter().zip(areas.iter()) {
        match panel {
            Panel::LatencyOverTime => latency_over_time(area, &sys)?,
            Panel::Distribution => distribution(area, &sys)?,
            Panel::Throughput => throughput(area, &sys)?,
            Panel::Memory => memory(area, &sys)?,
            Panel::StormSessions => storm_sessions(area, r.storm.as_ref())?,
            Panel::StormMemory => storm_memory(area, r.storm.as_ref())?,
        }
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

/// Height of the band above the panels that holds the run's title.
const TITLE_HEIGHT: u32 = 40;

/// What differs between the panels' frames. Margins, fonts and the room for
/// labels are the same for all, so that panels side by side line up.
struct Frame<'a> {
    caption: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    /// At most this many labels on the x axis (plotters' default is 10).
    x_labels: usize,
    x_label: &'a dyn Fn(&f64) -> String,
    y_label: &'a dyn Fn(&f64) -> String,
}

type Chart<'a, 'b, X, Y> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, Y>>;

/// Sets up one panel on `area`: caption, axes over `x` and `y`, and the grid.
fn frame<'a, 'b, X, Y>(
    area: &'a Area<'b>,
    f: &Frame<'_>,
    x: X,
    y: Y,
) -> Result<Chart<'a, 'b, X::CoordDescType, Y::CoordDescType>, PlotError>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(f.caption, (FAMILY, 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(f.x_desc)
        .y_desc(f.y_desc)
        .x_labels(f.x_labels)
        .x_label_formatter(f.x_label)
        .y_label_formatter(f.y_label)
        .label_style((FAMILY, 12))
        .draw()
        .map_err(draw_err)?;
    Ok(chart)
}

/// The legend's sample of a line series: a short stroke in its style.
fn line_sample(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style)
}

/// Each system's per-second points (none without a drive), and the end of
/// the time axis that holds them all: what the two charts over time share.
fn per_second(sys: &[&SystemResult]) -> (Vec<Vec<SecondPoint>>, f64) {
    let series: Vec<Vec<SecondPoint>> = sys
        .iter()
        .map(|s| {
            s.drive
                .as_ref()
                .map(|d| d.series.clone())
                .unwrap_or_default()
        })
        .collect();
    let tmax = series
        .iter()
        .flatten()
        .map(|p| p.t + 1.0)
        .fold(1.0f64, f64::max);
    (series, tmax)
}

/// Draws one series as a line, named `label` in the legend, with a dot of
/// radius `dots` at each point when given.
fn draw_line<X, Y>(
    chart: &mut Chart<'_, '_, X, Y>,
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
    label: String,
    dots: Option<u32>,
) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(points.clone(), style))
        .map_err(draw_err)?
        .label(label)
        .legend(line_sample(style));
    if let Some(radius) = dots {
        let fill = ShapeStyle {
            filled: true,
            ..style
        };
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, radius, fill)))
            .map_err(draw_err)?;
    }
    Ok(())
}

fn log_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return 0.01..1.0;
    }
    (lo / 1.5).max(0.001)..hi * 1.5
}

/// A log-scale axis over `range` with its ticks chosen here: plotters' own
/// put a label at every multiple near a power of ten, which overlap there
/// (800, 900, 1000). Labels go at 1, 2 and 5 times each power of ten, or only
/// at the powers when the range spans more than three decades; grid lines go
/// at every multiple.
fn log_axis(range: Range<f64>) -> WithKeyPoints<LogCoord<f64>> {
    let multiples = |factors: &[f64]| -> Vec<f64> {
        let first = range.start.log10().floor() as i32;
        let last = range.end.log10().ceil() as i32;
        (first..=last)
            .flat_map(|e| factors.iter().map(move |f| f * 10f64.powi(e)))
            .filter(|v| range.contains(v))
            .collect()
    };
    let all: Vec<f64> = multiples(&[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let decades = (range.end / range.start).log10();
    let mut labelled = multiples(if decades > 3.0 { &[1.] } else { &[1., 2., 5.] });
    // A narrow range may hold fewer than two of those: label every multiple.
    if labelled.len() < 2 {
        labelled = all.clone();
    }
    range
        .log_scale()
        .with_key_points(labelled)
        .with_light_points(all)
}

fn latency_over_time(area: &Area<'_>, sys: &[&SystemResult]) -> Result<(), PlotError> {
    let (series, tmax) = per_second(sys);
    let y = log_range(
        series
            .iter()
            .flatten()
            .flat_map(|p| [p.p50_us as f64 / 1e3, p.max_us as f64 / 1e3]),
    );
    let frame_of = Frame {
        caption: "Latency over time (per second)",
        x_desc: "seconds into the window",
        y_desc: "ms",
        x_labels: 10,
        x_label: &number_label,
        y_label: &number_label,
    };
    let mut chart = frame(area, &frame_of, 0f64..tmax, log_axis(y))?;
    for (i, (s, pts)) in sys.iter().zip(&series).enumerate() {
        let c = color(i);
        for (name, pick, style) in [
            ("p50", 0, c.stroke_width(1)),
            ("p99", 1, c.stroke_width(2)),
            ("max", 2, c.mix(0.35).stroke_width(1)),
        ] {
            let line = pts.iter().map(|p| {
                let v = [p.p50_us, p.p99_us, p.max_us][pick] as f64 / 1e3;
                (p.t, v.max(0.001))
            });
            draw_line(
                &mut chart,
                line.collect(),
                style,
                format!("{} {name}", s.system),
                None,
            )?;
        }
    }
    legend(&mut chart)
}

fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), PlotError> {
    legend_at(chart, SeriesLabelPosition::UpperLeft)
}

fn legend_at<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FAMILY, 11))
        .position(position)
        .draw()
        .map_err(draw_err)
}

fn distribution(area: &Area<'_>, sys: &[&SystemResult]) -> Result<(), PlotError> {
    let dists: Vec<Vec<(f64, u64)>> = sys
        .iter()
        .map(|s| {
            s.drive
                .as_ref()
                .map(|d| d.distribution.clone())
                .unwrap_or_default()
        })
        .collect();
    let y = log_range(dists.iter().flatten().map(|(_, v)| *v as f64 / 1e3));
    let frame_of = Frame {
        caption: "Latency distribution (whole window)",
        x_desc: "percentile",
        y_desc: "ms",
        x_labels: 7, // one per nine: p0, p90, p99, ... max
        x_label: &nines_label,
        y_label: &number_label,
    };
    let mut chart = frame(area, &frame_of, 0f64..6.0, log_axis(y))?;
    for (i, (s, d)) in sys.iter().zip(&dists).enumerate() {
        let style = color(i).stroke_width(2);
        let pts: Vec<(f64, f64)> = d
            .iter()
            .map(|(q, v)| (nines(*q), (*v as f64 / 1e3).max(0.001)))
            .collect();
        draw_line(&mut chart, pts, style, s.system.clone(), Some(2))?;
    }
    legend(&mut chart)
}

fn throughput(area: &Area<'_>, sys: &[&SystemResult]) -> Result<(), PlotError> {
    let (series, tmax) = per_second(sys);
    let ymax = series
        .iter()
        .flatten()
        .map(|p| p.count as f64)
        .fold(1.0f64, f64::max)
        * 1.15;
    let frame_of = Frame {
        caption: "Deliveries per second",
        x_desc: "seconds into the window",
        y_desc: "deliveries",
        x_labels: 10,
        x_label: &number_label,
        y_label: &|v| count_label(*v, ymax),
    };
    let mut chart = frame(area, &frame_of, 0f64..tmax, 0f64..ymax)?;
    for (i, (s, pts)) in sys.iter().zip(&series).enumerate() {
        let style = color(i).stroke_width(2);
        // The first and last seconds are partial: leave them out.
        let inner = pts.iter().skip(1).take(pts.len().saturating_sub(2));
        let line = inner.map(|p| (p.t, p.count as f64)).collect();
        draw_line(&mut chart, line, style, s.system.clone(), None)?;
    }
    legend(&mut chart)
}

fn memory(area: &Area<'_>, sys: &[&SystemResult]) -> Result<(), PlotError> {
    let xmax = sys
        .iter()
        .flat_map(|s| s.rss_curve.iter().map(|p| p.sessions as f64))
        .fold(1.0f64, f64::max)
        * 1.05;
    let ymax = sys
        .iter()
        .flat_map(|s| s.rss_curve.iter().map(|p| p.bytes_per_session / 1024.0))
        .fold(1.0f64, f64::max)
        * 1.2;
    let frame_of = Frame {
        caption: "Server RSS per session",
        x_desc: "sessions held",
        y_desc: "KiB per session",
        x_labels: 10,
        x_label: &|v| count_label(*v, xmax),
        y_label: &number_label,
    };
    let mut chart = frame(area, &frame_of, 0f64..xmax, 0f64..ymax)?;
    for (i, s) in sys.iter().enumerate() {
        let style = color(i).stroke_width(2);
        let pts: Vec<(f64, f64)> = s
            .rss_curve
            .iter()
            .map(|p| (p.sessions as f64, p.bytes_per_session / 1024.0))
            .collect();
        draw_line(&mut chart, pts, style, s.system.clone(), Some(3))?;
    }
    legend(&mut chart)
}

/// The end of a storm chart's time axis: the last session back, or the last
/// memory sample.
fn storm_tmax(st: &StormResult) -> f64 {
    let last_live = st.live_series.last().map_or(0.0, |p| p.t);
    let last_rss = st.rss_series.last().map_or(0.0, |p| p.0);
    last_live.max(last_rss).max(0.1) * 1.02
}

fn storm_sessions(area: &Area<'_>, st: Option<&StormResult>) -> Result<(), PlotError> {
    let Some(st) = st else { return Ok(()) };
    let tmax = storm_tmax(st);
    let ymax = (st.sessions.max(1) as f64) * 1.1;
    let frame_of = Frame {
        caption: "Reconnect storm: sessions back",
        x_desc: "seconds after the first reconnect",
        y_desc: "sessions",
        x_labels: 10,
        x_label: &number_label,
        y_label: &|v| count_label(*v, ymax),
    };
    let mut chart = frame(area, &frame_of, 0f64..tmax, 0f64..ymax)?;
    let c = color(0);
    for (name, style, pick) in [
        ("READY", c.mix(0.45).stroke_width(1), 0),
        ("live (resumed, replay in)", c.stroke_width(2), 1),
    ] {
        let pts = st
            .live_series
            .iter()
            .map(|p| (p.t, [p.ready, p.live][pick] as f64))
            .collect();
        draw_line(&mut chart, pts, style, name.into(), None)?;
    }
    legend_at(&mut chart, SeriesLabelPosition::LowerRight)
}

fn storm_memory(area: &Area<'_>, st: Option<&StormResult>) -> Result<(), PlotError> {
    let Some(st) = st else { return Ok(()) };
    let tmax = storm_tmax(st);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let ymax = mib(st.rss_peak_kib.max(st.rss_held_kib).max(1)) * 1.2;
    let frame_of = Frame {
        caption: "Reconnect storm: gateway RSS",
        x_desc: "seconds after the first reconnect",
        y_desc: "MiB",
        x_labels: 10,
        x_label: &number_label,
        y_label: &number_label,
    };
    let mut chart = frame(area, &frame_of, 0f64..tmax, 0f64..ymax)?;
    let pts = st.rss_series.iter().map(|p| (p.0, mib(p.1))).collect();
    draw_line(
        &mut chart,
        pts,
        color(0).stroke_width(2),
        "RSS".into(),
        None,
    )?;
    let held = mib(st.rss_held_kib);
    draw_line(
        &mut chart,
        vec![(0.0, held), (tmax, held)],
        BLACK.mix(0.4).stroke_width(1),
        format!("before the drop ({held:.0} MiB)"),
        None,
    )?;
    let peak = mib(st.rss_peak_kib);
    draw_line(
        &mut chart,
        vec![(0.0, peak), (tmax, peak)],
        color(1).stroke_width(1),
        format!("peak ({peak:.0} MiB)"),
        None,
    )?;
    legend_at(&mut chart, SeriesLabelPosition::LowerRight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines_label(&3.0), "p99.9");
    }

    #[test]
    fn log_axis_labels() {
        fn near(got: &[f64], want: &[f64]) -> bool {
            got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|(g, w)| (g / w - 1.0).abs() < 1e-9)
        }
        // 80 ms to 3 s, as in the fan-out run: labels at 1, 2 and 5 times a
        // power of ten; grid lines at 80, 90, 100..900, 1000 and 2000.
        let axis = log_axis(80.0..3000.0);
        assert!(near(axis.bold_points(), &[100., 200., 500., 1000., 2000.]));
        assert_eq!(axis.light_points().len(), 13);
        // Over three decades: powers of ten only.
        let wide = log_axis(0.002..5000.0);
        assert!(near(wide.bold_points(), &[0.01, 0.1, 1., 10., 100., 1000.]));
        // Too narrow for two of those: every multiple.
        assert!(near(log_axis(0.21..0.48).bold_points(), &[0.3, 0.4]));
        assert_eq!(number_label(&2000.0), "2000");
        assert_eq!(number_label(&0.5), "0.5");
    }
}
