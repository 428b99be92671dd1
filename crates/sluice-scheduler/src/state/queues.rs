//! The queued requests of one model version: a FIFO per priority level, plus the
//! requests whose timeout passed at a `DELAY` level (served after everything else).
//!
//! Key decision: nothing here walks a whole queue on the hot path. The entry and row
//! counts are maintained as entries come and go; timeouts are found through a heap of
//! deadlines (an entry is located by binary search on its arrival number, since each
//! level's queue is in arrival order), and a cancelled entry is dropped when a batch is
//! formed over it or when its level is full. A cancelled entry deeper in a queue stays
//! (and counts in [`Queues::len`]) until then; [`Queues::waiting`] is the one walk,
//! for the statistics.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use super::{Entry, Pending, Step};
use crate::config::TimeoutAction;

/// The heap of deadlines is rebuilt from the queues once it holds more than
/// `COMPACT_FACTOR` × the queued entries plus [`COMPACT_SLACK`] items: items of entries
/// that left before their deadline (run, cancelled) are dropped lazily, and this bounds
/// them to a constant factor of the queue at an amortized O(1) per entry.
const COMPACT_FACTOR: usize = 2;
/// See [`COMPACT_FACTOR`]: below this many stale items the heap is never rebuilt.
const COMPACT_SLACK: usize = 64;

/// One priority level's queue and its row count.
struct Level<T> {
    entries: VecDeque<Entry<T>>,
    rows: usize,
    action: TimeoutAction,
}

/// The batch that could be formed now: the longest prefix of the queued entries (in
/// priority, then arrival order) that fits one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) count: usize,
    pub(super) rows: usize,
    /// The earliest arrival among them.
    pub(super) oldest: Instant,
    /// A live entry is queued behind them that did not fit.
    pub(super) more: bool,
}

pub(super) struct Queues<T> {
    levels: Vec<Level<T>>,
    delayed: VecDeque<Entry<T>>,
    delayed_rows: usize,
    /// Entries waiting, in all queues (cancelled ones included until they are found).
    len: usize,
    /// (deadline, arrival number, level index) of queued entries with a deadline,
    /// earliest first (delayed entries have none); items of entries that have left are
    /// skipped when they surface.
    deadlines: BinaryHeap<Reverse<(Instant, u64, usize)>>,
}

impl<T: Pending> Queues<T> {
    /// One queue per level, with what happens to its requests on timeout.
    pub(super) fn new(actions: impl IntoIterator<Item = TimeoutAction>) -> Self {
        Queues {
            levels: actions
                .into_iter()
                .map(|action| Level {
                    entries: VecDeque::new(),
                    rows: 0,
                    action,
                })
                .collect(),
            delayed: VecDeque::new(),
            delayed_rows: 0,
            len: 0,
            deadlines: BinaryHeap::new(),
        }
    }

    pub(super) fn level_count(&self) -> usize {
        self.levels.len()
    }

    /// Entries waiting in all queues.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Entries waiting at one level.
    pub(super) fn level_len(&self, ix: usize) -> usize {
        self.levels[ix].entries.len()
    }

    /// Rows waiting at levels `0..=ix`: the work ahead of a request queued at `ix`.
    pub(super) fn rows_through(&self, ix: usize) -> usize {
        self.levels[..=ix].iter().map(|l| l.rows).sum()
    }

    /// Appends an entry to level `ix`; its `seq` must be larger than any queued.
    pub(super) fn push(&mut self, ix: usize, entry: Entry<T>) {
        if let Some(deadline) = entry.deadline {
            self.deadlines.push(Reverse((deadline, entry.seq, ix)));
        }
        let level = &mut self.levels[ix];
        level.rows += entry.rows;
        level.entries.push_back(entry);
        self.len += 1;
    }

    /// Removes the cancelled entries of level `ix` into `gone` (a full level: requests
    /// whose clients left do not hold places). Walks that level, which is full.
    pub(super) fn drop_cancelled(&mut self, ix: usize, gone: &mut Vec<Entry<T>>) {
        let level = &mut self.levels[ix];
        let before = gone.len();
        let mut kept = VecDeque::with_capacity(level.entries.len());
        for e in level.entries.drain(..) {
            if e.payload.is_cancelled() {
                level.rows -= e.rows;
                gone.push(e);
            } else {
                kept.push_back(e);
            }
        }
        level.entries = kept;
        self.len -= gone.len() - before;
    }

    /// Handles the entries whose deadline is at or before `now`: `REJECT` levels put
    /// them in `step.expired`, `DELAY` levels move them to the delayed queue (without a
    /// deadline). Afterwards the heap's first item, if any, is a queued entry's.
    pub(super) fn expire(&mut self, now: Instant, step: &mut Step<T>) {
        while let Some(&Reverse((deadline, seq, ix))) = self.deadlines.peek() {
            let level = &mut self.levels[ix];
            let found = level.entries.binary_search_by_key(&seq, |e| e.seq).ok();
            match found {
                Some(_) if deadline > now => break,
                Some(at) => {
                    self.deadlines.pop();
                    let e = level.entries.remove(at).expect("found by search");
                    level.rows -= e.rows;
                    match level.action {
                        TimeoutAction::Reject => {
                            self.len -= 1;
                            step.expired.push(e);
                        }
                        TimeoutAction::Delay => {
                            self.delayed_rows += e.rows;
                            self.delayed.push_back(Entry {
                                deadline: None,
                                ..e
                            });
                        }
                    }
                }
                // It left before its deadline.
                None => {
                    self.deadlines.pop();
                }
            }
        }
        if self.deadlines.len() > COMPACT_FACTOR * self.len + COMPACT_SLACK {
            self.compact();
        }
    }

    /// Rebuilds the heap of deadlines from the queued entries.
    fn compact(&mut self) {
        self.deadlines = self
            .levels
            .iter()
            .enumerate()
            .flat_map(|(ix, l)| {
                l.entries
                    .iter()
                    .filter_map(move |e| e.deadline.map(|d| Reverse((d, e.seq, ix))))
            })
            .collect();
    }

    /// Items in the heap of deadlines, stale ones included.
    #[cfg(test)]
    pub(super) fn deadline_items(&self) -> usize {
        self.deadlines.len()
    }

    /// The earliest deadline of a queued entry (exact after [`Queues::expire`]).
    pub(super) fn earliest_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((d, _, _))| *d)
    }

    /// The batch that could be formed now from at most `cap` rows (at least one entry;
    /// one entry only when `cap` is 0). Cancelled entries met on the way are removed
    /// into `step.cancelled`.
    pub(super) fn candidate(&mut self, cap: usize, step: &mut Step<T>) -> Option<Candidate> {
        let mut count = 0;
        let mut rows = 0;
        let mut oldest: Option<Instant> = None;
        let queues = self
            .levels
            .iter_mut()
            .map(|l| (&mut l.entries, &mut l.rows))
            .chain(std::iter::once((&mut self.delayed, &mut self.delayed_rows)));
        for (entries, queue_rows) in queues {
            let mut i = 0;
            while let Some(e) = entries.get(i) {
                if e.payload.is_cancelled() {
                    let e = entries.remove(i).expect("present");
                    *queue_rows -= e.rows;
                    self.len -= 1;
                    step.cancelled.push(e);
                    continue;
                }
                if count > 0 && (cap == 0 || rows + e.rows > cap) {
                    return oldest.map(|oldest| Candidate {
                        count,
                        rows,
                        oldest,
                        more: true,
                    });
                }
                count += 1;
                rows += e.rows;
                oldest = Some(oldest.map_or(e.enqueued, |t| t.min(e.enqueued)));
                i += 1;
            }
        }
        oldest.map(|oldest| Candidate {
            count,
            rows,
            oldest,
            more: false,
        })
    }

    /// The longest prefix of the first `count` entries whose rows are a preferred size.
    pub(super) fn preferred_prefix(&self, preferred: &[usize], count: usize) -> Option<usize> {
        let mut rows = 0;
        let mut best = None;
        for (i, e) in self.ordered().take(count).enumerate() {
            rows += e.rows;
            if preferred.contains(&rows) {
                best = Some(i + 1);
            }
        }
        best
    }

    /// Removes the first `n` entries in priority, then arrival, order.
    pub(super) fn take(&mut self, mut n: usize) -> Vec<Entry<T>> {
        let mut out = Vec::with_capacity(n);
        let queues = self
            .levels
            .iter_mut()
            .map(|l| (&mut l.entries, &mut l.rows))
            .chain(std::iter::once((&mut self.delayed, &mut self.delayed_rows)));
        for (entries, rows) in queues {
            while n > 0 {
                let Some(e) = entries.pop_front() else { break };
                *rows -= e.rows;
                out.push(e);
                n -= 1;
            }
        }
        self.len -= out.len();
        out
    }

    fn ordered(&self) -> impl Iterator<Item = &Entry<T>> {
        self.levels
            .iter()
            .flat_map(|l| l.entries.iter())
            .chain(self.delayed.iter())
    }

    /// Entries whose callers still wait for them (walks every queue).
    pub(super) fn waiting(&self) -> usize {
        self.ordered().filter(|e| !e.payload.is_cancelled()).count()
    }

    /// Whether the entry `seq` is still queued.
    pub(super) fn contains(&self, seq: u64) -> bool {
        self.levels
            .iter()
            .any(|l| l.entries.binary_search_by_key(&seq, |e| e.seq).is_ok())
            || self.delayed.iter().any(|e| e.seq == seq)
    }
}
