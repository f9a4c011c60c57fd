//! A tenant's attacks on other tenants' traffic, each a one-line manifest
//! or a subscription: refused at start-up with the rule named, or by the
//! NATS server itself when validation is skipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_gateway::local;
use sluice_testing::{NatsUser, SecureNats};

use crate::harness::loopback_config;

/// `sluice-gateway --local` on a folder of `files`; its start-up error.
async fn refused(files: &[(&str, String)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    local::start(loopback_config(dir.path()))
        .await
        .expect_err("start-up refuses the folder")
        .to_string()
}

/// The hello component as `name` in namespace `ns`, with `extra` appended
/// to its spec.
fn function(ns: &str, name: &str, extra: &str) -> String {
    let file = sluice_examples::component("hello");
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec:\n  module: {{ file: \"{}\" }}\n{extra}",
        file.display()
    )
}

#[tokio::test]
async fn a_spy_on_inboxes_or_sluice_subjects_cannot_be_created() {
    for (subject, rule) in [
        ("_INBOX.>", "reserved-inbox"),
        ("$KV.sluice-results.>", "reserved-system"),
        ("$JS.API.>", "reserved-system"),
        (">", "leading-wildcard"),
        ("sluice.invoke.default.hello", "reserved-sluice"),
        ("sluice.dlq.>", "reserved-sluice"),
    ] {
        let spy = function(
            "tenant-b",
            "spy",
            &format!("  triggers: {{ nats: [ {{ subject: \"{subject}\" }} ] }}\n"),
        );
        let error = refused(&[("spy.yaml", spy)]).await;
        assert!(
            error.contains("spy.yaml")
                && error.contains("spec.triggers.nats[0].subject")
                && error.contains(&format!("({rule} rule)")),
            "{subject}: {error}"
        );
    }
}

#[tokio::test]
async fn dead_letters_of_another_namespace_cannot_be_claimed() {
    let thief = function(
        "tenant-b",
        "thief",
        "  deadLetter: { subject: sluice.dlq.shop.checkout }\n",
    );
    let error = refused(&[("thief.yaml", thief)]).await;
    assert!(
        error.contains("spec.deadLetter.subject") && error.contains("sluice.dlq.tenant-b."),
        "{error}"
    );
}

#[tokio::test]
async fn a_path_claimed_twice_refuses_the_folder_naming_both_manifests() {
    let owner = function(
        "shop",
        "checkout",
        "  triggers: { http: { path: /checkout } }\n",
    );
    let thief = function(
        "tenant-b",
        "a-thief",
        "  triggers: { http: { path: /checkout/ } }\n",
    );
    let error = refused(&[("a-thief.yaml", thief), ("checkout.yaml", owner)]).await;
    assert!(
        error.contains("a-thief.yaml")
            && error.contains("checkout.yaml")
            && error.contains("shop/checkout")
            && error.contains("tenant-b/a-thief"),
        "{error}"
    );
}

/// Each Sluice part as a user with its set.
pub(crate) fn parts() -> [NatsUser<'static>; 4] {
    [
        ("gateway", "$SLUICE_GATEWAY"),
        ("events", "$SLUICE_EVENTS"),
        ("runtime", "$SLUICE_RUNTIME"),
        ("operator", "$SLUICE_OPERATOR"),
    ]
    .map(|(name, set)| NatsUser {
        name,
        permissions: Some(set),
    })
}

fn permissions_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/files/nats-permissions.conf")
}

/// A client of `nats` as `user`, whose server errors (permission
/// violations) arrive on the returned channel.
pub(crate) async fn client_as(
    nats: &SecureNats,
    user: &str,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (cert, key) = nats.client_cert();
    let security = sluice_nats::NatsSecurityArgs {
        nats_user: Some(user.into()),
        nats_password_file: Some(nats.password_file(user)),
        nats_ca_file: Some(nats.ca_file()),
        nats_cert_file: Some(cert),
        nats_key_file: Some(key),
        ..Default::default()
    }
    .security()
    .unwrap();
    let (errors, received) = tokio::sync::mpsc::unbounded_channel();
    let options = async_nats::ConnectOptions::new()
        .custom_inbox_prefix(sluice_nats::EVENTS_INBOX_PREFIX)
        .event_callback(move |event| {
            if let async_nats::Event::ServerError(e) = event {
                let _ = errors.send(e.to_string());
            }
            std::future::ready(())
        });
    let client = security
        .apply(options)
        .await
        .unwrap()
        .connect(nats.url())
        .await
        .unwrap();
    (client, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_bridge_user_is_refused_reserved_subjects_even_without_validation() {
    let nats = SecureNats::start(&permissions_file(), &parts());
    let (bridge, mut violations) = client_as(&nats, "events").await;
    for subject in [
        "_INBOX.>",
        "$KV.sluice-results.>",
        "$JS.API.>",
        "sluice.invoke.>",
        "sluice.dlq.>",
    ] {
        let _subscription = bridge.subscribe(subject).await.unwrap();
        bridge.flush().await.unwrap();
        let error = tokio::time::timeout(Duration::from_secs(10), violations.recv())
            .await
            .unwrap_or_else(|_| panic!("the server accepted a subscription to {subject}"))
            .unwrap();
        assert!(
            error.contains("Permissions Violation") && error.contains(subject),
            "{subject}: {error}"
        );
    }
    // A subscription to everything is accepted, but never delivers the
    // reserved subjects; an ordinary trigger subject still arrives.
    let mut everything = bridge.subscribe(">").await.unwrap();
    bridge.flush().await.unwrap();
    let (gateway, _) = client_as(&nats, "gateway").await;
    gateway
        .publish("sluice.invoke.shop.checkout", "stolen?".into())
        .await
        .unwrap();
    gateway
        .publish("_INBOX.reply", "stolen?".into())
        .await
        .unwrap();
    gateway.flush().await.unwrap();
    // The bridge's own request reply is delivered to `>` too: the server
    // handled the gateway's messages first, so any of them delivered would
    // have arrived before it.
    let reply = bridge.request("$JS.API.STREAM.NAMES", "".into()).await;
    assert!(reply.is_ok(), "{reply:?}");
    loop {
        let message = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut everything),
        )
        .await
        .expect("the allowed reply reaches the wide subscription")
        .unwrap();
        let subject = message.subject.as_str();
        assert!(
            !subject.starts_with("sluice.") && !subject.starts_with("_INBOX."),
            "the bridge received {subject}"
        );
        if subject.starts_with(sluice_nats::EVENTS_INBOX_PREFIX) {
            break;
        }
    }
    assert!(violations.try_recv().is_err(), "no other violation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_function_through_the_bridges_own_user() {
    use crate::distributed::Process;
    use crate::harness::{ECHO_ON_ORDERS, TestGateway, eventually, manifest_dir};

    // The parts with their sets, and an application's client that may
    // publish anything.
    let mut users = parts().to_vec();
    users.push(NatsUser {
        name: "client",
        permissions: None,
    });
    let nats = SecureNats::start(&permissions_file(), &users);
    let work = tempfile::tempdir().unwrap();
    let dir = manifest_dir(ECHO_ON_ORDERS);
    let published = std::process::Command::new(crate::distributed::gateway_binary())
        .envs(nats.env("operator"))
        .args(["publish", "--nats", nats.url()])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(published.status.success(), "{published:?}");
    let runtime_env = nats.env("runtime");
    let runtime_env: Vec<(&str, &str)> = runtime_env
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let runtime = Process::runtime(nats.url(), work.path(), "runtime", &runtime_env);
    // The gateway as its own user, its event bridge as the events user.
    let mut gateway_env = nats.env("gateway");
    gateway_env.push(("SLUICE_EVENTS_NATS_USER".into(), "events".into()));
    gateway_env.push((
        "SLUICE_EVENTS_NATS_PASSWORD_FILE".into(),
        nats.password_file("events").display().to_string(),
    ));
    let gateway_env: Vec<(&str, &str)> = gateway_env
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let (gateway, addr) = Process::gateway(nats.url(), work.path(), &gateway_env).await;
    let gw = TestGateway::remote(addr);
    gw.wait_routed("default/echo").await;

    let (client, _) = client_as(&nats, "client").await;
    let id = sluice_gateway::events::event_invocation_id(
        &"default/echo".parse().unwrap(),
        "orders.created",
        "order-18",
    );
    // Core NATS drops what nobody subscribes to yet: sent until recorded,
    // its id making the copies one invocation.
    eventually(
        "the event is recorded",
        Duration::from_secs(30),
        async || {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", "order-18");
            client
                .publish_with_headers("orders.created", headers, "{}".into())
                .await
                .unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            match gw.get(&format!("/invocations/{id}")).await {
                reply if reply.status == http::StatusCode::OK => Ok(()),
                reply => Err(format!("{} {}", reply.status, reply.text())),
            }
        },
    )
    .await;
    let record = gw.wait_record(id.as_str()).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    for process in [&runtime, &gateway] {
        let log = process.log_text();
        assert!(!log.contains("NATS refused a permission"), "{log}");
    }
}
