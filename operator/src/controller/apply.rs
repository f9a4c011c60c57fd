//! Applying a Function: validate its spec, resolve and register it
//! ([`super::register`]), place it ([`super::placement`]), and write the
//! status fields the controller owns by server-side apply.

use std::time::{Duration, Instant, SystemTime};

use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::controller::Action;
use sluice_api::names::FunctionRef;
use sluice_api::{ByteSize, ClaimOrder, Function, FunctionSpec, Placement};

use super::events::report;
use super::placement::ensure_placement;
use super::register::resolve;
use super::{Error, FIELD_MANAGER, RESYNC, RETRY_TRANSIENT};
use crate::conditions::{self, MODULE_READY, Observed, QUEUE_READY, Reason, Status};
use crate::context::Context;
use crate::status::{ReconciledStatus, StatusApply};

/// What resolving and registering a Function came to.
pub(super) struct Outcome {
    pub(super) module: Observed,
    pub(super) queue: Observed,
    pub(super) digest: Option<sluice_api::ModuleDigest>,
    /// The registry entry was written (it changed).
    pub(super) published: bool,
    pub(super) requeue: Duration,
}

pub(super) async fn apply(function: &Function, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = function.namespace().ok_or(Error::NoNamespace)?;
    let name = function.name_any();
    let generation = function.metadata.generation;
    let reference = FunctionRef::new(&namespace, &name);
    let outcome = match &reference {
        Err(e) => invalid(format!(
            "metadata.name: {e}; Sluice function names are DNS labels (no dots), as they name NATS subjects"
        )),
        Ok(reference) => match function.spec.validate(reference) {
            Err(e) => invalid(e.to_string()),
            Ok(()) => match too_much_memory(&function.spec, ctx.settings.max_instance_memory) {
                Some(problem) => invalid(problem),
                None => match ctx
                    .settings
                    .trigger_scope
                    .as_ref()
                    .map_or(Ok(()), |scope| scope.check(reference, &function.spec))
                {
                    Err(e) => Outcome {
                        module: Observed::new(
                            MODULE_READY,
                            Status::False,
                            Reason::TriggerSubjectOutOfScope,
                            format!("{e}; change the subject, or ask the cluster's operators"),
                        ),
                        ..invalid(String::new())
                    },
                    Ok(()) => {
                        let mut outcome =
                            resolve(reference, &function.spec, created(function), ctx).await;
                        if let Some(owner) = path_owner(function, reference, ctx).await? {
                            outcome.queue = Observed::new(
                                QUEUE_READY,
                                Status::False,
                                Reason::PathConflict,
                                format!(
                                    "spec.triggers.http.path {} is the route of {owner}, created earlier, which keeps it on every gateway; choose another path (the default route /fn/{reference}/ still works)",
                                    function
                                        .spec
                                        .triggers
                                        .http
                                        .as_ref()
                                        .map_or("", |h| h.route()),
                                ),
                            );
                            outcome.requeue = outcome.requeue.min(PATH_RECHECK);
                        }
                        outcome
                    }
                },
            },
        },
    };
    let mut outcome = outcome;
    let selector = match &reference {
        Ok(reference) if outcome.queue.reason != Reason::InvalidSpec => {
            match ensure_placement(function, reference, ctx).await? {
                Ok(selector) => selector,
                Err(failed) => {
                    outcome.queue = failed;
                    outcome.requeue = RETRY_TRANSIENT;
                    None
                }
            }
        }
        _ => None,
    };
    let current = function.status.clone().unwrap_or_default();
    let mut ready = conditions::ready(&outcome.module, &outcome.queue);
    if ready.status == Status::True
        && let (Ok(reference), Some(digest)) = (&reference, &outcome.digest)
        && let Some(left) = ctx.compiled.ready_waits(
            reference,
            digest,
            function.spec.placement == Placement::Pool,
            ctx.pool_ready(),
            conditions::is_ready(&current.conditions),
        )
    {
        ready = Observed::new(
            conditions::READY,
            Status::False,
            Reason::CompilingAhead,
            format!(
                "the runtime pool is compiling its component ahead of its first invocation (a request now waits for the rest of the compile); Ready once a pool runtime has stored it, or after {} at most (--compile-ahead-wait)",
                humantime::format_duration(ctx.settings.compile_ahead_wait)
            ),
        );
        outcome.requeue = outcome.requeue.min(left).min(COMPILE_RECHECK);
    }
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    // Only the fields this reconcile decides: the conditions list is a map
    // keyed by type, so others' conditions (the autoscaler's Active) and
    // fields (replicas, queueDepth) are left to their writers.
    let conditions = conditions::merge(
        &current.conditions,
        &[ready.clone(), outcome.module.clone(), outcome.queue.clone()],
        generation,
        &now,
    );
    let own = [conditions::READY, MODULE_READY, QUEUE_READY];
    let module_digest = outcome
        .digest
        .as_ref()
        .map(|d| format!("sha256:{d}"))
        .or(current.module_digest.clone());
    let status = ReconciledStatus {
        observed_generation: generation,
        conditions: conditions
            .into_iter()
            .filter(|c| own.contains(&c.type_.as_str()))
            .collect(),
        url: format!(
            "{}/fn/{namespace}/{name}/",
            ctx.settings.gateway_url.trim_end_matches('/')
        ),
        module_digest,
        selector,
    };
    let api: Api<Function> = Api::namespaced(ctx.client.clone(), &namespace);
    StatusApply::new(status)
        .apply(&api, &name, FIELD_MANAGER)
        .await
        .map_err(Error::Kube)?;
    report(function, &current, &ready, &outcome, ctx).await;
    if let Ok(reference) = &reference {
        let is_ready = ready.status == Status::True;
        ctx.metrics.reconciled(
            reference,
            started.elapsed().as_secs_f64(),
            Ok((is_ready, (!is_ready).then_some(ready.reason.as_str()))),
        );
    }
    Ok(Action::requeue(outcome.requeue))
}

/// How often a Function whose `Ready` waits for the pool's compile ahead
/// is looked at again even if no announcement of its component comes (one
/// missed, or the pool gone to zero meanwhile).
const COMPILE_RECHECK: Duration = Duration::from_secs(5);

/// Why `spec` cannot run on runtimes that take at most `max` of
/// `limits.memory`, if it cannot.
fn too_much_memory(spec: &FunctionSpec, max: Option<ByteSize>) -> Option<String> {
    let max = max?;
    (spec.limits.memory > max).then(|| {
        format!(
            "spec.limits.memory: {} is more than the runtimes' largest instance, {max} (their --max-instance-memory, the chart's runtime.maxInstanceMemory): lower it, or raise that with the runtimes' memory limit",
            spec.limits.memory
        )
    })
}

/// `metadata.creationTimestamp` as Kubernetes writes it (RFC 3339 UTC).
fn created(function: &Function) -> Option<String> {
    let time = function.metadata.creation_timestamp.as_ref()?;
    serde_json::to_value(time).ok()?.as_str().map(str::to_owned)
}

/// How often a Function that lost its custom path looks again: the owner
/// may be deleted or move, and nothing else wakes the loser.
const PATH_RECHECK: Duration = Duration::from_secs(30);

/// The Function that owns `function`'s custom path if that is not
/// `function` itself: the earliest created claimant ([`ClaimOrder`]), the
/// same one every gateway routes the path to.
async fn path_owner(
    function: &Function,
    reference: &FunctionRef,
    ctx: &Context,
) -> Result<Option<FunctionRef>, Error> {
    let Some(http) = &function.spec.triggers.http else {
        return Ok(None);
    };
    let mut claims = vec![ClaimOrder::new(reference.clone(), created(function))];
    let mut others = Vec::new();
    for api in ctx.settings.scope.apis::<Function>(&ctx.client) {
        others.extend(api.list(&Default::default()).await.map_err(Error::Kube)?);
    }
    for other in others {
        let (Some(namespace), Some(path)) = (other.namespace(), &other.spec.triggers.http) else {
            continue;
        };
        let Ok(other_ref) = FunctionRef::new(&namespace, &other.name_any()) else {
            continue;
        };
        if other_ref != *reference
            && path.route() == http.route()
            && other.metadata.deletion_timestamp.is_none()
            && other.spec.validate(&other_ref).is_ok()
        {
            claims.push(ClaimOrder::new(other_ref, created(&other)));
        }
    }
    let owner = claims.into_iter().min().map(|c| c.function().clone());
    Ok(owner.filter(|owner| owner != reference))
}

pub(super) fn invalid(message: String) -> Outcome {
    Outcome {
        module: Observed::new(MODULE_READY, Status::False, Reason::InvalidSpec, message),
        queue: Observed::new(
            QUEUE_READY,
            Status::Unknown,
            Reason::InvalidSpec,
            "waiting for a valid spec",
        ),
        digest: None,
        published: false,
        // Only a change of the spec can fix it.
        requeue: RESYNC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_asking_more_memory_than_the_runtimes_take_is_refused_naming_both() {
        let spec = |memory: &str| -> FunctionSpec {
            serde_json::from_value(serde_json::json!({
                "module": { "oci": "example.com/f:1" },
                "limits": { "memory": memory },
            }))
            .unwrap()
        };
        let max = Some(ByteSize::mebibytes(512));
        assert_eq!(too_much_memory(&spec("512Mi"), max), None);
        assert_eq!(too_much_memory(&spec("2Gi"), None), None);
        let problem = too_much_memory(&spec("600Mi"), max).unwrap();
        assert!(
            problem.starts_with("spec.limits.memory: 600Mi is more than")
                && problem.contains("512Mi"),
            "{problem}"
        );
    }
}
