//! The engine, built once per process, and its epoch ticker.

use std::sync::Arc;
use std::time::Duration;

use sluice_api::ByteSize;
use sluice_api::egress::EgressPolicy;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::RuntimeError;
use crate::budget::{self, MemoryBudget};
use crate::cache::{CacheUse, ComponentCache};
use crate::host::Host;
use crate::share::Share;

/// Process-wide runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Instances that may exist at once across all functions; invocations
    /// beyond it wait. Default: 256.
    pub max_instances: u32,
    /// The largest `limits.memory` a function may ask for. Default: 1Gi.
    pub max_instance_memory: ByteSize,
    /// How often running guests are interrupted to check their deadline and
    /// let other tasks run. Default: 5ms.
    pub epoch_tick: Duration,
    /// Largest response body a function may send. Default: 6Mi.
    pub max_response_body: usize,
    /// Bytes of stdout/stderr kept per attempt and stream, each line
    /// counting `sluice_api::logs::LINE_OVERHEAD` besides its text; the
    /// rest is dropped and counted in the attempt's log. Default: 64Ki
    /// (`sluice_api::logs::DEFAULT_ATTEMPT_LOG_BYTES`).
    pub max_log_bytes: usize,
    /// Which addresses callbacks and functions' outbound HTTP may reach
    /// (see `sluice_api::egress`). Default: public addresses only.
    pub egress: Arc<EgressPolicy>,
    /// Bytes the instances alive at once may reserve together (each its
    /// function's `limits.memory` plus [`RuntimeConfig::instance_overhead`]);
    /// invocations beyond it wait. `None`: no budget, as for a process
    /// without a memory limit. Default: `None` (`sluice-runtime` sizes it
    /// from its cgroup's memory limit).
    pub memory_budget: Option<ByteSize>,
    /// Bytes of compiled components kept in memory; past it the least
    /// recently used are dropped and loaded again (from the precompiled
    /// artifact) on their next invocation. Part of the process's own
    /// share of memory, outside `memory_budget`. Default: 64Mi.
    pub component_cache: ByteSize,
    /// Whether one compile spreads over every CPU (wasmtime's thread pool,
    /// shared by all compiles of the process). The runtime node turns it
    /// off: it compiles functions side by side, one per CPU
    /// (`node::loader`), so that a small component's compile never queues
    /// behind a large one's work in that pool. Default: true.
    pub parallel_compilation: bool,
}

/// Each instance's fiber stack (wasmtime's async stack), bytes.
const ASYNC_STACK: usize = 2 << 20;

impl RuntimeConfig {
    /// Bytes an instance may hold outside its linear memory (its stack,
    /// the response collected from it, its log buffers), reserved from the
    /// memory budget beside its `limits.memory`.
    pub fn instance_overhead(&self) -> u64 {
        budget::instance_overhead(ASYNC_STACK, self.max_response_body, self.max_log_bytes)
    }

    /// What an instance of a function with `limits.memory` = `memory`
    /// reserves from the memory budget.
    pub fn instance_reservation(&self, memory: ByteSize) -> u64 {
        budget::instance_reservation(memory.0, self.instance_overhead())
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 256,
            max_instance_memory: ByteSize(1 << 30),
            epoch_tick: Duration::from_millis(5),
            max_response_body: 6 << 20,
            max_log_bytes: sluice_api::logs::DEFAULT_ATTEMPT_LOG_BYTES,
            egress: Arc::default(),
            memory_budget: None,
            component_cache: ByteSize(64 << 20),
            parallel_compilation: true,
        }
    }
}

/// The engine, linker and component cache shared by every invocation.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<Host>,
    pub(crate) cache: ComponentCache,
    pub(crate) config: RuntimeConfig,
    /// Bounds live instances to the pool's size, so that a burst waits
    /// instead of failing to allocate, and the memory they may hold
    /// together; shared fairly between functions ([`Share`]).
    pub(crate) share: Arc<Share>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker thread, which stops
    /// once the runtime is dropped.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine_error = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            // Components built from Rust hold one core module with one
            // memory; other toolchains add adapters and shims.
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_instance_memory.0 as usize)
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .table_elements(100_000)
            // Keep the hot start of each fiber stack resident so
            // re-instantiation does not fault it in again (measured: hello's
            // median 121µs -> 81µs).
            .async_stack_keep_resident(32 << 10)
            // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), a freed memory
            // is reset by copying back only the pages the guest wrote, up to
            // this much, instead of madvise, which costs a TLB-shootdown IPI
            // now and a page fault per page on the next run (measured:
            // 4 faults and ~30µs of system time per hello before, none
            // after). It bounds what an idle pool keeps resident to
            // max_instances x 256KiB.
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(16 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20)
            .async_stack_size(ASYNC_STACK)
            .parallel_compilation(config.parallel_compilation)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(engine_error)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_error)?;

        spawn_epoch_ticker(&engine, config.epoch_tick)
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                share: Share::new(
                    config.max_instances as usize,
                    config.memory_budget.map(|b| MemoryBudget::new(b.0)),
                ),
                cache: ComponentCache::new(config.component_cache.0),
                engine,
                linker,
                config,
            }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The compiled components held in memory now.
    pub fn component_cache_use(&self) -> CacheUse {
        self.inner.cache.usage()
    }

    /// The memory budget, if the runtime has one.
    pub fn memory_budget(&self) -> Option<&Arc<MemoryBudget>> {
        self.inner.share.memory()
    }
}

fn spawn_epoch_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        })?;
    Ok(())
}
