//! What every Sluice binary (gateway, runtime, operator) serves with: the
//! HTTP/1.1 server loop with graceful shutdown ([`server`]), the admin
//! endpoints `/healthz`, `/readyz` and `/metrics` over a Prometheus
//! registry ([`admin`]), the shutdown signal ([`signal`]), logs and
//! OpenTelemetry traces ([`telemetry`]), the egress guard's resolver
//! ([`egress`]), and TLS on a listener with certificates reloaded from disk
//! ([`tls`]). It links neither NATS nor wasmtime.

pub mod admin;
pub mod egress;
mod refusal;
pub mod server;
pub mod signal;
pub mod telemetry;
pub mod tls;

pub use admin::Admin;
pub use refusal::Refusal;
pub use server::{MAX_HEADER_FIELDS, MAX_REQUEST_HEAD, Service, serve};
pub use signal::shutdown_signal;
pub use tls::{ServerTls, TlsFiles};
