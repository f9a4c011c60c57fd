//! Loading a function's component when an invocation needs it: from this
//! process's memory, the precompiled artifact on disk, the artifact another
//! runtime stored in the shared bucket (`sluice-artifacts`), or the module
//! store (then compiled, and the artifact kept on disk and shared). A
//! runtime with no folder for artifacts loads those of the shared bucket
//! straight from memory. A registered function that is
//! never invoked holds no component; one that waits never waits for
//! another function's compile: loads of different digests run side by
//! side, as many compiling at once as the process has CPUs, first come
//! first served; loads of one digest run once, the others waiting for it.
//!
//! A pool node (unless started with `--precompile-registered=false`) also
//! compiles each newly registered component ahead of its first invocation
//! ([`Loader::precompile`]), while no invocation waits for a load, and
//! stores it in the shared bucket, keeping it in memory only where the
//! component cache has room to spare (a pool runtime does the same with
//! what another stored): a function's first invocation is then no load at
//! all on a runtime that holds it, and a download and a deserialize, not a
//! compile, on any other. An invocation that needs the component
//! while it compiles ahead takes the compiled bytes as the compile ends
//! (the compile's thread raised to normal priority for it), never waiting
//! for the upload, and never compiling the same component twice. Where a
//! thread's priority cannot be raised again (no `CAP_SYS_NICE`), the
//! compile ahead runs at normal priority from the start.

use sluice_serve::sync;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::object_store;
use sluice_api::names::FunctionRef;
use sluice_api::{Failure, FailureKind, FunctionSpec, ModuleDigest, Outcome};
use sluice_nats::layout::{FetchError, Layout};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::{PreparedFunction, Runtime, RuntimeError};

/// How often a compile ahead that waits for invocations' loads to end
/// looks again.
const YIELD_TO_DEMAND: Duration = Duration::from_millis(100);

/// Loads components for every worker of a node.
#[derive(Debug)]
pub(crate) struct Loader {
    runtime: Runtime,
    layout: Layout,
    /// Where precompiled components are kept; `None` keeps none.
    artifacts: Option<PathBuf>,
    /// Whether components are loaded from, and stored to, the shared
    /// bucket (`sluice-artifacts`): through `artifacts`, or straight from
    /// memory without it.
    shared: bool,
    metrics: Metrics,
    /// Compiles under way at once: one per CPU the process may use (each
    /// on one thread: the node turns wasmtime's parallel compilation off),
    /// started in arrival order.
    cpus: Semaphore,
    /// One gate per digest being loaded, so a digest loads once.
    loading: Mutex<HashMap<ModuleDigest, Arc<tokio::sync::Mutex<()>>>>,
    /// Compile registered components ahead of their first invocation
    /// (with `shared` only: the bucket is where they are kept).
    ahead: bool,
    /// Digests already looked at for [`Loader::precompile`]: one look per
    /// component, however many functions share it.
    looked_at: Mutex<HashSet<ModuleDigest>>,
    /// One compile ahead at a time, beside (never holding a CPU from) the
    /// compiles invocations wait for.
    one_ahead: Semaphore,
    /// Whether a compile ahead runs at the lowest CPU priority: only where
    /// a thread's priority can be raised again ([`can_raise_priority`]),
    /// so that an invocation waiting for it never waits behind the lowest.
    ahead_lowered: bool,
    /// Compiles ahead from the moment their module is fetched until their
    /// artifact is stored: a load of the digest takes its bytes.
    under_way: Mutex<HashMap<ModuleDigest, Arc<Ahead>>>,
    /// Loads invocations wait for, under way: a compile ahead starts only
    /// while there are none, so it takes CPU from no invocation it could
    /// avoid.
    demand: AtomicUsize,
}

/// A function as a worker serves it: its spec and digest, its component
/// loaded only when an invocation needs it.
#[derive(Debug)]
pub(crate) struct Served {
    pub function: FunctionRef,
    pub spec: FunctionSpec,
    pub digest: ModuleDigest,
    pub loader: Arc<Loader>,
}

impl Served {
    /// The function bound to its component, loading the component first
    /// if this process does not hold it. A load that fails is the
    /// attempt's failure (retryable: the module store may be back later).
    pub async fn prepared(&self) -> Result<PreparedFunction, Outcome> {
        self.loader
            .prepared(&self.function, &self.spec, &self.digest)
            .await
            .map_err(|e| {
                tracing::error!(function = %self.function, digest = %self.digest, error = %e, "cannot load the function's component");
                Outcome::Failed(Failure::new(
                    FailureKind::Internal,
                    format!("the runtime cannot load the function's component: {e}"),
                ))
            })
    }
}

/// A compile ahead under way.
#[derive(Debug)]
struct Ahead {
    /// Whether its thread lowers its priority ([`Loader::ahead_lowered`]).
    lowered: bool,
    thread: Mutex<AheadThread>,
    /// The artifact once compiled; closed without one if the compile failed.
    compiled: tokio::sync::watch::Receiver<Option<Arc<Vec<u8>>>>,
}

/// The compiling thread, as far as its priority goes.
#[derive(Debug, Default)]
struct AheadThread {
    /// Known once it runs.
    tid: Option<rustix::thread::Pid>,
    /// A load waits for it: it keeps (or is given back) normal priority.
    urgent: bool,
}

impl Ahead {
    /// Called by its compiling thread first: the lowest CPU priority
    /// (where it can be raised again), unless a load already waits for it,
    /// so that a compile nobody waits for yet takes CPU from no
    /// invocation.
    fn started(&self) {
        let mut thread = sync::lock(&self.thread);
        let tid = rustix::thread::gettid();
        if self.lowered
            && !thread.urgent
            && let Err(e) = rustix::process::setpriority_process(Some(tid), 19)
        {
            tracing::debug!(error = %e, "cannot lower the compile's CPU priority");
        }
        thread.tid = Some(tid);
    }

    /// Marks the compile as waited for and gives its thread normal
    /// priority back. False when that fails (it was possible at start):
    /// the load then compiles at normal priority itself rather than wait
    /// behind the lowest.
    fn hurry(&self) -> bool {
        let mut thread = sync::lock(&self.thread);
        thread.urgent = true;
        match thread.tid {
            None => true,
            Some(_) if !self.lowered => true,
            Some(tid) => match rustix::process::setpriority_process(Some(tid), 0) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot raise the compile ahead's CPU priority; the invocation compiles the component itself");
                    false
                }
            },
        }
    }
}

/// Whether this process may give a thread whose priority it lowered its
/// normal priority back: raising a priority needs `CAP_SYS_NICE` (or an
/// `RLIMIT_NICE` that allows it), which a container that drops every
/// capability lacks. Tried on a thread of its own, which ends with it.
fn can_raise_priority() -> bool {
    std::thread::spawn(|| {
        let tid = Some(rustix::thread::gettid());
        rustix::process::setpriority_process(tid, 19).is_ok()
            && rustix::process::setpriority_process(tid, 0).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// One load an invocation waits for, counted while it lives (a load
/// whose invocation went away is dropped mid-way).
struct Demand<'a>(&'a AtomicUsize);

impl<'a> Demand<'a> {
    fn count(loads: &'a AtomicUsize) -> Self {
        loads.fetch_add(1, Ordering::Relaxed);
        Self(loads)
    }
}

impl Drop for Demand<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stores a compiled component's artifact in the shared bucket under `key`,
/// logging the outcome: a failure only means other runtimes compile it too.
async fn put_shared(bucket: &object_store::ObjectStore, key: &str, bytes: &[u8]) {
    match bucket.put(key, &mut &bytes[..]).await {
        Ok(_) => tracing::info!(%key, bytes = bytes.len(), "shared the precompiled component"),
        Err(e) => {
            tracing::warn!(%key, error = %e, "cannot share the precompiled component (the bucket may be full); other runtimes compile it too")
        }
    }
}

/// Why an artifact could not be read from the shared bucket.
#[derive(Debug, thiserror::Error)]
enum SharedReadError {
    #[error(transparent)]
    Get(object_store::GetError),
    /// Among others, a digest that does not match what was stored.
    #[error(transparent)]
    Read(std::io::Error),
}

/// The bytes of object `key` of the shared bucket.
async fn read_shared(
    bucket: &object_store::ObjectStore,
    key: &str,
) -> Result<Vec<u8>, SharedReadError> {
    use tokio::io::AsyncReadExt as _;
    let mut object = bucket.get(key).await.map_err(SharedReadError::Get)?;
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(SharedReadError::Read)?;
    Ok(bytes)
}

/// What the shared bucket gave.
enum SharedArtifact {
    Loaded(PreparedFunction),
    /// None there (or the bucket unreachable, or no disk to keep it on).
    Missing,
    /// One there that cannot be loaded: to be replaced.
    Unusable,
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the loading task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the compiling thread failed: {0}")]
    Thread(String),
}

impl Loader {
    pub fn new(
        runtime: Runtime,
        layout: Layout,
        artifacts: Option<PathBuf>,
        shared: bool,
        ahead: bool,
        metrics: Metrics,
    ) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let ahead = ahead && shared;
        Self {
            runtime,
            layout,
            artifacts,
            shared,
            metrics,
            cpus: Semaphore::new(cpus),
            loading: Mutex::default(),
            ahead,
            looked_at: Mutex::default(),
            one_ahead: Semaphore::new(1),
            ahead_lowered: ahead && can_raise_priority(),
            under_way: Mutex::default(),
            demand: AtomicUsize::new(0),
        }
    }

    /// Compiles the component of `digest` in the background unless this
    /// process or the shared bucket holds it already, or an invocation's
    /// load of it is under way, and stores it in the bucket. It stays in
    /// memory only in room the component cache has free (never dropping
    /// another, and dropped first for one an invocation needs), as does
    /// one the bucket holds already: its first invocation here then loads
    /// nothing. Nothing is kept on disk, so registering many functions
    /// costs memory only up to the cache's budget. An invocation needing
    /// it meanwhile takes the compiled bytes ([`Loader::load`]). Failures
    /// are logged: the first invocation loads or compiles as before.
    pub fn precompile(self: &Arc<Self>, function: &FunctionRef, digest: &ModuleDigest) {
        if !self.ahead || !sync::lock(&self.looked_at).insert(digest.clone()) {
            return;
        }
        let (loader, function, digest) = (self.clone(), function.clone(), digest.clone());
        tokio::spawn(async move {
            let Ok(_one) = loader.one_ahead.acquire().await else {
                return;
            };
            while loader.demand.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(YIELD_TO_DEMAND).await;
            }
            if let Err(e) = loader.precompile_now(&digest).await {
                tracing::warn!(%function, %digest, error = %e, "cannot compile the component ahead of its first invocation; that invocation compiles it");
            }
        });
    }

    async fn precompile_now(&self, digest: &ModuleDigest) -> Result<(), LoadError> {
        let key = self.runtime.artifact_key(digest);
        if self.runtime.holds(digest) {
            return Ok(());
        }
        if let Ok(info) = self.layout.artifacts.info(&key).await {
            // Another runtime compiled it: held here too, room permitting.
            if info.size as u64 <= self.runtime.component_room() {
                self.gated(digest, self.hold_shared(&key, digest)).await;
            }
            return Ok(());
        }
        let started = Instant::now();
        let wasm = self.layout.fetch_module(digest).await?;
        let (done, compiled) = tokio::sync::watch::channel(None);
        let ahead = Arc::new(Ahead {
            lowered: self.ahead_lowered,
            thread: Mutex::default(),
            compiled,
        });
        {
            // Under the gates' lock: a load takes its gate before it looks
            // for a compile ahead, so either it finds this one or this one
            // finds its gate (or what it loaded) and leaves the component
            // to it.
            let gates = self.gates();
            if gates.contains_key(digest) || self.runtime.holds(digest) {
                return Ok(());
            }
            sync::lock(&self.under_way).insert(digest.clone(), ahead.clone());
        }
        let compiling = self.metrics.compile_started("ahead");
        let runtime = self.runtime.clone();
        let (sent, bytes) = tokio::sync::oneshot::channel();
        // A thread of its own, so that its priority can be lowered and
        // raised again without touching a pool thread.
        let spawned = std::thread::Builder::new()
            .name("sluice-precompile".into())
            .spawn({
                let (ahead, digest) = (ahead.clone(), digest.clone());
                move || {
                    ahead.started();
                    let _ = sent.send(runtime.compile_ahead(&digest, &wasm));
                }
            });
        let bytes = match spawned {
            Ok(_) => bytes
                .await
                .map_err(|_| LoadError::Thread("it ended without an answer".into()))
                .and_then(|r| r.map_err(LoadError::from)),
            Err(e) => Err(LoadError::Thread(e.to_string())),
        };
        drop(compiling);
        let (bytes, held) = match bytes {
            Ok((bytes, held)) => (Arc::new(bytes), held),
            Err(e) => {
                // Closes `compiled`: a load waiting for it compiles.
                sync::lock(&self.under_way).remove(digest);
                return Err(e);
            }
        };
        tracing::info!(%key, seconds = started.elapsed().as_secs_f64(), held, "compiled ahead of its first invocation");
        done.send_replace(Some(bytes.clone()));
        // Handed to loads until stored: one arriving before the upload ends
        // takes the bytes rather than compiling again.
        put_shared(&self.layout.artifacts, &key, &bytes).await;
        sync::lock(&self.under_way).remove(digest);
        Ok(())
    }

    /// Keeps in memory, room permitting, the artifact of `digest` another
    /// runtime stored under `key`, so that its first invocation here loads
    /// nothing. Run at the digest's gate; a failure leaves the load to
    /// that invocation.
    async fn hold_shared(&self, key: &str, digest: &ModuleDigest) {
        if self.runtime.holds(digest) {
            return;
        }
        let started = Instant::now();
        let bytes = match read_shared(&self.layout.artifacts, key).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(%key, error = %e, "cannot fetch the shared precompiled component ahead; its first invocation loads it");
                return;
            }
        };
        let (runtime, digest) = (self.runtime.clone(), digest.clone());
        let held = tokio::task::spawn_blocking(move || runtime.hold_serialized(&digest, &bytes))
            .await
            .unwrap_or(false);
        if held {
            tracing::info!(%key, seconds = started.elapsed().as_secs_f64(), "holding the shared precompiled component ahead of its first invocation");
        }
    }

    /// `function` bound to the component of `digest`, loaded if needed.
    pub async fn prepared(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
        digest: &ModuleDigest,
    ) -> Result<PreparedFunction, LoadError> {
        if let Some(prepared) = self
            .runtime
            .prepare_cached(function.clone(), spec, digest)?
        {
            return Ok(prepared);
        }
        let _demand = Demand::count(&self.demand);
        self.gated(digest, self.load(function, spec, digest)).await
    }

    /// Runs `work` as the only load of `digest` under way.
    async fn gated<T>(&self, digest: &ModuleDigest, work: impl Future<Output = T>) -> T {
        let gate = self.gates().entry(digest.clone()).or_default().clone();
        let done = {
            let _only_loader = gate.lock().await;
            work.await
        };
        let mut gates = self.gates();
        // The map's and ours: nobody else waits at this gate.
        if Arc::strong_count(&gate) == 2 {
            gates.remove(digest);
        }
        done
    }

    fn gates(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ModuleDigest, Arc<tokio::sync::Mutex<()>>>> {
        // The map holds no invariant a panicking holder could break.
        sync::lock(&self.loading)
    }

    /// Makes the component servable: from this process's cache (another
    /// caller may have loaded it meanwhile), the precompiled artifact on
    /// disk, or the module store.
    async fn load(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
        digest: &ModuleDigest,
    ) -> Result<PreparedFunction, LoadError> {
        let runtime = self.runtime.clone();
        if let Some(prepared) = runtime.prepare_cached(function.clone(), spec, digest)? {
            return Ok(prepared);
        }
        let started = Instant::now();
        if let Some(dir) = self.artifacts.clone() {
            let (runtime, function, spec, digest) = (
                runtime.clone(),
                function.clone(),
                spec.clone(),
                digest.clone(),
            );
            // Not under a CPU: a deserialize is a file mapping, and must not
            // wait behind other functions' compiles.
            let precompiled = tokio::task::spawn_blocking(move || {
                runtime.prepare_precompiled(function, &spec, &digest, &dir)
            })
            .await??;
            if let Some(prepared) = precompiled {
                self.cold_start(&prepared.function, "precompiled", started);
                return Ok(prepared);
            }
        }
        if let Some(prepared) = self.take_ahead(function, spec, digest).await? {
            self.cold_start(&prepared.function, "ahead", started);
            return Ok(prepared);
        }
        let replace = match self.load_shared(function, spec, digest).await? {
            SharedArtifact::Loaded(prepared) => {
                self.cold_start(&prepared.function, "shared", started);
                return Ok(prepared);
            }
            SharedArtifact::Missing => false,
            SharedArtifact::Unusable => true,
        };
        let wasm = self.layout.fetch_module(digest).await?;
        let artifacts = self.artifacts.clone();
        let (function, spec) = (function.clone(), spec.clone());
        let _cpu = self.cpus.acquire().await;
        tracing::info!(%function, %digest, "compiling");
        let _compiling = self.metrics.compile_started("invocation");
        let prepared = tokio::task::spawn_blocking(move || {
            let prepared = runtime.prepare(function, &spec, &wasm)?;
            if let Some(dir) = artifacts
                && let Err(e) = runtime.save_precompiled(&prepared, &dir)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the precompiled component");
            }
            Ok::<_, RuntimeError>(prepared)
        })
        .await??;
        self.cold_start(&prepared.function, "fetched", started);
        if self.shared {
            self.share(prepared.clone(), replace);
        }
        Ok(prepared)
    }

    /// The component from the artifact another runtime of this engine
    /// stored in the shared bucket, kept on disk first. When there is none
    /// or it is unusable, the caller compiles (and stores a good one in
    /// its place).
    async fn load_shared(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
        digest: &ModuleDigest,
    ) -> Result<SharedArtifact, LoadError> {
        if !self.shared {
            return Ok(SharedArtifact::Missing);
        }
        let key = self.runtime.artifact_key(digest);
        let bytes = match read_shared(&self.layout.artifacts, &key).await {
            Ok(bytes) => bytes,
            Err(SharedReadError::Get(e)) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Ok(SharedArtifact::Missing);
            }
            Err(e @ SharedReadError::Get(_)) => {
                tracing::warn!(%key, error = %e, "cannot read the shared precompiled component; compiling instead");
                return Ok(SharedArtifact::Missing);
            }
            Err(e @ SharedReadError::Read(_)) => {
                // Among others, a digest that does not match what was stored.
                tracing::warn!(%key, error = %e, "the shared precompiled component did not arrive whole; compiling instead");
                return Ok(SharedArtifact::Unusable);
            }
        };
        self.load_artifact(function, spec, digest, Arc::new(bytes))
            .await
    }

    /// The component of the compile ahead of `digest` under way, if there
    /// is one and it can be hurried: its bytes as soon as it ends. `None`
    /// (the caller loads otherwise) when there is none, it failed, or its
    /// thread cannot be given normal priority.
    async fn take_ahead(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
        digest: &ModuleDigest,
    ) -> Result<Option<PreparedFunction>, LoadError> {
        let ahead = sync::lock(&self.under_way).get(digest).cloned();
        let Some(ahead) = ahead.filter(|ahead| ahead.hurry()) else {
            return Ok(None);
        };
        let mut compiled = ahead.compiled.clone();
        // An error: the compile failed (its sender is gone).
        let Some(bytes) = compiled
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|bytes| (*bytes).clone())
        else {
            return Ok(None);
        };
        // Held by the compile itself when the cache had room.
        if let Some(prepared) = self
            .runtime
            .prepare_cached(function.clone(), spec, digest)?
        {
            return Ok(Some(prepared));
        }
        Ok(
            match self.load_artifact(function, spec, digest, bytes).await? {
                SharedArtifact::Loaded(prepared) => Some(prepared),
                SharedArtifact::Missing | SharedArtifact::Unusable => None,
            },
        )
    }

    /// The component from a precompiled artifact's `bytes`: kept on disk
    /// first and loaded from there, or, with no folder, from memory.
    async fn load_artifact(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
        digest: &ModuleDigest,
        bytes: Arc<Vec<u8>>,
    ) -> Result<SharedArtifact, LoadError> {
        let (runtime, function, spec, digest) = (
            self.runtime.clone(),
            function.clone(),
            spec.clone(),
            digest.clone(),
        );
        let Some(dir) = self.artifacts.clone() else {
            // No folder: loaded from memory.
            let prepared = tokio::task::spawn_blocking(move || {
                Ok::<_, RuntimeError>(
                    match runtime.prepare_serialized(function, &spec, &digest, &bytes)? {
                        Some(prepared) => SharedArtifact::Loaded(prepared),
                        None => SharedArtifact::Unusable,
                    },
                )
            })
            .await??;
            return Ok(prepared);
        };
        let prepared = tokio::task::spawn_blocking(move || {
            if let Err(e) = runtime.keep_precompiled(&digest, &dir, &bytes) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the precompiled component on disk; compiling instead");
                return Ok(SharedArtifact::Missing);
            }
            // An artifact wasmtime refuses is logged, and removed from disk.
            Ok::<_, RuntimeError>(
                match runtime.prepare_precompiled(function, &spec, &digest, &dir)? {
                    Some(prepared) => SharedArtifact::Loaded(prepared),
                    None => SharedArtifact::Unusable,
                },
            )
        })
        .await??;
        Ok(prepared)
    }

    /// Stores the compiled code of `prepared` in the shared bucket, unless
    /// it holds it already (and is not to `replace` an unusable one), in
    /// the background: the invocation that needed it does not wait.
    fn share(&self, prepared: PreparedFunction, replace: bool) {
        let runtime = self.runtime.clone();
        let bucket = self.layout.artifacts.clone();
        tokio::spawn(async move {
            let key = runtime.artifact_key(&prepared.digest);
            if !replace && bucket.info(&key).await.is_ok() {
                return;
            }
            let serialized =
                tokio::task::spawn_blocking(move || prepared.component().serialize()).await;
            let bytes = match serialized {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => {
                    tracing::warn!(%key, error = %format!("{e:#}"), "cannot serialize the compiled component to share it");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "the serializing task failed");
                    return;
                }
            };
            put_shared(&bucket, &key, &bytes).await;
        });
    }

    fn cold_start(&self, function: &FunctionRef, source: &'static str, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(%function, source, seconds, "cold start");
        self.metrics.cold_start(function, source, seconds);
    }
}
