//! What `sluice-operator` says when it cannot start, and its `crd`
//! subcommand.

use std::process::Command;
use std::time::Duration;

use sluice_testing::LateNats;

use crate::support::{Sluice, eventually};

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
fn the_operator_waits_for_nats_and_exits_with_a_clear_message_without_its_crd() {
    let sluice = Sluice::start();
    // NATS not there yet: the operator waits, not ready, saying why, and
    // becomes ready when it comes.
    let late = LateNats::new();
    let mut operator = sluice.operator("late-nats", 15, &["--nats", &late.url]);
    let admin = operator.admin.expect("the operator's admin address");
    let log = operator.log.clone();
    let _nats = late.check_waiting_then_start(
        admin,
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || operator.exit_code(),
    );
    drop(operator);

    // The CRD removed.
    sluice
        .cluster
        .kubectl_ok(&["delete", "crd", "functions.sluice.dev", "--wait=true"]);
    let mut operator = sluice.operator("no-crd", 15, &[]);
    let log = exited(&mut operator);
    assert!(log.contains("the Function CRD is not installed"), "{log}");
}
