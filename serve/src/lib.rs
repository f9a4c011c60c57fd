//! What every Sluice binary (gateway, runtime, operator) serves with: the
//! HTTP/1.1 server loop with graceful shutdown ([`server`]), the admin
//! endpoints `/healthz`, `/readyz` and `/metrics` over a Prometheus
//! registry ([`admin`]) and gauges read when scraped ([`scraped`]), the shutdown signal ([`signal`]), logs and
//! OpenTelemetry traces ([`telemetry`]), the egress guard's resolver
//! ([`egress`]), the container's memory limit ([`memory`]), and TLS on a
//! listener with certificates reloaded from disk
//! ([`tls`]), and locks that outlive a panic ([`sync`]). It links neither
//! NATS nor wasmtime.

pub mod admin;
pub mod egress;
pub mod memory;
mod refusal;
pub mod scraped;
pub mod server;
pub mod signal;
pub mod sync;
pub mod telemetry;
pub mod tls;

pub use admin::Admin;
pub use refusal::Refusal;
pub use scraped::ScrapedGauge;
pub use server::{ConnectionLimit, MAX_HEADER_FIELDS, MAX_REQUEST_HEAD, Service, serve};
pub use signal::shutdown_signal;
pub use tls::{ServerTls, TlsFiles};

/// The container images' static binaries (musl) allocate with mimalloc:
/// musl's own allocator takes one lock for every allocation, which costs
/// the gateway and the runtime throughput on their many threads (README,
/// "Benchmarks": the image build beside the glibc build). glibc builds keep
/// glibc's allocator.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How a binary ends: success, or the error and its causes on one line
/// of standard error (`Error: <error>: <cause>: …`, each cause once) and
/// exit status 1.
pub fn exit_code<E>(result: Result<(), E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {}", with_causes(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-separated: hyper's and the HTTP clients'
/// errors say only "error sending request" or "client error (Connect)";
/// why (refused, DNS, certificate) is in their sources.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_are_chained_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(super::with_causes(&error), "outer: refused");
    }
}
