//! Waking workers when their function has work, so that an idle runtime
//! costs nothing per registered function: a worker pulls only after a wake
//! and until its queue is empty ([`super::worker`]).
//!
//! Two sources, one per node: a core NATS subscription on the invocation
//! subjects it serves (every message published into the invocation stream
//! is also seen there, so a new invocation wakes its function's worker at
//! once), and a sweep every [`SWEEP_EVERY`] (and right after a reconnect)
//! that asks the stream which invocation subjects hold messages (one
//! `STREAM.INFO` request with a subjects filter, its answer as long as the
//! list of functions with work) and wakes those. The sweep finds what no
//! publish announces: a message whose runtime died (redelivered after its
//! `ack_wait`), one published while this node was disconnected, one queued
//! before the worker started. A worker also wakes itself when a retry it
//! asked for falls due ([`wake_after`]).

use sluice_serve::sync;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use sluice_api::names::{FunctionRef, INVOKE_SUBJECTS};
use tokio::sync::Notify;

use super::worker::Shared;

/// How often the stream is asked which functions have messages. It bounds
/// how late a message that no publish announced is taken (a dead runtime's,
/// after its `ack_wait`); an idle node sends one request per period.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How often the connection is checked for a reconnect, which calls for a
/// sweep at once (publishes during the outage woke nobody). Local: it
/// reads a counter of the client.
const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// The wake-up of each served function's worker, by function.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    workers: Mutex<HashMap<FunctionRef, Arc<Notify>>>,
}

impl Wakes {
    /// A new worker's wake-up for `function`, replacing the previous
    /// version's (which is stopping).
    pub fn register(&self, function: &FunctionRef) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.lock().insert(function.clone(), notify.clone());
        notify
    }

    /// Forgets `notify` unless a newer worker has replaced it.
    pub fn unregister(&self, function: &FunctionRef, notify: &Arc<Notify>) {
        let mut workers = self.lock();
        if workers
            .get(function)
            .is_some_and(|n| Arc::ptr_eq(n, notify))
        {
            workers.remove(function);
        }
    }

    /// Wakes `function`'s worker; a worker busy pulling keeps the wake-up
    /// and pulls once more when it would have gone to sleep.
    pub fn wake(&self, function: &FunctionRef) {
        if let Some(notify) = self.lock().get(function) {
            notify.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FunctionRef, Arc<Notify>>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        sync::lock(&self.workers)
    }
}

/// Wakes `notify` after `delay`: a retry's message becomes deliverable
/// again then, and no publish announces it.
pub(crate) fn wake_after(notify: &Arc<Notify>, delay: Duration) {
    let notify = Arc::downgrade(notify);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Some(notify) = notify.upgrade() {
            notify.notify_one();
        }
    });
}

/// The subject a node listens on for new invocations: its one function's,
/// or every function's.
pub(crate) fn subject(only: Option<&FunctionRef>) -> String {
    only.map_or_else(|| INVOKE_SUBJECTS.to_owned(), FunctionRef::invoke_subject)
}

/// Wakes workers from the invocation subjects and the periodic sweep until
/// aborted. A subscription that fails (NATS away, or a permissions set
/// without `subscribe` on the invocation subjects) leaves the sweep, so
/// work is still taken, up to [`SWEEP_EVERY`] late.
pub(crate) async fn run(shared: Arc<Shared>, subject: String) {
    let mut subscription = match shared.client.subscribe(subject.clone()).await {
        Ok(subscription) => Some(subscription),
        Err(e) => {
            tracing::warn!(%subject, error = %e, "cannot subscribe to new invocations; work is found by the periodic sweep only");
            None
        }
    };
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconnects = tokio::time::interval(RECONNECT_CHECK);
    let statistics = shared.client.statistics();
    let connects = || {
        statistics
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut connected = connects();
    loop {
        tokio::select! {
            message = next(&mut subscription) => match message {
                Some(message) => {
                    if let Some(function) = FunctionRef::from_invoke_subject(&message.subject) {
                        shared.wakes.wake(&function);
                    }
                }
                None => subscription = None,
            },
            _ = sweep.tick() => sweep_once(&shared, &subject).await,
            _ = reconnects.tick() => {
                if connects() != connected {
                    connected = connects();
                    sweep_once(&shared, &subject).await;
                }
            }
        }
    }
}

async fn next(subscription: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}

/// Wakes every function whose invocation subject holds messages (queued,
/// or delivered and not yet acknowledged: a work queue keeps both).
async fn sweep_once(shared: &Shared, subject: &str) {
    let subjects = match shared.layout.invocations.info_with_subjects(subject).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot ask which functions have work");
            return;
        }
    };
    let woken = subjects
        .try_for_each(|(subject, _count)| {
            if let Some(function) = FunctionRef::from_invoke_subject(&subject) {
                shared.wakes.wake(&function);
            }
            std::future::ready(Ok(()))
        })
        .await;
    if let Err(e) = woken {
        tracing::debug!(error = %e, "cannot ask which functions have work");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replaced_worker_does_not_unregister_its_successor() {
        let wakes = Wakes::default();
        let function: FunctionRef = "default/hello".parse().unwrap();
        let old = wakes.register(&function);
        let new = wakes.register(&function);
        wakes.unregister(&function, &old);
        wakes.wake(&function);
        // The permit stored by the wake lets this return at once.
        new.notified().await;
        wakes.unregister(&function, &new);
        assert!(wakes.lock().is_empty());
    }

    #[test]
    fn a_node_listens_on_its_function_or_on_every_function() {
        let function: FunctionRef = "team/hello".parse().unwrap();
        assert_eq!(subject(Some(&function)), "sluice.invoke.team.hello");
        assert_eq!(subject(None), "sluice.invoke.>");
    }
}
