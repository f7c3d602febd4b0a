//! The latency chart of an open-loop rate, as a standalone SVG.

use super::num;

/// A percentile plot (x: 50th to 99.9th on a log-of-nines scale, y: milliseconds), one line per
/// series, as a standalone SVG.
pub fn latency_svg(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 360.0;
    const L: f64 = 60.0;
    const R: f64 = 150.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#1b6ac9", "#d2462f", "#2e9e44", "#8a4fc2", "#c9861b", "#555555",
    ];
    let nines = |p: f64| -(1.0 - p / 100.0).log10();
    let (x0, x1) = (nines(50.0), nines(99.9));
    let ymax = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let x = |p: f64| L + (nines(p) - x0) / (x1 - x0) * (W - L - R);
    let y = |v: f64| H - B - v / ymax * (H - T - B);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n<text x=\"{L}\" y=\"22\" font-size=\"14\">{}</text>\n",
        xml(title)
    );
    s.push_str(&format!(
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>\n",
        H - B,
        W - R,
        H - B,
        H - B
    ));
    for p in [50.0, 90.0, 99.0, 99.9] {
        s.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">p{4}</text>\n",
            x(p), T, H - B, H - B + 18.0, p
        ));
    }
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            L - 6.0,
            y(v) + 4.0,
            num(v)
        ));
    }
    s.push_str(&format!(
        "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">latency, ms</text>\n<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">percentile</text>\n",
        (H - B + T) / 2.0,
        (H - B + T) / 2.0,
        (L + W - R) / 2.0,
        H - 8.0
    ));
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(p, v)| format!("{:.1},{:.1}", x(*p), y(*v)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>\n",
            path.join(" "),
            W - R + 10.0,
            T + 16.0 * i as f64 + 10.0,
            xml(label)
        ));
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_chart_is_an_svg_with_one_line_per_series() {
        let svg = latency_svg(
            "p <50%>",
            &[
                (
                    "Palisade".into(),
                    vec![(50.0, 0.2), (99.0, 0.9), (99.9, 2.0)],
                ),
                (
                    "nginx".into(),
                    vec![(50.0, 0.1), (99.0, 0.5), (99.9, f64::NAN)],
                ),
            ],
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("p &lt;50%&gt;"));
        assert!(!svg.contains("NaN"));
    }
}
