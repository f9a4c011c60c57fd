//! The operator's errors, as kube-rs' controller-rs has them: one [`Error`]
//! for what a reconcile (or the autoscaler) can fail at, its variants
//! saying what failed, and one [`OperatorError`] for why the process could
//! not start or stopped. Module sources ([`crate::module::ModuleError`])
//! and API keys ([`crate::api_keys::ApiKeysError`]) keep their own types:
//! each carries the condition reason a person reads.

use std::net::SocketAddr;

use kube::runtime::finalizer;
use sluice_api::names::FunctionRef;

/// Why a reconcile failed (it is retried with backoff), or why the
/// autoscaler could not watch for a first invocation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Function has no namespace")]
    NoNamespace,
    #[error("Function {function} has no uid yet, so its Deployment cannot name it as owner")]
    NoOwnerReference { function: FunctionRef },
    #[error("Kubernetes API error: {0}")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Finalizer(Box<finalizer::Error<Error>>),
    /// Writing the registry entry or the component.
    #[error(transparent)]
    Publish(#[from] sluice_nats::publish::PublishError),
    /// Ensuring the consumer or looking for the module in the store.
    #[error(transparent)]
    Nats(#[from] sluice_nats::NatsError),
    #[error("cannot read the registry entry of {function}: {source}")]
    ReadEntry {
        function: FunctionRef,
        #[source]
        source: async_nats::jetstream::kv::EntryError,
    },
    #[error(
        "the module sha256:{digest} of {function} left the module store while it was registered; it is fetched again"
    )]
    ModuleLeftStore {
        function: FunctionRef,
        digest: sluice_api::ModuleDigest,
    },
    #[error("cannot remove {function} from NATS: {source}")]
    Unpublish {
        function: FunctionRef,
        #[source]
        source: sluice_nats::publish::PublishError,
    },
    /// Deleting the consumer or purging the invocations still queued.
    #[error("cannot remove {function} from NATS: {source}")]
    RemoveQueue {
        function: FunctionRef,
        #[source]
        source: sluice_nats::NatsError,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
}

/// Why the operator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Kubernetes(#[source] kube::Error),
    #[error(
        "the Function CRD is not installed in this cluster (apply crds/function.yaml, or install the Helm chart with crds.install=true)"
    )]
    CrdMissing,
    #[error(
        "the operator may not list Functions ({0}); apply its RBAC (charts/sluice/files/operator-rbac.yaml) and run it under that ServiceAccount"
    )]
    Forbidden(String),
    #[error(transparent)]
    Nats(#[from] sluice_nats::NatsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take part in leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("lost the leadership (Lease {namespace}/{name}); stopping so another replica leads")]
    LostLeadership { namespace: String, name: String },
    /// Reconciling or scaling panicked: a bug, reported with the panic's
    /// message so that the process exits non-zero and is restarted.
    #[error("the leader's work panicked: {0}")]
    LeadPanicked(String),
}
