//! Module collection against a real nats-server: a module its Function
//! no longer refers to is deleted once unreferenced for the whole wait;
//! one still referred to stays.

use std::time::Duration;

use sluice_api::names::FunctionRef;
use sluice_api::{FunctionSpec, ModuleDigest};
use sluice_nats::layout::{Layout, LayoutConfig};
use sluice_nats::publish::Publisher;
use sluice_operator::module_gc::{ModuleGc, Unreferenced, pass};
use sluice_testing::NatsServer;
use tokio::time::Instant;

#[tokio::test]
async fn a_replaced_module_goes_after_the_wait_and_a_referenced_one_stays() {
    let nats = NatsServer::start();
    let client = async_nats::connect(&nats.url).await.expect("NATS");
    let layout = Layout::reconcile(client, &LayoutConfig::default())
        .await
        .expect("the layout")
        .layout;
    let publisher = Publisher::new(layout.clone());
    let spec: FunctionSpec =
        serde_json::from_value(serde_json::json!({ "module": { "file": "f.wasm" } })).unwrap();
    let (f, g) = (
        FunctionRef::new("default", "f").unwrap(),
        FunctionRef::new("default", "g").unwrap(),
    );
    let (old, new, kept) = (b"f, version 1", b"f, version 2", b"g, its only version");
    publisher.publish(&f, &spec, &[], old).await.unwrap();
    publisher.publish(&g, &spec, &[], kept).await.unwrap();
    // f is replaced.
    publisher.publish(&f, &spec, &[], new).await.unwrap();

    let gc = ModuleGc::new(Duration::from_secs(600));
    let mut unreferenced = Unreferenced::default();
    let start = Instant::now();
    let first = pass(&publisher, &mut unreferenced, &gc, start)
        .await
        .unwrap();
    assert_eq!(first, [], "nothing goes before the wait");
    let later = pass(
        &publisher,
        &mut unreferenced,
        &gc,
        start + Duration::from_secs(600),
    )
    .await
    .unwrap();
    assert_eq!(later, [ModuleDigest::of(old)]);
    for (module, stored) in [(&old[..], false), (&new[..], true), (&kept[..], true)] {
        assert_eq!(
            layout.has_module(&ModuleDigest::of(module)).await.unwrap(),
            stored,
            "{}",
            String::from_utf8_lossy(module)
        );
    }
    // A runtime fetching the current modules still gets them.
    assert_eq!(
        layout.fetch_module(&ModuleDigest::of(new)).await.unwrap(),
        new
    );
}
