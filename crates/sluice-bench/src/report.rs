//! What a bench run leaves behind: a table on stdout, a JSON report, and for sweeps
//! a latency-vs-throughput plot as a hand-written SVG (no plotting dependency).

use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::{Headline, RunResult};

/// The JSON report (`--report FILE`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub scenario: String,
    pub url: String,
    pub protocol: String,
    pub model: String,
    pub settings: serde_json::Value,
    pub runs: Vec<RunResult>,
    pub result: Headline,
}

/// The readable table.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} on {} ({}, {})",
        report.scenario, report.model, report.url, report.protocol
    );
    let _ = writeln!(
        out,
        "{:<22} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "run", "req/s", "samples/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
    );
    for r in &report.runs {
        let s = &r.summary;
        let mark = match r.meets_bound {
            Some(true) => " ok",
            Some(false) => " over bound",
            None => "",
        };
        let _ = writeln!(
            out,
            "{:<22} {:>10.1} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7}{mark}",
            r.label,
            s.throughput_rps,
            s.samples_per_s,
            s.latency_ms.p50,
            s.latency_ms.p90,
            s.latency_ms.p99,
            s.latency_ms.p999,
            s.latency_ms.max,
            s.errors
        );
        if let Some(e) = &s.first_error {
            let _ = writeln!(out, "    first error: {e}");
        }
    }
    let h = &report.result;
    let verdict = match h.valid {
        Some(true) => " (VALID)",
        Some(false) => " (INVALID)",
        None => "",
    };
    let _ = writeln!(
        out,
        "result: {} = {:.3} {}{verdict}",
        h.metric, h.value, h.unit
    );
    out
}

/// p50 and p99 latency against achieved throughput, one point per run.
pub fn svg_plot(report: &Report) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 440.0, 70.0, 20.0, 40.0, 50.0);
    let pts: Vec<(f64, f64, f64, &str)> = report
        .runs
        .iter()
        .map(|r| {
            let s = &r.summary;
            (
                s.throughput_rps,
                s.latency_ms.p50,
                s.latency_ms.p99,
                r.label.as_str(),
            )
        })
        .collect();
    let xmax = nice(pts.iter().map(|p| p.0).fold(0.0, f64::max));
    let ymax = nice(pts.iter().map(|p| p.2).fold(0.0, f64::max));
    let x = |v: f64| left + (w - left - right) * v / xmax;
    let y = |v: f64| h - bottom - (h - top - bottom) * v / ymax;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{} — {} ({})</text>"#,
        w / 2.0,
        escape(&report.scenario),
        escape(&report.model),
        escape(&report.protocol)
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (gx, gy) = (x(xmax * f), y(ymax * f));
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"##,
            h - bottom,
            h - bottom + 16.0,
            xmax * f
        );
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.2}</text>"##,
            w - right,
            left - 6.0,
            gy + 4.0,
            ymax * f
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">throughput (requests/s)</text><text transform="translate(16 {}) rotate(-90)" text-anchor="middle">latency (ms)</text>"#,
        (left + w - right) / 2.0,
        h - 10.0,
        (top + h - bottom) / 2.0
    );
    for (name, color, pick) in [("p50", "#1f77b4", 1usize), ("p99", "#d62728", 2)] {
        let coords: Vec<String> = pts
            .iter()
            .map(|p| {
                let v = if pick == 1 { p.1 } else { p.2 };
                format!("{:.1},{:.1}", x(p.0), y(v))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            coords.join(" ")
        );
        for (c, p) in coords.iter().zip(&pts) {
            let (cx, cy) = c.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                s,
                r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{color}"><title>{}: {name}</title></circle>"#,
                escape(p.3)
            );
        }
        let ly = if pick == 1 { top + 8.0 } else { top + 24.0 };
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            left + 10.0,
            left + 30.0,
            left + 36.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A round axis maximum at or above `v`.
fn nice(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&m| m >= v)
        .unwrap_or(10.0 * mag)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(3.2), 5.0);
        assert_eq!(nice(1870.0), 2000.0);
        assert_eq!(nice(0.021), 0.025);
    }
}
