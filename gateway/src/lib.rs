//! The Sluice gateway: turns HTTP requests and NATS events into invocations
//! and hands them to a queue. In local mode (`sluice-gateway --local <dir>`,
//! the default `local` feature) the queue is in-process and the WebAssembly
//! runtime runs in the same process; in NATS mode (`--nats URL`) invocations
//! go onto JetStream for `sluice-runtime` processes, and the gateway links
//! no wasmtime when built without the `local` feature.

pub mod admission;
pub mod auth;
pub mod error;
pub mod events;
pub mod http;
#[cfg(feature = "local")]
pub mod local;
pub mod manifests;
pub mod metrics;
pub mod nats;
pub mod queue;
pub mod routes;
pub mod running;
pub mod schedules;
