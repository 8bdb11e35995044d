//! Drawing helpers shared by the run-based figures: an interval strip (one row per arm: a
//! point with its interval as whiskers, shaded bands, a reference line), a line panel with
//! vertical whiskers, and a legend. plotters' SVG backend without its `ttf` feature writes
//! text as SVG `<text>` and estimates its extent itself, so nothing here needs a font file
//! (as in [`crate::matrix_figure`]).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// What drawing returns on failure.
pub type DrawError = DrawingAreaErrorKind<std::io::Error>;

/// A drawing area of an SVG figure.
pub type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// One row of an interval strip, or one point of a line panel.
#[derive(Clone, Debug)]
pub struct Mark {
    /// Its name (a row's label on the vertical axis, or a series' name).
    pub name: String,
    /// The estimate.
    pub value: f64,
    /// The interval's lower end.
    pub lo: f64,
    /// The interval's upper end.
    pub hi: f64,
    /// Its colour.
    pub colour: RGBColor,
}

/// A shaded vertical band of an interval strip (`lo..hi` on the horizontal axis).
#[derive(Clone, Copy, Debug)]
pub struct Band {
    /// Left end.
    pub lo: f64,
    /// Right end.
    pub hi: f64,
    /// Fill.
    pub colour: RGBColor,
}

/// The colour of an arm, the same in every figure.
pub fn colour(arm: &str) -> RGBColor {
    match arm {
        "rmb-fence" => RGBColor(0x1f, 0x77, 0xb4),
        "acquire-load" => RGBColor(0xff, 0x7f, 0x0e),
        "always-lock" => RGBColor(0xd6, 0x27, 0x28),
        "seqcst-fence" => RGBColor(0x2c, 0xa0, 0x2c),
        "no-barrier" => RGBColor(0x94, 0x67, 0xbd),
        "rmb-fence-aa" => RGBColor(0x7f, 0x7f, 0x7f),
        "rmb-fence-xl" => RGBColor(0x8c, 0x56, 0x4b),
        "native" => RGBColor(0x00, 0x00, 0x00),
        _ => RGBColor(0x17, 0xbe, 0xcf),
    }
}

/// The same-binary A/A floor's band.
pub const FLOOR_FILL: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
/// The cross-layout A/A floor's band (drawn under the same-binary one).
pub const XL_FILL: RGBColor = RGBColor(0xf3, 0xe6, 0xc8);

/// A text style of `size` pixels.
pub fn font(size: f64) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

/// The horizontal range that shows every mark, band and the reference, with a margin.
fn x_range(marks: &[Mark], bands: &[Band], reference: Option<f64>) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for m in marks {
        lo = lo.min(m.lo).min(m.value);
        hi = hi.max(m.hi).max(m.value);
    }
    for b in bands {
        lo = lo.min(b.lo);
        hi = hi.max(b.hi);
    }
    if let Some(r) = reference {
        lo = lo.min(r);
        hi = hi.max(r);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 2.0);
    }
    if hi - lo < 1e-9 {
        // Nothing to spread (every value 0, say): a unit-wide axis, not a degenerate one.
        hi = lo + 1.0;
    }
    let pad = ((hi - lo) * 0.06).max(1e-3);
    (
        (lo - pad).max(if lo >= 0.0 { 0.0 } else { f64::MIN }),
        hi + pad,
    )
}

/// An interval strip in `area`: one row per mark, top to bottom, each a dot at its value
/// and whiskers over its interval; `bands` shaded behind them, a dashed line at `reference`.
pub fn strip(
    area: &Area<'_>,
    title: &str,
    x_desc: &str,
    marks: &[Mark],
    bands: &[Band],
    reference: Option<f64>,
) -> Result<(), DrawError> {
    let n = marks.len().max(1);
    let (x0, x1) = x_range(marks, bands, reference);
    let row_y = |i: usize| (n - 1 - i) as f64;
    let x_fmt = |x: &f64| format!("{x:.2}");
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(15.0))
        .margin(6)
        .margin_right(24)
        .x_label_area_size(38)
        .y_label_area_size(104)
        .build_cartesian_2d(x0..x1, -0.6..(n as f64 - 0.4))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_labels(6)
        .y_labels(0)
        .x_label_formatter(&x_fmt)
        .label_style(font(12.0))
        .axis_desc_style(font(12.5))
        .x_desc(x_desc)
        .max_light_lines(0)
        .draw()?;
    let (ylo, yhi) = (-0.6, n as f64 - 0.4);
    chart.draw_series(bands.iter().map(|b| {
        Rectangle::new(
            [(b.lo.max(x0), ylo), (b.hi.min(x1), yhi)],
            b.colour.filled(),
        )
    }))?;
    if let Some(r) = reference {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(r, ylo), (r, yhi)],
            BLACK.stroke_width(1),
        )))?;
    }
    for (i, m) in marks.iter().enumerate() {
        let y = row_y(i);
        let style = m.colour.stroke_width(2);
        chart.draw_series([
            PathElement::new(vec![(m.lo, y), (m.hi, y)], style),
            PathElement::new(vec![(m.lo, y - 0.18), (m.lo, y + 0.18)], style),
            PathElement::new(vec![(m.hi, y - 0.18), (m.hi, y + 0.18)], style),
        ])?;
        chart.draw_series(std::iter::once(Circle::new(
            (m.value, y),
            4,
            m.colour.filled(),
        )))?;
        // The row's name, left of the plotting area.
        chart.draw_series(std::iter::once(
            EmptyElement::at((x0, y))
                + Text::new(
                    m.name.clone(),
                    (-8, 0),
                    font(12.5).pos(Pos::new(HPos::Right, VPos::Center)),
                ),
        ))?;
    }
    Ok(())
}

/// One series of a line panel: points `(x, mark)`.
pub struct Series {
    /// The series' name and colour are those of its marks; this is its colour.
    pub colour: RGBColor,
    /// The points, by `x`.
    pub points: Vec<(f64, Mark)>,
}

/// A line panel in `area`: each series a line through its values with vertical whiskers over
/// each interval; series are shifted sideways a little so that whiskers do not overlap.
pub fn lines(
    area: &Area<'_>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    xs: &[f64],
    series: &[Series],
) -> Result<(), DrawError> {
    let (mut ylo, mut yhi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        for (_, m) in &s.points {
            ylo = ylo.min(m.lo).min(m.value);
            yhi = yhi.max(m.hi).max(m.value);
        }
    }
    if !ylo.is_finite() {
        (ylo, yhi) = (0.0, 1.0);
    }
    let pad = ((yhi - ylo) * 0.08).max(1e-3);
    let (ylo, yhi) = ((ylo - pad).max(0.0), yhi + pad);
    let (xmin, xmax) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        });
    let (xmin, xmax) = if xmin.is_finite() {
        (xmin, xmax)
    } else {
        (1.0, 2.0)
    };
    let xpad = ((xmax - xmin) * 0.15).max(0.4);
    let y_fmt = |y: &f64| super::fmt::num(*y);
    let x_fmt = |x: &f64| {
        if (x - x.round()).abs() < 1e-9 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(15.0))
        .margin(6)
        .margin_right(24)
        .x_label_area_size(38)
        .y_label_area_size(70)
        .build_cartesian_2d(xmin - xpad..xmax + xpad, ylo..yhi)?;
    chart
        .configure_mesh()
        .x_labels(((xmax - xmin + 2.0 * xpad) * 2.0).ceil() as usize + 1)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .y_labels(6)
        .label_style(font(12.0))
        .axis_desc_style(font(12.5))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .max_light_lines(0)
        .draw()?;
    let k = series.len().max(1) as f64;
    for (j, s) in series.iter().enumerate() {
        let dx = (j as f64 - (k - 1.0) / 2.0) * xpad * 0.12;
        let style = s.colour.stroke_width(2);
        chart.draw_series(std::iter::once(PathElement::new(
            s.points
                .iter()
                .map(|(x, m)| (x + dx, m.value))
                .collect::<Vec<_>>(),
            style,
        )))?;
        for (x, m) in &s.points {
            let x = x + dx;
            chart.draw_series([PathElement::new(
                vec![(x, m.lo), (x, m.hi)],
                s.colour.stroke_width(1),
            )])?;
            chart.draw_series(std::iter::once(Circle::new(
                (x, m.value),
                3,
                s.colour.filled(),
            )))?;
        }
    }
    Ok(())
}

/// A legend row at `(x, y)` of `area`: a swatch and the name of each entry.
pub fn legend(
    area: &Area<'_>,
    x: i32,
    y: i32,
    entries: &[(String, RGBColor)],
) -> Result<(), DrawError> {
    let mut cx = x;
    let left = Pos::new(HPos::Left, VPos::Center);
    for (name, c) in entries {
        area.draw(&Rectangle::new([(cx, y - 6), (cx + 14, y + 6)], c.filled()))?;
        area.draw(&Text::new(name.clone(), (cx + 19, y), font(13.0).pos(left)))?;
        cx += 19 + (name.chars().count() as i32) * 7 + 24;
    }
    Ok(())
}

/// A line of text at `(x, y)` of `area`, left-aligned.
pub fn note(area: &Area<'_>, x: i32, y: i32, text: &str) -> Result<(), DrawError> {
    area.draw(&Text::new(
        text.to_string(),
        (x, y),
        font(12.5).pos(Pos::new(HPos::Left, VPos::Center)),
    ))
}

/// A figure of strips ([`strip`]) in two columns, one panel per `(title, marks)`, with one
/// caption line under it: its SVG text. The x axis of every panel is `x_desc`; `reference`
/// draws a line at that value in each.
pub fn strip_grid(
    panels: &[(String, Vec<Mark>)],
    x_desc: &str,
    reference: Option<f64>,
    caption: &str,
) -> Result<String, DrawError> {
    let columns = 2usize;
    let rows_max = panels.iter().map(|g| g.1.len()).max().unwrap_or(1).max(1) as u32;
    let panel_h = 96 + 30 * rows_max;
    let grid_rows = panels.len().div_ceil(columns).max(1) as u32;
    let (w, h) = (980u32, panel_h * grid_rows + 40);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (body, footer) = root.split_vertically(panel_h * grid_rows);
        let cells = body.split_evenly((grid_rows as usize, columns));
        for ((title, marks), area) in panels.iter().zip(cells.iter()) {
            strip(area, title, x_desc, marks, &[], reference)?;
        }
        note(&footer, 12, 20, caption)?;
        root.present()?;
    }
    out.push('\n');
    Ok(out)
}
