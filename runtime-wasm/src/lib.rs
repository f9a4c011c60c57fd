//! The Sluice WebAssembly runtime: executes `wasi:http/proxy` components,
//! one fresh sandboxed instance per invocation.
//!
//! The [`Runtime`] builds one wasmtime engine (async, epoch interruption,
//! pooling allocator), compiles each component once (cached by its
//! [`sluice_api::ModuleDigest`]) and pre-instantiates it; every invocation
//! then gets a new store with the function's memory limit, deadline,
//! environment, outbound-HTTP policy and a log sink tagged with the
//! invocation id. [`Runtime::attempt`] runs one attempt and counts it in
//! [`metrics::Metrics`]; what follows it (retry, dead letter) is decided by
//! [`sluice_api::Outcome::settle`].
//!
//! [`node`] serves functions from the NATS registry and invocation stream;
//! the `sluice-runtime` binary runs it. [`callback`] delivers finished
//! records to `X-Callback-Url`, for both queues.

mod artifacts;
pub mod budget;
mod cache;
pub mod callback;
mod engine;
mod host;
mod invoke;
pub mod metrics;
pub mod node;
mod share;

pub use cache::CacheUse;
pub use engine::{Runtime, RuntimeConfig};
pub use invoke::{Attempted, FunctionLimits, PreparedFunction};

/// Why a component could not be made ready to serve.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the wasmtime engine: {0}")]
    Engine(String),
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("the component cannot run as a wasi:http/proxy function: {0}")]
    NotAProxy(String),
    #[error("limits.memory {limit} exceeds the runtime's largest instance memory {max}")]
    MemoryLimitTooLarge { limit: String, max: String },
    #[error(
        "limits.memory {limit} (with each instance's {overhead} outside it) can never fit the runtime's memory budget {budget}"
    )]
    MemoryBudgetTooSmall {
        limit: String,
        overhead: String,
        budget: String,
    },
}
