//! What the pool tells a caller before it sends a request: the predicted answer
//! time (a variant family picks a variant with it) and seeds for its learned latency
//! from a profile.

use std::time::{Duration, Instant};

use crate::state::Prediction;
use crate::InstancePool;

/// See [`InstancePool::outlook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlook {
    /// When the request would likely be answered, from the queue ahead of it, the
    /// learned latency and the instances; `None` before anything is known of the
    /// engine's latency.
    pub predicted: Option<Prediction>,
    /// Batches running on its instances now.
    pub running: usize,
}

impl InstancePool {
    /// An instance is free and nothing is queued: a request sent now would run at once.
    pub fn idle(&self) -> bool {
        self.shared.lock().idle()
    }

    /// What a variant family reads of the pool for one request, under one lock: the
    /// prediction for `rows` rows and the batches running now.
    pub fn outlook(&self, rows: usize) -> Outlook {
        let state = self.shared.lock();
        Outlook {
            predicted: state.predicted_answer(rows, Instant::now()),
            running: state.running_batches(),
        }
    }

    /// Rows waiting ahead of a new request at the default priority level.
    pub fn rows_ahead(&self) -> usize {
        self.shared.lock().rows_ahead()
    }

    /// Starts the learned latency from measured figures: `(rows, latency of one run)`.
    pub fn seed_latency(&self, points: &[(usize, Duration)]) {
        let mut state = self.shared.lock();
        for &(rows, elapsed) in points {
            state.seed_latency(rows, elapsed);
        }
    }

    /// The largest batch one run takes (1 when the model does not batch).
    pub fn max_batch_size(&self) -> usize {
        let state = self.shared.lock();
        match state.config().batching {
            crate::Batching::Off => 1,
            crate::Batching::Dynamic(_) => state.config().max_batch_size.max(1),
        }
    }

    /// Instances that run this pool's batches.
    pub fn instance_count(&self) -> usize {
        self.shared.lock().instances()
    }
}
