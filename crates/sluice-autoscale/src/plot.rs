//! The comparison plot: load, replicas and p99 latency over time, one line per policy
//! (SVG through `plotters`).

use plotters::prelude::*;

use crate::report::Comparison;
use crate::{Error, Result};

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::Plot(e.to_string())
}

/// Three stacked panels sharing the time axis; p99 on a log scale with the objective.
pub fn svg(c: &Comparison) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 960)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let panels = root.split_evenly((3, 1));
        let Some(first) = c.policies.first() else {
            return Err(Error::Plot("no policies to plot".into()));
        };
        let bucket = first.timeline.bucket_s;
        let xs = |n: usize| (0..n).map(move |i| (i as f64 + 0.5) * bucket);
        let x_max = c.trace_seconds.max(bucket);

        // 1. load
        let rate = &first.timeline.rate;
        let y_max = rate.iter().copied().fold(1.0, f64::max) * 1.1;
        let mut ch = ChartBuilder::on(&panels[0])
            .caption(
                format!(
                    "{} on {}: arrivals (req/s, {bucket:.0}-s buckets)",
                    c.model, c.hardware_class
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(err)?;
        ch.configure_mesh().y_desc("req/s").draw().map_err(err)?;
        ch.draw_series(LineSeries::new(
            xs(rate.len()).zip(rate.iter().copied()),
            &BLACK,
        ))
        .map_err(err)?;

        // 2. replicas
        let r_max = c
            .policies
            .iter()
            .flat_map(|p| p.timeline.replicas.iter().copied())
            .fold(1.0, f64::max)
            * 1.15;
        let mut ch = ChartBuilder::on(&panels[1])
            .caption("provisioned replicas", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, 0f64..r_max)
            .map_err(err)?;
        ch.configure_mesh().y_desc("replicas").draw().map_err(err)?;
        for (i, p) in c.policies.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let r = &p.timeline.replicas;
            ch.draw_series(LineSeries::new(
                xs(r.len()).zip(r.iter().copied()),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(p.policy.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
        ch.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;

        // 3. p99 per bucket (log scale), objective as a dashed line
        let l_max = c
            .policies
            .iter()
            .flat_map(|p| p.timeline.p99_ms.iter().flatten().copied())
            .fold(c.slo_ms * 2.0, f64::max);
        let l_min = c
            .policies
            .iter()
            .flat_map(|p| p.timeline.p99_ms.iter().flatten().copied())
            .fold(c.slo_ms / 2.0, f64::min)
            .max(1e-3);
        let mut ch = ChartBuilder::on(&panels[2])
            .caption(
                format!("p99 latency (ms), objective {} ms", c.slo_ms),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, (l_min..l_max).log_scale())
            .map_err(err)?;
        ch.configure_mesh()
            .x_desc("seconds")
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        ch.draw_series(DashedLineSeries::new(
            vec![(0.0, c.slo_ms), (x_max, c.slo_ms)],
            6,
            4,
            RED.stroke_width(1),
        ))
        .map_err(err)?;
        for (i, p) in c.policies.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = xs(p.timeline.p99_ms.len())
                .zip(&p.timeline.p99_ms)
                .filter_map(|(x, y)| y.map(|y| (x, y.max(l_min))))
                .collect();
            ch.draw_series(LineSeries::new(pts, color.stroke_width(1)))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{test_profile, ServiceModel};
    use crate::report::{compare, SimConfig};
    use crate::trace::TraceSpec;

    #[test]
    fn plots_every_policy() {
        let mut prof = test_profile(
            "cpu",
            0.1,
            &[(1, 5.0), (4, 12.0)],
            ServiceModel::Deterministic,
        );
        prof.load_time_s = 2.0;
        let trace = TraceSpec::parse("step:rates=50/400/50,every=60").unwrap();
        let arrivals = trace.generate(1);
        let cfg = SimConfig::new(100.0);
        let c = compare(&cfg, &prof, &arrivals, trace.seconds()).unwrap();
        let s = svg(&c).unwrap();
        assert!(
            s.starts_with("<svg") || s.starts_with("<?xml"),
            "{}",
            &s[..40]
        );
        for p in &c.policies {
            assert!(s.contains(&p.policy), "legend lacks {}", p.policy);
        }
        assert!(s.matches("<polyline").count() > 2 * c.policies.len());
    }
}
