//! Single-flight: concurrent identical misses on one replica run the model once;
//! the others wait for that run's answer, each no longer than its own deadline.
//!
//! Key decision: a waiter only ever *waits* under its deadline; it never cancels a
//! run. When the run it waits for fails or is dropped (its client left, its own
//! deadline passed in the queue), the waiters do not inherit that error: the
//! first of them to notice leads a new run and the others wait for it, so each
//! request ends with its own answer or its own error.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::watch;

use super::key::Entry;

type Answer = Option<Arc<Entry>>;

/// The runs in flight, by key.
#[derive(Default)]
pub(crate) struct Flights {
    runs: Mutex<HashMap<u128, (u64, watch::Receiver<Answer>)>>,
    ids: AtomicU64,
}

/// How a request's turn at a key ended.
pub(crate) enum Flight<T, E> {
    /// This request led the run: the run's result (the entry it shares, and what
    /// else the leader keeps for itself).
    Led(Result<(Arc<Entry>, T), E>),
    /// Another request's run answered (its entry may belong to another request
    /// whose key collides: the caller compares fingerprints).
    Joined(Arc<Entry>),
    /// The deadline passed while waiting for another request's run.
    TimedOut,
}

/// Removes a leader's run from the map when it ends, whichever way.
struct Lead<'a> {
    flights: &'a Flights,
    key: u128,
    id: u64,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut runs = self
            .flights
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if runs.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            runs.remove(&self.key);
        }
    }
}

impl Flights {
    /// Runs `run` for `key` unless an identical request's run is in flight, in which
    /// case waits for its answer until `deadline`.
    pub async fn run<F, Fut, T, E>(
        &self,
        key: u128,
        deadline: Option<Instant>,
        run: F,
    ) -> Flight<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Arc<Entry>, T), E>>,
    {
        let (tx, id) = loop {
            let joined = {
                let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
                match runs.get(&key) {
                    Some((_, rx)) => Err(rx.clone()),
                    None => {
                        let id = self.ids.fetch_add(1, Ordering::Relaxed);
                        let (tx, rx) = watch::channel(None);
                        runs.insert(key, (id, rx));
                        Ok((tx, id))
                    }
                }
            };
            let mut rx = match joined {
                Ok(lead) => break lead,
                Err(rx) => rx,
            };
            let waited = rx.wait_for(Option::is_some);
            let outcome = match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), waited).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Flight::TimedOut,
                },
                None => waited.await,
            };
            if let Ok(answer) = outcome {
                if let Some(entry) = answer.as_ref() {
                    return Flight::Joined(Arc::clone(entry));
                }
            }
            // The leader ended without an answer: lead a new run or join one.
        };
        let _lead = Lead {
            flights: self,
            key,
            id,
        };
        let result = run().await;
        if let Ok((entry, _)) = &result {
            tx.send_replace(Some(Arc::clone(entry)));
        }
        Flight::Led(result)
    }

    /// Runs in flight now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
