//! The operator's load on the API server: one watch per kind, shared by
//! the controller and the autoscaler, counted by the API server itself.

use std::time::Duration;

use crate::support::{Sluice, component, eventually};

/// Watches open on the API server per resource, from its `/metrics`
/// (`apiserver_longrunning_requests` with `verb="WATCH"`): (Functions,
/// Deployments).
fn watches(sluice: &Sluice) -> (u64, u64) {
    let metrics = sluice.cluster.kubectl_ok(&["get", "--raw", "/metrics"]);
    let count = |resource: &str| -> u64 {
        metrics
            .lines()
            .filter(|line| {
                line.starts_with("apiserver_longrunning_requests{")
                    && line.contains(r#"verb="WATCH""#)
                    && line.contains(&format!(r#"resource="{resource}""#))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|value| value as u64)
            .sum()
    };
    (count("functions"), count("deployments"))
}

#[test]
fn the_operator_watches_functions_and_its_deployments_once_each() {
    let sluice = Sluice::start();
    let mut operator = sluice.operator("op-1", 15, &[]);
    sluice.config_map("default", "wasm", "m.wasm", &component("hello"));
    sluice.apply(
        "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: { name: hello, namespace: default }\nspec:\n  module: { configMap: { name: wasm, key: m.wasm } }\n",
    );
    // Reconciled (the controller watches) and autoscaling (its stores are
    // ready: it says so).
    sluice.wait_ready("default", "hello", "True", "Ready");
    eventually("the autoscaler to start", Duration::from_secs(30), || {
        operator.log().contains("autoscaling").then_some(())
    });
    let with = watches(&sluice);
    operator.kill();
    // What the operator held is what its going took away (the
    // controller-manager's own watches stay).
    let mut last = with;
    let without = eventually(
        "the operator's watches to close",
        Duration::from_secs(30),
        || {
            let now = watches(&sluice);
            let settled = now == last && now.0 < with.0 && now.1 < with.1;
            last = now;
            std::thread::sleep(Duration::from_millis(900));
            settled.then_some(now)
        },
    );
    assert_eq!(
        (with.0 - without.0, with.1 - without.1),
        (1, 1),
        "the operator's watches of (Functions, Deployments): {with:?} with it, {without:?} without"
    );
}
