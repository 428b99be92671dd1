//! The search for the highest arrival rate that still meets a latency bound, as
//! MLPerf LoadGen's `FindPeakPerformance` mode does it for the Server scenario.
//!
//! Key decision: the search is a plain state machine (`next` proposes a rate, `record`
//! takes the verdict), so it is tested against a simulated server without sockets and
//! the runner just drives it. Like LoadGen it first doubles the rate from the start
//! value until a run fails (or halves it, at most four times, until one passes), then bisects between the
//! highest passing and the lowest failing rate until they are within `tolerance`.

/// Where the search is.
#[derive(Debug, Clone)]
pub struct PeakSearch {
    /// Highest rate that met the bound.
    lower: Option<f64>,
    /// Lowest rate that did not.
    upper: Option<f64>,
    next: f64,
    /// Relative width at which the search stops.
    tolerance: f64,
    /// Lowest rate worth trying (a sixteenth of the start): a start that far above
    /// what the server meets is a wrong start, not a result.
    floor: f64,
}

impl PeakSearch {
    pub fn new(start: f64, tolerance: f64) -> Self {
        assert!(start > 0.0 && tolerance > 0.0);
        PeakSearch {
            lower: None,
            upper: None,
            next: start,
            tolerance,
            floor: start / 16.0,
        }
    }

    /// The next rate to try, `None` when the search is over.
    pub fn next(&self) -> Option<f64> {
        match (self.lower, self.upper) {
            (Some(lo), Some(hi)) if (hi - lo) <= self.tolerance * lo => None,
            (None, Some(_)) if self.next < self.floor => None,
            _ => Some(self.next),
        }
    }

    /// The verdict of the run at `rate`.
    pub fn record(&mut self, rate: f64, met_bound: bool) {
        if met_bound {
            self.lower = Some(self.lower.map_or(rate, |l| l.max(rate)));
        } else {
            self.upper = Some(self.upper.map_or(rate, |u| u.min(rate)));
        }
        self.next = match (self.lower, self.upper) {
            (Some(lo), None) => lo * 2.0,
            (None, Some(hi)) => hi / 2.0,
            (Some(lo), Some(hi)) => (lo + hi) / 2.0,
            (None, None) => unreachable!("one bound was just set"),
        };
    }

    /// The highest rate that met the bound so far.
    pub fn peak(&self) -> Option<f64> {
        self.lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::poisson;
    use crate::stats::Recorder;
    use std::time::Duration;

    /// A single-server FIFO queue with exponential service times (M/M/1), run on a
    /// Poisson schedule: latency = waiting + service (Lindley's recursion). Its p99
    /// sojourn time is ln(100) / (mu - lambda), so the true peak for a bound is known.
    fn simulated_p99(rate: f64, mu: f64, seed: u64) -> Duration {
        let arrivals = poisson(rate, Duration::from_secs(200), seed);
        let mut service = crate::rng::Rng::new(seed ^ 0xDEAD_BEEF);
        let mut free_at = 0.0f64;
        let mut r = Recorder::default();
        for a in arrivals {
            let a = a.as_secs_f64();
            let start = free_at.max(a);
            free_at = start + service.exponential(mu);
            r.ok(Duration::from_secs_f64(free_at - a), 1);
        }
        r.quantile(0.99)
    }

    #[test]
    fn finds_the_peak_of_a_simulated_server() {
        let mu = 1000.0; // requests/s the simulated server can serve
        let bound = Duration::from_millis(20);
        let truth = mu - 100f64.ln() / bound.as_secs_f64(); // ~769.7/s
        let mut search = PeakSearch::new(100.0, 0.01);
        let mut probes = 0;
        while let Some(rate) = search.next() {
            probes += 1;
            assert!(probes < 30, "the search does not end");
            let p99 = simulated_p99(rate, mu, probes);
            search.record(rate, p99 <= bound);
        }
        let peak = search.peak().unwrap();
        assert!(
            (peak / truth - 1.0).abs() < 0.05,
            "peak {peak}, truth {truth}"
        );
    }

    #[test]
    fn halves_down_when_the_start_fails_and_gives_up_at_the_floor() {
        let mut s = PeakSearch::new(1000.0, 0.05);
        s.record(1000.0, false);
        assert_eq!(s.next(), Some(500.0));
        s.record(500.0, true);
        assert_eq!(s.next(), Some(750.0));
        let mut never = PeakSearch::new(8.0, 0.05);
        while let Some(r) = never.next() {
            never.record(r, false);
        }
        assert_eq!(never.peak(), None);
    }
}
