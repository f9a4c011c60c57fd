//! Serving HTTP/1.1 connections until shutdown, then draining them.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// At most this many connections open at once; one accepted past it gets
/// `answer` (a whole HTTP/1.1 response, e.g. 503 with `Retry-After`) and
/// is closed without reading it: each open connection may buffer up to
/// [`MAX_REQUEST_HEAD`] of request head, so their count bounds memory.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    pub max: usize,
    pub answer: Bytes,
    /// Connections open now.
    pub open: Gauge,
    /// Connections refused at the limit.
    pub refused: Counter,
}

impl ConnectionLimit {
    /// A limit of `max` connections answering `status`, `headers` and
    /// `body` past it.
    pub fn new(max: usize, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        Self {
            max,
            answer: raw_response(status, headers, body),
            open: Gauge::default(),
            refused: Counter::default(),
        }
    }
}

/// Longest a refused connection is given to take its answer.
const REFUSAL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A response as HTTP/1.1 bytes, closing the connection.
fn raw_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Bytes {
    let mut raw = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in headers {
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    raw.extend_from_slice(body);
    Bytes::from(raw)
}

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
///
/// With `limit`, connections past its `max` get its answer and are closed.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    tls: Option<ServerTls>,
    handler: Arc<H>,
    refusal: Option<Refusal>,
    limit: Option<ConnectionLimit>,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Unpin + 'static,
{
    let graceful = GracefulShutdown::new();
    let slots = limit.as_ref().map(|l| Arc::new(Semaphore::new(l.max)));
    // Refused connections being answered: bounded too, past it they are
    // closed unanswered.
    let refusing = Arc::new(Semaphore::new(
        limit.as_ref().map_or(0, |l| (l.max / 8).max(16)),
    ));
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
        let slot = match (&limit, &slots) {
            (Some(limit), Some(slots)) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(OpenConnection::new(permit, limit.open.clone())),
                Err(_) => {
                    limit.refused.inc();
                    refuse(stream, tls.as_ref(), limit.answer.clone(), &refusing);
                    continue;
                }
            },
            _ => None,
        };
        let watcher = graceful.watcher();
        let handler = handler.clone();
        let refusal = refusal.clone();
        match &tls {
            None => {
                tokio::spawn(async move {
                    connection(stream, handler, refusal, watcher).await;
                    drop(slot);
                });
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
                    drop(slot);
                });
            }
        }
    }
    let _ = stopping.send(true);
    graceful.shutdown().await;
}

/// A connection counted against the limit until dropped.
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl OpenConnection {
    fn new(permit: OwnedSemaphorePermit, open: Gauge) -> Self {
        open.inc();
        Self {
            _permit: permit,
            open,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Answers a connection past the limit with `answer` and closes it,
/// without reading its request; closes it unanswered when too many are
/// being answered already.
fn refuse(stream: TcpStream, tls: Option<&ServerTls>, answer: Bytes, refusing: &Arc<Semaphore>) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    let acceptor = tls.map(ServerTls::acceptor);
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async move {
            match acceptor {
                None => write_and_close(stream, &answer).await,
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        write_and_close(stream, &answer).await;
                    }
                }
            }
        })
        .await;
    });
}

/// Writes `answer`, then reads (and drops) a little of what the client
/// sends until it closes: closing with its request unread would reset the
/// connection, and the client might lose the answer.
async fn write_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: &[u8]) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if stream.write_all(answer).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut buffer = [0u8; 4096];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Most bytes read from a refused connection before it is closed.
const REFUSAL_DRAIN: usize = 64 << 10;

/// Serves HTTP/1.1 on one connection until it closes, or, once serving
/// stops, until its open request is answered.
async fn connection<S, H, F, B>(
    stream: S,
    handler: Arc<H>,
    refusal: Option<Refusal>,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Unpin + 'static,
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
struct Tracked<B> {
    body: B,
    _guard: InFlightGuard,
}

impl<B: hyper::body::Body<Data = Bytes, Error = Infallible> + Unpin> hyper::body::Body
    for Tracked<B>
{
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
