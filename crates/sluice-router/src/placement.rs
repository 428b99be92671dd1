//! Which replicas hold which models: pure functions of the observed view, so two
//! routers that poll the same replicas make the same decisions without talking.
//!
//! - **First copy** (a model no replica holds): among the usable replicas whose
//!   repository lists it, the one with the most free memory budget; ties (such as "no
//!   budget anywhere") go to the highest rendezvous score `xxh3(model, replica id)`, so
//!   different models spread over the replicas and every router names the same one.
//! - **Copies by rate** (ModelMesh-style): a model wants `ceil(rate / per_copy)` copies,
//!   at least one and at most one per usable replica, where `rate` is the growth of the
//!   replicas' own success counters (the same for every router) and `per_copy` is
//!   `--copy-rate-per-min` (ModelMesh's default scale-up threshold, 2000 requests per
//!   minute). Missing copies go to non-holders in rendezvous order, skipping replicas
//!   whose free budget is known to be smaller than the model.
//! - Copies are never removed by the router: a replica under its budget evicts the
//!   least recently used model itself, and the next poll shows it.

use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64;

use crate::view::{HoldState, Replica, View};

/// The rendezvous (highest random weight) score of `model` on `replica`.
pub fn score(model: &str, replica: &str) -> u64 {
    let mut key = Vec::with_capacity(model.len() + replica.len() + 1);
    key.extend_from_slice(model.as_bytes());
    key.push(0);
    key.extend_from_slice(replica.as_bytes());
    xxh3_64(&key)
}

/// The largest memory any replica measured for `model` (0: never loaded anywhere).
pub fn size_of(view: &View, model: &str) -> u64 {
    view.replicas
        .values()
        .filter_map(|r| r.holdings.get(model))
        .map(|h| h.memory_bytes)
        .max()
        .unwrap_or(0)
}

fn candidates<'a>(view: &'a View, model: &str, now: Instant) -> Vec<&'a Replica> {
    view.knowers(model, now)
}

/// Where the first copy of `model` goes.
pub fn first_copy(view: &View, model: &str, now: Instant) -> Option<String> {
    candidates(view, model, now)
        .into_iter()
        .max_by_key(|r| (r.free_budget(), score(model, &r.addr.id())))
        .map(|r| r.addr.id())
}

/// Copies `model` wants at `rate_per_min` with `usable` replicas.
pub fn desired_copies(rate_per_min: f64, per_copy: f64, usable: usize) -> usize {
    let want = if per_copy > 0.0 && rate_per_min > 0.0 {
        (rate_per_min / per_copy).ceil() as usize
    } else {
        1
    };
    want.clamp(1, usable.max(1))
}

/// The replicas that should load `model` now (beyond those holding or loading it).
pub fn missing_copies(view: &View, model: &str, per_copy: f64, now: Instant) -> Vec<String> {
    let all = candidates(view, model, now);
    let have = all
        .iter()
        .filter(|r| {
            r.holdings
                .get(model)
                .is_some_and(|h| h.state != HoldState::Absent)
        })
        .count();
    if have == 0 {
        return Vec::new(); // the first copy is loaded on demand
    }
    let rate = view.models.get(model).map_or(0.0, |m| m.rate_per_min);
    let want = desired_copies(rate, per_copy, all.len());
    if want <= have {
        return Vec::new();
    }
    let size = size_of(view, model);
    let mut others: Vec<&Replica> = all
        .into_iter()
        .filter(|r| {
            r.holdings
                .get(model)
                .is_some_and(|h| h.state == HoldState::Absent)
        })
        .filter(|r| r.free_budget() >= size)
        .collect();
    others.sort_by_key(|r| std::cmp::Reverse(score(model, &r.addr.id())));
    others
        .into_iter()
        .take(want - have)
        .map(|r| r.addr.id())
        .collect()
}

/// The placement report of every model some replica lists (for `GET /v2/router/placement`).
pub fn report(view: &View, per_copy: f64, now: Instant) -> serde_json::Value {
    let mut names: Vec<&String> = view
        .replicas
        .values()
        .flat_map(|r| r.holdings.keys())
        .collect();
    names.sort();
    names.dedup();
    let models: Vec<serde_json::Value> = names
        .into_iter()
        .map(|m| {
            let holders: Vec<String> = view.holders(m, now).iter().map(|r| r.addr.id()).collect();
            let rate = view.models.get(m).map_or(0.0, |s| s.rate_per_min);
            let mut ranked: Vec<&Replica> = candidates(view, m, now);
            ranked.sort_by_key(|r| std::cmp::Reverse(score(m, &r.addr.id())));
            serde_json::json!({
                "name": m,
                "holders": holders,
                "first_copy": first_copy(view, m, now),
                "desired_copies": desired_copies(rate, per_copy, candidates(view, m, now).len()),
                "add": missing_copies(view, m, per_copy, now),
                "rendezvous_order": ranked.iter().map(|r| r.addr.id()).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "models": models })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Health, Holding, ReplicaAddr};

    fn addr(port: u16) -> ReplicaAddr {
        ReplicaAddr {
            host: "10.0.0.2".into(),
            http_port: port,
            grpc_port: 1,
        }
    }

    fn held(state: HoldState, memory: u64) -> Holding {
        Holding {
            state,
            in_flight: 0,
            service_ns: 0,
            success: 0,
            executions: 0,
            memory_bytes: memory,
        }
    }

    /// Replicas `ports` (in this order) with budgets, each listing `m` and `n`.
    fn view(ports: &[(u16, Option<u64>, u64)]) -> View {
        let mut v = View::default();
        v.set_replicas(&ports.iter().map(|p| addr(p.0)).collect::<Vec<_>>());
        for &(port, budget, used) in ports {
            let r = v.replicas.get_mut(&addr(port).id()).unwrap();
            r.health = Health::Up;
            r.memory_budget = budget;
            r.memory_used = used;
            for m in ["m", "n"] {
                r.holdings.insert(m.into(), held(HoldState::Absent, 0));
            }
        }
        v
    }

    #[test]
    fn first_copy_goes_to_the_most_free_budget() {
        let v = view(&[(1, Some(100), 90), (2, Some(100), 10), (3, Some(200), 150)]);
        assert_eq!(first_copy(&v, "m", Instant::now()), Some(addr(2).id()));
    }

    #[test]
    fn without_budgets_rendezvous_hashing_decides_and_spreads() {
        let v = view(&[(1, None, 0), (2, None, 0), (3, None, 0)]);
        let now = Instant::now();
        let pick = |m: &str| first_copy(&v, m, now).unwrap();
        let best = |m: &str| {
            (1..=3)
                .map(|p| addr(p).id())
                .max_by_key(|id| score(m, id))
                .unwrap()
        };
        assert_eq!(pick("m"), best("m"));
        assert_eq!(pick("n"), best("n"));
        // Many models spread over all three replicas.
        let mut v = view(&[(1, None, 0), (2, None, 0), (3, None, 0)]);
        let names: Vec<String> = (0..60).map(|i| format!("model-{i}")).collect();
        for r in v.replicas.values_mut() {
            for n in &names {
                r.holdings.insert(n.clone(), held(HoldState::Absent, 0));
            }
        }
        let mut counts = std::collections::HashMap::new();
        for n in &names {
            *counts.entry(first_copy(&v, n, now).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| c >= 10), "{counts:?}");
    }

    #[test]
    fn two_routers_agree_whatever_order_they_discovered_replicas_in() {
        let a = view(&[(1, Some(100), 0), (2, Some(100), 0), (3, Some(100), 0)]);
        let b = view(&[(3, Some(100), 0), (1, Some(100), 0), (2, Some(100), 0)]);
        let now = Instant::now();
        for i in 0..50 {
            let m = format!("x{i}");
            let mut a = view(&[(1, Some(100), 0), (2, Some(100), 0), (3, Some(100), 0)]);
            let mut b = view(&[(3, Some(100), 0), (1, Some(100), 0), (2, Some(100), 0)]);
            for v in [&mut a, &mut b] {
                for r in v.replicas.values_mut() {
                    r.holdings.insert(m.clone(), held(HoldState::Absent, 0));
                }
            }
            assert_eq!(first_copy(&a, &m, now), first_copy(&b, &m, now));
        }
        assert_eq!(report(&a, 2000.0, now), report(&b, 2000.0, now));
    }

    #[test]
    fn copies_follow_the_rate_and_fit_the_budget() {
        assert_eq!(desired_copies(0.0, 2000.0, 3), 1);
        assert_eq!(desired_copies(1999.0, 2000.0, 3), 1);
        assert_eq!(desired_copies(2001.0, 2000.0, 3), 2);
        assert_eq!(desired_copies(50_000.0, 2000.0, 3), 3);
        let mut v = view(&[(1, Some(1000), 0), (2, Some(1000), 900), (3, Some(1000), 0)]);
        let now = Instant::now();
        v.replicas
            .get_mut(&addr(1).id())
            .unwrap()
            .holdings
            .insert("m".into(), held(HoldState::Ready, 500));
        assert!(
            missing_copies(&v, "m", 2000.0, now).is_empty(),
            "one copy is enough at rate 0"
        );
        v.models.entry("m".into()).or_default().rate_per_min = 5000.0;
        // Three wanted, but replica 2 has only 100 bytes free for a 500-byte model.
        assert_eq!(missing_copies(&v, "m", 2000.0, now), vec![addr(3).id()]);
        // A model nobody holds gets no copies by rate: its first copy is on demand.
        v.models.entry("n".into()).or_default().rate_per_min = 5000.0;
        assert!(missing_copies(&v, "n", 2000.0, now).is_empty());
    }
}
