//! Deletes modules from the store (`sluice-modules`) once no registry entry
//! has referred to them for `--module-gc-after` (default 10 minutes): a
//! Function's old module goes some minutes after a new one replaced it
//! (or the Function was deleted), so the store holds what is served plus
//! what was recently. The wait covers a runtime that read the old entry
//! just before and still fetches its module; the time counts from when
//! this leader first saw the module unreferenced (a new leader starts
//! counting afresh, erring on keeping).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use sluice_api::ModuleDigest;
use sluice_nats::publish::{PublishError, Publisher};
use tokio::time::Instant;

use crate::context::Context;

/// Default of `--module-gc-after`: 10 minutes.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(600);

/// The collection's setting and its count of deleted modules
/// (`sluice_modules_collected_total`).
#[derive(Debug, Clone)]
pub struct ModuleGc {
    /// How long a module stays unreferenced before it is deleted.
    /// Default: [`DEFAULT_AFTER`].
    pub after: Duration,
    collected: Counter,
}

impl ModuleGc {
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            collected: Counter::default(),
        }
    }

    /// Registers the counter in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "modules_collected",
            "Modules deleted from the module store after no registry entry referred to them for --module-gc-after",
            self.collected.clone(),
        );
    }

    /// How often to look: a quarter of `after`, from 1 s to 1 min.
    fn interval(&self) -> Duration {
        (self.after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Since when each stored module has been seen unreferenced.
#[derive(Debug, Default)]
pub struct Unreferenced {
    since: HashMap<ModuleDigest, Instant>,
}

impl Unreferenced {
    /// The decision: of the `stored` modules, those unreferenced since at
    /// least `after` before `now`. A module referenced again starts over;
    /// one gone from the store is forgotten.
    pub fn collectable(
        &mut self,
        stored: &[ModuleDigest],
        referenced: &HashSet<ModuleDigest>,
        now: Instant,
        after: Duration,
    ) -> Vec<ModuleDigest> {
        let stored_set: HashSet<&ModuleDigest> = stored.iter().collect();
        self.since
            .retain(|digest, _| stored_set.contains(digest) && !referenced.contains(digest));
        stored
            .iter()
            .filter(|digest| !referenced.contains(*digest))
            .filter(|digest| {
                let since = *self.since.entry((*digest).clone()).or_insert(now);
                now.saturating_duration_since(since) >= after
            })
            .cloned()
            .collect()
    }

    /// Forgets modules that were deleted.
    fn forget(&mut self, deleted: &[ModuleDigest]) {
        for digest in deleted {
            self.since.remove(digest);
        }
    }
}

/// One look at the store at `now`: deletes what has been unreferenced for
/// `gc.after` and returns it.
pub async fn pass(
    publisher: &Publisher,
    unreferenced: &mut Unreferenced,
    gc: &ModuleGc,
    now: Instant,
) -> Result<Vec<ModuleDigest>, PublishError> {
    let deleted = publisher
        .collect_modules(|stored, referenced| {
            unreferenced.collectable(stored, referenced, now, gc.after)
        })
        .await?;
    unreferenced.forget(&deleted);
    for digest in &deleted {
        tracing::info!(module = %digest, after = %sluice_api::Duration(gc.after), "deleted a module no registry entry refers to");
    }
    gc.collected.inc_by(deleted.len() as u64);
    Ok(deleted)
}

/// The leader's collection, every [`ModuleGc`] interval until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let gc = &ctx.settings.module_gc;
    let mut unreferenced = Unreferenced::default();
    let mut tick = tokio::time::interval(gc.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let looking = async {
        loop {
            tick.tick().await;
            if let Err(e) = pass(&ctx.publisher, &mut unreferenced, gc, Instant::now()).await {
                tracing::warn!(error = %e, "module collection failed; trying again later");
            }
        }
    };
    tokio::select! {
        () = looking => {}
        () = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> ModuleDigest {
        ModuleDigest::of(&[n])
    }

    #[test]
    fn only_what_stays_unreferenced_for_the_whole_wait_is_collected() {
        let after = Duration::from_secs(600);
        let start = Instant::now();
        let minutes = |m: u64| start + Duration::from_secs(60 * m);
        let stored = [digest(1), digest(2)];
        let mut unreferenced = Unreferenced::default();
        type Step = (u64, &'static [u8], &'static [u8]);
        // (minute, referenced, expected collected)
        let table: [Step; 6] = [
            // 1 unreferenced from the first look.
            (0, &[2], &[]),
            (9, &[2], &[]),
            // 1 is due; 2 is seen unreferenced from now.
            (10, &[], &[1]),
            // 1 referenced again (not deleted here): it starts over.
            (15, &[1], &[]),
            (19, &[], &[]),
            (20, &[], &[2]),
        ];
        for (minute, referenced, expected) in table {
            let referenced: HashSet<ModuleDigest> = referenced.iter().map(|n| digest(*n)).collect();
            let got = unreferenced.collectable(&stored, &referenced, minutes(minute), after);
            let expected: Vec<ModuleDigest> = expected.iter().map(|n| digest(*n)).collect();
            assert_eq!(got, expected, "minute {minute}");
        }
    }
}
