//! Schedule triggers: every gateway runs every function's schedules and
//! submits each tick to the queue as an asynchronous invocation. A tick's
//! invocation id (and so its `Nats-Msg-Id`) is the same on every gateway
//! ([`sluice_api::schedule::tick_invocation_id`]), so the stream's
//! duplicate window (2m by default, far above the clocks' skew and
//! [`LATE_GRACE`]) stores one invocation per tick. The queue holds it
//! whether or not the function runs a replica; the operator's autoscaler
//! wakes the function for it as for any queued message.
//!
//! Why the gateways and not the operator's leader: the gateways already
//! hold every function's spec and the queue, in local mode too, and any
//! one of them firing is enough, so a tick survives all but one gateway
//! being down, with no leader hand-over in between.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use sluice_api::names::FunctionRef;
use sluice_api::schedule::{LATE_GRACE, Schedule, Step, tick_invocation};
use sluice_api::{FunctionSpec, ScheduleTrigger};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::queue::InvocationQueue;

/// The running schedules of every function.
#[derive(Debug)]
pub struct Scheduler {
    queue: Arc<dyn InvocationQueue>,
    /// How long a tick's invocation may take, retries included.
    deadline: Duration,
    running: HashMap<Key, CancellationToken>,
    tasks: TaskTracker,
    /// Parent of every schedule's token.
    stop: CancellationToken,
}

/// One schedule of one function.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    function: FunctionRef,
    name: String,
    trigger: ScheduleTrigger,
    /// Its ticks' class: the function's default (`spec.priority.default`).
    priority: sluice_api::Priority,
}

impl Scheduler {
    /// Schedules that submit to `queue`, each tick's invocation given
    /// `deadline` to finish.
    pub fn new(queue: Arc<dyn InvocationQueue>, deadline: Duration) -> Self {
        Self {
            queue,
            deadline,
            running: HashMap::new(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Runs the schedules of `functions` and stops those that are gone or
    /// changed.
    pub fn update(&mut self, functions: &HashMap<FunctionRef, Arc<FunctionSpec>>) {
        let wanted: HashSet<Key> = functions
            .iter()
            .flat_map(|(function, spec)| {
                spec.triggers
                    .schedule
                    .iter()
                    .enumerate()
                    .map(|(i, trigger)| Key {
                        function: function.clone(),
                        name: trigger.name_at(i),
                        trigger: trigger.clone(),
                        priority: spec.priority.default,
                    })
            })
            .collect();
        self.running.retain(|key, stop| {
            let keep = wanted.contains(key);
            if !keep {
                tracing::info!(function = %key.function, schedule = %key.name, "schedule removed");
                stop.cancel();
            }
            keep
        });
        for key in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let stop = self.stop.child_token();
            self.tasks.spawn(run(
                self.queue.clone(),
                self.deadline,
                key.clone(),
                stop.clone(),
            ));
            self.running.insert(key, stop);
        }
    }

    /// Stops every schedule and waits for a submit under way.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One schedule's loop: sleeps until a tick is due, submits it, and
/// follows [`Schedule::step`]'s missed-tick policy.
async fn run(
    queue: Arc<dyn InvocationQueue>,
    deadline: Duration,
    key: Key,
    stop: CancellationToken,
) {
    let Key {
        function,
        name,
        trigger,
        ..
    } = &key;
    let schedule = match Schedule::parse(&trigger.cron, &trigger.time_zone) {
        Ok(schedule) => schedule,
        Err(e) => {
            // The operator refuses such a spec (Ready=False); a gateway
            // only meets one in a hand-written local manifest or an old
            // registry entry.
            tracing::error!(%function, schedule = %name, error = %e, "schedule not run");
            return;
        }
    };
    tracing::info!(%function, schedule = %name, cron = %trigger.cron, time_zone = %trigger.time_zone, "schedule running");
    let mut last = Timestamp::now();
    loop {
        let now = Timestamp::now();
        match schedule.step(last, now) {
            Step::SleepUntil(tick) => {
                let wait = Duration::try_from(tick.duration_since(now)).unwrap_or_default();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => return,
                }
            }
            Step::Fire { tick, skipped } => {
                if skipped {
                    tracing::warn!(%function, schedule = %name, %tick, "earlier ticks were due at once; only the latest fires");
                }
                if !submit(queue.as_ref(), deadline, &key, tick, &stop).await {
                    return;
                }
                last = tick;
            }
            Step::Skip { oldest } => {
                tracing::warn!(%function, schedule = %name, %oldest, %now, grace = ?LATE_GRACE, "ticks missed by more than the grace are skipped");
                last = now;
            }
            Step::Never => {
                tracing::warn!(%function, schedule = %name, "the schedule has no tick left");
                return;
            }
        }
    }
}

/// Submits the tick at `tick`, trying again each second while it is at
/// most [`LATE_GRACE`] late and the queue refuses for a passing reason.
/// False when stopped meanwhile.
async fn submit(
    queue: &dyn InvocationQueue,
    deadline: Duration,
    Key {
        function,
        name,
        trigger,
        priority,
    }: &Key,
    tick: Timestamp,
    stop: &CancellationToken,
) -> bool {
    loop {
        let mut invocation =
            tick_invocation(function, trigger, name, tick, SystemTime::now() + deadline);
        sluice_api::priority::stamp(&mut invocation.headers, *priority);
        match queue.submit(invocation, None).await {
            Ok(submitted) => {
                tracing::info!(%function, schedule = %name, %tick, id = %submitted.id, duplicate = submitted.duplicate, "tick queued");
                return true;
            }
            Err(e) => {
                let late = Timestamp::now().duration_since(tick);
                if e.is_permanent()
                    || late > jiff::SignedDuration::try_from(LATE_GRACE).unwrap_or_default()
                {
                    tracing::error!(%function, schedule = %name, %tick, error = %e, "tick not queued");
                    return true;
                }
                tracing::warn!(%function, schedule = %name, %tick, error = %e, "tick not queued yet; trying again");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return false,
        }
    }
}
