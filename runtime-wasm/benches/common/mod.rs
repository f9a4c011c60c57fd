//! What the runtime's benches share.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method};
use sluice_api::names::FunctionRef;
use sluice_api::{Invocation, InvocationId};

/// `GET /` of `function`, as the gateway would send it, with an hour to
/// run.
pub fn get_root(function: &FunctionRef) -> Invocation {
    Invocation {
        id: InvocationId::random(),
        function: function.clone(),
        method: Method::GET,
        path: "/".into(),
        query: None,
        forwarded_prefix: format!("/fn/{}/{}", function.namespace, function.name),
        headers: HeaderMap::new(),
        body: Bytes::new(),
        deadline: SystemTime::now() + Duration::from_secs(3600),
        traceparent: None,
    }
}

/// Samples per host: `SLUICE_BENCH_SAMPLES` when set (e.g. fewer for a run
/// under a profiler), else `default`.
pub fn samples(default: usize) -> usize {
    std::env::var("SLUICE_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One thread, as a runtime node's invocations each run on one.
pub fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sorts `samples`, prints their median, p90 and p99 in µs after `name`
/// (padded to `width`), and returns the median in µs.
pub fn report(name: &str, width: usize, samples: &mut [Duration]) -> f64 {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e6
    };
    println!(
        "  {name:<width$} median {:>8.1} µs, p90 {:>8.1} µs, p99 {:>8.1} µs",
        at(0.5),
        at(0.9),
        at(0.99)
    );
    at(0.5)
}
