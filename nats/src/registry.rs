//! Following the registry (`sluice-functions`): the one watcher that the
//! gateway (routes, event triggers), the runtime node (what it serves) and
//! the operator use, with one idea of when a view is complete.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Entry, Operation};
use futures::StreamExt as _;
use sluice_api::RegistryEntry;
use sluice_api::names::FunctionRef;

/// A change to the registry, as [`RegistryWatcher::next`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryEvent {
    /// A function's current entry, checked: it names the function of its
    /// key and holds a valid spec.
    Put {
        entry: Box<RegistryEntry>,
        /// Changes known to follow this one; 0 when the watcher is up to
        /// date with the bucket (a good moment to apply a batch).
        pending: u64,
    },
    /// A function is gone: deleted, purged, or its entry is no longer
    /// valid (logged, and served by nobody until fixed).
    Removed { function: FunctionRef, pending: u64 },
    /// Every entry stored when the watch (re)started has been reported:
    /// the view is complete. Reported once per watch; a watch reopened
    /// after a failure reports the whole registry again, then this.
    CaughtUp,
}

impl RegistryEvent {
    /// Changes known to follow; 0 for [`RegistryEvent::CaughtUp`].
    pub fn pending(&self) -> u64 {
        match self {
            Self::Put { pending, .. } | Self::Removed { pending, .. } => *pending,
            Self::CaughtUp => 0,
        }
    }
}

/// How long a failed watch waits before it is opened again.
const REWATCH_PAUSE: Duration = Duration::from_secs(1);

/// Reports the registry's entries (the current one of every function
/// first, then changes as they happen) and reopens its watch by itself
/// when NATS goes away.
pub struct RegistryWatcher {
    functions: kv::Store,
    watch: Option<kv::Watch>,
    /// A `CaughtUp` is owed for the current watch.
    owe_caught_up: bool,
    /// The current watch has reported `CaughtUp`.
    caught_up: bool,
    /// The last watch failed: pause before opening another.
    failed: bool,
}

impl std::fmt::Debug for RegistryWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryWatcher")
            .field("watching", &self.watch.is_some())
            .field("caught_up", &self.caught_up)
            .finish_non_exhaustive()
    }
}

impl RegistryWatcher {
    pub fn new(functions: kv::Store) -> Self {
        Self {
            functions,
            watch: None,
            owe_caught_up: false,
            caught_up: false,
            failed: false,
        }
    }

    /// The next change. It never ends: failures are logged and the watch
    /// reopened. Cancel-safe, so it can sit in a `select!`.
    pub async fn next(&mut self) -> RegistryEvent {
        loop {
            if self.owe_caught_up {
                self.owe_caught_up = false;
                self.caught_up = true;
                return RegistryEvent::CaughtUp;
            }
            let Some(watch) = &mut self.watch else {
                self.open().await;
                continue;
            };
            let entry = match watch.next().await {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the registry watch failed; watching again");
                    self.lost();
                    continue;
                }
                None => {
                    tracing::warn!("the registry watch ended; watching again");
                    self.lost();
                    continue;
                }
            };
            if entry.delta == 0 && !self.caught_up {
                self.owe_caught_up = true;
            }
            if let Some(event) = interpret(entry) {
                return event;
            }
        }
    }

    fn lost(&mut self) {
        self.watch = None;
        self.failed = true;
    }

    /// Opens a watch with history: the last entry (or delete marker) of
    /// every key, then changes.
    async fn open(&mut self) {
        if self.failed {
            tokio::time::sleep(REWATCH_PAUSE).await;
        }
        let watch = match self.functions.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the registry; retrying");
                self.failed = true;
                return;
            }
        };
        // An empty bucket reports nothing, so nothing would say it is caught
        // up; entries stored meanwhile still arrive, after the CaughtUp.
        let empty = match self.functions.status().await {
            Ok(status) => status.info.state.messages == 0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the registry's size; retrying");
                self.failed = true;
                return;
            }
        };
        self.watch = Some(watch);
        self.failed = false;
        self.caught_up = false;
        self.owe_caught_up = empty;
    }
}

/// The event an entry means; `None` for a key that names no function.
fn interpret(entry: Entry) -> Option<RegistryEvent> {
    let pending = entry.delta;
    let Some(function) = FunctionRef::from_registry_key(&entry.key) else {
        tracing::warn!(key = %entry.key, "ignoring a registry key that names no function");
        return None;
    };
    Some(match entry.operation {
        Operation::Delete | Operation::Purge => RegistryEvent::Removed { function, pending },
        Operation::Put => match RegistryEntry::parse(&function, &entry.value) {
            Ok(entry) => RegistryEvent::Put {
                entry: Box::new(entry),
                pending,
            },
            Err(e) => {
                tracing::error!(%function, error = %e, "ignoring an invalid registry entry: its function is not served");
                RegistryEvent::Removed { function, pending }
            }
        },
    })
}
