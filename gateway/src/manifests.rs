//! Reading a folder of Function manifests and the components they name
//! (`module.file`): local mode serves them, `sluice-gateway publish` puts
//! them on NATS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sluice_api::auth::{ApiKeyDigest, api_key_digests};
use sluice_api::manifest::{SecretManifest, parse_functions, parse_secrets};
use sluice_api::names::FunctionRef;
use sluice_api::{FunctionManifest, FunctionSpec, ModuleDigest, ModuleKind};

/// Why a folder's functions could not be read. Every variant names the
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
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
    #[error("{file}: {function}: spec.auth.apiKeys.secretName: {problem}")]
    ApiKeys {
        file: PathBuf,
        function: FunctionRef,
        problem: String,
    },
    #[error("{file}: {conflict}")]
    PathConflict {
        file: PathBuf,
        conflict: Box<PathConflict>,
    },
    #[error("{file}: {function}: {field}: {problem}")]
    Destination {
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
}

/// A custom path claimed by a second function of the folder.
#[derive(Debug, thiserror::Error)]
#[error(
    "{function}: spec.triggers.http.path {path} is already the route of {owner} in {first}; give one of them another path"
)]
pub struct PathConflict {
    pub function: FunctionRef,
    pub path: String,
    pub owner: FunctionRef,
    /// The manifest of the first claim.
    pub first: PathBuf,
}

/// A function read from a manifest, with its component's bytes.
#[derive(Debug)]
pub struct LocalFunction {
    pub file: PathBuf,
    pub function: FunctionRef,
    pub spec: FunctionSpec,
    pub wasm: Vec<u8>,
    /// The digests of the keys in `spec.auth.apiKeys`'s Secret, which a
    /// `v1` Secret manifest in the same folder holds.
    pub api_keys: Vec<ApiKeyDigest>,
}

/// Reads every Function manifest in `dir`, the components they name, and
/// the Secret manifests holding their API keys.
pub fn load_dir(dir: &Path) -> Result<Vec<LocalFunction>, ManifestsError> {
    let read_dir = |source| ManifestsError::ReadDir {
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
    let mut secrets: Vec<SecretManifest> = Vec::new();
    let mut seen: HashMap<FunctionRef, PathBuf> = HashMap::new();
    let mut routes: HashMap<String, (FunctionRef, PathBuf)> = HashMap::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|source| ManifestsError::ReadManifest {
                file: file.clone(),
                source,
            })?;
        let manifest_error = |source| ManifestsError::Manifest {
            file: file.clone(),
            source,
        };
        let manifests = parse_functions(&text).map_err(manifest_error)?;
        secrets.extend(parse_secrets(&text).map_err(manifest_error)?);
        for manifest in manifests {
            let function = manifest.function_ref();
            if let Some(first) = seen.get(&function) {
                return Err(ManifestsError::Duplicate {
                    file,
                    function,
                    first: first.clone(),
                });
            }
            seen.insert(function.clone(), file.clone());
            if let Some(http) = &manifest.spec.triggers.http {
                if let Some((owner, first)) = routes.get(http.route()) {
                    return Err(ManifestsError::PathConflict {
                        file,
                        conflict: Box::new(PathConflict {
                            function,
                            path: http.route().to_owned(),
                            owner: owner.clone(),
                            first: first.clone(),
                        }),
                    });
                }
                routes.insert(http.route().to_owned(), (function.clone(), file.clone()));
            }
            let wasm = read_module(&file, &manifest)?;
            functions.push(LocalFunction {
                file: file.clone(),
                function,
                spec: manifest.spec,
                wasm,
                api_keys: Vec::new(),
            });
        }
    }
    if functions.is_empty() {
        return Err(ManifestsError::NoFunctions(dir.to_owned()));
    }
    for f in &mut functions {
        f.api_keys = local_api_keys(f, &secrets)?;
    }
    Ok(functions)
}

/// Checks that local mode can deliver the destinations of `functions`
/// (the folder's): a function destination names a function of the
/// folder; a subject destination is refused, as local mode has no NATS to
/// publish on.
pub fn local_destinations(functions: &[LocalFunction]) -> Result<(), ManifestsError> {
    let known: std::collections::HashSet<&FunctionRef> =
        functions.iter().map(|f| &f.function).collect();
    functions
        .iter()
        .try_for_each(|f| function_destinations(f, &known))
}

fn function_destinations(
    f: &LocalFunction,
    functions: &std::collections::HashSet<&FunctionRef>,
) -> Result<(), ManifestsError> {
    let destinations = &f.spec.destinations;
    for (field, destination) in [
        ("spec.destinations.onSuccess", &destinations.on_success),
        ("spec.destinations.onFailure", &destinations.on_failure),
    ] {
        let Some(destination) = destination else {
            continue;
        };
        let error = |field: &'static str, problem: String| ManifestsError::Destination {
            file: f.file.clone(),
            function: f.function.clone(),
            field,
            problem,
        };
        if destination.subject.is_some() {
            return Err(error(
                field,
                "is a NATS subject, which local mode cannot publish on (it runs without NATS); name a function of the folder instead, or run with NATS".into(),
            ));
        }
        if let Some(name) = &destination.function {
            let known = FunctionRef::new(&f.function.namespace, name)
                .is_ok_and(|target| functions.contains(&target));
            if !known {
                return Err(error(
                    field,
                    format!(
                        "names function {name:?}, which no manifest of the folder defines in namespace {}",
                        f.function.namespace
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The digests of `f`'s API keys, from the Secret manifest it names.
fn local_api_keys(
    f: &LocalFunction,
    secrets: &[SecretManifest],
) -> Result<Vec<ApiKeyDigest>, ManifestsError> {
    let Some(keys) = f.spec.auth.as_ref().and_then(|a| a.api_keys.as_ref()) else {
        return Ok(Vec::new());
    };
    let error = |problem: String| ManifestsError::ApiKeys {
        file: f.file.clone(),
        function: f.function.clone(),
        problem,
    };
    let secret = secrets
        .iter()
        .find(|s| s.namespace == f.function.namespace && s.name == keys.secret_name)
        .ok_or_else(|| {
            error(format!(
                "no Secret {}/{} among the folder's manifests",
                f.function.namespace, keys.secret_name
            ))
        })?;
    api_key_digests(secret.data.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(|e| error(format!("Secret {}/{} {e}", secret.namespace, secret.name)))
}

fn read_module(file: &Path, manifest: &FunctionManifest) -> Result<Vec<u8>, ManifestsError> {
    let module = &manifest.spec.module;
    let error = |field: &'static str, problem: String| ManifestsError::Module {
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
        let hint = if path.contains("wasm32-wasip2") {
            "; scripts/local.sh builds the examples' components"
        } else {
            ""
        };
        error(
            "spec.module.file",
            format!(
                "cannot read {}: {e} (the path is taken from the manifest's folder{hint})",
                resolved.display()
            ),
        )
    })?;
    if let Some(expected) = &module.sha256 {
        let actual = ModuleDigest::of(&wasm);
        if actual.as_str() != expected {
            return Err(error(
                "spec.module.sha256",
                format!("{} has sha256 {actual}, not {expected}", resolved.display()),
            ));
        }
    }
    Ok(wasm)
}
