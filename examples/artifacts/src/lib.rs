//! Paths of the example components, built by this crate's build script.
//! Tests and benchmarks depend on it; nothing ships it.

use std::path::{Path, PathBuf};

/// The folder holding the example manifests.
pub fn examples_dir() -> &'static Path {
    Path::new(env!("SLUICE_EXAMPLES_DIR"))
}

/// The built component of an example: `hello`, `echo` or `misbehave`.
pub fn component(name: &str) -> PathBuf {
    Path::new(env!("SLUICE_EXAMPLE_COMPONENTS")).join(format!("{name}.wasm"))
}
