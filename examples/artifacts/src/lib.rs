//! Paths of the example components: the Rust ones built by this crate's
//! build script, the Python and JavaScript ones by `scripts/polyglot.sh`
//! (which needs Python, Node.js and their package registries, so no build
//! script runs it). Tests and benchmarks depend on it; nothing ships it.

use std::path::{Path, PathBuf};

/// The folder holding the example manifests.
pub fn examples_dir() -> &'static Path {
    Path::new(env!("SLUICE_EXAMPLES_DIR"))
}

/// The built component of an example: `hello`, `echo` or `misbehave`.
pub fn component(name: &str) -> PathBuf {
    Path::new(env!("SLUICE_EXAMPLE_COMPONENTS")).join(format!("{name}.wasm"))
}

/// The Python and JavaScript examples `scripts/polyglot.sh` builds.
pub const POLYGLOT: [&str; 3] = ["hello-py", "events-py", "hello-js"];

/// The built component of a Python or JavaScript example (one of
/// [`POLYGLOT`]), under `examples/target/polyglot/`.
///
/// # Panics
/// When it has not been built, naming the script that builds it.
pub fn polyglot_component(name: &str) -> PathBuf {
    let path = examples_dir()
        .join("target")
        .join("polyglot")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/polyglot.sh (scripts/test.sh does)",
        path.display()
    );
    path
}
