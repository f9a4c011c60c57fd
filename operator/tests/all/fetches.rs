//! How often the operator fetches a module: once per change of its source,
//! however often the Function is reconciled (scales, touched Secrets,
//! resyncs), counted in a real OCI registry's own log.

use std::time::Duration;

use crate::support::registry::Registry;
use crate::support::{Sluice, component, eventually};

const KEY: &str = "a-key-0123456789abcdef0123456789abcdef";

/// Requests in the registry's log whose line holds `method` and `path`.
fn requests(registry: &Registry, method: &str, path: &str) -> usize {
    registry
        .log()
        .lines()
        .filter(|line| line.contains(&format!("\"{method} {path}")))
        .count()
}

fn function(registry: &Registry, image: &str) -> String {
    let reference = registry.reference(image);
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: pulled, namespace: default }}\nspec:\n  placement: dedicated\n  module: {{ oci: \"{reference}\" }}\n  auth: {{ apiKeys: {{ secretName: pulled-keys }} }}\n"
    )
}

fn keys(sluice: &Sluice, n: usize) {
    sluice.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: pulled-keys, namespace: default }}\nstringData: {{ ci: \"{KEY}-{n}\" }}\n"
    ));
}

#[test]
fn fifty_scales_and_reconciles_of_an_oci_function_pull_its_module_once_and_a_new_source_once_more()
{
    let registry = Registry::with_access_log();
    let pushing = tokio::runtime::Runtime::new().expect("a tokio runtime");
    for (image, name) in [("sluice/hello:1", "hello"), ("sluice/echo:1", "echo")] {
        let wasm = std::fs::read(component(name)).expect("a component");
        pushing.block_on(registry.push_component(image, &wasm));
    }
    let hello_blobs = "/v2/sluice/hello/blobs/";
    let echo_blobs = "/v2/sluice/echo/blobs/";
    let manifests = "/v2/sluice/hello/manifests/";
    let pushed = requests(&registry, "GET", hello_blobs);
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &["--insecure-registry", &registry.host]);
    keys(&sluice, 0);
    sluice.apply(&function(&registry, "sluice/hello:1"));
    sluice.wait_ready("default", "pulled", "True", "Ready");
    let one_pull = requests(&registry, "GET", hello_blobs) - pushed;
    assert!(one_pull > 0, "no blob request logged:\n{}", registry.log());

    // Fifty scales of its Deployment, and reconciles for certain: each
    // change of its API keys' Secret reconciles it (and resolves the tag).
    for replicas in 0..50 {
        sluice.cluster.kubectl_ok(&[
            "scale",
            "deployment",
            "pulled-runtime",
            "-n",
            "default",
            &format!("--replicas={}", replicas % 3),
        ]);
    }
    for n in 1..=5 {
        let seen = requests(&registry, "HEAD", manifests);
        keys(&sluice, n);
        eventually(
            "a reconcile resolving the tag",
            Duration::from_secs(30),
            || (requests(&registry, "HEAD", manifests) > seen).then_some(()),
        );
    }
    sluice.wait_ready("default", "pulled", "True", "Ready");
    assert_eq!(
        requests(&registry, "GET", hello_blobs) - pushed,
        one_pull,
        "the module was pulled again:\n{}",
        registry.log()
    );

    // A new source: pulled once.
    let echo_before = requests(&registry, "GET", echo_blobs);
    sluice.apply(&function(&registry, "sluice/echo:1"));
    let digest = std::fs::read(component("echo")).map(|wasm| sluice_api::ModuleDigest::of(&wasm));
    let wanted = format!("sha256:{}", digest.expect("the echo component"));
    eventually("the new module", Duration::from_secs(60), || {
        (sluice.field("default", "pulled", "{.status.moduleDigest}") == wanted).then_some(())
    });
    assert_eq!(
        requests(&registry, "GET", echo_blobs) - echo_before,
        one_pull,
        "the new source was not pulled exactly once:\n{}",
        registry.log()
    );
    assert_eq!(requests(&registry, "GET", hello_blobs) - pushed, one_pull);
}
