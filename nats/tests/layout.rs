//! The NATS layout against a real nats-server (`SLUICE_NATS_SERVER`).

use async_nats::jetstream::stream;
use sluice_api::FunctionSpec;
use sluice_api::names::{FunctionRef, INVOCATION_STREAM, INVOKE_SUBJECTS};
use sluice_nats::layout::{Layout, LayoutConfig, MAX_FUNCTIONS};
use sluice_testing::NatsServer;

/// nats-server caps a stream that sets no `max_consumers` at 1,000
/// consumers; Sluice has one per function, so the 1,001st function must
/// register too, also on a stream an earlier Sluice made without a limit.
#[tokio::test]
async fn more_than_a_thousand_functions_register_also_on_an_older_stream() {
    let nats = NatsServer::start();
    let client = async_nats::connect(&nats.url).await.expect("NATS");
    // As an earlier Sluice made it: no max_consumers.
    async_nats::jetstream::new(client.clone())
        .create_stream(stream::Config {
            name: INVOCATION_STREAM.to_owned(),
            subjects: vec![INVOKE_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("an invocation stream without a consumer limit");
    let mut layout = Layout::ensure(client, &LayoutConfig::default())
        .await
        .expect("the layout");
    let info = layout.invocations.info().await.expect("the stream's info");
    assert_eq!(info.config.max_consumers, MAX_FUNCTIONS);
    let spec: FunctionSpec = serde_json::from_value(serde_json::json!({
        "module": { "file": "f.wasm" }
    }))
    .expect("a spec");
    for i in 0..1_001 {
        let function = FunctionRef::new("default", &format!("f-{i:04}")).expect("a name");
        layout
            .consumer(&function, &spec)
            .await
            .unwrap_or_else(|e| panic!("function {i}: {e}"));
    }
}
