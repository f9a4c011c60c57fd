//! A tenant's attacks under the operator, against the real API server:
//! taking another namespace's custom path, triggers outside the
//! namespace's scope on a cluster that scopes them, and an OCI module
//! source that would make the operator reach an internal address.

use std::time::{Duration, SystemTime};

use crate::support::{Sluice, component, eventually, wait_answer};

fn function(namespace: &str, name: &str, extra: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: {name}, namespace: {namespace} }}\nspec:\n  module: {{ configMap: {{ name: wasm, key: m.wasm }} }}\n{extra}"
    )
}

#[test]
fn a_later_function_cannot_take_a_path_and_is_told_who_owns_it() {
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &[]);
    let (_gateway, gateway) = sluice.gateway();
    let _runtime = sluice.runtime();
    for (namespace, module) in [("shop", "hello"), ("tenant-b", "echo")] {
        sluice
            .cluster
            .kubectl_ok(&["create", "namespace", namespace]);
        sluice.config_map(namespace, "wasm", "m.wasm", &component(module));
    }
    sluice.apply(&function(
        "shop",
        "checkout",
        "  triggers: { http: { path: /checkout } }\n",
    ));
    sluice.wait_ready("shop", "checkout", "True", "Ready");
    wait_answer(gateway, "/checkout", 200, "Hello from Sluice!");
    // Creation times have whole seconds: the thief comes a second later,
    // so that the owner is decided by time, not by the thief's name,
    // which sorts first.
    let created = SystemTime::now();
    eventually("a new second", Duration::from_secs(5), || {
        (created.elapsed().ok()? >= Duration::from_secs(1)).then_some(())
    });
    sluice.apply(&function(
        "tenant-b",
        "a-thief",
        "  triggers: { http: { path: /checkout/ } }\n",
    ));
    let message = sluice.wait_ready("tenant-b", "a-thief", "False", "PathConflict");
    assert!(
        message.contains("/checkout") && message.contains("shop/checkout"),
        "{message}"
    );
    let reasons = sluice.event_reasons("tenant-b", "a-thief");
    assert!(reasons.iter().any(|r| r == "PathConflict"), "{reasons:?}");
    // The owner stays Ready and keeps its path; the thief keeps its own
    // default route.
    sluice.wait_ready("shop", "checkout", "True", "Ready");
    wait_answer(gateway, "/fn/tenant-b/a-thief/", 200, "");
    for _ in 0..5 {
        wait_answer(gateway, "/checkout", 200, "Hello from Sluice!");
    }
    // Once the owner is gone, the path passes to the next claimant.
    sluice
        .cluster
        .kubectl_ok(&["delete", "fn", "checkout", "-n", "shop"]);
    sluice.wait_ready("tenant-b", "a-thief", "True", "Ready");
}

#[test]
fn triggers_outside_the_namespaces_scope_leave_the_function_not_ready() {
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &["--trigger-subject-prefix={namespace}."]);
    sluice
        .cluster
        .kubectl_ok(&["create", "namespace", "tenant-b"]);
    sluice.config_map("tenant-b", "wasm", "m.wasm", &component("hello"));
    sluice.apply(&function(
        "tenant-b",
        "spy",
        "  triggers: { nats: [ { subject: shop.orders.created } ] }\n",
    ));
    let message = sluice.wait_ready("tenant-b", "spy", "False", "TriggerSubjectOutOfScope");
    assert!(
        message.contains("shop.orders.created") && message.contains("\"tenant-b.\""),
        "{message}"
    );
    let reasons = sluice.event_reasons("tenant-b", "spy");
    assert!(
        reasons.iter().any(|r| r == "TriggerSubjectOutOfScope"),
        "{reasons:?}"
    );
    sluice.apply(&function(
        "tenant-b",
        "spy",
        "  triggers: { nats: [ { subject: tenant-b.orders.created } ] }\n",
    ));
    sluice.wait_ready("tenant-b", "spy", "True", "Ready");
}

#[test]
fn an_oci_source_at_an_internal_address_is_refused_and_nothing_reaches_it() {
    // A loopback service the operator's pod could reach, and a registry
    // the admin named, which stays allowed.
    let internal = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    internal
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let port = internal.local_addr().expect("its address").port();
    let registry = crate::support::registry::Registry::start();
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(registry.push_component("sluice/hello:1", &component_bytes("hello")));
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &["--insecure-registry", &registry.host]);
    sluice
        .cluster
        .kubectl_ok(&["create", "namespace", "tenant-b"]);
    let oci = |name: &str, reference: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: {name}, namespace: tenant-b }}\nspec:\n  module: {{ oci: \"{reference}\" }}\n"
        )
    };
    sluice.apply(&oci("allowed", &registry.reference("sluice/hello:1")));
    for (name, reference, reason) in [
        // Only addresses on this machine, should the guard let one
        // through: 0.0.0.0 reaches the local host.
        (
            "unspecified",
            format!("0.0.0.0:{port}/latest/meta-data:1"),
            "an unspecified address",
        ),
        (
            "loopback",
            format!("127.0.0.1:{port}/sluice/hello:1"),
            "a loopback address",
        ),
    ] {
        sluice.apply(&oci(name, &reference));
        let message = sluice.wait_ready("tenant-b", name, "False", "ModuleDownloadRefused");
        assert!(
            message.contains(&reference) && message.contains(reason),
            "{message}"
        );
    }
    sluice.wait_ready("tenant-b", "allowed", "True", "Ready");
    match internal.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something connected to the internal listener: {other:?}"),
    }
}

fn component_bytes(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).expect("the component")
}
