//! Compiled, pre-instantiated components in memory, keyed by SHA-256 of
//! their bytes, within a byte budget: past it the least recently used are
//! dropped (a runtime reloads them from the precompiled artifact, a cheap
//! deserialize).

use sluice_serve::sync;
use std::collections::HashMap;
use std::sync::Mutex;

use sluice_api::ModuleDigest;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::RuntimeError;
use crate::host::Host;

pub(crate) struct ComponentCache {
    /// Bytes of compiled code the cache keeps at most; it always keeps the
    /// component inserted last, however large.
    budget: u64,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_digest: HashMap<ModuleDigest, Entry>,
    /// Sum of the entries' `bytes`.
    bytes: u64,
    /// Bumped on every use: an entry's `used` orders it for eviction
    /// (0 for one held ahead and never used since).
    clock: u64,
    evicted: u64,
}

struct Entry {
    pre: ProxyPre<Host>,
    /// The size of its compiled image (code and data).
    bytes: u64,
    used: u64,
}

/// What the cache holds now (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUse {
    pub components: usize,
    /// Bytes of compiled images held.
    pub bytes: u64,
    /// Components dropped for room since the start.
    pub evicted: u64,
}

impl ComponentCache {
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            budget,
            held: Mutex::default(),
        }
    }

    /// The pre-instantiated component for `wasm`, compiling it on first
    /// sight. Returns its digest too.
    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        linker: &Linker<Host>,
        wasm: &[u8],
    ) -> Result<(ModuleDigest, ProxyPre<Host>), RuntimeError> {
        let digest = ModuleDigest::of(wasm);
        if let Some(pre) = self.get(&digest) {
            return Ok((digest, pre));
        }
        // Compile outside the lock: it takes a while and other functions
        // should not wait for it. Two racing compiles of one digest are
        // harmless; the first to finish is kept.
        let component = Component::new(engine, wasm)
            .map_err(|e| RuntimeError::NotAComponent(format!("{e:#}")))?;
        let pre = self.insert(linker, &digest, &component)?;
        Ok((digest, pre))
    }

    /// Whether the component of `digest` is held (not marking it used).
    pub(crate) fn contains(&self, digest: &ModuleDigest) -> bool {
        self.lock().by_digest.contains_key(digest)
    }

    /// The component of `digest` if it is held, marked as used now.
    pub(crate) fn get(&self, digest: &ModuleDigest) -> Option<ProxyPre<Host>> {
        let mut held = self.lock();
        held.clock += 1;
        let now = held.clock;
        let entry = held.by_digest.get_mut(digest)?;
        entry.used = now;
        Some(entry.pre.clone())
    }

    /// Pre-instantiates a compiled component and keeps it under `digest`,
    /// dropping the least recently used others while the cache is over
    /// its budget.
    pub(crate) fn insert(
        &self,
        linker: &Linker<Host>,
        digest: &ModuleDigest,
        component: &Component,
    ) -> Result<ProxyPre<Host>, RuntimeError> {
        let pre = pre_instantiate(linker, component)?;
        let bytes = image_bytes(component);
        let mut held = self.lock();
        held.clock += 1;
        let now = held.clock;
        if let Some(entry) = held.by_digest.get_mut(digest) {
            entry.used = now;
            return Ok(entry.pre.clone());
        }
        held.by_digest.insert(
            digest.clone(),
            Entry {
                pre: pre.clone(),
                bytes,
                used: now,
            },
        );
        held.bytes += bytes;
        while held.bytes > self.budget && held.by_digest.len() > 1 {
            let Some(oldest) = held
                .by_digest
                .iter()
                .filter(|(_, entry)| entry.used != now)
                .min_by_key(|(_, entry)| entry.used)
                .map(|(digest, _)| digest.clone())
            else {
                break;
            };
            if let Some(entry) = held.by_digest.remove(&oldest) {
                held.bytes -= entry.bytes;
                held.evicted += 1;
                tracing::debug!(digest = %oldest, bytes = entry.bytes, "dropping a component from memory for room");
            }
        }
        Ok(pre)
    }

    /// Keeps a component no invocation asked for yet (compiled or fetched
    /// ahead of its first invocation), only in room the budget leaves
    /// free: it never drops another component, and it is the first to be
    /// dropped for one an invocation needs (it counts as never used). True
    /// when the cache holds it now.
    ///
    /// # Errors
    /// [`RuntimeError::NotAProxy`] when it cannot be pre-instantiated.
    pub(crate) fn insert_ahead(
        &self,
        linker: &Linker<Host>,
        digest: &ModuleDigest,
        component: &Component,
    ) -> Result<bool, RuntimeError> {
        let bytes = image_bytes(component);
        if self.contains(digest) {
            return Ok(true);
        }
        if bytes > self.room() {
            return Ok(false);
        }
        let pre = pre_instantiate(linker, component)?;
        let mut held = self.lock();
        if held.by_digest.contains_key(digest) {
            return Ok(true);
        }
        if held.bytes.saturating_add(bytes) > self.budget {
            return Ok(false);
        }
        held.by_digest.insert(
            digest.clone(),
            Entry {
                pre,
                bytes,
                used: 0,
            },
        );
        held.bytes += bytes;
        Ok(true)
    }

    /// Bytes the budget leaves free.
    pub(crate) fn room(&self) -> u64 {
        self.budget.saturating_sub(self.lock().bytes)
    }

    pub(crate) fn usage(&self) -> CacheUse {
        let held = self.lock();
        CacheUse {
            components: held.by_digest.len(),
            bytes: held.bytes,
            evicted: held.evicted,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The sums are updated together with the map under the lock, after
        // anything that could panic.
        sync::lock(&self.held)
    }
}

fn pre_instantiate(
    linker: &Linker<Host>,
    component: &Component,
) -> Result<ProxyPre<Host>, RuntimeError> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| RuntimeError::NotAProxy(format!("{e:#}")))?;
    ProxyPre::new(instance_pre).map_err(|e| RuntimeError::NotAProxy(format!("{e:#}")))
}

/// The size of a component's compiled image (code and data).
fn image_bytes(component: &Component) -> u64 {
    let image = component.image_range();
    (image.end as usize).saturating_sub(image.start as usize) as u64
}

#[cfg(test)]
mod tests {
    use crate::{Runtime, RuntimeConfig};

    fn compile(runtime: &Runtime, name: &str) -> sluice_api::ModuleDigest {
        let wasm = std::fs::read(sluice_examples::component(name)).unwrap();
        let inner = &runtime.inner;
        inner
            .cache
            .get_or_compile(&inner.engine, &inner.linker, &wasm)
            .unwrap()
            .0
    }

    /// The bytes each example's compiled image takes.
    fn sizes() -> [u64; 3] {
        let runtime = Runtime::new(small(u64::MAX)).unwrap();
        ["hello", "echo", "misbehave"].map(|name| {
            let before = runtime.component_cache_use().bytes;
            compile(&runtime, name);
            runtime.component_cache_use().bytes - before
        })
    }

    fn small(component_cache: u64) -> RuntimeConfig {
        RuntimeConfig {
            max_instances: 4,
            component_cache: sluice_api::ByteSize(component_cache),
            ..RuntimeConfig::default()
        }
    }

    #[test]
    fn past_its_budget_the_cache_drops_the_least_recently_used() {
        let [hello_bytes, _, misbehave_bytes] = sizes();
        assert!(hello_bytes > 0);
        let runtime = Runtime::new(small(hello_bytes + misbehave_bytes)).unwrap();
        let hello = compile(&runtime, "hello");
        let echo = compile(&runtime, "echo");
        // hello used last, so echo is the one to go.
        assert!(runtime.inner.cache.get(&hello).is_some());
        let misbehave = compile(&runtime, "misbehave");
        let held = runtime.component_cache_use();
        assert!(runtime.inner.cache.get(&misbehave).is_some(), "{held:?}");
        assert!(runtime.inner.cache.get(&hello).is_some(), "{held:?}");
        assert!(runtime.inner.cache.get(&echo).is_none(), "{held:?}");
        assert_eq!(
            held,
            super::CacheUse {
                components: 2,
                bytes: hello_bytes + misbehave_bytes,
                evicted: 1
            }
        );
    }

    /// `name` compiled, not held.
    fn component(
        runtime: &Runtime,
        name: &str,
    ) -> (sluice_api::ModuleDigest, wasmtime::component::Component) {
        let wasm = std::fs::read(sluice_examples::component(name)).unwrap();
        let component = wasmtime::component::Component::new(&runtime.inner.engine, &wasm).unwrap();
        (sluice_api::ModuleDigest::of(&wasm), component)
    }

    fn insert_ahead(runtime: &Runtime, name: &str) -> (sluice_api::ModuleDigest, bool) {
        let (digest, component) = component(runtime, name);
        let inner = &runtime.inner;
        let held = inner
            .cache
            .insert_ahead(&inner.linker, &digest, &component)
            .unwrap();
        (digest, held)
    }

    #[test]
    fn a_component_held_ahead_takes_only_free_room_and_goes_first() {
        let [hello_bytes, echo_bytes, misbehave_bytes] = sizes();
        let runtime = Runtime::new(small(hello_bytes + echo_bytes.max(misbehave_bytes))).unwrap();
        let hello = compile(&runtime, "hello");
        let (echo, held) = insert_ahead(&runtime, "echo");
        assert!(held);
        // Already held: nothing changes.
        assert!(insert_ahead(&runtime, "echo").1);
        // No room left for a third, and none is made.
        let (misbehave, held) = insert_ahead(&runtime, "misbehave");
        assert!(!held);
        assert_eq!(
            runtime.component_cache_use(),
            super::CacheUse {
                components: 2,
                bytes: hello_bytes + echo_bytes,
                evicted: 0
            }
        );
        assert!(!runtime.inner.cache.contains(&misbehave));
        // An invocation's component takes the room of the one held ahead,
        // though hello was used before it was held.
        compile(&runtime, "misbehave");
        assert!(runtime.inner.cache.contains(&hello));
        assert!(runtime.inner.cache.contains(&misbehave));
        assert!(!runtime.inner.cache.contains(&echo));
        assert_eq!(runtime.component_cache_use().evicted, 1);
    }

    #[test]
    fn a_component_held_ahead_and_then_used_is_kept_like_any_other() {
        let [hello_bytes, echo_bytes, misbehave_bytes] = sizes();
        // Room for any two, not for the three.
        let runtime = Runtime::new(small(hello_bytes + echo_bytes + misbehave_bytes - 1)).unwrap();
        let (echo, _) = insert_ahead(&runtime, "echo");
        let hello = compile(&runtime, "hello");
        assert!(runtime.inner.cache.get(&echo).is_some());
        // hello is now the least recently used.
        compile(&runtime, "misbehave");
        assert!(runtime.inner.cache.contains(&echo));
        assert!(!runtime.inner.cache.contains(&hello));
    }

    #[test]
    fn a_component_larger_than_the_budget_is_still_kept_while_newest() {
        let runtime = Runtime::new(small(1)).unwrap();
        let hello = compile(&runtime, "hello");
        assert!(runtime.inner.cache.get(&hello).is_some());
        let echo = compile(&runtime, "echo");
        assert!(runtime.inner.cache.get(&echo).is_some());
        assert!(runtime.inner.cache.get(&hello).is_none());
        assert_eq!(runtime.component_cache_use().components, 1);
    }
}
