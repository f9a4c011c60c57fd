//! A Function's life under the operator: applied, resolved, Ready, served
//! by real gateway and runtime processes, changed, broken, fixed, deleted.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::time::Duration;

use crate::support::{Sluice, component, eventually, example, http_get, wait_answer};

#[test]
fn a_configmap_function_becomes_ready_is_served_and_follows_its_changes() {
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &[]);
    let (_gateway, gateway) = sluice.gateway();
    let _runtime = sluice.runtime();

    sluice.component_config_map("hello");
    sluice.apply(&example("hello"));
    sluice.cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "fn/hello",
        "-n",
        "default",
        "--timeout=60s",
    ]);
    let table = sluice
        .cluster
        .kubectl_ok(&["get", "fn", "hello", "-n", "default"]);
    for column in ["READY", "REPLICAS", "QUEUE", "URL", "AGE", "True"] {
        assert!(table.contains(column), "{column} missing:\n{table}");
    }
    assert!(
        table.contains("http://gateway.test:8080/fn/default/hello/"),
        "{table}"
    );
    wait_answer(gateway, "/fn/default/hello/", 200, "Hello from Sluice!");
    wait_answer(gateway, "/hello", 200, "Hello from Sluice!");

    // A new env value is served without restarting anything.
    sluice.apply(&example("hello").replace("value: Hello", "value: Hola"));
    wait_answer(gateway, "/fn/default/hello/", 200, "Hola from Sluice!");

    // So is a new component in the ConfigMap: echo now answers there.
    sluice.config_map("default", "hello-wasm", "hello.wasm", &component("echo"));
    eventually(
        "the ConfigMap's new component served",
        Duration::from_secs(60),
        || {
            let (status, body) = http_get(gateway, "/fn/default/hello/")?;
            (status == 200 && !body.contains("from Sluice")).then_some(())
        },
    );
    let digest = sluice.field("default", "hello", "{.status.moduleDigest}");
    assert!(digest.starts_with("sha256:"), "{digest}");
    let reasons = sluice.event_reasons("default", "hello");
    assert!(reasons.iter().any(|r| r == "Ready"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Published"), "{reasons:?}");
}

/// Serves `body` at every path of a loopback port, for a bounded number of
/// requests, from a thread of its own.
fn serve_file(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}/hello.wasm")
}

#[test]
fn module_problems_show_in_conditions_and_events_until_fixed() {
    let sluice = Sluice::start();
    // The download server is on loopback, which the egress guard refuses
    // unless allowed.
    let _operator = sluice.operator("op-1", 15, &["--runtime-egress-allow=127.0.0.1"]);
    let (_gateway, gateway) = sluice.gateway();
    let function = |name: &str, module: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: {name}, namespace: default }}\nspec:\n  module: {module}\n"
        )
    };

    // A ConfigMap that does not exist yet.
    sluice.apply(&function(
        "late",
        "{ configMap: { name: late-wasm, key: m.wasm } }",
    ));
    let message = sluice.wait_ready("default", "late", "False", "ConfigMapNotFound");
    assert!(message.contains("late-wasm"), "{message}");
    sluice.config_map("default", "late-wasm", "m.wasm", &component("hello"));
    sluice.wait_ready("default", "late", "True", "Ready");

    // Bytes that are not a component.
    let junk = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(junk.path(), b"#!/bin/sh\necho not wasm\n").expect("junk written");
    sluice.config_map("default", "junk-wasm", "m.wasm", junk.path());
    sluice.apply(&function(
        "junk",
        "{ configMap: { name: junk-wasm, key: m.wasm } }",
    ));
    sluice.wait_ready("default", "junk", "False", "NotAComponent");

    // A URL whose bytes do not match the digest: nothing is registered.
    let wasm = std::fs::read(component("hello")).expect("the hello component");
    let url = serve_file(wasm.clone());
    let wrong = "0".repeat(64);
    sluice.apply(&function(
        "fetched",
        &format!("{{ url: \"{url}\", sha256: \"{wrong}\" }}"),
    ));
    let message = sluice.wait_ready("default", "fetched", "False", "ModuleDigestMismatch");
    assert!(message.contains(&wrong), "{message}");
    assert_eq!(
        http_get(gateway, "/fn/default/fetched/").map(|(s, _)| s),
        Some(404),
        "a function whose module does not match is not routed"
    );
    let right = sluice_api::ModuleDigest::of(&wasm).to_string();
    sluice.apply(&function(
        "fetched",
        &format!("{{ url: \"{url}\", sha256: \"{right}\" }}"),
    ));
    sluice.wait_ready("default", "fetched", "True", "Ready");

    for (name, reason) in [
        ("late", "ConfigMapNotFound"),
        ("junk", "NotAComponent"),
        ("fetched", "ModuleDigestMismatch"),
        ("late", "Ready"),
    ] {
        let reasons = sluice.event_reasons("default", name);
        assert!(reasons.iter().any(|r| r == reason), "{name}: {reasons:?}");
    }
}

#[test]
fn a_dedicated_function_owns_its_deployment_and_deleting_it_removes_everything() {
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &[]);
    let (_gateway, gateway) = sluice.gateway();
    sluice.component_config_map("misbehave");
    sluice.apply(&example("misbehave"));
    sluice.wait_ready("default", "misbehave", "True", "Ready");

    let deployment: serde_json::Value = serde_json::from_str(&sluice.cluster.kubectl_ok(&[
        "get",
        "deployment",
        "misbehave-runtime",
        "-n",
        "default",
        "-o",
        "json",
    ]))
    .expect("the Deployment as JSON");
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "Function"
    );
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["name"],
        "misbehave"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["args"][1], "default/misbehave");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let selector = sluice.field("default", "misbehave", "{.status.selector}");
    assert!(
        selector.contains("sluice.dev/function=misbehave"),
        "{selector}"
    );
    // Routed (no runtime serves it here, so the call times out), not unknown.
    wait_answer(gateway, "/fn/default/misbehave/status/200", 504, "timeout");
    // Queued for a runtime that never comes: deleting the Function drops
    // these, or a Function created again under the name would run them.
    for _ in 0..3 {
        let (status, _) =
            crate::support::http_post(gateway, "/async/fn/default/misbehave/status/200")
                .expect("the gateway answers");
        assert_eq!(status, 202);
    }

    sluice.cluster.kubectl_ok(&[
        "delete",
        "fn",
        "misbehave",
        "-n",
        "default",
        "--wait=true",
        "--timeout=60s",
    ]);
    eventually(
        "the Deployment garbage-collected",
        Duration::from_secs(60),
        || {
            let output = sluice.cluster.kubectl_with(
                &["get", "deployment", "misbehave-runtime", "-n", "default"],
                "",
            );
            (!output.status.success()).then_some(())
        },
    );
    wait_answer(
        gateway,
        "/fn/default/misbehave/status/200",
        404,
        "unknown_function",
    );
    let consumer = tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(async {
            let client = async_nats::connect(&sluice.nats.url).await.expect("NATS");
            let js = async_nats::jetstream::new(client);
            let stream = js
                .get_stream(sluice_api::names::INVOCATION_STREAM)
                .await
                .expect("the invocation stream");
            stream.consumer_info("fn_default_misbehave").await.is_ok()
        });
    assert!(!consumer, "the function's consumer is deleted with it");
    let queued = tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(async {
            let client = async_nats::connect(&sluice.nats.url).await.expect("NATS");
            let js = async_nats::jetstream::new(client);
            let mut stream = js
                .get_stream(sluice_api::names::INVOCATION_STREAM)
                .await
                .expect("the invocation stream");
            stream.info().await.expect("its info").state.messages
        });
    assert_eq!(
        queued, 0,
        "the function's queued invocations are dropped with it"
    );
}

#[test]
fn a_deployment_the_function_does_not_own_is_neither_taken_over_nor_deleted() {
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &[]);
    sluice.component_config_map("hello");
    sluice.cluster.kubectl_ok(&[
        "create",
        "deployment",
        "taken-runtime",
        "-n",
        "default",
        "--image=registry.test/someone-else:1",
    ]);
    let taken = |placement: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: taken, namespace: default }}\nspec:\n  module: {{ configMap: {{ name: hello-wasm, key: hello.wasm }} }}\n  placement: {placement}\n"
        )
    };
    sluice.apply(&taken("dedicated"));
    let message = sluice.wait_ready("default", "taken", "False", "PlacementConflict");
    assert!(message.contains("taken-runtime"), "{message}");
    sluice.apply(&taken("pool"));
    sluice.wait_ready("default", "taken", "True", "Ready");
    let image = sluice.cluster.kubectl_ok(&[
        "get",
        "deployment",
        "taken-runtime",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "registry.test/someone-else:1", "left as it was");
}

#[test]
fn an_oci_component_resolves_by_tag_to_its_digest_and_is_served() {
    let registry = crate::support::registry::Registry::start();
    let wasm = std::fs::read(component("hello")).expect("the hello component");
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(registry.push_component("sluice/hello:1.0.0", &wasm));
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &["--insecure-registry", &registry.host]);
    let (_gateway, gateway) = sluice.gateway();
    let _runtime = sluice.runtime();
    let reference = registry.reference("sluice/hello:1.0.0");
    sluice.apply(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: from-oci, namespace: default }}\nspec:\n  module: {{ oci: \"{reference}\" }}\n"
    ));
    sluice.wait_ready("default", "from-oci", "True", "Ready");
    let digest = sluice.field("default", "from-oci", "{.status.moduleDigest}");
    assert_eq!(
        digest,
        format!("sha256:{}", sluice_api::ModuleDigest::of(&wasm))
    );
    wait_answer(gateway, "/fn/default/from-oci/", 200, "Hello from Sluice!");
}

/// The Python and JavaScript cluster examples, as committed but for the
/// registry's name, pulled from a registry and served.
#[test]
fn the_python_and_javascript_cluster_examples_are_served_from_a_registry() {
    let registry = crate::support::registry::Registry::start();
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &["--insecure-registry", &registry.host]);
    let (_gateway, gateway) = sluice.gateway();
    let _runtime = sluice.runtime();
    let pushing = tokio::runtime::Runtime::new().expect("a tokio runtime");
    for name in ["hello-py", "events-py", "hello-js"] {
        let wasm = std::fs::read(sluice_examples::polyglot_component(name)).unwrap();
        pushing.block_on(registry.push_component(&format!("sluice-examples/{name}:0.1.0"), &wasm));
        sluice.apply(&example(name).replace("registry.example.com", &registry.host));
    }
    for name in ["hello-py", "events-py", "hello-js"] {
        sluice.wait_ready("default", name, "True", "Ready");
    }
    wait_answer(gateway, "/fn/default/hello-py/", 200, "Hello from Python!");
    wait_answer(
        gateway,
        "/fn/default/hello-js/x",
        200,
        "Hello from JavaScript! /x",
    );
}
