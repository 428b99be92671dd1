//! The router's view of the replicas: what each holds, how loaded it is, whether it is
//! up, and the per-model latency window behind hedging. Plain data and pure decisions
//! (time is passed in, randomness comes from the caller's generator), so every rule is
//! unit-tested without sockets.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{HedgeConfig, HedgeDelay, OutlierConfig};
use crate::hedge::HedgeBudget;

/// Where a replica listens. Its identity (for rendezvous hashing and metrics) is
/// `host:http_port`, the same in every router that discovers it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaAddr {
    pub host: String,
    pub http_port: u16,
    pub grpc_port: u16,
}

impl ReplicaAddr {
    pub fn id(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.http_port)
        } else {
            format!("{}:{}", self.host, self.http_port)
        }
    }
    pub fn grpc_authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.grpc_port)
        } else {
            format!("{}:{}", self.host, self.grpc_port)
        }
    }
}

/// What a forwarded request needs of a replica, built once when it is discovered and
/// shared by every request (no per-request formatting or parsing of its address).
#[derive(Debug)]
pub struct Target {
    pub addr: ReplicaAddr,
    /// `host:http_port` (the view's key).
    pub id: String,
    /// The HTTP authority, parsed once.
    pub http: hyper::http::uri::Authority,
}

impl Target {
    pub fn new(addr: ReplicaAddr) -> Self {
        let id = addr.id();
        let http = id
            .parse()
            .unwrap_or_else(|_| hyper::http::uri::Authority::from_static("invalid.invalid"));
        Target { addr, id, http }
    }
}

/// A model's state on one replica, as its load endpoint reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Ready,
    Loading,
    /// Listed by the replica's repository but not loaded (or failed, or unloading).
    Absent,
}

/// One model on one replica.
#[derive(Debug, Clone)]
pub struct Holding {
    pub state: HoldState,
    /// Requests queued or running there, at the last poll.
    pub in_flight: u64,
    /// Learned engine time per request (0: not measured yet).
    pub service_ns: u64,
    /// Successful requests so far (a counter: rates come from its growth).
    pub success: u64,
    pub executions: u64,
    pub memory_bytes: u64,
}

/// Why a replica takes no requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Never polled successfully yet.
    Unknown,
    Up,
    /// The last probe failed.
    Down,
}

/// Everything the router knows about one replica.
#[derive(Debug)]
pub struct Replica {
    pub addr: ReplicaAddr,
    pub target: std::sync::Arc<Target>,
    pub health: Health,
    /// Transport failures in a row (passive outlier detection).
    pub consecutive_errors: u32,
    /// How often it was ejected; each ejection lasts `base_ejection × ejections`.
    pub ejections: u32,
    pub ejected_until: Option<Instant>,
    pub holdings: HashMap<String, Holding>,
    pub memory_used: u64,
    pub memory_budget: Option<u64>,
    /// Requests this router has in flight there, per model (fresher than a poll).
    pub outstanding: HashMap<String, u64>,
    /// Lost hedges: the replica was at least this slow (seconds) for the model at that
    /// instant; the penalty halves every `PENALTY_HALF_LIFE`.
    pub penalty: HashMap<String, (f64, Instant)>,
    /// Requests the router sent there (metrics).
    pub sent: u64,
    /// Of those, backup requests (hedges).
    pub hedged_to: u64,
    /// The replica's own readiness: false while it drains (SIGTERM) or when a model
    /// failed to load. Such a replica gets requests only when no ready one holds the
    /// model.
    pub ready: bool,
}

/// How fast a lost-hedge penalty fades: a replica that stalled once is tried again soon.
pub const PENALTY_HALF_LIFE: Duration = Duration::from_secs(1);
/// Service time assumed for a model nobody has measured yet.
const DEFAULT_SERVICE: f64 = 0.001;
/// Latencies kept per model for the hedge delay.
const WINDOW: usize = 512;

impl Replica {
    pub fn new(addr: ReplicaAddr) -> Self {
        Replica {
            target: std::sync::Arc::new(Target::new(addr.clone())),
            addr,
            health: Health::Unknown,
            consecutive_errors: 0,
            ejections: 0,
            ejected_until: None,
            holdings: HashMap::new(),
            memory_used: 0,
            memory_budget: None,
            outstanding: HashMap::new(),
            penalty: HashMap::new(),
            sent: 0,
            hedged_to: 0,
            ready: true,
        }
    }

    /// Up and not ejected.
    pub fn usable(&self, now: Instant) -> bool {
        self.health == Health::Up && self.ejected_until.is_none_or(|t| now >= t)
    }

    pub fn holds_ready(&self, model: &str) -> bool {
        self.holdings
            .get(model)
            .is_some_and(|h| h.state == HoldState::Ready)
    }

    /// Free bytes of the memory budget (`u64::MAX` without one).
    pub fn free_budget(&self) -> u64 {
        self.memory_budget
            .map_or(u64::MAX, |b| b.saturating_sub(self.memory_used))
    }
}

/// Per model: recent latencies (for the percentile hedge delay) and its request rate.
#[derive(Debug, Default)]
pub struct ModelStats {
    window: VecDeque<Duration>,
    /// The window sorted, refreshed every 32 latencies (a percentile reads it).
    sorted: Vec<Duration>,
    since_sorted: usize,
    /// Sum of the replicas' success counters at the last poll round, and when.
    pub last_success: Option<(u64, Instant)>,
    /// Requests per minute, over all replicas (smoothed).
    pub rate_per_min: f64,
}

impl ModelStats {
    pub fn record(&mut self, latency: Duration) {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(latency);
        self.since_sorted += 1;
        if self.sorted.is_empty() || self.since_sorted >= 32 {
            self.sorted.clear();
            self.sorted.extend(self.window.iter().copied());
            self.sorted.sort_unstable();
            self.since_sorted = 0;
        }
    }

    pub fn samples(&self) -> usize {
        self.window.len()
    }

    /// The recent latency below which `tenths` per mille of them lie (nearest rank).
    pub fn percentile(&self, tenths: u16) -> Option<Duration> {
        let n = self.sorted.len();
        (n > 0).then(|| self.sorted[(n * usize::from(tenths) / 1000).min(n - 1)])
    }

    pub fn p95(&self) -> Option<Duration> {
        self.percentile(950)
    }
}

/// The whole view.
#[derive(Debug)]
pub struct View {
    pub replicas: BTreeMap<String, Replica>,
    pub models: HashMap<String, ModelStats>,
    /// Requests and hedges of the recent window (the hedge budget).
    pub hedge: HedgeBudget,
}

impl Default for View {
    fn default() -> Self {
        View::new(crate::config::DEFAULT_HEDGE_WINDOW)
    }
}

impl View {
    pub fn new(hedge_window: Duration) -> Self {
        View {
            replicas: BTreeMap::new(),
            models: HashMap::new(),
            hedge: HedgeBudget::new(hedge_window),
        }
    }

    /// Replaces the set of replicas with `addrs` (discovery), keeping what is known
    /// about those that stay.
    pub fn set_replicas(&mut self, addrs: &[ReplicaAddr]) {
        let ids: HashSet<String> = addrs.iter().map(ReplicaAddr::id).collect();
        self.replicas.retain(|id, _| ids.contains(id));
        for a in addrs {
            self.replicas
                .entry(a.id())
                .or_insert_with(|| Replica::new(a.clone()));
        }
    }

    pub fn up_count(&self, now: Instant) -> usize {
        self.replicas.values().filter(|r| r.usable(now)).count()
    }

    /// Usable replicas holding `model` ready (those that report themselves ready, if
    /// any of them does).
    pub fn holders(&self, model: &str, now: Instant) -> Vec<&Replica> {
        let all: Vec<&Replica> = self
            .replicas
            .values()
            .filter(|r| r.usable(now) && r.holds_ready(model))
            .collect();
        if all.iter().any(|r| r.ready) {
            all.into_iter().filter(|r| r.ready).collect()
        } else {
            all
        }
    }

    /// Usable replicas whose repository lists `model` at all.
    pub fn knowers(&self, model: &str, now: Instant) -> Vec<&Replica> {
        self.replicas
            .values()
            .filter(|r| r.usable(now) && r.holdings.contains_key(model))
            .collect()
    }

    /// The service time of `model` on `r`: what the replica learned, else the mean of
    /// the other replicas' measurements, else a default.
    fn service(&self, r: &Replica, model: &str) -> f64 {
        if let Some(h) = r.holdings.get(model).filter(|h| h.service_ns > 0) {
            return h.service_ns as f64 * 1e-9;
        }
        let known: Vec<f64> = self
            .replicas
            .values()
            .filter_map(|o| o.holdings.get(model))
            .filter(|h| h.service_ns > 0)
            .map(|h| h.service_ns as f64 * 1e-9)
            .collect();
        if known.is_empty() {
            DEFAULT_SERVICE
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        }
    }

    /// Predicted completion time (seconds) of a new request for `model` sent to `r`:
    /// (requests ahead + 1) × service time, where requests ahead is the larger of the
    /// replica's last reported in-flight count and this router's own outstanding
    /// requests there; never less than what a recent lost hedge showed.
    pub fn predicted(&self, r: &Replica, model: &str, now: Instant) -> f64 {
        let polled = r.holdings.get(model).map_or(0, |h| h.in_flight);
        let local = r.outstanding.get(model).copied().unwrap_or(0);
        let ahead = polled.max(local) as f64;
        let estimate = (ahead + 1.0) * self.service(r, model);
        let penalty = r.penalty.get(model).map_or(0.0, |&(secs, at)| {
            let age = now.saturating_duration_since(at).as_secs_f64();
            secs * 0.5f64.powf(age / PENALTY_HALF_LIFE.as_secs_f64())
        });
        estimate.max(penalty)
    }

    /// Power of two choices on predicted completion time among `candidates`: two
    /// distinct ones at random, the one predicted to finish first wins (ties: the
    /// first drawn).
    pub fn pick_p2c<'a>(
        &self,
        model: &str,
        candidates: &[&'a Replica],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<&'a Replica> {
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = rng.usize(..n);
                let mut b = rng.usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let score = |i: usize| self.predicted(candidates[i], model, now);
                let best = if score(b) < score(a) { b } else { a };
                Some(candidates[best])
            }
        }
    }

    /// The replica for a request for `model`, not one of `exclude` (ids): holders
    /// first; when none holds it, any usable replica (so an unknown model gets the
    /// replica's own 404).
    pub fn pick_replica(
        &self,
        model: &str,
        exclude: &[&str],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<&Replica> {
        let not_excluded = |r: &&Replica| !exclude.contains(&r.target.id.as_str());
        let mut pool: Vec<&Replica> = self
            .holders(model, now)
            .into_iter()
            .filter(not_excluded)
            .collect();
        if pool.is_empty() {
            pool = self
                .replicas
                .values()
                .filter(|r| r.usable(now))
                .filter(not_excluded)
                .collect();
        }
        self.pick_p2c(model, &pool, now, rng)
    }

    /// [`View::pick_replica`], by id.
    pub fn pick(
        &self,
        model: &str,
        exclude: &[String],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<String> {
        let ex: Vec<&str> = exclude.iter().map(String::as_str).collect();
        self.pick_replica(model, &ex, now, rng)
            .map(|r| r.target.id.clone())
    }

    /// Whether some usable replica holds `model` ready (no allocation).
    pub fn is_held(&self, model: &str, now: Instant) -> bool {
        self.replicas
            .values()
            .any(|r| r.usable(now) && r.holds_ready(model))
    }

    /// The best holder of `model` other than `primary` (lowest predicted completion),
    /// the target of a hedge.
    pub fn backup(&self, model: &str, primary: &str, now: Instant) -> Option<String> {
        self.backup_replica(model, primary, now)
            .map(|r| r.target.id.clone())
    }

    /// [`View::backup`], the replica itself.
    pub fn backup_replica(&self, model: &str, primary: &str, now: Instant) -> Option<&Replica> {
        self.holders(model, now)
            .into_iter()
            .filter(|r| r.target.id != primary)
            .map(|r| (self.predicted(r, model, now), r))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, r)| r)
    }

    /// The delay after which a request for `model` is hedged, if hedging applies.
    pub fn hedge_delay(&self, model: &str, config: &HedgeConfig) -> Option<Duration> {
        match config.delay {
            HedgeDelay::Off => None,
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile(tenths) => {
                // Enough latencies that at least one lies above the percentile.
                let above = 1000 / usize::from(1000u16.saturating_sub(tenths).max(1));
                self.models
                    .get(model)
                    .filter(|m| m.samples() >= config.min_samples.max(above))
                    .and_then(|m| m.percentile(tenths))
                    .map(|d| d.max(config.min_delay))
            }
        }
    }

    /// Counts a request in the hedge budget's window.
    pub fn earn_hedge(&mut self, now: Instant) {
        self.hedge.record_request(now);
    }

    /// Takes one hedge from the window's budget if there is one.
    pub fn take_hedge(&mut self, now: Instant, config: &HedgeConfig) -> bool {
        self.hedge.try_hedge(now, config.max_ratio, config.burst)
    }

    /// A transport failure talking to `id` (passive outlier detection): after
    /// `consecutive_errors` in a row the replica is ejected for `base_ejection ×` the
    /// number of times it was ejected (capped at ten times). Returns whether it was
    /// ejected now.
    pub fn record_failure(&mut self, id: &str, now: Instant, config: &OutlierConfig) -> bool {
        let Some(r) = self.replicas.get_mut(id) else {
            return false;
        };
        r.consecutive_errors += 1;
        if r.consecutive_errors >= config.consecutive_errors {
            r.consecutive_errors = 0;
            r.ejections = (r.ejections + 1).min(10);
            r.ejected_until = Some(now + config.base_ejection * r.ejections);
            return true;
        }
        false
    }

    pub fn record_success(&mut self, id: &str, model: &str, latency: Duration) {
        if let Some(r) = self.replicas.get_mut(id) {
            r.consecutive_errors = 0;
        }
        match self.models.get_mut(model) {
            Some(m) => m.record(latency),
            None => self
                .models
                .entry(model.to_string())
                .or_default()
                .record(latency),
        }
    }

    /// One more request of this router in flight on `id` for `model`.
    pub fn add_outstanding(&mut self, id: &str, model: &str) {
        if let Some(r) = self.replicas.get_mut(id) {
            r.sent += 1;
            match r.outstanding.get_mut(model) {
                Some(n) => *n += 1,
                None => {
                    r.outstanding.insert(model.to_string(), 1);
                }
            }
        }
    }

    /// One request fewer in flight on `id` for `model`.
    pub fn remove_outstanding(&mut self, id: &str, model: &str) {
        if let Some(n) = self
            .replicas
            .get_mut(id)
            .and_then(|r| r.outstanding.get_mut(model))
        {
            *n = n.saturating_sub(1);
        }
    }

    /// `id` lost a hedge for `model` after waiting `waited`: it is at least that slow now.
    pub fn record_lost_hedge(&mut self, id: &str, model: &str, waited: Duration, now: Instant) {
        if let Some(r) = self.replicas.get_mut(id) {
            r.penalty
                .insert(model.to_string(), (waited.as_secs_f64(), now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> ReplicaAddr {
        ReplicaAddr {
            host: "10.0.0.1".into(),
            http_port: port,
            grpc_port: port + 1,
        }
    }

    fn holding(in_flight: u64, service_ns: u64) -> Holding {
        Holding {
            state: HoldState::Ready,
            in_flight,
            service_ns,
            success: 0,
            executions: 0,
            memory_bytes: 0,
        }
    }

    fn view(loads: &[(u16, u64, u64)]) -> View {
        let mut v = View::default();
        v.set_replicas(&loads.iter().map(|l| addr(l.0)).collect::<Vec<_>>());
        for &(port, in_flight, service) in loads {
            let r = v.replicas.get_mut(&addr(port).id()).unwrap();
            r.health = Health::Up;
            r.holdings.insert("m".into(), holding(in_flight, service));
        }
        v
    }

    #[test]
    fn predicted_completion_is_queue_times_service_not_queue_length() {
        // Replica 1 has more requests queued but is four times faster.
        let v = view(&[(1, 3, 1_000_000), (2, 1, 4_000_000)]);
        let now = Instant::now();
        let p1 = v.predicted(&v.replicas[&addr(1).id()], "m", now);
        let p2 = v.predicted(&v.replicas[&addr(2).id()], "m", now);
        assert!((p1 - 0.004).abs() < 1e-9 && (p2 - 0.008).abs() < 1e-9);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..50 {
            // With two candidates both are always drawn, so the faster always wins.
            assert_eq!(
                v.pick("m", &[], now, &mut rng),
                Some(addr(1).id()),
                "power of two choices picks the earlier predicted completion"
            );
        }
    }

    #[test]
    fn local_outstanding_counts_when_fresher_than_the_poll() {
        let mut v = view(&[(1, 0, 1_000_000), (2, 0, 1_000_000)]);
        v.replicas
            .get_mut(&addr(1).id())
            .unwrap()
            .outstanding
            .insert("m".into(), 5);
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            v.pick("m", &[], Instant::now(), &mut rng),
            Some(addr(2).id())
        );
    }

    #[test]
    fn only_usable_holders_are_picked_and_exclusion_is_respected() {
        let mut v = view(&[(1, 0, 1), (2, 0, 1), (3, 0, 1)]);
        let now = Instant::now();
        v.replicas.get_mut(&addr(1).id()).unwrap().health = Health::Down;
        v.replicas.get_mut(&addr(2).id()).unwrap().ejected_until =
            Some(now + Duration::from_secs(5));
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20 {
            assert_eq!(v.pick("m", &[], now, &mut rng), Some(addr(3).id()));
        }
        assert_eq!(v.pick("m", &[addr(3).id()], now, &mut rng), None);
        // After the ejection time the replica is usable again.
        let later = now + Duration::from_secs(6);
        assert_eq!(
            v.pick("m", &[addr(3).id()], later, &mut rng),
            Some(addr(2).id())
        );
    }

    #[test]
    fn draining_replicas_get_requests_only_when_nobody_else_holds_the_model() {
        let mut v = view(&[(1, 0, 1), (2, 5, 1)]);
        v.replicas.get_mut(&addr(1).id()).unwrap().ready = false;
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..20 {
            assert_eq!(v.pick("m", &[], now, &mut rng), Some(addr(2).id()));
        }
        v.replicas.get_mut(&addr(2).id()).unwrap().health = Health::Down;
        assert_eq!(v.pick("m", &[], now, &mut rng), Some(addr(1).id()));
    }

    #[test]
    fn unknown_models_go_to_any_usable_replica() {
        let v = view(&[(1, 0, 1)]);
        let mut rng = fastrand::Rng::with_seed(3);
        assert_eq!(
            v.pick("nobody-has-it", &[], Instant::now(), &mut rng),
            Some(addr(1).id())
        );
    }

    #[test]
    fn consecutive_failures_eject_for_growing_times() {
        let mut v = view(&[(1, 0, 1)]);
        let config = OutlierConfig {
            consecutive_errors: 2,
            base_ejection: Duration::from_secs(1),
        };
        let now = Instant::now();
        let id = addr(1).id();
        assert!(!v.record_failure(&id, now, &config));
        v.record_success(&id, "m", Duration::from_millis(1));
        assert!(
            !v.record_failure(&id, now, &config),
            "a success resets the count"
        );
        assert!(v.record_failure(&id, now, &config));
        assert_eq!(
            v.replicas[&id].ejected_until,
            Some(now + Duration::from_secs(1))
        );
        assert!(!v.record_failure(&id, now, &config));
        assert!(v.record_failure(&id, now, &config));
        assert_eq!(
            v.replicas[&id].ejected_until,
            Some(now + Duration::from_secs(2))
        );
    }

    #[test]
    fn a_lost_hedge_makes_a_replica_look_slow_then_fades() {
        let mut v = view(&[(1, 0, 1_000_000), (2, 0, 1_000_000)]);
        let now = Instant::now();
        v.record_lost_hedge(&addr(1).id(), "m", Duration::from_millis(100), now);
        let r1 = &v.replicas[&addr(1).id()];
        assert!((v.predicted(r1, "m", now) - 0.1).abs() < 1e-9);
        let later = now + PENALTY_HALF_LIFE * 2;
        assert!((v.predicted(r1, "m", later) - 0.025).abs() < 1e-9);
        assert_eq!(v.backup("m", &addr(2).id(), now), Some(addr(1).id()));
        assert_eq!(v.backup("m", &addr(1).id(), now), Some(addr(2).id()));
    }

    #[test]
    fn hedge_budget_caps_the_extra_requests() {
        let config = HedgeConfig {
            delay: HedgeDelay::Fixed(Duration::from_millis(1)),
            max_ratio: 0.05,
            burst: 2.0,
            window: Duration::from_secs(10),
            min_samples: 20,
            min_delay: Duration::from_millis(1),
        };
        let mut v = View::new(config.window);
        let t0 = Instant::now();
        let mut hedges = 0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i);
            v.earn_hedge(now);
            if v.take_hedge(now, &config) {
                hedges += 1;
            }
        }
        assert!(
            (50..=52).contains(&hedges),
            "{hedges} hedges for 1000 requests"
        );
    }

    /// Hedging after `delay`, trusting a percentile from 20 latencies on.
    fn hedge_after(delay: HedgeDelay) -> HedgeConfig {
        HedgeConfig {
            delay,
            max_ratio: 0.05,
            burst: 2.0,
            window: Duration::from_secs(10),
            min_samples: 20,
            min_delay: Duration::from_micros(100),
        }
    }

    #[test]
    fn p95_delay_needs_enough_samples() {
        let config = hedge_after(HedgeDelay::P95);
        let mut v = View::default();
        for i in 1..=19u64 {
            v.record_success("x", "m", Duration::from_millis(i));
        }
        assert_eq!(v.hedge_delay("m", &config), None);
        for i in 20..=100u64 {
            v.record_success("x", "m", Duration::from_millis(i));
        }
        let d = v.hedge_delay("m", &config).unwrap();
        assert!(
            d >= Duration::from_millis(90) && d <= Duration::from_millis(97),
            "{d:?}"
        );
    }

    #[test]
    fn p99_delay_needs_a_hundred_samples_and_reads_the_p99() {
        let config = hedge_after(HedgeDelay::Percentile(990));
        let mut v = View::default();
        // 1..=99 ms: 99 samples, one short of a sample above the p99
        for i in 1..=99u64 {
            v.record_success("x", "m", Duration::from_millis(i));
        }
        assert_eq!(v.hedge_delay("m", &config), None);
        // 1..=200 ms, read as last sorted (every 32 latencies: at 1, 33, ..., 193):
        // the p99 of 1..=193 ms by nearest rank is index 191, 192 ms
        for i in 100..=200u64 {
            v.record_success("x", "m", Duration::from_millis(i));
        }
        let d = v.hedge_delay("m", &config).unwrap();
        assert_eq!(d, Duration::from_millis(192));
        // the p95 of the same window is lower
        let p95 = hedge_after(HedgeDelay::P95);
        assert_eq!(v.hedge_delay("m", &p95), Some(Duration::from_millis(184)));
    }

    #[test]
    fn hedge_delays_parse() {
        assert_eq!(HedgeDelay::parse("off"), Ok(HedgeDelay::Off));
        assert_eq!(HedgeDelay::parse("p95"), Ok(HedgeDelay::P95));
        assert_eq!(HedgeDelay::parse("p99"), Ok(HedgeDelay::Percentile(990)));
        assert_eq!(HedgeDelay::parse("p99.5"), Ok(HedgeDelay::Percentile(995)));
        assert_eq!(
            HedgeDelay::parse("2.5"),
            Ok(HedgeDelay::Fixed(Duration::from_micros(2500)))
        );
        for bad in [
            "p", "p40", "p99.9", "p100", "p99.95", "px", "-1", "nan", "inf", "fast",
        ] {
            let e = HedgeDelay::parse(bad).unwrap_err();
            assert!(e.contains("percentile") && e.contains(bad), "{bad}: {e}");
        }
    }
}
