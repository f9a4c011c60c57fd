//! Direct calls: a gateway sends a sync invocation as a core NATS request
//! on its function's call subject (`sluice.call.<ns>.<fn>`), which every
//! runtime serving the function subscribes to in one queue group once the
//! function has been invoked (its first call comes through the stream). The
//! runtime that gets it runs it at once if its worker has a free slot and
//! answers on the request's inbox; without one it declines at once as
//! busy, and the gateway sends it again asking to wait
//! ([`reply::WAIT_HEADER`]). The runtime that gets that one waits for one
//! of the function's slots in the `sync` lane ([`LaneSlots`]), which takes
//! 8 of every 10 slots freed while the `normal` backlog also waits (8 of
//! 9 against `low`, 2 of 3 against `high`), so a caller waiting on its
//! connection is not queued behind thousands of async invocations. As many calls as the function has slots may wait on one
//! runtime; beyond them, and when no runtime subscribes (the function is
//! at zero), the gateway queues the call on the stream, where the
//! autoscaler sees it. Calls waiting count in the load reports.
//!
//! A runtime's subscription for a function, its [`Line`], outlives the
//! worker of one version: a changed function's new worker takes the line
//! over, and it is closed only [`LINE_GRACE`] after the last worker left
//! (the function was removed, or the runtime stops), declining what comes
//! meanwhile. Never unsubscribing while gateways still send matters because
//! async-nats (0.51 and 0.52) forgets a subscription as soon as its `UNSUB`
//! is written, before the server has read it: a call the server routed in
//! between would be dropped unanswered, and its caller would wait out the
//! whole deadline for a 504.
//!
//! What direct calls never pass is the function's consumer, whose counts
//! the autoscaler reads: the most run at once is reported every
//! [`LOAD_REPORT_EVERY`] instead ([`report`], [`sluice_nats::load`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use sluice_api::names::{CALL_QUEUE_GROUP, FunctionRef};
use sluice_api::{Failure, FailureKind, Outcome};
use sluice_nats::load::{self, LOAD_REPORT_EVERY};
use sluice_nats::reply;
use sluice_serve::sync;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use sluice_api::Lane;

use super::loader::Served;
use super::slots::{LaneSlot, LaneSlots};
use super::worker::{self, Shared};

/// How long a line with no worker declines calls before it unsubscribes:
/// long enough for every gateway to have seen a removal in the registry
/// (milliseconds) and stopped sending, so that none is in flight when it
/// goes.
pub(crate) const LINE_GRACE: Duration = Duration::from_secs(2);

/// Direct calls of one function running on this runtime: now, and the most
/// at once since the last report.
#[derive(Debug, Default)]
pub(crate) struct Load {
    running: AtomicU64,
    peak: AtomicU64,
}

impl Load {
    /// Counts a call until the returned guard drops.
    fn start(self: &Arc<Self>) -> Running {
        let now = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Running(self.clone())
    }

    /// The most run at once since the last call, starting the next period
    /// from what runs now.
    fn take_peak(&self) -> u64 {
        self.peak
            .swap(self.running.load(Ordering::Relaxed), Ordering::Relaxed)
    }
}

struct Running(Arc<Load>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The worker a line hands its calls to: one version of the function,
/// its slots, and the calls it runs (which its worker waits for when it
/// stops).
#[derive(Clone)]
pub(crate) struct Handler {
    served: Arc<Served>,
    slots: Arc<LaneSlots>,
    calls: TaskTracker,
    /// Calls waiting for a slot ([`reply::WAIT_HEADER`]).
    waiting: Arc<AtomicU64>,
}

impl Handler {
    fn is(&self, other: &Handler) -> bool {
        Arc::ptr_eq(&self.slots, &other.slots)
    }

    /// Counts one more call waiting for a slot, unless as many as the
    /// function has slots wait already.
    fn may_wait(&self) -> bool {
        let most = u64::from(self.served.spec.concurrency.max(1));
        self.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waiting| {
                (waiting < most).then_some(waiting + 1)
            })
            .is_ok()
    }
}

/// Waits for `handler`'s next free slot (counted in [`Handler::may_wait`]),
/// then runs the call; one whose deadline passes first fails as a timeout
/// without running.
async fn call_when_free(
    shared: Arc<Shared>,
    handler: Handler,
    message: async_nats::Message,
    running: Running,
) {
    let deadline = worker::parse(
        &handler.served.function,
        message.headers.as_ref(),
        message.payload.clone(),
    )
    .ok()
    .map(|received| received.invocation.time_left())
    .unwrap_or_default();
    let slot = tokio::time::timeout(deadline, handler.slots.acquire(Lane::Sync)).await;
    handler.waiting.fetch_sub(1, Ordering::Relaxed);
    match slot {
        Ok(slot) => call(shared, handler.served, message, running, slot).await,
        Err(_) => {
            let Some(inbox) = message.reply else { return };
            let (headers, body) = reply::encode(&Outcome::Failed(Failure {
                kind: FailureKind::Timeout,
                reason: "no slot of the function freed before the deadline".into(),
            }));
            if let Err(e) = shared
                .client
                .publish_with_headers(inbox, headers, body)
                .await
            {
                tracing::warn!(function = %handler.served.function, error = %e, "cannot send the reply");
            }
        }
    }
}

/// One function's subscription on this runtime: who takes its calls now
/// (`None` once the last worker left) and their load.
struct Line {
    handler: watch::Sender<Option<Handler>>,
    load: Arc<Load>,
}

/// Every function's open [`Line`] on this runtime.
#[derive(Default)]
pub(crate) struct Lines {
    functions: Mutex<HashMap<FunctionRef, Line>>,
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = sync::lock(&self.functions).len();
        f.debug_struct("Lines").field("open", &open).finish()
    }
}

impl Lines {
    /// Hands `function`'s open line to `handler`; false when none is open.
    fn take_over(&self, handler: &Handler) -> bool {
        match sync::lock(&self.functions).get(&handler.served.function) {
            Some(line) => {
                line.handler.send_replace(Some(handler.clone()));
                true
            }
            None => false,
        }
    }

    /// Opens a line for `handler`'s function, or hands it the one open;
    /// what the new line's task needs when one was opened.
    fn open(&self, handler: &Handler) -> Option<(watch::Receiver<Option<Handler>>, Arc<Load>)> {
        let mut functions = sync::lock(&self.functions);
        if let Some(line) = functions.get(&handler.served.function) {
            line.handler.send_replace(Some(handler.clone()));
            return None;
        }
        let (sender, receiver) = watch::channel(Some(handler.clone()));
        let load = Arc::new(Load::default());
        functions.insert(
            handler.served.function.clone(),
            Line {
                handler: sender,
                load: load.clone(),
            },
        );
        Some((receiver, load))
    }

    /// `handler` takes no more calls, unless another took over already.
    fn leave(&self, handler: &Handler) {
        if let Some(line) = sync::lock(&self.functions).get(&handler.served.function) {
            line.handler.send_if_modified(|current| {
                let leaves = current.as_ref().is_some_and(|c| c.is(handler));
                if leaves {
                    *current = None;
                }
                leaves
            });
        }
    }

    /// Forgets `function`'s line unless a worker took it over; true when
    /// it was forgotten (its task then unsubscribes).
    fn close_if_left(&self, function: &FunctionRef) -> bool {
        let mut functions = sync::lock(&self.functions);
        let left = functions
            .get(function)
            .is_none_or(|line| line.handler.borrow().is_none());
        if left {
            functions.remove(function);
        }
        left
    }

    /// Each function's peak since the last time, those with none left out.
    fn take_peaks(&self) -> Vec<(FunctionRef, u64)> {
        sync::lock(&self.functions)
            .iter()
            .filter_map(|(function, line)| {
                let peak = line.load.take_peak();
                (peak > 0).then(|| (function.clone(), peak))
            })
            .collect()
    }
}

/// Takes `served`'s direct calls, each on one of `slots`: at once when an
/// earlier version left the function's line open (taken over before this
/// returns, so before the caller retires that version), otherwise from
/// when the worker first pulled an invocation (`warmed`); until `stopped`,
/// then waits for the calls it took. A function never invoked costs no
/// subscription (a pool runtime may serve thousands): its first sync call
/// goes through the stream.
pub(crate) fn serve(
    shared: Arc<Shared>,
    served: Arc<Served>,
    slots: Arc<LaneSlots>,
    mut warmed: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let handler = Handler {
        served,
        slots,
        calls: TaskTracker::new(),
        waiting: Arc::default(),
    };
    let taken_over = shared.lines.take_over(&handler);
    tokio::spawn(async move {
        if !taken_over {
            let warm = tokio::select! {
                warm = warmed.wait_for(|warm| *warm) => warm.is_ok(),
                _ = stopped.wait_for(|stop| *stop) => false,
            };
            if !warm {
                return;
            }
            if let Some((receiver, load)) = shared.lines.open(&handler) {
                tokio::spawn(line(
                    shared.clone(),
                    handler.served.function.clone(),
                    receiver,
                    load,
                ));
            }
        }
        let _ = stopped.wait_for(|stop| *stop).await;
        shared.lines.leave(&handler);
        handler.calls.close();
        handler.calls.wait().await;
    })
}

/// Runs `function`'s line: subscribes, hands each call to the current
/// handler (or declines it), and unsubscribes [`LINE_GRACE`] after the
/// last handler left. A subscription that fails leaves the function to
/// the stream.
async fn line(
    shared: Arc<Shared>,
    function: FunctionRef,
    mut handler: watch::Receiver<Option<Handler>>,
    load: Arc<Load>,
) {
    let mut calls = match shared
        .client
        .queue_subscribe(function.call_subject(), CALL_QUEUE_GROUP.to_owned())
        .await
    {
        Ok(calls) => calls,
        Err(e) => {
            tracing::warn!(%function, error = %e, "cannot take direct calls; sync invocations come through the stream");
            // Its workers' later versions then open a line again.
            sync::lock(&shared.lines.functions).remove(&function);
            return;
        }
    };
    let mut closing: Option<Instant> = None;
    loop {
        let grace = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = calls.next() => {
                let Some(message) = message else { break };
                let current = handler.borrow().clone();
                match current {
                    Some(current) => match current.slots.try_acquire() {
                        Some(slot) => {
                            current.calls.spawn(call(
                                shared.clone(),
                                current.served.clone(),
                                message,
                                load.start(),
                                slot,
                            ));
                        }
                        None if reply::waits_for_slot(message.headers.as_ref())
                            && current.may_wait() =>
                        {
                            current.calls.spawn(call_when_free(
                                shared.clone(),
                                current.clone(),
                                message,
                                load.start(),
                            ));
                        }
                        None => decline(&shared, message, reply::BUSY).await,
                    },
                    None => decline(&shared, message, reply::STOPPING).await,
                }
            }
            changed = handler.changed() => {
                if changed.is_err() {
                    break;
                }
                closing = handler.borrow().is_none().then(|| Instant::now() + LINE_GRACE);
            }
            () = grace => {
                if shared.lines.close_if_left(&function) {
                    break;
                }
                closing = None;
            }
        }
    }
    // Unsubscribed once the server has confirmed it, so every call it
    // sent before arrives here and is declined (the gateway queues it).
    if calls.drain().await.is_ok() {
        while let Some(message) = calls.next().await {
            decline(&shared, message, reply::STOPPING).await;
        }
    }
}

/// Runs one direct call and answers it.
async fn call(
    shared: Arc<Shared>,
    served: Arc<Served>,
    message: async_nats::Message,
    _running: Running,
    _slot: LaneSlot,
) {
    let Some(inbox) = message.reply else {
        tracing::debug!(function = %served.function, "a direct call without an inbox; dropped");
        return;
    };
    let (outcome, kept) = match worker::parse(
        &served.function,
        message.headers.as_ref(),
        message.payload,
    ) {
        Ok(received) => {
            let attempted = worker::run(
                &shared,
                &served,
                &received.invocation,
                &CancellationToken::new(),
            )
            .await;
            (
                attempted.outcome,
                Some((received.invocation, attempted.logs)),
            )
        }
        Err(reason) => {
            tracing::warn!(function = %served.function, %reason, "refusing a direct call that cannot run");
            let failed = Outcome::Failed(Failure {
                kind: FailureKind::Internal,
                reason,
            });
            (failed, None)
        }
    };
    let (headers, body) = reply::encode(&outcome);
    if let Err(e) = shared
        .client
        .publish_with_headers(inbox, headers, body)
        .await
    {
        tracing::warn!(function = %served.function, error = %e, "cannot send the reply");
    }
    // After the reply, as on the stream path: the caller does not wait for it.
    if let Some((invocation, logs)) = kept {
        worker::keep_logs(&shared, &invocation, 1, logs).await;
    }
}

/// Tells the caller that the call did not run, so it queues it.
async fn decline(shared: &Shared, message: async_nats::Message, why: &str) {
    let Some(inbox) = message.reply else { return };
    if let Err(e) = shared
        .client
        .publish_with_headers(inbox, reply::declined(why), bytes::Bytes::new())
        .await
    {
        tracing::debug!(subject = %message.subject, error = %e, "cannot decline a direct call");
    }
}

/// Reports every [`LOAD_REPORT_EVERY`] each function's most direct calls
/// at once since the last report, for those that had any, until aborted.
pub(crate) async fn report(shared: Arc<Shared>) {
    // Unique per process: the random part of a fresh inbox.
    let inbox = shared.client.new_inbox();
    let reporter = inbox.rsplit('.').next().unwrap_or(&inbox).to_owned();
    let mut every = tokio::time::interval(LOAD_REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for (function, peak) in shared.lines.take_peaks() {
            if let Err(e) = shared
                .client
                .publish(function.load_subject(), load::encode(&reporter, peak))
                .await
            {
                tracing::debug!(%function, error = %e, "cannot report direct calls");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_gives_the_most_at_once_then_what_still_runs() {
        let load = Arc::new(Load::default());
        assert_eq!(load.take_peak(), 0, "idle: nothing to report");
        let first = load.start();
        let second = load.start();
        drop(first);
        assert_eq!(load.take_peak(), 2);
        // One still runs: the next period starts from it.
        assert_eq!(load.take_peak(), 1);
        drop(second);
        assert_eq!(load.take_peak(), 1);
        assert_eq!(load.take_peak(), 0);
    }
}
