//! Batcher decisions with explicit time: batches by size, delay and preferred sizes,
//! priorities, deadlines, queue bounds, cancellation, early rejection, and each rule
//! of the adaptive hold (named after the rule it reaches; the instants are exact to
//! the nanosecond where they come from learned means in f64 seconds).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use sluice_core::ErrorKind;

use super::*;
use crate::config::{
    Batching, Delay, DynamicBatching, LevelPolicy, SchedulerConfig, TimeoutAction,
};

/// A queued item: a name and a flag the test flips to cancel it.
#[derive(Debug)]
struct Item(&'static str, Rc<Cell<bool>>);

impl Item {
    fn new(name: &'static str) -> Self {
        Item(name, Rc::new(Cell::new(false)))
    }
}

impl Pending for Item {
    fn is_cancelled(&self) -> bool {
        self.1.get()
    }
}

fn dynamic(max_batch: usize, preferred: &[usize], delay: Delay) -> SchedulerConfig {
    SchedulerConfig {
        label: "m:1".into(),
        max_batch_size: max_batch,
        batching: Batching::Dynamic(DynamicBatching {
            preferred: preferred.to_vec(),
            delay,
            preserve_ordering: false,
        }),
        levels: vec![LevelPolicy::reject_after(None, 100)],
        default_level: 1,
        early_rejection: true,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn names(batch: &Option<Vec<Entry<Item>>>) -> Vec<&'static str> {
    batch
        .as_ref()
        .map(|b| b.iter().map(|e| e.payload.0).collect())
        .unwrap_or_default()
}

fn push(state: &mut State<Item>, name: &'static str, rows: usize, at: Instant) {
    state
        .enqueue(Item::new(name), rows, JobOptions::default(), at)
        .unwrap();
}

#[test]
fn without_batching_each_request_runs_alone_at_once() {
    let t0 = Instant::now();
    let mut s = State::new(SchedulerConfig::simple("m:1", 8, 10), 1);
    push(&mut s, "a", 1, t0);
    push(&mut s, "b", 1, t0);
    assert_eq!(names(&s.next(t0).batch), ["a"]);
    assert_eq!(names(&s.next(t0).batch), ["b"]);
    let step = s.next(t0);
    assert!(step.batch.is_none() && step.wake_at.is_none());
}

#[test]
fn batches_form_by_size() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(4, &[], Delay::Static(ms(10))), 1);
    for (n, rows) in [("a", 1), ("b", 2), ("c", 1), ("d", 3)] {
        push(&mut s, n, rows, t0);
    }
    // a+b+c = 4 rows = max: dispatched without waiting for the delay.
    assert_eq!(names(&s.next(t0).batch), ["a", "b", "c"]);
    // d alone (3 rows) waits for the delay.
    let step = s.next(t0);
    assert!(step.batch.is_none());
    assert_eq!(step.wake_at, Some(t0 + ms(10)));
}

#[test]
fn batches_form_by_delay() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Static(ms(5))), 1);
    push(&mut s, "a", 1, t0);
    push(&mut s, "b", 1, t0 + ms(2));
    assert!(s.next(t0 + ms(4)).batch.is_none());
    assert_eq!(names(&s.next(t0 + ms(5)).batch), ["a", "b"]);
}

#[test]
fn a_zero_delay_dispatches_whatever_is_queued() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Static(Duration::ZERO)), 1);
    push(&mut s, "a", 1, t0);
    push(&mut s, "b", 2, t0);
    assert_eq!(names(&s.next(t0).batch), ["a", "b"]);
}

#[test]
fn preferred_sizes_dispatch_at_once_and_shape_late_batches() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[2, 4], Delay::Static(ms(10))), 1);
    push(&mut s, "a", 1, t0);
    assert!(s.next(t0).batch.is_none());
    push(&mut s, "b", 1, t0);
    assert_eq!(
        names(&s.next(t0).batch),
        ["a", "b"],
        "2 rows is preferred: no wait"
    );
    // 3 rows queued: not preferred; at the delay the largest preferred prefix (2) goes.
    for n in ["c", "d", "e"] {
        push(&mut s, n, 1, t0);
    }
    assert!(s.next(t0 + ms(1)).batch.is_none());
    assert_eq!(names(&s.next(t0 + ms(10)).batch), ["c", "d"]);
    assert_eq!(names(&s.next(t0 + ms(10)).batch), ["e"]);
}

#[test]
fn priorities_are_served_in_order() {
    let t0 = Instant::now();
    let mut config = dynamic(2, &[], Delay::Static(Duration::ZERO));
    config.levels = vec![LevelPolicy::reject_after(None, 10); 3];
    config.default_level = 2;
    let mut s = State::new(config, 1);
    let opts = |p| JobOptions {
        priority: p,
        timeout: None,
    };
    s.enqueue(Item::new("low"), 1, opts(3), t0).unwrap();
    s.enqueue(Item::new("default"), 1, opts(0), t0).unwrap();
    s.enqueue(Item::new("high"), 1, opts(1), t0).unwrap();
    assert_eq!(names(&s.next(t0).batch), ["high", "default"]);
    assert_eq!(names(&s.next(t0).batch), ["low"]);
    let (_, err, reason) = s.enqueue(Item::new("bad"), 1, opts(4), t0).unwrap_err();
    assert_eq!(reason, Rejection::Invalid);
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn deadlines_expire_before_reaching_the_engine() {
    let t0 = Instant::now();
    let mut config = dynamic(8, &[], Delay::Static(ms(50)));
    config.levels = vec![LevelPolicy {
        timeout_action: TimeoutAction::Reject,
        default_timeout: Some(ms(20)),
        allow_timeout_override: true,
        max_queue_size: 10,
    }];
    let mut s = State::new(config, 1);
    s.enqueue(
        Item::new("short"),
        1,
        JobOptions {
            priority: 0,
            timeout: Some(ms(5)),
        },
        t0,
    )
    .unwrap();
    s.enqueue(Item::new("default"), 1, JobOptions::default(), t0)
        .unwrap();
    let step = s.next(t0 + ms(1));
    assert!(step.batch.is_none());
    assert_eq!(
        step.wake_at,
        Some(t0 + ms(5)),
        "wakes for the first deadline"
    );
    let step = s.next(t0 + ms(5));
    assert_eq!(
        step.expired.iter().map(|e| e.payload.0).collect::<Vec<_>>(),
        ["short"]
    );
    let step = s.next(t0 + ms(20));
    assert_eq!(step.expired.len(), 1);
    assert!(s.is_empty());
}

#[test]
fn delay_action_moves_timed_out_requests_to_the_back() {
    let t0 = Instant::now();
    let mut config = dynamic(1, &[], Delay::Static(Duration::ZERO));
    config.levels = vec![LevelPolicy {
        timeout_action: TimeoutAction::Delay,
        default_timeout: Some(ms(1)),
        allow_timeout_override: false,
        max_queue_size: 10,
    }];
    let mut s = State::new(config, 1);
    let (old_seq, _) = s
        .enqueue(Item::new("old"), 1, JobOptions::default(), t0)
        .unwrap();
    let (new_seq, _) = s
        .enqueue(Item::new("new"), 1, JobOptions::default(), t0 + ms(2))
        .unwrap();
    let step = s.next(t0 + ms(2));
    assert!(step.expired.is_empty());
    assert_eq!(names(&step.batch), ["new"]);
    assert!(s.is_queued(old_seq), "still queued, behind everything else");
    assert!(!s.is_queued(new_seq), "taken");
    let old = s.next(t0 + ms(2)).batch.unwrap();
    assert_eq!(old[0].payload.0, "old");
    assert_eq!(
        old[0].deadline, None,
        "a delayed request has no deadline left"
    );
}

#[test]
fn the_queue_bound_rejects_at_once() {
    let t0 = Instant::now();
    let mut s = State::new(SchedulerConfig::simple("m:1", 0, 2), 1);
    push(&mut s, "a", 1, t0);
    push(&mut s, "b", 1, t0);
    let (item, err, reason) = s
        .enqueue(Item::new("c"), 1, JobOptions::default(), t0)
        .unwrap_err();
    assert_eq!(reason, Rejection::QueueFull);
    assert_eq!(item.0, "c");
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert!(err.message().contains("full"), "{err}");
    s.next(t0);
    push(&mut s, "d", 1, t0);
}

#[test]
fn cancelled_requests_are_never_dispatched() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(4, &[], Delay::Static(Duration::ZERO)), 1);
    let a = Item::new("a");
    let cancel = Rc::clone(&a.1);
    s.enqueue(a, 1, JobOptions::default(), t0).unwrap();
    push(&mut s, "b", 1, t0);
    cancel.set(true);
    let step = s.next(t0);
    assert_eq!(names(&step.batch), ["b"]);
    assert_eq!(
        step.cancelled
            .iter()
            .map(|e| e.payload.0)
            .collect::<Vec<_>>(),
        ["a"]
    );
}

#[test]
fn closing_flushes_without_waiting() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Static(ms(100))), 1);
    push(&mut s, "a", 1, t0);
    assert!(s.next(t0).batch.is_none());
    s.close();
    assert_eq!(names(&s.next(t0).batch), ["a"]);
}

/// A closed loop of `clients` clients against one instance whose runs take
/// 1.71 ms + 0.29 ms per row; each answered client sends again 100 µs + 40 µs × its
/// place in the batch later. Returns the batch sizes run, in order.
fn closed_loop(delay: Delay, clients: usize, runs: usize) -> Vec<usize> {
    let t0 = Instant::now();
    let service = |rows: usize| us(1714) + us(286) * rows as u32;
    let mut s = State::new(dynamic(8, &[], delay), 1);
    s.record(1, service(1));
    s.record(8, service(8));
    let mut arrivals: Vec<Instant> = (0..clients as u64).map(|i| t0 + us(10 * i)).collect();
    let mut now = t0;
    let mut sizes = Vec::new();
    let mut running: Option<(usize, Instant)> = None;
    while sizes.len() < runs {
        arrivals.sort();
        if let Some((rows, end)) = running {
            // Busy: requests arriving meanwhile queue; then the run ends.
            while arrivals.first().is_some_and(|&a| a <= end) {
                push(&mut s, "c", 1, arrivals.remove(0));
            }
            s.record(rows, service(rows));
            s.ended(end);
            now = end;
            running = None;
        }
        let step = s.next(now);
        if let Some(batch) = step.batch {
            let rows = batch.len();
            sizes.push(rows);
            let end = now + service(rows);
            arrivals.extend((0..rows as u64).map(|i| end + us(100 + 40 * i)));
            running = Some((rows, end));
            continue;
        }
        let next = arrivals.first().copied();
        match (next, step.wake_at) {
            (Some(a), Some(w)) if w < a => now = w,
            (Some(a), _) => {
                push(&mut s, "c", 1, a);
                arrivals.remove(0);
                now = a;
            }
            (None, Some(w)) => now = w,
            (None, None) => unreachable!("a closed loop always has a request somewhere"),
        }
    }
    sizes
}

#[test]
fn adaptive_merges_the_groups_a_closed_loop_splits_into() {
    // The first request runs alone (nothing learned about arrivals yet) and the other
    // seven queue behind it: a greedy batcher keeps alternating 1 + 7 for ever.
    let greedy = closed_loop(Delay::Static(Duration::ZERO), 8, 40);
    assert!(
        greedy[30..].iter().all(|&b| b < 8),
        "greedy stays split: {greedy:?}"
    );
    // The adaptive hold learns that the answered clients come back within one fixed
    // cost and waits for them: full batches.
    let adaptive = closed_loop(Delay::Adaptive { max: ms(5) }, 8, 40);
    assert!(
        adaptive[30..].iter().all(|&b| b == 8),
        "adaptive merges: {adaptive:?}"
    );
    // With fewer clients than a batch it holds for all of them, not for a full batch.
    let five = closed_loop(Delay::Adaptive { max: ms(5) }, 5, 40);
    assert!(five[30..].iter().all(|&b| b == 5), "{five:?}");
}

#[test]
fn latency_model_interpolates() {
    let mut m = LatencyModel::new(8);
    assert!(m.estimate(3).is_none());
    m.observe(2, ms(2));
    m.observe(6, ms(6));
    assert_eq!(m.estimate(4), Some(ms(4)));
    assert_eq!(m.estimate(1), Some(ms(2)));
    assert_eq!(m.estimate(8), Some(ms(8)));
    assert!((m.best_throughput().unwrap() - 1000.0).abs() < 1e-6);
    // Sizes outside 1..=max read as the nearest size.
    assert_eq!(m.estimate(9), m.estimate(8));
    assert_eq!(m.estimate(0), m.estimate(1));
    m.observe(9, ms(100));
    assert_eq!(
        m.estimate(8),
        Some(ms(8)),
        "a size above the maximum is not learned"
    );
    // A weighted mean: 2 ms then 7 ms at 4/5 and 1/5.
    m.observe(2, ms(7));
    assert_eq!(m.estimate(2), Some(ms(3)));
}

/// Asserts that `actual` is `expected` to the nanosecond (learned means are f64
/// seconds, so a rounding of one nanosecond is allowed).
#[track_caller]
fn assert_at(actual: Option<Instant>, expected: Instant, t0: Instant) {
    let a = actual.unwrap_or_else(|| panic!("no instant; expected {:?}", expected - t0));
    let diff = if a > expected {
        a - expected
    } else {
        expected - a
    };
    assert!(
        diff <= Duration::from_nanos(1),
        "at {:?}, expected {:?}",
        a.saturating_duration_since(t0),
        expected - t0
    );
}

/// The engine of most hold tests: 1 ms per run plus 1 ms per row (`F` = 1 ms, so the
/// window after a run is 1 ms).
const LINEAR: &[(usize, u64)] = &[(1, 2000), (8, 9000)];

/// An adaptive state (max batch 8, hold bound `max`, engine `latency` as (rows, µs))
/// that has seen one run end at `t1` and then one 1-row request `after` µs after it
/// each, preceded by a quiet `pause` (a long pause: rows after a run come far faster
/// than rows on average). That window is still open; the caller's `ended` closes it
/// (or an arrival more than 1 ms after `t1` does). Returns the state and `t1`.
fn learned(
    max: Duration,
    latency: &[(usize, u64)],
    after: &[u64],
    pause: Duration,
) -> (State<Item>, Instant) {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max }), 1);
    for &(rows, micros) in latency {
        s.record(rows, us(micros));
    }
    push(&mut s, "warm", 1, t0);
    assert_eq!(
        names(&s.next(t0).batch),
        ["warm"],
        "no run has ended: no hold"
    );
    let t1 = t0 + pause;
    s.ended(t1);
    for &a in after {
        push(&mut s, "learn", 1, t1 + us(a));
    }
    let last = t1 + us(*after.last().unwrap());
    let step = s.next(last);
    assert_eq!(
        step.batch.map(|b| b.len()),
        Some(after.len()),
        "nothing learned yet: no hold"
    );
    (s, t1)
}

fn quiet() -> Duration {
    Duration::from_secs(1)
}

#[test]
fn hold_nothing_expected_before_a_run_has_ended() {
    // Rule 2: a fixed cost is known, but no run has ended, so nothing is expected.
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max: ms(5) }), 1);
    s.record(1, ms(2));
    s.record(8, ms(9));
    push(&mut s, "a", 1, t0);
    assert_eq!(names(&s.next(t0).batch), ["a"]);
}

#[test]
fn hold_waits_for_the_rows_expected_after_a_run_and_runs_once_they_are_in() {
    // Learned: 4 rows come back 100..400 µs after a run ends (100 µs apart).
    let (mut s, t1) = learned(ms(5), LINEAR, &[100, 200, 300, 400], quiet());
    let t2 = t1 + ms(2);
    s.ended(t2);
    // Each arrival moves the silence bound: the last arrival + 3 × 100 µs + 100 µs.
    for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
        let at = t2 + us(100 * (i as u64 + 1));
        push(&mut s, n, 1, at);
        let step = s.next(at);
        assert!(step.batch.is_none(), "{n}: held");
        assert_at(step.wake_at, at + us(400), t2);
    }
    // Rule 2: the fourth of the four expected rows is in: run all at once.
    push(&mut s, "d", 1, t2 + us(400));
    assert_eq!(names(&s.next(t2 + us(400)).batch), ["a", "b", "c", "d"]);
}

#[test]
fn hold_ends_at_the_silence_after_the_last_arrival() {
    let (mut s, t1) = learned(ms(5), LINEAR, &[100, 200, 300, 400], quiet());
    let t2 = t1 + ms(2);
    s.ended(t2);
    push(&mut s, "a", 1, t2 + us(100));
    assert_at(s.next(t2 + us(100)).wake_at, t2 + us(500), t2);
    assert!(s.next(t2 + us(499)).batch.is_none());
    assert_eq!(names(&s.next(t2 + us(500)).batch), ["a"]);
}

#[test]
fn hold_ends_at_the_silence_before_the_first_arrival() {
    let (mut s, t1) = learned(ms(5), LINEAR, &[100, 200, 300, 400], quiet());
    // Queued while the run ran (more than one window after t1: it closes that window).
    let t2 = t1 + ms(2);
    push(&mut s, "early", 1, t2 - us(10));
    s.ended(t2);
    // None of the expected rows has come: twice the usual wait for the first (100 µs)
    // plus the slack.
    let step = s.next(t2);
    assert!(step.batch.is_none());
    assert_at(step.wake_at, t2 + us(300), t2);
    assert_eq!(names(&s.next(t2 + us(300)).batch), ["early"]);
}

#[test]
fn hold_ends_with_the_window_of_one_fixed_cost_after_the_run() {
    // Learned: 2 rows, the first 100 µs and the last 900 µs after the run (450 µs a row).
    let (mut s, t1) = learned(ms(5), LINEAR, &[100, 900], quiet());
    let t2 = t1 + ms(2);
    s.ended(t2);
    push(&mut s, "a", 1, t2 + us(800));
    // The silence (800 + 3 × 450 + 100 µs) is later than the window's end (F = 1 ms).
    let step = s.next(t2 + us(800));
    assert!(step.batch.is_none());
    assert_at(step.wake_at, t2 + ms(1), t2);
    assert!(s.next(t2 + us(999)).batch.is_none());
    // Rule 2: the window has passed: nothing more is expected.
    assert_eq!(names(&s.next(t2 + ms(1)).batch), ["a"]);
}

#[test]
fn hold_never_outlasts_the_configured_maximum_from_the_run_end() {
    let (mut s, t1) = learned(us(300), LINEAR, &[100, 200, 300, 400], quiet());
    let t2 = t1 + ms(2);
    s.ended(t2);
    push(&mut s, "a", 1, t2 + us(100));
    assert_at(s.next(t2 + us(100)).wake_at, t2 + us(300), t2);
    // A later look does not stretch it (the silence moved to 600 µs).
    push(&mut s, "b", 1, t2 + us(200));
    assert_at(s.next(t2 + us(200)).wake_at, t2 + us(300), t2);
    assert_eq!(names(&s.next(t2 + us(300)).batch), ["a", "b"]);
}

#[test]
fn hold_leaves_time_to_run_before_a_queued_deadline() {
    let (mut s, t1) = learned(ms(5), LINEAR, &[100, 200, 300, 400], quiet());
    let t2 = t1 + ms(2);
    s.ended(t2);
    // Its deadline is t2 + 9.3 ms; a full batch runs 9 ms: start by t2 + 300 µs, before
    // the silence (t2 + 500 µs).
    let within = JobOptions {
        priority: 0,
        timeout: Some(us(9200)),
    };
    s.enqueue(Item::new("a"), 1, within, t2 + us(100)).unwrap();
    let step = s.next(t2 + us(100));
    assert!(step.batch.is_none());
    assert_at(step.wake_at, t2 + us(300), t2);
    assert_eq!(names(&s.next(t2 + us(300)).batch), ["a"]);
    // A deadline already too close for a full batch: run at once.
    let (mut s, t1) = learned(ms(5), LINEAR, &[100, 200, 300, 400], quiet());
    let t2 = t1 + ms(2);
    s.ended(t2);
    let within = JobOptions {
        priority: 0,
        timeout: Some(ms(8)),
    };
    s.enqueue(Item::new("a"), 1, within, t2 + us(100)).unwrap();
    assert_eq!(names(&s.next(t2 + us(100)).batch), ["a"]);
}

#[test]
fn hold_never_holds_independent_arrivals() {
    // Rule 3. The same learned window, but the rows before it came 150 µs apart, about
    // as fast as the rows after a run (100 µs): nothing says answers bring requests
    // back, so nothing is held.
    let (mut s, t1) = learned(ms(5), LINEAR, &[100, 200, 300, 400], us(50));
    let t2 = t1 + ms(2);
    s.ended(t2);
    push(&mut s, "a", 1, t2 + us(100));
    assert_eq!(names(&s.next(t2 + us(100)).batch), ["a"]);
    // After a quiet second, the same rows after a run are a burst: held.
    let (mut s, t1) = learned(ms(5), LINEAR, &[100, 200, 300, 400], quiet());
    let t2 = t1 + ms(2);
    s.ended(t2);
    push(&mut s, "a", 1, t2 + us(100));
    assert_at(s.next(t2 + us(100)).wake_at, t2 + us(500), t2);
}

#[test]
fn hold_only_when_it_saves_time_per_row() {
    // Learned: 4 rows 100..900 µs after a run. With `r` rows queued when the first of
    // them has come (100 µs), 3 are still expected within 800 µs: holding pays while
    // r × 0.8 ms < F × 3 = 3 ms, i.e. for r ≤ 3.
    let after = [100, 400, 600, 900];
    let hold = |early: &[&'static str]| {
        let (mut s, t1) = learned(ms(5), LINEAR, &after, quiet());
        let t2 = t1 + ms(2);
        for (i, &n) in early.iter().enumerate() {
            push(&mut s, n, 1, t2 - us(20 - i as u64));
        }
        s.ended(t2);
        push(&mut s, "a", 1, t2 + us(100));
        (s.next(t2 + us(100)), t2)
    };
    let (step, t2) = hold(&["e1", "e2"]);
    assert!(step.batch.is_none(), "3 rows: held");
    // Silence: 100 µs + 3 × 225 µs + 100 µs.
    assert_at(step.wake_at, t2 + us(875), t2);
    // Rule 4: 4 rows queued: 4 × 0.8 ms ≥ 3 ms, no saving.
    let (step, _) = hold(&["e1", "e2", "e3"]);
    assert_eq!(names(&step.batch), ["e1", "e2", "e3", "a"]);
}

#[test]
fn hold_never_waits_without_a_fixed_cost() {
    // Rule 1. One row: F(1) = 1 ms, held. Two rows: this engine's runs of 2 take no
    // longer than of 1 and 8 rows cost 7/6 ms a row from there, so F(2) ≤ 0: the cost
    // is all per row and waiting cannot pay.
    let latency = [(1, 2000), (2, 2000), (8, 9000)];
    let (mut s, t1) = learned(ms(5), &latency, &[100, 200, 300, 400], quiet());
    let t2 = t1 + ms(2);
    s.ended(t2);
    push(&mut s, "a", 1, t2 + us(100));
    assert_at(s.next(t2 + us(100)).wake_at, t2 + us(500), t2);
    push(&mut s, "b", 1, t2 + us(200));
    assert_eq!(names(&s.next(t2 + us(200)).batch), ["a", "b"]);
}

#[test]
fn hold_is_off_unless_asked() {
    // The same history with Triton's delay of 0 (the default): never waits.
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Static(Duration::ZERO)), 1);
    s.record(1, ms(2));
    s.record(8, ms(9));
    s.ended(t0);
    for (i, n) in ["a", "b"].into_iter().enumerate() {
        let at = t0 + us(100 * (i as u64 + 1));
        push(&mut s, n, 1, at);
        assert_eq!(names(&s.next(at).batch), [n]);
        s.ended(at);
    }
}

fn within(t: Duration) -> JobOptions {
    JobOptions {
        priority: 0,
        timeout: Some(t),
    }
}

/// A state whose engine ran 8 rows in 4 ms (2000 rows/s), with `queued` 1-row
/// requests waiting.
fn loaded(delay: Option<Delay>, instances: usize, queued: usize) -> State<Item> {
    let mut config = match delay {
        Some(d) => dynamic(8, &[], d),
        None => SchedulerConfig::simple("m:1", 8, 100),
    };
    config.levels = vec![LevelPolicy::reject_after(None, 100); 2];
    let mut s = State::new(config, instances);
    s.record(8, ms(4));
    for _ in 0..queued {
        push(&mut s, "x", 1, Instant::now());
    }
    s
}

#[test]
fn early_rejection_refuses_what_would_be_answered_late_in_every_mode() {
    let t0 = Instant::now();
    for delay in [
        None,
        Some(Delay::Static(Duration::ZERO)),
        Some(Delay::Static(ms(5))),
        Some(Delay::Adaptive { max: ms(5) }),
    ] {
        // 8 rows ahead drain in 4 ms, then a run of a full batch (4 ms): answered at
        // 8 ms.
        let mut s = loaded(delay, 1, 8);
        let (_, err, reason) = s
            .enqueue(Item::new("late"), 1, within(ms(8) - us(1)), t0)
            .unwrap_err();
        assert_eq!(reason, Rejection::Deadline, "{delay:?}");
        assert_eq!(
            err.kind(),
            ErrorKind::ResourceExhausted,
            "shed like a full queue (429)"
        );
        assert!(
            err.message().contains(
                "within its timeout of 7999 µs (about 4000 µs of work is ahead of it, then its run of about 4000 µs); rejected early"
            ),
            "{err}"
        );
        assert!(s
            .enqueue(Item::new("on time"), 1, within(ms(8)), t0)
            .is_ok());
    }
}

#[test]
fn early_rejection_counts_instances_levels_and_what_was_learned() {
    let t0 = Instant::now();
    // Two instances drain the 8 rows in 2 ms: answered at 6 ms.
    let mut s = loaded(Some(Delay::Static(Duration::ZERO)), 2, 8);
    assert!(s.enqueue(Item::new("two"), 1, within(ms(6)), t0).is_ok());
    let mut s = loaded(Some(Delay::Static(Duration::ZERO)), 2, 8);
    assert!(s
        .enqueue(Item::new("two"), 1, within(ms(6) - us(1)), t0)
        .is_err());
    // Rows at a lower priority level are not ahead of a level-1 request.
    let mut s = loaded(Some(Delay::Static(Duration::ZERO)), 1, 0);
    for _ in 0..8 {
        s.enqueue(
            Item::new("low"),
            1,
            JobOptions {
                priority: 2,
                timeout: None,
            },
            t0,
        )
        .unwrap();
    }
    let high = JobOptions {
        priority: 1,
        timeout: Some(us(10)),
    };
    assert!(
        s.enqueue(Item::new("high"), 1, high, t0).is_ok(),
        "nothing ahead at level 1"
    );
    let low = JobOptions {
        priority: 2,
        timeout: Some(ms(8) - us(1)),
    };
    assert!(s.enqueue(Item::new("low late"), 1, low, t0).is_err());
    // With nothing ahead, never rejected, even with a timeout shorter than one run.
    let mut s = loaded(Some(Delay::Static(Duration::ZERO)), 1, 0);
    assert!(s.enqueue(Item::new("alone"), 1, within(us(10)), t0).is_ok());
    // Nothing learned about the engine: nothing rejected.
    let mut s = State::new(dynamic(8, &[], Delay::Static(Duration::ZERO)), 1);
    for _ in 0..30 {
        push(&mut s, "x", 8, t0);
    }
    assert!(s
        .enqueue(Item::new("unknown"), 1, within(us(1)), t0)
        .is_ok());
    // Without batching, the request's own run is of its own rows: 8 rows ahead drain
    // in 4 ms, then 1 row (learned: 1 ms).
    let mut s = loaded(None, 1, 8);
    s.record(1, ms(1));
    assert!(s.enqueue(Item::new("alone"), 1, within(ms(5)), t0).is_ok());
    let mut s = loaded(None, 1, 8);
    s.record(1, ms(1));
    assert!(s
        .enqueue(Item::new("alone"), 1, within(ms(5) - us(1)), t0)
        .is_err());
    // Turned off: queued, to time out in the queue as in Triton.
    let mut s = loaded(Some(Delay::Static(Duration::ZERO)), 1, 8);
    s.config.early_rejection = false;
    assert!(s.enqueue(Item::new("late"), 1, within(us(1)), t0).is_ok());
}

#[test]
fn queue_counts_follow_arrivals_runs_expiry_and_cancellation() {
    let t0 = Instant::now();
    let mut config = dynamic(4, &[], Delay::Static(ms(10)));
    config.levels = vec![LevelPolicy::reject_after(None, 100); 2];
    config.default_level = 2;
    let mut s = State::new(config, 1);
    let gone = Item::new("gone");
    let cancel = Rc::clone(&gone.1);
    let (a, _) = s
        .enqueue(Item::new("a"), 2, JobOptions::default(), t0)
        .unwrap();
    let (g, _) = s.enqueue(gone, 1, JobOptions::default(), t0).unwrap();
    let (b, hard) = s.enqueue(Item::new("b"), 1, within(ms(1)), t0).unwrap();
    assert_eq!(hard, Some(t0 + ms(1)));
    let (c, _) = s
        .enqueue(
            Item::new("c"),
            1,
            JobOptions {
                priority: 1,
                timeout: None,
            },
            t0,
        )
        .unwrap();
    assert_eq!((s.len(), s.waiting()), (4, 4));
    assert!(!s.is_empty());
    assert!([a, g, b, c].iter().all(|&seq| s.is_queued(seq)));
    cancel.set(true);
    assert_eq!(
        (s.len(), s.waiting()),
        (4, 3),
        "a cancelled entry counts until met"
    );
    // b's deadline passes in the middle of its queue; the batch forms over the
    // cancelled entry: c (level 1) then a; 3 rows, and a 4th fits no more.
    let step = s.next(t0 + ms(1));
    assert_eq!(
        step.expired.iter().map(|e| e.payload.0).collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(
        step.cancelled
            .iter()
            .map(|e| e.payload.0)
            .collect::<Vec<_>>(),
        ["gone"]
    );
    assert!(step.batch.is_none());
    assert_eq!(step.wake_at, Some(t0 + ms(10)), "the oldest's delay");
    assert_eq!((s.len(), s.waiting()), (2, 2));
    assert!(!s.is_queued(b) && !s.is_queued(g) && s.is_queued(a) && s.is_queued(c));
    assert_eq!(names(&s.next(t0 + ms(10)).batch), ["c", "a"]);
    assert!(s.is_empty() && !s.is_queued(a));
    // The counts are what admission reads: 3 rows queued at 2 rows/ms after a learned
    // 4-row run of 2 ms.
    s.record(4, ms(2));
    for n in ["x", "y", "z"] {
        push(&mut s, n, 1, t0);
    }
    // 3 rows ahead: start at 1.5 ms, a 4-row run of 2 ms: answered at 3.5 ms.
    assert!(s
        .enqueue(Item::new("late"), 1, within(us(3499)), t0)
        .is_err());
    assert!(s.enqueue(Item::new("ok"), 1, within(us(3500)), t0).is_ok());
}

#[test]
fn a_full_level_makes_room_by_dropping_cancelled_entries() {
    let t0 = Instant::now();
    let mut s = State::new(SchedulerConfig::simple("m:1", 0, 2), 1);
    let a = Item::new("a");
    let cancel = Rc::clone(&a.1);
    s.enqueue(a, 1, JobOptions::default(), t0).unwrap();
    push(&mut s, "b", 1, t0);
    cancel.set(true);
    push(&mut s, "c", 1, t0);
    assert_eq!(s.len(), 2);
    let step = s.next(t0);
    assert_eq!(
        step.cancelled
            .iter()
            .map(|e| e.payload.0)
            .collect::<Vec<_>>(),
        ["a"],
        "reported by the next look"
    );
    assert_eq!(names(&step.batch), ["b"]);
    assert_eq!(names(&s.next(t0).batch), ["c"]);
}

#[test]
fn deadlines_of_entries_that_ran_do_not_pile_up() {
    // A parked low-priority entry keeps the earliest deadline at the top of the heap,
    // so the items of the level-1 entries that ran (later deadlines) stay below it
    // until the heap holds more than 2 × the queued entries + 64: then it is rebuilt.
    let t0 = Instant::now();
    let mut config = dynamic(1, &[], Delay::Static(Duration::ZERO));
    config.levels = vec![LevelPolicy::reject_after(None, 1000); 2];
    let mut s = State::new(config, 1);
    let low = JobOptions {
        priority: 2,
        timeout: Some(Duration::from_secs(1)),
    };
    s.enqueue(Item::new("parked"), 1, low, t0).unwrap();
    s.enqueue(Item::new("parked too"), 1, low, t0).unwrap();
    let mut items = Vec::new();
    for i in 0..100 {
        let at = t0 + us(i);
        s.enqueue(Item::new("x"), 1, within(Duration::from_secs(60)), at)
            .unwrap();
        assert_eq!(names(&s.next(at).batch), ["x"]);
        items.push(s.queues.deadline_items());
    }
    // Looking at 3 queued entries, the heap is rebuilt once it holds 71 > 2 × 3 + 64.
    assert_eq!(items[..68], (3..=70).collect::<Vec<_>>()[..]);
    assert_eq!(items[68], 3);
    // The next deadline is a parked entry's, not one of those that ran; then, once
    // they have run, none.
    assert_eq!(
        s.queues.earliest_deadline(),
        Some(t0 + Duration::from_secs(1))
    );
    assert_eq!(names(&s.next(t0 + ms(1)).batch), ["parked"]);
    assert_eq!(names(&s.next(t0 + ms(1)).batch), ["parked too"]);
    let step = s.next(t0 + ms(1));
    assert!(step.batch.is_none() && step.wake_at.is_none());
}

#[test]
fn a_full_level_drops_its_cancelled_rows_from_the_counts() {
    // 1 ms per row (1000 rows/s); a level of 2 holds a cancelled 1-row request and a
    // 3-row one; a third request makes room: 3 rows are ahead of it, then a run of 4.
    let t0 = Instant::now();
    let mut config = dynamic(8, &[], Delay::Static(Duration::ZERO));
    config.levels = vec![LevelPolicy::reject_after(None, 2)];
    let fresh = || {
        let mut s = State::new(config.clone(), 1);
        s.record(1, ms(1));
        s.record(8, ms(8));
        let gone = Item::new("gone");
        let cancel = Rc::clone(&gone.1);
        s.enqueue(gone, 1, JobOptions::default(), t0).unwrap();
        push(&mut s, "b", 3, t0);
        cancel.set(true);
        s
    };
    assert!(fresh()
        .enqueue(Item::new("c"), 1, within(ms(7)), t0)
        .is_ok());
    assert!(fresh()
        .enqueue(Item::new("c"), 1, within(ms(7) - us(1)), t0)
        .is_err());
    // Two rounds of making room before the next look: both reported, counts intact.
    let mut s = State::new(SchedulerConfig::simple("m:1", 0, 1), 1);
    let a = Item::new("a");
    let cancel_a = Rc::clone(&a.1);
    s.enqueue(a, 1, JobOptions::default(), t0).unwrap();
    cancel_a.set(true);
    let b = Item::new("b");
    let cancel_b = Rc::clone(&b.1);
    s.enqueue(b, 1, JobOptions::default(), t0).unwrap();
    cancel_b.set(true);
    push(&mut s, "c", 1, t0);
    assert_eq!(s.len(), 1);
    let step = s.next(t0);
    assert_eq!(step.cancelled.len(), 2);
    assert_eq!(names(&step.batch), ["c"]);
    assert!(s.is_empty());
}

#[test]
fn a_batch_that_cannot_grow_runs_at_once() {
    // 3 rows queued, then 2 that do not fit a batch of 4: waiting cannot fill it.
    let t0 = Instant::now();
    let mut s = State::new(dynamic(4, &[], Delay::Static(ms(10))), 1);
    push(&mut s, "a", 3, t0);
    push(&mut s, "b", 2, t0);
    assert_eq!(names(&s.next(t0).batch), ["a"]);
    let step = s.next(t0);
    assert!(step.batch.is_none());
    assert_eq!(step.wake_at, Some(t0 + ms(10)));
}

#[test]
fn early_rejection_sizes_the_own_run_from_the_rows_ahead_and_its_own() {
    // 1 ms per row at any batch size (1000 rows/s): 3 rows ahead drain in 3 ms, then a
    // run of 3 + 2 rows takes 5 ms: answered at 8 ms.
    let t0 = Instant::now();
    let fresh = || {
        let mut s = State::new(dynamic(8, &[], Delay::Static(Duration::ZERO)), 1);
        s.record(1, ms(1));
        s.record(8, ms(8));
        push(&mut s, "x", 3, t0);
        s
    };
    assert!(fresh()
        .enqueue(Item::new("in time"), 2, within(ms(8)), t0)
        .is_ok());
    let (_, err, _) = fresh()
        .enqueue(Item::new("late"), 2, within(ms(8) - us(1)), t0)
        .unwrap_err();
    assert!(
        err.message()
            .contains("about 3000 µs of work is ahead of it, then its run of about 5000 µs"),
        "{err}"
    );
}

// The tests below protect `State`'s own wiring in `state/mod.rs` (found by
// `cargo mutants` on that file): what the pool tells it, what it reports back, and how
// a request's timeout and its level's policy make its deadline.

#[test]
fn a_changed_instance_count_is_what_admission_counts() {
    let t0 = Instant::now();
    // 8 rows ahead: 4 ms on one instance, 2 ms on two; then a full run of 4 ms.
    let mut s = loaded(Some(Delay::Static(Duration::ZERO)), 1, 8);
    assert!(s.enqueue(Item::new("one"), 1, within(ms(6)), t0).is_err());
    let mut s = loaded(Some(Delay::Static(Duration::ZERO)), 1, 8);
    s.set_instances(2);
    assert!(s.enqueue(Item::new("two"), 1, within(ms(6)), t0).is_ok());
    // Zero instances (a pool between two changes) count as one.
    let mut s = loaded(Some(Delay::Static(Duration::ZERO)), 2, 8);
    s.set_instances(0);
    assert!(s.enqueue(Item::new("none"), 1, within(ms(6)), t0).is_err());
    assert!(s.enqueue(Item::new("none"), 1, within(ms(8)), t0).is_ok());
}

#[test]
fn the_state_reports_what_it_learned_and_whether_it_closes() {
    let mut s: State<Item> = State::new(dynamic(8, &[], Delay::Static(ms(1))), 1);
    assert_eq!(s.latency_estimate(8), None, "nothing learned yet");
    s.record(8, ms(4));
    assert_eq!(s.latency_estimate(8), Some(ms(4)));
    assert_eq!(s.config().max_batch_size, 8);
    assert!(!s.is_closing());
    s.close();
    assert!(s.is_closing());
}

#[test]
fn a_request_timeout_overrides_the_level_default_only_where_allowed() {
    let t0 = Instant::now();
    let level = |default_timeout, allow_timeout_override, timeout_action| {
        let mut config = dynamic(8, &[], Delay::Static(ms(50)));
        config.levels = vec![LevelPolicy {
            timeout_action,
            default_timeout,
            allow_timeout_override,
            max_queue_size: 10,
        }];
        State::<Item>::new(config, 1)
    };
    let hard = |mut s: State<Item>, options| s.enqueue(Item::new("r"), 1, options, t0).unwrap().1;
    let reject = TimeoutAction::Reject;
    // Allowed: the request's own timeout, shorter or longer than the default.
    assert_eq!(
        hard(level(Some(ms(10)), true, reject), within(ms(1))),
        Some(t0 + ms(1))
    );
    assert_eq!(
        hard(level(Some(ms(10)), true, reject), within(ms(30))),
        Some(t0 + ms(30))
    );
    // Not allowed: the level's default.
    assert_eq!(
        hard(level(Some(ms(10)), false, reject), within(ms(1))),
        Some(t0 + ms(10))
    );
    // Not allowed but the level has none: the request's own.
    assert_eq!(
        hard(level(None, false, reject), within(ms(1))),
        Some(t0 + ms(1))
    );
    // No timeout anywhere: no deadline.
    assert_eq!(hard(level(None, true, reject), JobOptions::default()), None);
    // A level that delays timed-out requests answers none of them with a timeout:
    // no hard deadline, although the entry has one.
    let mut s = level(Some(ms(10)), true, TimeoutAction::Delay);
    let (_, hard) = s.enqueue(Item::new("r"), 1, within(ms(1)), t0).unwrap();
    assert_eq!(hard, None);
    let batch = s.next(t0).batch;
    assert!(batch.is_none(), "the static delay is not over");
    let step = s.next(t0 + ms(50));
    assert_eq!(
        step.batch.map(|b| b[0].deadline),
        Some(None),
        "expired, moved back"
    );
}
