//! The HTTP ingress: turns requests into invocations and answers with
//! their outcome (see the README, "Try it", for every path).

use sluice_serve::sync;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use sluice_api::dead_letter::Selection;
use sluice_api::egress::EgressPolicy;
use sluice_api::invocation::{
    CALLBACK_HEADER, IDEMPOTENCY_KEY_HEADER, MAX_REQUEST_HEADER_BLOCK, header_line_len,
    strip_hop_by_hop,
};
use sluice_api::logs::{InvocationLogs, parse_since};
use sluice_api::names::{BadFunctionRef, FunctionRef};
use sluice_api::{
    CancelDecision, FunctionSpec, Invocation, InvocationId, InvocationRecord, InvocationResponse,
};
use sluice_serve::egress::{self, EgressError};
use sluice_serve::{ConnectionLimit, telemetry};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::admission::{Admission, Held, connection_limit};
use crate::auth::{Access, JwksCache, Verdict};
use crate::error::{GatewayError, json_response};
use crate::metrics::{Metrics, RouteKind};
use crate::queue::{InvocationQueue, QueueError, Submitted};
use crate::routes::{Resolved, RoutedFunctions, resolve_default};

/// Bytes of an oversized body read and dropped before answering 413.
const DRAIN_LIMIT: usize = 8 << 20;
/// Longest an oversized body is read before answering 413.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Longest `?wait=` a status request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Largest body of a dead-letter redrive or purge (a selection).
const MAX_SELECTION_BODY: usize = 64 << 10;

/// The body of every answer: whole, or (following a function's logs)
/// streamed.
pub type GatewayBody = UnsyncBoxBody<Bytes, Infallible>;

/// Default `since` of `GET /logs/<ns>/<name>`: the last hour.
const DEFAULT_LOGS_SINCE: Duration = Duration::from_secs(3600);

/// A handler's answer; an error carries the invocation id when one was
/// assigned, so the caller can look it up.
type Handled = Result<Response<Full<Bytes>>, (GatewayError, Option<InvocationId>)>;

/// Default of [`HttpConfig::max_request_body`]: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;
/// Default of [`HttpConfig::async_deadline`]: 1 hour.
pub const DEFAULT_ASYNC_DEADLINE: Duration = Duration::from_secs(3600);

/// HTTP-facing settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted; larger gets 413. Default: 1Mi.
    pub max_request_body: usize,
    /// How long an async invocation may take, retries included, before it
    /// expires; also how long its record stays. Default: 1h.
    pub async_deadline: Duration,
    /// Longest a client may take to send a request body; slower gets 408.
    /// A client trickling bytes would otherwise hold its connection and
    /// buffer forever. Default: 60s (1 MiB at 17 KiB/s).
    pub body_timeout: Duration,
    /// Which addresses a callback URL (or a `spec.auth.jwt.jwksUrl`) may
    /// resolve to (see `sluice_api::egress`); others get 400 at submit.
    /// Default: public addresses only.
    pub egress: Arc<EgressPolicy>,
    /// Whether a function without `spec.auth` is refused (403) rather
    /// than public (`--auth-required`). Default: false (public).
    pub auth_required: bool,
    /// Bytes of request and sync response bodies held at once (see
    /// [`crate::admission`]); past it 503 `overloaded`. Default: `None`
    /// (the binary sizes it from its container's memory).
    pub max_buffered: Option<u64>,
    /// Connections open at once (see [`crate::admission`]); past it 503
    /// `overloaded` and closed. Default: `None` (the binary sizes it from
    /// its container's memory).
    pub max_connections: Option<usize>,
    /// Bytes a synchronous invocation holds for its response from before it
    /// is queued: the largest response that can come back, which arrives
    /// whole. Default: 6Mi (the runtime's default response limit); in NATS
    /// mode the server's `max_payload`.
    pub response_reserve: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            async_deadline: DEFAULT_ASYNC_DEADLINE,
            body_timeout: Duration::from_secs(60),
            egress: Arc::default(),
            auth_required: false,
            max_buffered: None,
            max_connections: None,
            response_reserve: 6 << 20,
        }
    }
}

/// The gateway's request handler.
#[derive(Debug)]
pub struct Gateway {
    queue: Arc<dyn InvocationQueue>,
    routing: RwLock<Arc<Routing>>,
    jwks: JwksCache,
    config: HttpConfig,
    metrics: Metrics,
    admission: Admission,
    /// Cancelled when the gateway stops: ends the responses that follow
    /// a function's logs, which would otherwise hold its shutdown.
    stopping: CancellationToken,
}

/// The routed functions and who may invoke them, replaced together.
#[derive(Debug)]
struct Routing {
    functions: RoutedFunctions,
    access: Access,
}

impl Gateway {
    pub fn new(
        queue: Arc<dyn InvocationQueue>,
        functions: RoutedFunctions,
        config: HttpConfig,
        metrics: Metrics,
    ) -> Self {
        let jwks = JwksCache::new(config.egress.clone());
        let access = Access::new(functions.auth(), config.auth_required, &jwks);
        let admission = Admission::new(config.max_buffered, metrics.buffered(config.max_buffered));
        Self {
            queue,
            routing: RwLock::new(Arc::new(Routing { functions, access })),
            jwks,
            config,
            metrics,
            admission,
            stopping: CancellationToken::new(),
        }
    }

    /// Ends every response following a function's logs (the gateway is
    /// stopping).
    pub fn stop_following(&self) {
        self.stopping.cancel();
    }

    /// Waits up to `grace` for the invocations this process holds; returns
    /// how many are given up (see [`InvocationQueue::drain`]).
    pub async fn drain(&self, grace: Duration) -> usize {
        self.queue.drain(grace).await
    }

    /// The connection limit its server keeps, if any.
    pub fn connection_limit(&self) -> Option<ConnectionLimit> {
        self.config
            .max_connections
            .map(|max| connection_limit(max, &self.metrics))
    }

    /// Replaces the routed functions (the registry changed).
    pub fn set_functions(&self, functions: RoutedFunctions) {
        let access = Access::new(functions.auth(), self.config.auth_required, &self.jwks);
        *sync::write(&self.routing) = Arc::new(Routing { functions, access });
    }

    fn routing(&self) -> Arc<Routing> {
        sync::read(&self.routing).clone()
    }

    /// Lets `request` through to `function`, or answers 401, 403 or (the
    /// issuer's keys unreachable) 503. Failures are counted by function
    /// and reason; the credential is never logged.
    async fn authorize<B>(
        &self,
        routing: &Routing,
        function: &FunctionRef,
        request: &mut Request<B>,
    ) -> Result<(), GatewayError> {
        let verdict = routing
            .access
            .check(function, request)
            .await
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        let error = match verdict {
            Verdict::Allowed => return Ok(()),
            Verdict::Unauthenticated {
                invalid_token,
                problem,
            } => GatewayError::Unauthenticated {
                invalid_token,
                problem,
            },
            Verdict::Forbidden(problem) => GatewayError::Forbidden(problem),
        };
        self.metrics.auth_failed(function, error.code());
        tracing::debug!(%function, error = %error, "request refused");
        Err(error)
    }

    pub async fn handle(&self, request: Request<Incoming>) -> Response<GatewayBody> {
        let path = request.uri().path().to_owned();
        if let Some(rest) = path.strip_prefix("/logs/") {
            let response = match self.function_logs(rest, request).await {
                Ok(response) => response,
                Err((error, _)) => {
                    self.metrics.refused(error.code());
                    error.into_response(None).map(BodyExt::boxed_unsync)
                }
            };
            self.metrics.answered(RouteKind::Logs, response.status());
            return response;
        }
        self.handle_whole(request).await.map(BodyExt::boxed_unsync)
    }

    async fn handle_whole(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let (kind, result) = if let Some(resolved) = resolve_default("/fn", &path) {
            (RouteKind::Sync, self.invoke_sync(resolved, request).await)
        } else if let Some(resolved) = resolve_default("/async/fn", &path) {
            (RouteKind::Async, self.invoke_async(resolved, request).await)
        } else if let Some(id) = path.strip_prefix("/invocations/") {
            let mut request = request;
            let result = if let Some(id) = id.strip_suffix("/logs") {
                self.invocation_logs(id, &mut request).await
            } else if request.method() == Method::DELETE {
                self.cancel(id, &mut request).await
            } else {
                self.invocation_status(id, &mut request).await
            };
            (RouteKind::Status, result)
        } else if let Some(rest) = path.strip_prefix("/dead-letters/") {
            (
                RouteKind::DeadLetters,
                self.dead_letters(rest, request).await,
            )
        } else {
            match self.routing().functions.resolve_custom(&path) {
                Some(resolved) => (
                    RouteKind::Sync,
                    self.invoke_sync(Ok(resolved), request).await,
                ),
                None => (
                    RouteKind::Unrouted,
                    Err((GatewayError::NoRoute(path), None)),
                ),
            }
        };
        let response = result.unwrap_or_else(|(error, id)| {
            self.metrics.refused(error.code());
            error.into_response(id.as_ref().map(InvocationId::as_str))
        });
        self.metrics.answered(kind, response.status());
        response
    }

    async fn invoke_sync(
        &self,
        resolved: Result<Resolved, BadFunctionRef>,
        mut request: Request<Incoming>,
    ) -> Handled {
        let (resolved, spec) = self
            .function(resolved, &mut request)
            .await
            .map_err(|e| (e, None))?;
        let mut held = self.admission.hold();
        held.grow(self.config.response_reserve)
            .map_err(|e| (e, None))?;
        let mut invocation = self
            .invocation(
                resolved,
                &spec.priority,
                request,
                InvocationId::random(),
                spec.timeout.0,
                None,
                &mut held,
            )
            .await
            .map_err(|e| (e, None))?;
        let id = invocation.id.clone();
        let function = invocation.function.clone();
        let span = telemetry::gateway_span(&mut invocation);
        let answered = self.queue.call(invocation).instrument(span).await;
        if answered.is_ok() {
            self.metrics.accepted(&function, RouteKind::Sync);
        }
        match answered {
            Ok(Ok(response)) => Ok(function_response(response, &id)),
            Ok(Err(failure)) => Err((GatewayError::FunctionFailed(failure), Some(id))),
            Err(e) => Err((queue_error(e), Some(id))),
        }
    }

    async fn invoke_async(
        &self,
        resolved: Result<Resolved, BadFunctionRef>,
        mut request: Request<Incoming>,
    ) -> Handled {
        require_method(request.method(), Method::POST, "POST")?;
        let (resolved, spec) = self
            .function(resolved, &mut request)
            .await
            .map_err(|e| (e, None))?;
        let callback = match request.headers().get("x-callback-url") {
            None => None,
            Some(value) => Some(self.callback_url(value).await.map_err(|e| (e, None))?),
        };
        let id = match request.headers().get(IDEMPOTENCY_KEY_HEADER) {
            Some(key) => InvocationId::for_idempotency_key(
                &resolved.function,
                &String::from_utf8_lossy(key.as_bytes()),
            ),
            None => InvocationId::random(),
        };
        let mut held = self.admission.hold();
        let mut invocation = self
            .invocation(
                resolved,
                &spec.priority,
                request,
                id,
                self.config.async_deadline,
                callback.as_deref(),
                &mut held,
            )
            .await
            .map_err(|e| (e, None))?;
        let function = invocation.function.clone();
        let submitted = match self.earlier_submit(&invocation).await? {
            Some(earlier) => earlier,
            None => {
                let span = telemetry::gateway_span(&mut invocation);
                self.queue
                    .submit(invocation, callback)
                    .instrument(span)
                    .await
                    .map_err(|e| (queue_error(e), None))?
            }
        };
        self.metrics.accepted(&function, RouteKind::Async);
        let location = format!("/invocations/{}", submitted.id);
        let mut response = json_response(
            StatusCode::ACCEPTED,
            &Accepted {
                id: &submitted.id,
                function: &function,
                location: &location,
                duplicate: submitted.duplicate,
            },
        );
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Ok(response)
    }

    /// The invocation an `Idempotency-Key` named before, for as long as
    /// its record lives (the queue's duplicate window is shorter): the
    /// same request is that invocation again (`duplicate: true`, nothing
    /// queued); a different one under the same key is 422.
    async fn earlier_submit(
        &self,
        invocation: &Invocation,
    ) -> Result<Option<Submitted>, (GatewayError, Option<InvocationId>)> {
        let Some(digest) = invocation.request_digest() else {
            return Ok(None);
        };
        let earlier = self
            .queue
            .record(&invocation.id, Duration::ZERO)
            .await
            .map_err(|e| (queue_error(e), None))?;
        match earlier {
            None => Ok(None),
            Some(record) if record.request_digest.as_deref() == Some(digest.as_str()) => {
                Ok(Some(Submitted {
                    id: record.id,
                    duplicate: true,
                }))
            }
            Some(record) => Err((
                GatewayError::IdempotencyKeyReused(record.id.to_string()),
                None,
            )),
        }
    }

    async fn invocation_status(&self, id: &str, request: &mut Request<Incoming>) -> Handled {
        require_method(request.method(), Method::GET, "GET, DELETE")?;
        let (parsed, record) = self.readable_record(id, request).await?;
        let unknown = || (GatewayError::UnknownInvocation(id.to_owned()), None);
        let wait = match query_param(request.uri().query(), "wait") {
            None => Duration::ZERO,
            Some(text) => text
                .parse::<sluice_api::Duration>()
                .map(|d| d.0.min(MAX_WAIT))
                .map_err(|e| (GatewayError::BadRequest(format!("wait: {e}")), None))?,
        };
        if wait.is_zero() || record.state.is_final() {
            return Ok(json_response(StatusCode::OK, &record));
        }
        match self.queue.record(&parsed, wait).await {
            Ok(Some(record)) => Ok(json_response(StatusCode::OK, &record)),
            Ok(None) => Err(unknown()),
            Err(e) => Err((queue_error(e), None)),
        }
    }

    /// The record of invocation `id`, for a caller who may read it. The
    /// record names its function: only a caller who may invoke it reads
    /// it (or cancels it). Anyone else gets the answer of an unknown id,
    /// so that guessable ids (Idempotency-Keys) cannot be probed for
    /// existence.
    async fn readable_record(
        &self,
        id: &str,
        request: &mut Request<Incoming>,
    ) -> Result<(InvocationId, InvocationRecord), (GatewayError, Option<InvocationId>)> {
        let unknown = || (GatewayError::UnknownInvocation(id.to_owned()), None);
        let parsed = InvocationId::parse(id).ok_or_else(unknown)?;
        let record = match self.queue.record(&parsed, Duration::ZERO).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(unknown()),
            Err(e) => return Err((queue_error(e), None)),
        };
        match self
            .authorize(&self.routing(), &record.function, request)
            .await
        {
            Ok(()) => Ok((parsed, record)),
            Err(e @ GatewayError::Unavailable(_)) => Err((e, None)),
            Err(_) => Err(unknown()),
        }
    }

    /// `GET /invocations/<id>/logs`: every attempt's kept log
    /// ([`InvocationLogs`]); who may read them is who may read the record.
    async fn invocation_logs(&self, id: &str, request: &mut Request<Incoming>) -> Handled {
        require_method(request.method(), Method::GET, "GET")?;
        let (parsed, record) = self.readable_record(id, request).await?;
        let attempts = self
            .queue
            .invocation_logs(&record.function, &parsed)
            .await
            .map_err(|e| (queue_error(e), None))?;
        let logs = InvocationLogs {
            id: parsed,
            function: record.function,
            attempts,
        };
        Ok(json_response(StatusCode::OK, &logs))
    }

    /// `GET /logs/<ns>/<name>[?since=…][&follow=1]`: the function's kept
    /// log lines since `since` (a duration back, or an RFC 3339 time;
    /// default 1h), one JSON object a line (`application/x-ndjson`),
    /// across every replica; with `follow`, then each new line until the
    /// client hangs up. Who may read them is who may invoke the function.
    async fn function_logs(
        &self,
        rest: &str,
        mut request: Request<Incoming>,
    ) -> Result<Response<GatewayBody>, (GatewayError, Option<InvocationId>)> {
        require_method(request.method(), Method::GET, "GET")?;
        let no_route = || (GatewayError::NoRoute(format!("/logs/{rest}")), None);
        let mut parts = rest.trim_end_matches('/').split('/');
        let (Some(namespace), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(no_route());
        };
        let function = FunctionRef::new(namespace, name).map_err(|_| no_route())?;
        let routing = self.routing();
        if routing.functions.get(&function).is_none() {
            return Err((GatewayError::UnknownFunction(function.to_string()), None));
        }
        self.authorize(&routing, &function, &mut request)
            .await
            .map_err(|e| (e, None))?;
        let query = request.uri().query();
        let now = SystemTime::now();
        let since = match query_param(query, "since") {
            None => now - DEFAULT_LOGS_SINCE,
            Some(text) => parse_since(text, now)
                .map_err(|e| (GatewayError::BadRequest(format!("since: {e}")), None))?,
        };
        let follow = match query_param(query, "follow") {
            None | Some("0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => {
                return Err((
                    GatewayError::BadRequest(format!(
                        "follow: {other:?} is not one of 1, true, 0, false"
                    )),
                    None,
                ));
            }
        };
        let feed = self
            .queue
            .function_logs(&function, since, follow)
            .await
            .map_err(|e| (queue_error(e), None))?;
        let lines = feed
            .take_until(self.stopping.clone().cancelled_owned())
            .flat_map(move |log| {
                let lines: Vec<_> = log
                    .flatten()
                    .filter(|line| line.time >= since)
                    .map(|line| {
                        let mut json = serde_json::to_vec(&line).unwrap_or_default();
                        json.push(b'\n');
                        Ok::<_, Infallible>(Frame::data(Bytes::from(json)))
                    })
                    .collect();
                futures::stream::iter(lines)
            });
        let mut response = Response::new(StreamBody::new(lines).boxed_unsync());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(response)
    }

    /// `DELETE /invocations/<id>`: 200 with the `cancelled` record (also
    /// when it was already cancelled), 202 with the running record while
    /// its runtime interrupts it, 409 when it had ended otherwise; who may
    /// cancel is who may read it.
    async fn cancel(&self, id: &str, request: &mut Request<Incoming>) -> Handled {
        let (parsed, _) = self.readable_record(id, request).await?;
        let unknown = || (GatewayError::UnknownInvocation(id.to_owned()), None);
        let cancelled = self
            .queue
            .cancel(&parsed)
            .await
            .map_err(|e| (queue_error(e), None))?
            .ok_or_else(unknown)?;
        let status = match cancelled.decision {
            CancelDecision::Finished => {
                return Err((
                    GatewayError::AlreadyFinished {
                        id: id.to_owned(),
                        state: cancelled.record.state.as_str(),
                    },
                    Some(parsed),
                ));
            }
            CancelDecision::Cancel if !cancelled.record.state.is_final() => StatusCode::ACCEPTED,
            CancelDecision::Cancel | CancelDecision::AlreadyCancelled => StatusCode::OK,
        };
        Ok(json_response(status, &cancelled.record))
    }

    /// `/dead-letters/<ns>/<name>[/<id>][/redrive]`: list (GET), show one
    /// (GET with an id), redrive (POST …/redrive, a [`Selection`] as the
    /// optional JSON body, or one id), purge (DELETE, likewise).
    async fn dead_letters(&self, rest: &str, mut request: Request<Incoming>) -> Handled {
        let route = DeadLetterRoute::parse(rest)
            .ok_or_else(|| (GatewayError::NoRoute(format!("/dead-letters/{rest}")), None))?;
        let function = route.function;
        let routing = self.routing();
        let spec = routing
            .functions
            .get(&function)
            .cloned()
            .ok_or_else(|| (GatewayError::UnknownFunction(function.to_string()), None))?;
        self.authorize(&routing, &function, &mut request)
            .await
            .map_err(|e| (e, None))?;
        let subject = spec.dead_letter_subject(&function);
        let method = request.method().clone();
        let queue_failed = |e| (queue_error(e), None);
        match (method, route.id, route.redrive) {
            (Method::GET, None, false) => {
                let letters = self
                    .queue
                    .dead_letters(&function, &subject)
                    .await
                    .map_err(queue_failed)?;
                Ok(json_response(StatusCode::OK, &letters))
            }
            (Method::GET, Some(id), false) => {
                let detail = self
                    .queue
                    .dead_letter_detail(&function, &subject, &id)
                    .await
                    .map_err(queue_failed)?
                    .ok_or_else(|| (GatewayError::UnknownDeadLetter(id.to_string()), None))?;
                Ok(json_response(StatusCode::OK, &detail))
            }
            (Method::POST, id, true) => {
                let selection = self.selection(id, request).await?;
                let deadline = SystemTime::now() + self.config.async_deadline;
                let report = self
                    .queue
                    .redrive(&function, &subject, &selection, deadline)
                    .await
                    .map_err(queue_failed)?;
                Ok(json_response(StatusCode::OK, &report))
            }
            (Method::DELETE, id, false) => {
                let selection = self.selection(id, request).await?;
                let report = self
                    .queue
                    .purge(&function, &subject, &selection)
                    .await
                    .map_err(queue_failed)?;
                Ok(json_response(StatusCode::OK, &report))
            }
            (method, _, redrive) => Err((
                GatewayError::MethodNotAllowed {
                    method: method.to_string(),
                    allowed: if redrive { "POST" } else { "GET, DELETE" },
                },
                None,
            )),
        }
    }

    /// The dead letters a redrive or purge names: the one `id` of its
    /// path, or the request's JSON [`Selection`] (none: all of them).
    async fn selection(
        &self,
        id: Option<InvocationId>,
        request: Request<Incoming>,
    ) -> Result<Selection, (GatewayError, Option<InvocationId>)> {
        if let Some(id) = id {
            return Ok(Selection::one(id));
        }
        let (parts, body) = request.into_parts();
        let mut held = self.admission.hold();
        let body = read_body(body, &parts.headers, MAX_SELECTION_BODY, &mut held)
            .await
            .map_err(|e| (e, None))?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Selection::default());
        }
        serde_json::from_slice(&body).map_err(|e| {
            (
                GatewayError::BadRequest(format!(
                    "the body must be a selection of dead letters, {{\"ids\": [..], \"reason\": \"..\"}} (each optional): {e}"
                )),
                None,
            )
        })
    }

    /// Refuses, before anything is queued, a callback URL that is not an
    /// absolute http(s) URL or whose host resolves to an address the egress
    /// guard refuses. The runtime checks again when it delivers: by then
    /// the name may resolve elsewhere.
    async fn callback_url(&self, value: &HeaderValue) -> Result<String, GatewayError> {
        let url = value.to_str().unwrap_or_default().to_owned();
        let uri = sluice_api::callback::validate_url(&url)
            .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let host = uri.host().unwrap_or_default();
        if let Err(e) = egress::resolve(host, port, &self.config.egress).await {
            let mut reason = e.to_string();
            if let EgressError::Lookup { source, .. } = &e {
                reason = format!("{reason}: {source}");
            }
            return Err(GatewayError::CallbackRefused(format!(
                "X-Callback-Url {url:?} is refused: {reason}"
            )));
        }
        Ok(url)
    }

    /// The function a request names, once the request may invoke it.
    async fn function(
        &self,
        resolved: Result<Resolved, BadFunctionRef>,
        request: &mut Request<Incoming>,
    ) -> Result<(Resolved, Arc<FunctionSpec>), GatewayError> {
        let resolved = resolved.map_err(|e| GatewayError::UnknownFunction(e.text().to_owned()))?;
        let routing = self.routing();
        let spec = routing
            .functions
            .get(&resolved.function)
            .cloned()
            .ok_or_else(|| GatewayError::UnknownFunction(resolved.function.to_string()))?;
        self.authorize(&routing, &resolved.function, request)
            .await?;
        Ok((resolved, spec))
    }

    /// The invocation `request` makes. Its headers are checked before its
    /// body is read, so a request no queue can carry is refused (431)
    /// before anything runs, in both modes alike.
    #[allow(clippy::too_many_arguments)]
    async fn invocation(
        &self,
        resolved: Resolved,
        priority: &sluice_api::PrioritySpec,
        request: Request<Incoming>,
        id: InvocationId,
        budget: Duration,
        callback: Option<&str>,
        held: &mut Held,
    ) -> Result<Invocation, GatewayError> {
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        let traceparent = headers
            .remove("traceparent")
            .and_then(|v| v.to_str().ok().map(str::to_owned));
        let mut invocation = Invocation {
            id,
            function: resolved.function,
            method: parts.method,
            path: resolved.rest,
            query: parts.uri.query().map(str::to_owned),
            forwarded_prefix: resolved.prefix,
            headers,
            body: Bytes::new(),
            deadline: SystemTime::now(),
            traceparent,
        };
        let refused = check_header_block(&invocation, callback).and_then(|()| {
            // A key that cannot be carried, or a class the function does
            // not allow, is refused before anything is queued, naming the
            // header.
            sluice_api::ordering::from_headers(&invocation.headers)
                .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
            sluice_api::priority::requested(priority, &invocation.headers)
                .map_err(|e| GatewayError::BadRequest(e.to_string()))
        });
        let class = match refused {
            Ok(class) => class,
            Err(e) => {
                // Read (and drop) what the client sends meanwhile, so that
                // it reads the 431 instead of a reset.
                let _ = tokio::time::timeout(DRAIN_TIME, read_body(body, &parts.headers, 0, held))
                    .await;
                return Err(e);
            }
        };
        sluice_api::priority::stamp(&mut invocation.headers, class);
        invocation.body = tokio::time::timeout(
            self.config.body_timeout,
            read_body(body, &parts.headers, self.config.max_request_body, held),
        )
        .await
        .map_err(|_| GatewayError::RequestTimeout(self.config.body_timeout))??;
        // The budget starts once the request is in: a slow upload does not
        // eat the function's time.
        invocation.deadline = SystemTime::now() + budget;
        Ok(invocation)
    }
}

/// Refuses an invocation whose header block as queued (with the callback
/// URL) is over [`MAX_REQUEST_HEADER_BLOCK`]: JetStream would refuse it,
/// and past it a guest could not copy its request's headers.
fn check_header_block(invocation: &Invocation, callback: Option<&str>) -> Result<(), GatewayError> {
    let block = invocation.header_block_len()
        + callback.map_or(0, |url| header_line_len(CALLBACK_HEADER, url));
    if block <= MAX_REQUEST_HEADER_BLOCK {
        return Ok(());
    }
    Err(GatewayError::HeadersTooLarge(format!(
        "the request's headers, path and query take {block} bytes as queued (each header field its name and value plus 13 bytes); at most {MAX_REQUEST_HEADER_BLOCK} are carried"
    )))
}

/// Reads a request body of at most `limit` bytes, each chunk kept held
/// against the gateway's buffered bytes (503 `overloaded` past them). An
/// oversized body is still read (and dropped) up to [`DRAIN_LIMIT`] or
/// [`DRAIN_TIME`], so that the client finishes sending and reads the 413
/// instead of a reset.
async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    held: &mut Held,
) -> Result<Bytes, GatewayError> {
    let too_large = GatewayError::BodyTooLarge { limit };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > (limit + DRAIN_LIMIT) as u64) {
        return Err(too_large);
    }
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    let drain_until = tokio::time::Instant::now() + DRAIN_TIME;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| GatewayError::BadRequest(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= limit {
            held.grow(data.len())?;
            collected.extend_from_slice(&data);
        } else if seen > limit + DRAIN_LIMIT || tokio::time::Instant::now() > drain_until {
            return Err(too_large);
        }
    }
    if seen > limit {
        return Err(too_large);
    }
    Ok(collected.freeze())
}

/// A path under `/dead-letters/`: `<ns>/<name>`, then an optional
/// invocation id, then an optional `redrive`.
#[derive(Debug, PartialEq)]
struct DeadLetterRoute {
    function: FunctionRef,
    id: Option<InvocationId>,
    redrive: bool,
}

impl DeadLetterRoute {
    fn parse(rest: &str) -> Option<Self> {
        let mut parts = rest.trim_end_matches('/').split('/');
        let function = FunctionRef::new(parts.next()?, parts.next()?).ok()?;
        let (id, redrive) = match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => (None, false),
            (Some("redrive"), None, _) => (None, true),
            (Some(id), None, _) => (Some(InvocationId::parse(id)?), false),
            (Some(id), Some("redrive"), None) => (Some(InvocationId::parse(id)?), true),
            _ => return None,
        };
        Some(Self {
            function,
            id,
            redrive,
        })
    }
}

/// The body of a 202.
#[derive(serde::Serialize)]
struct Accepted<'a> {
    id: &'a InvocationId,
    function: &'a FunctionRef,
    location: &'a str,
    duplicate: bool,
}

fn function_response(response: InvocationResponse, id: &InvocationId) -> Response<Full<Bytes>> {
    let mut out = Response::new(Full::new(response.body));
    *out.status_mut() = response.status;
    let mut headers = response.headers;
    strip_hop_by_hop(&mut headers);
    // The body was collected; hyper sets the length.
    headers.remove(header::CONTENT_LENGTH);
    *out.headers_mut() = headers;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        out.headers_mut().insert("x-sluice-invocation-id", value);
    }
    out
}

fn require_method(
    method: &Method,
    expected: Method,
    allowed: &'static str,
) -> Result<(), (GatewayError, Option<InvocationId>)> {
    if *method == expected {
        return Ok(());
    }
    Err((
        GatewayError::MethodNotAllowed {
            method: method.to_string(),
            allowed,
        },
        None,
    ))
}

fn queue_error(e: QueueError) -> GatewayError {
    match e {
        QueueError::UnknownFunction(f) => GatewayError::UnknownFunction(f.to_string()),
        QueueError::Full { function, bound } => GatewayError::QueueFull {
            function: function.to_string(),
            bound,
        },
        QueueError::Unavailable(reason) => GatewayError::Unavailable(reason),
        QueueError::HeadersTooLarge(reason) => GatewayError::HeadersTooLarge(reason),
        QueueError::TooLarge(reason) => GatewayError::RequestTooLarge(reason),
        QueueError::BadOrderingKey(e) => GatewayError::BadRequest(e.to_string()),
    }
}

fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_paths_name_a_function_an_id_and_a_redrive() {
        let id = "6f1f8a3e-52b8-4c86-9d0e-7d0b3c8f6a11";
        let parsed = |p: &str| {
            DeadLetterRoute::parse(p).map(|r| (r.function.to_string(), r.id.is_some(), r.redrive))
        };
        let function = "default/echo".to_owned();
        for (path, expected) in [
            ("default/echo", Some((function.clone(), false, false))),
            ("default/echo/", Some((function.clone(), false, false))),
            (
                "default/echo/redrive",
                Some((function.clone(), false, true)),
            ),
            (
                &format!("default/echo/{id}"),
                Some((function.clone(), true, false)),
            ),
            (
                &format!("default/echo/{id}/redrive"),
                Some((function.clone(), true, true)),
            ),
            ("default/echo/not-an-id", None),
            (&format!("default/echo/{id}/purge"), None),
            (&format!("default/echo/{id}/redrive/more"), None),
            ("default", None),
            ("Default/echo", None),
        ] {
            assert_eq!(parsed(path), expected, "{path}");
        }
    }
}
