//! How numbers and labels are written in the run-based tables: the same rules everywhere, so
//! that a value reads the same in the Markdown, the LaTeX and the figures.

use shadowlab_stats::{Estimate, Label, NoiseFloor};

/// A per-op time or a count: whole numbers (and everything from 100 up) with thousands
/// separators, three significant digits otherwise.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x.abs() >= 100.0 || x.fract() == 0.0 {
        let n = x.round() as i128;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else {
        let mag = x.abs().log10().floor() as i32;
        let decimals = (2 - mag).clamp(0, 12) as usize;
        format!("{x:.decimals$}")
    }
}

/// `value [lo, hi]` with [`num`].
pub fn estimate(e: &Estimate) -> String {
    format!("{} [{}, {}]", num(e.value), num(e.ci.lo), num(e.ci.hi))
}

/// A ratio: three decimals.
pub fn ratio(x: f64) -> String {
    format!("{x:.3}")
}

/// `ratio [lo, hi]` with [`ratio`].
pub fn ratio_ci(e: &Estimate) -> String {
    format!(
        "{} [{}, {}]",
        ratio(e.value),
        ratio(e.ci.lo),
        ratio(e.ci.hi)
    )
}

/// A fraction as a percentage, one decimal.
pub fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The label in plain text: `resolved 1.07× [1.02, 1.10]` or `bounded |Δ| < 4.6%`.
pub fn label_text(l: &Label) -> String {
    match l {
        Label::Resolved { ratio, ci } => {
            format!("resolved {ratio:.2}× [{:.2}, {:.2}]", ci.lo, ci.hi)
        }
        Label::Bounded {
            max_abs_delta_pct, ..
        } => format!("bounded |Δ| < {max_abs_delta_pct:.1}%"),
    }
}

/// `s` inside a Markdown table cell: `|` escaped.
pub fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The label in LaTeX.
pub fn label_latex(l: &Label) -> String {
    match l {
        Label::Resolved { ratio, ci } => {
            format!("resolved ${ratio:.2}\\times$ [{:.2}, {:.2}]", ci.lo, ci.hi)
        }
        Label::Bounded {
            max_abs_delta_pct, ..
        } => format!("bounded $|\\Delta| < {max_abs_delta_pct:.1}\\%$"),
    }
}

/// The same-binary A/A floor as `±x%`, or `none` (fewer than 3 paired blocks, or no A/A arm).
pub fn floor(f: Option<&NoiseFloor>) -> String {
    f.map_or("none".into(), |f| format!("±{}", pct(f.floor)))
}

/// Escapes LaTeX's special characters (and `×`, `Δ`, `±` outside math).
pub fn tex(s: &str) -> String {
    crate::disasm::latex_escape(s)
        .replace('×', "$\\times$")
        .replace('±', "$\\pm$")
        .replace('Δ', "$\\Delta$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_the_same_everywhere() {
        assert_eq!(num(6_117_606.0), "6,117,606");
        assert_eq!(num(229.4), "229");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(0.0012345), "0.00123");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(89.0), "89");
        assert_eq!(md_cell("bounded |Δ| < 4%"), "bounded \\|Δ\\| < 4%");
        assert_eq!(num(-1234.0), "-1,234");
        assert_eq!(pct(0.4662), "46.6%");
        assert_eq!(tex("a_b ±1% |Δ|"), "a\\_b $\\pm$1\\% |$\\Delta$|");
    }
}
