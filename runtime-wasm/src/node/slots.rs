//! A function's concurrency slots, handed out by priority lane: when a
//! slot frees and several lanes wait for one, [`sluice_api::WeightedPick`]
//! says which lane gets it (sync 8 : high 4 : normal 2 : low 1), first come
//! first served within a lane, as local mode's dispatcher picks its next
//! job. A worker's lanes, its ordering buckets (as `normal`) and its direct
//! calls waiting for a slot (as `sync`) all take their slots here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sluice_api::{Lane, WeightedPick};
use sluice_serve::sync::lock;
use tokio::sync::oneshot;

/// `concurrency` slots shared by the lanes of one function.
#[derive(Debug)]
pub(crate) struct LaneSlots {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    free: usize,
    pick: WeightedPick,
    /// Per lane ([`Lane::index`]), in arrival order.
    waiting: [VecDeque<oneshot::Sender<()>>; 4],
}

/// One slot, given back when dropped (to the lane picked next, if any
/// waits).
#[derive(Debug)]
pub(crate) struct LaneSlot {
    slots: Arc<LaneSlots>,
}

impl Drop for LaneSlot {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl LaneSlots {
    /// `concurrency` slots (at least one).
    pub(crate) fn new(concurrency: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                free: concurrency.max(1),
                pick: WeightedPick::default(),
                waiting: Default::default(),
            }),
        })
    }

    /// A slot for work of `lane`: at once when one is free, else when the
    /// weighted rule picks `lane` as a slot frees. Cancel-safe: a slot
    /// granted to a waiter that went away is given back.
    pub(crate) async fn acquire(self: &Arc<Self>, lane: Lane) -> LaneSlot {
        self.request(lane).wait().await
    }

    /// Gets in line for a slot for `lane` now (or takes a free one), to
    /// wait for it later with [`SlotRequest::wait`]: a lane with work stays
    /// in line while it fetches that work. Dropped, it gives back what it
    /// was granted.
    pub(crate) fn request(self: &Arc<Self>, lane: Lane) -> SlotRequest {
        let mut inner = lock(&self.inner);
        let receiver = if inner.free > 0 {
            inner.free -= 1;
            None
        } else {
            let (sender, receiver) = oneshot::channel();
            inner.waiting[lane.index()].push_back(sender);
            Some(receiver)
        };
        SlotRequest {
            slots: self.clone(),
            pending: Some(receiver),
        }
    }

    /// A slot if one is free now (none is while any lane waits).
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<LaneSlot> {
        let mut inner = lock(&self.inner);
        if inner.free == 0 {
            return None;
        }
        inner.free -= 1;
        Some(LaneSlot {
            slots: self.clone(),
        })
    }

    /// Slots free now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        lock(&self.inner).free
    }

    fn release(&self) {
        let mut inner = lock(&self.inner);
        let Inner {
            free,
            pick,
            waiting,
        } = &mut *inner;
        for queue in waiting.iter_mut() {
            queue.retain(|sender| !sender.is_closed());
        }
        while let Some(lane) = pick.pick(|lane| !waiting[lane.index()].is_empty()) {
            let Some(sender) = waiting[lane.index()].pop_front() else {
                continue;
            };
            // A waiter that went away since: the next one gets it.
            if sender.send(()).is_ok() {
                return;
            }
        }
        *free += 1;
    }
}

/// A place in line for a slot ([`LaneSlots::request`]).
#[derive(Debug)]
pub(crate) struct SlotRequest {
    slots: Arc<LaneSlots>,
    /// `Some(None)`: granted at once; `Some(Some(_))`: in line; `None`:
    /// handed on as a [`LaneSlot`].
    pending: Option<Option<oneshot::Receiver<()>>>,
}

impl SlotRequest {
    /// The slot, once granted.
    pub(crate) async fn wait(mut self) -> LaneSlot {
        if let Some(Some(receiver)) = self.pending.as_mut() {
            // `release` drops a sender unsent only when its receiver is
            // gone: this ends with a grant.
            let _ = receiver.await;
        }
        self.pending = None;
        LaneSlot {
            slots: self.slots.clone(),
        }
    }
}

impl Drop for SlotRequest {
    fn drop(&mut self) {
        match self.pending.take() {
            None => {}
            Some(None) => self.slots.release(),
            Some(Some(mut receiver)) => {
                receiver.close();
                if receiver.try_recv().is_ok() {
                    self.slots.release();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn freed_slots_go_to_lanes_by_weight() {
        let slots = LaneSlots::new(1);
        let held = slots.acquire(Lane::Low).await;
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // Four lows queue first, then four highs: highs get four of five.
        for lane in [Lane::Low; 4].into_iter().chain([Lane::High; 4]) {
            let slots = slots.clone();
            let order_tx = order_tx.clone();
            tasks.push(tokio::spawn(async move {
                let slot = slots.acquire(lane).await;
                order_tx.send(lane).unwrap();
                drop(slot);
            }));
            tokio::task::yield_now().await;
        }
        // Every waiter is queued before the first slot frees.
        while lock(&slots.inner)
            .waiting
            .iter()
            .map(VecDeque::len)
            .sum::<usize>()
            < 8
        {
            tokio::task::yield_now().await;
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        drop(order_tx);
        let mut got = Vec::new();
        while let Some(lane) = order.recv().await {
            got.push(lane);
        }
        let first_five = &got[..5];
        assert_eq!(
            first_five.iter().filter(|l| **l == Lane::High).count(),
            4,
            "{got:?}"
        );
        assert_eq!(got.len(), 8);
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test]
    async fn a_request_dropped_unwaited_gives_its_slot_back() {
        let slots = LaneSlots::new(1);
        drop(slots.request(Lane::Low));
        let held = slots.acquire(Lane::Normal).await;
        let in_line = slots.request(Lane::High);
        drop(held);
        // Granted to the request, which nobody waits on: back to free.
        drop(in_line);
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test]
    async fn an_abandoned_wait_gives_its_slot_back() {
        let slots = LaneSlots::new(1);
        let held = slots.acquire(Lane::Normal).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), slots.acquire(Lane::Sync));
        assert!(gave_up.await.is_err());
        drop(held);
        assert_eq!(slots.available(), 1);
        let again = slots.try_acquire().expect("free");
        assert!(slots.try_acquire().is_none());
        drop(again);
    }
}
