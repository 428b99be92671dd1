//! Plots of profiles (`sluice profile`): one model's latency and throughput per
//! batch size (and per instance count when measured), and several models' accuracy
//! against their latency at batch 1 (the comparison of Bianco et al.). SVG through
//! `plotters`, like the simulator's comparison plot.

use plotters::prelude::*;

use crate::profile::Profile;
use crate::{Error, Result};

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::Plot(e.to_string())
}

/// Latency (p50, p99) and throughput against the batch size; a third panel of
/// throughput against the instance count when the profile has one.
pub fn profile_svg(p: &Profile) -> Result<String> {
    let mut out = String::new();
    {
        let panels_n = if p.instance_scaling.is_empty() { 2 } else { 3 };
        let root =
            SVGBackend::with_string(&mut out, (900, 320 * panels_n as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let panels = root.split_evenly((panels_n, 1));
        let b_max = f64::from(p.max_batch()).max(2.0);
        let lat_max = p
            .batches
            .iter()
            .map(|b| b.latency_ms.p99.unwrap_or(b.latency_ms.p50))
            .fold(0.0, f64::max)
            * 1.15;
        let mut ch = ChartBuilder::on(&panels[0])
            .caption(
                format!(
                    "{} on {}: latency of one request (ms)",
                    p.model, p.hardware_class
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(56)
            .build_cartesian_2d((1f64..b_max).log_scale(), 0f64..lat_max.max(1e-3))
            .map_err(err)?;
        ch.configure_mesh()
            .x_desc("batch size")
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        let p50: Vec<(f64, f64)> = p
            .batches
            .iter()
            .map(|b| (f64::from(b.batch_size), b.latency_ms.p50))
            .collect();
        let p99: Vec<(f64, f64)> = p
            .batches
            .iter()
            .map(|b| {
                (
                    f64::from(b.batch_size),
                    b.latency_ms.p99.unwrap_or(b.latency_ms.p50),
                )
            })
            .collect();
        ch.draw_series(LineSeries::new(p50, BLUE.stroke_width(2)))
            .map_err(err)?
            .label("p50")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
        ch.draw_series(LineSeries::new(p99, RED.stroke_width(2)))
            .map_err(err)?
            .label("p99")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
        ch.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;

        let tp: Vec<(f64, f64)> = p
            .batches
            .iter()
            .filter_map(|b| b.throughput_per_s.map(|t| (f64::from(b.batch_size), t)))
            .collect();
        let tp_max = tp.iter().map(|t| t.1).fold(1.0, f64::max) * 1.15;
        let mut ch = ChartBuilder::on(&panels[1])
            .caption(
                format!("throughput (rows/s) with {} instance(s)", p.instances),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(64)
            .build_cartesian_2d((1f64..b_max).log_scale(), 0f64..tp_max)
            .map_err(err)?;
        ch.configure_mesh()
            .x_desc("batch size")
            .y_desc("rows/s")
            .draw()
            .map_err(err)?;
        ch.draw_series(LineSeries::new(tp, BLACK.stroke_width(2)))
            .map_err(err)?;

        if let Some(panel) = panels.get(2) {
            let pts: Vec<(f64, f64)> = p
                .instance_scaling
                .iter()
                .map(|i| (f64::from(i.instances), i.throughput_per_s))
                .collect();
            let i_max = pts.iter().map(|t| t.0).fold(1.0, f64::max) + 0.5;
            let t_max = pts.iter().map(|t| t.1).fold(1.0, f64::max) * 1.15;
            let mut ch = ChartBuilder::on(panel)
                .caption("throughput (rows/s) per instance count", ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(64)
                .build_cartesian_2d(0.5f64..i_max, 0f64..t_max)
                .map_err(err)?;
            ch.configure_mesh()
                .x_desc("instances")
                .y_desc("rows/s")
                .draw()
                .map_err(err)?;
            ch.draw_series(LineSeries::new(pts, GREEN.stroke_width(2)))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// Accuracy against the median latency at batch 1, one labelled point per model
/// that states an accuracy.
pub fn accuracy_latency_svg(profiles: &[Profile]) -> Result<String> {
    let points: Vec<(String, f64, f64)> = profiles
        .iter()
        .filter_map(|p| {
            let a = p.accuracy?;
            Some((p.model.clone(), p.batches.first()?.latency_ms.p50, a))
        })
        .collect();
    if points.is_empty() {
        return Err(Error::Plot(
            "no profile states an accuracy (set it in the model's config or a family)".into(),
        ));
    }
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (800, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let x_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.3;
        let x_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) / 1.3;
        let y_max = points.iter().map(|p| p.2).fold(0.0, f64::max);
        let y_min = points.iter().map(|p| p.2).fold(f64::INFINITY, f64::min);
        let pad = ((y_max - y_min) * 0.15).max(0.01);
        let mut ch = ChartBuilder::on(&root)
            .caption("accuracy vs latency at batch 1", ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(
                (x_min.max(1e-3)..x_max.max(2e-3)).log_scale(),
                (y_min - pad)..(y_max + pad),
            )
            .map_err(err)?;
        ch.configure_mesh()
            .x_desc("p50 latency at batch 1 (ms)")
            .y_desc("accuracy")
            .draw()
            .map_err(err)?;
        ch.draw_series(
            points
                .iter()
                .map(|(_, x, y)| Circle::new((*x, *y), 5, BLUE.filled())),
        )
        .map_err(err)?;
        ch.draw_series(
            points.iter().map(|(name, x, y)| {
                Text::new(name.clone(), (*x, *y), ("sans-serif", 14).into_font())
            }),
        )
        .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{test_profile, InstanceProfile, LatencyMs, ServiceModel};

    #[test]
    fn plots_latency_throughput_and_instances() {
        let mut p = test_profile(
            "cpu",
            0.0,
            &[(1, 2.0), (2, 3.0), (4, 5.0)],
            ServiceModel::Deterministic,
        );
        for b in &mut p.batches {
            b.throughput_per_s = Some(f64::from(b.batch_size) * 1000.0 / b.latency_ms.p50);
        }
        let two = test_svg_parts(&profile_svg(&p).unwrap());
        p.instance_scaling = vec![InstanceProfile {
            instances: 1,
            batch_size: 4,
            throughput_per_s: 800.0,
            latency_ms: LatencyMs {
                p50: 5.0,
                p90: None,
                p99: None,
                mean: None,
            },
        }];
        let three = test_svg_parts(&profile_svg(&p).unwrap());
        assert!(
            two >= 3,
            "p50, p99 and throughput lines (and the mesh): {two}"
        );
        assert!(
            three > two,
            "a third panel: {three} polylines, {two} without"
        );
    }

    fn test_svg_parts(svg: &str) -> usize {
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));
        svg.matches("<polyline").count()
    }

    #[test]
    fn accuracy_plot_labels_every_model_with_an_accuracy() {
        let mut a = test_profile("cpu", 0.0, &[(1, 20.0)], ServiceModel::Deterministic);
        a.model = "resnet50".into();
        a.accuracy = Some(0.76);
        let mut b = test_profile("cpu", 0.0, &[(1, 4.0)], ServiceModel::Deterministic);
        b.model = "mobilenetv2".into();
        b.accuracy = Some(0.72);
        let mut c = test_profile("cpu", 0.0, &[(1, 4.0)], ServiceModel::Deterministic);
        c.model = "unrated".into();
        let svg = accuracy_latency_svg(&[a, b, c.clone()]).unwrap();
        assert!(svg.contains("resnet50") && svg.contains("mobilenetv2"));
        assert!(!svg.contains("unrated"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(accuracy_latency_svg(&[c]).is_err());
    }
}
