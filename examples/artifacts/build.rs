//! Compiles the guest workspace in `examples/` for `wasm32-wasip2`, so that
//! `cargo test` and `cargo bench` always run against current components.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let examples = manifest_dir
        .parent()
        .expect("examples/artifacts has a parent")
        .to_owned();
    for member in ["hello", "echo", "misbehave"] {
        println!(
            "cargo:rerun-if-changed={}",
            examples.join(member).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            examples.join(member).join("Cargo.toml").display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        examples.join("Cargo.toml").display()
    );

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&examples)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--workspace",
        ])
        .arg("--target-dir")
        .arg(examples.join("target"));
    // The outer build's flags are for the host, not for the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(var);
    }
    let status = build.status().expect("cargo runs");
    if !status.success() {
        panic!(
            "building the example components failed; is the target installed? \
             `rustup target add wasm32-wasip2`"
        );
    }
    let out = examples
        .join("target")
        .join("wasm32-wasip2")
        .join("release");
    println!(
        "cargo:rustc-env=SLUICE_EXAMPLE_COMPONENTS={}",
        out.display()
    );
    println!("cargo:rustc-env=SLUICE_EXAMPLES_DIR={}", examples.display());
}
