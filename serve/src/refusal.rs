//! hyper answers a request head it cannot parse (too many header fields, a
//! header section over its buffer, a bad request line) by itself, with an
//! empty body, before any handler sees the request. [`Refusing`] wraps a
//! connection and replaces exactly that answer with the server's own
//! (a JSON error, for the gateway), so every refusal looks alike.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The answer to give instead of hyper's empty one for `status` (400, 414
/// or 431); `None` keeps hyper's.
pub type Refusal = Arc<dyn Fn(StatusCode) -> Option<Response<Full<Bytes>>> + Send + Sync>;

/// hyper's automatic answer is a bare head; no write longer than this is
/// one.
const MAX_AUTOMATIC_HEAD: usize = 512;

/// Requests of one connection handed to the handler whose response body
/// hyper has not yet dropped. hyper writes its automatic answer only when
/// none is: it answers a request it could not parse, so the handler never
/// saw it.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts a request until the returned guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }

    fn is_idle(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
}

/// Held by a response body; see [`InFlight`].
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection whose writes are passed on unchanged, except hyper's own
/// answer to an unparsable request, which becomes the [`Refusal`]'s.
pub struct Refusing<S> {
    inner: S,
    in_flight: InFlight,
    refusal: Refusal,
    /// A replacement being written, and the length of the write it stands
    /// for (what hyper is told was written once it is out).
    replacing: Option<(Bytes, usize)>,
}

impl<S> Refusing<S> {
    pub fn new(inner: S, in_flight: InFlight, refusal: Refusal) -> Self {
        Self {
            inner,
            in_flight,
            refusal,
            replacing: None,
        }
    }

    /// The replacement for `written`, if it is hyper's automatic answer.
    fn replacement(&self, written: &[u8]) -> Option<Bytes> {
        if written.len() > MAX_AUTOMATIC_HEAD || !self.in_flight.is_idle() {
            return None;
        }
        let head = automatic_head(written)?;
        let response = (self.refusal)(head.status)?;
        Some(encode(response, head.date))
    }
}

/// What hyper's automatic answer says.
struct AutomaticHead<'a> {
    status: StatusCode,
    date: Option<&'a str>,
}

/// Parses `written` as hyper's automatic answer: a 400, 414 or 431 status
/// line, then only `content-length: 0`, `date` and `connection` fields,
/// then the blank line, and nothing after it.
fn automatic_head(written: &[u8]) -> Option<AutomaticHead<'_>> {
    let text = std::str::from_utf8(written).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?.strip_prefix("HTTP/1.1 ")?;
    let status = StatusCode::from_bytes(status_line.get(..3)?.as_bytes()).ok()?;
    if ![
        StatusCode::BAD_REQUEST,
        StatusCode::URI_TOO_LONG,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    ]
    .contains(&status)
    {
        return None;
    }
    let mut date = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" if value == "0" => {}
            "connection" => {}
            "date" => date = Some(value),
            _ => return None,
        }
    }
    Some(AutomaticHead { status, date })
}

/// `response` as HTTP/1.1 bytes, closing the connection as hyper would.
fn encode(response: Response<Full<Bytes>>, date: Option<&str>) -> Bytes {
    let (parts, body) = response.into_parts();
    // A `Full` body is one chunk, ready at once.
    let body = body.into_inner_bytes();
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            parts.status.as_str(),
            parts.status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n");
    if let Some(date) = date {
        out.extend_from_slice(format!("date: {date}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out.freeze()
}

/// The bytes of a `Full` body.
trait IntoInnerBytes {
    fn into_inner_bytes(self) -> Bytes;
}

impl IntoInnerBytes for Full<Bytes> {
    fn into_inner_bytes(self) -> Bytes {
        use http_body_util::BodyExt as _;
        // Polling a `Full` completes at once; no runtime is needed.
        let mut collect = std::pin::pin!(self.collect());
        let waker = std::task::Waker::noop();
        match collect.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        }
    }
}

impl<S: AsyncWrite + Unpin> Refusing<S> {
    /// Writes out the replacement; `Ready(claimed)` once it all went.
    fn poll_replace(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((rest, claimed)) = &mut self.replacing {
            if rest.is_empty() {
                let claimed = *claimed;
                self.replacing = None;
                return Poll::Ready(Ok(claimed));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rest.advance(n);
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Refusing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Refusing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none()
            && let Some(replacement) = this.replacement(buf)
        {
            this.replacing = Some((replacement, buf.len()));
        }
        if this.replacing.is_some() {
            return this.poll_replace(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.replacing.is_none() && total <= MAX_AUTOMATIC_HEAD && this.in_flight.is_idle() {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(replacement) = this.replacement(&joined) {
                this.replacing = Some((replacement, total));
            }
        }
        if this.replacing.is_some() {
            return this.poll_replace(cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.replacing.is_some() {
            ready!(self.poll_replace(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.replacing.is_some() {
            ready!(self.poll_replace(cx))?;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(status: StatusCode) -> Option<Response<Full<Bytes>>> {
        let mut response = Response::new(Full::new(Bytes::from_static(b"{\"error\":\"x\"}")));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        Some(response)
    }

    fn refusing(in_flight: &InFlight) -> Refusing<Vec<u8>> {
        Refusing::new(Vec::new(), in_flight.clone(), Arc::new(json))
    }

    const AUTOMATIC: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n";

    #[test]
    fn hypers_automatic_answer_is_recognised_and_nothing_else() {
        assert!(automatic_head(AUTOMATIC).is_some());
        let not = [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 5\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nbody",
            b"xHTTP/1.1 400 Bad Request\r\n\r\n",
        ];
        for written in not {
            assert!(
                automatic_head(written).is_none(),
                "{}",
                String::from_utf8_lossy(written)
            );
        }
    }

    #[tokio::test]
    async fn the_automatic_answer_is_replaced_only_when_no_request_is_in_flight() {
        use tokio::io::AsyncWriteExt as _;
        let in_flight = InFlight::default();
        let mut idle = refusing(&in_flight);
        idle.write_all(AUTOMATIC).await.unwrap();
        let out = String::from_utf8(idle.inner).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(out.contains("content-type: application/json\r\n"), "{out}");
        assert!(out.contains("content-length: 13\r\n"), "{out}");
        assert!(
            out.contains("date: Tue, 01 Dec 2026 00:00:00 GMT\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\n{\"error\":\"x\"}"), "{out}");

        // The same bytes while a response is on its way are its body.
        let guard = in_flight.enter();
        let mut busy = refusing(&in_flight);
        busy.write_all(AUTOMATIC).await.unwrap();
        assert_eq!(busy.inner, AUTOMATIC);
        drop(guard);
    }
}
