//! In-process invocation cost of `hello`: new store + instantiate + handle +
//! collect, one at a time, for Sluice's runtime and for a peer: a bare
//! wasmtime host with the pooling allocator's defaults and nothing else (no
//! limits, deadline, log capture or outbound policy). The two run in
//! alternating blocks so that machine noise lands on both. Run with
//! `cargo bench -p sluice-runtime --bench invoke`.

mod common;

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sluice_api::Outcome;
use sluice_api::{FunctionSpec, Invocation};
use sluice_runtime::{PreparedFunction, Runtime, RuntimeConfig};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

const WARMUP: usize = 2_000;
/// Samples per host; override with `SLUICE_BENCH_SAMPLES` (e.g. for a run
/// under callgrind).
const DEFAULT_SAMPLES: usize = 20_000;
const BLOCK: usize = 1_000;

fn main() {
    let samples_wanted = common::samples(DEFAULT_SAMPLES);
    let tokio = common::tokio();
    tokio.block_on(async {
        let wasm = std::fs::read(sluice_examples::component("hello")).unwrap();
        let sluice = SluiceHost::new(&wasm);
        let bare = BareHost::new(&wasm);
        let mut sluice_samples = Vec::with_capacity(samples_wanted);
        let mut bare_samples = Vec::with_capacity(samples_wanted);
        for _ in 0..WARMUP {
            sluice.invoke().await;
            bare.invoke().await;
        }
        while sluice_samples.len() < samples_wanted {
            let block = BLOCK.min(samples_wanted - sluice_samples.len());
            for _ in 0..block {
                let started = Instant::now();
                sluice.invoke().await;
                sluice_samples.push(started.elapsed());
            }
            for _ in 0..block {
                let started = Instant::now();
                bare.invoke().await;
                bare_samples.push(started.elapsed());
            }
        }
        println!("hello in-process: new store + instantiate + handle + collect, {samples_wanted} samples each");
        let sluice_median = common::report("sluice runtime", 26, &mut sluice_samples);
        let bare_median = common::report("bare pooled wasmtime host", 26, &mut bare_samples);
        println!("median ratio sluice / bare: {:.2}", sluice_median / bare_median);
    });
}

struct SluiceHost {
    runtime: Runtime,
    function: PreparedFunction,
    invocation: Invocation,
}

impl SluiceHost {
    fn new(wasm: &[u8]) -> Self {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let spec: FunctionSpec =
            serde_json::from_value(serde_json::json!({ "module": { "file": "hello.wasm" } }))
                .unwrap();
        let function = runtime
            .prepare("default/hello".parse().unwrap(), &spec, wasm)
            .unwrap();
        let invocation = common::get_root(&function.function);
        Self {
            runtime,
            function,
            invocation,
        }
    }

    async fn invoke(&self) {
        match self.runtime.invoke(&self.function, &self.invocation).await {
            Outcome::Responded(r) if r.status == 200 => {}
            other => panic!("hello failed: {other:?}"),
        }
    }
}

struct BareState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for BareState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

/// What a host gets from wasmtime with no tuning: async, the pooling
/// allocator with its default limits, a fresh default context per request.
struct BareHost {
    engine: Engine,
    pre: ProxyPre<BareState>,
}

impl BareHost {
    fn new(wasm: &[u8]) -> Self {
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(
            PoolingAllocationConfig::default(),
        ));
        let engine = Engine::new(&config).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
        let component = Component::new(&engine, wasm).unwrap();
        let pre = ProxyPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Self { engine, pre }
    }

    async fn invoke(&self) {
        let mut store = Store::new(
            &self.engine,
            BareState {
                wasi: WasiCtx::builder().build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
            },
        );
        let request = http::Request::builder()
            .uri("http://localhost/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .unwrap();
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .unwrap();
        let proxy = self.pre.instantiate_async(&mut store).await.unwrap();
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
            .unwrap();
        let response = receiver.await.unwrap().unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
    }
}
