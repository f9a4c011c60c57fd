//! Placing a Function: the Deployment of a `placement: dedicated`
//! function, applied and owned, or deleted when it moves to the pool.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use sluice_api::names::FunctionRef;
use sluice_api::{Function, Placement};

use super::{Error, FIELD_MANAGER};
use crate::conditions::{Observed, QUEUE_READY, Reason, Status};
use crate::context::Context;
use crate::resources;

/// Applies the dedicated Deployment of a `placement: dedicated` function,
/// or deletes the one a formerly dedicated function left; returns its
/// pods' selector, or the condition that says why placement failed. A
/// Deployment of that name the Function does not control is never taken
/// over nor deleted.
pub(super) async fn ensure_placement(
    function: &Function,
    reference: &FunctionRef,
    ctx: &Context,
) -> Result<Result<Option<String>, Observed>, Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &reference.namespace);
    let name = resources::dedicated_name(reference);
    let uid = function.metadata.uid.clone().unwrap_or_default();
    let existing = deployments.get_opt(&name).await.map_err(Error::Kube)?;
    let ours = existing
        .as_ref()
        .is_some_and(|d| resources::controlled_by(d, &uid));
    if function.spec.placement != Placement::Dedicated {
        if ours {
            let only_ours = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: existing.and_then(|d| d.metadata.uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match deployments.delete(&name, &only_ours).await {
                Ok(_) => {
                    tracing::info!(function = %reference, deployment = %name, "placement: pool; deleted the dedicated Deployment");
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(Error::Kube(e)),
            }
        }
        return Ok(Ok(None));
    }
    if existing.is_some() && !ours {
        return Ok(Err(Observed::new(
            QUEUE_READY,
            Status::False,
            Reason::PlacementConflict,
            format!(
                "a Deployment {name} this Function does not own already exists in {}; rename or delete it, or rename the Function",
                reference.namespace
            ),
        )));
    }
    // A pod whose Secret volume is missing never starts, and says so only
    // in its own events: the Function says it instead, and no Deployment
    // waits in ContainerCreating.
    let secrets: Api<PartialObjectMeta<Secret>> =
        Api::namespaced(ctx.client.clone(), &reference.namespace);
    for secret in ctx.settings.runtime.nats_secrets.names() {
        if secrets
            .get_metadata_opt(secret)
            .await
            .map_err(Error::Kube)?
            .is_none()
        {
            return Ok(Err(Observed::new(
                QUEUE_READY,
                Status::False,
                Reason::RuntimeSecretMissing,
                format!(
                    "placement: dedicated runs the function's own runtime in {ns}, which mounts Secret {secret} (its NATS credentials or TLS files), and {ns} has no such Secret: copy it there from Sluice's namespace, or use placement: pool",
                    ns = reference.namespace
                ),
            )));
        }
    }
    let owner = function
        .controller_owner_ref(&())
        .ok_or_else(|| Error::NoOwnerReference {
            function: reference.clone(),
        })?;
    let deployment = resources::dedicated_deployment(reference, owner, &ctx.settings.runtime);
    match deployments
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await
    {
        Ok(_) => Ok(Ok(Some(resources::dedicated_selector(reference)))),
        // Refused as invalid (a bad resource quantity in the operator's
        // settings, say): the Function's status says so.
        Err(kube::Error::Api(e)) if e.code == 422 => Ok(Err(Observed::new(
            QUEUE_READY,
            Status::False,
            Reason::PlacementFailed,
            format!(
                "the API server refused the Deployment {name}: {}",
                e.message
            ),
        ))),
        Err(e) => Err(Error::Kube(e)),
    }
}
