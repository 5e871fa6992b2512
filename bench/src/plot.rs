//! The PNG chart of a run: latency over time, the latency distribution,
//! deliveries per second over time and memory per session, each for Otako
//! and the peer, drawn with plotters' bitmap backend. Text uses a font
//! embedded in the binary, so it renders on machines without system fonts.

use crate::report::{Report, SystemResult};
use plotters::prelude::*;
use plotters::style::FontStyle;
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

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

enum Panel {
    LatencyOverTime,
    Distribution,
    Throughput,
    Memory,
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
    let rows = panels.len().div_ceil(2).max(1);
    let cols = if panels.len() > 1 { 2 } else { 1 };
    let (w, h) = (560 * cols as u32, 40 + 340 * rows as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let title = format!(
        "otako-bench {}: {} sessions, {} node(s), layout {}, rate {}",
        r.scenario, r.plan.sessions, r.plan.nodes, r.plan.layout, r.plan.rate
    );
    let body = root
        .titled(&title, (FAMILY, 20).into_font())
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
        }
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return 0.01..1.0;
    }
    (lo / 1.5).max(0.001)..hi * 1.5
}

fn latency_over_time(area: &Area<'_>, sys: &[&SystemResult]) -> Result<(), PlotError> {
    let series: Vec<_> = sys
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
    let y = log_range(
        series
            .iter()
            .flatten()
            .flat_map(|p| [p.p50_us as f64 / 1e3, p.max_us as f64 / 1e3]),
    );
    let mut chart = ChartBuilder::on(area)
        .caption("Latency over time (per second)", (FAMILY, 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..tmax, y.log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the window")
        .y_desc("ms")
        .label_style((FAMILY, 12))
        .draw()
        .map_err(draw_err)?;
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
            chart
                .draw_series(LineSeries::new(line, style))
                .map_err(draw_err)?
                .label(format!("{} {name}", s.system))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
    }
    legend(&mut chart)
}

fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FAMILY, 11))
        .position(SeriesLabelPosition::UpperLeft)
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
    let mut chart = ChartBuilder::on(area)
        .caption("Latency distribution (whole window)", (FAMILY, 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..6.0, y.log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_labels(7)
        .x_label_formatter(&nines_label)
        .x_desc("percentile")
        .y_desc("ms")
        .label_style((FAMILY, 12))
        .draw()
        .map_err(draw_err)?;
    for (i, (s, d)) in sys.iter().zip(&dists).enumerate() {
        let style = color(i).stroke_width(2);
        let pts: Vec<(f64, f64)> = d
            .iter()
            .map(|(q, v)| (nines(*q), (*v as f64 / 1e3).max(0.001)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(draw_err)?
            .label(s.system.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(
                pts.into_iter()
                    .map(|p| Circle::new(p, 2, color(i).filled())),
            )
            .map_err(draw_err)?;
    }
    legend(&mut chart)
}

fn throughput(area: &Area<'_>, sys: &[&SystemResult]) -> Result<(), PlotError> {
    let series: Vec<_> = sys
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
    let ymax = series
        .iter()
        .flatten()
        .map(|p| p.count as f64)
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("Deliveries per second", (FAMILY, 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..tmax, 0f64..ymax)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the window")
        .y_label_formatter(&|v| count_label(*v, ymax))
        .label_style((FAMILY, 12))
        .draw()
        .map_err(draw_err)?;
    for (i, (s, pts)) in sys.iter().zip(&series).enumerate() {
        let style = color(i).stroke_width(2);
        // The first and last seconds are partial: leave them out.
        let inner = pts.iter().skip(1).take(pts.len().saturating_sub(2));
        chart
            .draw_series(LineSeries::new(inner.map(|p| (p.t, p.count as f64)), style))
            .map_err(draw_err)?
            .label(s.system.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
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
    let mut chart = ChartBuilder::on(area)
        .caption("Server RSS per session", (FAMILY, 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("sessions held")
        .y_desc("KiB per session")
        .x_label_formatter(&|v| count_label(*v, xmax))
        .label_style((FAMILY, 12))
        .draw()
        .map_err(draw_err)?;
    for (i, s) in sys.iter().enumerate() {
        let style = color(i).stroke_width(2);
        let pts: Vec<(f64, f64)> = s
            .rss_curve
            .iter()
            .map(|p| (p.sessions as f64, p.bytes_per_session / 1024.0))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(draw_err)?
            .label(s.system.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(
                pts.into_iter()
                    .map(|p| Circle::new(p, 3, color(i).filled())),
            )
            .map_err(draw_err)?;
    }
    legend(&mut chart)
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
}
