//! `sluice-operator`: reconciles Function resources into NATS and runtime
//! Deployments; `sluice-operator crd` prints the Function CRD.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_api::ByteSize;
use sluice_api::egress::{Cidr, EgressPolicy};
use sluice_nats::{LayoutArgs, NatsSecurityArgs};
use sluice_operator::context::{AutoscalerConfig, DEFAULT_INTERVAL, PoolTarget};
use sluice_operator::module::{DEFAULT_MAX_MODULE_BYTES, FetcherConfig};
use sluice_operator::resources::{NatsAuthMethod, RuntimeNatsSecrets, RuntimeTemplate};
use sluice_operator::{DEFAULT_LEASE_DURATION, LeaderElection, OperatorConfig, Settings};
use sluice_serve::shutdown_signal;
use sluice_serve::telemetry::Telemetry;

/// Run the Sluice operator.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the Function CustomResourceDefinition (YAML), as in crds/.
    Crd,
}

#[derive(Debug, clap::Args)]
struct Args {
    /// NATS server URL, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "SLUICE_NATS_URL")]
    nats: Option<String>,
    #[command(flatten)]
    nats_security: NatsSecurityArgs,
    /// The gateway's external base URL; each Function's status.url is it
    /// plus /fn/<namespace>/<name>/.
    #[arg(
        long,
        env = "SLUICE_GATEWAY_URL",
        default_value = "http://localhost:8080"
    )]
    gateway_url: String,
    /// Image of sluice-runtime for dedicated functions' Deployments.
    #[arg(
        long,
        env = "SLUICE_RUNTIME_IMAGE",
        default_value = concat!("ghcr.io/sluice-dev/sluice-runtime:", env!("CARGO_PKG_VERSION"))
    )]
    runtime_image: String,
    /// NATS URL as runtime pods reach it. Default: --nats.
    #[arg(long, env = "SLUICE_RUNTIME_NATS_URL")]
    runtime_nats_url: Option<String>,
    /// How dedicated runtimes authenticate to NATS: userPassword, token,
    /// nkey or creds, read from --runtime-nats-secret (keys user and
    /// password, token, nkey, creds). Unset: they send no credentials.
    #[arg(
        long,
        env = "SLUICE_RUNTIME_NATS_AUTH",
        requires = "runtime_nats_secret"
    )]
    runtime_nats_auth: Option<NatsAuthMethod>,
    /// Secret with dedicated runtimes' NATS credentials; it must exist in
    /// every namespace with a dedicated function (a pod mounts Secrets of
    /// its own namespace only).
    #[arg(
        long,
        env = "SLUICE_RUNTIME_NATS_SECRET",
        value_name = "NAME",
        requires = "runtime_nats_auth"
    )]
    runtime_nats_secret: Option<String>,
    /// Secret with ca.crt, the CA of the NATS server's certificate, for
    /// dedicated runtimes (in every namespace with a dedicated function).
    #[arg(long, env = "SLUICE_RUNTIME_NATS_CA_SECRET", value_name = "NAME")]
    runtime_nats_ca_secret: Option<String>,
    /// kubernetes.io/tls Secret with dedicated runtimes' NATS client
    /// certificate (in every namespace with a dedicated function).
    #[arg(
        long,
        env = "SLUICE_RUNTIME_NATS_CLIENT_CERT_SECRET",
        value_name = "NAME"
    )]
    runtime_nats_client_cert_secret: Option<String>,
    /// Dedicated runtimes refuse to talk to NATS without TLS.
    #[arg(long, env = "SLUICE_RUNTIME_NATS_TLS_REQUIRED")]
    runtime_nats_tls_required: bool,
    /// CPU request of each dedicated runtime.
    #[arg(long, default_value = "100m")]
    runtime_cpu_request: String,
    /// Memory request of each dedicated runtime.
    #[arg(long, default_value = "128Mi")]
    runtime_memory_request: String,
    /// Memory limit of each dedicated runtime.
    #[arg(long, default_value = "1Gi")]
    runtime_memory_limit: String,
    /// Each dedicated runtime's `--egress-allow`: a non-public range its
    /// callbacks and outbound HTTP may reach, as a CIDR or an address.
    /// Repeat the flag, or separate entries with commas. Default: none.
    #[arg(
        long,
        value_name = "CIDR",
        env = "SLUICE_RUNTIME_EGRESS_ALLOW",
        value_delimiter = ','
    )]
    runtime_egress_allow: Vec<Cidr>,
    /// Each dedicated runtime's `--egress-deny`: a range refused besides
    /// the non-public ones. Default: none.
    #[arg(
        long,
        value_name = "CIDR",
        env = "SLUICE_RUNTIME_EGRESS_DENY",
        value_delimiter = ','
    )]
    runtime_egress_deny: Vec<Cidr>,
    /// How often the autoscaler reads every function's queue depth and
    /// decides replicas. A first invocation at zero replicas is acted on at
    /// once, without waiting for it.
    #[arg(long, default_value_t = sluice_api::Duration(DEFAULT_INTERVAL))]
    autoscale_interval: sluice_api::Duration,
    /// The runtime pool's Deployment (`namespace/name`), scaled on the
    /// demand summed over its functions. Unset: the pool is sized outside
    /// Sluice.
    #[arg(long, value_name = "NS/NAME")]
    pool_deployment: Option<String>,
    /// Fewest replicas of the pool Deployment.
    #[arg(long, default_value_t = 0)]
    pool_min_replicas: u32,
    /// Most replicas of the pool Deployment.
    #[arg(long, default_value_t = 20)]
    pool_max_replicas: u32,
    /// Bytes of file storage JetStream may use (e.g. 10Gi), reported as
    /// sluice_jetstream_storage_bound_bytes for the storage alert when the
    /// NATS account sets no limit of its own. Unset: not reported.
    #[arg(long, value_name = "BYTES")]
    jetstream_storage_bound: Option<ByteSize>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = "127.0.0.1:9092")]
    admin_listen: SocketAddr,
    /// Elect one leader among replicas on a Lease (turn off only when one
    /// replica runs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader-election Lease. Default: the operator's own
    /// (its ServiceAccount's in a pod, else the kubeconfig context's).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long a dead leader's Lease holds before a standby takes over.
    #[arg(long, default_value_t = sluice_api::Duration(DEFAULT_LEASE_DURATION))]
    lease_duration: sluice_api::Duration,
    /// How long a module in the store may go unreferenced by any registry
    /// entry (replaced, or its Function deleted) before it is deleted.
    #[arg(long, env = "SLUICE_MODULE_GC_AFTER", default_value_t = sluice_api::Duration(sluice_operator::module_gc::DEFAULT_AFTER))]
    module_gc_after: sluice_api::Duration,
    /// How long a new pool Function's Ready waits, while the pool has a
    /// ready runtime, for a pool runtime to compile its component ahead
    /// (seen in sluice-artifacts), so that its first request does not wait
    /// for the compile; 0s never waits. Give it 0s when the pool runtimes
    /// run with --precompile-registered=false or --shared-artifacts=false.
    #[arg(long, env = "SLUICE_COMPILE_AHEAD_WAIT", default_value_t = sluice_api::Duration(sluice_operator::compiled::DEFAULT_WAIT))]
    compile_ahead_wait: sluice_api::Duration,
    /// The largest limits.memory the runtimes take (their
    /// --max-instance-memory): a Function asking for more is Ready=False.
    /// Default: not checked by the operator (the runtimes still refuse it).
    #[arg(long, env = "SLUICE_MAX_INSTANCE_MEMORY")]
    max_instance_memory: Option<ByteSize>,
    /// Largest module accepted from a URL, an OCI registry or a ConfigMap.
    #[arg(long, default_value_t = ByteSize(DEFAULT_MAX_MODULE_BYTES as u64))]
    max_module_size: ByteSize,
    /// A registry (host:port) reached over plain HTTP rather than HTTPS,
    /// e.g. one on loopback for tests. Repeatable. The admin named it, so
    /// the egress guard lets pulls reach it whatever its address (not
    /// where it redirects to).
    #[arg(long, value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// The NATS layout's settings; the operator owns the layout and
    /// brings it to them at start.
    #[command(flatten)]
    layout: LayoutArgs,
    /// Serve Functions in this namespace only; repeat the flag, or
    /// separate namespaces with commas. The operator then needs Roles in
    /// those namespaces only (the chart's watchNamespaces). Default: every
    /// namespace.
    #[arg(
        long,
        env = "SLUICE_WATCH_NAMESPACE",
        value_name = "NAMESPACE",
        value_delimiter = ','
    )]
    watch_namespace: Vec<String>,
    /// On shared clusters: every trigger subject of a Function in
    /// namespace NS must start with this prefix, `{namespace}` standing
    /// for NS (e.g. `{namespace}.`); a Function that breaks it is
    /// Ready=False, reason TriggerSubjectOutOfScope. Give the gateways the
    /// same. Default: unset (any subject the CRD admits).
    #[arg(long, env = "SLUICE_TRIGGER_SUBJECT_PREFIX", value_name = "TEMPLATE")]
    trigger_subject_prefix: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_serve::exit_code(start().await)
}

/// The binary; its error is reported by [`sluice_serve::exit_code`].
async fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!(
            "{}",
            sluice_api::crd_yaml().context("cannot render the CRD")?
        );
        return Ok(());
    }
    let args = cli.run;
    let telemetry = Telemetry::init("sluice-operator", args.log_json)?;
    let result = run(args).await;
    telemetry.shutdown().await;
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    let nats = args
        .nats
        .context("--nats (or SLUICE_NATS_URL) is required: the NATS server the operator registers functions on")?;
    let nats_security = args.nats_security.security()?;
    let client = kube::Client::try_default().await.context(
        "cannot set up a Kubernetes client (in a pod, or with KUBECONFIG / ~/.kube/config)",
    )?;
    let identity = identity();
    let pool = match &args.pool_deployment {
        None => None,
        Some(pool) => {
            let (namespace, name) = pool
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
                .with_context(|| format!("--pool-deployment {pool:?}: expected namespace/name"))?;
            anyhow::ensure!(
                args.pool_min_replicas <= args.pool_max_replicas,
                "--pool-min-replicas ({}) exceeds --pool-max-replicas ({})",
                args.pool_min_replicas,
                args.pool_max_replicas
            );
            Some(PoolTarget {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                min_replicas: args.pool_min_replicas,
                max_replicas: args.pool_max_replicas,
            })
        }
    };
    anyhow::ensure!(
        !args.autoscale_interval.0.is_zero(),
        "--autoscale-interval must be above zero"
    );
    let config = OperatorConfig {
        settings: Settings {
            gateway_url: args.gateway_url,
            max_instance_memory: args.max_instance_memory,
            runtime: RuntimeTemplate {
                image: args.runtime_image,
                nats_url: args.runtime_nats_url.unwrap_or_else(|| nats.clone()),
                cpu_request: args.runtime_cpu_request,
                memory_request: args.runtime_memory_request,
                memory_limit: args.runtime_memory_limit,
                egress: EgressPolicy {
                    allow: args.runtime_egress_allow.clone(),
                    deny: args.runtime_egress_deny.clone(),
                },
                nats_secrets: RuntimeNatsSecrets {
                    auth: args.runtime_nats_auth.zip(args.runtime_nats_secret),
                    ca: args.runtime_nats_ca_secret,
                    client_cert: args.runtime_nats_client_cert_secret,
                    tls_required: args.runtime_nats_tls_required,
                },
            },
            autoscaling: AutoscalerConfig {
                interval: args.autoscale_interval.0,
                pool,
            },
            scope: sluice_operator::scope::WatchScope::new(args.watch_namespace),
            module_gc: sluice_operator::module_gc::ModuleGc::new(args.module_gc_after.0),
            compile_ahead_wait: args.compile_ahead_wait.0,
            trigger_scope: args
                .trigger_subject_prefix
                .as_deref()
                .map(sluice_api::TriggerScope::new)
                .transpose()
                .context("--trigger-subject-prefix")?,
        },
        nats_url: nats.clone(),
        nats_security,
        admin_listen: args.admin_listen,
        jetstream_storage_bound: args.jetstream_storage_bound.map(|b| b.0),
        leader_election: args.leader_elect.then(|| LeaderElection {
            namespace: args
                .lease_namespace
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            lease_name: "sluice-operator".into(),
            duration: args.lease_duration.0.max(Duration::from_secs(2)),
        }),
        fetcher: FetcherConfig {
            max_module_bytes: usize::try_from(args.max_module_size.0)
                .context("--max-module-size is too large")?,
            insecure_registries: args.insecure_registry,
            // A Function's URL reaches what its runtimes may: the same
            // lists.
            egress: std::sync::Arc::new(EgressPolicy {
                allow: args.runtime_egress_allow,
                deny: args.runtime_egress_deny,
            }),
        },
        identity: identity.clone(),
        layout: args.layout.config(),
    };
    tracing::info!(nats = %sluice_nats::redacted(&nats), %identity, admin = %config.admin_listen, "operator starting");
    sluice_operator::run(client, config, shutdown_signal())
        .await
        .context("the operator stopped")?;
    tracing::info!("stopped");
    Ok(())
}

/// This replica's name in Events and the Lease: the pod's name, or the
/// host's with the process id.
fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sluice-operator".into());
    format!("{host}-{}", std::process::id())
}
