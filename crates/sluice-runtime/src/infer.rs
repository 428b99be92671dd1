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
        if let Some(family) = self.family(name) {
            return self.infer_family(family?, name, version, request).await;
        }
        self.infer_model(name, version, request).await
    }

    /// Runs one request on a model that is not a family.
    pub(crate) async fn infer_model(
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
            let control = request.cache;
            let valid = validate(&served, request, arrived)?;
            let id = valid.id().map(str::to_owned);
            let wanted = valid.outputs().to_vec();
            let execute =
                |valid, options| ensemble.run(self, &served, valid, options, control, arrived);
            let cached = self
                .inner
                .cache
                .as_ref()
                .filter(|_| served.cache_enabled)
                .and_then(|c| Some((c, self.ensemble_scope(c, &served, &ensemble, 0)?)));
            let result = match cached {
                Some((cache, scope)) => {
                    let job = cache::CachedJob {
                        model: name,
                        version: v,
                        scope,
                        control,
                        request: valid,
                        options,
                        arrived,
                    };
                    cache.run(&served, job, execute).await
                }
                None => execute(valid, options).await,
            };
            drop(served);
            return Ok(InferResponse {
                model_name: name.to_owned(),
                model_version: v,
                id,
                outputs: pick(result?, &wanted)?,
                answered_by: None,
            });
        }
        if let Some(rows) = crate::split::rows_to_split(&served, &request) {
            let result = self
                .infer_split(&served, request, rows, options, arrived)
                .await;
            drop(served);
            let (id, wanted, outputs) = result?;
            return Ok(InferResponse {
                model_name: name.to_owned(),
                model_version: v,
                id,
                outputs: pick(outputs, &wanted)?,
                answered_by: None,
            });
        }
        let control = request.cache;
        let valid = validate(&served, request, arrived)?;
        let id = valid.id().map(str::to_owned);
        let wanted = valid.outputs().to_vec();
        let result = match self.inner.cache.as_ref().filter(|_| served.cache_enabled) {
            Some(cache) => {
                let job = cache::CachedJob {
                    model: name,
                    version: v,
                    scope: cache.scope(&served),
                    control,
                    request: valid,
                    options,
                    arrived,
                };
                cache
                    .run(&served, job, |r, o| served.pool.infer(r, o))
                    .await
            }
            None => served.pool.infer(valid, options).await,
        };
        drop(served);
        if self.inner.over_budget.load(Ordering::Acquire) {
            self.trim_to_budget();
        }
        let outputs = pick(result?, &wanted)?;
        Ok(InferResponse {
            model_name: name.to_owned(),
            model_version: v,
            id,
            outputs,
            answered_by: None,
        })
    }
}

impl Runtime {
    /// Runs a request of more rows than a batch holds as chunks on every instance
    /// (see `split`); returns its id, the outputs it asked for and all outputs.
    async fn infer_split(
        &self,
        served: &crate::build::Served,
        request: InferRequest,
        rows: usize,
        options: JobOptions,
        arrived: std::time::Instant,
    ) -> Result<(Option<String>, Vec<usize>, Vec<Tensor>)> {
        let max = served.signature.max_batch_size;
        let checked = crate::split::cut(&request, rows, max).and_then(|chunks| {
            chunks
                .into_iter()
                .map(|c| served.signature.validate(c))
                .collect::<Result<Vec<_>>>()
        });
        let chunks = match checked {
            Ok(chunks) => chunks,
            Err(e) => {
                served
                    .pool
                    .stats()
                    .record(Outcome::Invalid, arrived.elapsed());
                return Err(e);
            }
        };
        let wanted = chunks[0].outputs().to_vec();
        let outputs = crate::split::run(&served.pool, chunks, options).await?;
        Ok((request.id, wanted, outputs))
    }
}

/// Validates a request with the version's signature; an invalid one is counted in
/// its statistics.
fn validate(
    served: &crate::build::Served,
    request: InferRequest,
    arrived: std::time::Instant,
) -> Result<sluice_core::ValidRequest> {
    served.signature.validate(request).inspect_err(|_| {
        served
            .pool
            .stats()
            .record(Outcome::Invalid, arrived.elapsed());
    })
}

/// The outputs a request asked for, in its order, out of all of the model's.
fn pick(all: Vec<Tensor>, wanted: &[usize]) -> Result<Vec<Tensor>> {
    let mut all: Vec<Option<Tensor>> = all.into_iter().map(Some).collect();
    wanted
        .iter()
        .map(|&ix| all.get_mut(ix).and_then(Option::take))
        .collect::<Option<Vec<Tensor>>>()
        .ok_or_else(|| Error::internal("the engine returned fewer outputs than the model declares"))
}
