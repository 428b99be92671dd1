//! The router's HTTP front end: KServe v2 paths are forwarded to a replica chosen by
//! model (infer requests through [`forward::route`], with hedging), health answers for
//! the router itself (ready when at least one replica is up), the repository index is
//! the union of the replicas' indexes, and `/metrics`, `/v2/router/state` and
//! `/v2/router/placement` describe the router.
//!
//! Key decision: bodies travel as the bytes that arrived (JSON or Triton's binary
//! tensor extension; compressed ones too) and answers as the bytes the replica sent,
//! status and headers included. The only rewrite is a request's `timeout` parameter,
//! set to the time left when the router forwards it, in the JSON header part only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};

use crate::forward::{self, Kind, RouteError};
use crate::view::{HoldState, Target};
use crate::Shared;

const HEADER_LENGTH: &str = "inference-header-content-length";

pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v2/router/state", get(state))
        .route("/v2/router/placement", get(placement))
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .route("/v2/models/stats", get(stats))
        .route("/v2/models/{model}/stats", get(stats))
        .route("/v2/models/{model}/versions/{version}/stats", get(stats))
        .fallback(proxy)
        .with_state(shared)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

fn route_error(shared: &Shared, e: &RouteError) -> Response {
    shared.metrics.errors.inc();
    let status = match e {
        RouteError::NoReplica(_) | RouteError::LoadFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        RouteError::Failed(_) => StatusCode::BAD_GATEWAY,
        RouteError::Deadline => StatusCode::GATEWAY_TIMEOUT,
    };
    error(status, e)
}

async fn live() -> Response {
    StatusCode::OK.into_response()
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    if s.up_count() > 0 {
        StatusCode::OK.into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "no replica is up")
    }
}

/// An answer of a replica, forwarded as it is: status, headers (less hop-by-hop
/// ones) and the body streamed through, never collected.
pub struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl Answer {
    /// The whole body (for answers the router reads itself: index, statistics).
    async fn bytes(self) -> Result<(StatusCode, Bytes), String> {
        let body = axum::body::to_bytes(self.body, usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
        Ok((self.status, body))
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut headers = self.headers;
        strip_hop_by_hop(&mut headers, false);
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = headers;
        response
    }
}

/// Removes the headers that belong to one connection (and, for requests, `host` and
/// `content-length`, which the client side sets for the body it sends).
fn strip_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    if request {
        headers.remove(axum::http::header::HOST);
        headers.remove(axum::http::header::CONTENT_LENGTH);
    }
}

/// A request to forward, read once.
#[derive(Clone)]
struct Outgoing {
    method: Method,
    path: PathAndQuery,
    /// Without hop-by-hop headers.
    headers: HeaderMap,
    body: Bytes,
}

impl Outgoing {
    async fn send(&self, shared: &Shared, target: &Target) -> Result<Answer, String> {
        let mut parts = axum::http::uri::Parts::default();
        parts.scheme = Some(shared.scheme.clone());
        parts.authority = Some(target.http.clone());
        parts.path_and_query = Some(self.path.clone());
        let uri = axum::http::Uri::from_parts(parts).map_err(|e| e.to_string())?;
        let mut request = hyper::Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers.clone();
        let response = shared
            .http
            .request(request)
            .await
            .map_err(|e| format!("{}: {}", target.id, crate::with_causes(&e)))?;
        let (parts, body) = response.into_parts();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: Body::new(body),
        })
    }

    /// The same request with its `timeout` parameter set to `left` (if it had one).
    fn with_timeout(&self, left: Duration) -> Option<Outgoing> {
        let (body, header_len) = rewrite_timeout(&self.body, self.header_len(), left)?;
        let mut out = self.clone();
        out.body = body;
        if let Some(n) = header_len {
            out.headers
                .insert(HEADER_LENGTH, HeaderValue::from(n as u64));
        }
        Some(out)
    }

    fn header_len(&self) -> Option<usize> {
        self.headers
            .get(HEADER_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    }

    fn compressed(&self) -> bool {
        self.headers
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes() != b"identity")
    }
}

fn json_part(body: &Bytes, header_len: Option<usize>) -> Option<&[u8]> {
    match header_len {
        Some(n) if n <= body.len() => Some(&body[..n]),
        Some(_) => None,
        None => Some(&body[..]),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The request's `parameters.timeout` (microseconds), when its JSON part has one.
fn timeout_of(body: &Bytes, header_len: Option<usize>) -> Option<Duration> {
    let json = json_part(body, header_len)?;
    if !contains(json, b"\"timeout\"") {
        return None;
    }
    let v: Value = serde_json::from_slice(json).ok()?;
    v["parameters"]["timeout"]
        .as_u64()
        .map(Duration::from_micros)
}

/// The body with `parameters.timeout` replaced by `left` (binary tail untouched) and
/// the new JSON length when the binary extension is used; `None` when there was no
/// timeout to rewrite.
fn rewrite_timeout(
    body: &Bytes,
    header_len: Option<usize>,
    left: Duration,
) -> Option<(Bytes, Option<usize>)> {
    let json = json_part(body, header_len)?;
    if !contains(json, b"\"timeout\"") {
        return None;
    }
    let mut v: Value = serde_json::from_slice(json).ok()?;
    v["parameters"].get("timeout")?;
    let micros = u64::try_from(left.as_micros()).unwrap_or(u64::MAX).max(1);
    v["parameters"]["timeout"] = json!(micros);
    let mut out = serde_json::to_vec(&v).ok()?;
    let n = out.len();
    out.extend_from_slice(&body[json.len()..]);
    Some((Bytes::from(out), header_len.map(|_| n)))
}

/// The model a `/v2/models/{m}/...` path names (not `/v2/models/stats`).
fn model_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?;
    let name = rest.split('/').next()?;
    let server_wide = name.is_empty() || (name == "stats" && rest == "stats");
    (!server_wide).then_some(name)
}

async fn read(request: Request, limit: usize) -> Result<Outgoing, Response> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    })?;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, true);
    Ok(Outgoing {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        headers,
        body,
    })
}

/// Every other request: by model when the path names one, else to any replica.
async fn proxy(State(s): State<Arc<Shared>>, request: Request) -> Response {
    let arrived = Instant::now();
    let out = match read(request, s.config.max_body_bytes).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let path = out.path.path();
    let model = model_of(path);
    let is_infer = out.method == Method::POST && path.ends_with("/infer");
    if is_infer {
        s.metrics.requests.inc();
    }
    let deadline = if is_infer && !out.compressed() {
        timeout_of(&out.body, out.header_len()).map(|t| arrived + t)
    } else {
        None
    };
    let (key, kind) = match model {
        Some(m) if is_infer => (m.to_string(), Kind::Infer),
        Some(m) => (m.to_string(), Kind::Other),
        // Server-wide paths (metadata, logging): any replica.
        None => (String::new(), Kind::Other),
    };
    let out = Arc::new(out);
    let shared = s.clone();
    let send = move |target: Arc<Target>, left: Option<Duration>| {
        let shared = shared.clone();
        let out = out.clone();
        async move {
            let rewritten = match (left, deadline) {
                (Some(left), Some(_)) => out.with_timeout(left),
                _ => None,
            };
            rewritten
                .as_ref()
                .unwrap_or(&out)
                .send(&shared, &target)
                .await
        }
    };
    match forward::route(&s, &key, deadline, kind, send).await {
        Ok(answer) => answer.into_response(),
        Err(e) => route_error(&s, &e),
    }
}

async fn post_json(
    shared: &Shared,
    target: &Target,
    path: &str,
    body: Bytes,
) -> Result<Answer, String> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    Outgoing {
        method: Method::POST,
        path: path.parse().map_err(|e| format!("{path}: {e}"))?,
        headers,
        body,
    }
    .send(shared, target)
    .await
}

fn usable(shared: &Shared) -> Vec<Arc<Target>> {
    let view = shared.view.lock().expect("view lock");
    let now = Instant::now();
    view.replicas
        .values()
        .filter(|r| r.usable(now))
        .map(|r| r.target.clone())
        .collect()
}

/// Statistics (Triton's extension) of one model, one version or all: asked of every
/// usable replica that holds the model (every usable replica for all models) and added
/// up ([`crate::stats`]). When no replica answers with statistics, the first answer
/// (a replica's 404 or 400) is passed through.
async fn stats(State(s): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let targets: Vec<Arc<Target>> = {
        let view = s.view.lock().expect("view lock");
        let now = Instant::now();
        match model_of(&path) {
            Some(m) => {
                let holders: Vec<Arc<Target>> = view
                    .holders(m, now)
                    .iter()
                    .map(|r| r.target.clone())
                    .collect();
                if holders.is_empty() {
                    // Nobody holds it: any replica says why (unknown, not loaded).
                    view.replicas
                        .values()
                        .find(|r| r.usable(now))
                        .map(|r| r.target.clone())
                        .into_iter()
                        .collect()
                } else {
                    holders
                }
            }
            None => view
                .replicas
                .values()
                .filter(|r| r.usable(now))
                .map(|r| r.target.clone())
                .collect(),
        }
    };
    if targets.is_empty() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no replica is up");
    }
    let calls: Vec<_> = targets
        .into_iter()
        .map(|addr| {
            let s = s.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let out = Outgoing {
                    method: Method::GET,
                    path: path.parse().map_err(|e| format!("{path}: {e}"))?,
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                };
                out.send(&s, &addr).await?.bytes().await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    let mut first_answer = None;
    let mut failure = None;
    for call in calls {
        match call.await {
            Ok(Ok((status, body))) if status.is_success() => {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    bodies.push(v);
                }
            }
            Ok(Ok(answer)) => {
                first_answer.get_or_insert(answer);
            }
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    if bodies.is_empty() {
        return match (first_answer, failure) {
            (Some((status, body)), _) => {
                (status, [("content-type", "application/json")], body).into_response()
            }
            (None, Some(e)) => error(StatusCode::BAD_GATEWAY, e),
            (None, None) => error(StatusCode::BAD_GATEWAY, "no replica answered"),
        };
    }
    Json(crate::stats::merge_json(&bodies)).into_response()
}

/// The union of the replicas' indexes: one row per model and version, with the best
/// state any replica has (READY over LOADING over the rest).
async fn index(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let addrs = usable(&s);
    if addrs.is_empty() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no replica is up");
    }
    let mut calls = Vec::new();
    for addr in addrs {
        let s = s.clone();
        let body = body.clone();
        calls.push(tokio::spawn(async move {
            match post_json(&s, &addr, "/v2/repository/index", body).await {
                Ok(a) => a.bytes().await,
                Err(e) => Err(e),
            }
        }));
    }
    let rank = |state: &str| match state {
        "READY" => 3,
        "LOADING" => 2,
        "UNLOADING" => 1,
        _ => 0,
    };
    let mut rows: std::collections::BTreeMap<(String, String), Value> = Default::default();
    let mut last_error = None;
    for call in calls {
        match call.await {
            Ok(Ok((status, body))) if status.is_success() => {
                let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&body) else {
                    continue;
                };
                for row in list {
                    let name = row["name"].as_str().unwrap_or_default().to_string();
                    let version = row["version"].as_str().unwrap_or_default().to_string();
                    let state = row["state"].as_str().unwrap_or_default().to_string();
                    let slot = rows.entry((name, version)).or_insert_with(|| row.clone());
                    if rank(&state) > rank(slot["state"].as_str().unwrap_or_default()) {
                        *slot = row;
                    }
                }
            }
            Ok(Ok(answer)) => last_error = Some(answer),
            _ => {}
        }
    }
    if rows.is_empty() {
        if let Some((status, body)) = last_error {
            return (status, [("content-type", "application/json")], body).into_response();
        }
    }
    Json(Value::Array(rows.into_values().collect())).into_response()
}

/// Load through the router: a model nobody holds is placed (first copy); a held model
/// is (re)loaded on every holder, as a load call on one server reloads it.
async fn load(State(s): State<Arc<Shared>>, Path(model): Path<String>, body: Bytes) -> Response {
    let holders: Vec<Arc<Target>> = {
        let view = s.view.lock().expect("view lock");
        view.holders(&model, Instant::now())
            .iter()
            .map(|r| r.target.clone())
            .collect()
    };
    if holders.is_empty() {
        return match forward::ensure_placed(&s, &model, None).await {
            Ok(()) => Json(json!({})).into_response(),
            Err(e) => route_error(&s, &e),
        };
    }
    let path = format!("/v2/repository/models/{model}/load");
    for addr in holders {
        match post_json(&s, &addr, &path, body.clone()).await {
            Ok(a) if a.status.is_success() => {}
            Ok(a) => return a.into_response(),
            Err(e) => return error(StatusCode::BAD_GATEWAY, e),
        }
    }
    Json(json!({})).into_response()
}

/// Unload through the router: from every replica that holds or loads it.
async fn unload(State(s): State<Arc<Shared>>, Path(model): Path<String>, body: Bytes) -> Response {
    let (holders, any): (Vec<Arc<Target>>, _) = {
        let view = s.view.lock().expect("view lock");
        let now = Instant::now();
        let holders: Vec<Arc<Target>> = view
            .knowers(&model, now)
            .iter()
            .filter(|r| {
                r.holdings
                    .get(&model)
                    .is_some_and(|h| h.state != HoldState::Absent)
            })
            .map(|r| r.target.clone())
            .collect();
        let any = view
            .replicas
            .values()
            .find(|r| r.usable(now))
            .map(|r| r.target.clone());
        (holders, any)
    };
    let path = format!("/v2/repository/models/{model}/unload");
    let targets = if holders.is_empty() {
        any.into_iter().collect()
    } else {
        holders
    };
    if targets.is_empty() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no replica is up");
    }
    let mut last = None;
    for addr in targets {
        match post_json(&s, &addr, &path, body.clone()).await {
            Ok(a) if a.status.is_success() => last = Some(a),
            Ok(a) => return a.into_response(),
            Err(e) => return error(StatusCode::BAD_GATEWAY, e),
        }
    }
    last.map_or_else(
        || Json(json!({})).into_response(),
        IntoResponse::into_response,
    )
}

async fn placement(State(s): State<Arc<Shared>>) -> Response {
    let view = s.view.lock().expect("view lock");
    Json(crate::placement::report(
        &view,
        s.config.placement.copy_rate_per_min,
        Instant::now(),
    ))
    .into_response()
}

async fn state(State(s): State<Arc<Shared>>) -> Response {
    let view = s.view.lock().expect("view lock");
    let now = Instant::now();
    let replicas: Vec<Value> = view
        .replicas
        .values()
        .map(|r| {
            let mut holdings: Vec<(&String, _)> = r.holdings.iter().collect();
            holdings.sort_by_key(|h| h.0);
            json!({
                "id": r.addr.id(),
                "grpc": r.addr.grpc_authority(),
                "health": format!("{:?}", r.health).to_lowercase(),
                "usable": r.usable(now),
                "ejections": r.ejections,
                "sent": r.sent,
                "hedged_to": r.hedged_to,
                "memory_used_bytes": r.memory_used,
                "memory_budget_bytes": r.memory_budget,
                "models": holdings.into_iter().map(|(m, h)| json!({
                    "name": m,
                    "state": format!("{:?}", h.state).to_uppercase(),
                    "in_flight": h.in_flight,
                    "service_ns": h.service_ns,
                    "executions": h.executions,
                    "outstanding": r.outstanding.get(m).copied().unwrap_or(0),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let m = &s.metrics;
    Json(json!({
        "replicas": replicas,
        "requests": m.requests.get(),
        "retries": m.retries.get(),
        "hedges": m.hedges.get(),
        "hedge_wins": m.hedge_wins.get(),
        "ejections": m.ejections.get(),
        "loads": m.loads.get(),
        "errors": m.errors.get(),
    }))
    .into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    use std::fmt::Write;
    let m = &s.metrics;
    let mut out = String::new();
    for (name, help, value) in [
        (
            "sluice_router_requests_total",
            "Inference requests received.",
            m.requests.get(),
        ),
        (
            "sluice_router_retries_total",
            "Requests sent again after a replica failed before answering.",
            m.retries.get(),
        ),
        (
            "sluice_router_hedges_total",
            "Backup requests sent after the hedge delay.",
            m.hedges.get(),
        ),
        (
            "sluice_router_hedge_wins_total",
            "Backup requests that answered first.",
            m.hedge_wins.get(),
        ),
        (
            "sluice_router_ejections_total",
            "Replicas ejected after consecutive failures.",
            m.ejections.get(),
        ),
        (
            "sluice_router_loads_total",
            "Model loads the router asked replicas for.",
            m.loads.get(),
        ),
        (
            "sluice_router_errors_total",
            "Requests the router answered with its own error.",
            m.errors.get(),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let view = s.view.lock().expect("view lock");
    let now = Instant::now();
    let _ = writeln!(out, "# HELP sluice_router_replica_up Whether the replica takes requests (1) or not (0).\n# TYPE sluice_router_replica_up gauge");
    for r in view.replicas.values() {
        let _ = writeln!(
            out,
            "sluice_router_replica_up{{replica=\"{}\"}} {}",
            r.addr.id(),
            u8::from(r.usable(now))
        );
    }
    let _ = writeln!(out, "# HELP sluice_router_replica_requests_total Attempts sent to the replica.\n# TYPE sluice_router_replica_requests_total counter");
    for r in view.replicas.values() {
        let _ = writeln!(
            out,
            "sluice_router_replica_requests_total{{replica=\"{}\"}} {}",
            r.addr.id(),
            r.sent
        );
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_is_read_and_rewritten_in_the_json_part_only() {
        let header = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}],"parameters":{"timeout":5000000}}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[1, 2, 3, 4]);
        let body = Bytes::from(body);
        assert_eq!(
            timeout_of(&body, Some(header.len())),
            Some(Duration::from_secs(5))
        );
        let (new, len) =
            rewrite_timeout(&body, Some(header.len()), Duration::from_millis(1500)).unwrap();
        let len = len.unwrap();
        assert_eq!(&new[len..], &[1, 2, 3, 4]);
        let v: Value = serde_json::from_slice(&new[..len]).unwrap();
        assert_eq!(v["parameters"]["timeout"], json!(1_500_000));
        assert_eq!(v["inputs"][0]["name"], json!("x"));
        // No timeout: nothing to rewrite, the bytes go as they are.
        let plain = Bytes::from_static(br#"{"inputs":[]}"#);
        assert_eq!(timeout_of(&plain, None), None);
        assert!(rewrite_timeout(&plain, None, Duration::from_secs(1)).is_none());
        // A header length past the body is not parsed.
        assert_eq!(timeout_of(&body, Some(10_000)), None);
    }

    #[test]
    fn models_are_read_from_paths() {
        assert_eq!(model_of("/v2/models/mlp/infer"), Some("mlp"));
        assert_eq!(model_of("/v2/models/mlp/versions/2/infer"), Some("mlp"));
        assert_eq!(model_of("/v2/models/mlp"), Some("mlp"));
        assert_eq!(model_of("/v2/models/stats"), None);
        assert_eq!(model_of("/v2/models/stats/ready"), Some("stats"));
        assert_eq!(model_of("/v2"), None);
    }
}
