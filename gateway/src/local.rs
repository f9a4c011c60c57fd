//! Local mode: gateway and runtime in one process, serving the Function
//! manifests of a folder with the in-process queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sha2::{Digest as _, Sha256};
use sluice_api::manifest::parse_functions;
use sluice_api::names::FunctionRef;
use sluice_api::{FunctionManifest, FunctionSpec, ModuleKind};
use sluice_runtime::{Runtime, RuntimeConfig, RuntimeError};

use sluice_runtime::admin::Admin;
use sluice_runtime::metrics::Metrics;

use crate::http::{Gateway, HttpConfig, Registry};
use crate::queue::memory::{MemoryQueue, QueueConfig, QueuedFunction};
use crate::routes::RouteConflict;
use crate::running::{ListenError, RunningGateway};

/// Everything local mode needs to start.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Folder whose `*.yaml`/`*.yml` files hold Function manifests.
    pub dir: PathBuf,
    /// Where invocations are served. Default: `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    /// Default: `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    pub http: HttpConfig,
    pub queue: QueueConfig,
    pub runtime: RuntimeConfig,
}

impl LocalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            http: HttpConfig::default(),
            queue: QueueConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// Why local mode could not start. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read the manifest folder {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {file}: {source}")]
    ReadManifest {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no Function manifests (*.yaml, *.yml) in {0}")]
    NoFunctions(PathBuf),
    #[error("{file}: {source}")]
    Manifest {
        file: PathBuf,
        #[source]
        source: sluice_api::ManifestError,
    },
    #[error("{file}: {function}: {field}: {problem}")]
    Module {
        file: PathBuf,
        function: FunctionRef,
        field: &'static str,
        problem: String,
    },
    #[error("{file}: {function} is already defined in {first}")]
    Duplicate {
        file: PathBuf,
        function: FunctionRef,
        first: PathBuf,
    },
    #[error(transparent)]
    Route(#[from] RouteConflict),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// A function read from a manifest, with its component's bytes.
#[derive(Debug)]
pub struct LocalFunction {
    pub file: PathBuf,
    pub function: FunctionRef,
    pub spec: FunctionSpec,
    pub wasm: Vec<u8>,
}

/// Reads every Function manifest in `dir` and the components they name.
pub fn load_dir(dir: &Path) -> Result<Vec<LocalFunction>, LocalError> {
    let read_dir = |source| LocalError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    let mut functions = Vec::new();
    let mut seen: HashMap<FunctionRef, PathBuf> = HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| LocalError::ReadManifest {
            file: file.clone(),
            source,
        })?;
        let manifests = parse_functions(&text).map_err(|source| LocalError::Manifest {
            file: file.clone(),
            source,
        })?;
        for manifest in manifests {
            let function = manifest.function_ref();
            if let Some(first) = seen.get(&function) {
                return Err(LocalError::Duplicate {
                    file,
                    function,
                    first: first.clone(),
                });
            }
            seen.insert(function.clone(), file.clone());
            let wasm = read_module(&file, &manifest)?;
            functions.push(LocalFunction {
                file: file.clone(),
                function,
                spec: manifest.spec,
                wasm,
            });
        }
    }
    if functions.is_empty() {
        return Err(LocalError::NoFunctions(dir.to_owned()));
    }
    Ok(functions)
}

fn read_module(file: &Path, manifest: &FunctionManifest) -> Result<Vec<u8>, LocalError> {
    let module = &manifest.spec.module;
    let error = |field: &'static str, problem: String| LocalError::Module {
        file: file.to_owned(),
        function: manifest.function_ref(),
        field,
        problem,
    };
    let path = match module.kind() {
        Ok(ModuleKind::File) => module.file.as_deref().unwrap_or_default(),
        Ok(ModuleKind::Oci) => {
            return Err(error(
                "spec.module.oci",
                "is not available in local mode; use spec.module.file".into(),
            ));
        }
        Ok(ModuleKind::Url) => {
            return Err(error(
                "spec.module.url",
                "is not available in local mode; use spec.module.file".into(),
            ));
        }
        Ok(ModuleKind::ConfigMap) => {
            return Err(error(
                "spec.module.configMap",
                "is not available in local mode; use spec.module.file".into(),
            ));
        }
        Err(e) => return Err(error("spec.module", e.problem)),
    };
    let resolved = file.parent().unwrap_or(Path::new(".")).join(path);
    let wasm = std::fs::read(&resolved).map_err(|e| {
        let hint = if resolved.to_string_lossy().contains("wasm32-wasip2") {
            " (build the examples first: scripts/local.sh does)"
        } else {
            ""
        };
        error(
            "spec.module.file",
            format!("cannot read {}: {e}{hint}", resolved.display()),
        )
    })?;
    if let Some(expected) = &module.sha256 {
        let actual = hex::encode(Sha256::digest(&wasm));
        if &actual != expected {
            return Err(error(
                "spec.module.sha256",
                format!("{} has sha256 {actual}, not {expected}", resolved.display()),
            ));
        }
    }
    Ok(wasm)
}

/// Loads the manifests, compiles every component, binds both listeners and
/// starts serving.
pub async fn start(config: LocalConfig) -> Result<RunningGateway, LocalError> {
    let dir = config.dir.clone();
    let runtime_config = config.runtime.clone();
    let (runtime, loaded) = tokio::task::spawn_blocking(move || -> Result<_, LocalError> {
        let functions = load_dir(&dir)?;
        let runtime = Runtime::new(runtime_config)?;
        let mut prepared = Vec::new();
        for f in functions {
            let ready = runtime
                .prepare(f.function.clone(), &f.spec, &f.wasm)
                .map_err(|e| {
                    let (field, problem) = match &e {
                        RuntimeError::MemoryLimitTooLarge { .. } => {
                            ("spec.limits.memory", e.to_string())
                        }
                        _ => ("spec.module.file", e.to_string()),
                    };
                    LocalError::Module {
                        file: f.file.clone(),
                        function: f.function.clone(),
                        field,
                        problem,
                    }
                })?;
            prepared.push((ready, f.spec));
        }
        Ok((runtime, prepared))
    })
    .await
    .map_err(|e| LocalError::Runtime(RuntimeError::Engine(format!("loader task failed: {e}"))))??;

    let metrics = Arc::new(Metrics::default());
    let queue = MemoryQueue::new(runtime, config.queue.clone(), metrics.clone());
    let mut specs = HashMap::new();
    for (prepared, spec) in loaded {
        tracing::info!(function = %prepared.function, digest = %prepared.digest, "function ready");
        specs.insert(prepared.function.clone(), Arc::new(spec.clone()));
        queue.deploy(QueuedFunction {
            prepared,
            retry: spec.retry.clone(),
            concurrency: spec.concurrency,
        });
    }
    let registry = Registry::new(specs)?;
    let gateway = Arc::new(Gateway::new(Arc::new(queue), registry, config.http.clone()));
    let admin = Arc::new(Admin {
        metrics,
        ready: Default::default(),
    });
    admin.ready.store(true, Ordering::Relaxed);
    Ok(RunningGateway::start(gateway, admin, config.listen, config.admin_listen).await?)
}
