//! The Function status the operator writes, typed: each writer applies
//! only its own fields by server-side apply under its own field manager,
//! so neither takes the other's. The controller owns [`ReconciledStatus`]
//! (`sluice-operator`), the autoscaler [`ScaleStatus`]
//! (`sluice-autoscaler`); `conditions` is a map list keyed by `type`, so
//! each owns its condition types only.

use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use sluice_api::{Condition, Function};

/// What the controller decides: `Ready`, `ModuleReady`, `QueueReady` and
/// where the function is served.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconciledStatus {
    pub observed_generation: Option<i64>,
    /// Of the controller's condition types only.
    pub conditions: Vec<Condition>,
    /// The function's default route on the gateway.
    pub url: String,
    /// `sha256:<hex>` of the resolved component; kept when unresolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_digest: Option<String>,
    /// A dedicated function's pod selector (the scale subresource's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// What the autoscaler shows of a function's scale.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleStatus {
    /// Replicas running now.
    pub replicas: u32,
    /// Replicas the autoscaler asks for.
    pub desired_replicas: u32,
    /// Invocations queued or in flight, as last written.
    pub queue_depth: u64,
    /// The `Active` condition only.
    pub conditions: Vec<Condition>,
}

/// The body of a server-side apply of a Function's `status` subresource.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusApply<S> {
    api_version: &'static str,
    kind: &'static str,
    pub status: S,
}

impl<S: Serialize + std::fmt::Debug> StatusApply<S> {
    pub fn new(status: S) -> Self {
        Self {
            api_version: sluice_api::API_VERSION,
            kind: sluice_api::KIND,
            status,
        }
    }

    /// Applies it to Function `name` as `field_manager`, forcing: these
    /// fields are that manager's alone.
    pub async fn apply(
        &self,
        functions: &Api<Function>,
        name: &str,
        field_manager: &str,
    ) -> Result<Function, kube::Error> {
        functions
            .patch_status(
                name,
                &PatchParams::apply(field_manager).force(),
                &Patch::Apply(self),
            )
            .await
    }
}
