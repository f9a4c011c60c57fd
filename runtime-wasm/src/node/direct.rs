//! Direct calls: a gateway sends a sync invocation as a core NATS request
//! on its function's call subject (`sluice.call.<ns>.<fn>`), which every
//! worker of the function subscribes to in one queue group once the
//! function has been invoked (its first call comes through the stream). The worker
//! that gets it runs it at once if it has a free slot and answers on the
//! request's inbox; without one it declines at once, and the gateway
//! queues the invocation on the stream instead (as it does when no runtime
//! subscribes: the function is at zero). A backlog therefore always waits
//! in the stream, where the autoscaler sees it, and a worker waiting for a
//! slot to pull from it gets the next free slot before any direct call
//! (the slots' semaphore hands permits to waiters first).
//!
//! What direct calls never pass is the function's consumer, whose counts
//! the autoscaler reads: the most run at once is reported every
//! [`LOAD_REPORT_EVERY`] instead ([`report`], [`sluice_nats::load`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use sluice_api::names::{CALL_QUEUE_GROUP, FunctionRef};
use sluice_api::{Failure, FailureKind, Outcome};
use sluice_nats::load::{self, LOAD_REPORT_EVERY};
use sluice_nats::reply;
use sluice_serve::sync;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::loader::Served;
use super::worker::{self, Shared};

/// Direct calls of one function running on this node: now, and the most
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

/// The [`Load`] of every function taking direct calls here.
#[derive(Debug, Default)]
pub(crate) struct Loads {
    functions: Mutex<HashMap<FunctionRef, Arc<Load>>>,
}

impl Loads {
    /// A new worker's load for `function`, replacing the previous
    /// version's (which is stopping: its last calls go unreported).
    fn register(&self, function: &FunctionRef) -> Arc<Load> {
        let load = Arc::new(Load::default());
        sync::lock(&self.functions).insert(function.clone(), load.clone());
        load
    }

    /// Forgets `load` unless a newer worker has replaced it.
    fn unregister(&self, function: &FunctionRef, load: &Arc<Load>) {
        let mut functions = sync::lock(&self.functions);
        if functions
            .get(function)
            .is_some_and(|l| Arc::ptr_eq(l, load))
        {
            functions.remove(function);
        }
    }

    /// Each function's peak since the last time, those with none left out.
    fn take_peaks(&self) -> Vec<(FunctionRef, u64)> {
        sync::lock(&self.functions)
            .iter()
            .filter_map(|(function, load)| {
                let peak = load.take_peak();
                (peak > 0).then(|| (function.clone(), peak))
            })
            .collect()
    }
}

/// Takes `served`'s direct calls, each on one of `slots`, from when the
/// worker first pulled an invocation (`warmed`) until `stopped`; then
/// declines what the server had already sent and waits for what runs. A
/// subscription that fails leaves the function to the stream.
///
/// A function never invoked costs no subscription (a pool runtime may
/// serve thousands): its first sync call goes through the stream.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    served: Arc<Served>,
    slots: Arc<Semaphore>,
    mut warmed: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let function = &served.function;
    let warm = tokio::select! {
        warm = warmed.wait_for(|warm| *warm) => warm.is_ok(),
        _ = stopped.wait_for(|stop| *stop) => false,
    };
    if !warm {
        return;
    }
    let mut calls = match shared
        .client
        .queue_subscribe(function.call_subject(), CALL_QUEUE_GROUP.to_owned())
        .await
    {
        Ok(calls) => calls,
        Err(e) => {
            tracing::warn!(%function, error = %e, "cannot take direct calls; sync invocations come through the stream");
            return;
        }
    };
    let load = shared.loads.register(function);
    let mut running = JoinSet::new();
    loop {
        let message = tokio::select! {
            message = calls.next() => message,
            _ = stopped.wait_for(|stop| *stop) => None,
        };
        let Some(message) = message else { break };
        while running.try_join_next().is_some() {}
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                running.spawn(call(
                    shared.clone(),
                    served.clone(),
                    message,
                    load.start(),
                    slot,
                ));
            }
            Err(_) => decline(&shared, message, "busy").await,
        }
    }
    // Unsubscribed once the server has confirmed it, so every call it
    // sent before arrives here and is declined (the gateway queues it).
    if calls.drain().await.is_ok() {
        while let Some(message) = calls.next().await {
            decline(&shared, message, "stopping").await;
        }
    }
    while running.join_next().await.is_some() {}
    shared.loads.unregister(function, &load);
}

/// Runs one direct call and answers it.
async fn call(
    shared: Arc<Shared>,
    served: Arc<Served>,
    message: async_nats::Message,
    _running: Running,
    _slot: OwnedSemaphorePermit,
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
        for (function, peak) in shared.loads.take_peaks() {
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
        let loads = Loads::default();
        let function: FunctionRef = "default/hello".parse().unwrap();
        let load = loads.register(&function);
        assert!(loads.take_peaks().is_empty(), "idle: nothing to report");
        let first = load.start();
        let second = load.start();
        drop(first);
        assert_eq!(loads.take_peaks(), vec![(function.clone(), 2)]);
        // One still runs: the next period starts from it.
        assert_eq!(loads.take_peaks(), vec![(function.clone(), 1)]);
        drop(second);
        assert_eq!(loads.take_peaks(), vec![(function.clone(), 1)]);
        assert_eq!(loads.take_peaks(), Vec::new());
        let replaced = loads.register(&function);
        loads.unregister(&function, &load);
        let _call = replaced.start();
        assert_eq!(loads.take_peaks(), vec![(function, 1)]);
    }
}
