//! Ready after the warm pool's compile: a pool runtime compiles each newly
//! registered component ahead of its first invocation and stores it in
//! `sluice-artifacts`; an invocation that arrives before the compile ends
//! waits for the rest of it (tens of milliseconds for a small component,
//! seconds for an interpreter's). So while the pool has a ready runtime, a
//! new pool Function is `Ready=False` (`CompilingAhead`) until its
//! component is in the bucket, for at most `--compile-ahead-wait`: its
//! first request after `Ready` then costs a warm one's time plus a
//! worker's start. A pool at zero has no runtime to compile ahead (the
//! first invocation wakes it and loads the component), so nothing waits
//! for it; nor does a Function once Ready with its component (an artifact
//! dropped for room, or an upgrade's new engine, never takes Ready back).
//!
//! [`follow`] keeps the set of compiled digests from the bucket (a listing,
//! then a watch) and announces each new one, which the controller turns
//! into reconciles of the Functions waiting for it
//! ([`crate::controller`]'s watches).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use sluice_api::ModuleDigest;
use tokio::sync::broadcast;

use crate::context::Context;

/// Default of `--compile-ahead-wait`: longer than an interpreter
/// component's compile on a loaded 2-core node, and no longer than a
/// person's patience with `kubectl wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How long after a broken watch of the bucket it is made again.
const REFOLLOW: Duration = Duration::from_secs(2);

/// What a [`compile_wait`] decision looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The Function runs in the shared pool (not a dedicated Deployment).
    pub pool_function: bool,
    /// The pool has a ready runtime, which compiles new components ahead.
    pub pool_ready: bool,
    /// Whether the bucket holds the component compiled; `None` while the
    /// bucket has not been read since the operator started.
    pub compiled: Option<bool>,
    /// The Function is `Ready` already with this component.
    pub was_ready: bool,
    /// Since a Function first waited for this component.
    pub waited: Duration,
    /// `--compile-ahead-wait`; zero never waits.
    pub bound: Duration,
}

/// How much longer `Ready` waits for the pool's compile ahead; `None`:
/// not at all (the Function is Ready as soon as it is registered).
pub fn compile_wait(w: Waiting) -> Option<Duration> {
    // Not read yet counts as not compiled: a Function registered as the
    // operator starts must not slip through before the listing.
    let waits = w.pool_function && w.pool_ready && !w.was_ready && w.compiled != Some(true);
    w.bound
        .checked_sub(w.waited)
        .filter(|left| waits && !left.is_zero())
}

/// The digests runtimes have compiled, as far as the operator has read
/// them, and the Functions' waits for theirs.
#[derive(Debug)]
pub struct CompiledAhead {
    bound: Duration,
    state: Mutex<State>,
    news: broadcast::Sender<ModuleDigest>,
}

#[derive(Debug, Default)]
struct State {
    /// The bucket has been listed.
    listed: bool,
    digests: HashSet<ModuleDigest>,
    /// When a Function first waited for each digest not compiled yet.
    waiting: HashMap<ModuleDigest, Instant>,
}

impl CompiledAhead {
    /// Waits of at most `bound` (`--compile-ahead-wait`; zero never waits).
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            state: Mutex::default(),
            // Lagging only drops announcements: the waiting Functions'
            // requeues still find the digest in the set.
            news: broadcast::channel(256).0,
        }
    }

    /// How much longer the `Ready` of a Function whose component is
    /// `digest` waits ([`compile_wait`]); the first wait for a digest
    /// starts its clock.
    pub fn ready_waits(
        &self,
        digest: &ModuleDigest,
        pool_function: bool,
        pool_ready: bool,
        was_ready: bool,
    ) -> Option<Duration> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let compiled = state.listed.then(|| state.digests.contains(digest));
        let mut waiting = Waiting {
            pool_function,
            pool_ready,
            compiled,
            was_ready,
            waited: Duration::ZERO,
            bound: self.bound,
        };
        compile_wait(waiting)?;
        let since = *state.waiting.entry(digest.clone()).or_insert(now);
        waiting.waited = now.duration_since(since);
        compile_wait(waiting)
    }

    /// Each digest compiled from now on, as the bucket shows it.
    pub fn subscribe(&self) -> broadcast::Receiver<ModuleDigest> {
        self.news.subscribe()
    }

    /// `digests` are compiled; the new ones are announced.
    fn add(&self, digests: impl IntoIterator<Item = ModuleDigest>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.listed = true;
        for digest in digests {
            state.waiting.remove(&digest);
            if state.digests.insert(digest.clone()) {
                let _ = self.news.send(digest);
            }
        }
    }
}

/// Follows the compiled components' bucket into `ctx.compiled` until
/// `shutdown` resolves, following it again after a broken watch.
pub async fn follow(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send) {
    if ctx.compiled.bound.is_zero() {
        return;
    }
    let following = async {
        loop {
            match sluice_nats::artifacts::compiled(&ctx.layout.artifacts).await {
                Ok((listed, stored)) => {
                    ctx.compiled.add(listed);
                    let mut stored = std::pin::pin!(stored);
                    while let Some(digest) = stored.next().await {
                        match digest {
                            Ok(digest) => ctx.compiled.add([digest]),
                            Err(e) => {
                                tracing::warn!(error = %e, "following the compiled components again");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the compiled components; a new pool Function is Ready without waiting for its compile ahead until this works");
                }
            }
            tokio::time::sleep(REFOLLOW).await;
        }
    };
    tokio::select! {
        () = following => {}
        () = shutdown => {}
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
                "the bucket not read yet",
                Waiting {
                    compiled: None,
                    ..new
                },
                Some(s(60)),
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
                "Ready already with it",
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
        let mut news = compiled.subscribe();
        let first = compiled
            .ready_waits(&digest, true, true, false)
            .expect("waits");
        std::thread::sleep(Duration::from_millis(20));
        let second = compiled
            .ready_waits(&digest, true, true, false)
            .expect("waits");
        assert!(second < first, "{second:?} < {first:?}");
        assert_eq!(compiled.ready_waits(&digest, true, false, false), None);
        compiled.add([digest.clone()]);
        assert_eq!(news.try_recv().ok(), Some(digest.clone()));
        compiled.add([digest.clone()]);
        assert!(news.try_recv().is_err(), "announced once");
        assert_eq!(compiled.ready_waits(&digest, true, true, false), None);
    }
}
