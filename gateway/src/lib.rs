//! The Sluice gateway: turns HTTP requests and NATS events into invocations
//! and hands them to a queue. In local mode (`sluice-gateway --local <dir>`)
//! the queue is in-process and the WebAssembly runtime runs in the same
//! process; in NATS mode (`--nats URL`) invocations go onto JetStream for
//! `sluice-runtime` processes.

pub mod error;
pub mod events;
pub mod http;
pub mod local;
pub mod nats;
pub mod queue;
pub mod routes;
pub mod running;
