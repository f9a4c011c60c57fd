//! Integration tests of local mode: a real gateway on an ephemeral
//! loopback port, real components built from `examples/`, real HTTP.

mod harness;

mod async_invocations;
mod bad_input;
mod hostile;
mod nats;
mod publish;
mod retries;
mod startup;
mod sync_invocations;
