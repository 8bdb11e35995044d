//! The README's results: a section between [`BEGIN`] and [`END`] that `report` rewrites (the
//! results table of [`super::tables::readme_markdown`] and one figure, linked by a relative
//! path) and `report --check` compares. Everything outside the markers is left as it is.

use std::path::Path;

use crate::report_error::ReportError;

use super::RunInput;

/// The line that opens the generated section.
pub const BEGIN: &str = "<!-- generated:results -->";
/// The line that closes it.
pub const END: &str = "<!-- /generated -->";

/// `to` as a link from a file in `from_dir`: relative where `to` is inside `from_dir`.
pub fn link(from_dir: &Path, to: &Path) -> String {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (from, to) = (canon(from_dir), canon(to));
    match to.strip_prefix(&from) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => to.display().to_string(),
    }
}

/// The section's body (between the markers): `generated` is the output folder as the README
/// links it (`paper/generated`).
pub fn section(input: &RunInput, sources: &[String], generated: &str) -> String {
    let mut s = String::new();
    s.push_str("<!-- written by `shadowlab report`; do not edit between these markers -->\n\n");
    s.push_str(&format!(
        "From {}: each policy against `rmb-fence` in each group (backend, workload, vCPUs), \
         paired by block: **resolved** r× [95% CI] where the interval excludes 1 and the change \
         exceeds the A/A floor, otherwise **bounded** |Δ| < x% (no difference larger than x%). \
         The A/A floor is the larger of how far `rmb-fence` run twice differs from itself \
         and how far `rmb-fence` built with another code layout differs from it.\n\n",
        sources
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if let (Some(r), Some(m)) = (&input.reproduce, input.manifests.first()) {
        s.push_str(&format!(
            "This run was made by `shadowlab reproduce --{}` in {:.0} s on {} (stage by stage: \
             [`reproduce-time.md`]({generated}/reproduce-time.md)).\n\n",
            m.preset,
            r.total_seconds(),
            crate::report_reproduce::host_text(m)
        ));
    }
    s.push_str(&super::tables::readme_markdown(input));
    s.push_str(&format!(
        "\n![Each policy's per-op time as a ratio to rmb-fence, with 95% intervals and the A/A \
         floor shaded]({generated}/cost-per-policy.svg)\n\n"
    ));
    s.push_str(&format!(
        "Medians, intervals and every arm: [`cost-per-policy.md`]({generated}/cost-per-policy.md); \
         MMU lock waits: [`lock-wait-share.md`]({generated}/lock-wait-share.md); against the \
         host's MMU: [`ours-vs-native.md`]({generated}/ours-vs-native.md); counters per cell: \
         [`perf-stat.md`]({generated}/perf-stat.md); exact instructions per op on `sim` \
         (callgrind): [`instructions-per-op.md`]({generated}/instructions-per-op.md).\n"
    ));
    s
}

/// `readme` with the section between the markers replaced by `body`.
pub fn splice(readme: &str, body: &str, path: &Path) -> Result<String, ReportError> {
    let missing = || ReportError::ReadmeMarkers {
        path: path.to_path_buf(),
    };
    let start = readme.find(BEGIN).ok_or_else(missing)?;
    let after = start + BEGIN.len();
    let end = after + readme[after..].find(END).ok_or_else(missing)?;
    Ok(format!(
        "{}{BEGIN}\n{body}{}",
        &readme[..start],
        &readme[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_section_between_the_markers_changes() {
        let p = Path::new("README.md");
        let r = format!("head\n{BEGIN}\nold\n{END}\ntail\n");
        let out = splice(&r, "new\n", p).unwrap();
        assert_eq!(out, format!("head\n{BEGIN}\nnew\n{END}\ntail\n"));
        assert_eq!(splice(&out, "new\n", p).unwrap(), out, "idempotent");
        let e = splice("no markers", "x", p).unwrap_err();
        assert!(matches!(e, ReportError::ReadmeMarkers { .. }), "{e}");
        assert_eq!(e.to_string().lines().count(), 1);
    }
}
