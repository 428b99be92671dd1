//! Latency and outcome recording: an HDR histogram (nanoseconds, 3 significant
//! digits) per run, error counts by kind, and the summary a report prints.
//!
//! Key decision: percentiles come from the histogram (bounded memory, 0.1 % value
//! precision, mergeable across workers) rather than from a sorted list of samples.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one run saw.
#[derive(Debug, Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    /// Rows (samples) answered successfully.
    pub samples: u64,
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            // 1 ns to 1 hour; slower answers count as one hour.
            hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("valid histogram bounds"),
            samples: 0,
            errors: BTreeMap::new(),
            first_error: None,
        }
    }
}

impl Recorder {
    pub fn ok(&mut self, latency: Duration, samples: u64) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(ns);
        self.samples += samples;
    }

    pub fn error(&mut self, kind: String, message: String) {
        *self.errors.entry(kind).or_default() += 1;
        self.first_error.get_or_insert(message);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds");
        self.samples += other.samples;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Successful answers with a latency of at most `limit` (to the histogram's 0.1 %
    /// precision): the goodput under a latency objective.
    pub fn count_within(&self, limit: Duration) -> u64 {
        let ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
        self.hist.count_between(0, ns)
    }

    /// Failed requests whose error kind is one of `kinds` (e.g. `"status 429"`).
    pub fn errors_of(&self, kinds: &[&str]) -> u64 {
        kinds.iter().filter_map(|k| self.errors.get(*k)).sum()
    }

    /// The latency below which `q` (0..=1) of the answers fall.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.hist.value_at_quantile(q))
    }

    /// Summary of the measured window of `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let ms = |ns: u64| ns as f64 / 1e6;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let q = |q: f64| ms(self.hist.value_at_quantile(q));
        Summary {
            requests: self.count(),
            samples: self.samples,
            errors: self.error_count(),
            error_kinds: self.errors.clone(),
            first_error: self.first_error.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            throughput_rps: self.count() as f64 / secs,
            samples_per_s: self.samples as f64 / secs,
            latency_ms: Latency {
                min: if self.count() == 0 {
                    0.0
                } else {
                    ms(self.hist.min())
                },
                mean: self.hist.mean() / 1e6,
                p50: q(0.5),
                p90: q(0.9),
                p95: q(0.95),
                p99: q(0.99),
                p999: q(0.999),
                max: ms(self.hist.max()),
            },
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One run's numbers, as they go into the report.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Successful requests in the measured window.
    pub requests: u64,
    /// Rows in those requests (requests × batch size).
    pub samples: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub samples_per_s: f64,
    pub latency_ms: Latency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = Recorder::default();
        for ms in 1..=1000u64 {
            r.ok(Duration::from_millis(ms), 1);
        }
        let s = r.summary(Duration::from_secs(2));
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 0.002;
        assert!(close(s.latency_ms.p50, 500.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p90, 900.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p99, 990.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.max, 1000.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.min, 1.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.mean, 500.5), "{:?}", s.latency_ms);
        assert_eq!(s.requests, 1000);
        assert!((s.throughput_rps - 500.0).abs() < 1e-9);
    }

    #[test]
    fn a_tail_shows_in_p99_not_p50_and_merging_adds_up() {
        let mut a = Recorder::default();
        for _ in 0..980 {
            a.ok(Duration::from_micros(200), 1);
        }
        let mut b = Recorder::default();
        for _ in 0..20 {
            b.ok(Duration::from_millis(50), 8);
        }
        b.error("status 429".into(), "queue full".into());
        a.merge(&b);
        let s = a.summary(Duration::from_secs(1));
        assert!((s.latency_ms.p50 - 0.2).abs() < 0.001);
        assert!(
            (s.latency_ms.p99 - 50.0).abs() < 0.1,
            "{}",
            s.latency_ms.p99
        );
        assert_eq!((s.requests, s.samples, s.errors), (1000, 980 + 160, 1));
        assert_eq!(a.count_within(Duration::from_millis(1)), 980);
        assert_eq!(a.count_within(Duration::from_millis(50)), 1000);
        assert_eq!(a.count_within(Duration::from_micros(100)), 0);
        assert_eq!(a.errors_of(&["status 429", "status ResourceExhausted"]), 1);
        assert_eq!(a.errors_of(&["status 504"]), 0);
        assert_eq!(s.first_error.as_deref(), Some("queue full"));
    }
}
