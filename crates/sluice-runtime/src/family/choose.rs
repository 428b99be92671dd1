//! The choice of a variant for one request, as a pure function of what each
//! variant's queue predicts, and the record of variants that ran slower than
//! predicted (INFaaS avoids a variant whose answer took more than 2.5 times its
//! prediction, e.g. under a noisy neighbour, until it recovers), with the probes that
//! find out when it has.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the choice knows of one variant now. The list is ordered most accurate
/// first, ties cheaper first (see [`super::spec::FamilySpec`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    pub accuracy: f64,
    /// A version of it serves now.
    pub ready: bool,
    /// Its queue's prediction for this request (`None`: nothing learned or seeded yet,
    /// taken as in time: its first run teaches it).
    pub predicted: Option<sluice_scheduler::Prediction>,
    /// Above 1 while the variant is avoided: how much slower than predicted it ran.
    pub slowdown: f64,
    /// Avoided, but idle and due for a probe ([`Health::probe_due`]): this request may
    /// go to it at its unscaled prediction, to learn whether it has recovered.
    pub probe: bool,
    /// At least 1: how much longer than predicted its recent answers took, at the
    /// quantile the objective is met at ([`Health::margin`]); a variant is in time when
    /// its prediction times this is.
    pub margin: f64,
}

impl Candidate {
    fn slowdown(&self) -> f64 {
        if self.probe {
            1.0
        } else {
            self.slowdown.max(1.0)
        }
    }

    fn expected(&self) -> Duration {
        // A probe tests the variant at its own prediction, without the margin too.
        let scale = if self.probe {
            1.0
        } else {
            self.slowdown.max(self.margin).max(1.0)
        };
        self.predicted
            .map_or(Duration::ZERO, |p| p.total().mul_f64(scale))
    }
}

/// What a request asks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Ask {
    pub latency: Option<Duration>,
    pub min_accuracy: Option<f64>,
}

/// The outcome of a choice.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Choice {
    /// Send to this candidate (index into the list).
    Run(usize),
    /// No variant is at least as accurate as asked.
    NoneAccurate,
    /// Even the fastest eligible variant (this index) would start after the
    /// objective: the work queued ahead of it alone takes longer.
    TooLate { fastest: usize, wait: Duration },
}

/// The most accurate eligible variant predicted to answer in time (ties: the
/// cheaper, by the list's order); else the fastest eligible one; `TooLate` when even
/// that one's queue alone outlasts the objective. Variants that are not ready are
/// chosen only when none is.
pub(crate) fn choose(candidates: &[Candidate], ask: Ask) -> Choice {
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| ask.min_accuracy.is_none_or(|m| candidates[i].accuracy >= m))
        .collect();
    let ready: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|&i| candidates[i].ready)
        .collect();
    // Nothing ready: the most accurate one (its request waits for its load or fails
    // with the reason).
    let pool = match (ready.is_empty(), eligible.first()) {
        (_, None) => return Choice::NoneAccurate,
        (true, Some(&first)) => return Choice::Run(first),
        (false, _) => ready,
    };
    let Some(objective) = ask.latency else {
        // No objective: the most accurate one that is not avoided (or is probed), else
        // the least slowed.
        return Choice::Run(
            pool.iter()
                .copied()
                .find(|&i| candidates[i].slowdown() <= 1.0)
                .unwrap_or_else(|| fastest(candidates, &pool)),
        );
    };
    if let Some(&i) = pool
        .iter()
        .find(|&&i| candidates[i].expected() <= objective)
    {
        return Choice::Run(i);
    }
    let i = fastest(candidates, &pool);
    let wait = candidates[i]
        .predicted
        .map_or(Duration::ZERO, |p| p.wait.mul_f64(candidates[i].slowdown()));
    if wait > objective {
        Choice::TooLate { fastest: i, wait }
    } else {
        Choice::Run(i)
    }
}

/// Variants of one server share its cores: while the others run `running[j]`
/// batches, a run of this one gets a core only part of the time. Each prediction
/// (the wait and the run) is stretched as processor sharing would: by the threads
/// runnable with it, this run and the others' runs, over the `cores` the server may
/// use (no stretch while they fit). Each variant's learned latency alone would
/// predict its runs as if it had the machine to itself; two variants of similar cost
/// on one core would then each miss their objective whenever the other runs.
pub(crate) fn share_cores(candidates: &mut [Candidate], running: &[usize], cores: usize) {
    let total: usize = running.iter().sum();
    for (c, &own) in candidates.iter_mut().zip(running) {
        let runnable = 1 + total - own;
        let stretch = (runnable as f64 / cores.max(1) as f64).max(1.0);
        if let Some(p) = c.predicted.as_mut() {
            p.wait = p.wait.mul_f64(stretch);
            p.run = p.run.mul_f64(stretch);
        }
    }
}

/// The candidate with the least expected answer time (the first of equals).
fn fastest(candidates: &[Candidate], pool: &[usize]) -> usize {
    pool.iter()
        .copied()
        .min_by_key(|&i| candidates[i].expected())
        .unwrap_or(pool[0])
}

/// How a variant has kept its predictions lately.
///
/// An avoided variant gets no requests, so nothing would show that it has recovered
/// before its avoidance ends (up to 30 s): a load that falls would stay on the faster,
/// less accurate variants that long. So while it is avoided, one request at a time, at
/// most one per [`Self::PROBE_INTERVAL`], may go to it when it is idle (nothing queued,
/// nothing running) and its unscaled prediction is in time: a probe. An answer in time
/// clears the avoidance; a slow one is another strike. Its cost is bounded: at most one
/// request per interval answers late.
///
/// Predictions are means, and a variant kept at the edge of an objective by its mean
/// misses it about half the time. So each variant also keeps the ratio of actual to
/// predicted time of its answers in the last [`Self::WINDOW`], and a candidate is in
/// time only when its prediction times the [`Self::QUANTILE`] of those ratios is: the
/// margin the machine's noise and the queue's variance have shown lately. With fewer
/// than [`Self::MIN_SAMPLES`] recent answers the margin is 1 (unknown: its next
/// answers teach it), so a variant not chosen for a while is tried at its plain
/// prediction again.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Health {
    /// Recent answers: when, and actual / predicted time.
    ratios: VecDeque<(Instant, f64)>,
    /// The margin as last computed, and when.
    margin: Option<(Instant, f64)>,
    /// The avoidance the slow answers in a row have earned (default: none).
    avoid: Avoidance,
}

/// The avoidance of a variant that answered slowly; an answer in time resets it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Avoidance {
    /// Slow answers in a row.
    strikes: u32,
    /// Avoided until then, with predictions scaled by `slowdown`.
    until: Option<Instant>,
    slowdown: f64,
    /// No probe before then: the last slow answer or probe plus the interval.
    next_probe: Option<Instant>,
}

impl Health {
    /// An answer slower than this many times its prediction counts as slow (INFaaS).
    pub(crate) const SLOW_FACTOR: f64 = 2.5;
    /// Slowness under this much is noise (thread wake-ups), whatever the ratio.
    const SLACK: Duration = Duration::from_millis(1);
    /// The first avoidance lasts this long; each slow answer in a row doubles it.
    const FIRST_AVOIDANCE: Duration = Duration::from_secs(1);
    const LONGEST_AVOIDANCE: Duration = Duration::from_secs(30);
    /// At most one probe of an avoided variant per this long.
    pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);
    /// The margin is the ratio of actual to predicted time at this quantile...
    const QUANTILE: f64 = 0.99;
    /// ...of the answers in this window...
    const WINDOW: Duration = Duration::from_secs(10);
    /// ...when at least this many are in it; it is recomputed at most this often.
    const MIN_SAMPLES: usize = 10;
    const MARGIN_REFRESH: Duration = Duration::from_millis(100);
    /// The ratios kept (the newest); a prediction under 1 ms counts as 1 ms in them.
    const MAX_SAMPLES: usize = 512;

    /// Records an answer that took `actual` where `predicted` was expected.
    pub(crate) fn observe(&mut self, predicted: Duration, actual: Duration, now: Instant) {
        if self.ratios.len() == Self::MAX_SAMPLES {
            self.ratios.pop_front();
        }
        let ratio = actual.as_secs_f64() / predicted.max(Self::SLACK).as_secs_f64();
        self.ratios.push_back((now, ratio));
        let slow = actual.as_secs_f64() > Self::SLOW_FACTOR * predicted.as_secs_f64()
            && actual.saturating_sub(predicted) > Self::SLACK;
        if !slow {
            self.avoid = Avoidance::default();
            return;
        }
        let strikes = self.avoid.strikes.saturating_add(1);
        let avoid = Self::FIRST_AVOIDANCE
            .saturating_mul(1 << (strikes - 1).min(5))
            .min(Self::LONGEST_AVOIDANCE);
        self.avoid = Avoidance {
            strikes,
            until: Some(now + avoid),
            slowdown: actual.as_secs_f64() / predicted.as_secs_f64().max(1e-9),
            next_probe: Some(now + Self::PROBE_INTERVAL),
        };
    }

    /// How much longer than predicted to allow for now (at least 1; see the type).
    pub(crate) fn margin(&mut self, now: Instant) -> f64 {
        if let Some((at, margin)) = self.margin {
            if now.saturating_duration_since(at) < Self::MARGIN_REFRESH {
                return margin;
            }
        }
        while self
            .ratios
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > Self::WINDOW)
        {
            self.ratios.pop_front();
        }
        let margin = if self.ratios.len() < Self::MIN_SAMPLES {
            1.0
        } else {
            let mut r: Vec<f64> = self.ratios.iter().map(|&(_, r)| r).collect();
            r.sort_by(f64::total_cmp);
            sluice_autoscale::report::quantile(&r, Self::QUANTILE).map_or(1.0, |q| q.max(1.0))
        };
        self.margin = Some((now, margin));
        margin
    }

    /// Whether a probe may go to it now (it is avoided and none went for an interval);
    /// the caller also checks that the variant is idle.
    pub(crate) fn probe_due(&self, now: Instant) -> bool {
        self.slowdown(now) > 1.0 && self.avoid.next_probe.is_none_or(|t| now >= t)
    }

    /// Takes the probe due now: true once per interval (the request that gets it goes
    /// to the variant), false when another request took it first.
    pub(crate) fn take_probe(&mut self, now: Instant) -> bool {
        if !self.probe_due(now) {
            return false;
        }
        self.avoid.next_probe = Some(now + Self::PROBE_INTERVAL);
        true
    }

    /// How much slower than predicted to expect it now: 1 unless it is avoided.
    pub(crate) fn slowdown(&self, now: Instant) -> f64 {
        match self.avoid.until {
            Some(until) if now < until => self.avoid.slowdown.max(1.0),
            _ => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_scheduler::Prediction;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn c(accuracy: f64, wait_ms: u64, run_ms: u64) -> Candidate {
        Candidate {
            accuracy,
            ready: true,
            predicted: Some(Prediction {
                wait: ms(wait_ms),
                run: ms(run_ms),
            }),
            slowdown: 1.0,
            probe: false,
            margin: 1.0,
        }
    }

    fn ask(latency_ms: Option<u64>, min_accuracy: Option<f64>) -> Ask {
        Ask {
            latency: latency_ms.map(ms),
            min_accuracy,
        }
    }

    #[test]
    fn a_loose_objective_gets_the_accurate_variant_a_tight_one_the_fast() {
        let set = [c(0.9, 0, 40), c(0.7, 0, 2)];
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(0));
        assert_eq!(choose(&set, ask(Some(10), None)), Choice::Run(1));
        assert_eq!(choose(&set, ask(None, None)), Choice::Run(0));
        // Nobody in time: the fastest.
        assert_eq!(choose(&set, ask(Some(1), None)), Choice::Run(1));
    }

    #[test]
    fn a_long_queue_moves_requests_to_a_variant_in_time() {
        let set = [c(0.9, 80, 40), c(0.8, 30, 20), c(0.7, 0, 2)];
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(1));
        assert_eq!(choose(&set, ask(Some(10), None)), Choice::Run(2));
    }

    #[test]
    fn min_accuracy_excludes_variants_below_it() {
        let set = [c(0.9, 0, 40), c(0.7, 0, 2)];
        // The fast one would be in time; it is not accurate enough: the accurate one,
        // as the fastest eligible.
        assert_eq!(choose(&set, ask(Some(10), Some(0.8))), Choice::Run(0));
        assert_eq!(
            choose(&set, ask(Some(10), Some(0.95))),
            Choice::NoneAccurate
        );
        assert_eq!(choose(&set, ask(None, Some(0.7))), Choice::Run(0));
    }

    #[test]
    fn a_queue_longer_than_the_objective_is_refused_early() {
        let set = [c(0.9, 500, 40), c(0.7, 200, 2)];
        assert_eq!(
            choose(&set, ask(Some(100), None)),
            Choice::TooLate {
                fastest: 1,
                wait: ms(200)
            }
        );
        // Its run alone being too long is not a reason to refuse (nothing ahead).
        let set = [c(0.9, 0, 400), c(0.7, 0, 200)];
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(1));
    }

    #[test]
    fn unknown_latency_counts_as_in_time_and_unready_variants_wait_their_turn() {
        let mut set = [c(0.9, 0, 40), c(0.7, 0, 2)];
        set[0].predicted = None;
        assert_eq!(choose(&set, ask(Some(10), None)), Choice::Run(0));
        set[0].ready = false;
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(1));
        set[1].ready = false;
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(0));
    }

    #[test]
    fn a_variant_slower_than_predicted_is_avoided_until_it_recovers() {
        let t0 = Instant::now();
        let mut h = Health::default();
        // 2.4 times: not slow.
        h.observe(ms(10), ms(24), t0);
        assert_eq!(h.slowdown(t0), 1.0);
        // Slow by the ratio but within the slack: noise.
        h.observe(Duration::from_micros(100), Duration::from_micros(900), t0);
        assert_eq!(h.slowdown(t0), 1.0);
        h.observe(ms(10), ms(30), t0);
        assert_eq!(h.slowdown(t0), 3.0);
        let mut set = [c(0.9, 0, 40), c(0.7, 0, 2)];
        set[0].slowdown = h.slowdown(t0);
        // 40 ms × 3 misses 100 ms now: the fast one answers.
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(1));
        assert_eq!(choose(&set, ask(None, None)), Choice::Run(1));
        // After a second: tried again.
        assert_eq!(h.slowdown(t0 + ms(1000)), 1.0);
        // A second slow answer in a row: two seconds.
        h.observe(ms(10), ms(50), t0 + ms(1000));
        assert_eq!(h.slowdown(t0 + ms(2900)), 5.0);
        assert_eq!(h.slowdown(t0 + ms(3000)), 1.0);
        // An answer in time clears it at once.
        h.observe(ms(10), ms(50), t0 + ms(3000));
        h.observe(ms(10), ms(12), t0 + ms(3001));
        assert_eq!(h.slowdown(t0 + ms(3002)), 1.0);
    }

    #[test]
    fn an_avoided_variant_is_probed_once_per_interval_when_idle_and_cleared_by_a_fast_answer() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert!(!h.probe_due(t0), "a healthy variant needs no probe");
        // Three slow answers in a row: avoided for 4 s, three times slower.
        h.observe(ms(10), ms(30), t0);
        h.observe(ms(10), ms(30), t0 + ms(10));
        h.observe(ms(10), ms(30), t0 + ms(20));
        assert_eq!(h.slowdown(t0 + ms(500)), 3.0);
        // No probe within an interval of the last slow answer.
        assert!(!h.probe_due(t0 + ms(500)));
        let due = t0 + ms(20) + Health::PROBE_INTERVAL;
        assert!(h.probe_due(due));
        // Avoided still (the window is 4 s), but the probe makes it a candidate at its
        // own prediction.
        let mut set = [c(0.9, 0, 40), c(0.7, 0, 2)];
        set[0].slowdown = h.slowdown(due);
        assert_eq!(set[0].slowdown, 3.0);
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(1));
        assert_eq!(choose(&set, ask(None, None)), Choice::Run(1));
        set[0].probe = true;
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(0));
        assert_eq!(choose(&set, ask(None, None)), Choice::Run(0));
        // A probe still has to be in time by its own prediction.
        assert_eq!(choose(&set, ask(Some(30), None)), Choice::Run(1));
        // One request takes it; the next finds none due until an interval later.
        assert!(h.take_probe(due));
        assert!(!h.take_probe(due));
        assert!(!h.probe_due(due + Health::PROBE_INTERVAL - ms(1)));
        assert!(h.probe_due(due + Health::PROBE_INTERVAL));
        // The probe's answer was slow: a fourth strike (8 s), the next probe an interval on.
        let slow = due + ms(40);
        h.observe(ms(10), ms(40), slow);
        assert_eq!(h.slowdown(slow + ms(7999)), 4.0);
        assert!(!h.probe_due(slow + ms(999)));
        assert!(h.probe_due(slow + Health::PROBE_INTERVAL));
        // A probe answered in time clears the avoidance at once.
        let fast = slow + Health::PROBE_INTERVAL;
        assert!(h.take_probe(fast));
        h.observe(ms(10), ms(11), fast + ms(11));
        assert_eq!(h.slowdown(fast + ms(12)), 1.0);
        assert!(!h.probe_due(fast + ms(12)));
    }

    #[test]
    fn the_margin_is_the_recent_answers_ratio_at_the_quantile_and_forgets_old_ones() {
        let t0 = Instant::now();
        let mut h = Health::default();
        // Too few answers to tell: no margin.
        for i in 0..9 {
            h.observe(ms(10), ms(20), t0 + ms(i));
        }
        assert_eq!(h.margin(t0 + ms(10)), 1.0);
        // 100 answers: 98 on time, two at twice their prediction: the 99th percentile
        // (nearest rank 99 of 100) is 2.
        let mut h = Health::default();
        for i in 0..98 {
            h.observe(ms(10), ms(10), t0 + ms(i));
        }
        h.observe(ms(10), ms(20), t0 + ms(98));
        h.observe(ms(10), ms(20), t0 + ms(99));
        assert_eq!(h.margin(t0 + ms(100)), 2.0);
        // Cached for a refresh interval, then recomputed; answers faster than predicted
        // never make it below 1.
        for i in 0..400 {
            h.observe(ms(10), ms(5), t0 + ms(100 + i));
        }
        assert_eq!(
            h.margin(t0 + ms(150)),
            2.0,
            "recomputed within the refresh interval"
        );
        assert_eq!(h.margin(t0 + ms(600)), 1.0);
        // Past the window they are forgotten: no margin until new answers come.
        for i in 0..20 {
            h.observe(ms(10), ms(40), t0 + ms(700 + i));
        }
        assert_eq!(h.margin(t0 + ms(800)), 4.0);
        assert_eq!(h.margin(t0 + ms(800) + Health::WINDOW + ms(100)), 1.0);
        // Slow answers (here 4x) still avoid the variant; one on time ends that, not
        // the margin it has shown.
        assert!(h.slowdown(t0 + ms(800)) > 1.0);
        h.observe(ms(10), ms(10), t0 + ms(900));
        assert_eq!(h.slowdown(t0 + ms(900)), 1.0);

        // In the choice: the accurate variant predicted at 40 ms meets 100 ms alone, not
        // with a margin of 3; a probe goes at its own prediction.
        let mut set = [c(0.9, 0, 40), c(0.7, 0, 2)];
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(0));
        set[0].margin = 3.0;
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(1));
        assert_eq!(choose(&set, ask(Some(130), None)), Choice::Run(0));
        set[0].probe = true;
        assert_eq!(choose(&set, ask(Some(100), None)), Choice::Run(0));
    }

    #[test]
    fn predictions_stretch_while_the_other_variants_run_on_shared_cores() {
        let p = |ms| sluice_scheduler::Prediction {
            wait: Duration::from_millis(ms),
            run: Duration::from_millis(10),
        };
        let c = |ms| Candidate {
            accuracy: 0.9,
            ready: true,
            predicted: Some(p(ms)),
            slowdown: 1.0,
            probe: false,
            margin: 1.0,
        };
        let at = |cs: &[Candidate]| -> Vec<u128> {
            cs.iter()
                .map(|c| c.predicted.unwrap().total().as_millis())
                .collect()
        };
        // One core, the first variant running one batch: the second's wait and run
        // take twice as long; the first's own running batch is in its wait already.
        let mut cs = [c(4), c(0)];
        share_cores(&mut cs, &[1, 0], 1);
        assert_eq!(at(&cs), [14, 20]);
        // Two cores: both fit, nothing stretches. Three batches running on two
        // cores: a variant running none of them stretches by (1 + 3) / 2, one
        // running one by (1 + 2) / 2, one running two by (1 + 1) / 2 = 1.
        let mut cs = [c(4), c(0)];
        share_cores(&mut cs, &[1, 0], 2);
        assert_eq!(at(&cs), [14, 10]);
        let mut cs = [c(4), c(0), c(0)];
        share_cores(&mut cs, &[1, 2, 0], 2);
        assert_eq!(at(&cs), [21, 10, 20]);
        // Nothing running, or a variant without a prediction: unchanged.
        let mut cs = [
            c(4),
            Candidate {
                predicted: None,
                ..c(0)
            },
        ];
        share_cores(&mut cs, &[0, 0], 1);
        assert_eq!(cs[0].predicted, Some(p(4)));
        assert_eq!(cs[1].predicted, None);
    }
}
