//! The Sluice gateway: turns HTTP requests into invocations and hands them
//! to a queue. In local mode (`sluice-gateway --local <dir>`) the queue is
//! in-process and the WebAssembly runtime runs in the same process.

pub mod admin;
pub mod callback;
pub mod error;
pub mod http;
pub mod local;
pub mod metrics;
pub mod publish;
pub mod queue;
pub mod routes;
pub mod server;
