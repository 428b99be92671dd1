//! One routed request, whatever its protocol: make sure some replica holds the model
//! (loading it on the placement's choice if none does), pick a replica by power of two
//! choices, hedge it after the model's delay, retry once elsewhere if a replica fails
//! before answering.
//!
//! Key decision: the protocol is a closure `send(replica, remaining) -> Result<answer,
//! failure>`; an *answer* is anything the replica said (its errors included, passed
//! through unchanged), a *failure* is a transport problem before any answer (refused,
//! reset, closed), the only case that is retried. A hedge's loser is cancelled by
//! dropping its future, which closes its connection (HTTP/1) or resets its stream
//! (HTTP/2), so a replica that had only queued it drops it before it runs.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::view::{HoldState, Target};
use crate::Shared;

/// Why a request got no answer from any replica.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no replica is available for model '{0}'")]
    NoReplica(String),
    #[error("replica failed before answering: {0}")]
    Failed(String),
    #[error("deadline exceeded in the router")]
    Deadline,
    #[error("loading model '{model}' on {replica} failed: {reason}")]
    LoadFailed {
        model: String,
        replica: String,
        reason: String,
    },
}

impl RouteError {
    /// The stable kind: the wire text prefix and the metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            RouteError::NoReplica(_) => "unavailable",
            RouteError::Failed(_) => "replica_failed",
            RouteError::Deadline => "deadline",
            RouteError::LoadFailed { .. } => "load_failed",
        }
    }
}

/// Counts a request in flight on a replica until it is answered or dropped (a hedge's
/// loser). Registered under the same lock as the pick that chose the replica.
struct Outstanding {
    shared: Arc<Shared>,
    target: Arc<Target>,
    model: Arc<str>,
    armed: bool,
}

impl Outstanding {
    /// Registers the request; the caller holds the view's lock.
    fn register(
        shared: &Arc<Shared>,
        view: &mut crate::view::View,
        target: &Arc<Target>,
        model: &Arc<str>,
    ) -> Self {
        view.add_outstanding(&target.id, model);
        Outstanding {
            shared: shared.clone(),
            target: target.clone(),
            model: model.clone(),
            armed: true,
        }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if self.armed {
            if let Ok(mut view) = self.shared.view.lock() {
                view.remove_outstanding(&self.target.id, &self.model);
            }
        }
    }
}

fn remaining(deadline: Option<Instant>) -> Result<Option<Duration>, RouteError> {
    match deadline {
        None => Ok(None),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(RouteError::Deadline)
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// One attempt on a registered replica: its outcome, with the bookkeeping (outstanding
/// count, latency, outlier detection) done under one lock at the end.
async fn attempt<T, F, Fut>(
    mut guard: Outstanding,
    deadline: Option<Instant>,
    send: F,
) -> Result<T, String>
where
    F: Fn(Arc<Target>, Option<Duration>) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let left = remaining(deadline).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let result = send(guard.target.clone(), left).await;
    let shared = guard.shared.clone();
    let mut view = shared.view.lock().expect("view lock");
    guard.armed = false;
    view.remove_outstanding(&guard.target.id, &guard.model);
    let replica = guard.target.id.as_str();
    match &result {
        Ok(_) => view.record_success(replica, &guard.model, start.elapsed()),
        Err(e) => {
            tracing::debug!(replica, error = %e, "replica failed before answering");
            if view.record_failure(replica, Instant::now(), &shared.config.outlier) {
                shared.metrics.ejections.inc();
                tracing::warn!(replica, "replica ejected after consecutive failures");
            }
        }
    }
    result
}

/// What a routed request is, which decides what the router may do for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An inference: the model is placed if nobody holds it, and it may be hedged.
    Infer,
    /// Metadata, readiness, configuration, statistics: to a holder if there is one,
    /// never loads anything, never hedged.
    Other,
}

/// Routes one request for `model` with `send`.
pub async fn route<T, F, Fut>(
    shared: &Arc<Shared>,
    model: &str,
    deadline: Option<Instant>,
    kind: Kind,
    send: F,
) -> Result<T, RouteError>
where
    F: Fn(Arc<Target>, Option<Duration>) -> Fut + Clone,
    Fut: Future<Output = Result<T, String>>,
{
    let hedge = kind == Kind::Infer;
    let key: Arc<str> = Arc::from(model);
    let now = Instant::now();
    // The common case takes the view's lock once: the model is held, pick a replica,
    // count the request there, read the hedge delay.
    let picked = {
        let mut view = shared.view.lock().expect("view lock");
        let placed = kind == Kind::Other || view.is_held(model, now);
        if placed {
            if view.up_count(now) == 0 {
                return Err(RouteError::NoReplica(model.to_string()));
            }
            if hedge {
                view.earn_hedge(now);
            }
            let mut rng = shared.rng.lock().expect("rng lock");
            let target = view
                .pick_replica(model, &[], now, &mut rng)
                .map(|r| r.target.clone())
                .ok_or_else(|| RouteError::NoReplica(model.to_string()))?;
            drop(rng);
            let delay = if hedge {
                view.hedge_delay(model, &shared.config.hedge)
            } else {
                None
            };
            let guard = Outstanding::register(shared, &mut view, &target, &key);
            Some((target, delay, guard))
        } else {
            None
        }
    };
    let (primary, delay, guard) = match picked {
        Some(p) => p,
        None => {
            ensure_placed(shared, model, deadline).await?;
            let now = Instant::now();
            let mut view = shared.view.lock().expect("view lock");
            view.earn_hedge(now);
            let mut rng = shared.rng.lock().expect("rng lock");
            let target = view
                .pick_replica(model, &[], now, &mut rng)
                .map(|r| r.target.clone())
                .ok_or_else(|| RouteError::NoReplica(model.to_string()))?;
            drop(rng);
            let delay = view.hedge_delay(model, &shared.config.hedge);
            let guard = Outstanding::register(shared, &mut view, &target, &key);
            (target, delay, guard)
        }
    };
    let mut tried: Vec<Arc<Target>> = vec![primary.clone()];
    let first = attempt(guard, deadline, send.clone());
    tokio::pin!(first);
    let outcome = match delay {
        None => first.await,
        Some(delay) => {
            tokio::select! {
                r = &mut first => r,
                () = tokio::time::sleep(delay) => {
                    let backup = {
                        let now = Instant::now();
                        let past_deadline = deadline.is_some_and(|d| now >= d);
                        let mut view = shared.view.lock().expect("view lock");
                        let b = view
                            .backup_replica(model, &primary.id, now)
                            .map(|r| r.target.clone());
                        match b {
                            Some(b) if !past_deadline && view.take_hedge(now, &shared.config.hedge) => {
                                let guard = Outstanding::register(shared, &mut view, &b, &key);
                                if let Some(r) = view.replicas.get_mut(&b.id) {
                                    r.hedged_to += 1;
                                }
                                Some((b, guard))
                            }
                            _ => None,
                        }
                    };
                    match backup {
                        None => first.await,
                        Some((b, guard)) => {
                            shared.metrics.hedges.inc();
                            tried.push(b.clone());
                            let second = attempt(guard, deadline, send.clone());
                            tokio::pin!(second);
                            let hedged_at = Instant::now();
                            tokio::select! {
                                r = &mut first => match r {
                                    Ok(a) => {
                                        let mut view = shared.view.lock().expect("view lock");
                                        view.record_lost_hedge(&b.id, model, hedged_at.elapsed(), Instant::now());
                                        Ok(a)
                                    }
                                    Err(_) => {
                                        shared.metrics.retries.inc();
                                        return second.await.map_err(RouteError::Failed);
                                    }
                                },
                                r = &mut second => match r {
                                    Ok(a) => {
                                        shared.metrics.hedge_wins.inc();
                                        let mut view = shared.view.lock().expect("view lock");
                                        view.record_lost_hedge(&primary.id, model, now.elapsed(), Instant::now());
                                        Ok(a)
                                    }
                                    Err(_) => {
                                        shared.metrics.retries.inc();
                                        return first.await.map_err(RouteError::Failed);
                                    }
                                },
                            }
                        }
                    }
                }
            }
        }
    };
    match outcome {
        Ok(a) => Ok(a),
        Err(first_error) => {
            // Failed before answering: once more, elsewhere.
            let retry = {
                let mut view = shared.view.lock().expect("view lock");
                let mut rng = shared.rng.lock().expect("rng lock");
                let exclude: Vec<&str> = tried.iter().map(|t| t.id.as_str()).collect();
                let target = view
                    .pick_replica(model, &exclude, Instant::now(), &mut rng)
                    .map(|r| r.target.clone());
                drop(rng);
                target.map(|t| Outstanding::register(shared, &mut view, &t, &key))
            };
            let Some(guard) = retry else {
                return Err(RouteError::Failed(first_error));
            };
            shared.metrics.retries.inc();
            attempt(guard, deadline, send)
                .await
                .map_err(RouteError::Failed)
        }
    }
}

/// Returns once some usable replica holds `model` ready, loading it on the placement's
/// first-copy replica when none does (bounded by `deadline`, or the load timeout). A
/// model no replica's repository lists returns at once: the request goes to any
/// replica, whose 404 is passed through.
pub async fn ensure_placed(
    shared: &Arc<Shared>,
    model: &str,
    deadline: Option<Instant>,
) -> Result<(), RouteError> {
    let limit = deadline.unwrap_or_else(|| Instant::now() + shared.config.placement.load_timeout);
    loop {
        let now = Instant::now();
        let (target, loading) = {
            let view = shared.view.lock().expect("view lock");
            if view.up_count(now) == 0 {
                return Err(RouteError::NoReplica(model.to_string()));
            }
            if !view.holders(model, now).is_empty() || view.knowers(model, now).is_empty() {
                return Ok(());
            }
            let loading = view.knowers(model, now).iter().any(|r| {
                r.holdings
                    .get(model)
                    .is_some_and(|h| h.state == HoldState::Loading)
            });
            (crate::placement::first_copy(&view, model, now), loading)
        };
        if !shared.config.placement.enabled {
            // The replicas load on first use themselves (memory budget) or answer why not.
            return Ok(());
        }
        let Some(target) = target else {
            return Ok(());
        };
        let left = limit.saturating_duration_since(now);
        if left.is_zero() {
            return Err(RouteError::Deadline);
        }
        if loading {
            // Loaded by another router or a placement decision: wait for the poll.
            tokio::time::sleep(shared.config.poll_interval.min(left)).await;
            continue;
        }
        match tokio::time::timeout(left, crate::poll::load(shared, &target, model)).await {
            Err(_) => return Err(RouteError::Deadline),
            Ok(Err(reason)) => {
                return Err(RouteError::LoadFailed {
                    model: model.to_string(),
                    replica: target,
                    reason,
                })
            }
            Ok(Ok(())) => return Ok(()),
        }
    }
}
