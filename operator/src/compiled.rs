//! Ready after the warm pool's compile: a pool runtime compiles each newly
//! registered component ahead of its first invocation and stores it in
//! `sluice-artifacts`; an invocation that arrives before the compile ends
//! waits for the rest of it (tens of milliseconds for a small component,
//! seconds for an interpreter's). So while the pool has a ready runtime, a
//! pool Function that is not Ready yet stays `Ready=False`
//! (`CompilingAhead`) until its component is in the bucket, for at most
//! `--compile-ahead-wait`: its first request after `Ready` then costs a
//! warm one's time plus a worker's start. Nothing waits when no compile
//! ahead can be seen coming: the pool at zero (the first invocation wakes
//! it and loads the component), the bucket not followed (a broken watch,
//! a permission missing) or too full to take another artifact (its stream
//! refuses new ones). A Function once Ready never goes back to `False`
//! for a compile: a new module of a Ready Function is served at once.
//!
//! [`follow`] keeps the set of compiled digests from the bucket (a listing,
//! then a watch) and announces the Functions that waited for each one
//! stored, which the controller reconciles ([`crate::controller`]'s
//! watches).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use sluice_api::ModuleDigest;
use sluice_api::names::FunctionRef;
use tokio::sync::broadcast;

use crate::context::Context;

/// Default of `--compile-ahead-wait`: longer than an interpreter
/// component's compile on a loaded 2-core node, and no longer than a
/// person's patience with `kubectl wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Room under which the bucket counts as full: the default largest module
/// (64 MiB) compiles to about this much or less.
const ROOM_FOR_AN_ARTIFACT: u64 = 64 << 20;
/// How often the bucket's room is read while it is followed.
const ROOM_EVERY: Duration = Duration::from_secs(10);
/// First pause before the bucket is followed again after a failure;
/// doubled each failure in a row, up to [`REFOLLOW_MAX`].
const REFOLLOW: Duration = Duration::from_secs(2);
const REFOLLOW_MAX: Duration = Duration::from_secs(60);

/// What a [`compile_wait`] decision looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The Function runs in the shared pool (not a dedicated Deployment).
    pub pool_function: bool,
    /// The pool has a ready runtime, which compiles new components ahead.
    pub pool_ready: bool,
    /// Whether the bucket holds the component compiled (not listed yet
    /// counts as not); `None` when no compile ahead can be seen coming
    /// (the bucket not followed, or too full to take it).
    pub compiled: Option<bool>,
    /// The Function is `Ready` now.
    pub was_ready: bool,
    /// Since a Function first waited for this component.
    pub waited: Duration,
    /// `--compile-ahead-wait`; zero never waits.
    pub bound: Duration,
}

/// How much longer `Ready` waits for the pool's compile ahead; `None`:
/// not at all (the Function is Ready as soon as it is registered).
pub fn compile_wait(w: Waiting) -> Option<Duration> {
    let waits = w.pool_function && w.pool_ready && !w.was_ready && w.compiled == Some(false);
    w.bound
        .checked_sub(w.waited)
        .filter(|left| waits && !left.is_zero())
}

/// The digests runtimes have compiled, as far as the operator has read
/// them, and the Functions waiting for theirs.
#[derive(Debug)]
pub struct CompiledAhead {
    bound: Duration,
    state: Mutex<State>,
    news: broadcast::Sender<Vec<FunctionRef>>,
}

#[derive(Debug, Default)]
struct State {
    /// The bucket has been listed.
    listed: bool,
    /// Following it failed and has not worked again since.
    broken: bool,
    /// It has less than [`ROOM_FOR_AN_ARTIFACT`] left.
    full: bool,
    /// As many as the bucket holds digests (deleted ones stay: nothing
    /// deletes from it).
    digests: HashSet<ModuleDigest>,
    /// The waits for digests not compiled yet, forgotten when compiled or
    /// four bounds after they began.
    waiting: HashMap<ModuleDigest, Wait>,
}

#[derive(Debug)]
struct Wait {
    since: Instant,
    functions: BTreeSet<FunctionRef>,
}

impl CompiledAhead {
    /// Waits of at most `bound` (`--compile-ahead-wait`; zero never waits).
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            state: Mutex::default(),
            // Lagging only drops announcements: the waiting Functions'
            // requeues find the digest in the set.
            news: broadcast::channel(256).0,
        }
    }

    /// How much longer the `Ready` of `function`, whose component is
    /// `digest`, waits ([`compile_wait`]). The first Function to wait for
    /// a digest starts its clock; each waiting one is announced when the
    /// digest is stored.
    pub fn ready_waits(
        &self,
        function: &FunctionRef,
        digest: &ModuleDigest,
        pool_function: bool,
        pool_ready: bool,
        was_ready: bool,
    ) -> Option<Duration> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let forget_after = self.bound.saturating_mul(4);
        state
            .waiting
            .retain(|_, wait| now.duration_since(wait.since) < forget_after);
        let compiled =
            (!state.broken && !state.full).then(|| state.listed && state.digests.contains(digest));
        let since = state.waiting.get(digest).map_or(now, |wait| wait.since);
        let left = compile_wait(Waiting {
            pool_function,
            pool_ready,
            compiled,
            was_ready,
            waited: now.duration_since(since),
            bound: self.bound,
        })?;
        state
            .waiting
            .entry(digest.clone())
            .or_insert(Wait {
                since,
                functions: BTreeSet::new(),
            })
            .functions
            .insert(function.clone());
        Some(left)
    }

    /// The Functions that waited for each digest stored from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Vec<FunctionRef>> {
        self.news.subscribe()
    }

    /// `digests` are compiled (the bucket is listed); the Functions that
    /// waited for them are announced.
    fn add(&self, digests: impl IntoIterator<Item = ModuleDigest>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.listed = true;
        state.broken = false;
        for digest in digests {
            if let Some(wait) = state.waiting.remove(&digest) {
                let _ = self.news.send(wait.functions.into_iter().collect());
            }
            state.digests.insert(digest);
        }
    }

    /// Following the bucket failed: nothing waits until it works again.
    fn broke(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .broken = true;
    }

    /// The bucket has `room` bytes left (`None`: no bound).
    fn room(&self, room: Option<u64>) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .full = room.is_some_and(|room| room < ROOM_FOR_AN_ARTIFACT);
    }
}

/// Follows the compiled components' bucket into `ctx.compiled` until
/// `shutdown` resolves, following it again after a failure.
pub async fn follow(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send) {
    if ctx.compiled.bound.is_zero() {
        return;
    }
    let following = async {
        let mut pause = REFOLLOW;
        loop {
            match follow_once(&ctx).await {
                Ok(()) => pause = REFOLLOW,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "cannot follow the components runtimes compiled; until it works, a new pool Function is Ready without waiting for its compile ahead (its first request may wait for the compile)");
                    pause = (pause * 2).min(REFOLLOW_MAX);
                }
            }
            ctx.compiled.broke();
            tokio::time::sleep(pause).await;
        }
    };
    tokio::select! {
        () = following => {}
        () = shutdown => {}
    }
}

/// Lists the bucket, then follows it and its room until the watch breaks.
async fn follow_once(ctx: &Context) -> Result<(), sluice_nats::artifacts::CompiledError> {
    let (listed, stored) = sluice_nats::artifacts::compiled(&ctx.layout.artifacts).await?;
    ctx.compiled
        .room(sluice_nats::artifacts::room(&ctx.layout.js).await?);
    ctx.compiled.add(listed);
    let mut stored = std::pin::pin!(stored);
    let mut room = tokio::time::interval(ROOM_EVERY);
    loop {
        tokio::select! {
            digest = stored.next() => match digest {
                Some(digest) => ctx.compiled.add([digest?]),
                None => return Ok(()),
            },
            _ = room.tick() => {
                ctx.compiled.room(sluice_nats::artifacts::room(&ctx.layout.js).await?);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_waits_for_the_warm_pool_compile_of_a_new_component_only() {
        let s = Duration::from_secs;
        let new = Waiting {
            pool_function: true,
            pool_ready: true,
            compiled: Some(false),
            was_ready: false,
            waited: s(0),
            bound: s(60),
        };
        let cases = [
            ("a new component, the pool warm", new, Some(s(60))),
            (
                "half the bound gone",
                Waiting {
                    waited: s(20),
                    ..new
                },
                Some(s(40)),
            ),
            (
                "the bound gone",
                Waiting {
                    waited: s(60),
                    ..new
                },
                None,
            ),
            (
                "past it",
                Waiting {
                    waited: s(90),
                    ..new
                },
                None,
            ),
            (
                "compiled",
                Waiting {
                    compiled: Some(true),
                    ..new
                },
                None,
            ),
            (
                "no compile can be seen coming",
                Waiting {
                    compiled: None,
                    ..new
                },
                None,
            ),
            (
                "the pool at zero",
                Waiting {
                    pool_ready: false,
                    ..new
                },
                None,
            ),
            (
                "dedicated",
                Waiting {
                    pool_function: false,
                    ..new
                },
                None,
            ),
            (
                "Ready already",
                Waiting {
                    was_ready: true,
                    ..new
                },
                None,
            ),
            ("waiting turned off", Waiting { bound: s(0), ..new }, None),
        ];
        for (case, waiting, expected) in cases {
            assert_eq!(compile_wait(waiting), expected, "{case}");
        }
    }

    #[test]
    fn a_wait_counts_from_the_first_function_of_its_component_and_ends_when_it_is_compiled() {
        let compiled = CompiledAhead::new(Duration::from_secs(60));
        let digest = ModuleDigest::of(b"component");
        let (a, b) = (
            FunctionRef::new("default", "a").unwrap(),
            FunctionRef::new("default", "b").unwrap(),
        );
        let mut news = compiled.subscribe();
        // Not listed yet counts as not compiled.
        let first = compiled
            .ready_waits(&a, &digest, true, true, false)
            .expect("waits");
        std::thread::sleep(Duration::from_millis(20));
        let second = compiled
            .ready_waits(&b, &digest, true, true, false)
            .expect("waits");
        assert!(second < first, "{second:?} < {first:?}");
        compiled.add([digest.clone()]);
        assert_eq!(news.try_recv().ok(), Some(vec![a.clone(), b]));
        compiled.add([digest.clone()]);
        assert!(news.try_recv().is_err(), "announced once");
        assert_eq!(compiled.ready_waits(&a, &digest, true, true, false), None);
    }

    #[test]
    fn nothing_waits_while_the_bucket_is_not_followed_or_too_full() {
        let compiled = CompiledAhead::new(Duration::from_secs(60));
        let (digest, function) = (
            ModuleDigest::of(b"component"),
            FunctionRef::new("default", "f").unwrap(),
        );
        let waits = || compiled.ready_waits(&function, &digest, true, true, false);
        compiled.add([]);
        assert!(waits().is_some());
        compiled.broke();
        assert_eq!(waits(), None, "broken");
        compiled.add([]);
        assert!(waits().is_some(), "followed again");
        compiled.room(Some(ROOM_FOR_AN_ARTIFACT - 1));
        assert_eq!(waits(), None, "full");
        compiled.room(None);
        assert!(waits().is_some(), "unbounded");
    }
}
