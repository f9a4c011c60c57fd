//! Bad manifests and modules stop start-up with a message naming the file
//! and the field.

use std::process::Command;

use sluice_gateway::local;

use crate::harness::{HELLO, loopback_config, with_components};

async fn start_error(files: &[(&str, &[u8])]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let error = local::start(loopback_config(dir.path()))
        .await
        .expect_err("start-up fails");
    (dir, error.to_string())
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_named_at_start_up() {
    let manifest = "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {name: broken}\nspec:\n  module: {file: broken.wasm}\n";
    let (_dir, error) = start_error(&[
        ("broken.yaml", manifest.as_bytes()),
        ("broken.wasm", b"\0asm garbage"),
    ])
    .await;
    assert!(error.contains("broken.yaml"), "{error}");
    assert!(error.contains("spec.module.file"), "{error}");
    assert!(error.contains("not a WebAssembly component"), "{error}");

    // A core module is WebAssembly but not a component.
    let core_module = b"\0asm\x01\0\0\0";
    let (_dir, error) = start_error(&[
        ("broken.yaml", manifest.as_bytes()),
        ("broken.wasm", core_module),
    ])
    .await;
    assert!(error.contains("not a WebAssembly component"), "{error}");
}

#[tokio::test]
async fn a_manifest_with_a_wrong_field_is_named_at_start_up() {
    let good = with_components(HELLO);
    let bad = "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {name: typo}\nspec:\n  module: {file: x.wasm}\n  timout: 5s\n";
    let (_dir, error) = start_error(&[
        ("a-good.yaml", good.as_bytes()),
        ("b-bad.yaml", bad.as_bytes()),
    ])
    .await;
    assert!(error.contains("b-bad.yaml"), "{error}");
    assert!(
        error.contains("spec") && error.contains("timout"),
        "{error}"
    );

    let wrong_type = "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {name: typed}\nspec:\n  module: {file: x.wasm}\n  concurrency: lots\n";
    let (_dir, error) = start_error(&[("typed.yaml", wrong_type.as_bytes())]).await;
    assert!(
        error.contains("typed.yaml") && error.contains("spec.concurrency"),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_module_file_and_a_duplicate_function_are_named() {
    let missing = "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {name: ghost}\nspec:\n  module: {file: nowhere.wasm}\n";
    let (_dir, error) = start_error(&[("ghost.yaml", missing.as_bytes())]).await;
    assert!(
        error.contains("ghost.yaml") && error.contains("nowhere.wasm"),
        "{error}"
    );

    let good = with_components(HELLO);
    let (_dir, error) =
        start_error(&[("one.yaml", good.as_bytes()), ("two.yaml", good.as_bytes())]).await;
    assert!(
        error.contains("two.yaml") && error.contains("already defined in"),
        "{error}"
    );
}

#[test]
fn the_binary_exits_non_zero_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {name: bad}\nspec:\n  module: {file: x.wasm}\n  retry: {maxAttempts: many}\n";
    std::fs::write(dir.path().join("bad.yaml"), bad).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .arg("--local")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("spec.retry.maxAttempts"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unreadable_manifest_is_named_as_unreadable_not_as_bad_yaml() {
    let (_dir, error) = start_error(&[("latin1.yaml", b"name: caf\xe9\n")]).await;
    assert!(
        error.contains("cannot read") && error.contains("latin1.yaml"),
        "{error}"
    );
    assert!(!error.contains("not valid YAML"), "{error}");
}
