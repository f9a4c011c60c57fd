//! The egress guard for registry pulls. oci-client builds its own HTTP
//! client and takes neither a resolver nor a redirect policy, so every
//! request of a pull (the manifest, a token realm the registry names, the
//! blob, each redirect, a descriptor's foreign `urls`) goes through a
//! forward proxy on loopback that lives as long as the pull: it resolves
//! each destination with the egress guard and connects only to addresses
//! the policy allows, or to a registry the operator's admin named
//! (`--insecure-registry`). What a refused destination would have answered
//! is never asked, so it cannot reach a Function's status.
//!
//! The proxy takes anyone on loopback, that is the operator's own pod: it
//! connects nowhere the operator could not connect to itself.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sluice_api::egress::EgressPolicy;
use sluice_serve::egress::{EgressError, resolve};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::download::{CONNECT_TIMEOUT, DOWNLOAD_TIMEOUT};

type Body = Either<Full<Bytes>, Incoming>;

/// A running proxy; dropping it stops it and every connection through it.
pub(crate) struct GuardProxy {
    url: String,
    guard: Arc<Guard>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for GuardProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection and tunnel it spawned.
        self.server.abort();
    }
}

/// What a proxy may connect to, and the first connection it did not make.
struct Guard {
    egress: Arc<EgressPolicy>,
    /// Registries (`host` or `host:port` as written in references) the
    /// admin named: connected to whatever they resolve to.
    named: Vec<String>,
    failure: Mutex<Option<Unreached>>,
}

/// Why the proxy did not connect to a destination.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unreached {
    /// The egress guard refused it.
    #[error(transparent)]
    Refused(EgressError),
    /// The lookup or the connection failed: the network's trouble.
    #[error("cannot connect to {destination}: {source}")]
    Failed {
        destination: String,
        #[source]
        source: io::Error,
    },
}

impl GuardProxy {
    /// Starts a proxy on a free loopback port that lets connections
    /// through to what `egress` allows and to the registries in `named`.
    ///
    /// # Errors
    ///
    /// Binding the loopback port failed.
    pub(crate) async fn start(egress: Arc<EgressPolicy>, named: Vec<String>) -> io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let guard = Arc::new(Guard {
            egress,
            named,
            failure: Mutex::new(None),
        });
        let server = tokio::spawn(serve(listener, guard.clone()));
        Ok(Self { url, guard, server })
    }

    /// `http://127.0.0.1:<port>`, for oci-client's `http_proxy` and
    /// `https_proxy`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Why the proxy did not connect somewhere, the first time it did not:
    /// why a pull that failed failed.
    pub(crate) fn take_failure(&self) -> Option<Unreached> {
        self.guard
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

async fn serve(listener: TcpListener, guard: Arc<Guard>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let guard = guard.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle(guard.clone(), request)
                    });
                    // A connection that fails ends the pull's request,
                    // which reports it; nothing to add here.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers one request to the proxy: `CONNECT host:port` (https) opens a
/// tunnel, an absolute-form request (plain http) is forwarded.
async fn handle(
    guard: Arc<Guard>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some((host, port)) = destination(&request) else {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            "the proxy takes CONNECT host:port or an absolute http URL".to_owned(),
        ));
    };
    let stream = match guard.connect(&host, port).await {
        Ok(stream) => stream,
        Err(unreached) => return Ok(guard.record(unreached)),
    };
    if request.method() == Method::CONNECT {
        // The tunnel carries TLS, which the client checks against the
        // registry's name; it lasts no longer than a pull may.
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(request).await {
                let mut client = TokioIo::new(upgraded);
                let mut server = stream;
                let _ = tokio::time::timeout(
                    DOWNLOAD_TIMEOUT,
                    tokio::io::copy_bidirectional(&mut client, &mut server),
                )
                .await;
            }
        });
        return Ok(Response::new(Either::Left(Full::default())));
    }
    let destination = format!("{host}:{port}");
    Ok(forward(request, stream).await.unwrap_or_else(|e| {
        guard.record(Unreached::Failed {
            destination,
            source: io::Error::other(e),
        })
    }))
}

/// Sends a plain-http request on `stream` in origin form, without the
/// proxy's own headers.
async fn forward(
    request: Request<Incoming>,
    stream: TcpStream,
) -> Result<Response<Body>, hyper::Error> {
    let (mut parts, body) = request.into_parts();
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".parse(), |p| p.as_str().parse())
        .unwrap_or_default();
    parts.headers.remove(http::header::PROXY_AUTHORIZATION);
    parts.headers.remove("proxy-connection");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(tokio::time::timeout(DOWNLOAD_TIMEOUT, connection));
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    Ok(response.map(Either::Right))
}

/// The host and port a proxied request is for.
fn destination(request: &Request<Incoming>) -> Option<(String, u16)> {
    let uri = request.uri();
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ if request.method() == Method::CONNECT => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    Some((
        authority.host().to_owned(),
        authority.port_u16().unwrap_or(default_port),
    ))
}

fn answer(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    response
}

impl Guard {
    /// Keeps `unreached` if it is the first, and answers the client with
    /// it: 403 for a refusal, 502 for the network's trouble.
    fn record(&self, unreached: Unreached) -> Response<Body> {
        let status = match unreached {
            Unreached::Refused(_) => StatusCode::FORBIDDEN,
            Unreached::Failed { .. } => StatusCode::BAD_GATEWAY,
        };
        let text = unreached.to_string();
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(unreached);
        answer(status, text)
    }

    /// Whether the admin named `host:port` as a registry (`host` alone
    /// stands for its scheme's default port).
    fn is_named(&self, host: &str, port: u16) -> bool {
        let with_port = format!("{host}:{port}");
        self.named
            .iter()
            .any(|named| *named == with_port || (named == host && matches!(port, 80 | 443)))
    }

    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, Unreached> {
        let failed = |source| Unreached::Failed {
            destination: format!("{host}:{port}"),
            source,
        };
        let connecting = async {
            if self.is_named(host, port) {
                // The admin named it: whatever it resolves to.
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                return TcpStream::connect((bare, port)).await.map_err(failed);
            }
            let addrs = resolve(host, port, &self.egress)
                .await
                .map_err(|e| match e {
                    e if e.is_refusal() => Unreached::Refused(e),
                    e => failed(io::Error::other(e)),
                })?;
            TcpStream::connect(&addrs[..]).await.map_err(failed)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .unwrap_or_else(|_| {
                Err(failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
                )))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_registry_is_matched_with_its_port_or_its_schemes_default() {
        let guard = Guard {
            egress: Arc::default(),
            named: vec!["127.0.0.1:5000".into(), "registry.internal".into()],
            failure: Mutex::new(None),
        };
        for (host, port, named) in [
            ("127.0.0.1", 5000, true),
            ("127.0.0.1", 5001, false),
            ("registry.internal", 443, true),
            ("registry.internal", 80, true),
            ("registry.internal", 5000, false),
            ("127.0.0.2", 5000, false),
        ] {
            assert_eq!(guard.is_named(host, port), named, "{host}:{port}");
        }
    }
}
