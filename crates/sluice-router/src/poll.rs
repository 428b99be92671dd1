//! Discovery and the replicas' own view of themselves: the replica set comes from a
//! static list or DNS (re-resolved every refresh), and every poll interval each
//! replica's `GET /v2/sluice/load` says what it holds and how busy it is. A failed or
//! slow probe marks the replica down; the next good one brings it back. After each
//! round the per-model request rates are updated from the replicas' success counters
//! and missing copies (by rate) are loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::config::Discovery;
use crate::view::{Health, HoldState, Holding, ReplicaAddr};
use crate::Shared;

/// Resolves the replica set once.
pub async fn discover(discovery: &Discovery) -> Result<Vec<ReplicaAddr>, String> {
    match discovery {
        Discovery::Static(list) => Ok(list.clone()),
        Discovery::Dns {
            name,
            http_port,
            grpc_port,
            ..
        } => {
            let mut addrs: Vec<ReplicaAddr> = tokio::net::lookup_host((name.as_str(), *http_port))
                .await
                .map_err(|e| format!("cannot resolve {name}: {e}"))?
                .map(|a| ReplicaAddr {
                    host: a.ip().to_string(),
                    http_port: *http_port,
                    grpc_port: *grpc_port,
                })
                .collect();
            addrs.sort();
            addrs.dedup();
            Ok(addrs)
        }
    }
}

/// Runs discovery and polling until the process ends.
pub async fn run(shared: Arc<Shared>) {
    let refresh = match &shared.config.discovery {
        Discovery::Static(_) => None,
        Discovery::Dns { refresh, .. } => Some(*refresh),
    };
    let mut last_discovery: Option<Instant> = None;
    let mut tick = tokio::time::interval(shared.config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = match (last_discovery, refresh) {
            (None, _) => true,
            (Some(at), Some(every)) => at.elapsed() >= every,
            (Some(_), None) => false,
        };
        if due {
            match discover(&shared.config.discovery).await {
                Ok(addrs) => {
                    let mut view = shared.view.lock().expect("view lock");
                    view.set_replicas(&addrs);
                    last_discovery = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replica discovery failed; keeping the last set");
                }
            }
        }
        poll_once(&shared).await;
    }
}

/// Probes every replica once, concurrently, and applies the results.
pub async fn poll_once(shared: &Arc<Shared>) {
    let addrs: Vec<ReplicaAddr> = {
        let view = shared.view.lock().expect("view lock");
        view.replicas.values().map(|r| r.addr.clone()).collect()
    };
    let probes = addrs.into_iter().map(|addr| {
        let shared = shared.clone();
        async move {
            let result = tokio::time::timeout(shared.config.probe_timeout, probe(&shared, &addr))
                .await
                .unwrap_or_else(|_| Err("probe timed out".to_string()));
            (addr, result)
        }
    });
    let results = futures_join_all(probes).await;
    let now = Instant::now();
    {
        let mut view = shared.view.lock().expect("view lock");
        for (addr, result) in results {
            let Some(r) = view.replicas.get_mut(&addr.id()) else {
                continue;
            };
            match result {
                Ok(load) => {
                    if r.health != Health::Up {
                        tracing::info!(replica = %addr.id(), "replica up");
                    }
                    r.health = Health::Up;
                    r.holdings = load.holdings;
                    r.memory_used = load.memory_used;
                    r.memory_budget = load.memory_budget;
                    r.ready = load.ready;
                }
                Err(e) => {
                    if r.health != Health::Down {
                        tracing::warn!(replica = %addr.id(), error = %e, "replica down");
                    }
                    r.health = Health::Down;
                }
            }
        }
        // Request rates from the replicas' own counters (the same for every router).
        let mut totals: HashMap<String, u64> = HashMap::new();
        for r in view.replicas.values().filter(|r| r.health == Health::Up) {
            for (m, h) in &r.holdings {
                *totals.entry(m.clone()).or_insert(0) += h.success;
            }
        }
        for (m, total) in totals {
            let stats = view.models.entry(m).or_default();
            if let Some((before, at)) = stats.last_success {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    let rate = total.saturating_sub(before) as f64 * 60.0 / secs;
                    stats.rate_per_min = 0.5 * stats.rate_per_min + 0.5 * rate;
                }
            }
            stats.last_success = Some((total, now));
        }
    }
    if shared.config.placement.enabled {
        let adds: Vec<(String, String)> = {
            let view = shared.view.lock().expect("view lock");
            let models: Vec<String> = view.models.keys().cloned().collect();
            models
                .into_iter()
                .flat_map(|m| {
                    crate::placement::missing_copies(
                        &view,
                        &m,
                        shared.config.placement.copy_rate_per_min,
                        now,
                    )
                    .into_iter()
                    .map(move |r| (m.clone(), r))
                })
                .collect()
        };
        for (model, replica) in adds {
            let shared = shared.clone();
            tokio::spawn(async move {
                tracing::info!(model, replica, "adding a copy for the request rate");
                if let Err(e) = load(&shared, &replica, &model).await {
                    tracing::warn!(model, replica, error = %e, "adding a copy failed");
                }
            });
        }
    }
}

/// Awaits all futures (a tiny `join_all`; the replica count is small).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// What one probe learned.
pub struct Load {
    pub ready: bool,
    pub holdings: HashMap<String, Holding>,
    pub memory_used: u64,
    pub memory_budget: Option<u64>,
}

/// Sends one request to a replica and reads its whole answer.
async fn send(
    shared: &Shared,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let response = shared
        .http
        .request(request)
        .await
        .map_err(|e| crate::with_causes(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

async fn get_json(shared: &Shared, addr: &ReplicaAddr, path: &str) -> Result<Value, String> {
    let uri = format!("{}://{}{path}", shared.scheme, addr.id());
    let request = hyper::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let (status, body) = send(shared, request).await?;
    if !status.is_success() {
        return Err(format!("{path} answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{path}: {e}"))
}

async fn probe(shared: &Shared, addr: &ReplicaAddr) -> Result<Load, String> {
    let v = get_json(shared, addr, "/v2/sluice/load").await?;
    Ok(parse_load(&v))
}

/// Reads a `/v2/sluice/load` body. Several versions of one model count as one holding
/// (the ready one with the most work wins; routing picks no version).
pub fn parse_load(v: &Value) -> Load {
    let mut holdings: HashMap<String, Holding> = HashMap::new();
    for m in v["models"].as_array().into_iter().flatten() {
        let Some(name) = m["name"].as_str() else {
            continue;
        };
        let state = match m["state"].as_str() {
            Some("READY") => HoldState::Ready,
            Some("LOADING") => HoldState::Loading,
            _ => HoldState::Absent,
        };
        let u = |k: &str| m[k].as_u64().unwrap_or(0);
        let h = Holding {
            state,
            in_flight: u("in_flight"),
            service_ns: u("service_ns"),
            success: u("success"),
            executions: u("executions"),
            memory_bytes: u("memory_bytes"),
        };
        holdings
            .entry(name.to_string())
            .and_modify(|old| {
                if h.state == HoldState::Ready {
                    if old.state == HoldState::Ready {
                        old.in_flight += h.in_flight;
                        old.success += h.success;
                        old.executions += h.executions;
                        old.memory_bytes += h.memory_bytes;
                        old.service_ns = old.service_ns.max(h.service_ns);
                    } else {
                        *old = h.clone();
                    }
                }
            })
            .or_insert(h);
    }
    Load {
        ready: v["ready"].as_bool().unwrap_or(true),
        holdings,
        memory_used: v["memory_used_bytes"].as_u64().unwrap_or(0),
        memory_budget: v["memory_budget_bytes"].as_u64(),
    }
}

/// Loads `model` on `replica` through its repository API, once at a time per pair
/// (concurrent callers wait for the same load), and marks it held on success.
pub async fn load(shared: &Arc<Shared>, replica: &str, model: &str) -> Result<(), String> {
    let key = (replica.to_string(), model.to_string());
    let cell = {
        let mut loads = shared.loads.lock().expect("loads lock");
        loads
            .entry(key.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    };
    let _turn = cell.lock().await;
    let (addr, held) = {
        let view = shared.view.lock().expect("view lock");
        let r = view.replicas.get(replica).ok_or("replica left")?;
        (r.addr.clone(), r.holds_ready(model))
    };
    if held {
        return Ok(()); // the caller before us loaded it
    }
    {
        let mut view = shared.view.lock().expect("view lock");
        if let Some(h) = view
            .replicas
            .get_mut(replica)
            .and_then(|r| r.holdings.get_mut(model))
        {
            h.state = HoldState::Loading;
        }
    }
    shared.metrics.loads.inc();
    tracing::info!(model, replica, "loading model");
    let uri = format!(
        "{}://{}/v2/repository/models/{model}/load",
        shared.scheme,
        addr.id()
    );
    let request = hyper::Request::post(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .map_err(|e| e.to_string())?;
    let outcome = async {
        let (status, body) = send(shared, request).await?;
        if status.is_success() {
            Ok(())
        } else {
            let text = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            Err(format!("{status}: {text}"))
        }
    }
    .await;
    let mut view = shared.view.lock().expect("view lock");
    if let Some(h) = view
        .replicas
        .get_mut(replica)
        .and_then(|r| r.holdings.get_mut(model))
    {
        h.state = if outcome.is_ok() {
            HoldState::Ready
        } else {
            HoldState::Absent
        };
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dns_discovery_gives_every_address_with_the_replica_ports() {
        let d = Discovery::Dns {
            name: "localhost".into(),
            http_port: 8000,
            grpc_port: 8001,
            refresh: std::time::Duration::from_secs(1),
        };
        let addrs = discover(&d).await.expect("localhost resolves");
        assert!(
            addrs
                .iter()
                .any(|a| a.host == "127.0.0.1" && a.http_port == 8000 && a.grpc_port == 8001),
            "{addrs:?}"
        );
        let mut sorted = addrs.clone();
        sorted.dedup();
        assert_eq!(sorted, addrs, "no duplicates");
    }

    #[test]
    fn load_bodies_are_read_per_model_and_versions_merge() {
        let v = serde_json::json!({
            "ready": false,
            "memory_used_bytes": 10,
            "memory_budget_bytes": 100,
            "models": [
                {"name": "a", "version": 1, "state": "READY", "in_flight": 2, "queue": 1,
                 "service_ns": 500, "success": 7, "executions": 3, "memory_bytes": 4},
                {"name": "a", "version": 2, "state": "READY", "in_flight": 1, "queue": 0,
                 "service_ns": 900, "success": 1, "executions": 1, "memory_bytes": 5},
                {"name": "b", "state": "UNAVAILABLE"},
                {"name": "c", "state": "LOADING"},
                {"state": "READY"}
            ]
        });
        let load = parse_load(&v);
        assert!(!load.ready);
        assert_eq!((load.memory_used, load.memory_budget), (10, Some(100)));
        let a = &load.holdings["a"];
        assert_eq!(a.state, HoldState::Ready);
        assert_eq!(
            (a.in_flight, a.success, a.memory_bytes, a.service_ns),
            (3, 8, 9, 900)
        );
        assert_eq!(load.holdings["b"].state, HoldState::Absent);
        assert_eq!(load.holdings["c"].state, HoldState::Loading);
        assert_eq!(load.holdings.len(), 3);
        let none = parse_load(&serde_json::json!({"models": []}));
        assert!(none.ready && none.memory_budget.is_none());
    }
}
