//! The hedge budget: how many backup requests the router may send.
//!
//! Key decision: the budget is a share of the requests of a recent *time window*, not a
//! bucket refilled by each new request. A bucket of `ratio` per request capped at a
//! small burst starves exactly when hedging matters: when a replica stalls, a closed
//! loop of clients stops sending (they are all waiting), so nothing refills it and
//! the requests stuck there wait the whole stall. Here, over any span of `window`,
//! hedges ≤ `burst + max_ratio × requests` in that span (Dean and Barroso's
//! "2 % more requests" bound, over a window): a stall right after steady traffic
//! finds the budget that traffic earned, and a long stall cannot exceed it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Slots the window is cut into (the window slides by one slot).
const SLOTS: u32 = 10;

#[derive(Debug, Clone, Copy)]
struct Slot {
    start: Instant,
    requests: u64,
    hedges: u64,
}

/// Requests and hedges over the last `window`.
#[derive(Debug)]
pub struct HedgeBudget {
    slots: VecDeque<Slot>,
    slot_len: Duration,
    window: Duration,
    requests: u64,
    hedges: u64,
}

impl HedgeBudget {
    pub fn new(window: Duration) -> Self {
        let window = window.max(Duration::from_millis(10));
        HedgeBudget {
            slots: VecDeque::with_capacity(SLOTS as usize + 1),
            slot_len: window / SLOTS,
            window,
            requests: 0,
            hedges: 0,
        }
    }

    /// Drops the slots that left the window and returns the current one.
    fn current(&mut self, now: Instant) -> &mut Slot {
        while let Some(s) = self.slots.front() {
            if now.saturating_duration_since(s.start) >= self.window {
                self.requests -= s.requests;
                self.hedges -= s.hedges;
                self.slots.pop_front();
            } else {
                break;
            }
        }
        let fresh = self
            .slots
            .back()
            .is_none_or(|s| now.saturating_duration_since(s.start) >= self.slot_len);
        if fresh {
            self.slots.push_back(Slot {
                start: now,
                requests: 0,
                hedges: 0,
            });
        }
        self.slots.back_mut().expect("a slot was just ensured")
    }

    /// A request arrived (it earns `max_ratio` of a hedge for one window).
    pub fn record_request(&mut self, now: Instant) {
        self.current(now).requests += 1;
        self.requests += 1;
    }

    /// Hedges still allowed now.
    pub fn available(&mut self, now: Instant, max_ratio: f64, burst: f64) -> f64 {
        self.current(now);
        (burst + max_ratio * self.requests as f64 - self.hedges as f64).max(0.0)
    }

    /// Takes one hedge if the window's budget has one.
    pub fn try_hedge(&mut self, now: Instant, max_ratio: f64, burst: f64) -> bool {
        if self.available(now, max_ratio, burst) >= 1.0 {
            self.current(now).hedges += 1;
            self.hedges += 1;
            true
        } else {
            false
        }
    }

    /// (requests, hedges) in the window now.
    pub fn totals(&mut self, now: Instant) -> (u64, u64) {
        self.current(now);
        (self.requests, self.hedges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn a_stall_after_steady_traffic_finds_the_budget_that_traffic_earned() {
        // 1000 requests over one second, then nothing arrives (a closed loop whose
        // clients all wait on a stalled replica): the 20 stuck requests all get their
        // hedge. A per-request bucket capped at a burst of 3 gave 3.
        let mut b = HedgeBudget::new(W);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            b.record_request(t0 + Duration::from_millis(u64::from(i)));
        }
        let stall = t0 + Duration::from_millis(1100);
        let granted = (0..20).filter(|_| b.try_hedge(stall, 0.05, 3.0)).count();
        assert_eq!(granted, 20);
        // ... but never more than burst + 5 % of the window's requests.
        let more = (0..1000).filter(|_| b.try_hedge(stall, 0.05, 3.0)).count();
        assert_eq!(granted + more, 3 + 50);
    }

    #[test]
    fn over_any_window_hedges_stay_within_the_share() {
        // Steady 100 requests/s for a minute, a hedge attempted for every request: in
        // every 10-s span the hedges are at most burst + 5 % of its requests.
        let mut b = HedgeBudget::new(W);
        let t0 = Instant::now();
        let mut log: Vec<(Duration, bool)> = Vec::new();
        for i in 0..6000u64 {
            let now = t0 + Duration::from_millis(i * 10);
            b.record_request(now);
            let h = b.try_hedge(now, 0.05, 3.0);
            log.push((now - t0, h));
        }
        let hedges_total = log.iter().filter(|x| x.1).count();
        // 60 s = six windows: about 5 % of 6000 plus a burst per window at most.
        assert!(hedges_total <= 300 + 6 * 3 + 30, "{hedges_total}");
        assert!(hedges_total >= 280, "{hedges_total}: the budget is used");
        for start in (0..50_000u64).step_by(1000) {
            let lo = Duration::from_millis(start);
            let hi = lo + W;
            let span: Vec<_> = log.iter().filter(|x| x.0 >= lo && x.0 < hi).collect();
            let req = span.len() as f64;
            let h = span.iter().filter(|x| x.1).count() as f64;
            // The sliding window moves by slots of a tenth of it, so a span may see up
            // to one slot's worth more than the exact share.
            assert!(
                h <= 3.0 + 0.05 * req * 1.1 + 1.0,
                "{h} hedges in {req} requests"
            );
        }
    }

    #[test]
    fn the_budget_expires_with_its_window() {
        let mut b = HedgeBudget::new(W);
        let t0 = Instant::now();
        for _ in 0..1000 {
            b.record_request(t0);
        }
        assert!((b.available(t0, 0.05, 3.0) - 53.0).abs() < 1e-9);
        let later = t0 + W + Duration::from_millis(1);
        assert!((b.available(later, 0.05, 3.0) - 3.0).abs() < 1e-9);
        assert_eq!(b.totals(later), (0, 0));
        // A zero ratio and no burst: never a hedge.
        let mut none = HedgeBudget::new(W);
        none.record_request(t0);
        assert!(!none.try_hedge(t0, 0.0, 0.0));
    }

    #[test]
    fn hedges_spent_count_until_they_leave_the_window() {
        let mut b = HedgeBudget::new(W);
        let t0 = Instant::now();
        for _ in 0..100 {
            b.record_request(t0);
        }
        // burst 1 + 5 = 6 hedges
        assert_eq!((0..10).filter(|_| b.try_hedge(t0, 0.05, 1.0)).count(), 6);
        let mid = t0 + Duration::from_secs(5);
        assert!(!b.try_hedge(mid, 0.05, 1.0), "still spent mid-window");
        let after = t0 + W;
        assert!(b.try_hedge(after, 0.05, 1.0), "the burst is back");
    }
}
