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
use sluice_runtime::budget::{self, MemorySettings};
use sluice_runtime::node::{self, DEFAULT_ADMIN_LISTEN, NodeConfig, default_artifacts_dir};
use sluice_serve::egress::EgressArgs;
use sluice_serve::memory;
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
    /// Keep precompiled components in memory only, with no folder (then
    /// --artifacts is not used): those of sluice-artifacts are loaded
    /// straight from memory, and a restarted runtime fetches them again.
    /// For a container with a read-only root and no volume.
    #[arg(long, env = "SLUICE_ARTIFACTS_IN_MEMORY", conflicts_with = "artifacts")]
    artifacts_in_memory: bool,
    /// Load components other runtimes compiled from the NATS object store
    /// sluice-artifacts, and store there what this one compiles. What it
    /// holds runs as machine code: set false unless only Sluice's runtimes
    /// may publish to $O.sluice-artifacts.> (the chart's NATS permissions
    /// see to it).
    #[arg(long, env = "SLUICE_SHARED_ARTIFACTS", default_value_t = true, action = clap::ArgAction::Set)]
    shared_artifacts: bool,
    /// Without --function (a pool runtime): compile each registered
    /// component ahead of its first invocation, one at a time in the
    /// background while no invocation waits for a load, and store it in sluice-artifacts (with
    /// --shared-artifacts), so that first invocation, here or in a
    /// dedicated runtime, loads it instead of compiling. Here it stays in
    /// memory while --component-cache has room to spare (never dropping
    /// another component for it), as do those another runtime stored.
    /// An invocation arriving while its component compiles ahead takes
    /// the compiled bytes as that compile ends.
    #[arg(long, env = "SLUICE_PRECOMPILE_REGISTERED", default_value_t = true, action = clap::ArgAction::Set)]
    precompile_registered: bool,
    /// Bytes of compiled components kept in memory; past it the least
    /// recently used are dropped and reloaded from their precompiled
    /// artifact when next invoked. Part of --memory-reserve.
    #[arg(long, env = "SLUICE_COMPONENT_CACHE", default_value_t = RuntimeConfig::default().component_cache)]
    component_cache: ByteSize,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value_t = DEFAULT_ADMIN_LISTEN, env = "SLUICE_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    /// Largest response body a function may send; larger fails with 502.
    #[arg(long, default_value_t = ByteSize(RuntimeConfig::default().max_response_body as u64))]
    max_response_body: ByteSize,
    /// Instances alive at once across all functions.
    #[arg(long, default_value_t = RuntimeConfig::default().max_instances)]
    max_instances: u32,
    /// Bytes the live instances may reserve together (each its function's
    /// limits.memory plus its stack, response and log buffers); beyond it
    /// invocations wait. Default: the container's memory limit (its
    /// cgroup's, read at start) less --memory-reserve; none without a limit.
    #[arg(long, env = "SLUICE_MEMORY_BUDGET")]
    memory_budget: Option<ByteSize>,
    /// The process's own share of the container's memory (compiled code,
    /// connections, queued messages), kept out of the budget.
    #[arg(long, env = "SLUICE_MEMORY_RESERVE", default_value = "128Mi")]
    memory_reserve: ByteSize,
    /// The largest limits.memory a function may ask for; larger is refused
    /// when the function loads. Default: 1Gi, or less so that one instance
    /// at it fits the budget.
    #[arg(long, env = "SLUICE_MAX_INSTANCE_MEMORY")]
    max_instance_memory: Option<ByteSize>,
    /// Longest the runtime takes to stop after SIGTERM: held invocations
    /// finish within it (less 10 s kept for callbacks); what still runs at
    /// its end is left to JetStream to deliver again. Keep it within the
    /// pod's terminationGracePeriodSeconds.
    #[arg(long, env = "SLUICE_DRAIN_GRACE", default_value_t = sluice_api::Duration(node::DEFAULT_DRAIN_GRACE))]
    drain_grace: sluice_api::Duration,
    #[command(flatten)]
    egress: EgressArgs,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// Sets the memory budget and the largest instance from the flags and the
/// container's memory limit, and says what they came to.
fn size_memory(args: &Args, runtime: &mut RuntimeConfig) -> anyhow::Result<()> {
    let container = memory::container_memory_limit()?;
    let plan = budget::plan(MemorySettings {
        container_limit: container.as_ref().map(|c| c.limit),
        budget: args.memory_budget.map(|b| b.0),
        reserve: args.memory_reserve.0,
        max_instance_memory: args.max_instance_memory.map(|m| m.0),
        overhead: runtime.instance_overhead(),
    })?;
    runtime.memory_budget = plan.budget.map(ByteSize);
    runtime.max_instance_memory = ByteSize(plan.max_instance_memory);
    match (&plan.budget, &container) {
        (Some(budget), container) => tracing::info!(
            budget = %ByteSize(*budget),
            container_limit = %container.as_ref().map_or("none".to_owned(), |c| format!("{} ({})", ByteSize(c.limit), c.file.display())),
            max_instance_memory = %runtime.max_instance_memory,
            per_instance_overhead = %ByteSize(runtime.instance_overhead()),
            "memory budget"
        ),
        (None, _) => tracing::warn!(
            max_instance_memory = %runtime.max_instance_memory,
            "no memory limit found and no --memory-budget: instances are not budgeted"
        ),
    }
    Ok(())
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
    config.artifacts = (!args.artifacts_in_memory).then(|| args.artifacts.clone());
    config.artifacts_in_memory = args.artifacts_in_memory;
    config.shared_artifacts = args.shared_artifacts;
    config.precompile_registered = args.precompile_registered;
    config.runtime.component_cache = args.component_cache;
    config.admin_listen = args.admin_listen;
    config.drain_grace = args.drain_grace.0;
    config.runtime.max_response_body =
        usize::try_from(args.max_response_body.0).context("--max-response-body is too large")?;
    config.runtime.max_instances = args.max_instances;
    config.runtime.egress = args.egress.policy();
    size_memory(&args, &mut config.runtime)?;
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
