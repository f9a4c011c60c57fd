//! `sluice-gateway`: the Sluice gateway binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sluice_api::{ByteSize, Duration};
use sluice_gateway::local::{self, LocalConfig};

/// Serve Sluice functions over HTTP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Local mode: serve the Function manifests (*.yaml) in DIR, running
    /// them in this process.
    #[arg(long, value_name = "DIR")]
    local: PathBuf,
    /// Address for invocations.
    #[arg(long, default_value = "127.0.0.1:8080", env = "SLUICE_LISTEN")]
    listen: SocketAddr,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9090", env = "SLUICE_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    /// Largest request body; larger gets 413.
    #[arg(long, default_value = "1Mi")]
    max_request_body: ByteSize,
    /// Largest response body a function may send; larger fails with 502.
    #[arg(long, default_value = "6Mi")]
    max_response_body: ByteSize,
    /// How long async invocations may take, retries included, and how long
    /// their records stay readable.
    #[arg(long, default_value = "1h")]
    async_deadline: Duration,
    /// Queued invocations per function before submits get 429.
    #[arg(long, default_value_t = 10_000)]
    max_queue_depth: usize,
    /// Instances alive at once across all functions.
    #[arg(long, default_value_t = 256)]
    max_instances: u32,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);

    let mut config = LocalConfig::new(&args.local);
    config.listen = args.listen;
    config.admin_listen = args.admin_listen;
    config.http.max_request_body =
        usize::try_from(args.max_request_body.0).context("--max-request-body is too large")?;
    config.http.async_deadline = args.async_deadline.0;
    config.queue.results_ttl = args.async_deadline.0;
    config.queue.max_depth = args.max_queue_depth;
    config.runtime.max_response_body =
        usize::try_from(args.max_response_body.0).context("--max-response-body is too large")?;
    config.runtime.max_instances = args.max_instances;

    let mut gateway = local::start(config)
        .await
        .with_context(|| format!("cannot start local mode from {}", args.local.display()))?;
    tracing::info!(
        addr = %gateway.addr,
        admin = %gateway.admin_addr,
        functions = ?gateway.functions.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "serving"
    );
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down: finishing open requests");
            gateway.shutdown().await;
        }
        () = gateway.wait() => {}
    }
    Ok(())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
