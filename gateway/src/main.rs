//! `sluice-gateway`: the Sluice gateway binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use sluice_api::ByteSize;
use sluice_gateway::http::{DEFAULT_MAX_REQUEST_BODY, HttpConfig};
use sluice_gateway::nats::{self, NatsConfig};
use sluice_gateway::running::{DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, RunningGateway};
use sluice_gateway::{admission, manifests};
use sluice_nats::layout::{Layout, LayoutArgs, LayoutConfig};
use sluice_nats::publish::Publisher;
use sluice_nats::{NatsSecurity, NatsSecurityArgs};
use sluice_serve::egress::EgressArgs;
use sluice_serve::shutdown_signal;
use sluice_serve::telemetry::Telemetry;
use sluice_serve::tls::{AdminTlsArgs, TlsArgs};

/// Defaults of the runtime's settings, for the flags of local mode; the
/// same as `sluice-runtime`'s.
#[cfg(feature = "local")]
fn runtime_defaults() -> sluice_runtime::RuntimeConfig {
    sluice_runtime::RuntimeConfig::default()
}

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
        #[command(flatten)]
        nats_security: NatsSecurityArgs,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Local mode: serve the Function manifests (*.yaml) in DIR, running
    /// them in this process.
    /// With --nats, the functions are published to that server and run in
    /// this process, queued on NATS.
    #[arg(long, value_name = "DIR")]
    local: Option<PathBuf>,
    /// NATS mode: route the functions of the registry on this NATS server
    /// (e.g. nats://127.0.0.1:4222) and queue invocations on JetStream for
    /// `sluice-runtime` processes.
    #[arg(long, value_name = "URL", env = "SLUICE_NATS_URL")]
    nats: Option<String>,
    #[command(flatten)]
    nats_security: NatsSecurityArgs,
    #[command(flatten)]
    events_nats: EventsNatsArgs,
    /// On shared clusters: every trigger subject of a Function in
    /// namespace NS must start with this prefix, `{namespace}` standing
    /// for NS (e.g. `{namespace}.`); the event bridge subscribes to no
    /// other. Give the operator the same. Default: unset.
    #[arg(long, env = "SLUICE_TRIGGER_SUBJECT_PREFIX", value_name = "TEMPLATE")]
    trigger_subject_prefix: Option<String>,
    /// Messages each trigger subscription holds while the event bridge
    /// queues earlier ones; past it events of a core NATS subject are
    /// dropped and counted (sluice_events_dropped_total). A stream-bound
    /// subject's events are pulled half as many at a time and never
    /// dropped.
    #[arg(long, env = "SLUICE_EVENT_BUFFER", default_value_t = sluice_nats::DEFAULT_SUBSCRIPTION_CAPACITY as u64, value_parser = clap::value_parser!(u64).range(2..))]
    event_buffer: u64,
    /// Address for invocations.
    #[arg(long, default_value_t = DEFAULT_LISTEN, env = "SLUICE_LISTEN")]
    listen: SocketAddr,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value_t = DEFAULT_ADMIN_LISTEN, env = "SLUICE_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    admin_tls: AdminTlsArgs,
    /// Largest request body; larger gets 413. In NATS mode it is lowered,
    /// if need be, to the server's max_payload less 64 KiB for headers.
    #[arg(long, default_value_t = ByteSize(DEFAULT_MAX_REQUEST_BODY as u64))]
    max_request_body: ByteSize,
    /// Local mode: largest response body a function may send; larger fails
    /// with 502. (In NATS mode the runtime's flag of the same name.)
    #[cfg(feature = "local")]
    #[arg(long, default_value_t = ByteSize(runtime_defaults().max_response_body as u64))]
    max_response_body: ByteSize,
    /// The NATS layout's settings (async deadline, queue depth, byte
    /// bounds, ...); in local mode, the in-process queue's deadline, depth,
    /// duplicate window and dead letters kept (byte bounds and replicas
    /// are NATS's alone).
    #[command(flatten)]
    layout: LayoutArgs,
    /// NATS mode: own the layout, creating the streams and buckets and
    /// bringing them to the settings above (`false` on a cluster, where
    /// the operator owns it; the gateway then waits for it to exist).
    #[arg(long, env = "SLUICE_OWN_LAYOUT", default_value_t = true, action = clap::ArgAction::Set)]
    own_layout: bool,
    /// Local mode: instances alive at once across all functions.
    #[cfg(feature = "local")]
    #[arg(long, default_value_t = runtime_defaults().max_instances)]
    max_instances: u32,
    #[command(flatten)]
    egress: EgressArgs,
    /// Refuse (403) functions that set no spec.auth, instead of serving
    /// them to anyone. The Helm chart sets it. (The variable takes
    /// true/false, 1/0, yes/no, on/off.)
    #[arg(long, env = "SLUICE_AUTH_REQUIRED", value_parser = clap::builder::BoolishValueParser::new())]
    auth_required: bool,
    /// Connections open at once; past it 503 overloaded (with
    /// Retry-After) and closed. Default: a quarter of the container's
    /// memory limit (less --memory-reserve) at 256 KiB each; none without a
    /// limit.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Bytes of request bodies (as they arrive) and synchronous responses
    /// (the largest that may come back, from before the call) held at once;
    /// past it 503 overloaded (with Retry-After). Default: half the
    /// container's memory limit less --memory-reserve; none without a limit.
    #[arg(long, env = "SLUICE_MAX_BUFFERED")]
    max_buffered: Option<ByteSize>,
    /// The gateway's own share of its container's memory, kept out of the
    /// two limits above.
    #[arg(long, env = "SLUICE_MEMORY_RESERVE", default_value_t = admission::DEFAULT_MEMORY_RESERVE)]
    memory_reserve: ByteSize,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// The event bridge's own NATS user: one authentication method, TLS as
/// for the gateway's connection. Unset: the bridge uses the gateway's
/// connection.
#[derive(Debug, Clone, Default, clap::Args)]
struct EventsNatsArgs {
    /// NATS user of the event bridge (the chart's SLUICE_EVENTS set, which
    /// may not subscribe to _INBOX.>, $… or sluice.…); the password comes
    /// from --events-nats-password-file.
    #[arg(long, env = "SLUICE_EVENTS_NATS_USER", value_name = "USER")]
    events_nats_user: Option<String>,
    /// File holding the NATS password of --events-nats-user.
    #[arg(long, env = "SLUICE_EVENTS_NATS_PASSWORD_FILE", value_name = "FILE")]
    events_nats_password_file: Option<PathBuf>,
    /// File holding the event bridge's NKey seed (SU...).
    #[arg(long, env = "SLUICE_EVENTS_NATS_NKEY_FILE", value_name = "FILE")]
    events_nats_nkey_file: Option<PathBuf>,
    /// The event bridge's NATS .creds file.
    #[arg(long, env = "SLUICE_EVENTS_NATS_CREDS_FILE", value_name = "FILE")]
    events_nats_creds_file: Option<PathBuf>,
}

impl EventsNatsArgs {
    /// The bridge's authentication, if any: the checks of
    /// [`NatsSecurityArgs::security`], with the flags renamed in its
    /// messages.
    fn auth(&self) -> anyhow::Result<Option<sluice_nats::security::NatsAuth>> {
        let args = NatsSecurityArgs {
            nats_user: self.events_nats_user.clone(),
            nats_password_file: self.events_nats_password_file.clone(),
            nats_nkey_file: self.events_nats_nkey_file.clone(),
            nats_creds_file: self.events_nats_creds_file.clone(),
            ..NatsSecurityArgs::default()
        };
        match args.security() {
            Ok(security) => Ok(security.auth),
            Err(e) => anyhow::bail!("{}", e.to_string().replace("--nats-", "--events-nats-")),
        }
    }
}

/// Every limit a request meets, and where it comes from, for `--help`.
fn request_limits() -> String {
    format!(
        "Request limits (each refusal is a JSON error):\n  \
         body            --max-request-body (default {body}); in NATS mode at most the server's\n                  \
         max_payload less {headroom} bytes -> 413 body_too_large\n  \
         headers         {headers} bytes as queued: per field its name, value and 13 bytes,\n                  \
         plus the path, query, callback URL and ~300 bytes of Sluice's own (JetStream\n                  \
         stores at most 64 KiB of headers per message; a guest copies at most 64 KiB\n                  \
         of fields) -> 431 headers_too_large\n  \
         header fields   {fields} per request (HTTP server) -> 431 headers_too_large\n  \
         request head    {head} bytes, request line and headers (HTTP server) -> 431\n  \
         body + headers  what the NATS server's max_payload carries -> 413 request_too_large",
        body = ByteSize(DEFAULT_MAX_REQUEST_BODY as u64),
        headroom = sluice_nats::PAYLOAD_HEADROOM,
        headers = sluice_api::invocation::MAX_REQUEST_HEADER_BLOCK,
        fields = sluice_serve::MAX_HEADER_FIELDS,
        head = sluice_serve::MAX_REQUEST_HEAD,
    )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_serve::exit_code(run().await)
}

/// The binary; its error is reported by [`sluice_serve::exit_code`].
async fn run() -> anyhow::Result<()> {
    let matches = Cli::command().after_help(request_limits()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let telemetry = Telemetry::init("sluice-gateway", cli.serve.log_json)?;
    let result = match cli.command {
        Some(Command::Publish {
            nats,
            nats_security,
            dir,
        }) => match nats_security.security() {
            Ok(security) => publish(&nats, &security, &dir).await,
            Err(e) => Err(e.into()),
        },
        None => serve(cli.serve).await,
    };
    telemetry.shutdown().await;
    result
}

async fn publish(nats: &str, security: &NatsSecurity, dir: &Path) -> anyhow::Result<()> {
    let functions =
        manifests::load_dir(dir).with_context(|| format!("cannot publish {}", dir.display()))?;
    let client = sluice_nats::connect(nats, "sluice-publish", security).await?;
    // A one-off, often run before the layout's owner: it creates what is
    // missing, with the defaults the owner then brings to its settings,
    // and changes nothing that exists.
    let layout = Layout::create_missing(client.clone(), &LayoutConfig::default()).await?;
    let publisher = Publisher::new(layout);
    for f in &functions {
        let published = publisher
            .publish(&f.function, &f.spec, &f.api_keys, &f.wasm)
            .await?;
        tracing::info!(
            function = %published.function,
            digest = %published.digest,
            uploaded_module = published.uploaded_module,
            "published"
        );
    }
    // Publishes are confirmed; make sure nothing else is left unsent.
    client.flush().await.context("cannot flush to NATS")?;
    Ok(())
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let mut http = HttpConfig {
        max_request_body: usize::try_from(args.max_request_body.0)
            .context("--max-request-body is too large")?,
        async_deadline: args.layout.async_deadline.0,
        egress: args.egress.policy(),
        auth_required: args.auth_required,
        ..HttpConfig::default()
    };
    let container = sluice_serve::memory::container_memory_limit()?;
    let limits = admission::size_limits(
        container.as_ref().map(|c| c.limit),
        args.memory_reserve.0,
        args.max_connections,
        args.max_buffered.map(|b| b.0),
    );
    tracing::info!(
        container_limit = %container.as_ref().map_or("none".to_owned(), |c| ByteSize(c.limit).to_string()),
        max_connections = %limits.max_connections.map_or("none".to_owned(), |n| n.to_string()),
        max_buffered = %limits.max_buffered.map_or("none".to_owned(), |b| ByteSize(b).to_string()),
        "admission limits"
    );
    http.max_connections = limits.max_connections;
    http.max_buffered = limits.max_buffered;
    #[cfg(not(feature = "local"))]
    if args.local.is_some() {
        anyhow::bail!(local::WITHOUT);
    }
    let Some(url) = &args.nats else {
        let Some(dir) = &args.local else {
            anyhow::bail!("nothing to serve: give --local <DIR> or --nats <URL>");
        };
        return run_until_signal(local::start(&args, dir, http).await?).await;
    };
    let security = args.nats_security.security()?;
    let mut config = NatsConfig::new(url);
    config.nats_security = security.clone();
    config.listen = args.listen;
    config.admin_listen = args.admin_listen;
    config.tls = args.tls.files()?;
    config.admin_tls = args.admin_tls.files()?;
    config.http = http;
    config.layout = args.layout.config();
    config.own_layout = args.own_layout;
    config.events_auth = args.events_nats.auth()?;
    config.event_buffer = usize::try_from(args.event_buffer).unwrap_or(usize::MAX);
    config.trigger_scope = args
        .trigger_subject_prefix
        .as_deref()
        .map(sluice_api::TriggerScope::new)
        .transpose()
        .context("--trigger-subject-prefix")?;
    // NATS mode waits for its server: a signal meanwhile ends the wait.
    let gateway = tokio::select! {
        started = nats::start(config) => started
            .with_context(|| format!("cannot start NATS mode on {}", sluice_nats::redacted(url)))?,
        () = shutdown_signal() => {
            tracing::info!("stopped while waiting for NATS");
            return Ok(());
        }
    };
    let Some(dir) = &args.local else {
        return run_until_signal(gateway).await;
    };
    // Local mode on NATS: this folder's functions, run in this process,
    // queued on a real server.
    publish(url, &security, dir).await?;
    let node = local::start_node(&args, url, security).await?;
    let result = run_until_signal(gateway).await;
    node.shutdown().await;
    result
}

/// Local mode, which runs functions in this process.
#[cfg(feature = "local")]
mod local {
    use std::net::SocketAddr;
    use std::path::Path;

    use anyhow::Context as _;
    use sluice_gateway::http::HttpConfig;
    use sluice_gateway::local::{self, LocalConfig};
    use sluice_gateway::running::RunningGateway;
    use sluice_nats::NatsSecurity;
    use sluice_runtime::RuntimeConfig;
    use sluice_runtime::node::{self, Node, NodeConfig, default_artifacts_dir};

    use super::Args;

    fn runtime_config(args: &Args) -> anyhow::Result<RuntimeConfig> {
        Ok(RuntimeConfig {
            max_response_body: usize::try_from(args.max_response_body.0)
                .context("--max-response-body is too large")?,
            max_instances: args.max_instances,
            egress: args.egress.policy(),
            ..RuntimeConfig::default()
        })
    }

    /// Serves `dir` with the in-process queue.
    pub async fn start(
        args: &Args,
        dir: &Path,
        http: HttpConfig,
    ) -> anyhow::Result<RunningGateway> {
        let mut config = LocalConfig::new(dir);
        config.listen = args.listen;
        config.admin_listen = args.admin_listen;
        config.tls = args.tls.files()?;
        config.admin_tls = args.admin_tls.files()?;
        config.http = http;
        config.queue.results_ttl = args.layout.async_deadline.0;
        config.queue.max_depth = usize::try_from(args.layout.max_queue_depth).unwrap_or(usize::MAX);
        config.queue.max_bytes = args.layout.max_queue_bytes.0;
        config.queue.dedupe_window = args.layout.duplicate_window.0;
        config.queue.dead_letter_capacity =
            usize::try_from(args.layout.dead_letters_per_function).unwrap_or(usize::MAX);
        config.runtime = runtime_config(args)?;
        config.http.response_reserve = config.runtime.max_response_body;
        local::start(config)
            .await
            .with_context(|| format!("cannot start local mode from {}", dir.display()))
    }

    /// A runtime node in this process serving every published function.
    pub async fn start_node(
        args: &Args,
        url: &str,
        security: NatsSecurity,
    ) -> anyhow::Result<Node> {
        let mut config = NodeConfig::new(url);
        config.nats_security = security;
        config.pool_serves_dedicated = true;
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.artifacts = Some(default_artifacts_dir());
        config.runtime = runtime_config(args)?;
        let node = node::start(config)
            .await
            .with_context(|| format!("cannot start the runtime on {url}"))?;
        tracing::info!(admin = %node.admin_addr, "running the functions in this process");
        Ok(node)
    }
}

/// Built without local mode: `--local` is refused with the reason.
#[cfg(not(feature = "local"))]
mod local {
    use std::path::Path;

    use sluice_gateway::http::HttpConfig;
    use sluice_gateway::running::RunningGateway;

    use super::Args;

    pub const WITHOUT: &str =
        "--local needs local mode, which this sluice-gateway was built without (feature `local`)";

    pub async fn start(_: &Args, _: &Path, _: HttpConfig) -> anyhow::Result<RunningGateway> {
        anyhow::bail!(WITHOUT)
    }

    pub struct Node;

    impl Node {
        pub async fn shutdown(self) {}
    }

    pub async fn start_node(
        _: &Args,
        _: &str,
        _: sluice_nats::NatsSecurity,
    ) -> anyhow::Result<Node> {
        anyhow::bail!(WITHOUT)
    }
}

async fn run_until_signal(mut gateway: RunningGateway) -> anyhow::Result<()> {
    tracing::info!(addr = %gateway.addr, admin = %gateway.admin_addr, "serving");
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down: finishing open requests");
            gateway.shutdown().await;
            Ok(())
        }
        () = gateway.wait() => anyhow::bail!("the gateway stopped serving unexpectedly"),
    }
}
