//! A tenant's attacks under the operator, against the real API server:
//! taking another namespace's custom path, and triggers outside the
//! namespace's scope on a cluster that scopes them.

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
