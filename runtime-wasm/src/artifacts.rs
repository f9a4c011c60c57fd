//! Precompiled components on local disk, so that a restarted runtime loads
//! a function in about a millisecond instead of compiling it again.
//!
//! Artifacts live in `<dir>/<engine>/<digest>.cwasm`, where `<engine>`
//! hashes everything that makes compiled code compatible (wasmtime version,
//! target, settings): a runtime never loads code another engine built.
//!
//! Loading an artifact runs its machine code, so a runtime loads only from
//! directories and files that it owns and nobody else may write
//! ([`private`]); it creates them so. An artifact from the shared bucket
//! (`sluice-artifacts`, written only by runtimes: the NATS permissions give
//! its writes to the runtime user alone) is written here first and loaded
//! like the others; its key names the engine too
//! ([`Runtime::artifact_key`]).

use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sluice_api::names::FunctionRef;
use sluice_api::{FunctionSpec, ModuleDigest};
use wasmtime::component::Component;

use crate::RuntimeError;
use crate::engine::Runtime;
use crate::invoke::{PreparedFunction, bind};

impl Runtime {
    /// The hash of everything that makes this engine's compiled code
    /// compatible (wasmtime version, target, settings), 16 hex digits.
    fn engine_key(&self) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Where the artifact of `digest` lives under `dir`.
    pub fn artifact_path(&self, dir: &Path, digest: &ModuleDigest) -> PathBuf {
        dir.join(self.engine_key()).join(format!("{digest}.cwasm"))
    }

    /// The name of the artifact of `digest` in the shared bucket
    /// (`sluice-artifacts`): [`sluice_api::names::artifact_key`] with this
    /// engine's hash.
    pub fn artifact_key(&self, digest: &ModuleDigest) -> String {
        sluice_api::names::artifact_key(&self.engine_key(), digest)
    }

    /// `wasm` (whose digest is `digest`) compiled for this engine and
    /// serialized, as the shared bucket holds it under
    /// [`Self::artifact_key`]; the compiled component also stays in memory
    /// when the component cache has room for it without dropping another
    /// (it is then the first dropped for room). Returns the artifact and
    /// whether it stayed. Blocking (a compile).
    ///
    /// # Errors
    /// [`RuntimeError::NotAComponent`] when wasmtime cannot compile it.
    pub fn compile_ahead(
        &self,
        digest: &ModuleDigest,
        wasm: &[u8],
    ) -> Result<(Vec<u8>, bool), RuntimeError> {
        let not_a_component = |e: wasmtime::Error| RuntimeError::NotAComponent(format!("{e:#}"));
        let component = Component::new(&self.inner.engine, wasm).map_err(not_a_component)?;
        let artifact = component.serialize().map_err(not_a_component)?;
        Ok((artifact, self.hold_ahead(digest, &component)))
    }

    /// Loads `artifact` (of `digest`, from the shared bucket) and keeps it
    /// in memory as [`Self::compile_ahead`] does, if the component cache
    /// has room for it. Whether it is held now. Blocking.
    pub fn hold_serialized(&self, digest: &ModuleDigest, artifact: &[u8]) -> bool {
        if self.inner.cache.contains(digest) {
            return true;
        }
        // The compiled image is about the size of its artifact: no load for
        // what would not fit.
        if artifact.len() as u64 > self.inner.cache.room() {
            return false;
        }
        match load_bytes(&self.inner.engine, artifact) {
            Ok(component) => self.hold_ahead(digest, &component),
            Err(e) => {
                tracing::warn!(%digest, error = %format!("{e:#}"), "cannot load the shared precompiled component ahead; its first invocation loads it");
                false
            }
        }
    }

    /// Bytes of compiled components the component cache can take without
    /// dropping any.
    pub fn component_room(&self) -> u64 {
        self.inner.cache.room()
    }

    fn hold_ahead(&self, digest: &ModuleDigest, component: &Component) -> bool {
        self.inner
            .cache
            .insert_ahead(&self.inner.linker, digest, component)
            .unwrap_or_else(|e| {
                // Its invocations fail with the same error when they load it.
                tracing::debug!(%digest, error = %e, "not holding the component ahead");
                false
            })
    }

    /// Binds the precompiled artifact of `digest` from `dir`. `None` when
    /// there is none, or when it is unusable (then it is removed, so the
    /// caller compiles and saves a good one). Blocking.
    pub fn prepare_precompiled(
        &self,
        function: FunctionRef,
        spec: &FunctionSpec,
        digest: &ModuleDigest,
        dir: &Path,
    ) -> Result<Option<PreparedFunction>, RuntimeError> {
        self.check_limits(spec)?;
        let path = self.artifact_path(dir, digest);
        if !path.is_file() {
            return Ok(None);
        }
        if let Err(e) = private(dir, &path) {
            tracing::warn!(path = %path.display(), error = %e, "not loading a precompiled component others could have written; compiling instead");
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
        self.bind_loaded(function, spec, digest, &component)
            .map(Some)
    }

    /// Binds `bytes`, an artifact of `digest` another runtime of this
    /// engine stored in the shared bucket, straight from memory: for a
    /// runtime with no folder to keep artifacts in. `None` when wasmtime
    /// refuses it. Blocking.
    pub fn prepare_serialized(
        &self,
        function: FunctionRef,
        spec: &FunctionSpec,
        digest: &ModuleDigest,
        bytes: &[u8],
    ) -> Result<Option<PreparedFunction>, RuntimeError> {
        self.check_limits(spec)?;
        let component = match load_bytes(&self.inner.engine, bytes) {
            Ok(component) => component,
            Err(e) => {
                tracing::warn!(%digest, error = %format!("{e:#}"), "discarding an unusable shared precompiled component");
                return Ok(None);
            }
        };
        self.bind_loaded(function, spec, digest, &component)
            .map(Some)
    }

    /// Binds a component loaded from an artifact, held in the component
    /// cache under `digest`.
    fn bind_loaded(
        &self,
        function: FunctionRef,
        spec: &FunctionSpec,
        digest: &ModuleDigest,
        component: &wasmtime::component::Component,
    ) -> Result<PreparedFunction, RuntimeError> {
        let pre = self
            .inner
            .cache
            .insert(&self.inner.linker, digest, component)?;
        Ok(bind(function, spec, digest.clone(), pre))
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
        write_private(dir, &path, &bytes)
    }

    /// Keeps `bytes` (an artifact another runtime of this engine stored in
    /// the shared bucket) as the artifact of `digest` under `dir`, to be
    /// loaded by [`Runtime::prepare_precompiled`]. Blocking.
    pub fn keep_precompiled(
        &self,
        digest: &ModuleDigest,
        dir: &Path,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        write_private(dir, &self.artifact_path(dir, digest), bytes)
    }
}

/// Writes `path` under `dir` atomically (a concurrent reader never sees
/// half a file), in directories only this user may write.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(dir);
    create_private_dir(parent)?;
    private(dir, parent).map_err(std::io::Error::other)?;
    let mut file = tempfile::NamedTempFile::new_in(parent)?;
    file.write_all(bytes)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Why a path is not private enough to load machine code from.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotPrivate {
    #[error("{} is not under {}", path.display(), dir.display())]
    Outside { path: PathBuf, dir: PathBuf },
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} belongs to user {owner}", path.display())]
    Owner { path: PathBuf, owner: u32 },
    #[error("others may write {}", path.display())]
    Writable { path: PathBuf },
}

/// Checks that `dir` and everything from it down to `path` belong to this
/// process's user and are writable by nobody else.
#[cfg(unix)]
fn private(dir: &Path, path: &Path) -> Result<(), NotPrivate> {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid().as_raw();
    let below = path.strip_prefix(dir).map_err(|_| NotPrivate::Outside {
        path: path.to_owned(),
        dir: dir.to_owned(),
    })?;
    let mut checked = dir.to_path_buf();
    let mut chain = vec![checked.clone()];
    for part in below {
        checked.push(part);
        chain.push(checked.clone());
    }
    for path in chain {
        let meta = std::fs::symlink_metadata(&path).map_err(|source| NotPrivate::Unreadable {
            path: path.clone(),
            source,
        })?;
        if meta.uid() != me {
            return Err(NotPrivate::Owner {
                path,
                owner: meta.uid(),
            });
        }
        if meta.mode() & 0o022 != 0 {
            return Err(NotPrivate::Writable { path });
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn private(_dir: &Path, _path: &Path) -> Result<(), NotPrivate> {
    Ok(())
}

#[allow(unsafe_code)]
fn load(engine: &wasmtime::Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the file was produced by
    // `Component::serialize` of a compatible engine and not altered since.
    // Only this runtime's user may write the file and the directories above
    // it (checked by `private` before each load), the runtime writes it
    // atomically from `serialize` or from the shared bucket, the path is
    // keyed by the engine's compatibility hash, and wasmtime itself
    // rejects files whose header names another engine. What comes from the
    // shared bucket was written there by a runtime from `serialize` under
    // the same engine key (only the runtime's NATS user may publish to
    // it), and arrived whole: the object store checks its SHA-256 as it is
    // read.
    unsafe { Component::deserialize_file(engine, path) }
}

#[allow(unsafe_code)]
fn load_bytes(engine: &wasmtime::Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: as in `load` for what comes from the shared bucket: written
    // there by a runtime from `serialize` under the same engine key (only
    // the runtime's NATS user may publish to it), arrived whole (the object
    // store checks its SHA-256 as it is read), and wasmtime itself rejects
    // bytes whose header names another engine. They go from the bucket to
    // here in this process's memory, with no file in between that anyone
    // could change.
    unsafe { Component::deserialize(engine, bytes) }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::RuntimeConfig;

    fn runtime(component_cache: u64) -> Runtime {
        Runtime::new(RuntimeConfig {
            max_instances: 4,
            component_cache: sluice_api::ByteSize(component_cache),
            ..RuntimeConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_component_is_held_ahead_only_where_the_cache_has_room() {
        let wasm = std::fs::read(sluice_examples::component("hello")).unwrap();
        let digest = ModuleDigest::of(&wasm);
        let roomy = runtime(64 << 20);
        let (artifact, held) = roomy.compile_ahead(&digest, &wasm).unwrap();
        assert!(held);
        assert_eq!(roomy.component_cache_use().components, 1);

        let cramped = runtime(1024);
        assert!(!cramped.hold_serialized(&digest, &artifact));
        assert!(!cramped.compile_ahead(&digest, &wasm).unwrap().1);
        assert_eq!(cramped.component_cache_use().components, 0);

        let other = runtime(64 << 20);
        assert!(!other.hold_serialized(&digest, b"not machine code"));
        assert!(other.hold_serialized(&digest, &artifact));
        assert_eq!(other.component_cache_use().components, 1);
    }

    #[test]
    fn artifacts_load_only_from_what_nobody_else_may_write() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("artifacts");
        let engine = dir.join("0123456789abcdef");
        create_private_dir(&engine).unwrap();
        let file = engine.join("digest.cwasm");
        std::fs::write(&file, b"code").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        private(&dir, &file).unwrap();

        std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = private(&dir, &file).unwrap_err().to_string();
        assert!(error.contains("others may write"), "{error}");
        std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(private(&dir, &file).is_err());
    }
}
