//! Integration tests: real gateways on ephemeral loopback ports, real
//! components built from `examples/`, real HTTP, and for NATS mode a real
//! nats-server. Cases written as `async fn(Backend)` and listed in
//! `conformance!` run on both queue backends.

mod harness;

mod async_invocations;
mod auth;
mod bad_input;
mod bounds;
mod destinations;
mod distributed;
mod egress;
mod event_buffers;
mod failover;
mod hostile;
mod idle;
mod lifecycle;
mod loading;
mod logs;
mod nats_mode;
mod nats_security;
mod ordering;
mod polyglot;
mod priority;
mod publish;
mod queue_bytes;
mod retries;
mod schedules;
mod share;
mod startup;
mod sync_invocations;
mod tenancy;
mod tls;
