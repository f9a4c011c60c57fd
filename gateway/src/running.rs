//! Serving a [`Gateway`] and its admin endpoints until told to stop; the
//! same for local and NATS mode.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sluice_serve::tls::TlsError;
use sluice_serve::{Admin, ServerTls, Service, TlsFiles, serve};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::error::GatewayError;
use crate::http::Gateway;

/// Default address for invocations (`--listen`).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// Default address for `/healthz`, `/readyz` and `/metrics`
/// (`--admin-listen`).
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// TLS of the two listeners, read at start-up: `None` serves plain HTTP.
#[derive(Debug, Clone, Default)]
pub struct ListenerTls {
    /// The invocation listener's.
    pub gateway: Option<ServerTls>,
    /// The admin listener's.
    pub admin: Option<ServerTls>,
}

impl ListenerTls {
    /// Reads and checks the certificates and keys; the error names the
    /// file at fault.
    pub fn load(gateway: Option<&TlsFiles>, admin: Option<&TlsFiles>) -> Result<Self, TlsError> {
        let load = |files: Option<&TlsFiles>| files.cloned().map(ServerTls::load).transpose();
        Ok(Self {
            gateway: load(gateway)?,
            admin: load(admin)?,
        })
    }
}

/// How long a stopping gateway waits, after the last request, for its
/// companions to finish and for the invocations only it holds (in local
/// mode): below Kubernetes' default 30s termination grace period.
pub const DRAIN_GRACE: Duration = Duration::from_secs(25);

/// The admin endpoints, served before the gateway is: `/healthz` answers
/// (and `/readyz` says not ready) while NATS mode still waits for its
/// server.
#[derive(Debug)]
pub struct AdminEndpoint {
    pub addr: SocketAddr,
    admin: Arc<Admin>,
    service: Service,
}

impl AdminEndpoint {
    /// Binds `listen` and serves `admin` on it, over TLS when `tls` is
    /// given.
    pub async fn start(
        admin: Arc<Admin>,
        listen: SocketAddr,
        tls: Option<ServerTls>,
    ) -> Result<Self, ListenError> {
        let (listener, addr) = bind(listen).await?;
        let service = admin.clone().spawn_with_tls(listener, tls);
        Ok(Self {
            addr,
            admin,
            service,
        })
    }
}

/// A gateway serving requests.
#[derive(Debug)]
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    gateway: Arc<Gateway>,
    admin: Arc<Admin>,
    service: Service,
    /// Told to stop when the gateway stops taking requests.
    stop_companions: CancellationToken,
    companions: TaskTracker,
    /// Stops the companions of a gateway dropped without `shutdown`.
    _companions_guard: DropGuard,
}

impl RunningGateway {
    /// Binds both listeners and starts serving, each over TLS when `tls`
    /// says so.
    pub async fn start(
        gateway: Arc<Gateway>,
        admin: Arc<Admin>,
        listen: SocketAddr,
        admin_listen: SocketAddr,
        tls: ListenerTls,
    ) -> Result<Self, ListenError> {
        let admin = AdminEndpoint::start(admin, admin_listen, tls.admin).await?;
        Self::beside(gateway, admin, listen, tls.gateway).await
    }

    /// Binds `listen` and serves `gateway` on it (over TLS when `tls` is
    /// given) beside the admin endpoints already served; stopping the
    /// gateway stops them too.
    pub async fn beside(
        gateway: Arc<Gateway>,
        admin: AdminEndpoint,
        listen: SocketAddr,
        tls: Option<ServerTls>,
    ) -> Result<Self, ListenError> {
        let (listener, addr) = bind(listen).await?;
        let handler = gateway.clone();
        let connection_limit = gateway.connection_limit();
        let AdminEndpoint {
            addr: admin_addr,
            admin,
            service: admin_service,
        } = admin;
        let stop_companions = CancellationToken::new();
        let service = Service::spawn(|stop| async move {
            serve(
                listener,
                tls,
                Arc::new(move |request| {
                    let handler = handler.clone();
                    async move { handler.handle(request).await }
                }),
                Some(Arc::new(|status| {
                    GatewayError::unparsed_request(status).map(|e| e.into_response(None))
                })),
                connection_limit,
                async {
                    let _ = stop.await;
                },
            )
            .await;
            admin_service.shutdown().await;
        });
        Ok(Self {
            addr,
            admin_addr,
            gateway,
            admin,
            service,
            _companions_guard: stop_companions.clone().drop_guard(),
            stop_companions,
            companions: TaskTracker::new(),
        })
    }

    /// Runs `companion` (e.g. the event bridge) beside the server. It gets
    /// a token cancelled when the gateway stops taking requests, and
    /// [`RunningGateway::shutdown`] waits for it to return.
    pub fn spawn_companion<F>(&self, companion: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.companions
            .spawn(companion(self.stop_companions.clone()));
    }

    /// Stops taking requests and events, waits for open requests, then,
    /// up to [`DRAIN_GRACE`], for the companions and for the accepted
    /// invocations only this process holds.
    pub async fn shutdown(self) {
        // Load balancers stop sending new requests here meanwhile.
        self.admin.set_ready(false);
        self.stop_companions.cancel();
        self.gateway.stop_following();
        self.service.shutdown().await;
        let deadline = Instant::now() + DRAIN_GRACE;
        self.companions.close();
        if tokio::time::timeout_at(deadline, self.companions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                busy = self.companions.len(),
                "event consumers still busy after {DRAIN_GRACE:?} are stopped"
            );
        }
        let abandoned = self
            .gateway
            .drain(deadline.saturating_duration_since(Instant::now()))
            .await;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "accepted invocations or their callbacks unfinished after {DRAIN_GRACE:?} are given up"
            );
        }
    }

    /// Waits until the gateway stops (it stops only by `shutdown`).
    pub async fn wait(&mut self) {
        self.service.wait().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ListenError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ListenError { addr, source })?;
    Ok((listener, bound))
}
