//! A dependency-free SVG bar chart (no fonts or system libraries needed: text is
//! left to the SVG viewer).

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Bars `(label, value)` with an optional dashed reference line (e.g. an upper bound).
pub fn bar_chart_svg(
    title: &str,
    unit: &str,
    bars: &[(String, f64)],
    reference: Option<f64>,
) -> String {
    let (w, h) = (760.0, 420.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 110.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let max = bars
        .iter()
        .map(|b| b.1)
        .chain(reference)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    // axes and ticks
    s.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\n",
        top + plot_h,
        left + plot_w
    ));
    for k in 0..=5 {
        let v = max * k as f64 / 5.0;
        let y = top + plot_h - plot_h * k as f64 / 5.0;
        s.push_str(&format!(
            "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{left}\" y2=\"{y:.1}\" stroke=\"black\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{v:.0}</text>\n",
            left - 4.0,
            left - 6.0,
            y + 4.0
        ));
    }
    s.push_str(&format!(
        "<text x=\"16\" y=\"{:.1}\" font-size=\"12\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">{}</text>\n",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(unit)
    ));
    let n = bars.len().max(1) as f64;
    let slot = plot_w / n;
    for (i, (label, v)) in bars.iter().enumerate() {
        let v = if v.is_finite() { *v } else { 0.0 };
        let bh = plot_h * v / max;
        let x = left + slot * i as f64 + slot * 0.15;
        let y = top + plot_h - bh;
        let cx = x + slot * 0.35;
        s.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4878a8\"/>\n<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{v:.0}</text>\n<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" transform=\"rotate(-35 {cx:.1} {:.1})\">{}</text>\n",
            slot * 0.7,
            y - 3.0,
            top + plot_h + 14.0,
            top + plot_h + 14.0,
            esc(label)
        ));
    }
    if let Some(r) = reference.filter(|r| r.is_finite()) {
        let y = top + plot_h - plot_h * r / max;
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#c03030\" stroke-dasharray=\"6 4\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" fill=\"#c03030\" text-anchor=\"end\">LP bound {r:.0}</text>\n",
            left + plot_w,
            left + plot_w,
            y - 4.0
        ));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_bar_per_entry_and_scales_to_max() {
        let svg = bar_chart_svg(
            "t<1>",
            "tok/s",
            &[("a".into(), 10.0), ("b".into(), 20.0)],
            Some(25.0),
        );
        assert_eq!(svg.matches("fill=\"#4878a8\"").count(), 2);
        assert!(svg.contains("t&lt;1&gt;"));
        assert!(svg.contains("LP bound 25"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
