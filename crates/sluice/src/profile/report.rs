//! The terminal tables: one model's profile, and the comparison of several.

use std::fmt::Write as _;

use sluice_autoscale::profile::Profile;

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1}", b as f64 / (1 << 20) as f64),
    )
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

/// Per batch size: p50, p99, throughput; per instance count: throughput; then
/// the load time and memory.
pub fn table(p: &Profile) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} v{} on {} ({} backend, {} instance(s))",
        p.model,
        if p.version.is_empty() {
            "?"
        } else {
            &p.version
        },
        p.hardware_class,
        if p.backend.is_empty() {
            "?"
        } else {
            &p.backend
        },
        p.instances
    );
    let _ = writeln!(
        out,
        "{:>6} {:>10} {:>10} {:>12}",
        "batch", "p50 ms", "p99 ms", "rows/s"
    );
    for b in &p.batches {
        let _ = writeln!(
            out,
            "{:>6} {:>10.3} {:>10} {:>12}",
            b.batch_size,
            b.latency_ms.p50,
            ms(b.latency_ms.p99),
            b.throughput_per_s
                .map_or_else(|| "-".to_owned(), |t| format!("{t:.1}"))
        );
    }
    if !p.instance_scaling.is_empty() {
        let _ = writeln!(
            out,
            "{:>9} {:>6} {:>10} {:>12}",
            "instances", "batch", "p50 ms", "rows/s"
        );
        for i in &p.instance_scaling {
            let _ = writeln!(
                out,
                "{:>9} {:>6} {:>10.3} {:>12.1}",
                i.instances, i.batch_size, i.latency_ms.p50, i.throughput_per_s
            );
        }
    }
    let _ = writeln!(
        out,
        "load {:.3} s, memory {} MiB",
        p.load_time_s,
        mib(p.memory_bytes)
    );
    out
}

/// Bianco et al.'s comparison: accuracy, latency at batch 1, best throughput,
/// memory; most accurate first.
pub fn comparison(profiles: &[Profile]) -> String {
    let mut rows: Vec<&Profile> = profiles.iter().collect();
    rows.sort_by(|a, b| {
        b.accuracy
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.accuracy.unwrap_or(f64::NEG_INFINITY))
            .then(a.model.cmp(&b.model))
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>9} {:>14} {:>16} {:>11} {:>8}",
        "model", "accuracy", "p50@1 ms", "best rows/s", "memory MiB", "load s"
    );
    for p in rows {
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>14.3} {:>16} {:>11} {:>8.3}",
            p.model,
            p.accuracy
                .map_or_else(|| "-".to_owned(), |a| format!("{a:.4}")),
            p.batches.first().map_or(f64::NAN, |b| b.latency_ms.p50),
            p.best_throughput()
                .map_or_else(|| "-".to_owned(), |t| format!("{t:.1}")),
            mib(p.memory_bytes),
            p.load_time_s
        );
    }
    out
}
