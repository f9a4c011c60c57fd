//! Logs and traces of both binaries (`sluice-gateway`, `sluice-runtime`).
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text or
//! JSON lines. Traces are exported over OTLP (http/protobuf) when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set: the gateway opens a span per
//! invocation as a child of the caller's W3C `traceparent`, the runtime a
//! span per attempt as a child of the gateway's, and the function sees the
//! attempt's `traceparent`. Without an endpoint no span is created and the
//! caller's `traceparent` reaches the function unchanged.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use sluice_api::Invocation;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The target of Sluice's trace spans: exported, never logged.
pub const SPAN_TARGET: &str = "sluice::trace";
const TRACEPARENT: &str = "traceparent";

#[derive(Debug, thiserror::Error)]
#[error("cannot set up trace export: {0}")]
pub struct TelemetryError(String);

/// Keeps trace export running; [`Telemetry::shutdown`] sends what is left.
#[derive(Debug)]
#[must_use = "shut it down before exiting, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sets up logging, and trace export when an OTLP endpoint is
    /// configured. Call once, inside the tokio runtime, before anything
    /// logs.
    pub fn init(service: &'static str, json_logs: bool) -> Result<Self, TelemetryError> {
        let mut filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        if let Ok(directive) = format!("{SPAN_TARGET}=off").parse() {
            filter = filter.add_directive(directive);
        }
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs = if json_logs {
            logs.json().with_filter(filter).boxed()
        } else {
            logs.with_filter(filter).boxed()
        };
        let provider = if export_configured() {
            Some(tracer_provider(service)?)
        } else {
            None
        };
        let traces = provider.as_ref().map(|provider| {
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_filter(Targets::new().with_target(SPAN_TARGET, LevelFilter::INFO))
        });
        tracing_subscriber::registry()
            .with(logs)
            .with(traces)
            .try_init()
            .map_err(|e| TelemetryError(e.to_string()))?;
        if provider.is_some() {
            tracing::info!(service, "exporting traces over OTLP");
        }
        Ok(Self { provider })
    }

    /// Exports the spans still buffered.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The exporter's requests run on this runtime, so wait for them off
        // its worker threads.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the last spans could not be exported"),
            Err(e) => tracing::warn!(error = %e, "the last spans could not be exported"),
        }
    }
}

fn export_configured() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn tracer_provider(service: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient::new()?)
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// The OTLP exporter's HTTP client. The SDK exports from a thread of its
/// own with no tokio runtime, and hyper needs one: requests are spawned on
/// the runtime that set telemetry up.
#[derive(Debug)]
struct ExportClient {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Longest an export request may take; the SDK drops the batch after it.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector answer read.
const MAX_EXPORT_RESPONSE: usize = 1 << 20;

impl ExportClient {
    fn new() -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| TelemetryError("not inside a tokio runtime".into()))?;
        Ok(Self {
            runtime,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_EXPORT_RESPONSE)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        // The timer too must be made on the runtime.
        self.runtime
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await })
            .await?
            .map_err(|_| format!("no answer from the collector within {EXPORT_TIMEOUT:?}"))?
    }
}

/// The gateway's span of one invocation, a child of the caller's
/// `traceparent`; the invocation then carries the span's own onward.
pub fn gateway_span(invocation: &mut Invocation) -> Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "invocation",
        otel.kind = "server",
        sluice.function = %invocation.function,
        sluice.invocation_id = %invocation.id,
        http.request.method = %invocation.method,
    );
    if let Some(own) = continue_trace(&span, invocation.traceparent.as_deref()) {
        invocation.traceparent = Some(own);
    }
    span
}

/// The runtime's span of one attempt, and its own `traceparent` when it is
/// exported (the function gets that one, else the invocation's).
pub fn attempt_span(invocation: &Invocation) -> (Span, Option<String>) {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "attempt",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        sluice.function = %invocation.function,
        sluice.invocation_id = %invocation.id,
        sluice.outcome = tracing::field::Empty,
    );
    let own = continue_trace(&span, invocation.traceparent.as_deref());
    (span, own)
}

/// Makes `span` a child of `traceparent` (if any) and returns the span's
/// own `traceparent`; `None` when the span is not exported.
fn continue_trace(span: &Span, traceparent: Option<&str>) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    if let Some(traceparent) = traceparent {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Carrier(HashMap::from([(
                TRACEPARENT.to_owned(),
                traceparent.to_owned(),
            )])))
        });
        let _ = span.set_parent(parent);
    }
    let mut carrier = Carrier(HashMap::new());
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&span.context(), &mut carrier);
    });
    carrier.0.remove(TRACEPARENT)
}

struct Carrier(HashMap<String, String>);

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}
