//! Running one request: acquire the version, validate, run (through the response
//! cache when the model opts in), and pick the outputs the request asked for.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_core::{Error, InferRequest, InferResponse, Result, Tensor};
use sluice_scheduler::JobOptions;

use crate::{cache, Outcome, Runtime};

impl Runtime {
    /// Runs one request on the model (and version) it names; waits while the model
    /// loads (bounded by the request's timeout).
    pub async fn infer(
        &self,
        name: &str,
        version: Option<u64>,
        request: InferRequest,
    ) -> Result<InferResponse> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::unavailable("the server is shutting down"));
        }
        let arrived = std::time::Instant::now();
        let (served, v) = self.acquire(name, version, request.timeout).await?;
        // Time spent waiting for a load counts against the request's timeout.
        let options = JobOptions {
            priority: request.priority,
            timeout: request.timeout.map(|t| {
                t.saturating_sub(arrived.elapsed())
                    .max(Duration::from_micros(1))
            }),
        };
        if let Some(ensemble) = served.ensemble.clone() {
            let result = ensemble.infer(self, &served, request, arrived).await;
            drop(served);
            let (id, outputs) = result?;
            return Ok(InferResponse {
                model_name: name.to_owned(),
                model_version: v,
                id,
                outputs,
            });
        }
        let control = request.cache;
        let valid = match served.signature.validate(request) {
            Ok(valid) => valid,
            Err(e) => {
                served
                    .pool
                    .stats()
                    .record(Outcome::Invalid, arrived.elapsed());
                return Err(e);
            }
        };
        let id = valid.id().map(str::to_owned);
        let wanted = valid.outputs().to_vec();
        let result = match self.inner.cache.as_ref().filter(|_| served.cache_enabled) {
            Some(cache) => {
                let job = cache::CachedJob {
                    model: name,
                    version: v,
                    control,
                    request: valid,
                    options,
                    arrived,
                };
                cache.run(&served, job).await
            }
            None => served.pool.infer(valid, options).await,
        };
        drop(served);
        if self.inner.over_budget.load(Ordering::Acquire) {
            self.trim_to_budget();
        }
        let mut all: Vec<Option<Tensor>> = result?.into_iter().map(Some).collect();
        let outputs = wanted
            .iter()
            .map(|&ix| all.get_mut(ix).and_then(Option::take))
            .collect::<Option<Vec<Tensor>>>()
            .ok_or_else(|| {
                Error::internal("the engine returned fewer outputs than the model declares")
            })?;
        Ok(InferResponse {
            model_name: name.to_owned(),
            model_version: v,
            id,
            outputs,
        })
    }
}
