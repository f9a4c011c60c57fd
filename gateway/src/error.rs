//! The one place that maps gateway errors to HTTP statuses and JSON bodies.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use sluice_api::{Failure, FailureKind};

/// Everything a request can fail with, each with the status a caller can
/// act on.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no function {0} is deployed")]
    UnknownFunction(String),
    #[error(
        "no invocation {0} is known to this caller (it may have expired, or the credentials do not give access to its function)"
    )]
    UnknownInvocation(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("{0}")]
    BadRequest(String),
    /// A callback URL resolving to an address the egress guard refuses.
    #[error("{0}")]
    CallbackRefused(String),
    #[error("{method} is not allowed here; use {allowed}")]
    MethodNotAllowed {
        method: String,
        allowed: &'static str,
    },
    #[error("the request body is larger than the {limit}-byte limit")]
    BodyTooLarge { limit: usize },
    /// Headers (with the path and query) longer than an invocation carries.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// Body and headers together larger than the queue carries.
    #[error("{0}")]
    RequestTooLarge(String),
    #[error("the request target is longer than this server reads")]
    UriTooLong,
    #[error("the request body did not arrive within {}", sluice_api::Duration(*.0))]
    RequestTimeout(std::time::Duration),
    #[error("the queue of {function} is full: it holds all that {} allows; retry later", .bound.flag())]
    QueueFull {
        function: String,
        bound: crate::queue::QueueBound,
    },
    /// The gateway holds all it may at once (connections, buffered bytes).
    #[error("{0}")]
    Overloaded(String),
    /// An `Idempotency-Key` already used for a different request (method,
    /// path, query or body) whose record still lives.
    #[error(
        "this Idempotency-Key was used for a different request (invocation {0}); use a new key for a new request"
    )]
    IdempotencyKeyReused(String),
    /// `DELETE /invocations/<id>` of an invocation that ended otherwise.
    #[error("invocation {id} has already ended ({state}); it is left as it was")]
    AlreadyFinished { id: String, state: &'static str },
    /// No dead letter of that invocation is kept (any more).
    #[error("no dead letter of invocation {0} is kept for this function")]
    UnknownDeadLetter(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{}", .0.reason)]
    FunctionFailed(Failure),
    #[error("{0}")]
    Unavailable(String),
    /// 401: no credential, or one proving nothing. `invalid_token` when one
    /// was sent (RFC 6750 §3.1).
    #[error("{problem}")]
    Unauthenticated {
        invalid_token: bool,
        problem: String,
    },
    /// 403: a valid credential without access to the function, or a
    /// function no credential reaches.
    #[error("{0}")]
    Forbidden(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownFunction(_)
            | Self::UnknownInvocation(_)
            | Self::UnknownDeadLetter(_)
            | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::AlreadyFinished { .. } => StatusCode::CONFLICT,
            Self::BadRequest(_) | Self::CallbackRefused(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } | Self::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::IdempotencyKeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::FunctionFailed(f) => match f.kind {
                FailureKind::Timeout | FailureKind::Expired => StatusCode::GATEWAY_TIMEOUT,
                FailureKind::BadInvocation => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            },
            Self::Unavailable(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// A stable, machine-readable word for the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownFunction(_) => "unknown_function",
            Self::UnknownInvocation(_) => "unknown_invocation",
            Self::UnknownDeadLetter(_) => "unknown_dead_letter",
            Self::AlreadyFinished { .. } => "already_finished",
            Self::NoRoute(_) => "no_route",
            Self::BadRequest(_) => "bad_request",
            Self::CallbackRefused(_) => "callback_refused",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::RequestTooLarge(_) => "request_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::RequestTimeout(_) => "request_timeout",
            Self::QueueFull { .. } => "queue_full",
            Self::IdempotencyKeyReused(_) => "idempotency_key_reused",
            Self::Timeout(_) => "timeout",
            Self::FunctionFailed(f) => match f.kind {
                FailureKind::Timeout | FailureKind::Expired => "timeout",
                FailureKind::MemoryLimit => "memory_limit",
                FailureKind::ResponseTooLarge => "response_too_large",
                FailureKind::Trap | FailureKind::NoResponse => "function_failed",
                FailureKind::BadInvocation => "bad_invocation",
                FailureKind::Internal => "runtime_error",
                FailureKind::Cancelled => "cancelled",
            },
            Self::Unavailable(_) => "unavailable",
            Self::Overloaded(_) => "overloaded",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
        }
    }

    /// The error behind an answer hyper gives by itself to a request head
    /// it cannot parse (see `sluice_serve::serve`), so that it gets the same
    /// JSON body as every other refusal.
    pub fn unparsed_request(status: StatusCode) -> Option<Self> {
        match status {
            StatusCode::BAD_REQUEST => Some(Self::BadRequest(
                "the request head is not valid HTTP/1.1".into(),
            )),
            StatusCode::URI_TOO_LONG => Some(Self::UriTooLong),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Some(Self::HeadersTooLarge(format!(
                "the request has more than {} header fields, or a header section larger than this server reads; Sluice carries at most {} bytes of headers",
                sluice_serve::MAX_HEADER_FIELDS,
                sluice_api::invocation::MAX_REQUEST_HEADER_BLOCK
            ))),
            _ => None,
        }
    }

    /// The JSON body: `{"error": <code>, "message": <sentence>}`, and
    /// `invocationId` when an invocation was made; `queue_full` says which
    /// limit was reached in `bound` (`depth` or `bytes`).
    pub fn body(&self, invocation_id: Option<&str>) -> serde_json::Value {
        let mut body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        if let Self::QueueFull { bound, .. } = self {
            body["bound"] = bound.as_str().into();
        }
        if let Some(id) = invocation_id {
            body["invocationId"] = id.into();
        }
        body
    }

    /// The JSON response: `{"error": <code>, "message": <sentence>}`.
    pub fn into_response(self, invocation_id: Option<&str>) -> Response<Full<Bytes>> {
        if self.status().is_server_error()
            && !matches!(
                self,
                Self::FunctionFailed(_) | Self::Timeout(_) | Self::Overloaded(_)
            )
        {
            tracing::warn!(error = %self, "request failed");
        }
        let mut response = json_response(self.status(), &self.body(invocation_id));
        match self {
            Self::MethodNotAllowed { allowed, .. } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            // RFC 6750 §3: the scheme, and why a token sent was refused.
            Self::Unauthenticated { invalid_token, .. } => {
                let challenge = if invalid_token {
                    r#"Bearer realm="sluice", error="invalid_token""#
                } else {
                    r#"Bearer realm="sluice""#
                };
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            // A refusal of load: the caller may come back shortly.
            Self::QueueFull { .. } | Self::Overloaded(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
            }
            _ => {}
        }
        response
    }
}

/// Seconds a caller refused for load (429, 503 `overloaded`) is asked to
/// wait before trying again.
pub const RETRY_AFTER: &str = "1";

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
