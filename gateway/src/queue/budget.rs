//! The per-function byte budget of the queue (`--max-queue-bytes`), beside
//! its depth limit: one function's flood of large invocations must leave
//! the shared invocation stream (or, in local mode, the process's memory)
//! room for every other function.
//!
//! Local mode holds an invocation's bytes from its submit until its last
//! attempt ends. On JetStream, which has no per-subject byte limit, each
//! gateway counts what it queued itself until the consumer of its lane has
//! delivered it (its `delivered.stream_sequence` passed the message's):
//! the bound is on bytes waiting for a runtime, per gateway replica, all
//! of a function's lanes together. What is delivered is bounded by the
//! function's concurrency already.

use sluice_serve::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use sluice_api::names::FunctionRef;
use sluice_api::{Invocation, Lane};
use sluice_nats::layout::Layout;

use super::QueueError;
use crate::metrics::Metrics;

/// Bytes one invocation takes in the queue: its body, headers and
/// request target (what its message carries, give or take the wire
/// headers' names).
pub fn invocation_bytes(invocation: &Invocation) -> u64 {
    let headers: usize = invocation
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let target = invocation.path.len() + invocation.query.as_ref().map_or(0, String::len);
    u64::try_from(invocation.body.len() + headers + target).unwrap_or(u64::MAX)
}

/// Synchronous calls may hold `1 / SYNC_HEADROOM` more than the byte
/// limit that refuses async work, so a backlog that fills the budget
/// leaves room for callers who wait.
pub const SYNC_HEADROOM: u64 = 4;

/// Which limit refused an invocation (the `bound` of a 429 `queue_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueBound {
    /// `--max-queue-depth`: invocations.
    Depth,
    /// `--max-queue-bytes`: bytes.
    Bytes,
}

impl QueueBound {
    /// `depth` or `bytes`: the JSON error's `bound` and the metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Depth => "depth",
            Self::Bytes => "bytes",
        }
    }

    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Depth => "--max-queue-depth",
            Self::Bytes => "--max-queue-bytes",
        }
    }
}

/// Bytes held per function, against one limit for each.
#[derive(Debug)]
pub struct ByteBudget {
    max: u64,
    held: Mutex<HashMap<FunctionRef, Held>>,
    metrics: Metrics,
}

/// One function's bytes: reserved by submits under way, and queued (by
/// lane, then stream sequence) until delivered.
#[derive(Debug, Default)]
struct Held {
    reserved: u64,
    queued: [BTreeMap<u64, u64>; 4],
    queued_bytes: u64,
}

impl Held {
    fn total(&self) -> u64 {
        self.reserved + self.queued_bytes
    }
}

impl ByteBudget {
    /// A budget of `max` bytes per function; `sluice_queue_bytes` shows
    /// what each holds.
    pub fn new(max: u64, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::default(),
            metrics,
        })
    }

    /// Holds `size` bytes for `function` while the returned reservation
    /// lives (or, once [`Reservation::queued`], until delivered); `None`
    /// when that would pass the limit. A function holding nothing always
    /// gets its invocation in, however large: the limit never makes one
    /// invocation impossible.
    pub fn reserve(self: &Arc<Self>, function: &FunctionRef, size: u64) -> Option<Reservation> {
        self.reserve_within(function, size, self.max)
    }

    /// The limit of work of `lane`: a sync call's has [`SYNC_HEADROOM`].
    fn limit(&self, lane: Lane) -> u64 {
        match lane {
            Lane::Sync => self.max.saturating_add(self.max / SYNC_HEADROOM),
            _ => self.max,
        }
    }

    fn reserve_within(
        self: &Arc<Self>,
        function: &FunctionRef,
        size: u64,
        limit: u64,
    ) -> Option<Reservation> {
        let mut all = lock(&self.held);
        let held = all.entry(function.clone()).or_default();
        let total = held.total();
        if total > 0 && total.saturating_add(size) > limit {
            return None;
        }
        held.reserved += size;
        self.show(function, held);
        Some(Reservation {
            budget: self.clone(),
            function: function.clone(),
            size,
        })
    }

    /// Forgets `function`'s queued messages of `lane` up to stream
    /// sequence `delivered` (the lane's consumer has handed them to
    /// runtimes); with `u64::MAX`, all of them (its subject holds none).
    pub fn delivered_through(&self, function: &FunctionRef, lane: Lane, delivered: u64) {
        let mut all = lock(&self.held);
        let Some(held) = all.get_mut(function) else {
            return;
        };
        let queued = &mut held.queued[lane.index()];
        *queued = match delivered.checked_add(1) {
            Some(next) => queued.split_off(&next),
            None => BTreeMap::new(),
        };
        held.queued_bytes = held.queued.iter().flat_map(BTreeMap::values).sum();
        self.show(function, held);
        if held.total() == 0 {
            all.remove(function);
        }
    }

    /// Holds the invocation's bytes against its function's budget, or
    /// refuses it (counted) at the `bytes` bound.
    pub fn hold(self: &Arc<Self>, invocation: &Invocation) -> Result<Reservation, QueueError> {
        self.hold_within(invocation, Lane::Normal)
    }

    /// [`ByteBudget::hold`] for a synchronous call, whose caller waits: it
    /// may pass the limit by a quarter ([`SYNC_HEADROOM`]).
    pub fn hold_sync(self: &Arc<Self>, invocation: &Invocation) -> Result<Reservation, QueueError> {
        self.hold_within(invocation, Lane::Sync)
    }

    fn hold_within(
        self: &Arc<Self>,
        invocation: &Invocation,
        lane: Lane,
    ) -> Result<Reservation, QueueError> {
        self.reserve_within(
            &invocation.function,
            invocation_bytes(invocation),
            self.limit(lane),
        )
        .ok_or_else(|| self.full(&invocation.function, QueueBound::Bytes))
    }

    /// [`ByteBudget::hold`] (or [`ByteBudget::hold_sync`]) for the
    /// JetStream queue, of an invocation queued in `lane`: past the limit
    /// as last known, it first forgets what the consumers of the lanes
    /// holding bytes delivered since (a request per such lane to
    /// JetStream, only then).
    pub async fn hold_queued(
        self: &Arc<Self>,
        layout: &Layout,
        invocation: &Invocation,
        lane: Lane,
    ) -> Result<Reservation, QueueError> {
        let function = &invocation.function;
        let limit = self.limit(lane);
        if let Some(held) = self.reserve_within(function, invocation_bytes(invocation), limit) {
            return Ok(held);
        }
        let holding: Vec<Lane> = lock(&self.held)
            .get(function)
            .map_or_else(Vec::new, |held| {
                Lane::ALL
                    .into_iter()
                    .filter(|lane| !held.queued[lane.index()].is_empty())
                    .collect()
            });
        for holding in holding {
            // No consumer yet (no runtime took the lane's work), or NATS
            // unreachable: what was queued still waits, as far as this
            // gateway knows.
            if let Ok(mut consumer) = layout.existing_consumer(function, holding).await
                && let Ok(info) = consumer.info().await
            {
                self.delivered_through(function, holding, info.delivered.stream_sequence);
            }
        }
        self.hold_within(invocation, lane)
    }

    /// A refusal at `bound`, counted.
    pub fn full(&self, function: &FunctionRef, bound: QueueBound) -> QueueError {
        self.metrics.queue_full(bound.as_str());
        QueueError::Full {
            function: function.clone(),
            bound,
        }
    }

    /// Bytes `function` holds now.
    pub fn held(&self, function: &FunctionRef) -> u64 {
        lock(&self.held).get(function).map_or(0, Held::total)
    }

    fn show(&self, function: &FunctionRef, held: &Held) {
        self.metrics
            .set_queue_bytes(function, i64::try_from(held.total()).unwrap_or(i64::MAX));
    }
}

/// Bytes held for one invocation; released when dropped unless
/// [`Reservation::queued`] moved them to the queued messages.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    function: FunctionRef,
    size: u64,
}

impl Reservation {
    /// The invocation is stored at stream sequence `sequence` in `lane`:
    /// its bytes stay held until the lane's consumer delivers it.
    pub fn queued(self, lane: Lane, sequence: u64) {
        let mut all = lock(&self.budget.held);
        let held = all.entry(self.function.clone()).or_default();
        held.queued[lane.index()].insert(sequence, self.size);
        held.queued_bytes += self.size;
        // Then dropping `self` takes the bytes out of `reserved`.
        drop(all);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut all = lock(&self.budget.held);
        let Some(held) = all.get_mut(&self.function) else {
            return;
        };
        held.reserved = held.reserved.saturating_sub(self.size);
        self.budget.show(&self.function, held);
        if held.total() == 0 {
            all.remove(&self.function);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> FunctionRef {
        FunctionRef::new("default", name).unwrap()
    }

    #[test]
    fn a_function_past_its_bytes_is_refused_and_others_are_not() {
        let budget = ByteBudget::new(100, Metrics::default());
        let first = budget.reserve(&f("big"), 60).expect("room");
        assert!(budget.reserve(&f("big"), 60).is_none(), "120 > 100");
        let other = budget.reserve(&f("small"), 60).expect("its own budget");
        let second = budget.reserve(&f("big"), 40).expect("exactly 100");
        drop((first, second, other));
        assert_eq!(budget.held(&f("big")), 0);
        assert_eq!(budget.held(&f("small")), 0);
    }

    #[test]
    fn sync_calls_have_a_quarter_more_room_than_async_work() {
        let budget = ByteBudget::new(100, Metrics::default());
        let backlog = budget.reserve(&f("a"), 100).expect("room");
        assert!(budget.reserve(&f("a"), 1).is_none(), "async is full");
        let call = budget
            .reserve_within(&f("a"), 25, budget.limit(Lane::Sync))
            .expect("headroom");
        assert!(
            budget
                .reserve_within(&f("a"), 1, budget.limit(Lane::Sync))
                .is_none()
        );
        drop((backlog, call));
    }

    #[test]
    fn one_invocation_always_fits_an_empty_queue() {
        let budget = ByteBudget::new(10, Metrics::default());
        let huge = budget.reserve(&f("a"), 1000).expect("nothing held");
        assert!(budget.reserve(&f("a"), 1).is_none());
        drop(huge);
        assert!(budget.reserve(&f("a"), 1).is_some());
    }

    #[test]
    fn queued_bytes_stay_until_delivered_in_sequence_order() {
        let budget = ByteBudget::new(100, Metrics::default());
        let table: [(u64, u64); 3] = [(5, 30), (9, 30), (12, 30)];
        for (sequence, size) in table {
            budget
                .reserve(&f("a"), size)
                .expect("room")
                .queued(Lane::Normal, sequence);
        }
        budget
            .reserve(&f("a"), 5)
            .expect("room")
            .queued(Lane::High, 7);
        assert_eq!(budget.held(&f("a")), 95);
        assert!(budget.reserve(&f("a"), 30).is_none());
        // Delivered from normal: everything up to 9, not 12; high's 7 stays.
        budget.delivered_through(&f("a"), Lane::Normal, 9);
        assert_eq!(budget.held(&f("a")), 35);
        budget.delivered_through(&f("a"), Lane::Normal, u64::MAX);
        assert_eq!(budget.held(&f("a")), 5);
        budget.delivered_through(&f("a"), Lane::High, 7);
        assert_eq!(budget.held(&f("a")), 0);
    }
}
