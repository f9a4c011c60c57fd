//! `sluice-runtime`: serves functions from the NATS registry, pulling their
//! invocations from JetStream.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sluice_api::ByteSize;
use sluice_api::names::FunctionRef;
use sluice_nats::NatsSecurityArgs;
use sluice_runtime::RuntimeConfig;
use sluice_runtime::node::{self, DEFAULT_ADMIN_LISTEN, NodeConfig, default_artifacts_dir};
use sluice_serve::egress::EgressArgs;
use sluice_serve::shutdown_signal;
use sluice_serve::telemetry::Telemetry;

/// Run Sluice functions from NATS JetStream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// NATS server URL, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "SLUICE_NATS_URL")]
    nats: String,
    #[command(flatten)]
    nats_security: NatsSecurityArgs,
    /// Serve only this function (`namespace/name`, dedicated placement);
    /// without it, every function in the registry (the pool).
    #[arg(long, value_name = "NS/NAME")]
    function: Option<FunctionRef>,
    /// Where precompiled components are kept across restarts. Created
    /// private (0700) when missing; loaded from only while it and its
    /// contents belong to this user and nobody else may write them.
    #[arg(long, env = "SLUICE_ARTIFACTS", default_value_os_t = default_artifacts_dir())]
    artifacts: PathBuf,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value_t = DEFAULT_ADMIN_LISTEN, env = "SLUICE_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    /// Largest response body a function may send; larger fails with 502.
    #[arg(long, default_value_t = ByteSize(RuntimeConfig::default().max_response_body as u64))]
    max_response_body: ByteSize,
    /// Instances alive at once across all functions.
    #[arg(long, default_value_t = RuntimeConfig::default().max_instances)]
    max_instances: u32,
    #[command(flatten)]
    egress: EgressArgs,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_serve::exit_code(run().await)
}

/// The binary; its error is reported by [`sluice_serve::exit_code`].
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = Telemetry::init("sluice-runtime", args.log_json)?;
    let mut config = NodeConfig::new(&args.nats);
    config.nats_security = args.nats_security.security()?;
    config.function = args.function.clone();
    config.artifacts = Some(args.artifacts.clone());
    config.admin_listen = args.admin_listen;
    config.runtime.max_response_body =
        usize::try_from(args.max_response_body.0).context("--max-response-body is too large")?;
    config.runtime.max_instances = args.max_instances;
    config.runtime.egress = args.egress.policy();
    let shown = sluice_nats::redacted(&args.nats);
    // The node waits for NATS: a signal meanwhile ends the wait.
    let mut node = tokio::select! {
        started = node::start(config) => started
            .with_context(|| format!("cannot start the runtime on {shown}"))?,
        () = shutdown_signal() => {
            tracing::info!("stopped while waiting for NATS");
            telemetry.shutdown().await;
            return Ok(());
        }
    };
    tracing::info!(
        nats = %shown,
        admin = %node.admin_addr,
        serving = %args.function.as_ref().map_or("every function".to_owned(), ToString::to_string),
        "runtime started"
    );
    let result = tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down: no more pulls, finishing held invocations");
            node.shutdown().await;
            tracing::info!("stopped");
            Ok(())
        }
        () = node.wait() => Err(anyhow::anyhow!("the runtime stopped unexpectedly")),
    };
    telemetry.shutdown().await;
    result
}
