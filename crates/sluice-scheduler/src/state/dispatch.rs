//! The dispatch policy: given the batch that could be formed now, run it now or wait
//! until when. Triton's rules, in order:
//!
//! - batching off: every request runs alone, at once;
//! - a full batch (or a live request queued behind the candidate that does not fit),
//!   and shutdown, run at once;
//! - a preferred size runs at once;
//! - otherwise the batch waits for its delay: Triton's static
//!   `max_queue_delay_microseconds` from the oldest request's arrival (0: never wait),
//!   or, when asked for, the adaptive hold ([`super::hold`]);
//! - once the delay is over, the largest preferred prefix runs, else everything.

use std::time::Instant;

use super::queues::Candidate;
use crate::config::{Batching, Delay};

/// What to do with the candidate batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Run all of it now.
    All,
    /// Wait until this instant; at or after it, run the largest preferred prefix, else
    /// all of it.
    Until(Instant),
}

/// The policy's plan for `c`. `hold` is asked only for an adaptive delay that is not
/// decided by an earlier rule (`None`: do not hold).
pub(crate) fn plan(
    batching: &Batching,
    max_batch: usize,
    c: &Candidate,
    closing: bool,
    now: Instant,
    hold: impl FnOnce() -> Option<Instant>,
) -> Plan {
    let Batching::Dynamic(db) = batching else {
        return Plan::All;
    };
    if c.more || c.rows >= max_batch || closing || db.preferred.contains(&c.rows) {
        return Plan::All;
    }
    match db.delay {
        Delay::Static(d) => Plan::Until(c.oldest + d),
        Delay::Adaptive { .. } => Plan::Until(hold().unwrap_or(now)),
    }
}
