//! In-process invocation cost of `hello`: new store + instantiate + handle +
//! collect, measured one at a time. Run with
//! `cargo bench -p sluice-runtime --bench invoke`.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method};
use sluice_api::{FunctionSpec, Invocation, InvocationId};
use sluice_runtime::{Outcome, Runtime, RuntimeConfig};

const WARMUP: usize = 2_000;
/// Override with `SLUICE_BENCH_SAMPLES` (e.g. for a run under callgrind).
const DEFAULT_SAMPLES: usize = 20_000;

fn main() {
    let samples_wanted: usize = std::env::var("SLUICE_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SAMPLES);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let wasm = std::fs::read(sluice_examples::component("hello")).unwrap();
        let spec: FunctionSpec =
            serde_json::from_value(serde_json::json!({ "module": { "file": "hello.wasm" } }))
                .unwrap();
        let function = runtime
            .prepare("default/hello".parse().unwrap(), &spec, &wasm)
            .unwrap();
        let invocation = Invocation {
            id: InvocationId::random(),
            function: function.function.clone(),
            method: Method::GET,
            path: "/".into(),
            query: None,
            forwarded_prefix: "/fn/default/hello".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            deadline: SystemTime::now() + Duration::from_secs(3600),
            traceparent: None,
        };
        let mut samples = Vec::with_capacity(samples_wanted);
        for i in 0..WARMUP + samples_wanted {
            let started = Instant::now();
            let outcome = runtime.invoke(&function, &invocation).await;
            let elapsed = started.elapsed();
            match outcome {
                Outcome::Responded(r) if r.status == 200 => {}
                other => panic!("hello failed: {other:?}"),
            }
            if i >= WARMUP {
                samples.push(elapsed);
            }
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "hello in-process (new store + instantiate + handle + collect), {samples_wanted} samples: \
             median {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
            at(0.5).as_secs_f64() * 1e6,
            at(0.9).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6,
        );
    });
}
