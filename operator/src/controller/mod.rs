//! The Function controller: one `reconcile`, wrapped in kube-runtime's
//! finalizer, and one `error_policy`.
//!
//! Applying a Function validates its spec, resolves its module (checked to
//! be a `wasi:http` component), stores the component in `sluice-modules`
//! once per digest, writes the registry entry gateways and runtimes follow,
//! ensures the function's JetStream consumer, owns the Deployment of a
//! dedicated function, and reports all of it in the status conditions and
//! in Events. Deleting one removes its registry entry and consumer; its
//! Deployment goes with it by owner reference.
//!
//! What the cluster holds is the truth: a restarted operator recomputes
//! everything from the Functions, ConfigMaps and NATS, and a Function
//! deleted while it was down still has its finalizer, so it is cleaned up
//! when the operator returns.

mod apply;
mod events;
mod placement;
mod register;
mod watches;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource as _, ResourceExt as _};
use sluice_api::Function;
use sluice_api::names::FunctionRef;

use crate::context::Context;
pub use crate::error::Error;

pub use watches::run;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "sluice-operator";
/// Held on every Function until its registry entry and consumer are gone.
pub const FINALIZER: &str = "sluice.dev/cleanup";

/// How soon a Function is looked at again after a failure that may pass by
/// itself (NATS away, a registry or URL unreachable).
const RETRY_TRANSIENT: Duration = Duration::from_secs(10);
/// Reconciles running at once: each may hold a module of up to
/// `--max-module-size` in memory while it checks and stores it.
const RECONCILE_CONCURRENCY: u16 = 8;
/// How often a Function is looked at again in any case: an OCI tag may
/// have moved, and a lost NATS entry is restored.
const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one Function: [`apply`] or [`cleanup`] under the finalizer.
pub async fn reconcile(function: Arc<Function>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = function.namespace().ok_or(Error::NoNamespace)?;
    let name = function.name_any();
    let api: Api<Function> = Api::namespaced(ctx.client.clone(), &namespace);
    let outcome = finalizer(&api, FINALIZER, function, |event| async {
        match event {
            finalizer::Event::Apply(f) => apply::apply(&f, &ctx).await,
            finalizer::Event::Cleanup(f) => {
                cleanup(&f, &ctx).await.map(|()| Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(function) = FunctionRef::new(&namespace, &name)
        && outcome.is_err()
    {
        ctx.metrics.reconciled(&function, seconds, Err(()));
    }
    outcome
}

/// Backs off a Function whose reconcile failed.
pub fn error_policy(function: Arc<Function>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        function = %format!("{}/{}", function.namespace().unwrap_or_default(), function.name_any()),
        error = %error,
        "reconcile failed; retrying"
    );
    Action::requeue(RETRY_TRANSIENT)
}

/// Removes a deleted Function from NATS: its registry entry (gateways and
/// runtimes stop serving it) and its consumer, with what it still held.
async fn cleanup(function: &Function, ctx: &Context) -> Result<(), Error> {
    let namespace = function.namespace().ok_or(Error::NoNamespace)?;
    let name = function.name_any();
    let Ok(reference) = FunctionRef::new(&namespace, &name) else {
        // Never registered: its name cannot name one.
        return Ok(());
    };
    let queue_failed = |source| Error::RemoveQueue {
        function: reference.clone(),
        source,
    };
    ctx.publisher
        .unpublish(&reference)
        .await
        .map_err(|source| Error::Unpublish {
            function: reference.clone(),
            source,
        })?;
    // Purged before its consumers go, so that a runtime that has not seen
    // the removal yet finds no work in a lane or ordering bucket whose
    // consumer it would make again (left behind, it would count against
    // the stream's consumers for good); and purged again after, as a work
    // queue keeps messages without consumers and a Function created again
    // under the name must not run what a gateway queued meanwhile.
    let mut purged = ctx
        .layout
        .purge_invocations(&reference)
        .await
        .map_err(queue_failed)?;
    ctx.layout
        .delete_consumer(&reference)
        .await
        .map_err(queue_failed)?;
    purged += ctx
        .layout
        .purge_invocations(&reference)
        .await
        .map_err(queue_failed)?;
    if purged > 0 {
        tracing::info!(function = %reference, purged, "dropped the invocations still queued");
    }
    ctx.metrics.removed(&reference);
    tracing::info!(function = %reference, "removed from the registry and its queue");
    let event = Event {
        type_: EventType::Normal,
        reason: "Removed".into(),
        note: Some(
            "removed from the registry; its consumer and queued invocations are deleted".into(),
        ),
        action: "Cleanup".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &function.object_ref(&()))
        .await
    {
        tracing::debug!(error = %e, "cannot record the removal");
    }
    Ok(())
}
