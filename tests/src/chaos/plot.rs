//! The chart of a run: deliveries per second, clients with a live session,
//! and the worst delivery delay per second, over the run, with every fault
//! shaded from its start to its end and named. Drawn like otako-bench's
//! charts (plotters' bitmap backend, the font embedded in the binary).

use super::count::Report;
use super::faults::FaultKind;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
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

const FONT: &[u8] = include_bytes!("../../../bench/assets/bench-sans.ttf");
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

fn fault_color(kind: FaultKind) -> RGBColor {
    match kind {
        FaultKind::GatewayKill => RGBColor(214, 39, 40),
        FaultKind::GatewayDrain => RGBColor(255, 127, 14),
        FaultKind::NatsLinkCut => RGBColor(148, 103, 189),
        FaultKind::NatsServerKill => RGBColor(44, 160, 44),
        FaultKind::PostgresRestart => RGBColor(140, 86, 75),
        FaultKind::SlowClients => RGBColor(23, 190, 207),
    }
}

const LINE: RGBColor = RGBColor(31, 119, 180);
const TITLE_HEIGHT: u32 = 40;
const PANEL_HEIGHT: u32 = 260;
const WIDTH: u32 = 1200;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws the chart of `r` to `path` (PNG).
pub fn draw(r: &Report, path: &Path) -> Result<(), PlotError> {
    register_font()?;
    let h = TITLE_HEIGHT + 3 * PANEL_HEIGHT;
    let root = BitMapBackend::new(path, (WIDTH, h)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (top, body) = root.split_vertically(TITLE_HEIGHT);
    let t = &r.totals;
    let title = format!(
        "otako-chaos: {} clients, {} msg/s, {} faults: {} lost, {} duplicated, {} out of order",
        r.config.users,
        r.config.rate,
        r.faults.len(),
        t.lost,
        t.duplicated,
        t.out_of_order
    );
    top.draw(&Text::new(
        title,
        (WIDTH as i32 / 2, TITLE_HEIGHT as i32 / 2),
        (FAMILY, 20)
            .into_font()
            .into_text_style(&top)
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(draw_err)?;
    let panels = body.split_evenly((3, 1));
    let s = &r.series;
    let tmax = (s.deliveries_per_s.len() as f64).max(1.0);
    let deliveries: Vec<(f64, f64)> = s
        .deliveries_per_s
        .iter()
        .enumerate()
        .map(|(i, n)| (i as f64 + 0.5, *n as f64))
        .collect();
    let live: Vec<(f64, f64)> = s
        .sessions_live
        .iter()
        .map(|(t, n)| (*t, *n as f64))
        .collect();
    let delay: Vec<(f64, f64)> = s
        .max_delay_ms_per_s
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0.0)
        .map(|(i, v)| (i as f64 + 0.5, v.max(1.0)))
        .collect();
    let dmax = deliveries.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    panel(
        &panels[0],
        r,
        "Deliveries per second (all clients)",
        "deliveries/s",
        tmax,
        Scale::Linear(dmax),
        &deliveries,
        true,
    )?;
    panel(
        &panels[1],
        r,
        "Clients with a READY session",
        "clients",
        tmax,
        Scale::Linear(r.config.users as f64 * 1.1),
        &live,
        false,
    )?;
    let ymax = delay.iter().map(|p| p.1).fold(10.0, f64::max) * 1.5;
    panel(
        &panels[2],
        r,
        "Worst delivery delay per second (message written to received)",
        "ms",
        tmax,
        Scale::Log(ymax),
        &delay,
        false,
    )?;
    root.present().map_err(draw_err)?;
    Ok(())
}

enum Scale {
    Linear(f64),
    Log(f64),
}

#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Area<'_>,
    r: &Report,
    caption: &str,
    y_desc: &str,
    tmax: f64,
    scale: Scale,
    points: &[(f64, f64)],
    names: bool,
) -> Result<(), PlotError> {
    match scale {
        Scale::Linear(ymax) => {
            let mut chart = builder(area, caption)
                .build_cartesian_2d(0f64..tmax, 0f64..ymax)
                .map_err(draw_err)?;
            mesh(&mut chart, y_desc, &|v| format!("{v:.0}"))?;
            shade(&mut chart, r, 0.0, ymax, names)?;
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    LINE.stroke_width(2),
                ))
                .map_err(draw_err)?;
        }
        Scale::Log(ymax) => {
            let mut chart = builder(area, caption)
                .build_cartesian_2d(0f64..tmax, (1f64..ymax).log_scale())
                .map_err(draw_err)?;
            mesh(&mut chart, y_desc, &|v| {
                let s = format!("{v:.3}");
                s.trim_end_matches('0').trim_end_matches('.').to_owned()
            })?;
            shade(&mut chart, r, 1.0, ymax, names)?;
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 2, LINE.filled())))
                .map_err(draw_err)?;
        }
    }
    Ok(())
}

fn builder<'a, 'b>(area: &'a Area<'b>, caption: &str) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut b = ChartBuilder::on(area);
    b.caption(caption, (FAMILY, 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(64);
    b
}

fn mesh<X, Y>(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<X, Y>>,
    y_desc: &str,
    y_label: &dyn Fn(&f64) -> String,
) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc(y_desc)
        .x_labels(20)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(y_label)
        .label_style((FAMILY, 12))
        .draw()
        .map_err(draw_err)
}

/// Shades each fault from its start to its end (at least a visible sliver)
/// and, with `names`, writes the first cycle's names above.
fn shade<X, Y>(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<X, Y>>,
    r: &Report,
    ymin: f64,
    ymax: f64,
    names: bool,
) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    // The writers' stop, dashed: what follows is the settle period.
    let stop = r.writing.1;
    let dashes = (0..40).map(|i| {
        let a = ymin + (ymax - ymin) * i as f64 / 40.0;
        let b = ymin + (ymax - ymin) * (i as f64 + 0.5) / 40.0;
        PathElement::new(vec![(stop, a), (stop, b)], BLACK.mix(0.6).stroke_width(1))
    });
    chart.draw_series(dashes).map_err(draw_err)?;
    for (i, f) in r.faults.iter().enumerate() {
        let c = fault_color(f.fault.kind);
        let end = f.fault.end.max(f.fault.start + 0.3);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(f.fault.start, ymin), (end, ymax)],
                c.mix(0.25).filled(),
            )))
            .map_err(draw_err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(f.fault.start, ymin), (f.fault.start, ymax)],
                c.stroke_width(1),
            )))
            .map_err(draw_err)?;
        // The first cycle is named; later ones share its colours.
        if names && i < FaultKind::CYCLE.len() {
            let label = format!("{} {}", f.fault.kind.short(), f.fault.target);
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (f.fault.start, ymax),
                    (FAMILY, 11)
                        .into_font()
                        .color(&c)
                        .pos(Pos::new(HPos::Left, VPos::Top)),
                )))
                .map_err(draw_err)?;
        }
    }
    Ok(())
}
