//! Arrival schedules for open-loop load, computed before the run starts.
//!
//! Key decision: the whole schedule (every request's send time, as an offset from the
//! start) exists before the first request goes out, so how the server behaves cannot
//! change when requests are sent, and latency is measured from these scheduled times
//! (no coordinated omission).

use std::time::Duration;

use crate::rng::Rng;

/// Poisson arrivals: exponential gaps with mean `1 / rate`, from 0 up to `span`.
pub fn poisson(rate: f64, span: Duration, seed: u64) -> Vec<Duration> {
    assert!(rate > 0.0, "rate must be positive");
    let mut rng = Rng::new(seed);
    let span = span.as_secs_f64();
    let mut t = rng.exponential(rate);
    let mut out = Vec::with_capacity((rate * span * 1.1) as usize + 16);
    while t < span {
        out.push(Duration::from_secs_f64(t));
        t += rng.exponential(rate);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_rate_and_dispersion_match_a_poisson_process() {
        let rate = 1000.0;
        let seconds = 200;
        let s = poisson(rate, Duration::from_secs(seconds), 42);
        // Mean rate: 200k expected arrivals, sd ~ 447 (0.22 %).
        let observed = s.len() as f64 / seconds as f64;
        assert!((observed / rate - 1.0).abs() < 0.01, "rate {observed}");
        // Gaps are exponential: coefficient of variation 1.
        let gaps: Vec<f64> = s.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.02, "cv {cv}");
        // Counts in 100 ms windows: index of dispersion (variance / mean) 1.
        let mut counts = vec![0f64; seconds as usize * 10];
        for t in &s {
            counts[(t.as_secs_f64() * 10.0) as usize] += 1.0;
        }
        let m = counts.iter().sum::<f64>() / counts.len() as f64;
        let v = counts.iter().map(|c| (c - m).powi(2)).sum::<f64>() / (counts.len() - 1) as f64;
        assert!((v / m - 1.0).abs() < 0.1, "dispersion {}", v / m);
        // Sorted, inside the span.
        assert!(s.windows(2).all(|w| w[0] <= w[1]));
        assert!(*s.last().unwrap() < Duration::from_secs(seconds));
    }

    #[test]
    fn a_seed_fixes_the_schedule() {
        let a = poisson(500.0, Duration::from_secs(2), 1);
        let b = poisson(500.0, Duration::from_secs(2), 1);
        let c = poisson(500.0, Duration::from_secs(2), 2);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
