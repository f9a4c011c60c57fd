//! `misbehave`: a deliberately hostile function. Sluice's tests use it to
//! show that a misbehaving invocation fails alone; try it to see the
//! sandbox at work. The path picks the misbehaviour:
//!
//! | path | what it does |
//! |---|---|
//! | `/loop` | spins forever (cut at the function's timeout) |
//! | `/bomb` | allocates until memory runs out (refused at `limits.memory`) |
//! | `/recurse` | recurses without end: its shadow stack (in linear memory) runs out, which the caller sees as a trap, "out of bounds memory access" |
//! | `/hoard` | makes header maps of 16 KiB without end: host memory, outside its own |
//! | `/status/<code>` | answers with that status |
//! | `/sleep/<ms>` | sleeps, then answers 200 |
//! | `/big/<bytes>` | answers with a body of that many bytes |
//! | `/log` | writes a line to stdout and to stderr, then answers 200 |
//! | `/say/<text>` | writes `<text>` as a line to stdout, then answers 200 |
//! | `/flood/<bytes>` | writes that many bytes to stdout (no newline), then answers 200 |
//! | `/cookies` | answers 200 with two `Set-Cookie` fields and an `x-latin1` field whose value is not UTF-8 |
//! | `/headers` | copies its request's header fields into a new field map (as a proxy would), answers how many |
//! | `/call?url=<url>&status=<code>` | GETs `url` (outbound HTTP), then answers `status` (default: the upstream's) |

use std::io::{Read as _, Write as _};

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Misbehave;

impl Guest for Misbehave {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (verb, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        match verb {
            "loop" => spin(),
            "bomb" => bomb(),
            "hoard" => hoard(),
            "recurse" => {
                let depth = recurse(std::hint::black_box(1));
                respond(response_out, 200, depth.to_string().as_bytes());
            }
            "status" => respond(response_out, arg.parse().unwrap_or(500), b"as you asked\n"),
            "sleep" => {
                let ms = arg.parse().unwrap_or(1000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                respond(response_out, 200, b"slept\n");
            }
            "big" => respond(response_out, 200, &vec![b'x'; arg.parse().unwrap_or(0)]),
            "log" => {
                println!("misbehave says hello on stdout");
                eprintln!("misbehave says hello on stderr");
                respond(response_out, 200, b"logged\n");
            }
            // One line of its own on stdout (`say/<text>`), or `<bytes>` of
            // output on stdout with no newline (`flood/<bytes>`), in 64 KiB
            // writes: the runtime keeps a bounded part of either.
            "say" => {
                println!("{arg}");
                respond(response_out, 200, b"said\n");
            }
            "flood" => {
                let mut left: usize = arg.parse().unwrap_or(0);
                let chunk = vec![b'x'; 64 << 10];
                let mut out = std::io::stdout().lock();
                while left > 0 {
                    let n = left.min(chunk.len());
                    let _ = out.write_all(&chunk[..n]);
                    left -= n;
                }
                let _ = out.flush();
                respond(response_out, 200, b"flooded\n");
            }
            "cookies" => respond_with(
                response_out,
                200,
                &[
                    ("set-cookie", b"a=1"),
                    ("set-cookie", b"b=2; Path=/"),
                    ("x-latin1", b"caf\xe9"),
                ],
                b"cookies\n",
            ),
            "headers" => {
                let entries = request.headers().entries();
                match Fields::from_list(&entries) {
                    Ok(_) => respond(response_out, 200, entries.len().to_string().as_bytes()),
                    Err(e) => respond(response_out, 500, format!("{e:?}").as_bytes()),
                }
            }
            "call" => {
                let param = |key: &str| {
                    query
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.to_owned())
                };
                let url = param("url").unwrap_or_default();
                match call(&url) {
                    Ok((status, _)) => {
                        let status = param("status")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(status);
                        respond(response_out, status, b"called\n")
                    }
                    Err(reason) => respond(response_out, 502, reason.as_bytes()),
                }
            }
            _ => respond(response_out, 404, b"unknown misbehaviour\n"),
        }
    }
}

/// Each header map lives in the host, not in the guest's linear memory,
/// so `limits.memory` does not see it.
fn hoard() -> ! {
    let value = vec![b'x'; 16 << 10];
    let mut kept = Vec::new();
    loop {
        let fields = Fields::new();
        let _ = fields.append("x-hoard", &value);
        kept.push(fields);
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

#[allow(unconditional_recursion)] // the point of `/recurse`
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(frame[7] + 1) + frame[3]
}

/// GETs an `http://host[:port]/path` URL and returns its status and body.
fn call(url: &str) -> Result<(u16, Vec<u8>), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|_| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|_| "bad authority")?;
    request
        .set_path_with_query(Some(path))
        .map_err(|_| "bad path")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("outbound request failed: {e:?}"))?;
    let status = response.status();
    let mut body = Vec::new();
    if let Ok(incoming) = response.consume()
        && let Ok(mut stream) = incoming.stream()
    {
        let _ = stream.read_to_end(&mut body);
    }
    Ok((status, body))
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    respond_with(response_out, status, &[], body);
}

fn respond_with(
    response_out: ResponseOutparam,
    status: u16,
    headers: &[(&str, &[u8])],
    body: &[u8],
) {
    let fields = Fields::new();
    for (name, value) in headers {
        let _ = fields.append(name, value);
    }
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let out_body = response.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut stream = out_body.write().expect("stream is taken once");
    let _ = stream.write_all(body);
    let _ = stream.flush();
    drop(stream);
    let _ = OutgoingBody::finish(out_body, None);
}

wasip2::http::proxy::export!(Misbehave);
