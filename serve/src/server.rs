//! Serving HTTP/1.1 connections until shutdown, then draining them.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::refusal::{InFlight, InFlightGuard, Refusal, Refusing};
use crate::tls::{HANDSHAKE_TIMEOUT, ServerTls};

/// Longest a client may take to send a request's headers; without it an
/// idle or trickling connection is held forever.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Most header fields a request may have; more gets 431. It is hyper's
/// default, set here so that the limit is named and documented.
pub const MAX_HEADER_FIELDS: usize = 100;

/// Largest request head (request line and header section) read; larger
/// gets 431. hyper's default read buffer (8 KiB + 400 KiB), set here so
/// that the limit is named and documented.
pub const MAX_REQUEST_HEAD: usize = 8192 + 4096 * 100;

/// Serves `handler` on `listener` until `shutdown` resolves, then waits
/// for open connections to finish their requests. A request whose head
/// hyper cannot parse (over [`MAX_HEADER_FIELDS`] or [`MAX_REQUEST_HEAD`],
/// or not HTTP/1.1) gets `refusal`'s answer, when it has one, instead of
/// hyper's empty one.
///
/// With `tls`, every connection is TLS (TCP, then TLS, then the refusal
/// wrapper, then HTTP/1.1); the certificate files are polled for changes
/// while serving (see [`crate::tls`]). A failed handshake is logged at
/// debug and ends that connection only; one not done within
/// [`HANDSHAKE_TIMEOUT`] is dropped.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<ServerTls>,
    handler: Arc<H>,
    refusal: Option<Refusal>,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let _reloading = tls.as_ref().map(ServerTls::watch);
    // Handshakes under way are abandoned when serving stops.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let handler = handler.clone();
        let refusal = refusal.clone();
        match &tls {
            None => {
                tokio::spawn(connection(stream, handler, refusal, watcher));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let stream = tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
                                return;
                            }
                        },
                        _ = stopped.wait_for(|stopped| *stopped) => return,
                    };
                    connection(stream, handler, refusal, watcher).await;
                });
            }
        }
    }
    let _ = stopping.send(true);
    graceful.shutdown().await;
}

/// Serves HTTP/1.1 on one connection until it closes, or, once serving
/// stops, until its open request is answered.
async fn connection<S, H, F>(stream: S, handler: Arc<H>, refusal: Option<Refusal>, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let in_flight = InFlight::default();
    let requests = in_flight.clone();
    let service = service_fn(move |request| {
        let guard = requests.enter();
        let response = handler(request);
        async move {
            let response = response.await.map(|body| Tracked {
                body,
                _guard: guard,
            });
            Ok::<_, Infallible>(response)
        }
    });
    let stream = match refusal {
        Some(refusal) => Either::Refusing(Refusing::new(stream, in_flight, refusal)),
        None => Either::Plain(stream),
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADER_FIELDS)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A response body that counts its request as in flight until hyper drops
/// it (see [`InFlight`]).
struct Tracked {
    body: Full<Bytes>,
    _guard: InFlightGuard,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection with or without [`Refusing`], as one type.
enum Either<S> {
    Plain(S),
    Refusing(Refusing<S>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Either<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Self::Refusing(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Either<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Self::Refusing(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Refusing(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Refusing(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Self::Refusing(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Self::Refusing(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A task that runs until told to stop, then finishes what it holds.
#[derive(Debug)]
pub struct Service {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Spawns `run`, which receives the stop signal.
    pub fn spawn<F>(run: impl FnOnce(tokio::sync::oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        Self {
            shutdown: Some(shutdown),
            task: tokio::spawn(run(stop)),
        }
    }

    /// Tells the task to stop and waits until it has.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the task ends (it ends only by `shutdown`).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}
