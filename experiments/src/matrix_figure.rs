//! The model-checking verdict matrix as a figure (SVG, drawn with `plotters`) and as a LaTeX
//! table: policies × page-walker model, each cell `correct` or `VIOLATION` with loom's
//! execution counts. Both come from [`shadowlab_policies::model::verdict_matrix`], the same
//! cells `shadowlab verify` prints; timings are left out so that the files are reproducible.
//!
//! Text is written as SVG `<text>` (plotters' SVG backend without its `ttf` feature estimates
//! text extents itself), so drawing needs no font files and no fontconfig.

use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use shadowlab_policies::model::{Cell, Outcome, Verdict, WalkerModel};

use crate::disasm::latex_escape;

/// Why the figure could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    /// plotters' SVG backend failed.
    #[error("drawing the verdict matrix: {0}")]
    Draw(#[from] DrawingAreaErrorKind<std::io::Error>),
    /// The cells do not form a policies × walker-models grid.
    #[error("the verdict matrix has {cells} cells, not a multiple of {columns} walker models")]
    Shape {
        /// Cells given.
        cells: usize,
        /// Walker models.
        columns: usize,
    },
}

const CORRECT_FILL: RGBColor = RGBColor(0xc8, 0xe6, 0xc9);
const VIOLATION_FILL: RGBColor = RGBColor(0xef, 0x9a, 0x9a);
const UNEXPECTED_EDGE: RGBColor = RGBColor(0x00, 0x00, 0x00);

fn rows(cells: &[Cell]) -> Result<std::slice::Chunks<'_, Cell>, FigureError> {
    let columns = WalkerModel::ALL.len();
    if cells.is_empty() || cells.len() % columns != 0 {
        return Err(FigureError::Shape {
            cells: cells.len(),
            columns,
        });
    }
    Ok(cells.chunks(columns))
}

/// The cell's two lines: the verdict, and the execution counts.
fn cell_text(v: &Verdict) -> (&'static str, String) {
    match v {
        Verdict::Correct { executions, .. } => ("correct", format!("{executions} executions")),
        Verdict::Violation {
            executions,
            violating,
            ..
        } => (
            "VIOLATION",
            format!("{violating} of {executions} executions"),
        ),
    }
}

/// The SVG figure.
pub fn svg(cells: &[Cell]) -> Result<String, FigureError> {
    let rows: Vec<&[Cell]> = rows(cells)?.collect();
    let (label_w, col_w, head_h, row_h, foot_h) = (260i32, 250i32, 56i32, 54i32, 40i32);
    let width = label_w + col_w * WalkerModel::ALL.len() as i32 + 16;
    let height = head_h + row_h * rows.len() as i32 + foot_h;
    let mut out = String::new();
    {
        let root =
            SVGBackend::with_string(&mut out, (width as u32, height as u32)).into_drawing_area();
        let draw = FigureError::Draw;
        root.fill(&WHITE).map_err(draw)?;
        let font = |size: f64| ("sans-serif", size).into_font().color(&BLACK);
        let centred = Pos::new(HPos::Center, VPos::Center);
        let left = Pos::new(HPos::Left, VPos::Center);
        for (k, w) in WalkerModel::ALL.iter().enumerate() {
            let x = label_w + col_w * k as i32 + col_w / 2;
            root.draw(&Text::new(
                w.name().to_string(),
                (x, head_h / 2),
                font(18.0).pos(centred),
            ))
            .map_err(draw)?;
        }
        root.draw(&Text::new(
            "policy (is_unsync_root)".to_string(),
            (8, head_h / 2),
            font(18.0).pos(left),
        ))
        .map_err(draw)?;
        for (r, row) in rows.iter().enumerate() {
            let y0 = head_h + row_h * r as i32;
            root.draw(&Text::new(
                row[0].policy.label().to_string(),
                (8, y0 + row_h / 2),
                font(18.0).pos(left),
            ))
            .map_err(draw)?;
            for (k, c) in row.iter().enumerate() {
                let x0 = label_w + col_w * k as i32;
                let fill = match c.verdict.outcome() {
                    Outcome::Correct => CORRECT_FILL,
                    Outcome::Violation => VIOLATION_FILL,
                };
                root.draw(&Rectangle::new(
                    [(x0 + 2, y0 + 2), (x0 + col_w - 2, y0 + row_h - 2)],
                    fill.filled(),
                ))
                .map_err(draw)?;
                if !c.as_expected() {
                    root.draw(&Rectangle::new(
                        [(x0 + 2, y0 + 2), (x0 + col_w - 2, y0 + row_h - 2)],
                        UNEXPECTED_EDGE.stroke_width(3),
                    ))
                    .map_err(draw)?;
                }
                let (verdict, counts) = cell_text(&c.verdict);
                let mark = if c.as_expected() { "" } else { " (unexpected)" };
                root.draw(&Text::new(
                    format!("{verdict}{mark}"),
                    (x0 + col_w / 2, y0 + row_h / 2 - 9),
                    font(18.0).pos(centred),
                ))
                .map_err(draw)?;
                root.draw(&Text::new(
                    counts,
                    (x0 + col_w / 2, y0 + row_h / 2 + 10),
                    font(14.5).pos(centred),
                ))
                .map_err(draw)?;
            }
        }
        root.draw(&Text::new(
            "loom, exhaustive (no preemption bound); VIOLATION: a flush skipped a needed sync"
                .to_string(),
            (8, height - foot_h / 2),
            font(14.5).pos(left),
        ))
        .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    out.push('\n');
    Ok(out)
}

/// The LaTeX table (a `tabular`, to be placed in the paper's own `table` environment).
pub fn latex(cells: &[Cell]) -> Result<String, FigureError> {
    let rows = rows(cells)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "% generated by `shadowlab report` from shadowlab_policies::model::verdict_matrix; do not edit"
    );
    let _ = writeln!(
        s,
        "\\begin{{tabular}}{{l{}}}",
        "l".repeat(WalkerModel::ALL.len())
    );
    let _ = writeln!(s, "\\toprule");
    let heads: Vec<String> = WalkerModel::ALL
        .iter()
        .map(|w| latex_escape(w.name()))
        .collect();
    let _ = writeln!(s, "policy & {} \\\\", heads.join(" & "));
    let _ = writeln!(s, "\\midrule");
    for row in rows {
        let cols: Vec<String> = row
            .iter()
            .map(|c| {
                let (verdict, counts) = cell_text(&c.verdict);
                let v = match c.verdict.outcome() {
                    Outcome::Correct => verdict.to_string(),
                    Outcome::Violation => format!("\\textbf{{{verdict}}}"),
                };
                let mark = if c.as_expected() { "" } else { " (unexpected)" };
                format!("{v}{mark} ({})", latex_escape(&counts))
            })
            .collect();
        let _ = writeln!(
            s,
            "\\texttt{{{}}} & {} \\\\",
            latex_escape(row[0].policy.label()),
            cols.join(" & ")
        );
    }
    let _ = writeln!(s, "\\bottomrule");
    let _ = writeln!(s, "\\end{{tabular}}");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowlab_policies::model::{Coverage, Outcome};
    use std::time::Duration;

    fn cell(policy: usize, walker: WalkerModel, violating: Option<u64>) -> Cell {
        let coverage = Coverage::default();
        let verdict = match violating {
            None => Verdict::Correct {
                executions: 12,
                coverage,
            },
            Some(k) => Verdict::Violation {
                executions: 12,
                coverage,
                violating: k,
                interleaving: vec![],
            },
        };
        Cell {
            policy: shadowlab_policies::ALL[policy],
            walker,
            expected: Outcome::Correct,
            verdict,
            elapsed: Duration::from_millis(1),
        }
    }

    #[test]
    fn cells_are_coloured_by_verdict_and_carry_their_counts() {
        let cells = vec![
            cell(0, WalkerModel::Relaxed, Some(3)),
            cell(0, WalkerModel::Acquire, None),
        ];
        let s = svg(&cells).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..60.min(s.len())]);
        assert!(s.contains("VIOLATION (unexpected)"));
        assert!(s.contains("3 of 12 executions"));
        assert!(s.contains("12 executions"));
        assert!(
            s.contains("#EF9A9A") || s.contains("#ef9a9a"),
            "violation fill"
        );
        assert!(
            s.contains("#C8E6C9") || s.contains("#c8e6c9"),
            "correct fill"
        );
        let t = latex(&cells).unwrap();
        assert!(t.contains("\\texttt{acquire-load} & \\textbf{VIOLATION} (unexpected) (3 of 12 executions) & correct (12 executions) \\\\"), "{t}");
    }

    #[test]
    fn a_ragged_matrix_is_an_error() {
        let cells = vec![cell(0, WalkerModel::Relaxed, None)];
        assert!(matches!(svg(&cells), Err(FigureError::Shape { .. })));
        assert!(matches!(latex(&[]), Err(FigureError::Shape { .. })));
    }
}
