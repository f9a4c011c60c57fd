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
//! asked for falls due ([`wake_after`]). A priority lane's subject
//! (`sluice.invoke.<ns>.<fn>.p.<lane>`) or an ordering bucket's
//! (`….k.<bucket>`) wakes that queue's loop of the function's worker
//! ([`super::worker`], [`super::ordered`]), started by the first such wake.
//!
//! A pool node starts no worker for a function until its first wake: a
//! function registered and never invoked costs its registry entry and a
//! name in [`Wakes`], not a task, a consumer handle or a consumer on the
//! server. The first wake of such a function asks the node to start its
//! worker (once: the name leaves the asleep set as the request goes).

use sluice_serve::sync;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use sluice_api::Lane;
use sluice_api::names::{FunctionRef, INVOKE_SUBJECTS, Queue};
use tokio::sync::{Notify, mpsc};

use super::worker::Shared;

/// How often the stream is asked which functions have messages. It bounds
/// how late a message that no publish announced is taken (a dead runtime's,
/// after its `ack_wait`); an idle node sends one request per period.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How often the connection is checked for a reconnect, which calls for a
/// sweep at once (publishes during the outage woke nobody). Local: it
/// reads a counter of the client.
const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// The wake-ups of each served function's worker, by function, and the
/// functions served with no worker yet.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    workers: Mutex<HashMap<FunctionRef, WorkerWakes>>,
    asleep: Mutex<HashSet<FunctionRef>>,
    /// Where a wake of an asleep function asks for its worker. Unbounded,
    /// yet holding at most one request per function served: a name is
    /// sent only as it leaves `asleep`.
    starts: Option<mpsc::UnboundedSender<FunctionRef>>,
}

/// One worker's wake-ups: its `normal` lane's, and those of its other
/// lanes and its ordering buckets.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerWakes {
    pub normal: Arc<Notify>,
    pub side: Arc<SideWakes>,
}

/// The queues of one function other than its `normal` lane (its other
/// lanes, its ordering buckets) found to have work, for its worker to pull
/// from (it starts a queue's loop when first woken for it).
#[derive(Debug, Default)]
pub(crate) struct SideWakes {
    woken: Mutex<BTreeSet<Queue>>,
    notify: Notify,
}

impl SideWakes {
    fn wake(&self, queue: Queue) {
        sync::lock(&self.woken).insert(queue);
        self.notify.notify_one();
    }

    /// The queues woken since the last call, waiting for one if none.
    pub async fn next(&self) -> BTreeSet<Queue> {
        loop {
            let woken = std::mem::take(&mut *sync::lock(&self.woken));
            if !woken.is_empty() {
                return woken;
            }
            self.notify.notified().await;
        }
    }
}

impl Wakes {
    /// Wakes whose first wake of an asleep function ([`Self::sleep`]) is
    /// sent on `starts`.
    pub fn new(starts: mpsc::UnboundedSender<FunctionRef>) -> Self {
        Self {
            starts: Some(starts),
            ..Self::default()
        }
    }

    /// `function` is served here with no worker: its next wake asks for one.
    pub fn sleep(&self, function: &FunctionRef) {
        sync::lock(&self.asleep).insert(function.clone());
    }

    /// `function` is no longer served here, or its worker is starting.
    pub fn forget(&self, function: &FunctionRef) {
        sync::lock(&self.asleep).remove(function);
    }

    /// Whether `function` is served here: asleep, or with a worker (a
    /// moment neither while its worker starts).
    pub fn serves(&self, function: &FunctionRef) -> bool {
        sync::lock(&self.asleep).contains(function) || self.lock().contains_key(function)
    }

    /// A new worker's wake-ups for `function`, replacing the previous
    /// version's (which is stopping).
    pub fn register(&self, function: &FunctionRef) -> WorkerWakes {
        let wakes = WorkerWakes::default();
        self.lock().insert(function.clone(), wakes.clone());
        wakes
    }

    /// Forgets `wakes` unless a newer worker has replaced them.
    pub fn unregister(&self, function: &FunctionRef, wakes: &WorkerWakes) {
        let mut workers = self.lock();
        if workers
            .get(function)
            .is_some_and(|w| Arc::ptr_eq(&w.normal, &wakes.normal))
        {
            workers.remove(function);
        }
    }

    /// Wakes `function`'s worker for one of its queues; a loop busy
    /// pulling keeps the wake-up and pulls once more when it would have
    /// gone to sleep. An asleep function's worker is asked for instead; it
    /// starts awake, so the wake is not lost.
    pub fn wake(&self, function: &FunctionRef, queue: Queue) {
        if let Some(wakes) = self.lock().get(function) {
            match queue {
                Queue::Lane(Lane::Normal) => wakes.normal.notify_one(),
                side => wakes.side.wake(side),
            }
            return;
        }
        if sync::lock(&self.asleep).remove(function)
            && let Some(starts) = &self.starts
        {
            // The node gone (stopping): nothing to start.
            let _ = starts.send(function.clone());
        }
    }

    /// Wakes whatever queues on `subject` (an invocation subject).
    pub fn wake_subject(&self, subject: &str) {
        if let Some((function, queue)) = FunctionRef::queue_of_subject(subject) {
            self.wake(&function, queue);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FunctionRef, WorkerWakes>> {
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

/// The subjects a node listens on for new invocations: its one
/// function's (every lane and ordering bucket), or every function's.
pub(crate) fn subjects(only: Option<&FunctionRef>) -> Vec<String> {
    only.map_or_else(
        || vec![INVOKE_SUBJECTS.to_owned()],
        |f| f.queue_subjects().to_vec(),
    )
}

/// Wakes workers from the invocation subjects and the periodic sweep until
/// aborted. A subscription that fails (NATS away, or a permissions set
/// without `subscribe` on the invocation subjects) leaves the sweep, so
/// work is still taken, up to [`SWEEP_EVERY`] late.
pub(crate) async fn run(shared: Arc<Shared>, subjects: Vec<String>) {
    let mut subscribed = Vec::new();
    for subject in &subjects {
        match shared.client.subscribe(subject.clone()).await {
            Ok(subscription) => subscribed.push(subscription),
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cannot subscribe to new invocations; work is found by the periodic sweep only");
            }
        }
    }
    let mut subscription =
        (!subscribed.is_empty()).then(|| futures::stream::select_all(subscribed));
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
                Some(message) => shared.wakes.wake_subject(&message.subject),
                None => subscription = None,
            },
            _ = sweep.tick() => sweep_all(&shared, &subjects).await,
            _ = reconnects.tick() => {
                if connects() != connected {
                    connected = connects();
                    sweep_all(&shared, &subjects).await;
                }
            }
        }
    }
}

async fn next(
    subscription: &mut Option<futures::stream::SelectAll<async_nats::Subscriber>>,
) -> Option<async_nats::Message> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn sweep_all(shared: &Shared, subjects: &[String]) {
    for subject in subjects {
        sweep_once(shared, subject).await;
    }
}

/// Wakes every queue whose invocation subject (matching `subject`) holds
/// messages (queued, or delivered and not yet acknowledged: a work queue
/// keeps both).
pub(crate) async fn sweep_once(shared: &Shared, subject: &str) {
    let subjects = match shared.layout.invocations.info_with_subjects(subject).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot ask which functions have work");
            return;
        }
    };
    let woken = subjects
        .try_for_each(|(subject, _count)| {
            shared.wakes.wake_subject(&subject);
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
        wakes.wake(&function, Queue::Lane(Lane::Normal));
        // The permit stored by the wake lets this return at once.
        new.normal.notified().await;
        wakes.wake_subject(&function.keyed_subject(3));
        wakes.wake_subject(&function.lane_subject(Lane::High));
        wakes.wake_subject(&function.keyed_subject(5));
        assert_eq!(
            new.side.next().await,
            BTreeSet::from([Queue::Lane(Lane::High), Queue::Bucket(3), Queue::Bucket(5)])
        );
        wakes.unregister(&function, &new);
        assert!(wakes.lock().is_empty());
    }

    #[tokio::test]
    async fn an_asleep_function_asks_for_its_worker_once() {
        let (starts, mut requested) = mpsc::unbounded_channel();
        let wakes = Wakes::new(starts);
        let asleep: FunctionRef = "default/asleep".parse().unwrap();
        let forgotten: FunctionRef = "default/forgotten".parse().unwrap();
        let unknown: FunctionRef = "default/unknown".parse().unwrap();
        wakes.sleep(&asleep);
        wakes.sleep(&forgotten);
        wakes.forget(&forgotten);
        for _ in 0..3 {
            wakes.wake(&asleep, Queue::Lane(Lane::Normal));
            wakes.wake_subject(&asleep.lane_subject(Lane::High));
            wakes.wake(&forgotten, Queue::Lane(Lane::Normal));
            wakes.wake(&unknown, Queue::Bucket(1));
        }
        assert_eq!(requested.try_recv().ok(), Some(asleep.clone()));
        assert!(requested.try_recv().is_err(), "one request per function");
        // Its worker registered: wakes go to it, not to the node.
        let worker = wakes.register(&asleep);
        wakes.wake(&asleep, Queue::Lane(Lane::Normal));
        worker.normal.notified().await;
        assert!(requested.try_recv().is_err());
    }

    #[test]
    fn a_node_listens_on_its_function_or_on_every_function() {
        let function: FunctionRef = "team/hello".parse().unwrap();
        assert_eq!(
            subjects(Some(&function)),
            ["sluice.invoke.team.hello", "sluice.invoke.team.hello.*.*"]
        );
        assert_eq!(subjects(None), ["sluice.invoke.>"]);
    }
}
