//! Local mode's store of functions' logs, in memory, with the bounds of
//! the NATS log stream ([`LogBounds`]): attempts per function, bytes
//! (as their JSON encoding, what the stream would hold) and age across
//! all functions, the oldest going first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::StreamExt as _;
use sluice_api::InvocationId;
use sluice_api::logs::{AttemptLog, LogBounds};
use sluice_api::names::FunctionRef;
use sluice_serve::sync::lock;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::LogFeed;

/// New logs buffered for each follower; one that falls further behind
/// skips what it missed (logged).
const FOLLOW_BUFFER: usize = 256;

#[derive(Debug)]
pub struct MemoryLogs {
    bounds: LogBounds,
    kept: Mutex<Kept>,
    new: broadcast::Sender<Arc<Entry>>,
}

#[derive(Debug, Default)]
struct Kept {
    by_function: HashMap<FunctionRef, VecDeque<Arc<Entry>>>,
    /// Every entry, oldest first (some already gone from their function's
    /// list, which the eviction below skips).
    order: VecDeque<Arc<Entry>>,
    bytes: u64,
    next: u64,
}

#[derive(Debug)]
struct Entry {
    sequence: u64,
    at: Instant,
    size: u64,
    log: AttemptLog,
}

impl MemoryLogs {
    pub fn new(bounds: LogBounds) -> Self {
        Self {
            bounds,
            kept: Mutex::default(),
            new: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }

    /// Keeps `log`, making room as the bounds say.
    pub fn keep(&self, log: AttemptLog) {
        let size = serde_json::to_vec(&log).map_or(0, |v| v.len() as u64);
        let mut kept = lock(&self.kept);
        kept.next += 1;
        let entry = Arc::new(Entry {
            sequence: kept.next,
            at: Instant::now(),
            size,
            log,
        });
        kept.bytes += size;
        kept.order.push_back(entry.clone());
        let list = kept
            .by_function
            .entry(entry.log.function.clone())
            .or_default();
        list.push_back(entry.clone());
        let mut evicted = 0;
        while list.len() > self.bounds.attempts_per_function {
            if let Some(old) = list.pop_front() {
                evicted += old.size;
            }
        }
        kept.bytes -= evicted;
        self.expire(&mut kept);
        drop(kept);
        // Nobody following is no error.
        let _ = self.new.send(entry);
    }

    /// Drops the entries over the byte bound or past the age bound, oldest
    /// first, and forgets those already dropped from their function.
    fn expire(&self, kept: &mut Kept) {
        let now = Instant::now();
        while let Some(oldest) = kept.order.front().cloned() {
            let function = &oldest.log.function;
            let list = kept.by_function.get_mut(function);
            let still_kept = list
                .as_ref()
                .and_then(|l| l.front())
                .is_some_and(|e| e.sequence == oldest.sequence);
            let over = kept.bytes > self.bounds.max_bytes
                || now.duration_since(oldest.at) > self.bounds.max_age;
            if still_kept && !over {
                break;
            }
            kept.order.pop_front();
            if still_kept && let Some(list) = list {
                list.pop_front();
                kept.bytes -= oldest.size;
                if list.is_empty() {
                    kept.by_function.remove(function);
                }
            }
        }
    }

    /// Every attempt's log of invocation `id` of `function`, oldest first.
    pub fn of_invocation(&self, function: &FunctionRef, id: &InvocationId) -> Vec<AttemptLog> {
        let mut kept = lock(&self.kept);
        self.expire(&mut kept);
        kept.by_function
            .get(function)
            .into_iter()
            .flatten()
            .filter(|e| e.log.invocation == *id)
            .map(|e| e.log.clone())
            .collect()
    }

    /// The logs of `function` kept since `since`, oldest first; with
    /// `follow`, then each new one as it is kept.
    pub fn of_function(&self, function: &FunctionRef, since: SystemTime, follow: bool) -> LogFeed {
        // Subscribed before the snapshot, so nothing falls between them.
        let mut new = self.new.subscribe();
        let mut kept = lock(&self.kept);
        self.expire(&mut kept);
        let backlog: Vec<AttemptLog> = kept
            .by_function
            .get(function)
            .into_iter()
            .flatten()
            .filter(|e| e.log.time >= since)
            .map(|e| e.log.clone())
            .collect();
        let last = kept.next;
        drop(kept);
        let backlog = futures::stream::iter(backlog);
        if !follow {
            return backlog.boxed();
        }
        let function = function.clone();
        let newer = async_stream(move |sender| async move {
            loop {
                match new.recv().await {
                    Ok(entry) if entry.sequence > last && entry.log.function == function => {
                        if sender.send(entry.log.clone()).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(%function, skipped = n, "a log follower fell behind; it skips what it missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        backlog.chain(newer).boxed()
    }
}

/// The items `produce` sends, as a stream; `produce` runs as a task and
/// ends when the stream is dropped (its next send fails).
fn async_stream<F, Fut>(produce: F) -> LogFeed
where
    F: FnOnce(tokio::sync::mpsc::Sender<AttemptLog>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let task = produce(sender.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = sender.closed() => {}
        }
    });
    futures::stream::unfold(
        receiver,
        |mut r| async move { r.recv().await.map(|l| (l, r)) },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_api::logs::{Captured, LogLine, LogStream};

    use super::*;

    fn log(function: &str, id: &InvocationId, text: &str) -> AttemptLog {
        AttemptLog::new(
            id.clone(),
            function.parse().unwrap(),
            1,
            Captured {
                lines: vec![LogLine {
                    time: SystemTime::now(),
                    stream: LogStream::Stdout,
                    line: text.to_owned(),
                }],
                dropped: Default::default(),
            },
        )
    }

    #[test]
    fn each_function_keeps_its_newest_attempts_and_all_share_the_bytes() {
        let logs = MemoryLogs::new(LogBounds {
            attempts_per_function: 2,
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(3600),
        });
        let a: FunctionRef = "default/a".parse().unwrap();
        let ids: Vec<_> = (0..3).map(|_| InvocationId::random()).collect();
        for id in &ids {
            logs.keep(log("default/a", id, "x"));
        }
        logs.keep(log("default/b", &ids[0], "y"));
        assert!(
            logs.of_invocation(&a, &ids[0]).is_empty(),
            "the oldest of a went"
        );
        assert_eq!(logs.of_invocation(&a, &ids[2]).len(), 1);

        let size = serde_json::to_vec(&log("default/a", &ids[0], "x"))
            .unwrap()
            .len() as u64;
        let logs = MemoryLogs::new(LogBounds {
            attempts_per_function: 100,
            max_bytes: 2 * size,
            max_age: Duration::from_secs(3600),
        });
        for id in &ids {
            logs.keep(log("default/a", id, "x"));
        }
        let kept: Vec<_> = ids
            .iter()
            .map(|id| logs.of_invocation(&a, id).len())
            .collect();
        assert_eq!(kept, [0, 1, 1], "the oldest made room");
    }

    #[tokio::test]
    async fn a_follower_gets_the_backlog_then_what_comes_after() {
        let logs = MemoryLogs::new(LogBounds::default());
        let a: FunctionRef = "default/a".parse().unwrap();
        let id = InvocationId::random();
        logs.keep(log("default/a", &id, "before"));
        let mut feed = logs.of_function(&a, SystemTime::UNIX_EPOCH, true);
        logs.keep(log("default/b", &id, "elsewhere"));
        logs.keep(log("default/a", &id, "after"));
        let first = feed.next().await.unwrap();
        let second = feed.next().await.unwrap();
        assert_eq!(
            (first.lines[0].line.as_str(), second.lines[0].line.as_str()),
            ("before", "after")
        );
        let past = logs.of_function(&a, SystemTime::now() + Duration::from_secs(60), false);
        assert_eq!(past.count().await, 0);
    }
}
