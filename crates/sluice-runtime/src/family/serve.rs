//! Answering one request to a family: read each variant's live prediction, choose,
//! run on the chosen variant through the normal request path, and learn from how
//! long it took.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use sluice_core::{AnsweredBy, Error, ErrorKind, InferRequest, InferResponse, Result};

use super::choose::{self, Ask, Candidate, Choice};
use super::{Family, VERSION};
use crate::lookup::Lookup;
use crate::{Outcome, Runtime};

impl Runtime {
    /// Runs a request to the family `name` on the variant chosen for it.
    pub(crate) async fn infer_family(
        &self,
        family: Arc<Family>,
        name: &str,
        version: Option<u64>,
        request: InferRequest,
    ) -> Result<InferResponse> {
        if let Some(v) = version.filter(|&v| v != VERSION) {
            return Err(crate::no_version(name, v));
        }
        let arrived = Instant::now();
        let ask = Ask {
            latency: request
                .objective
                .latency
                .or(request.timeout)
                .or(family.spec.default_latency),
            min_accuracy: request
                .objective
                .min_accuracy
                .or(family.spec.default_min_accuracy),
        };
        let rows = if family.signature.max_batch_size > 0 {
            request
                .inputs
                .first()
                .and_then(|t| t.shape.first().copied())
                .unwrap_or(1)
                .max(1)
        } else {
            1
        };
        let now = Instant::now();
        let mut running = vec![0; family.spec.variants.len()];
        let mut candidates: Vec<Candidate> = family
            .spec
            .variants
            .iter()
            .zip(&family.health)
            .zip(&mut running)
            .map(|((v, health), running)| {
                let (slowdown, probe_due, margin) = {
                    let mut health = health.lock().unwrap_or_else(PoisonError::into_inner);
                    (
                        health.slowdown(now),
                        health.probe_due(now),
                        health.margin(now),
                    )
                };
                match self.lookup(&v.model, v.version) {
                    Lookup::Ready(served, _) => {
                        let outlook = served.pool.outlook(rows);
                        *running = outlook.running;
                        Candidate {
                            accuracy: v.accuracy,
                            ready: true,
                            predicted: outlook.predicted,
                            slowdown,
                            // Probed only when idle, so a probe's answer is its run.
                            probe: probe_due && served.pool.idle(),
                            margin,
                        }
                    }
                    Lookup::Wait | Lookup::Start | Lookup::Fail(_) => Candidate {
                        accuracy: v.accuracy,
                        ready: false,
                        predicted: None,
                        slowdown,
                        probe: false,
                        margin,
                    },
                }
            })
            .collect();
        choose::share_cores(&mut candidates, &running, crate::cores());
        let mut choice = choose::choose(&candidates, ask);
        if let Choice::Run(i) = choice {
            // A probe goes to one request: another may have taken it since.
            if candidates[i].probe
                && !family.health[i]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take_probe(now)
            {
                candidates[i].probe = false;
                choice = choose::choose(&candidates, ask);
            }
        }
        let chosen = match choice {
            Choice::Run(i) => i,
            Choice::NoneAccurate => {
                family.stats.record(Outcome::Invalid, arrived.elapsed());
                let best = family.spec.variants.first().map_or(0.0, |v| v.accuracy);
                return Err(Error::invalid(format!(
                    "family '{name}' has no variant with accuracy >= {} (the most accurate has {best})",
                    ask.min_accuracy.unwrap_or_default()
                )));
            }
            Choice::TooLate { fastest, wait } => {
                family.stats.record(Outcome::Rejected, arrived.elapsed());
                family.stats.rejected_early.fetch_add(1, Ordering::Relaxed);
                return Err(Error::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "family '{name}' cannot answer within its latency objective of {} µs: even its fastest variant '{}' has about {} µs of work queued ahead; rejected early",
                        ask.latency.unwrap_or_default().as_micros(),
                        family.spec.variants[fastest].model,
                        wait.as_micros()
                    ),
                ));
            }
        };
        let variant = &family.spec.variants[chosen];
        let predicted = candidates[chosen].predicted.map(|p| p.total());
        family.choices[chosen].fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight::start(&family.stats, arrived);
        let sent = Instant::now();
        let result = self
            .infer_model(&variant.model, variant.version, request)
            .await;
        let took = sent.elapsed();
        if let (Some(predicted), Ok(_)) = (predicted, &result) {
            family.health[chosen]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(predicted, took, Instant::now());
        }
        in_flight.finish(Outcome::of(&result));
        let mut response = result?;
        family.stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
        response.answered_by = Some(AnsweredBy {
            model: std::mem::replace(&mut response.model_name, name.to_owned()),
            version: std::mem::replace(&mut response.model_version, VERSION),
        });
        Ok(response)
    }
}

/// Counts a family request in flight; one dropped before it ends (its client went
/// away) counts as cancelled.
struct InFlight<'a> {
    stats: &'a crate::PoolStats,
    arrived: Instant,
    done: bool,
}

impl<'a> InFlight<'a> {
    fn start(stats: &'a crate::PoolStats, arrived: Instant) -> Self {
        stats.start();
        InFlight {
            stats,
            arrived,
            done: false,
        }
    }

    fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.stats.finish(outcome, self.arrived.elapsed());
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats
                .finish(Outcome::Cancelled, self.arrived.elapsed());
        }
    }
}
