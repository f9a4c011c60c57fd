//! A minimal HTTP/1.1 client for loopback servers under test (the
//! gateway, admin ports): one request per connection, whole answer read,
//! no dependency on the code under test.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long an answer may take to come by default.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    get_within(addr, path, READ_TIMEOUT)
}

/// A GET whose answer may take up to `wait` (a synchronous invocation that
/// waits for a runtime to start, a long poll).
pub fn get_within(addr: SocketAddr, path: &str, wait: Duration) -> Option<(u16, String)> {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        wait,
    )
}

/// A GET with extra header lines (`Name: value`), e.g. a credential.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[&str]) -> Option<(u16, String)> {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"),
        READ_TIMEOUT,
    )
}

/// Sends `head` (a request without a body) and reads the whole answer.
fn request(addr: SocketAddr, head: &str, wait: Duration) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    stream.write_all(head.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.trim() == "chunked"
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The payload of a chunked body (Go's servers chunk answers they did not
/// size in advance, e.g. Prometheus's API).
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..line]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        let rest = &body[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

/// A plain HTTP/1.1 POST with an empty body on loopback: (status, body).
pub fn post(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        READ_TIMEOUT,
    )
}
