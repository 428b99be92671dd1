//! A discrete-event simulator of replicas serving a trace.
//!
//! Model: each stage has one FIFO queue in front of its replicas (a Service spreading
//! load to whichever replica is free: the join-idle-queue ideal); an idle ready replica
//! takes up to `max_batch` queued requests at once (Triton-style dynamic batching; with
//! `max_queue_delay` it waits for a fuller batch until the oldest request has waited
//! that long); a run of `rows` rows takes a time drawn from the replica's profile at
//! the smallest measured batch size that holds them. A replica asked for becomes ready
//! after its profile's load time (cold start); one removed while busy finishes its batch
//! first. Each stage's controller ticks at its policy's own interval and sees what a
//! metrics pipeline would show it (busy fraction per pod, requests in flight, arrivals).
//! Stages run in tandem (a pipeline): a request leaves stage `i` into stage `i + 1`.
//!
//! Key decision: time is simulated, not slept, so a day of traffic takes seconds, and
//! every run is a pure function of its inputs and seed.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use crate::policy::{Controller, Observation, PodSample};
use crate::profile::Profile;
use crate::rng::Rng;

/// One stage of the served pipeline (a single model is a one-stage pipeline).
#[derive(Debug, Clone)]
pub struct StageSetup {
    pub name: String,
    /// Hardware classes of this stage's replicas.
    pub classes: Vec<Profile>,
    /// Price per replica-hour of each class.
    pub cost_per_hour: Vec<f64>,
    /// Ready replicas per class at the start.
    pub initial: Vec<u32>,
    pub max_batch: u32,
    pub max_queue_delay_s: f64,
    /// Requests that may wait before new ones are rejected (`None`: unbounded).
    pub queue_capacity: Option<usize>,
    /// Scales the replicas of class 0 (`None`: fixed counts).
    pub controller: Option<Controller>,
}

/// What one run produced.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Per request: its arrival time and its end-to-end latency (`None`: rejected).
    pub requests: Vec<(f64, Option<f64>)>,
    /// Replica-seconds per stage and class (starting, ready and draining replicas).
    pub replica_seconds: Vec<Vec<f64>>,
    pub cost: f64,
    /// Controller decisions that changed a replica count.
    pub scaling_actions: u32,
    /// (time, provisioned replicas summed over stages) at every change.
    pub replicas: Vec<(f64, u32)>,
    /// (time, stage, new count, reason) for every change a controller made.
    pub decisions: Vec<(f64, usize, u32, String)>,
    /// When the last event happened (≥ the trace length).
    pub end: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum RState {
    Starting,
    Idle,
    Busy { drain: bool },
    Gone,
}

#[derive(Debug, Clone)]
struct Replica {
    class: usize,
    state: RState,
    ready_at: f64,
    batch: Vec<usize>,
    busy_total: f64,
    busy_start: f64,
    busy_mark: f64,
}

impl Replica {
    fn busy_now(&self, now: f64) -> f64 {
        match self.state {
            RState::Busy { .. } => self.busy_total + (now - self.busy_start),
            _ => self.busy_total,
        }
    }
}

#[derive(Debug)]
struct Stage {
    setup: StageSetup,
    queue: VecDeque<usize>,
    replicas: Vec<Replica>,
    provisioned: Vec<u32>,
    in_service: usize,
    in_area: f64,
    arrivals: u64,
    // controller marks
    last_tick: f64,
    in_area_mark: f64,
    arrivals_mark: u64,
    timer_at: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Done(usize, usize),
    Ready(usize, usize),
    Tick(usize),
    Timer(usize),
}

#[derive(Debug, PartialEq)]
struct Ev {
    t: f64,
    seq: u64,
    kind: Kind,
}

impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Ev) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    // min-heap on (time, sequence)
    fn cmp(&self, o: &Ev) -> Ordering {
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

struct Engine<'a> {
    stages: Vec<Stage>,
    heap: BinaryHeap<Ev>,
    seq: u64,
    now: f64,
    rng: Rng,
    arrival: &'a [f64],
    entered: Vec<f64>,
    latency: Vec<Option<f64>>,
    duration: f64,
    out: RunResult,
}

/// Replay `arrivals` (seconds, ascending) through the stages for `duration` seconds of
/// control (ticks stop then; queued work still finishes).
pub fn run(stages: Vec<StageSetup>, arrivals: &[f64], duration: f64, seed: u64) -> RunResult {
    let n_stages = stages.len();
    let mut e = Engine {
        stages: stages
            .into_iter()
            .map(|setup| Stage {
                queue: VecDeque::new(),
                replicas: Vec::new(),
                provisioned: vec![0; setup.classes.len()],
                in_service: 0,
                in_area: 0.0,
                arrivals: 0,
                last_tick: 0.0,
                in_area_mark: 0.0,
                arrivals_mark: 0,
                timer_at: None,
                setup,
            })
            .collect(),
        heap: BinaryHeap::new(),
        seq: 0,
        now: 0.0,
        rng: Rng::new(seed ^ 0x5EED_5EED),
        arrival: arrivals,
        entered: vec![0.0; arrivals.len()],
        latency: vec![None; arrivals.len()],
        duration,
        out: RunResult {
            replica_seconds: vec![],
            ..RunResult::default()
        },
    };
    e.out.replica_seconds = e
        .stages
        .iter()
        .map(|s| vec![0.0; s.setup.classes.len()])
        .collect();
    for s in 0..n_stages {
        for class in 0..e.stages[s].setup.classes.len() {
            for _ in 0..e.stages[s].setup.initial[class] {
                e.add_replica(s, class, true);
            }
        }
        if let Some(c) = &e.stages[s].setup.controller {
            let dt = c.interval();
            if dt <= duration {
                e.push(dt, Kind::Tick(s));
            }
        }
    }
    e.record_replicas();
    let mut next = 0;
    loop {
        let t_arr = arrivals.get(next).copied();
        let t_ev = e.heap.peek().map(|ev| ev.t);
        match (t_arr, t_ev) {
            (None, None) => break,
            (Some(ta), te) if te.is_none_or(|te| ta <= te) => {
                e.advance(ta);
                e.arrive(0, next);
                next += 1;
            }
            _ => {
                let ev = e.heap.pop().expect("peeked");
                e.advance(ev.t);
                e.handle(ev.kind);
            }
        }
    }
    e.advance(e.now.max(duration));
    let mut out = e.out;
    out.end = e.now;
    out.cost = out
        .replica_seconds
        .iter()
        .zip(&e.stages)
        .map(|(rs, st)| {
            rs.iter()
                .zip(&st.setup.cost_per_hour)
                .map(|(s, c)| s * c / 3600.0)
                .sum::<f64>()
        })
        .sum();
    out.requests = arrivals.iter().copied().zip(e.latency).collect();
    out
}

impl Engine<'_> {
    fn push(&mut self, t: f64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Ev {
            t,
            seq: self.seq,
            kind,
        });
    }

    fn advance(&mut self, t: f64) {
        let dt = t - self.now;
        if dt > 0.0 {
            for (s, st) in self.stages.iter_mut().enumerate() {
                st.in_area += (st.queue.len() + st.in_service) as f64 * dt;
                for (c, n) in st.provisioned.iter().enumerate() {
                    self.out.replica_seconds[s][c] += f64::from(*n) * dt;
                }
            }
            self.now = t;
        }
    }

    fn record_replicas(&mut self) {
        let n: u32 = self
            .stages
            .iter()
            .map(|s| s.provisioned.iter().sum::<u32>())
            .sum();
        if self.out.replicas.last().is_none_or(|&(_, m)| m != n) {
            self.out.replicas.push((self.now, n));
        }
    }

    fn add_replica(&mut self, s: usize, class: usize, ready_now: bool) {
        let load = self.stages[s].setup.classes[class].load_time_s;
        let now = self.now;
        let st = &mut self.stages[s];
        let ready = ready_now || load <= 0.0;
        st.replicas.push(Replica {
            class,
            state: if ready {
                RState::Idle
            } else {
                RState::Starting
            },
            ready_at: if ready { now } else { now + load },
            batch: Vec::new(),
            busy_total: 0.0,
            busy_start: 0.0,
            busy_mark: 0.0,
        });
        st.provisioned[class] += 1;
        let r = st.replicas.len() - 1;
        if !ready {
            self.push(now + load, Kind::Ready(s, r));
        }
    }

    fn arrive(&mut self, s: usize, req: usize) {
        let st = &mut self.stages[s];
        st.arrivals += 1;
        if st
            .setup
            .queue_capacity
            .is_some_and(|cap| st.queue.len() >= cap)
        {
            return; // rejected: latency stays None
        }
        self.entered[req] = self.now;
        st.queue.push_back(req);
        self.dispatch(s);
    }

    fn dispatch(&mut self, s: usize) {
        loop {
            let now = self.now;
            let st = &mut self.stages[s];
            let Some(&oldest) = st.queue.front() else {
                return;
            };
            // the fastest idle replica
            let Some(r) = (0..st.replicas.len())
                .filter(|&r| st.replicas[r].state == RState::Idle)
                .min_by(|&a, &b| {
                    let pa = st.setup.classes[st.replicas[a].class].p50_s(1);
                    let pb = st.setup.classes[st.replicas[b].class].p50_s(1);
                    pa.total_cmp(&pb)
                })
            else {
                return;
            };
            let class = st.replicas[r].class;
            let max_rows = st
                .setup
                .max_batch
                .min(st.setup.classes[class].max_batch())
                .max(1) as usize;
            let due = self.entered[oldest] + st.setup.max_queue_delay_s;
            if st.queue.len() < max_rows && now < due - 1e-12 {
                if st.timer_at != Some(due) {
                    st.timer_at = Some(due);
                    self.push(due, Kind::Timer(s));
                }
                return;
            }
            let rows = st.queue.len().min(max_rows);
            let batch: Vec<usize> = st.queue.drain(..rows).collect();
            let service = st.setup.classes[class].sample_s(rows as u32, &mut self.rng);
            st.in_service += rows;
            let rep = &mut st.replicas[r];
            rep.state = RState::Busy { drain: false };
            rep.busy_start = now;
            rep.batch = batch;
            self.push(now + service, Kind::Done(s, r));
        }
    }

    fn handle(&mut self, kind: Kind) {
        match kind {
            Kind::Timer(s) => {
                self.stages[s].timer_at = None;
                self.dispatch(s);
            }
            Kind::Ready(s, r) => {
                if self.stages[s].replicas[r].state == RState::Starting {
                    self.stages[s].replicas[r].state = RState::Idle;
                    self.dispatch(s);
                }
            }
            Kind::Done(s, r) => {
                let now = self.now;
                let last = s + 1 == self.stages.len();
                let st = &mut self.stages[s];
                let rep = &mut st.replicas[r];
                let batch = std::mem::take(&mut rep.batch);
                rep.busy_total += now - rep.busy_start;
                let drain = matches!(rep.state, RState::Busy { drain: true });
                rep.state = if drain { RState::Gone } else { RState::Idle };
                if drain {
                    st.provisioned[rep.class] -= 1;
                }
                st.in_service -= batch.len();
                for req in batch {
                    if last {
                        self.latency[req] = Some(now - self.arrival[req]);
                    } else {
                        self.arrive(s + 1, req);
                    }
                }
                if drain {
                    self.record_replicas();
                }
                self.dispatch(s);
            }
            Kind::Tick(s) => self.tick(s),
        }
    }

    fn tick(&mut self, s: usize) {
        let now = self.now;
        let st = &mut self.stages[s];
        let elapsed = (now - st.last_tick).max(1e-9);
        let in_flight_avg = (st.in_area - st.in_area_mark) / elapsed;
        let live: Vec<usize> = (0..st.replicas.len())
            .filter(|&r| st.replicas[r].class == 0 && st.replicas[r].state != RState::Gone)
            .collect();
        let ready = live
            .iter()
            .filter(|&&r| st.replicas[r].state != RState::Starting)
            .count() as u32;
        let current = live
            .iter()
            .filter(|&&r| !matches!(st.replicas[r].state, RState::Busy { drain: true }))
            .count() as u32;
        let pods = live
            .iter()
            .map(|&r| {
                let rep = &st.replicas[r];
                let is_ready = rep.state != RState::Starting;
                let span = elapsed.min(now - rep.ready_at);
                PodSample {
                    ready: is_ready,
                    utilization: (is_ready && span > 0.0)
                        .then(|| ((rep.busy_now(now) - rep.busy_mark) / span).clamp(0.0, 1.0)),
                    concurrency: is_ready.then(|| in_flight_avg / f64::from(ready.max(1))),
                }
            })
            .collect();
        let obs = Observation {
            now,
            current,
            ready,
            pods,
            arrivals: st.arrivals - st.arrivals_mark,
            elapsed,
            in_flight_avg,
            queued: st.queue.len() as u64,
        };
        for &r in &live {
            let b = st.replicas[r].busy_now(now);
            st.replicas[r].busy_mark = b;
        }
        st.last_tick = now;
        st.in_area_mark = st.in_area;
        st.arrivals_mark = st.arrivals;
        let controller = st
            .setup
            .controller
            .as_mut()
            .expect("ticks only with a controller");
        let decision = controller.decide(&obs);
        let interval = controller.interval();
        if decision.replicas != current {
            self.out.scaling_actions += 1;
            self.out
                .decisions
                .push((now, s, decision.replicas, decision.reason));
            self.scale(s, current, decision.replicas);
            self.record_replicas();
        }
        if now + interval <= self.duration + 1e-9 {
            self.push(now + interval, Kind::Tick(s));
        }
    }

    /// Move class 0 of stage `s` from `current` to `desired` replicas.
    fn scale(&mut self, s: usize, current: u32, desired: u32) {
        if desired > current {
            let mut add = desired - current;
            // first take back replicas that were draining
            for rep in self.stages[s].replicas.iter_mut().filter(|r| r.class == 0) {
                if add > 0 && rep.state == (RState::Busy { drain: true }) {
                    rep.state = RState::Busy { drain: false };
                    add -= 1;
                }
            }
            for _ in 0..add {
                self.add_replica(s, 0, false);
            }
        } else {
            let mut remove = current - desired;
            let st = &mut self.stages[s];
            for want in [
                RState::Starting,
                RState::Idle,
                RState::Busy { drain: false },
            ] {
                for rep in st.replicas.iter_mut().rev().filter(|r| r.class == 0) {
                    if remove > 0 && rep.state == want {
                        if want == (RState::Busy { drain: false }) {
                            rep.state = RState::Busy { drain: true };
                        } else {
                            rep.state = RState::Gone;
                            st.provisioned[0] -= 1;
                        }
                        remove -= 1;
                    }
                }
            }
        }
        self.dispatch(s);
    }
}

#[cfg(test)]
mod tests;
