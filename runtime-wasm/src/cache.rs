//! Compiled, pre-instantiated components, keyed by SHA-256 of their bytes.

use std::collections::HashMap;
use std::sync::Mutex;

use sluice_api::ModuleDigest;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::RuntimeError;
use crate::host::Host;

#[derive(Default)]
pub(crate) struct ComponentCache {
    by_digest: Mutex<HashMap<ModuleDigest, ProxyPre<Host>>>,
}

impl ComponentCache {
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

    pub(crate) fn get(&self, digest: &ModuleDigest) -> Option<ProxyPre<Host>> {
        self.lock().get(digest).cloned()
    }

    /// Pre-instantiates a compiled component and keeps it under `digest`.
    pub(crate) fn insert(
        &self,
        linker: &Linker<Host>,
        digest: &ModuleDigest,
        component: &Component,
    ) -> Result<ProxyPre<Host>, RuntimeError> {
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| RuntimeError::NotAProxy(format!("{e:#}")))?;
        let pre =
            ProxyPre::new(instance_pre).map_err(|e| RuntimeError::NotAProxy(format!("{e:#}")))?;
        Ok(self.lock().entry(digest.clone()).or_insert(pre).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ModuleDigest, ProxyPre<Host>>> {
        // The map holds no invariant a panicking holder could break.
        self.by_digest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
