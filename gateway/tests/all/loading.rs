//! How a runtime loads components: on an invocation's first need, each
//! function on its own (never waiting for another's compile), from what
//! another runtime compiled when it can.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectStore;
use futures::TryStreamExt as _;
use sluice_api::names::FunctionRef;
use sluice_nats::layout::LayoutConfig;
use sluice_runtime::node::{self, Node, NodeConfig};

use crate::harness::{
    HELLO, NatsStack, TestGateway, eventually, manifest_dir, metric, stored_body,
};

/// The three large components (componentize-py and componentize-js
/// bundle an interpreter: 13–20 MB of wasm each).
const LARGE: [&str; 3] = ["hello-py", "hello-js", "events-py"];

/// Manifests of [`LARGE`], given time to compile on a busy machine.
fn large_functions() -> String {
    LARGE
        .map(|name| {
            format!(
                "---\napiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: {name} }}\nspec:\n  module: {{ file: \"{{{name}}}\" }}\n  timeout: 10m\n"
            )
        })
        .concat()
}

fn compiled(text: &str, function: &str) -> f64 {
    metric(
        text,
        &format!(
            r#"sluice_cold_start_seconds_count{{function="default/{function}",source="fetched"}}"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_function_answers_before_the_others_have_compiled() {
    let dir = manifest_dir(&large_functions());
    let mut stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    // Each compile is the first invocation's here.
    stack.precompile = false;
    stack.start_runtime().await;
    stack.publish_dir(dir.path()).await;
    for name in LARGE {
        let function: FunctionRef = format!("default/{name}").parse().unwrap();
        stack.wait_serving(&function).await;
    }
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/hello-py").await;
    let metrics = || {
        gw.nats
            .as_ref()
            .unwrap()
            .node
            .as_ref()
            .unwrap()
            .metrics_text()
    };
    // Every function is registered and pulled for, none loaded yet.
    let text = metrics();
    assert_eq!(
        metric(&text, "sluice_runtime_components_loaded"),
        0.0,
        "{text}"
    );

    let first = gw.submit("/async/fn/default/hello-py/", &[], "").await;
    let record = gw.wait_succeeded(&first).await;
    let body = String::from_utf8_lossy(&stored_body(&record)).into_owned();
    assert!(body.ends_with(" from Python!\n"), "{body}");
    // hello-py answered while the two other large components were still
    // not compiled: it never waited for them.
    let text = metrics();
    assert_eq!(compiled(&text, "hello-py"), 1.0, "{text}");
    assert_eq!(compiled(&text, "hello-js"), 0.0, "{text}");
    assert_eq!(compiled(&text, "events-py"), 0.0, "{text}");
    assert_eq!(
        metric(&text, "sluice_runtime_components_loaded"),
        1.0,
        "{text}"
    );

    // The two others, asked at once, load side by side and both answer.
    let js = gw.submit("/async/fn/default/hello-js/", &[], "").await;
    let events = gw
        .submit(
            "/async/fn/default/events-py/",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "e-1"),
                ("ce-source", "/test"),
                ("ce-type", "test.loaded"),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    gw.wait_succeeded(&js).await;
    gw.wait_succeeded(&events).await;
    // Held or dropped for room (the three exceed the default 64Mi of
    // --component-cache), each compiled once.
    let text = metrics();
    assert_eq!(
        metric(&text, "sluice_runtime_components_loaded")
            + metric(&text, "sluice_runtime_components_evicted"),
        3.0,
        "{text}"
    );
    let text = metrics();
    for name in LARGE {
        assert_eq!(compiled(&text, name), 1.0, "{name}: {text}");
    }
}

fn loads(node: &Node, source: &str) -> f64 {
    metric(
        &node.metrics_text(),
        &format!(
            r#"sluice_cold_start_seconds_count{{function="default/hello",source="{source}"}}"#
        ),
    )
}

/// The names of the artifacts in the shared bucket, with their sizes.
/// Waits up to 30 s until the bucket holds an artifact; the newest one.
async fn wait_shared(bucket: &ObjectStore) -> (String, usize) {
    eventually(
        "the compiled hello is shared",
        Duration::from_secs(30),
        async || match shared_artifacts(bucket).await.pop() {
            Some(artifact) => Ok(artifact),
            None => Err("none yet".to_owned()),
        },
    )
    .await
}

async fn shared_artifacts(bucket: &ObjectStore) -> Vec<(String, usize)> {
    let mut list = bucket.list().await.unwrap();
    let mut names = Vec::new();
    while let Some(info) = list.try_next().await.unwrap() {
        names.push((info.name, info.size));
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_runtime_compiles_a_registered_function_before_its_first_invocation() {
    let mut stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let bucket = stack.layout.artifacts.clone();
    stack.precompile = true;
    stack.start_runtime().await;
    let dir = manifest_dir(HELLO);
    stack.publish_dir(dir.path()).await;
    // Shared before anything invoked it, and held in memory: the default
    // 64Mi of --component-cache has room for it.
    wait_shared(&bucket).await;
    let text = stack.node.as_ref().unwrap().metrics_text();
    assert_eq!(
        metric(&text, "sluice_runtime_components_loaded"),
        1.0,
        "{text}"
    );

    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/hello").await;
    assert_eq!(
        gw.get("/fn/default/hello").await.text(),
        "Hello from Sluice!\n"
    );
    // The first invocation loaded nothing.
    let node = gw.nats.as_ref().unwrap().node.as_ref().unwrap();
    for source in ["shared", "fetched", "precompiled", "ahead"] {
        assert_eq!(
            loads(node, source),
            0.0,
            "{source}: {}",
            node.metrics_text()
        );
    }
    assert_eq!(compiles(node, "ahead"), 1.0);
    assert_eq!(compiles(node, "invocation"), 0.0);
}

/// A pool runtime started after another compiled a registered component
/// holds that one's artifact in memory before any invocation, compiling
/// nothing (one with no room for it holds nothing: the runtime's unit
/// tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_runtime_holds_what_another_compiled_ahead() {
    let mut stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let bucket = stack.layout.artifacts.clone();
    stack.precompile = true;
    stack.start_runtime().await;
    stack.publish_dir(manifest_dir(HELLO).path()).await;
    wait_shared(&bucket).await;
    let start = async |component_cache: u64| {
        let disk = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(&stack.server.url);
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.artifacts = Some(disk.path().to_owned());
        config.runtime.component_cache = sluice_api::ByteSize(component_cache);
        (Box::pin(node::start(config)).await.unwrap(), disk)
    };
    let held = |node: &Node| metric(&node.metrics_text(), "sluice_runtime_components_loaded");

    let (second, _disk) = start(64 << 20).await;
    eventually(
        "the second runtime holds hello",
        Duration::from_secs(30),
        async || {
            (held(&second) == 1.0)
                .then_some(())
                .ok_or(second.metrics_text())
        },
    )
    .await;
    assert_eq!(compiles(&second, "ahead"), 0.0);
    second.shutdown().await;
}

fn compiles(node: &Node, trigger: &str) -> f64 {
    metric(
        &node.metrics_text(),
        &format!(r#"sluice_runtime_compiles_total{{trigger="{trigger}"}}"#),
    )
}

/// The first invocation of a component still compiling ahead takes the
/// compiled bytes as the compile ends: the component is compiled once,
/// and the invocation waits neither for the upload nor for a second
/// compile. It is sent once the runtime reports the compile ahead under
/// way (whose bytes stay handed over until their upload ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_invocation_during_the_compile_ahead_takes_its_bytes() {
    let dir = manifest_dir(
        "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: { name: hello-py }\nspec:\n  module: { file: \"{hello-py}\" }\n  timeout: 10m\n",
    );
    let mut stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let bucket = stack.layout.artifacts.clone();
    stack.precompile = true;
    stack.start_runtime().await;
    stack.publish_dir(dir.path()).await;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/hello-py").await;
    let node = gw.nats.as_ref().unwrap().node.as_ref().unwrap();
    eventually(
        "hello-py compiles ahead",
        Duration::from_secs(60),
        async || {
            let text = node.metrics_text();
            let under_way = metric(
                &text,
                r#"sluice_runtime_compiles_in_progress{trigger="ahead"}"#,
            );
            if under_way == 1.0 { Ok(()) } else { Err(text) }
        },
    )
    .await;
    let id = gw.submit("/async/fn/default/hello-py/", &[], "").await;
    gw.wait_succeeded(&id).await;
    wait_shared(&bucket).await;
    let text = node.metrics_text();
    let compiles = |trigger: &str| {
        metric(
            &text,
            &format!(r#"sluice_runtime_compiles_total{{trigger="{trigger}"}}"#),
        )
    };
    let cold_start = |source: &str| {
        metric(
            &text,
            &format!(
                r#"sluice_cold_start_seconds_count{{function="default/hello-py",source="{source}"}}"#
            ),
        )
    };
    assert_eq!(compiles("ahead"), 1.0, "{text}");
    assert_eq!(compiles("invocation"), 0.0, "{text}");
    assert_eq!(cold_start("ahead"), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runtime_loads_what_another_compiled_and_compiles_past_a_corrupt_artifact() {
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    stack.publish_dir(manifest_dir(HELLO).path()).await;
    let url = stack.server.url.clone();
    let bucket = stack.layout.artifacts.clone();
    let gw = TestGateway::on_nats(stack, tempfile::tempdir().unwrap()).await;
    gw.wait_routed("default/hello").await;
    // Each runtime has a disk of its own, as a new pod does.
    let start = async || {
        let disk = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(&url);
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.artifacts = Some(disk.path().to_owned());
        // The first compiles at its first invocation, not before.
        config.precompile_registered = false;
        (Box::pin(node::start(config)).await.unwrap(), disk)
    };
    // Async, given time: a compile on a busy machine may outlast a sync
    // call's 30 s.
    let hello_answers = async || {
        let id = gw.submit("/async/fn/default/hello", &[], "").await;
        gw.wait_succeeded(&id).await;
    };

    let (first, _disk) = start().await;
    hello_answers().await;
    assert_eq!(loads(&first, "fetched"), 1.0);
    let stored = wait_shared(&bucket).await;
    first.shutdown().await;

    let (second, _disk) = start().await;
    hello_answers().await;
    assert_eq!(loads(&second, "shared"), 1.0, "{}", second.metrics_text());
    assert_eq!(loads(&second, "fetched"), 0.0);
    second.shutdown().await;

    // An artifact wasmtime refuses is not run: the runtime compiles, and
    // stores a good one in its place.
    bucket
        .put(stored.0.as_str(), &mut b"not machine code".as_slice())
        .await
        .unwrap();
    let (third, _disk) = start().await;
    hello_answers().await;
    assert_eq!(loads(&third, "shared"), 0.0);
    assert_eq!(loads(&third, "fetched"), 1.0);
    eventually(
        "the good artifact is shared again",
        Duration::from_secs(30),
        async || {
            let now = shared_artifacts(&bucket).await;
            (now == [stored.clone()])
                .then_some(())
                .ok_or(format!("{now:?}"))
        },
    )
    .await;
    third.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_without_a_folder_shares_and_loads_artifacts_in_memory() {
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    stack.publish_dir(manifest_dir(HELLO).path()).await;
    let url = stack.server.url.clone();
    let bucket = stack.layout.artifacts.clone();
    let gw = TestGateway::on_nats(stack, tempfile::tempdir().unwrap()).await;
    gw.wait_routed("default/hello").await;
    // No folder at all, as a pod with a read-only root and no volume.
    let start = async |in_memory: bool| {
        let mut config = NodeConfig::new(&url);
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.artifacts = None;
        config.artifacts_in_memory = in_memory;
        config.precompile_registered = false;
        Box::pin(node::start(config)).await.unwrap()
    };
    let hello_answers = async || {
        let id = gw.submit("/async/fn/default/hello", &[], "").await;
        gw.wait_succeeded(&id).await;
    };

    // What one compiles is shared from memory...
    let first = start(true).await;
    hello_answers().await;
    assert_eq!(loads(&first, "fetched"), 1.0);
    wait_shared(&bucket).await;
    first.shutdown().await;

    // ...and the next loads it into memory, compiling nothing.
    let second = start(true).await;
    hello_answers().await;
    assert_eq!(loads(&second, "shared"), 1.0, "{}", second.metrics_text());
    assert_eq!(loads(&second, "fetched"), 0.0);
    second.shutdown().await;

    // Without a folder and without in_memory the bucket is left alone, as
    // before.
    let third = start(false).await;
    hello_answers().await;
    assert_eq!(loads(&third, "shared"), 0.0);
    assert_eq!(loads(&third, "fetched"), 1.0);
    third.shutdown().await;
}
