//! The `sluice-runtime` binary's own failures are clear and non-zero, and
//! a NATS server that is not there yet is waited for.

use std::process::{Command, Stdio};

use sluice_testing::LateNats;

#[test]
fn the_runtime_waits_for_a_nats_server_started_after_it() {
    let late = LateNats::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runtime.log");
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], sluice_testing::free_port()));
    let mut runtime = Command::new(env!("CARGO_BIN_EXE_sluice-runtime"))
        .args(["--nats", &late.url, "--admin-listen", &admin.to_string()])
        .arg("--artifacts")
        .arg(dir.path().join("artifacts"))
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut exit_code = || {
        runtime
            .try_wait()
            .unwrap()
            .map(|status| status.code().unwrap_or(-1))
    };
    late.check_waiting(admin, log_text, &mut exit_code);
    // NATS comes, without the layout: the runtime waits for its owner.
    let nats = late.start();
    let waits_for_owner = || {
        log_text().contains("SLUICE_INVOCATIONS does not exist yet: waiting for the layout's owner")
    };
    let started = std::time::Instant::now();
    while !waits_for_owner() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{}",
            log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        sluice_testing::http::get(admin, "/readyz").map(|(status, _)| status),
        Some(503)
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = sluice_nats::connect(&nats.url, "the-owner", &Default::default())
            .await
            .unwrap();
        sluice_nats::Layout::reconcile(client, &Default::default())
            .await
            .unwrap();
    });
    late.check_ready(admin, log_text, &mut exit_code);
    let _ = runtime.kill();
    let _ = runtime.wait();
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

#[test]
fn a_password_variable_that_is_not_set_is_named_and_fatal() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-runtime"))
        .args(["--nats", "nats://127.0.0.1:1", "--nats-user", "u"])
        .args(["--nats-password-env", "SLUICE_TEST_NO_SUCH_VARIABLE"])
        .args(["--artifacts-in-memory", "--admin-listen", "127.0.0.1:0"])
        .env_remove("SLUICE_TEST_NO_SUCH_VARIABLE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--nats-password-env SLUICE_TEST_NO_SUCH_VARIABLE: no such environment variable"
        ),
        "{stderr}"
    );
}
