//! Publishing manifests to the NATS registry and module store.

use std::process::Command;

use async_nats::jetstream;
use sluice_api::RegistryEntry;
use sluice_api::names::{FUNCTIONS_BUCKET, MODULES_BUCKET};
use sluice_gateway::local::load_dir;
use sluice_nats::layout::{Layout, LayoutConfig};
use sluice_nats::publish::Publisher;
use tokio::io::AsyncReadExt as _;

use sluice_testing::NatsServer;

#[tokio::test]
async fn publishing_fills_the_registry_and_stores_each_module_once() {
    let nats = NatsServer::start();
    let functions = load_dir(sluice_examples::examples_dir()).unwrap();
    let client = sluice_nats::connect(&nats.url, "test", &Default::default())
        .await
        .unwrap();
    let publisher = Publisher::new(
        Layout::reconcile(client, &LayoutConfig::default())
            .await
            .unwrap()
            .layout,
    );
    let first: Vec<_> = futures::future::try_join_all(
        functions
            .iter()
            .map(|f| publisher.publish(&f.function, &f.spec, &f.api_keys, &f.wasm)),
    )
    .await
    .unwrap();
    assert!(first.iter().all(|p| p.uploaded_module), "{first:?}");
    let f = &functions[0];
    let again = publisher
        .publish(&f.function, &f.spec, &f.api_keys, &f.wasm)
        .await
        .unwrap();
    assert!(
        !again.uploaded_module,
        "a stored digest is not uploaded twice"
    );
    assert_eq!(again.digest, first[0].digest);

    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let registry = js.get_key_value(FUNCTIONS_BUCKET).await.unwrap();
    let modules = js.get_object_store(MODULES_BUCKET).await.unwrap();
    for function in &functions {
        let raw = registry
            .get(function.function.registry_key())
            .await
            .unwrap()
            .expect("the entry exists");
        let entry: RegistryEntry = serde_json::from_slice(&raw).unwrap();
        assert_eq!(entry.function, function.function);
        assert_eq!(entry.spec, function.spec);
        let mut stored = Vec::new();
        modules
            .get(entry.module_digest.object_key())
            .await
            .unwrap()
            .read_to_end(&mut stored)
            .await
            .unwrap();
        assert!(
            stored == function.wasm,
            "{} came back changed",
            function.function
        );
    }
}

#[test]
fn the_publish_command_succeeds_and_names_an_unreachable_server() {
    let nats = NatsServer::start();
    let examples = sluice_examples::examples_dir();
    let ok = Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .args(["publish", "--nats", &nats.url])
        .arg(examples)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let down = Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .args(["publish", "--nats", "nats://127.0.0.1:1"])
        .arg(examples)
        .output()
        .unwrap();
    assert!(!down.status.success());
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
}
