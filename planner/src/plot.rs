//! Bar charts drawn with plotters' SVG backend. Text is emitted as SVG `<text>`
//! elements for the viewer to render, so no font or system library is needed.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::PlanError;

fn plot_err(e: impl std::fmt::Display) -> PlanError {
    PlanError::Plot(e.to_string())
}

/// Bars `(label, value)` with an optional dashed reference line (e.g. an upper
/// bound, named and given in the caption), each bar labelled with its value.
pub fn bar_chart_svg(
    title: &str,
    unit: &str,
    bars: &[(String, f64)],
    reference: Option<(&str, f64)>,
) -> Result<String, PlanError> {
    let reference = reference.filter(|r| r.1.is_finite());
    let value = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
    let x_max = bars
        .iter()
        .map(|b| value(b.1))
        .chain(reference.map(|r| value(r.1)))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.12;
    let n = bars.len().max(1);
    let caption = match reference {
        Some((name, r)) => format!("{title} (dashed: {name} {r:.0})"),
        None => title.to_string(),
    };
    let label_width = bars.iter().map(|b| b.0.len()).max().unwrap_or(4) as u32 * 8 + 16;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (860, 90 + 34 * n as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        // One segment per bar, first bar on top.
        let mut chart = ChartBuilder::on(&root)
            .caption(&caption, ("sans-serif", 16))
            .margin(12)
            .margin_right(40)
            .x_label_area_size(40)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0f64..x_max, (0..n - 1).into_segmented())
            .map_err(plot_err)?;
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE.mix(0.0))
            .x_desc(unit)
            .y_labels(n)
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) => labels.get(n - 1 - *i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(plot_err)?;
        let blue = RGBColor(72, 120, 168);
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let row = n - 1 - i;
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(row)),
                        (value(b.1), SegmentValue::Exact(row + 1)),
                    ],
                    blue.filled(),
                );
                bar.set_margin(5, 5, 0, 0);
                bar
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                Text::new(
                    format!(" {:.0}", value(b.1)),
                    (value(b.1), SegmentValue::CenterOf(n - 1 - i)),
                    TextStyle::from(("sans-serif", 11).into_font())
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(plot_err)?;
        if let Some((_, r)) = reference {
            let red = RGBColor(192, 48, 48);
            chart
                .draw_series(DashedLineSeries::new(
                    [(r, SegmentValue::Exact(0)), (r, SegmentValue::Exact(n))],
                    6,
                    4,
                    red.stroke_width(1),
                ))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_bar_per_entry_labels_and_the_bound() {
        let svg = bar_chart_svg(
            "t<1>",
            "tok/s",
            &[("alpha".into(), 10.0), ("beta".into(), 20.0)],
            Some(("LP bound", 25.0)),
        )
        .unwrap();
        assert_eq!(svg.matches("fill=\"#4878A8\"").count(), 2, "{svg}");
        assert!(svg.contains("t&lt;1&gt;"));
        assert!(svg.contains("dashed: LP bound 25"));
        assert!(svg.contains("alpha") && svg.contains("beta"));
        assert!(svg.contains(" 20"), "{svg}");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
