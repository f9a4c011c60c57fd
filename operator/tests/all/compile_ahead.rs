//! A new pool Function's `Ready` waits for the warm pool's compile ahead
//! (`operator/src/compiled.rs`): on NATS with each part's permissions as
//! the chart gives them, a pool Deployment whose pod the test marks ready
//! (there is no kubelet here; the controllers count it), and a real pool
//! runtime that compiles and stores the component.

use std::time::Duration;

use crate::support::{Sluice, eventually, metrics};

const POOL: &str = "sluice-runtime-pool";
const POOL_NAMESPACE: &str = "sluice-system";

/// The pool's Deployment at one replica and its pod marked ready or not,
/// until the Deployment's status says so.
fn pool_ready(sluice: &Sluice, ready: bool) {
    let pod = eventually("the pool's pod", Duration::from_secs(60), || {
        let name = sluice.cluster.kubectl_ok(&[
            "get",
            "pods",
            "-n",
            POOL_NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/name={POOL}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ]);
        (!name.is_empty()).then_some(name)
    });
    let status = if ready { "True" } else { "False" };
    let patch = serde_json::json!({
        "status": {
            "phase": "Running",
            "conditions": [
                { "type": "Ready", "status": status },
                { "type": "ContainersReady", "status": status },
            ],
        }
    })
    .to_string();
    sluice.cluster.kubectl_ok(&[
        "patch",
        "pod",
        &pod,
        "-n",
        POOL_NAMESPACE,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
    let want = if ready { "1" } else { "" };
    eventually(
        &format!("the pool's readyReplicas {want:?}"),
        Duration::from_secs(60),
        || {
            (sluice.cluster.kubectl_ok(&[
                "get",
                "deployment",
                POOL,
                "-n",
                POOL_NAMESPACE,
                "-o",
                "jsonpath={.status.readyReplicas}",
            ]) == want)
                .then_some(())
        },
    );
}

fn pool_function(sluice: &Sluice, name: &str, config_map: &str, key: &str) {
    sluice.apply(&format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: {name}, namespace: default }}
spec:
  module: {{ configMap: {{ name: {config_map}, key: {key} }} }}
"
    ));
}

#[test]
fn a_pool_function_is_ready_once_the_warm_pool_has_compiled_its_component_ahead() {
    let sluice = Sluice::start_secure();
    sluice.component_config_map("misbehave");
    sluice.component_config_map("echo");
    sluice.apply(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {POOL}
  namespace: {POOL_NAMESPACE}
  labels: {{ app.kubernetes.io/name: {POOL} }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app.kubernetes.io/name: {POOL} }} }}
  template:
    metadata: {{ labels: {{ app.kubernetes.io/name: {POOL} }} }}
    spec: {{ containers: [ {{ name: runtime, image: registry.test/sluice-runtime:test }} ] }}
"
    ));
    pool_ready(&sluice, true);
    let _operator = sluice.operator(
        "op-1",
        15,
        &[
            "--leader-elect",
            "false",
            "--pool-deployment",
            &format!("{POOL_NAMESPACE}/{POOL}"),
            "--pool-min-replicas",
            "1",
            "--pool-max-replicas",
            "1",
            // Only the compile ends the wait here.
            "--compile-ahead-wait",
            "1h",
        ],
    );

    // The pool is ready but no runtime of it runs yet: nothing compiles.
    pool_function(&sluice, "first", "misbehave-wasm", "misbehave.wasm");
    let message = sluice.wait_ready("default", "first", "False", "CompilingAhead");
    assert!(
        message.contains("compiling its component ahead")
            && message.contains("--compile-ahead-wait"),
        "{message}"
    );
    assert!(
        sluice
            .event_reasons("default", "first")
            .contains(&"CompilingAhead".to_owned()),
        "an Event says why it waits"
    );
    assert_eq!(
        sluice
            .condition("default", "first", "QueueReady")
            .map(|c| c.0),
        Some("True".into()),
        "registered meanwhile: a request would be served"
    );

    // The pool's runtime compiles it ahead and stores it: Ready.
    let runtime = sluice.runtime();
    sluice.wait_ready("default", "first", "True", "Ready");
    let compiled = metrics(&runtime);
    assert!(
        compiled.contains(r#"sluice_runtime_compiles_total{trigger="ahead"} 1"#),
        "compiled ahead by the runtime, not by an invocation:\n{compiled}"
    );

    // Another Function of the same component does not wait.
    pool_function(&sluice, "second", "misbehave-wasm", "misbehave.wasm");
    sluice.wait_ready("default", "second", "True", "Ready");
    assert!(
        !sluice
            .event_reasons("default", "second")
            .contains(&"CompilingAhead".to_owned()),
        "its component was compiled already"
    );

    // With no ready runtime in the pool, nothing compiles ahead, and a new
    // component does not hold Ready back (the bound is an hour): its first
    // invocation loads it.
    drop(runtime);
    pool_ready(&sluice, false);
    pool_function(&sluice, "cold", "echo-wasm", "echo.wasm");
    sluice.wait_ready("default", "cold", "True", "Ready");
}
