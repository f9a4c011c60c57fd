//! Precompiled components on local disk, so that a restarted runtime loads
//! a function in about a millisecond instead of compiling it again.
//!
//! Artifacts live in `<dir>/<engine>/<digest>.cwasm`, where `<engine>`
//! hashes everything that makes compiled code compatible (wasmtime version,
//! target, settings): a runtime never loads code another engine built.

use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sluice_api::FunctionSpec;
use sluice_api::names::FunctionRef;
use wasmtime::component::Component;

use crate::RuntimeError;
use crate::engine::Runtime;
use crate::invoke::{PreparedFunction, bind};

impl Runtime {
    /// Where the artifact of `digest` lives under `dir`.
    pub fn artifact_path(&self, dir: &Path, digest: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        dir.join(format!("{:016x}", hasher.finish()))
            .join(format!("{digest}.cwasm"))
    }

    /// Binds the precompiled artifact of `digest` from `dir`. `None` when
    /// there is none, or when it is unusable (then it is removed, so the
    /// caller compiles and saves a good one). Blocking.
    pub fn prepare_precompiled(
        &self,
        function: FunctionRef,
        spec: &FunctionSpec,
        digest: &str,
        dir: &Path,
    ) -> Result<Option<PreparedFunction>, RuntimeError> {
        self.check_limits(spec)?;
        let path = self.artifact_path(dir, digest);
        if !path.is_file() {
            return Ok(None);
        }
        let component = match load(&self.inner.engine, &path) {
            Ok(component) => component,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "discarding an unusable precompiled component");
                let _ = std::fs::remove_file(&path);
                return Ok(None);
            }
        };
        let pre = self
            .inner
            .cache
            .insert(&self.inner.linker, digest, &component)?;
        Ok(Some(bind(function, spec, digest.to_owned(), pre)))
    }

    /// Saves the compiled code of `prepared` under `dir`, atomically, so a
    /// concurrent reader never sees half a file. Blocking.
    pub fn save_precompiled(&self, prepared: &PreparedFunction, dir: &Path) -> std::io::Result<()> {
        let path = self.artifact_path(dir, &prepared.digest);
        if path.is_file() {
            return Ok(());
        }
        let bytes = prepared
            .component()
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)?;
        let mut file = tempfile::NamedTempFile::new_in(parent)?;
        file.write_all(&bytes)?;
        file.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[allow(unsafe_code)]
fn load(engine: &wasmtime::Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the file was produced by
    // `Component::serialize` of a compatible engine and not altered since.
    // Only this runtime writes into its artifact directory (atomically, from
    // `serialize`), the path is keyed by the engine's compatibility hash, and
    // wasmtime itself rejects files whose header names another engine.
    unsafe { Component::deserialize_file(engine, path) }
}
