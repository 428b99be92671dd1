//! Batcher decisions with explicit time: batches by size, delay and preferred sizes,
//! priorities, deadlines, queue bounds, cancellation, and the adaptive delay.

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
    push(&mut s, "old", 1, t0);
    push(&mut s, "new", 1, t0 + ms(2));
    let step = s.next(t0 + ms(2));
    assert!(step.expired.is_empty());
    assert_eq!(names(&step.batch), ["new"]);
    assert_eq!(names(&s.next(t0 + ms(2)).batch), ["old"]);
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

#[test]
fn adaptive_waits_only_when_load_makes_it_pay() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max: ms(5) }), 1);
    // Nothing learned yet: no reason to wait.
    push(&mut s, "a", 1, t0);
    assert_eq!(names(&s.next(t0).batch), ["a"]);
    s.record(1, ms(2));
    s.record(8, ms(4)); // a fixed cost of 1.71 ms per run, 0.29 ms per row
                        // One client at a time (sparse arrivals): never more than one row in the system,
                        // so nothing to wait for.
    for (n, at) in [("b", 10), ("c", 20)] {
        push(&mut s, n, 1, t0 + ms(at));
        assert_eq!(names(&s.next(t0 + ms(at)).batch), [n]);
        s.record(1, ms(2));
    }
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
fn adaptive_wait_respects_deadlines_and_rejects_hopeless_requests() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max: ms(50) }), 1);
    s.record(1, ms(2));
    s.record(8, ms(4));
    let mut t = t0;
    for n in ["a", "b", "c"] {
        t += us(100);
        s.enqueue(
            Item::new(n),
            1,
            JobOptions {
                priority: 0,
                timeout: Some(ms(5)),
            },
            t,
        )
        .unwrap();
    }
    let step = s.next(t);
    if let Some(wake) = step.wake_at {
        // Must leave time to run before the first deadline (t0 + 100 µs + 5 ms).
        assert!(
            wake + ms(2) <= t0 + us(100) + ms(5),
            "wake {:?} too late",
            wake - t0
        );
    } else {
        assert!(step.batch.is_some());
    }
    // Thirty requests of 8 rows ahead at ~2 rows/ms: a 1 ms timeout cannot be met.
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max: ms(5) }), 1);
    s.record(8, ms(4));
    for _ in 0..30 {
        s.enqueue(Item::new("x"), 8, JobOptions::default(), t0)
            .unwrap();
    }
    let (_, err, reason) = s
        .enqueue(
            Item::new("late"),
            1,
            JobOptions {
                priority: 0,
                timeout: Some(ms(1)),
            },
            t0,
        )
        .unwrap_err();
    assert_eq!(reason, Rejection::Deadline);
    assert_eq!(
        err.kind(),
        ErrorKind::ResourceExhausted,
        "shed like a full queue (429)"
    );
    assert!(err.message().contains("rejected early"), "{err}");
    // The work ahead ends in time, but the request's own run would not: rejected.
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max: ms(5) }), 1);
    s.record(8, ms(4)); // 2000 rows/s
    for _ in 0..8 {
        s.enqueue(Item::new("x"), 1, JobOptions::default(), t0)
            .unwrap();
    }
    let within = |t| JobOptions {
        priority: 0,
        timeout: Some(t),
    };
    let (_, err, _) = s
        .enqueue(Item::new("late"), 1, within(ms(6)), t0)
        .unwrap_err();
    assert!(err.message().contains("then its run"), "{err}");
    assert!(s
        .enqueue(Item::new("on time"), 1, within(ms(9)), t0)
        .is_ok());
    // With nothing ahead, a request starts at once: never rejected early, even with a
    // timeout shorter than one run (the timeout bounds the queue, not the run).
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max: ms(5) }), 1);
    s.record(8, ms(4));
    let tight = JobOptions {
        priority: 0,
        timeout: Some(us(10)),
    };
    assert!(s.enqueue(Item::new("alone"), 1, tight, t0).is_ok());
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
}

#[test]
fn adaptive_dispatches_once_the_recent_concurrency_is_queued() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max: ms(5) }), 1);
    s.record(1, ms(2));
    s.record(8, ms(4)); // best: 2000 rows/s
    let mut t = t0;
    for n in ["a", "b", "c"] {
        t += us(100); // 10 000 rows/s offered
        push(&mut s, n, 1, t);
    }
    assert_eq!(
        names(&s.next(t).batch),
        ["a", "b", "c"],
        "every row seen in the system is queued: dispatch at once"
    );
}

#[test]
fn adaptive_never_waits_when_bigger_batches_cost_as_much_per_row() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max: ms(5) }), 1);
    // A convnet on tract: 8 rows take 8x as long as 1.
    s.record(1, ms(1));
    s.record(2, ms(2));
    s.record(8, ms(8));
    let mut t = t0;
    for n in ["a", "b", "c"] {
        t += us(100);
        push(&mut s, n, 1, t);
    }
    assert_eq!(
        names(&s.next(t).batch),
        ["a", "b", "c"],
        "work-conserving: dispatch at once"
    );
}

#[test]
fn adaptive_does_not_hold_independent_arrivals() {
    let t0 = Instant::now();
    let mut s = State::new(dynamic(8, &[], Delay::Adaptive { max: ms(5) }), 1);
    s.record(1, us(2000));
    s.record(8, us(4000)); // a fixed cost of 1.71 ms: holding would pay in throughput
                           // One row every 500 µs whatever the batcher does (an open loop), each run short:
                           // the rows after a run come no faster than rows on average, so nothing is held.
    let mut held = Vec::new();
    for i in 0..200 {
        let t = t0 + us(500 * i);
        push(&mut s, "p", 1, t);
        match s.next(t).batch {
            Some(batch) => {
                s.record(batch.len(), us(2000));
                s.ended(t + us(100));
            }
            None => held.push(i),
        }
    }
    assert!(held.len() <= 1, "held at {held:?}");
}
