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

/// How soon a failed sweep is tried again (then twice as late each time,
/// up to [`SWEEP_EVERY`]): one after a reconnect that fails while the
/// stream has no leader must not wait a whole period to find what was
/// published during the outage.
const SWEEP_RETRY: Duration = Duration::from_secs(1);

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
///
/// Sweeps run beside the wakes, never in their way: while a stream elects
/// a leader, a sweep's request waits out its whole timeout (10 s), and the
/// wakes of what the new leader stores meanwhile must reach their workers
/// at once. (They waited behind the sweep a reconnect started: an
/// invocation accepted 5 s after its stream's leader was killed ran 5 s
/// after its 202, at the sweep's timeout.) A sweep that fails is tried
/// again after [`SWEEP_RETRY`], doubling up to [`SWEEP_EVERY`].
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
    let published = (!subscribed.is_empty()).then(|| {
        futures::stream::select_all(subscribed).map(|message| message.subject.to_string())
    });
    let statistics = shared.client.statistics();
    let connects = || {
        statistics
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wake_and_sweep(
        &shared.wakes,
        published,
        || sweep_all(&shared, &subjects),
        connects,
    )
    .await;
}

/// [`run`]'s loop: wakes the queue of each subject `published` yields,
/// and runs `sweep` (true when it swept) at the start, every
/// [`SWEEP_EVERY`] and when `connects` (the client's count of connections)
/// changes, beside the wakes; one that fails again after [`SWEEP_RETRY`],
/// doubling, or as soon as another is asked for. Never returns.
async fn wake_and_sweep<P, S, F>(
    wakes: &Wakes,
    mut published: Option<P>,
    sweep: S,
    connects: impl Fn() -> u64,
) where
    P: futures::Stream<Item = String> + Unpin,
    S: Fn() -> F,
    F: std::future::Future<Output = bool>,
{
    // One permit at most: sweeps asked for while one runs make one more.
    let wanted = Notify::new();
    let sweeps = async {
        loop {
            wanted.notified().await;
            let mut failed = 0;
            while !sweep().await {
                failed += 1;
                let retry = sluice_api::backoff::doubling(SWEEP_RETRY, SWEEP_EVERY, failed);
                // A reconnect meanwhile asks at once: the pause ends.
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = wanted.notified() => {}
                }
            }
        }
    };
    let waking = async {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnects = tokio::time::interval(RECONNECT_CHECK);
        let mut connected = connects();
        loop {
            tokio::select! {
                subject = next(&mut published) => match subject {
                    Some(subject) => wakes.wake_subject(&subject),
                    None => published = None,
                },
                _ = every.tick() => wanted.notify_one(),
                _ = reconnects.tick() => {
                    if connects() != connected {
                        connected = connects();
                        wanted.notify_one();
                    }
                }
            }
        }
    };
    tokio::join!(sweeps, waking);
}

async fn next<P: futures::Stream<Item = String> + Unpin>(
    published: &mut Option<P>,
) -> Option<String> {
    match published {
        Some(published) => published.next().await,
        None => std::future::pending().await,
    }
}

/// Sweeps every subject in turn; false when one could not be swept.
pub(crate) async fn sweep_all(shared: &Shared, subjects: &[String]) -> bool {
    let mut swept = true;
    for subject in subjects {
        swept &= sweep_once(shared, subject).await;
    }
    swept
}

/// Wakes every queue whose invocation subject (matching `subject`) holds
/// messages (queued, or delivered and not yet acknowledged: a work queue
/// keeps both); false when the stream could not be asked (logged).
pub(crate) async fn sweep_once(shared: &Shared, subject: &str) -> bool {
    let subjects = match shared.layout.invocations.info_with_subjects(subject).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot ask which functions have work");
            return false;
        }
    };
    let woken = subjects
        .try_for_each(|(subject, _count)| {
            shared.wakes.wake_subject(&subject);
            std::future::ready(Ok(()))
        })
        .await;
    if let Err(e) = &woken {
        tracing::debug!(error = %e, "cannot ask which functions have work");
    }
    woken.is_ok()
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

    #[tokio::test(start_paused = true)]
    async fn a_wake_reaches_its_worker_while_a_sweep_hangs() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let wakes = Wakes::default();
        let function: FunctionRef = "default/hello".parse().unwrap();
        let worker = wakes.register(&function);
        let (publish, published) = futures::channel::mpsc::unbounded::<String>();
        let sweeps = AtomicU64::new(0);
        let connects = AtomicU64::new(1);
        // Every sweep hangs, as one does on a stream electing a leader
        // until its request times out.
        let hanging = || {
            sweeps.fetch_add(1, Ordering::Relaxed);
            std::future::pending::<bool>()
        };
        let looping = wake_and_sweep(&wakes, Some(published), hanging, || {
            connects.load(Ordering::Relaxed)
        });
        let woken = async {
            // The first sweep (at the start) is under way and hangs.
            while sweeps.load(Ordering::Relaxed) == 0 {
                tokio::task::yield_now().await;
            }
            connects.store(2, Ordering::Relaxed);
            tokio::time::sleep(RECONNECT_CHECK * 2).await;
            publish
                .unbounded_send(function.queue_subjects()[0].clone())
                .unwrap();
            tokio::time::timeout(Duration::from_secs(1), worker.normal.notified()).await
        };
        tokio::select! {
            () = looping => unreachable!("the loop never returns"),
            woken = woken => assert!(woken.is_ok(), "the wake waited behind the sweep"),
        }
        assert_eq!(sweeps.load(Ordering::Relaxed), 1, "one sweep at a time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_sweep_is_tried_again_later_each_time_and_at_once_after_a_reconnect() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let wakes = Wakes::default();
        let started = tokio::time::Instant::now();
        let sweeps = Mutex::new(Vec::new());
        let connects = AtomicU64::new(1);
        // The first three sweeps fail, as while the stream has no leader.
        let sweep = || {
            let mut at = sync::lock(&sweeps);
            at.push(started.elapsed().as_millis());
            std::future::ready(at.len() > 3)
        };
        let looping = wake_and_sweep(
            &wakes,
            None::<futures::stream::Empty<String>>,
            sweep,
            || connects.load(Ordering::Relaxed),
        );
        let checked = async {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            // At the start, then 1 s and 2 s after a failure.
            assert_eq!(*sync::lock(&sweeps), [0, 1000, 3000]);
            // The next would come 4 s after the last; a reconnect (seen
            // within RECONNECT_CHECK) asks sooner, and that one succeeds.
            connects.store(2, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert_eq!(*sync::lock(&sweeps), [0, 1000, 3000, 4000]);
        };
        tokio::select! {
            () = looping => unreachable!("the loop never returns"),
            () = checked => {}
        }
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
