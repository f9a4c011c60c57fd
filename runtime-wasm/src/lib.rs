//! The Sluice WebAssembly runtime: executes `wasi:http/proxy` components,
//! one fresh sandboxed instance per invocation.
//!
//! The [`Runtime`] builds one wasmtime engine (async, epoch interruption,
//! pooling allocator), compiles each component once (cached by SHA-256) and
//! pre-instantiates it; every invocation then gets a new store with the
//! function's memory limit, deadline, environment, outbound-HTTP policy and
//! a log sink tagged with the invocation id.
//!
//! [`nats::node`] serves functions from the NATS registry and invocation
//! stream; the `sluice-runtime` binary runs it.

pub mod admin;
mod artifacts;
mod cache;
pub mod callback;
mod engine;
mod host;
mod invoke;
pub mod metrics;
pub mod nats;
mod outcome;
pub mod process;
pub mod server;
pub mod telemetry;

pub use engine::{Runtime, RuntimeConfig};
pub use invoke::{FunctionLimits, PreparedFunction};
pub use outcome::{Failure, FailureKind, Outcome, Settlement, Verdict, gave_up};

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
}
