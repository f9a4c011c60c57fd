//! The writes a decision calls for (scales through the `scale`
//! subresource, the status fields by server-side apply, Events), made a
//! few at once; a failed status write is marked to be written again.

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Event;
use sluice_api::Function;
use sluice_api::names::FunctionRef;
use std::time::Instant;

use super::{Autoscaler, FIELD_MANAGER};
use crate::context::Context;
use crate::status::{ScaleStatus, StatusApply};

/// Writes to the API server in flight at once within one tick.
const WRITES_AT_ONCE: usize = 16;

/// One write a decision calls for.
pub(super) enum Write {
    Scale {
        namespace: String,
        name: String,
        replicas: u32,
        /// When the demand behind it was seen, and how.
        seen_at: Instant,
        trigger: &'static str,
    },
    Status {
        function: FunctionRef,
        patch: StatusApply<ScaleStatus>,
    },
    Event {
        regarding: Box<ObjectReference>,
        event: Event,
    },
}

impl Autoscaler {
    /// Makes `writes`, a few at once; failures are logged and left to the
    /// next tick, which decides again from what it finds.
    pub(super) async fn write(&mut self, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        let failed: Vec<FunctionRef> = futures::stream::iter(writes)
            .map(|write| {
                let ctx = ctx.clone();
                async move { execute(&ctx, write).await }
            })
            .buffer_unordered(WRITES_AT_ONCE)
            .filter_map(|failed| async move { failed })
            .collect()
            .await;
        // A status that was not written is written again next time.
        for function in failed {
            if let Some(tracked) = self.tracked.get_mut(&function) {
                tracked.stale = true;
            }
        }
    }
}

/// Makes one write; the function whose status write failed, if one did.
async fn execute(ctx: &Context, write: Write) -> Option<FunctionRef> {
    match write {
        Write::Scale {
            namespace,
            name,
            replicas,
            seen_at,
            trigger,
        } => {
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
            let patch = serde_json::json!({ "spec": { "replicas": replicas } });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            match deployments
                .patch_scale(&name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => ctx
                    .metrics
                    .autoscaler
                    .scaled(trigger, seen_at.elapsed().as_secs_f64()),
                Err(e) => {
                    ctx.metrics.autoscaler.scale_failed(&namespace, &name);
                    tracing::warn!(deployment = %format!("{namespace}/{name}"), replicas, error = %e, "cannot scale; trying again next tick");
                }
            }
            None
        }
        Write::Status { function, patch } => {
            let api: Api<Function> = Api::namespaced(ctx.client.clone(), &function.namespace);
            match patch.apply(&api, &function.name, FIELD_MANAGER).await {
                Ok(_) => None,
                Err(kube::Error::Api(e)) if e.code == 404 => None,
                Err(e) => {
                    tracing::debug!(%function, error = %e, "cannot write the scale status");
                    Some(function)
                }
            }
        }
        Write::Event { regarding, event } => {
            if let Err(e) = ctx.recorder.publish(&event, &regarding).await {
                tracing::warn!(error = %e, reason = %event.reason, "cannot record an Event");
            }
            None
        }
    }
}
