//! `GET /v2/sluice/load`: what a router needs from this replica in one small read —
//! every model of the repository with its state, and for each ready version the
//! requests in flight (queued or running), the queue length, the learned service time
//! per request and its memory, plus the replica's memory use and budget.
//!
//! Key decision: one call answers "what do you hold and how busy are you", so a router
//! polling many replicas every few hundred milliseconds makes one request per replica
//! and never parses the Prometheus text. Only atomics and the registry's snapshot are
//! read; nothing here takes a lock on the request path.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_runtime::ModelState;
use std::sync::atomic::Ordering;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v2/sluice/load", get(load))
}

async fn load(State(s): State<AppState>) -> Json<Value> {
    let runtime = &s.runtime;
    let stats = runtime.stats(None, None).unwrap_or_default();
    let mut models = Vec::new();
    for entry in runtime.index() {
        let mut row = json!({
            "name": entry.name,
            "state": entry.state.as_str(),
        });
        if let Some(v) = entry.version {
            row["version"] = json!(v);
        }
        if entry.state == ModelState::Ready {
            if let Some(v) = stats
                .iter()
                .find(|v| v.name == entry.name && Some(v.version) == entry.version)
            {
                let p = &v.stats;
                let (runs, input) = p.compute_input.get();
                let (_, infer) = p.compute_infer.get();
                let (_, output) = p.compute_output.get();
                let service_ns = (input + infer + output).checked_div(runs).unwrap_or(0);
                row["in_flight"] = json!(p.in_flight());
                row["queue"] = json!(v.queue_len);
                row["service_ns"] = json!(service_ns);
                row["success"] = json!(p.success.get().0);
                row["executions"] = json!(p.executions.load(Ordering::Relaxed));
                row["memory_bytes"] = json!(v.memory_bytes);
            }
        }
        models.push(row);
    }
    let (used, budget) = runtime.memory_usage();
    Json(json!({
        "ready": runtime.ready(),
        "memory_used_bytes": used,
        "memory_budget_bytes": budget,
        "models": models,
    }))
}
