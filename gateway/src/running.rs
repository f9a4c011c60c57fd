//! Serving a [`Gateway`] and its admin endpoints until told to stop; the
//! same for local and NATS mode.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_runtime::admin::Admin;
use sluice_runtime::server::{Service, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::http::Gateway;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A gateway serving requests.
#[derive(Debug)]
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    service: Service,
}

impl RunningGateway {
    /// Binds both listeners and starts serving.
    pub async fn start(
        gateway: Arc<Gateway>,
        admin: Arc<Admin>,
        listen: SocketAddr,
        admin_listen: SocketAddr,
    ) -> Result<Self, ListenError> {
        let (listener, addr) = bind(listen).await?;
        let (admin_listener, admin_addr) = bind(admin_listen).await?;
        let service = Service::spawn(|stop| async move {
            let (stop_admin, admin_stopped) = oneshot::channel::<()>();
            let admin_task = tokio::spawn(admin.serve(admin_listener, async {
                let _ = admin_stopped.await;
            }));
            serve(
                listener,
                Arc::new(move |request| {
                    let gateway = gateway.clone();
                    async move { gateway.handle(request).await }
                }),
                async {
                    let _ = stop.await;
                },
            )
            .await;
            let _ = stop_admin.send(());
            let _ = admin_task.await;
        });
        Ok(Self {
            addr,
            admin_addr,
            service,
        })
    }

    /// Stops accepting requests and waits for open ones to finish.
    pub async fn shutdown(self) {
        self.service.shutdown().await;
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
