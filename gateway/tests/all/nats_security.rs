//! NATS as a careful deployment runs it: TLS with a CA of the test's own
//! and client certificates, a user per part with the permissions of
//! `charts/sluice/files/nats-permissions.conf` (the documented file
//! itself), and the gateway, runtime and publisher as separate processes
//! given their credentials through the environment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use sluice_testing::{NatsUser, SecureNats};

use crate::distributed::{Process, gateway_binary, runtime_binary};
use crate::harness::{HELLO, TestGateway, manifest_dir};

/// The documented permission sets.
fn permissions_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/files/nats-permissions.conf")
}

/// `misbehave` as `talker`, to write log lines.
const TALKER: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: talker }
spec:
  module: { file: "{misbehave}" }
"#;

/// What the parts log when the server refuses them a subject.
const VIOLATION: &str = "NATS refused a permission";

fn users() -> [NatsUser<'static>; 4] {
    crate::tenancy::parts()
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

/// `sluice-gateway publish` of `manifest` as `user`; its stderr.
fn publish(nats: &SecureNats, user: &str, manifest: &str) -> String {
    let dir = manifest_dir(manifest);
    let out = Command::new(gateway_binary())
        .envs(nats.env(user))
        .env("RUST_LOG", "info")
        .args(["publish", "--nats", nats.url()])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "publish failed: {stderr}");
    stderr
}

/// `hello`, whose successes chain into `echo`, whose successes go to a
/// subject: both kinds of destination under the runtime's set.
const CHAINED: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello }
spec:
  module: { file: "{hello}" }
  destinations:
    onSuccess: { function: echo }
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: echo }
spec:
  module: { file: "{echo}" }
  destinations:
    onSuccess: { subject: sluice.dest.default.echo.done }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_runtime_serve_over_tls_with_the_documented_permissions() {
    // The parts, and an application's client watching the destination.
    let mut all = users().to_vec();
    all.push(NatsUser {
        name: "client",
        permissions: None,
    });
    let nats = SecureNats::start(&permissions_file(), &all);
    let (client, _) = crate::tenancy::client_as(&nats, "client").await;
    let mut delivered = client.subscribe("sluice.dest.default.>").await.unwrap();
    client.flush().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    // The operator's set publishes, as the operator would.
    let published = publish(&nats, "operator", &format!("{CHAINED}---{TALKER}"));
    assert!(!published.contains(VIOLATION), "{published}");
    let runtime_env = nats.env("runtime");
    let runtime = Process::runtime(nats.url(), work.path(), "runtime", &borrowed(&runtime_env));
    let gateway_env = nats.env("gateway");
    let (gateway, addr) = Process::gateway(nats.url(), work.path(), &borrowed(&gateway_env)).await;
    let gw = TestGateway::remote(addr);
    gw.wait_routed("default/hello").await;

    let reply = gw
        .wait_answer("/fn/default/hello", |r| r.status == StatusCode::OK)
        .await;
    assert_eq!(reply.text(), "Hello from Sluice!\n");
    let id = gw.submit("/async/fn/default/hello", &[], "").await;
    let record = gw.wait_record(&id).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    // Long-polling reads the record through a watch.
    let again = gw.get(&format!("/invocations/{id}?wait=1s")).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    let dead = gw.get("/dead-letters/default/hello").await;
    assert_eq!(dead.status, StatusCode::OK, "{}", dead.text());
    // The destination chains into echo, whose record then goes to its
    // subject: neither is refused (checked in the logs below).
    let chained = sluice_api::destination::chained_id(
        &sluice_api::InvocationId::parse(&id).unwrap(),
        sluice_api::destination::DestinationKind::Success,
        &"default/echo".parse().unwrap(),
    );
    let record = gw.wait_succeeded(chained.as_str()).await;
    assert_eq!(
        crate::harness::stored_header(&record, "x-echo-h-ce-subject"),
        id
    );
    let done = tokio::time::timeout(
        Duration::from_secs(30),
        futures::StreamExt::next(&mut delivered),
    )
    .await
    .expect("echo's record reaches its subject")
    .unwrap();
    assert_eq!(done.subject.as_str(), "sluice.dest.default.echo.done");
    // The runtime keeps each attempt's log; the gateway reads them back.
    let id = gw
        .submit("/async/fn/default/talker/say/permitted", &[], "")
        .await;
    let record = gw.wait_record(&id).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    let logs = gw.get(&format!("/invocations/{id}/logs")).await;
    assert_eq!(logs.status, StatusCode::OK, "{}", logs.text());
    assert_eq!(logs.json()["attempts"][0]["lines"][0]["line"], "permitted");
    let recent = gw.get("/logs/default/talker?since=10m").await;
    assert!(recent.text().contains("permitted"), "{}", recent.text());

    for process in [&runtime, &gateway] {
        let log = process.log_text();
        assert!(!log.contains(VIOLATION), "{log}");
    }
}

/// Starts `binary` with `args` and `env`, waits (20s at most) for it to
/// exit, and returns its log after checking it failed.
async fn fails(binary: &Path, args: &[&str], env: &[(String, String)], dir: &Path) -> String {
    let mut command = Command::new(binary);
    command.args(args).envs(env.iter().cloned());
    let name = binary.file_name().unwrap().to_string_lossy().into_owned();
    let mut process = Process::spawn(command, dir.join(format!("{name}.log")));
    let status = process.wait_exit(Duration::from_secs(20)).await;
    let log = process.log_text();
    assert!(!status.success(), "{name} exited successfully: {log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_an_untrusted_server_stop_each_part_with_the_reason() {
    let nats = SecureNats::start(&permissions_file(), &users());
    let work = tempfile::tempdir().unwrap();
    let wrong = work.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let with = |user: &str, name: &str, value: &Path| {
        let mut env = nats.env(user);
        env.retain(|(n, _)| n != name);
        env.push((name.to_owned(), value.display().to_string()));
        env
    };
    let refused = format!(
        "NATS at {} refused the credentials: authorization violation",
        nats.url()
    );
    let untrusted = format!("TLS with NATS at {} failed", nats.url());
    let gateway_args = [
        "--nats",
        nats.url(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    let runtime_args = ["--nats", nats.url(), "--admin-listen", "127.0.0.1:0"];
    let cases: [(PathBuf, &[&str], &str); 2] = [
        (gateway_binary(), &gateway_args, "gateway"),
        (runtime_binary(), &runtime_args, "runtime"),
    ];
    for (binary, args, user) in cases {
        let log = fails(
            &binary,
            args,
            &with(user, "SLUICE_NATS_PASSWORD_FILE", &wrong),
            work.path(),
        )
        .await;
        assert!(log.contains(&refused), "{log}");
        let log = fails(
            &binary,
            args,
            &with(user, "SLUICE_NATS_CA_FILE", &nats.other_ca_file()),
            work.path(),
        )
        .await;
        assert!(log.contains(&untrusted), "{log}");
    }
    // Half a pair of flags is refused before anything connects, by name.
    let mut env = nats.env("gateway");
    env.retain(|(n, _)| n != "SLUICE_NATS_KEY_FILE");
    let log = fails(&gateway_binary(), &gateway_args, &env, work.path()).await;
    assert!(
        log.contains("--nats-cert-file needs --nats-key-file"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_outside_the_permissions_is_logged_as_a_violation() {
    let nats = SecureNats::start(&permissions_file(), &users());
    let work = tempfile::tempdir().unwrap();
    publish(&nats, "operator", HELLO);
    // A runtime with the gateway's credentials, and so its permissions,
    // may neither hear cancels, read components nor pull invocations.
    let env = nats.env("gateway");
    let runtime = Process::runtime(nats.url(), work.path(), "runtime", &borrowed(&env));
    let line = runtime.wait_for_log(VIOLATION).await;
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["level"], "ERROR", "{line}");
    let subject = json["fields"]["subject"].as_str().unwrap();
    match json["fields"]["operation"].as_str() {
        Some("publish") => assert!(
            subject.starts_with("$JS.API.CONSUMER.")
                || subject.starts_with("$JS.API.DIRECT.GET.OBJ_"),
            "{line}"
        ),
        // Its first moves: listening for new invocations, which wake
        // workers, and for cancels of running ones.
        Some("subscribe") => assert!(
            subject == "sluice.invoke.>" || subject == "sluice.cancel.>",
            "{line}"
        ),
        _ => panic!("neither a publish nor a subscription: {line}"),
    }
}
