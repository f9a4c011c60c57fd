//! The instances and memory a runtime shares between the functions it
//! serves, handed out fairly when they compete ([`sluice_api::share`]):
//! an invocation waits here for an instance slot (of `--max-instances`)
//! and, with a memory budget, its reservation, and whenever either frees,
//! the waiting function with the best claim that fits starts next (its
//! namespace running fewest, then its own running per weight, then the
//! oldest). Before fair share each resource served waiters in turn (or in
//! no order), so one function's thousands of waiting invocations stood
//! before another's first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sluice_api::names::FunctionRef;
use sluice_api::share::{self, Candidate};
use sluice_serve::sync::lock;
use tokio::sync::oneshot;

use crate::budget::{MemoryBudget, Reservation};

/// The runtime's instance slots and memory budget, shared fairly.
#[derive(Debug)]
pub(crate) struct Share {
    state: Mutex<State>,
    memory: Option<Arc<MemoryBudget>>,
    slots: usize,
}

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Instances running now, per function and per namespace.
    running: HashMap<FunctionRef, u32>,
    namespaces: HashMap<String, u32>,
    /// Invocations waiting, per function, oldest first.
    waiting: HashMap<FunctionRef, VecDeque<Waiter>>,
    arrivals: u64,
}

#[derive(Debug)]
struct Waiter {
    arrived: u64,
    weight: u32,
    bytes: u64,
    granted: oneshot::Sender<Grant>,
}

/// What a granted invocation holds: an instance slot and its memory.
#[derive(Debug)]
struct Grant {
    reservation: Option<Reservation>,
}

/// An instance slot (and its memory) held until dropped, when the next
/// waiter with the best claim gets it.
#[derive(Debug)]
pub(crate) struct Admitted {
    share: Arc<Share>,
    function: FunctionRef,
    reservation: Option<Reservation>,
}

impl Share {
    /// `slots` instance slots and, if any, a memory `budget`.
    pub(crate) fn new(slots: usize, memory: Option<Arc<MemoryBudget>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: slots,
                ..State::default()
            }),
            memory,
            slots,
        })
    }

    /// The memory budget, if there is one.
    pub(crate) fn memory(&self) -> Option<&Arc<MemoryBudget>> {
        self.memory.as_ref()
    }

    /// Instances running now.
    pub(crate) fn in_use(&self) -> usize {
        self.slots - lock(&self.state).free
    }

    /// Waits for an instance slot and `bytes` of memory for an invocation
    /// of `function` (of `spec.scaling.weight` `weight`): at once when both
    /// are free and nobody waits, else when the fair rule picks it.
    /// Cancel-safe: a grant whose waiter went away, before or after it
    /// was sent, is given back ([`Pending`]). `None`
    /// never happens while the share lives (a waiter is only dropped
    /// unsent once its receiver is gone).
    pub(crate) async fn admit(
        self: &Arc<Self>,
        function: &FunctionRef,
        weight: u32,
        bytes: u64,
    ) -> Option<Admitted> {
        let (granted, receiver) = oneshot::channel();
        {
            let mut state = lock(&self.state);
            state.arrivals += 1;
            let arrived = state.arrivals;
            state
                .waiting
                .entry(function.clone())
                .or_default()
                .push_back(Waiter {
                    arrived,
                    weight,
                    bytes,
                    granted,
                });
            self.grant(&mut state);
        }
        let mut pending = Pending {
            share: self,
            function,
            receiver: Some(receiver),
        };
        let grant = pending.receiver.as_mut()?.await.ok()?;
        // Granted and taken: from here the `Admitted` gives it back.
        pending.receiver = None;
        Some(Admitted {
            share: self.clone(),
            function: function.clone(),
            reservation: grant.reservation,
        })
    }

    /// Hands out what is free to the waiters the fair rule picks, while
    /// any fits.
    fn grant(&self, state: &mut State) {
        loop {
            // Waiters who went away (their deadline passed) leave first.
            state.waiting.retain(|_, queue| {
                queue.retain(|w| !w.granted.is_closed());
                !queue.is_empty()
            });
            if state.free == 0 {
                return;
            }
            let heads: Vec<(&FunctionRef, Candidate)> = state
                .waiting
                .iter()
                .filter_map(|(function, queue)| {
                    let head = queue.front()?;
                    Some((
                        function,
                        Candidate {
                            namespace_running: state
                                .namespaces
                                .get(&function.namespace)
                                .copied()
                                .unwrap_or(0),
                            running: state.running.get(function).copied().unwrap_or(0),
                            weight: head.weight,
                            arrived: head.arrived,
                            fits: self
                                .memory
                                .as_ref()
                                .is_none_or(|m| m.total() - m.reserved() >= head.bytes),
                        },
                    ))
                })
                .collect();
            let candidates: Vec<Candidate> = heads.iter().map(|(_, c)| *c).collect();
            let Some(picked) = share::next(&candidates) else {
                return;
            };
            let function = heads[picked].0.clone();
            let Some(waiter) = state
                .waiting
                .get_mut(&function)
                .and_then(VecDeque::pop_front)
            else {
                return;
            };
            let reservation = match &self.memory {
                Some(memory) => match memory.try_reserve(waiter.bytes) {
                    Some(reservation) => Some(reservation),
                    // Taken meanwhile by memory held outside the share:
                    // back in line, tried at the next release.
                    None => {
                        if let Some(queue) = state.waiting.get_mut(&function) {
                            queue.push_front(waiter);
                        }
                        return;
                    }
                },
                None => None,
            };
            match waiter.granted.send(Grant { reservation }) {
                Ok(()) => {
                    state.free -= 1;
                    *state.running.entry(function.clone()).or_default() += 1;
                    *state
                        .namespaces
                        .entry(function.namespace.clone())
                        .or_default() += 1;
                }
                // Gone between the sweep and now: its reservation drops
                // here, and the next waiter is tried.
                Err(grant) => drop(grant),
            }
        }
    }

    fn release(&self, function: &FunctionRef) {
        let mut state = lock(&self.state);
        state.free += 1;
        fn less<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: &K) {
            if let Some(n) = counts.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(key);
                }
            }
        }
        less(&mut state.running, function);
        less(&mut state.namespaces, &function.namespace);
        self.grant(&mut state);
    }
}

/// A waiter's place in [`Share::admit`]. Dropped before its grant was
/// taken (the invocation cancelled, or its deadline passed, just as a slot
/// was granted to it), it stops further grants and gives back one already
/// sent, which no `Admitted` would otherwise ever release.
struct Pending<'a> {
    share: &'a Arc<Share>,
    function: &'a FunctionRef,
    receiver: Option<oneshot::Receiver<Grant>>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        receiver.close();
        if let Ok(grant) = receiver.try_recv() {
            // The memory first, so the next grant sees it free.
            drop(grant.reservation);
            self.share.release(self.function);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // The memory first, so the next grant sees it free.
        drop(self.reservation.take());
        self.share.release(&self.function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn f(name: &str) -> FunctionRef {
        name.parse().unwrap()
    }

    #[tokio::test]
    async fn a_quiet_function_goes_before_a_flood_that_came_first() {
        let share = Share::new(2, None);
        let flood = f("a/flood");
        let held = [
            share.admit(&flood, 1, 0).await.unwrap(),
            share.admit(&flood, 1, 0).await.unwrap(),
        ];
        assert_eq!(share.in_use(), 2);
        let (started, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        // Ten of the flood wait, then one of a quiet function.
        for function in std::iter::repeat_n(flood.clone(), 10).chain([f("b/quiet")]) {
            let share = share.clone();
            let started = started.clone();
            waiting.push(tokio::spawn(async move {
                let admitted = share.admit(&function, 1, 0).await.unwrap();
                started.send(function.clone()).unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(admitted);
            }));
            tokio::task::yield_now().await;
        }
        while lock(&share.state)
            .waiting
            .values()
            .map(VecDeque::len)
            .sum::<usize>()
            < 11
        {
            tokio::task::yield_now().await;
        }
        drop(held);
        for task in waiting {
            task.await.unwrap();
        }
        drop(started);
        assert_eq!(order.recv().await, Some(f("b/quiet")));
        assert_eq!(share.in_use(), 0);
    }

    #[tokio::test]
    async fn memory_is_granted_to_what_fits_and_given_back() {
        let budget = MemoryBudget::new(100);
        let share = Share::new(4, Some(budget.clone()));
        let big = share.admit(&f("a/big"), 1, 80).await.unwrap();
        // 30 does not fit beside 80; 20 does, though it came later.
        let waits = tokio::spawn({
            let share = share.clone();
            async move { share.admit(&f("a/large"), 1, 30).await.unwrap() }
        });
        tokio::task::yield_now().await;
        let small = share.admit(&f("b/small"), 1, 20).await.unwrap();
        assert_eq!(budget.reserved(), 100);
        drop(big);
        let large = waits.await.unwrap();
        assert_eq!(budget.reserved(), 50);
        drop((small, large));
        assert_eq!(budget.reserved(), 0);
        assert_eq!(share.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiter_dropped_after_its_grant_gives_the_slot_back() {
        let budget = MemoryBudget::new(100);
        let share = Share::new(1, Some(budget.clone()));
        let held = share.admit(&f("a/x"), 1, 10).await.unwrap();
        let y = f("b/y");
        let mut waiting = Box::pin(share.admit(&y, 1, 10));
        assert!(futures::poll!(&mut waiting).is_pending());
        // The slot is granted to the waiter, which is then dropped (its
        // invocation cancelled) before it ever runs again.
        drop(held);
        drop(waiting);
        assert_eq!(share.in_use(), 0);
        assert_eq!(budget.reserved(), 0);
        let again = share.admit(&f("c/z"), 1, 10).await.unwrap();
        assert_eq!(share.in_use(), 1);
        drop(again);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_its_place() {
        let share = Share::new(1, None);
        let held = share.admit(&f("a/x"), 1, 0).await.unwrap();
        let y = f("a/y");
        let gave_up = tokio::time::timeout(Duration::from_millis(10), share.admit(&y, 1, 0));
        assert!(gave_up.await.is_err());
        drop(held);
        assert_eq!(share.in_use(), 0);
        let again = share.admit(&f("a/z"), 1, 0).await.unwrap();
        assert_eq!(share.in_use(), 1);
        drop(again);
    }
}
