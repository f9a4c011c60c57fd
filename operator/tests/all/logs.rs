//! Logs outlive the pod: what a dedicated function's runtime wrote is
//! served after the autoscaler took that runtime away (a real control
//! plane, the stand-in kubelet, real gateway, operator and runtime
//! processes).

use std::time::Duration;

use crate::support::{Sluice, component, eventually, http_get, post_async, settled};

#[test]
fn a_dedicated_functions_last_logs_are_served_after_it_scaled_to_zero() {
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &["--autoscale-interval", "1s"]);
    let (_gateway, gateway) = sluice.gateway();
    let kubelet = sluice.kubelet(Duration::ZERO);
    sluice.config_map(
        "default",
        "misbehave-wasm",
        "misbehave.wasm",
        &component("misbehave"),
    );
    sluice.apply(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: talker, namespace: default }
spec:
  module: { configMap: { name: misbehave-wasm, key: misbehave.wasm } }
  placement: dedicated
  scaling: { scaleDownDelay: 0s, scaleToZeroAfter: 2s }
",
    );
    sluice.wait_ready("default", "talker", "True", "Ready");
    let ids = post_async(gateway, "/async/fn/default/talker/say/before-zero", 1);
    assert_eq!(settled(gateway, &ids[0]), "succeeded");
    let deployment = "talker-runtime";
    eventually("at zero", Duration::from_secs(60), || {
        (kubelet.replica_history("default", deployment).last() == Some(&0)
            && kubelet.alive("default", deployment) == 0)
            .then_some(())
    });

    let (status, body) =
        http_get(gateway, &format!("/invocations/{}/logs", ids[0])).expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    let logs: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        logs["attempts"][0]["lines"][0]["line"], "before-zero",
        "{logs}"
    );
    assert_eq!(
        logs["attempts"][0]["lines"][0]["stream"], "stdout",
        "{logs}"
    );
    let (status, body) =
        http_get(gateway, "/logs/default/talker?since=10m").expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("before-zero"), "{body}");
}
