//! `cost-per-policy.svg` (each arm's ratio to `rmb-fence` with its interval, one panel per
//! group, the A/A floor shaded, a line at 1) and `scaling-vcpus.svg` (on `sim`, each policy's
//! median per-op time against the vCPU count, with intervals, one panel per workload).

use std::collections::BTreeMap;

use plotters::prelude::*;
use shadowlab_schema::Backend;

use crate::matrix::{BASELINE, NATIVE_ARM};
use crate::report_error::ReportError;

use super::plot::{self, Band, Mark, Series};
use super::{arm_rank, group_title, is_control, policy_groups, sorted_cells, xl_floor, RunInput};

const PANEL_W: u32 = 490;
const COLUMNS: usize = 2;

fn draw_err(figure: &'static str) -> impl Fn(plot::DrawError) -> ReportError {
    move |source| ReportError::Draw { figure, source }
}

/// `cost-per-policy.svg`.
pub fn cost_svg(input: &RunInput) -> Result<String, ReportError> {
    let groups = policy_groups(input);
    let panels: Vec<(String, Vec<Mark>, Vec<Band>)> = groups
        .iter()
        .map(|g| {
            let marks: Vec<Mark> = sorted_cells(g)
                .into_iter()
                .filter(|c| c.arm != BASELINE && c.arm != NATIVE_ARM)
                .filter_map(|c| {
                    c.ratio.map(|r| Mark {
                        name: c.arm.clone(),
                        value: r.value,
                        lo: r.ci.lo,
                        hi: r.ci.hi,
                        colour: plot::colour(&c.arm),
                    })
                })
                .collect();
            let mut bands = Vec::new();
            if let Some(x) = xl_floor(g) {
                bands.push(Band {
                    lo: (1.0 - x).max(0.0),
                    hi: 1.0 + x,
                    colour: plot::XL_FILL,
                });
            }
            if let Some(f) = &g.aa_floor {
                bands.push(Band {
                    lo: (1.0 - f.floor).max(0.0),
                    hi: 1.0 + f.floor,
                    colour: plot::FLOOR_FILL,
                });
            }
            (group_title(g), marks, bands)
        })
        .collect();
    let rows_max = panels.iter().map(|p| p.1.len()).max().unwrap_or(1).max(1) as u32;
    let panel_h = 96 + 30 * rows_max;
    let grid_rows = panels.len().div_ceil(COLUMNS).max(1) as u32;
    let foot = 64u32;
    let (w, h) = (PANEL_W * COLUMNS as u32, panel_h * grid_rows + foot);
    let any_xl = groups.iter().any(|g| xl_floor(g).is_some());
    let mut out = String::new();
    {
        let d = draw_err("cost-per-policy.svg");
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(&d)?;
        let (body, footer) = root.split_vertically(panel_h * grid_rows);
        let cells = body.split_evenly((grid_rows as usize, COLUMNS));
        for ((title, marks, bands), area) in panels.iter().zip(cells.iter()) {
            plot::strip(
                area,
                title,
                "ratio to rmb-fence (95% CI)",
                marks,
                bands,
                Some(1.0),
            )
            .map_err(&d)?;
        }
        if panels.is_empty() {
            plot::note(
                &footer,
                10,
                14,
                "no group with an rmb-fence arm in this run",
            )
            .map_err(&d)?;
        }
        let mut entries = vec![("A/A floor, same binary (±)".to_string(), plot::FLOOR_FILL)];
        if any_xl {
            entries.push(("A/A floor, cross-layout (±)".to_string(), plot::XL_FILL));
        }
        plot::legend(&footer, 12, 18, &entries).map_err(&d)?;
        plot::note(
            &footer,
            12,
            44,
            "dot: median ratio to rmb-fence over blocks, paired by block; whiskers: 95% bootstrap interval; line at 1",
        )
        .map_err(&d)?;
        root.present().map_err(&d)?;
    }
    out.push('\n');
    Ok(out)
}

/// One workload's points, by arm (in [`arm_rank`] order): `(vCPUs, median)`.
type ArmPoints = BTreeMap<(usize, String), Vec<(f64, Mark)>>;

/// `scaling-vcpus.svg`.
pub fn scaling_svg(input: &RunInput) -> Result<String, ReportError> {
    let mut by_workload: BTreeMap<&str, ArmPoints> = BTreeMap::new();
    let mut units: BTreeMap<&str, &str> = BTreeMap::new();
    for g in input.groups.iter().filter(|g| g.backend == Backend::Sim) {
        units.insert(&g.workload, &g.unit);
        for c in &g.cells {
            if is_control(&c.arm) || c.arm == NATIVE_ARM {
                continue;
            }
            if let Some(m) = c.median {
                by_workload
                    .entry(&g.workload)
                    .or_default()
                    .entry(arm_rank(&c.arm))
                    .or_default()
                    .push((
                        f64::from(g.vcpus),
                        Mark {
                            name: c.arm.clone(),
                            value: m.value,
                            lo: m.ci.lo,
                            hi: m.ci.hi,
                            colour: plot::colour(&c.arm),
                        },
                    ));
            }
        }
    }
    let panel_h = 330u32;
    let grid_rows = by_workload.len().div_ceil(COLUMNS).max(1) as u32;
    let foot = 64u32;
    let (w, h) = (PANEL_W * COLUMNS as u32, panel_h * grid_rows + foot);
    let mut arms: Vec<(usize, String)> = by_workload
        .values()
        .flat_map(|m| m.keys().cloned())
        .collect();
    arms.sort();
    arms.dedup();
    let mut out = String::new();
    {
        let d = draw_err("scaling-vcpus.svg");
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(&d)?;
        let (body, footer) = root.split_vertically(panel_h * grid_rows);
        let cells = body.split_evenly((grid_rows as usize, COLUMNS));
        for ((workload, series), area) in by_workload.iter().zip(cells.iter()) {
            let mut xs: Vec<f64> = series
                .values()
                .flat_map(|p| p.iter().map(|(x, _)| *x))
                .collect();
            xs.sort_by(f64::total_cmp);
            xs.dedup();
            let series: Vec<Series> = series
                .iter()
                .map(|((_, arm), pts)| {
                    let mut points = pts.clone();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series {
                        colour: plot::colour(arm),
                        points,
                    }
                })
                .collect();
            plot::lines(
                area,
                &format!("sim {workload}"),
                "vCPUs",
                &format!("median per op ({})", units.get(workload).unwrap_or(&"")),
                &xs,
                &series,
            )
            .map_err(&d)?;
        }
        if by_workload.is_empty() {
            plot::note(&footer, 10, 14, "no sim group in this run").map_err(&d)?;
        }
        let entries: Vec<(String, RGBColor)> = arms
            .iter()
            .map(|(_, a)| (a.clone(), plot::colour(a)))
            .collect();
        plot::legend(&footer, 12, 18, &entries).map_err(&d)?;
        plot::note(
            &footer,
            12,
            44,
            "median per-op time over blocks; whiskers: 95% bootstrap interval (points shifted sideways to stay apart)",
        )
        .map_err(&d)?;
        root.present().map_err(&d)?;
    }
    out.push('\n');
    Ok(out)
}
