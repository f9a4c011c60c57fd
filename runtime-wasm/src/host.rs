//! Per-invocation host state: WASI and wasi-http contexts, the memory
//! limiter, the outbound-HTTP policy and the log sink.

use sluice_serve::sync;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_api::InvocationId;
use sluice_api::egress::EgressPolicy;
use sluice_api::logs::{Captured, LINE_OVERHEAD, LogLine, LogStream};
use sluice_api::names::FunctionRef;
use sluice_serve::egress::{EgressError, check_literal, redact_query};
use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use sluice_serve::egress::{GuardedConnector, guarded_connector};

/// The `T` of every `Store<T>`: one per invocation.
pub(crate) struct Host {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) outbound: OutboundPolicy,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Caps the linear memory of an instance, all its memories together (a
/// component may hold several), and remembers whether the cap was hit, so
/// that the failure can be named.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub(crate) limit: usize,
    /// Bytes of linear memory the instance holds so far.
    pub(crate) used: usize,
    pub(crate) refused: bool,
    /// Where the most it held is kept: outside the store, so that an
    /// attempt cut short (timeout, cancel) still reports it.
    pub(crate) meter: Arc<Meter>,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: usize, meter: Arc<Meter>) -> Self {
        Self {
            limit,
            used: 0,
            refused: false,
            meter,
        }
    }
}

/// What one attempt's guest used so far, shared between its store (the
/// epoch callback, the memory limiter) and the code awaiting it, which may
/// drop the store before it ends.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// Epoch ticks that found the guest executing.
    pub(crate) ticks: AtomicU64,
    /// The most linear memory held at once, bytes.
    pub(crate) peak_memory: AtomicU64,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.used - current.min(self.used)).saturating_add(desired);
        let allowed = total <= self.limit;
        if allowed {
            self.used = total;
            self.meter
                .peak_memory
                .fetch_max(total as u64, Ordering::Relaxed);
        }
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Outbound HTTP is refused unless the request's origin is listed in
/// `spec.allowedOutboundHosts`, and then goes through the egress guard as
/// callbacks do: an origin listed by name because whoever controls the
/// name's DNS chooses the addresses (a public name may resolve to
/// 169.254.169.254), one listed by IP address because the Function's
/// author is a tenant, who may not reach the cloud's metadata service, the
/// API server's or NATS's ClusterIP unless the operators allow the range.
pub(crate) struct OutboundPolicy {
    pub(crate) allowed: Arc<[String]>,
    pub(crate) egress: Arc<EgressPolicy>,
}

impl OutboundPolicy {
    fn allows(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return false;
        };
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return false,
        };
        let port = authority.port_u16().unwrap_or(default_port);
        self.allowed.iter().any(|origin| {
            let Ok(allowed) = origin.parse::<http::Uri>() else {
                return false;
            };
            let allowed_port = allowed.port_u16().unwrap_or(match allowed.scheme_str() {
                Some("http") => 80,
                _ => 443,
            });
            allowed.scheme_str() == Some(scheme)
                && allowed
                    .host()
                    .is_some_and(|h| h.eq_ignore_ascii_case(authority.host()))
                && allowed_port == port
        })
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        // The guarded client's executor drives the connection: nothing of
        // wasmtime's own sender is needed.
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        if !self.allows(request.uri()) {
            tracing::info!(uri = %redact_query(request.uri()), "outbound request denied: origin not in allowedOutboundHosts");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        if let Some(Err(refused)) = request
            .uri()
            .host()
            .and_then(|host| check_literal(host, &self.egress))
        {
            tracing::info!(uri = %redact_query(request.uri()), reason = %refused, "outbound request denied by the egress guard");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(send_guarded(self.egress.clone(), request, options))
    }
}

/// wasmtime-wasi-http's default for each of its timeouts.
const DEFAULT_OUTBOUND_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends a request to a host named by DNS name, connecting only to
/// addresses the egress guard allows. wasmtime-wasi-http's default sender
/// cannot be used here: it resolves and connects in one step, with no
/// place to check the addresses. A fresh client per request, as that
/// sender connects afresh: no connection is shared between invocations (or
/// tenants). Unlike it, https trusts the same roots as callbacks (the
/// system's, else Mozilla's), and a stalled body is cut by the
/// invocation's deadline rather than a between-bytes timeout.
async fn send_guarded(
    egress: Arc<EgressPolicy>,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
> {
    let connect = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(DEFAULT_OUTBOUND_TIMEOUT);
    let first_byte = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(DEFAULT_OUTBOUND_TIMEOUT);
    let client: Client<GuardedConnector, WasiBody> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(guarded_connector(egress, Some(connect)));
    let uri = request.uri().clone();
    let response =
        tokio::time::timeout(connect.saturating_add(first_byte), client.request(request))
            .await
            .map_err(|_| wasmtime_wasi_http::Error::ConnectionReadTimeout)?
            .map_err(|e| outbound_error(&uri, &e))?;
    let response =
        response.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
    // The client's executor drives the connection: nothing is left to await.
    Ok((response, Box::new(async { Ok(()) })))
}

/// The wasi:http error a guest sees for a failed guarded request.
fn outbound_error(
    uri: &http::Uri,
    error: &hyper_util::client::legacy::Error,
) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error;
    match EgressError::find(error) {
        Some(refused) if refused.is_refusal() => {
            tracing::info!(uri = %redact_query(uri), reason = %refused, "outbound request denied by the egress guard");
            Error::DestinationIpProhibited
        }
        Some(EgressError::NoAddress { .. }) => Error::DestinationNotFound,
        Some(lookup) => Error::DnsError {
            rcode: Some(lookup.to_string()),
            info_code: None,
        },
        None if error.is_connect() => Error::ConnectionRefused,
        None => Error::HttpProtocolError,
    }
}

/// Receives a guest's stdout or stderr and logs it line by line, tagged
/// with the invocation, and keeps the lines (both streams, in order) for
/// the attempt's stored log: at most `budget` bytes per stream, each line
/// costing [`LINE_OVERHEAD`] besides its text; the rest is dropped and
/// counted.
#[derive(Clone)]
pub(crate) struct LogSink {
    stream: LogStream,
    capture: Arc<Mutex<Capture>>,
}

/// What both sinks of one attempt share.
struct Capture {
    function: FunctionRef,
    invocation: InvocationId,
    /// Stdout's, then stderr's.
    open: [OpenLine; 2],
    captured: Captured,
}

/// The line a stream is writing, and what is left of its budget.
struct OpenLine {
    /// Its kept text so far.
    pending: Vec<u8>,
    /// Whether a line is under way (its overhead paid).
    started: bool,
    budget: usize,
    warned: bool,
}

impl LogSink {
    /// Stdout's and stderr's sinks of one attempt.
    pub(crate) fn pair(
        function: FunctionRef,
        invocation: InvocationId,
        budget: usize,
    ) -> [Self; 2] {
        let open = || OpenLine {
            pending: Vec::new(),
            started: false,
            budget,
            warned: false,
        };
        let capture = Arc::new(Mutex::new(Capture {
            function,
            invocation,
            open: [open(), open()],
            captured: Captured::default(),
        }));
        [LogStream::Stdout, LogStream::Stderr].map(|stream| Self {
            stream,
            capture: capture.clone(),
        })
    }

    fn write(&self, bytes: &[u8]) {
        sync::lock(&self.capture).write(self.stream, bytes);
    }

    /// Ends the lines both streams left open, and hands over what was
    /// kept (the sinks keep nothing after).
    pub(crate) fn finish(&self) -> Captured {
        let mut capture = sync::lock(&self.capture);
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            if capture.open[index(stream)].started {
                capture.end_line(stream);
            }
        }
        std::mem::take(&mut capture.captured)
    }
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

fn index(stream: LogStream) -> usize {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

impl Capture {
    fn write(&mut self, stream: LogStream, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let end = bytes
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |p| p + 1);
            let (segment, rest) = bytes.split_at(end);
            bytes = rest;
            let newline = segment.last() == Some(&b'\n');
            let text = if newline {
                &segment[..segment.len() - 1]
            } else {
                segment
            };
            let open = &mut self.open[index(stream)];
            if !open.started {
                if open.budget < LINE_OVERHEAD {
                    // The newline too: a dropped empty line still counts.
                    self.drop_bytes(stream, segment.len());
                    continue;
                }
                open.budget -= LINE_OVERHEAD;
                open.started = true;
            }
            let keep = text.len().min(open.budget);
            open.budget -= keep;
            open.pending.extend_from_slice(&text[..keep]);
            self.drop_bytes(stream, text.len() - keep);
            if newline {
                self.end_line(stream);
            }
        }
    }

    fn drop_bytes(&mut self, stream: LogStream, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.captured.dropped.add(stream, bytes as u64);
        let open = &mut self.open[index(stream)];
        if !open.warned {
            open.warned = true;
            tracing::warn!(
                function = %self.function, invocation = %self.invocation, stream = stream.as_str(),
                "guest output over the per-invocation budget; the rest is dropped"
            );
        }
    }

    fn end_line(&mut self, stream: LogStream) {
        let open = &mut self.open[index(stream)];
        open.started = false;
        let line = String::from_utf8_lossy(&std::mem::take(&mut open.pending)).into_owned();
        tracing::info!(
            target: "sluice::guest",
            function = %self.function,
            invocation = %self.invocation,
            stream = stream.as_str(),
            "{line}"
        );
        self.captured.lines.push(LogLine {
            time: SystemTime::now(),
            stream,
            line,
        });
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        LogSink::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl AsyncWrite for LogSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        LogSink::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_covers_every_memory_of_the_instance() {
        let mut limiter = MemoryLimiter::new(100, Arc::default());
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(
            !limiter.memory_growing(0, 60, None).unwrap(),
            "a second memory"
        );
        assert!(limiter.refused);
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(!limiter.memory_growing(60, 61, None).unwrap());
        assert_eq!(limiter.used, 100);
        assert_eq!(
            limiter.meter.peak_memory.load(Ordering::Relaxed),
            100,
            "the peak is what was held at once, refusals aside"
        );
    }

    fn captured(budget: usize, writes: &[(LogStream, &[u8])]) -> Captured {
        let [stdout, stderr] =
            LogSink::pair("default/f".parse().unwrap(), InvocationId::random(), budget);
        for (stream, bytes) in writes {
            match stream {
                LogStream::Stdout => stdout.write(bytes),
                LogStream::Stderr => stderr.write(bytes),
            }
        }
        stdout.finish()
    }

    fn lines(c: &Captured) -> Vec<(LogStream, &str)> {
        c.lines
            .iter()
            .map(|l| (l.stream, l.line.as_str()))
            .collect()
    }

    #[test]
    fn guest_output_is_kept_line_by_line_within_its_budget() {
        use LogStream::{Stderr, Stdout};
        let big = LINE_OVERHEAD + 10;
        // Lines split over writes, streams interleaved, a last line
        // without its newline.
        let c = captured(
            big * 4,
            &[
                (Stdout, b"hel"),
                (Stderr, b"oops\n"),
                (Stdout, b"lo\nwor"),
                (Stdout, b"ld"),
            ],
        );
        assert_eq!(
            lines(&c),
            [(Stderr, "oops"), (Stdout, "hello"), (Stdout, "world")]
        );
        assert!(c.dropped.is_empty());

        // A long line is cut at the budget, and the rest counted.
        let c = captured(big, &[(Stdout, &[b'x'; 100]), (Stdout, b"\nnext\n")]);
        assert_eq!(lines(&c), [(Stdout, "xxxxxxxxxx")]);
        assert_eq!(c.dropped.stdout, 90 + "next\n".len() as u64);

        // Empty lines cost their overhead: a flood of them is bounded.
        let c = captured(big * 3, &[(Stderr, &[b'\n'; 1000])]);
        assert_eq!(c.lines.len(), 3);
        assert_eq!(c.dropped.stderr, 997, "each dropped line counts");

        // Each stream has a budget of its own.
        let c = captured(big, &[(Stdout, b"0123456789\n"), (Stderr, b"0123456789\n")]);
        assert_eq!(c.lines.len(), 2);
    }

    fn policy(origins: &[&str]) -> OutboundPolicy {
        OutboundPolicy {
            allowed: origins.iter().map(|s| s.to_string()).collect(),
            egress: Arc::default(),
        }
    }

    #[test]
    fn outbound_requests_need_a_listed_origin() {
        let p = policy(&["https://api.example.com", "http://127.0.0.1:8080"]);
        for (uri, allowed) in [
            ("https://api.example.com/v1", true),
            ("https://API.example.com:443/", true),
            ("http://api.example.com/", false),
            ("https://api.example.com:8443/", false),
            ("https://evil.example.com/", false),
            ("http://127.0.0.1:8080/x", true),
            ("http://127.0.0.1:8081/x", false),
            ("/relative", false),
        ] {
            assert_eq!(p.allows(&uri.parse().unwrap()), allowed, "{uri}");
        }
        assert!(!policy(&[]).allows(&"https://api.example.com/".parse().unwrap()));
    }
}
