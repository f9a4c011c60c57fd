//! One attempt at an invocation: a fresh store, instantiate, handle,
//! collect; and [`Runtime::attempt`], which also counts and logs it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use sluice_api::invocation::strip_hop_by_hop;
use sluice_api::logs::Captured;
use sluice_api::names::FunctionRef;
use sluice_api::{
    Failure, FailureKind, FunctionSpec, Invocation, InvocationResponse, ModuleDigest, Outcome,
    Usage,
};
use sluice_serve::telemetry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

use crate::RuntimeError;
use crate::engine::Runtime;
use crate::host::{Host, LogSink, MemoryLimiter, Meter, OutboundPolicy};
use crate::metrics::Metrics;

/// The limits an invocation of a function runs under.
#[derive(Clone, Debug)]
pub struct FunctionLimits {
    pub timeout: Duration,
    pub memory: u64,
    /// `spec.scaling.weight`: its share of the runtime's instances among
    /// its namespace's functions ([`crate::share`]).
    pub weight: u32,
}

/// A function ready to be invoked: its component pre-instantiated and its
/// spec resolved into what each store needs.
#[derive(Clone)]
pub struct PreparedFunction {
    pub function: FunctionRef,
    pub digest: ModuleDigest,
    pub limits: FunctionLimits,
    pre: ProxyPre<Host>,
    env: Arc<[(String, String)]>,
    allowed_outbound: Arc<[String]>,
}

impl PreparedFunction {
    pub(crate) fn component(&self) -> &wasmtime::component::Component {
        self.pre.instance_pre().component()
    }
}

impl std::fmt::Debug for PreparedFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedFunction")
            .field("function", &self.function)
            .field("digest", &self.digest)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

pub(crate) fn bind(
    function: FunctionRef,
    spec: &FunctionSpec,
    digest: ModuleDigest,
    pre: ProxyPre<Host>,
) -> PreparedFunction {
    PreparedFunction {
        function,
        digest,
        limits: FunctionLimits {
            timeout: spec.timeout.0,
            memory: spec.limits.memory.0,
            weight: spec.scaling.weight,
        },
        pre,
        env: spec
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        allowed_outbound: spec.allowed_outbound_hosts.iter().cloned().collect(),
    }
}

/// One attempt's outcome and what it used.
#[derive(Debug)]
pub struct Attempted {
    pub outcome: Outcome,
    /// `None` when no instance ran (expired or cancelled while waiting for
    /// one, or the runtime stopping).
    pub usage: Option<Usage>,
    /// What the guest wrote to stdout and stderr, within the runtime's
    /// `max_log_bytes` per stream (also logged to the runtime's log as it
    /// came). Empty when no instance ran.
    pub logs: Captured,
}

/// What an attempt used so far: its guest's [`Meter`] and when it took an
/// instance.
#[derive(Debug, Default)]
struct Metered {
    meter: Arc<Meter>,
    started: OnceLock<std::time::Instant>,
    /// Either of the attempt's log sinks (they share what they keep).
    logs: OnceLock<LogSink>,
}

impl Metered {
    fn usage(&self, epoch_tick: Duration) -> Option<Usage> {
        let started = self.started.get()?;
        let tick_ms = u64::try_from(epoch_tick.as_millis()).unwrap_or(u64::MAX);
        Some(Usage {
            wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            guest_cpu_ms: self
                .meter
                .ticks
                .load(Ordering::Relaxed)
                .saturating_mul(tick_ms),
            cpu_resolution_ms: tick_ms,
            peak_memory_bytes: self.meter.peak_memory.load(Ordering::Relaxed),
        })
    }
}

/// Raised by the epoch callback when an attempt's time is up.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;

impl Runtime {
    /// Compiles (or finds in the cache) `wasm` and binds it to a spec.
    /// Compilation is CPU-bound: call it from a blocking context.
    pub fn prepare(
        &self,
        function: FunctionRef,
        spec: &FunctionSpec,
        wasm: &[u8],
    ) -> Result<PreparedFunction, RuntimeError> {
        self.check_limits(spec)?;
        let (digest, pre) =
            self.inner
                .cache
                .get_or_compile(&self.inner.engine, &self.inner.linker, wasm)?;
        Ok(bind(function, spec, digest, pre))
    }

    /// Binds a component this process already compiled, if it did.
    pub fn prepare_cached(
        &self,
        function: FunctionRef,
        spec: &FunctionSpec,
        digest: &ModuleDigest,
    ) -> Result<Option<PreparedFunction>, RuntimeError> {
        self.check_limits(spec)?;
        Ok(self
            .inner
            .cache
            .get(digest)
            .map(|pre| bind(function, spec, digest.clone(), pre)))
    }

    /// Whether this process holds the component of `digest` compiled.
    pub(crate) fn holds(&self, digest: &ModuleDigest) -> bool {
        self.inner.cache.contains(digest)
    }

    pub(crate) fn check_limits(&self, spec: &FunctionSpec) -> Result<(), RuntimeError> {
        let max = self.inner.config.max_instance_memory;
        if spec.limits.memory > max {
            return Err(RuntimeError::MemoryLimitTooLarge {
                limit: spec.limits.memory.to_string(),
                max: max.to_string(),
            });
        }
        if let Some(budget) = self.inner.share.memory()
            && self.inner.config.instance_reservation(spec.limits.memory) > budget.total()
        {
            return Err(RuntimeError::MemoryBudgetTooSmall {
                limit: spec.limits.memory.to_string(),
                overhead: sluice_api::ByteSize(self.inner.config.instance_overhead()).to_string(),
                budget: sluice_api::ByteSize(budget.total()).to_string(),
            });
        }
        Ok(())
    }

    /// Runs one attempt of `invocation` ([`Runtime::invoke`]), counts it in
    /// `metrics` and logs why it failed, if it did.
    /// `cancel` ends it early ([`Runtime::invoke_cancellable`]).
    pub async fn attempt(
        &self,
        function: &PreparedFunction,
        invocation: &Invocation,
        metrics: &Metrics,
        cancel: &CancellationToken,
    ) -> Attempted {
        let started = std::time::Instant::now();
        let attempted = self.invoke_cancellable(function, invocation, cancel).await;
        let outcome = &attempted.outcome;
        metrics.attempt_finished(
            &invocation.function,
            outcome.label(),
            started.elapsed().as_secs_f64(),
        );
        if let Some(usage) = &attempted.usage {
            metrics.used(&invocation.function, usage);
        }
        if let Some(reason) = outcome.reason() {
            tracing::info!(function = %invocation.function, invocation = %invocation.id, %reason, "attempt failed");
        }
        attempted
    }

    /// Runs one attempt of `invocation`, bounded by the function's timeout
    /// and the invocation's deadline, whichever comes first.
    pub async fn invoke(&self, function: &PreparedFunction, invocation: &Invocation) -> Outcome {
        self.invoke_cancellable(function, invocation, &CancellationToken::new())
            .await
            .outcome
    }

    /// [`Runtime::invoke`], ended by `cancel` as well: an attempt cancelled
    /// before it took an instance never runs; a running one is dropped
    /// (its store with it) at the guest's next epoch yield, within one
    /// `epoch_tick`, and fails [`FailureKind::Cancelled`].
    pub async fn invoke_cancellable(
        &self,
        function: &PreparedFunction,
        invocation: &Invocation,
        cancel: &CancellationToken,
    ) -> Attempted {
        let metered = Metered::default();
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => failed(FailureKind::Cancelled, sluice_api::record::CANCELLED_REASON),
            outcome = self.invoke_metered(function, invocation, &metered) => outcome,
        };
        Attempted {
            outcome,
            usage: metered.usage(self.inner.config.epoch_tick),
            logs: metered.logs.get().map(LogSink::finish).unwrap_or_default(),
        }
    }

    async fn invoke_metered(
        &self,
        function: &PreparedFunction,
        invocation: &Invocation,
        metered: &Metered,
    ) -> Outcome {
        // The timeout counts from when an instance (and memory for it) is
        // free, so a busy pool delays an attempt rather than cutting it
        // short; the caller's deadline still bounds the wait.
        let expired = || {
            failed(
                FailureKind::Expired,
                "the caller's deadline passed before the invocation ran",
            )
        };
        // An instance slot and its memory together, handed out fairly
        // between the functions this runtime serves ([`crate::share`]).
        let bytes = match self.inner.share.memory() {
            Some(_) => self
                .inner
                .config
                .instance_reservation(sluice_api::ByteSize(function.limits.memory)),
            None => 0,
        };
        let admitted = self
            .inner
            .share
            .admit(&function.function, function.limits.weight, bytes);
        let _admitted = match tokio::time::timeout(invocation.time_left(), admitted).await {
            Ok(Some(admitted)) => admitted,
            Ok(None) => return failed(FailureKind::Internal, "the runtime is shutting down"),
            Err(_) => return expired(),
        };
        // A free instance is taken even at the deadline: check it again.
        let time_left = invocation.time_left();
        if time_left.is_zero() {
            return expired();
        }
        let budget = time_left.min(function.limits.timeout);
        let deadline = Instant::now() + budget;
        let _ = metered.started.set(std::time::Instant::now());
        let [stdout, stderr] = LogSink::pair(
            function.function.clone(),
            invocation.id.clone(),
            self.inner.config.max_log_bytes,
        );
        let _ = metered.logs.set(stdout.clone());
        let (span, own_traceparent) = telemetry::attempt_span(invocation);
        let store = self.new_store(function, deadline, &stdout, &stderr, metered.meter.clone());
        let attempt = self.run(
            function,
            invocation,
            own_traceparent
                .as_deref()
                .or(invocation.traceparent.as_deref()),
            store,
        );
        let outcome =
            match tokio::time::timeout_at(deadline, attempt.instrument(span.clone())).await {
                Ok(outcome) => outcome,
                Err(_) => timed_out(budget, function.limits.timeout),
            };
        if !span.is_disabled() {
            match &outcome {
                Outcome::Responded(r) => span.record("sluice.outcome", r.status.as_u16()),
                Outcome::Failed(f) => span
                    .record("sluice.outcome", f.kind.as_str())
                    .record("otel.status_code", "error"),
            };
        }
        outcome
    }

    async fn run(
        &self,
        function: &PreparedFunction,
        invocation: &Invocation,
        traceparent: Option<&str>,
        store: Store<Host>,
    ) -> Outcome {
        let request = match incoming_request(invocation, traceparent) {
            Ok(r) => r,
            Err(e) => {
                return failed(
                    FailureKind::BadInvocation,
                    format!("the invocation is not a valid HTTP request: {e}"),
                );
            }
        };
        self.exchange(function, store, request).await
    }

    /// A fresh store for one attempt: the function's environment, memory
    /// limit, outbound policy and log sinks, host resources bounded, and an
    /// epoch callback that ends the guest at `deadline` and counts in
    /// `meter` the ticks that find it running.
    fn new_store(
        &self,
        function: &PreparedFunction,
        deadline: Instant,
        stdout: &LogSink,
        stderr: &LogSink,
        meter: Arc<Meter>,
    ) -> Store<Host> {
        let wasi = WasiCtx::builder()
            .envs(&function.env)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        // Host-side state a guest creates (fields, streams, pollables) is
        // not linear memory: these bounds keep header maps under 64 MiB.
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        let host = Host {
            wasi,
            http,
            table,
            limiter: MemoryLimiter::new(
                usize::try_from(function.limits.memory).unwrap_or(usize::MAX),
                meter.clone(),
            ),
            outbound: OutboundPolicy {
                allowed: function.allowed_outbound.clone(),
                egress: self.inner.config.egress.clone(),
            },
        };
        let mut store = Store::new(&self.inner.engine, host);
        store.limiter(|host| &mut host.limiter);
        let deadline_std = deadline.into_std();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            // The callback runs only while the guest executes wasm, once per
            // tick: the guest's CPU time, in ticks.
            meter.ticks.fetch_add(1, Ordering::Relaxed);
            if std::time::Instant::now() >= deadline_std {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                // Yield so a busy guest cannot starve the executor.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Hands `request` to a new instance in `store` and collects its
    /// response, racing the guest against the response.
    async fn exchange(
        &self,
        function: &PreparedFunction,
        mut store: Store<Host>,
        request: Request<Full<Bytes>>,
    ) -> Outcome {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let handles = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .and_then(|req| {
                let out = store.data_mut().http().new_response_outparam(sender)?;
                Ok((req, out))
            });
        let (req, out) = match handles {
            Ok(h) => h,
            Err(e) => {
                return failed(
                    FailureKind::Internal,
                    format!("cannot pass the request to the guest: {e:#}"),
                );
            }
        };

        let max_body = self.inner.config.max_response_body;
        let collect = collect_response(receiver, max_body);
        tokio::pin!(collect);
        // Race the guest against the response: a complete response ends
        // the attempt even if the guest lingers, and a guest that ends
        // first (trap or not) releases the store, so the response side
        // resolves too.
        let (guest_result, early) = {
            let guest = async {
                let proxy = function.pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            tokio::pin!(guest);
            tokio::select! {
                collected = &mut collect => (Ok(()), Some(collected)),
                result = &mut guest => (result, None),
            }
        };
        let memory_refused = store.data().limiter.refused;
        drop(store);
        if let Err(e) = guest_result {
            return Outcome::Failed(classify_trap(&e, memory_refused, function));
        }
        let collected = match early {
            Some(collected) => collected,
            None => collect.await,
        };
        match collected {
            Some(Ok(response)) => Outcome::Responded(response),
            Some(Err(failure)) => Outcome::Failed(failure),
            None => failed(
                FailureKind::NoResponse,
                "the function returned without setting a response",
            ),
        }
    }
}

/// Most host resources (header maps, streams, pollables…) one instance
/// may hold at once; wasmtime's default is a million.
const MAX_HOST_RESOURCES: usize = 1024;
/// Largest header map a guest may build, names and values together.
const MAX_FIELDS_BYTES: usize = 64 << 10;

type GuestResponse =
    Result<hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>, ErrorCode>;

/// The response the guest sets, with its body read up to `max_body`;
/// `None` when the guest never set one.
async fn collect_response(
    receiver: tokio::sync::oneshot::Receiver<GuestResponse>,
    max_body: usize,
) -> Option<Result<InvocationResponse, Failure>> {
    let response = match receiver.await.ok()? {
        Ok(response) => response,
        Err(code) => {
            return Some(Err(Failure::new(
                FailureKind::Trap,
                format!("the function set an error response: {code:?}"),
            )));
        }
    };
    let (parts, body) = response.into_parts();
    Some(match Limited::new(body, max_body).collect().await {
        Ok(body) => Ok(InvocationResponse {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        }),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Failure {
            kind: FailureKind::ResponseTooLarge,
            reason: format!("the response body is larger than {max_body} bytes"),
        }),
        Err(e) => Err(Failure::new(
            FailureKind::Trap,
            format!("the response body failed: {e}"),
        )),
    })
}

fn classify_trap(
    e: &wasmtime::Error,
    memory_refused: bool,
    function: &PreparedFunction,
) -> Failure {
    if e.downcast_ref::<DeadlineExceeded>().is_some() {
        return Failure {
            kind: FailureKind::Timeout,
            reason: format!(
                "the function ran past its deadline ({} timeout)",
                sluice_api::Duration(function.limits.timeout)
            ),
        };
    }
    if memory_refused {
        return Failure {
            kind: FailureKind::MemoryLimit,
            reason: format!(
                "the function exceeded its memory limit of {}",
                sluice_api::ByteSize(function.limits.memory)
            ),
        };
    }
    let reason = match e.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => {
            "the function overflowed its stack (unbounded recursion?)".to_owned()
        }
        // Rust and C guests keep their stack in linear memory: running it
        // out shows as this, not as wasm's own stack overflow.
        Some(Trap::MemoryOutOfBounds) => {
            "the function trapped: out of bounds memory access (a guest whose stack lives in linear memory, as Rust's and C's do, also ends this way when it runs out: unbounded recursion?)".to_owned()
        }
        Some(trap) => format!("the function trapped: {trap}"),
        None => format!("the function failed: {e:#}"),
    };
    Failure::new(FailureKind::Trap, reason)
}

fn timed_out(budget: Duration, timeout: Duration) -> Outcome {
    let (budget, timeout) = (sluice_api::Duration(budget), sluice_api::Duration(timeout));
    let reason = if budget == timeout {
        format!("the function did not answer within its {timeout} timeout")
    } else {
        format!(
            "the function did not answer before the invocation's deadline ({budget} were left of its {timeout} timeout)"
        )
    };
    failed(FailureKind::Timeout, reason)
}

fn failed(kind: FailureKind, reason: impl Into<String>) -> Outcome {
    Outcome::Failed(Failure::new(kind, reason))
}

/// The HTTP request the component sees: the stripped path, the caller's
/// headers, plus `X-Forwarded-Prefix`, `X-Sluice-Invocation-Id` and
/// `traceparent`.
fn incoming_request(
    invocation: &Invocation,
    traceparent: Option<&str>,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let authority = invocation
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.parse::<http::uri::Authority>().is_ok())
        .unwrap_or("localhost")
        .to_owned();
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(invocation.path_and_query())
        .build()?;
    let mut request = Request::builder()
        .method(invocation.method.clone())
        .uri(uri)
        .body(Full::new(invocation.body.clone()))?;
    let headers = request.headers_mut();
    headers.extend(invocation.headers.clone());
    // An invocation may come from any NATS publisher, not only a gateway:
    // the request is framed here, by its body.
    strip_hop_by_hop(headers);
    if headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, invocation.body.len().into());
    }
    if let Ok(prefix) = HeaderValue::from_str(&invocation.forwarded_prefix) {
        headers.insert("x-forwarded-prefix", prefix);
    }
    if let Ok(id) = HeaderValue::from_str(invocation.id.as_str()) {
        headers.insert("x-sluice-invocation-id", id);
    }
    if let Some(tp) = traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert("traceparent", tp);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use sluice_api::InvocationId;

    use super::*;

    #[test]
    fn the_request_is_framed_by_its_body_not_by_the_invocations_headers() {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-length", "999".parse().unwrap());
        headers.insert("transfer-encoding", "chunked".parse().unwrap());
        headers.insert("connection", "x-private".parse().unwrap());
        headers.insert("x-private", "secret".parse().unwrap());
        headers.insert("x-kept", "yes".parse().unwrap());
        let invocation = Invocation {
            id: InvocationId::random(),
            function: "default/echo".parse().unwrap(),
            method: http::Method::POST,
            path: "/".into(),
            query: None,
            forwarded_prefix: String::new(),
            headers,
            body: Bytes::from_static(b"four"),
            deadline: SystemTime::now(),
            traceparent: None,
        };
        let request = incoming_request(&invocation, None).unwrap();
        let h = request.headers();
        assert_eq!(h["content-length"], "4");
        assert_eq!(h["x-kept"], "yes");
        for gone in ["transfer-encoding", "connection", "x-private"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
    }
}
