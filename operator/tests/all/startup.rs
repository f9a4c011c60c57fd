//! What `sluice-operator` says when it cannot start, and its `crd`
//! subcommand.

use std::process::Command;
use std::time::Duration;

use crate::support::{Sluice, eventually, free_port};

#[test]
fn crd_prints_the_committed_crd() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-operator"))
        .arg("crd")
        .output()
        .expect("sluice-operator runs");
    assert!(output.status.success());
    let committed = std::fs::read_to_string(sluice_testing::repo_root().join("crds/function.yaml"))
        .expect("crds/function.yaml");
    assert_eq!(String::from_utf8_lossy(&output.stdout), committed);
}

/// Waits for `process` to exit and returns its log.
fn exited(process: &mut crate::support::Process) -> String {
    eventually("the operator to exit", Duration::from_secs(60), || {
        process.exit_code().map(|code| {
            assert_ne!(code, 0, "it exited 0:\n{}", process.log());
        })
    });
    process.log()
}

#[test]
fn the_operator_exits_with_a_clear_message_without_its_crd_or_nats() {
    let sluice = Sluice::start();
    // NATS unreachable: nothing listens on this loopback port.
    let mut operator = sluice.operator(
        "no-nats",
        15,
        &["--nats", &format!("nats://127.0.0.1:{}", free_port())],
    );
    let log = exited(&mut operator);
    assert!(log.contains("cannot connect to NATS"), "{log}");

    // The CRD removed.
    sluice
        .cluster
        .kubectl_ok(&["delete", "crd", "functions.sluice.dev", "--wait=true"]);
    let mut operator = sluice.operator("no-crd", 15, &[]);
    let log = exited(&mut operator);
    assert!(log.contains("the Function CRD is not installed"), "{log}");
}
