//! `sluice-gateway`: the Sluice gateway binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_api::{ByteSize, Duration};
use sluice_gateway::local::{self, LocalConfig};
use sluice_gateway::publish::Publisher;

/// Serve Sluice functions over HTTP.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish the Function manifests (*.yaml) of DIR and their components
    /// to the NATS registry and module store.
    Publish {
        /// NATS server URL, e.g. nats://127.0.0.1:4222.
        #[arg(long, env = "SLUICE_NATS_URL")]
        nats: String,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Local mode: serve the Function manifests (*.yaml) in DIR, running
    /// them in this process.
    #[arg(long, value_name = "DIR")]
    local: Option<PathBuf>,
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
    let cli = Cli::parse();
    init_tracing(cli.serve.log_json);
    match cli.command {
        Some(Command::Publish { nats, dir }) => publish(&nats, &dir).await,
        None => serve_local(cli.serve).await,
    }
}

async fn publish(nats: &str, dir: &Path) -> anyhow::Result<()> {
    let functions =
        local::load_dir(dir).with_context(|| format!("cannot publish {}", dir.display()))?;
    let publisher = Publisher::connect(nats).await?;
    for function in &functions {
        let published = publisher.publish(function).await?;
        tracing::info!(
            function = %published.function,
            digest = %published.digest,
            uploaded_module = published.uploaded_module,
            "published"
        );
    }
    Ok(())
}

async fn serve_local(args: Args) -> anyhow::Result<()> {
    let Some(dir) = args.local.clone() else {
        anyhow::bail!("nothing to serve: give --local <DIR> (NATS mode is not available yet)");
    };
    let mut config = LocalConfig::new(&dir);
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
        .with_context(|| format!("cannot start local mode from {}", dir.display()))?;
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
