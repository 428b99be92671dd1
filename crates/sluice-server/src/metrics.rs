//! Prometheus metrics in the text exposition format, served on their own port
//! (`/metrics`, Triton's 8002 by default).
//!
//! Key decision: nothing is collected for the scrape. The counters and histograms
//! live in each model version's [`PoolStats`](sluice_runtime::PoolStats), updated by
//! the request path with relaxed atomics; a scrape reads them and writes the text,
//! so metrics cost the request path nothing beyond those adds, and a version that is
//! unloaded simply stops being reported. Names carry one prefix (`sluice_`), units
//! in the name (`_seconds`, `_bytes`), counters end in `_total`; the process
//! metrics use the standard `process_*` names every Prometheus client exports, so
//! stock dashboards find them. Triton's names (`nv_inference_*`) are added with
//! [`MetricsConfig::triton_compat`] for dashboards built for Triton.

mod cache;
pub mod replicas_needed;

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use sluice_runtime::{CacheStats, HistogramSnapshot, ModelState, Outcome, Runtime, VersionStats};

/// Settings of the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Also export Triton's metric names and units.
    pub triton_compat: bool,
    /// Export `sluice_replicas_needed` for this latency objective.
    pub replicas_needed_slo: Option<std::time::Duration>,
}

#[derive(Clone)]
struct MetricsState {
    runtime: Runtime,
    config: MetricsConfig,
    replicas_needed: Option<std::sync::Arc<replicas_needed::ReplicasNeeded>>,
}

/// The router of the metrics port: `GET /metrics`.
pub fn metrics_app(runtime: Runtime, config: MetricsConfig) -> Router {
    let replicas_needed = config
        .replicas_needed_slo
        .map(|slo| std::sync::Arc::new(replicas_needed::ReplicasNeeded::new(slo)));
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(MetricsState {
            runtime,
            config,
            replicas_needed,
        })
        .layer(axum::middleware::map_response(crate::json_errors))
}

async fn scrape(State(s): State<MetricsState>) -> impl IntoResponse {
    let cache = s.runtime.cache_stats().await;
    let mut text = render(&s.runtime, s.config, cache);
    if let Some(needed) = &s.replicas_needed {
        text.push_str(&replicas_needed_text(&s.runtime, needed));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// The SLO-aware autoscaling signal (one policy tick per scrape).
fn replicas_needed_text(runtime: &Runtime, needed: &replicas_needed::ReplicasNeeded) -> String {
    let mut out = Writer::default();
    needed.render(&mut out, &runtime.stats(None, None).unwrap_or_default());
    out.text
}

/// The whole exposition text.
pub fn render(runtime: &Runtime, config: MetricsConfig, cache: Option<CacheStats>) -> String {
    let mut out = Writer::default();
    let versions = runtime.stats(None, None).unwrap_or_default();
    out.family(
        "sluice_build_info",
        "gauge",
        "Sluice build: version label; always 1.",
    );
    out.sample(
        "sluice_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    model_states(&mut out, runtime);
    native(&mut out, &versions);
    variant_choices(&mut out, runtime);
    cache::native(&mut out, &versions, cache);
    if config.triton_compat {
        triton(&mut out, &versions);
        cache::triton(&mut out, &versions);
    }
    process(&mut out);
    out.text
}

/// Reads one figure of a model version.
type Figure<'a> = &'a dyn Fn(&VersionStats) -> f64;
/// Reads one histogram of a model version.
type HistogramOf = fn(&VersionStats) -> HistogramSnapshot;

/// Prometheus text, written family by family.
#[derive(Default)]
struct Writer {
    text: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let bounds: Vec<String> = h.bounds.iter().map(|&b| number(b)).collect();
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        for (le, count) in bounds.iter().zip(&h.cumulative) {
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, *count as f64);
            with_le.pop();
        }
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        // Shortest round-trip form: integers print without a fraction.
        format!("{v}")
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per variant family: the requests each variant was chosen for.
fn variant_choices(out: &mut Writer, runtime: &Runtime) {
    let families = runtime.variant_choices();
    if families.is_empty() {
        return;
    }
    out.family(
        "sluice_variant_choices_total",
        "counter",
        "Requests to a variant family answered by each of its variants.",
    );
    for (family, variants) in families {
        for v in variants {
            out.sample(
                "sluice_variant_choices_total",
                &[("model", &family), ("variant", &v.variant)],
                v.count as f64,
            );
        }
    }
}

fn model_states(out: &mut Writer, runtime: &Runtime) {
    out.family(
        "sluice_model_ready",
        "gauge",
        "1 if the model version is ready to serve, 0 if it is not.",
    );
    for e in runtime.index() {
        let version = e.version.map(|v| v.to_string()).unwrap_or_default();
        out.sample(
            "sluice_model_ready",
            &[("model", &e.name), ("version", &version)],
            f64::from(u8::from(e.state == ModelState::Ready)),
        );
    }
}

fn native(out: &mut Writer, versions: &[VersionStats]) {
    let labelled: Vec<(String, &VersionStats)> = versions
        .iter()
        .map(|v| (v.version.to_string(), v))
        .collect();
    let each = |out: &mut Writer, name: &str, value: Figure<'_>| {
        for (version, v) in &labelled {
            out.sample(name, &[("model", &v.name), ("version", version)], value(v));
        }
    };
    out.family(
        "sluice_model_load_duration_seconds",
        "gauge",
        "Time the model version took to load.",
    );
    each(out, "sluice_model_load_duration_seconds", &|v| {
        v.load_duration.as_secs_f64()
    });
    out.family(
        "sluice_model_memory_bytes",
        "gauge",
        "Resident memory the model version took when it loaded (measured; see README).",
    );
    each(out, "sluice_model_memory_bytes", &|v| v.memory_bytes as f64);
    out.family(
        "sluice_model_instances",
        "gauge",
        "Instances of the model version taking batches now (changes live: instances API, in-place loads, the autoscaler).",
    );
    each(out, "sluice_model_instances", &|v| v.instances.count as f64);
    out.family(
        "sluice_model_instance_threads",
        "gauge",
        "Intra-op threads of each instance of the model version.",
    );
    each(out, "sluice_model_instance_threads", &|v| {
        v.instances.threads_per_instance as f64
    });
    out.family(
        "sluice_model_instance_threads_running",
        "gauge",
        "Instance threads of the model version alive (retired ones finishing their last batch included).",
    );
    each(out, "sluice_model_instance_threads_running", &|v| {
        v.instances.running_threads as f64
    });
    out.family(
        "sluice_inference_requests_total",
        "counter",
        "Inference requests by outcome: success, rejected (queue full or deadline unreachable), timeout, cancelled, backend (engine failure), invalid.",
    );
    for (version, v) in &labelled {
        for outcome in Outcome::ALL {
            out.sample(
                "sluice_inference_requests_total",
                &[
                    ("model", &v.name),
                    ("version", version),
                    ("outcome", outcome.as_str()),
                ],
                v.stats.outcome(outcome) as f64,
            );
        }
    }
    let counters: [(&str, &str, Figure<'_>); 4] = [
        (
            "sluice_inference_rejected_early_total",
            "Of the rejected requests, those refused at once because their deadline could not be met.",
            &|v| load(&v.stats.rejected_early),
        ),
        (
            "sluice_inference_items_total",
            "Rows (batch items) run by the engine; divided by executions, the mean batch size.",
            &|v| load(&v.stats.rows),
        ),
        (
            "sluice_inference_executions_total",
            "Engine runs (batches).",
            &|v| load(&v.stats.executions),
        ),
        (
            "sluice_inference_batched_requests_total",
            "Requests carried by engine runs.",
            &|v| load(&v.stats.inferences),
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, "counter", help);
        each(out, name, value);
    }
    out.family(
        "sluice_inference_queue_size",
        "gauge",
        "Requests waiting in the model version's queue.",
    );
    each(out, "sluice_inference_queue_size", &|v| v.queue_len as f64);
    out.family(
        "sluice_inference_in_flight",
        "gauge",
        "Requests accepted and not yet answered (queued or running).",
    );
    each(out, "sluice_inference_in_flight", &|v| {
        v.stats.in_flight() as f64
    });
    let histograms: [(&str, &str, HistogramOf); 3] = [
        (
            "sluice_inference_request_duration_seconds",
            "Time from a request's arrival at the model to its answer.",
            |v| v.stats.request_seconds.snapshot(),
        ),
        (
            "sluice_inference_queue_duration_seconds",
            "Time an executed request waited in the queue.",
            |v| v.stats.queue_seconds.snapshot(),
        ),
        (
            "sluice_inference_compute_duration_seconds",
            "Time of the engine run (gather, infer, split) that carried a request.",
            |v| v.stats.compute_seconds.snapshot(),
        ),
    ];
    for (name, help, snapshot) in histograms {
        out.family(name, "histogram", help);
        for (version, v) in &labelled {
            out.histogram(
                name,
                &[("model", &v.name), ("version", version)],
                &snapshot(v),
            );
        }
    }
    out.family(
        "sluice_inference_batch_size",
        "histogram",
        "Rows per engine run.",
    );
    for (version, v) in &labelled {
        out.histogram(
            "sluice_inference_batch_size",
            &[("model", &v.name), ("version", version)],
            &batch_size_histogram(v),
        );
    }
}

/// The batch sizes seen, as a histogram with power-of-two bounds up to the model's
/// largest batch.
fn batch_size_histogram(v: &VersionStats) -> HistogramSnapshot {
    let max = v.stats.max_batch_rows().max(1);
    let mut bounds = Vec::new();
    let mut b = 1usize;
    while b < max {
        bounds.push(b);
        b *= 2;
    }
    bounds.push(max);
    let counts = v.stats.batch_size_counts();
    let cumulative = bounds
        .iter()
        .map(|&bound| {
            counts
                .iter()
                .filter(|&&(rows, _)| rows <= bound)
                .map(|&(_, n)| n)
                .sum()
        })
        .collect();
    HistogramSnapshot {
        bounds: bounds.iter().map(|&b| b as f64).collect(),
        cumulative,
        count: counts.iter().map(|&(_, n)| n).sum(),
        sum_seconds: counts.iter().map(|&(rows, n)| rows as u64 * n).sum::<u64>() as f64,
    }
}

/// Triton's metric names (`nv_inference_*`), cumulative microsecond counters.
fn triton(out: &mut Writer, versions: &[VersionStats]) {
    let labelled: Vec<(String, &VersionStats)> = versions
        .iter()
        .map(|v| (v.version.to_string(), v))
        .collect();
    let us = |(_, ns): (u64, u64)| (ns / 1000) as f64;
    let families: [(&str, &str, &str, Figure<'_>); 9] = [
        (
            "nv_inference_request_success",
            "counter",
            "Number of successful inference requests, all batch sizes",
            &|v| v.stats.outcome(Outcome::Success) as f64,
        ),
        (
            "nv_inference_count",
            "counter",
            "Number of inferences performed (does not include cached requests)",
            &|v| load(&v.stats.rows),
        ),
        (
            "nv_inference_exec_count",
            "counter",
            "Number of model executions performed (does not include cached requests)",
            &|v| load(&v.stats.executions),
        ),
        (
            "nv_inference_request_duration_us",
            "counter",
            "Cumulative inference request duration in microseconds (includes cached requests)",
            &|v| us(v.stats.success.get()) + us(v.stats.fail.get()),
        ),
        (
            "nv_inference_queue_duration_us",
            "counter",
            "Cumulative inference queuing duration in microseconds (includes cached requests)",
            &|v| us(v.stats.queue.get()),
        ),
        (
            "nv_inference_compute_input_duration_us",
            "counter",
            "Cumulative compute input duration in microseconds (does not include cached requests)",
            &|v| us(v.stats.compute_input.get()),
        ),
        (
            "nv_inference_compute_infer_duration_us",
            "counter",
            "Cumulative compute inference duration in microseconds (does not include cached requests)",
            &|v| us(v.stats.compute_infer.get()),
        ),
        (
            "nv_inference_compute_output_duration_us",
            "counter",
            "Cumulative inference compute output duration in microseconds (does not include cached requests)",
            &|v| us(v.stats.compute_output.get()),
        ),
        (
            "nv_inference_pending_request_count",
            "gauge",
            "Instantaneous number of pending requests awaiting execution per-model.",
            &|v| v.queue_len as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        for (version, v) in &labelled {
            out.sample(name, &[("model", &v.name), ("version", version)], value(v));
        }
    }
    out.family(
        "nv_inference_request_failure",
        "counter",
        "Number of failed inference requests, all batch sizes",
    );
    for (version, v) in &labelled {
        let s = &v.stats;
        let reasons = [
            (
                "REJECTED",
                s.outcome(Outcome::Rejected) + s.outcome(Outcome::Timeout),
            ),
            ("CANCELED", s.outcome(Outcome::Cancelled)),
            ("BACKEND", s.outcome(Outcome::Backend)),
            ("OTHER", s.outcome(Outcome::Invalid)),
        ];
        for (reason, n) in reasons {
            out.sample(
                "nv_inference_request_failure",
                &[("model", &v.name), ("version", version), ("reason", reason)],
                n as f64,
            );
        }
    }
}

fn load(a: &std::sync::atomic::AtomicU64) -> f64 {
    a.load(std::sync::atomic::Ordering::Relaxed) as f64
}

/// The standard process metrics, read from `/proc` (Linux, `sluice_runtime::process`);
/// elsewhere none.
fn process(out: &mut Writer) {
    let Some(p) = sluice_runtime::process::figures(None) else {
        return;
    };
    let families: [(&str, &str, &str, f64); 5] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            p.threads as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        out.sample(name, &[], value);
    }
    if let Some(fds) = p.open_fds {
        out.family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        out.sample("process_open_fds", &[], fds as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_have_cumulative_buckets_sum_and_count() {
        let mut w = Writer::default();
        let h = HistogramSnapshot {
            bounds: vec![0.001, 0.5],
            cumulative: vec![1, 3],
            count: 4,
            sum_seconds: 2.25,
        };
        w.histogram("x_seconds", &[("model", "m\"1")], &h);
        assert_eq!(
            w.text,
            "x_seconds_bucket{model=\"m\\\"1\",le=\"0.001\"} 1\n\
             x_seconds_bucket{model=\"m\\\"1\",le=\"0.5\"} 3\n\
             x_seconds_bucket{model=\"m\\\"1\",le=\"+Inf\"} 4\n\
             x_seconds_sum{model=\"m\\\"1\"} 2.25\n\
             x_seconds_count{model=\"m\\\"1\"} 4\n"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_process_families_are_written_from_proc() {
        let mut w = Writer::default();
        process(&mut w);
        let value = |name: &str| -> f64 {
            w.text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {name} in {}", w.text))
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_start_time_seconds") > 1.7e9);
    }
}
