//! Core NATS subscriptions on the invocation subjects of functions at
//! zero, so that the first invocation of one wakes it at once instead of at
//! the next tick.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt as _;
use sluice_api::names::FunctionRef;
use tokio::sync::mpsc;

use crate::error::Error;

/// Core NATS subscriptions on the invocation subjects of functions at
/// zero: the first invocation of one is reported at once.
pub(super) struct Waker {
    nats: async_nats::Client,
    watching: HashMap<FunctionRef, tokio::task::AbortHandle>,
    woken: mpsc::UnboundedSender<(FunctionRef, Instant)>,
    wakes: mpsc::UnboundedReceiver<(FunctionRef, Instant)>,
}

impl Waker {
    pub(super) fn new(nats: async_nats::Client) -> Self {
        let (woken, wakes) = mpsc::unbounded_channel();
        Self {
            nats,
            watching: HashMap::new(),
            woken,
            wakes,
        }
    }

    /// Subscribes to `function`'s invocations unless it already is. An
    /// invocation published before the subscription took effect is seen by
    /// the next tick instead.
    pub(super) async fn watch(&mut self, function: &FunctionRef) -> Result<(), Error> {
        if self.watching.contains_key(function) {
            return Ok(());
        }
        // Its lanes' subjects and its ordering buckets'.
        let mut subscribers = Vec::new();
        for subject in function.queue_subjects() {
            subscribers.push(
                self.nats
                    .subscribe(subject.clone())
                    .await
                    .map_err(|source| Error::Subscribe { subject, source })?,
            );
        }
        let mut subscriber = futures::stream::select_all(subscribers);
        let woken = self.woken.clone();
        let reference = function.clone();
        let task = tokio::spawn(async move {
            if subscriber.next().await.is_some() {
                let _ = woken.send((reference, Instant::now()));
            }
            // Dropped: unsubscribed after the first, as one is enough.
        });
        self.watching.insert(function.clone(), task.abort_handle());
        Ok(())
    }

    /// Ends the subscriptions of functions `keep` refuses (gone from the
    /// cluster).
    pub(super) fn retain(&mut self, keep: impl Fn(&FunctionRef) -> bool) {
        self.watching.retain(|function, task| {
            let kept = keep(function);
            if !kept {
                task.abort();
            }
            kept
        });
    }

    pub(super) fn unwatch(&mut self, function: &FunctionRef) {
        if let Some(task) = self.watching.remove(function) {
            task.abort();
        }
    }

    /// The next function woken, and when its first invocation was seen.
    pub(super) async fn next(&mut self) -> (FunctionRef, Instant) {
        loop {
            // Never `None`: `self.woken` keeps the channel open.
            if let Some((function, at)) = self.wakes.recv().await
                // Unwatched since (deleted, or scaled by a tick first).
                && self.watching.remove(&function).is_some()
            {
                return (function, at);
            }
        }
    }
}

impl Drop for Waker {
    /// Ends the subscriptions with the autoscaler (its replica may have
    /// lost the leadership): a task left behind would hold one until a
    /// message came.
    fn drop(&mut self) {
        for task in self.watching.values() {
            task.abort();
        }
    }
}
