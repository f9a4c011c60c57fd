//! `echo`: answers with the request's body, byte for byte, and describes the
//! rest of the request in response headers:
//!
//! - `x-echo-method`, `x-echo-path` (path and query as the function saw
//!   them), `x-echo-query` (when there is one);
//! - `x-echo-h-<name>` for every request header.

use std::io::{Read as _, Write as _};

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            (
                "x-echo-method".to_owned(),
                method_name(&request.method()).into_bytes(),
            ),
            (
                "x-echo-path".to_owned(),
                path_with_query.clone().into_bytes(),
            ),
        ];
        if let Some((_, query)) = path_with_query.split_once('?') {
            headers.push(("x-echo-query".to_owned(), query.as_bytes().to_vec()));
        }
        for (name, value) in request.headers().entries() {
            if name == "content-type" {
                headers.push((name.clone(), value.clone()));
            }
            headers.push((format!("x-echo-h-{name}"), value));
        }

        let mut body = Vec::new();
        if let Ok(incoming) = request.consume() {
            if let Ok(mut stream) = incoming.stream() {
                let _ = stream.read_to_end(&mut body);
            }
            let _ = IncomingBody::finish(incoming);
        }

        let fields = Fields::from_list(&headers).unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(fields);
        let out_body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut stream = out_body.write().expect("stream is taken once");
        let _ = stream.write_all(&body);
        let _ = stream.flush();
        drop(stream);
        let _ = OutgoingBody::finish(out_body, None);
    }
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

wasip2::http::proxy::export!(Echo);
