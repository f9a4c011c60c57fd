//! The decisions of one tick or wake: each function's replicas from the
//! pure rule, the scale of a dedicated Deployment or of the pool from the
//! sum over its functions, the status each function shows, and the wake
//! subscriptions of functions at zero. It only queues [`Write`]s; the
//! writes module makes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource as _, ResourceExt as _};
use sluice_api::autoscale::{self, Decision, Observation};
use sluice_api::names::FunctionRef;
use sluice_api::{Function, Placement};

use super::status::{Shown, depth_due, shown_in, status_patch};
use super::writes::Write;
use super::{Autoscaler, History, Tracked};
use crate::resources;

/// A function the autoscaler considers this time.
struct Member {
    function: Arc<Function>,
    reference: FunctionRef,
    observed: Observation,
    decision: Decision,
}

impl Autoscaler {
    /// Decides for every function (or only `only`, keeping the others'
    /// last decisions in the pool's sum) from the last observations, seen
    /// at `seen_at`, and makes the writes that calls for.
    pub(super) async fn evaluate(&mut self, only: Option<&FunctionRef>, seen_at: Instant) {
        let now = seen_at.saturating_duration_since(self.epoch);
        let trigger = if only.is_some() { "wake" } else { "tick" };
        let mut writes = Vec::new();
        let mut pool_members = Vec::new();
        let mut pool_wanted = Vec::new();
        let functions: Vec<_> = self.functions.iter().flat_map(Store::state).collect();
        let present: std::collections::HashSet<FunctionRef> =
            functions.iter().filter_map(|f| reference(f)).collect();
        self.forget_gone(&present);
        for function in functions {
            let Some(reference) = reference(&function) else {
                continue;
            };
            if function.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // No consumer yet: not registered, nothing to scale.
            let Some(observed) = self.observed.get(&reference).copied() else {
                continue;
            };
            let pooled = function.spec.placement == Placement::Pool;
            if only.is_some_and(|o| *o != reference) {
                if pooled && let Some(tracked) = self.tracked.get(&reference) {
                    pool_wanted.push(tracked.history.replicas());
                }
                continue;
            }
            if pooled {
                let resume = function.status.as_ref().map_or(0, |s| s.desired_replicas);
                let decision =
                    self.decide(&function, &reference, observed, resume, now, &mut writes);
                pool_wanted.push(decision.replicas);
                pool_members.push(Member {
                    function,
                    reference,
                    observed,
                    decision,
                });
            } else {
                self.scale_dedicated(
                    function,
                    reference,
                    observed,
                    now,
                    seen_at,
                    trigger,
                    &mut writes,
                )
                .await;
            }
        }
        self.scale_pool(pool_members, &pool_wanted, seen_at, trigger, &mut writes)
            .await;
        self.write(writes).await;
    }

    /// Forgets functions that are gone: their history, subscription and
    /// metric series.
    fn forget_gone(&mut self, present: &std::collections::HashSet<FunctionRef>) {
        let gone: Vec<FunctionRef> = self
            .tracked
            .keys()
            .filter(|f| !present.contains(*f))
            .cloned()
            .collect();
        for function in gone {
            self.tracked.remove(&function);
            self.waker.unwatch(&function);
            self.ctx.metrics.autoscaler.forget(&function);
        }
        self.observed.retain(|f, _| present.contains(f));
        // Watched before any reading showed them (`watch_registered`), so
        // possibly never tracked.
        self.waker.retain(|f| present.contains(f));
    }

    /// Decides `function`'s replicas, resuming its history at `resume`
    /// replicas when it is new; an Event goes with a change.
    fn decide(
        &mut self,
        function: &Function,
        reference: &FunctionRef,
        observed: Observation,
        resume: u32,
        now: Duration,
        writes: &mut Vec<Write>,
    ) -> Decision {
        let tracked = self
            .tracked
            .entry(reference.clone())
            .or_insert_with(|| Tracked {
                history: History::resume(resume, now),
                shown: shown_in(function),
                shown_at: Instant::now(),
                stale: false,
            });
        let scaling = &function.spec.scaling;
        let decision = autoscale::decide(
            scaling,
            function.spec.replicas,
            observed,
            &mut tracked.history,
            now,
        );
        self.ctx
            .metrics
            .autoscaler
            .decided(reference, observed.depth(), &decision);
        if let Some(reason) = decision.event_reason() {
            let note = decision.explain(scaling, observed);
            tracing::info!(function = %reference, "{note}");
            writes.push(Write::Event {
                regarding: Box::new(function.object_ref(&())),
                event: Event {
                    type_: EventType::Normal,
                    reason: reason.into(),
                    note: Some(note),
                    action: "Scale".into(),
                    secondary: None,
                },
            });
        }
        decision
    }

    /// Decides for a dedicated function and scales its Deployment.
    #[allow(clippy::too_many_arguments)]
    async fn scale_dedicated(
        &mut self,
        function: Arc<Function>,
        reference: FunctionRef,
        observed: Observation,
        now: Duration,
        seen_at: Instant,
        trigger: &'static str,
        writes: &mut Vec<Write>,
    ) {
        let name = resources::dedicated_name(&reference);
        let uid = function.metadata.uid.as_deref().unwrap_or_default();
        // Only the Deployment this Function controls: one of the same name
        // that it does not (its status says PlacementConflict) is left be.
        let Some(deployment) = find(&self.deployments, &reference.namespace, &name)
            .filter(|d| resources::controlled_by(d.as_ref(), uid))
        else {
            return;
        };
        // A Deployment created without replicas runs one.
        let current = spec_replicas(&deployment);
        let decision = self.decide(&function, &reference, observed, current, now, writes);
        // A change is written even when the store already shows it: the
        // store may not have caught up with the last write yet.
        if decision.replicas != current || decision.direction().is_some() {
            writes.push(Write::Scale {
                namespace: reference.namespace.clone(),
                name,
                replicas: decision.replicas,
                seen_at,
                trigger,
            });
        }
        let scaled = decision.replicas;
        self.show(
            &function,
            &reference,
            Shown {
                replicas: status_replicas(&deployment),
                desired: decision.replicas,
                depth: observed.depth(),
                active: Some(scaled > 0),
            },
            writes,
        );
        self.watch_if_idle(&function, &reference, scaled).await;
    }

    /// Scales the pool on the sum of its functions' decisions, and shows
    /// each its share.
    async fn scale_pool(
        &mut self,
        members: Vec<Member>,
        wanted: &[u32],
        seen_at: Instant,
        trigger: &'static str,
        writes: &mut Vec<Write>,
    ) {
        // No members (the last pool Function deleted) still scales: the
        // pool goes to its minimum rather than staying at its last size.
        let pool = self
            .config
            .pool
            .clone()
            .map(|target| (target, self.ctx.pool_deployment()));
        let (running, scaled) = match pool {
            Some((target, Some(deployment))) => {
                let current = spec_replicas(&deployment);
                let replicas = autoscale::pool_replicas(
                    wanted.iter().copied(),
                    target.min_replicas,
                    target.max_replicas,
                );
                let changed = self.pool_written.replace(replicas) != Some(replicas);
                if replicas != current || changed {
                    tracing::info!(
                        pool = %format!("{}/{}", target.namespace, target.name),
                        "{current} → {replicas} replicas for its functions' demand"
                    );
                    writes.push(Write::Scale {
                        namespace: target.namespace.clone(),
                        name: target.name.clone(),
                        replicas,
                        seen_at,
                        trigger,
                    });
                }
                (status_replicas(&deployment), Some(replicas))
            }
            Some((target, None)) => {
                tracing::debug!(pool = %format!("{}/{}", target.namespace, target.name), "the pool Deployment does not exist; not scaled");
                (0, None)
            }
            None => (0, None),
        };
        for member in members {
            self.show(
                &member.function,
                &member.reference,
                Shown {
                    replicas: running,
                    desired: member.decision.replicas,
                    depth: member.observed.depth(),
                    active: scaled.map(|s| s > 0),
                },
                writes,
            );
            if let Some(scaled) = scaled {
                self.watch_if_idle(&member.function, &member.reference, scaled)
                    .await;
            }
        }
    }

    /// Watches each of `registered` that is a pool function no queue
    /// reading has shown yet for its first invocation, so that a function
    /// applied while the pool is at zero wakes the pool at its first
    /// invocation, not at the first reading that finds it queued. Only for
    /// a pool at zero and once a reading has been taken in: before one
    /// nothing is tracked, and a wake's decision would stand for the whole
    /// pool; a pool above zero serves a new function without a wake. The
    /// next reading that shows it takes over ([`Self::watch_if_idle`]).
    pub(super) async fn watch_registered(&mut self, registered: Vec<FunctionRef>) {
        if !self.read || self.ctx.pool_deployment().map(|d| spec_replicas(&d)) != Some(0) {
            return;
        }
        for reference in registered {
            let Some(function) = find(&self.functions, &reference.namespace, &reference.name)
            else {
                continue;
            };
            if !watched_before_its_first_reading(&function, self.observed.contains_key(&reference))
            {
                continue;
            }
            if let Err(e) = self.waker.watch(&reference).await {
                // Its first reading sees its first invocation instead.
                tracing::warn!(function = %reference, error = %e, "cannot watch for a first invocation");
            }
        }
    }

    /// Holds a subscription on an unpinned function's invocations while its
    /// runtimes are at zero.
    async fn watch_if_idle(&mut self, function: &Function, reference: &FunctionRef, scaled: u32) {
        if scaled > 0 || function.spec.replicas.is_some() {
            self.waker.unwatch(reference);
            return;
        }
        if let Err(e) = self.waker.watch(reference).await {
            // The next tick sees its first invocation instead.
            tracing::warn!(function = %reference, error = %e, "cannot watch for a first invocation");
        }
    }

    /// Queues a status write when what the status shows changed (the queue
    /// depth alone only as [`depth_due`] says).
    fn show(
        &mut self,
        function: &Function,
        reference: &FunctionRef,
        shown: Shown,
        writes: &mut Vec<Write>,
    ) {
        let Some(tracked) = self.tracked.get_mut(reference) else {
            return;
        };
        self.ctx
            .metrics
            .autoscaler
            .running(reference, shown.replicas);
        let before = tracked.shown;
        let scale_changed = Shown {
            depth: before.depth,
            ..shown
        } != before;
        let depth_due = depth_due(before.depth, shown.depth, tracked.shown_at.elapsed());
        if !scale_changed && !depth_due && !tracked.stale {
            return;
        }
        tracked.shown = shown;
        tracked.shown_at = Instant::now();
        tracked.stale = false;
        writes.push(Write::Status {
            function: reference.clone(),
            patch: status_patch(function, shown),
        });
    }
}

fn reference(function: &Function) -> Option<FunctionRef> {
    FunctionRef::new(function.namespace().as_deref()?, &function.name_any()).ok()
}

/// `spec.replicas` of a Deployment: one when unset, as the API server
/// defaults it.
fn spec_replicas(deployment: &Deployment) -> u32 {
    deployment
        .spec
        .replicas
        .map_or(1, |r| u32::try_from(r).unwrap_or(0))
}

/// `namespace/name` in whichever of `stores` (one per watched namespace,
/// or one for the cluster) holds it.
fn find<K>(stores: &[Store<K>], namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    let key = ObjectRef::new(name).within(namespace);
    stores.iter().find_map(|store| store.get(&key))
}

/// Whether `function` is watched for a first invocation before a queue
/// reading shows it (`observed`): a pool function the autoscaler sizes
/// (no `spec.replicas` pin) and not being deleted. A dedicated function
/// needs no such watch: its new Deployment starts with one replica.
fn watched_before_its_first_reading(function: &Function, observed: bool) -> bool {
    !observed
        && function.spec.placement == Placement::Pool
        && function.spec.replicas.is_none()
        && function.metadata.deletion_timestamp.is_none()
}

/// Pods a Deployment runs now (`status.replicas`).
fn status_replicas(deployment: &Deployment) -> u32 {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.replicas)
        .map_or(0, |r| u32::try_from(r).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_unpinned_pool_function_is_watched_before_its_first_reading() {
        let function = |placement: Placement, replicas: Option<u32>, deleting: bool| {
            let mut function = Function::new(
                "f",
                serde_json::from_value(serde_json::json!({ "module": { "file": "f.wasm" } }))
                    .expect("a spec"),
            );
            function.spec.placement = placement;
            function.spec.replicas = replicas;
            if deleting {
                function.metadata.deletion_timestamp = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
                );
            }
            function
        };
        // (placement, pinned replicas, being deleted, in a reading) → watched
        let table = [
            (Placement::Pool, None, false, false, true),
            (Placement::Pool, None, false, true, false),
            (Placement::Pool, Some(2), false, false, false),
            (Placement::Pool, None, true, false, false),
            (Placement::Dedicated, None, false, false, false),
        ];
        for (placement, replicas, deleting, observed, watched) in table {
            assert_eq!(
                watched_before_its_first_reading(
                    &function(placement, replicas, deleting),
                    observed
                ),
                watched,
                "{placement:?} replicas {replicas:?} deleting {deleting} observed {observed}"
            );
        }
    }

    #[test]
    fn a_deployment_without_replicas_runs_one() {
        let mut deployment = Deployment::default();
        assert_eq!(spec_replicas(&deployment), 1);
        deployment.spec.replicas = Some(0);
        assert_eq!(spec_replicas(&deployment), 0);
        assert_eq!(status_replicas(&deployment), 0);
    }
}
