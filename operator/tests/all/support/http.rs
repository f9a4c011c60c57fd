//! A tiny HTTP/1.1 server on a random loopback port, answering each
//! request with what a handler returns, one request per connection. It
//! serves components to download and stands in for the Kubernetes API.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// What a request asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
}

/// How the body's end is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` of the body.
    Length,
    /// `Content-Length` claiming this many bytes, whatever the body is.
    ClaimedLength(u64),
    /// No `Content-Length`: the body ends when the connection closes.
    UntilClose,
}

/// The answer to a request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub framing: Framing,
    /// Headers beyond content-type and framing: `Location` for
    /// redirects, `WWW-Authenticate` for a registry's challenge.
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// 200 with `body` as `application/octet-stream`.
    pub fn bytes(body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            content_type: "application/octet-stream",
            body: body.into(),
            framing: Framing::Length,
            headers: Vec::new(),
        }
    }

    /// `status` with `value` as JSON.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap(),
            framing: Framing::Length,
            headers: Vec::new(),
        }
    }

    /// `status` with a short text body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: format!("status {status}\n").into_bytes(),
            framing: Framing::Length,
            headers: Vec::new(),
        }
    }

    /// A Kubernetes API `Status` failure, as the API server answers.
    pub fn kubernetes_status(code: u16, reason: &str, message: &str) -> Self {
        Self::json(
            code,
            &serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            }),
        )
    }

    /// 302 to `location`.
    pub fn redirect(location: &str) -> Self {
        Self {
            headers: vec![("location", location.to_owned())],
            ..Self::status(302)
        }
    }

    pub fn framed(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct HttpServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Serves `handler` on `127.0.0.1:<random port>`.
    pub async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(handler);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, handler.clone(), seen.clone()));
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// The requests served so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A Kubernetes client whose API server is this one.
    pub fn kube_client(&self) -> kube::Client {
        let config = kube::Config::new(self.url("").parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, handler: Handler, seen: Arc<Mutex<Vec<Request>>>) {
    let Some(request) = read_head(&mut stream).await else {
        return;
    };
    let reply = handler(&request);
    seen.lock().unwrap().push(request);
    let mut head = format!(
        "HTTP/1.1 {} X\r\ncontent-type: {}\r\nconnection: close\r\n",
        reply.status, reply.content_type
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match reply.framing {
        Framing::Length => head.push_str(&format!("content-length: {}\r\n", reply.body.len())),
        Framing::ClaimedLength(n) => head.push_str(&format!("content-length: {n}\r\n")),
        Framing::UntilClose => {}
    }
    head.push_str("\r\n");
    // The client may hang up early (a refused length): not an error here.
    if stream.write_all(head.as_bytes()).await.is_ok() {
        let _ = stream.write_all(&reply.body).await;
    }
    let _ = stream.shutdown().await;
}

/// The request line and headers; a body, if any, is ignored.
async fn read_head(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers = lines
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Some(Request {
        method,
        path,
        headers,
    })
}
