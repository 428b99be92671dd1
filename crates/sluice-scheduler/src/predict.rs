//! What the pool tells a caller before it sends a request: the predicted answer
//! time (a variant family picks a variant with it) and seeds for its learned latency
//! from a profile.

use std::time::{Duration, Instant};

use crate::state::Prediction;
use crate::InstancePool;

impl InstancePool {
    /// How long a request of `rows` rows sent now would likely take to be answered,
    /// from the queue ahead of it, the learned latency and the instances; `None`
    /// before anything is known of the engine's latency.
    pub fn predicted_answer(&self, rows: usize) -> Option<Prediction> {
        self.shared.lock().predicted_answer(rows, Instant::now())
    }

    /// An instance is free and nothing is queued: a request sent now would run at once.
    pub fn idle(&self) -> bool {
        self.shared.lock().idle()
    }

    /// Batches running on its instances now.
    pub fn running_batches(&self) -> usize {
        self.shared.lock().running_batches()
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
