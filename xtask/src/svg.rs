//! Minimal grouped bar charts as standalone SVG (no plotting dependency).

use std::fmt::Write;

/// One group of bars (e.g. a task) with one value per series (e.g. a method).
pub struct Group {
    pub label: String,
    pub values: Vec<Option<f64>>,
}

const COLORS: [&str; 4] = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart; missing values leave a gap.
pub fn grouped_bars(title: &str, y_label: &str, series: &[&str], groups: &[Group]) -> String {
    let (left, right, top, bottom) = (60.0, 20.0, 40.0, 70.0);
    let bar_w = 14.0;
    let group_w = bar_w * series.len() as f64 + 16.0;
    let plot_w = (group_w * groups.len() as f64).max(200.0);
    let plot_h = 260.0;
    let width = left + plot_w + right;
    let height = top + plot_h + bottom;
    let max = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten())
        .fold(0.0_f64, |m, &v| m.max(v));
    let max = if max <= 0.0 { 1.0 } else { nice_ceiling(max) };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{:.0}" y="20" font-size="14" text-anchor="middle">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    for tick in 0..=4 {
        let v = max * tick as f64 / 4.0;
        let y = top + plot_h - plot_h * tick as f64 / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 4.0,
            y + 4.0,
            format_tick(v)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text transform="translate(14 {:.0}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        escape(y_label)
    );
    for (gi, group) in groups.iter().enumerate() {
        let x0 = left + gi as f64 * group_w + 8.0;
        for (si, value) in group.values.iter().enumerate() {
            let Some(v) = value else { continue };
            let h = plot_h * (v / max).clamp(0.0, 1.0);
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{bar_w}" height="{h:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                x0 + si as f64 * bar_w,
                top + plot_h - h,
                COLORS[si % COLORS.len()],
                escape(&group.label),
                escape(series[si]),
                format_tick(*v)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" transform="rotate(-35 {:.1} {:.1})">{}</text>"#,
            x0 + group_w / 2.0,
            top + plot_h + 14.0,
            x0 + group_w / 2.0,
            top + plot_h + 14.0,
            escape(&group.label)
        );
    }
    for (si, name) in series.iter().enumerate() {
        let x = left + 10.0 + si as f64 * 90.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.0}" y="{:.0}" width="10" height="10" fill="{}"/><text x="{:.0}" y="{:.0}">{}</text>"#,
            height - 18.0,
            COLORS[si % COLORS.len()],
            x + 14.0,
            height - 9.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * mag >= v {
            return step * mag;
        }
    }
    10.0 * mag
}

fn format_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_rect_per_present_value_and_escapes_labels() {
        let svg = grouped_bars(
            "t<1>",
            "score",
            &["a", "b"],
            &[
                Group {
                    label: "x&y".into(),
                    values: vec![Some(50.0), None],
                },
                Group {
                    label: "z".into(),
                    values: vec![Some(80.0), Some(20.0)],
                },
            ],
        );
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("t&lt;1&gt;") && svg.contains("x&amp;y"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn ceiling_is_at_least_the_maximum() {
        for v in [0.3, 1.0, 7.0, 63.2, 99.0, 1234.0] {
            let c = nice_ceiling(v);
            assert!(c >= v && c <= v * 2.5, "{v} -> {c}");
        }
    }
}
