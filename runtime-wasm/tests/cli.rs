//! The `sluice-runtime` binary's own failures are clear and non-zero.

use std::process::Command;

#[test]
fn an_unreachable_nats_server_is_named_and_the_exit_is_non_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-runtime"))
        .args([
            "--nats",
            "nats://127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
fn a_bad_function_reference_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-runtime"))
        .args(["--nats", "nats://127.0.0.1:1", "--function", "no-slash"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a valid function reference"),
        "{stderr}"
    );
}
