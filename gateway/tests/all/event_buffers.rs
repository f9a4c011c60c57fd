//! Trigger subscriptions hold a bounded number of messages
//! (`--event-buffer`): a burst on a core NATS subject beyond it is dropped
//! and counted, a burst on a stream-bound subject is pulled in batches
//! that fit and loses nothing.

use std::time::Duration;

use sluice_nats::layout::LayoutConfig;

use crate::harness::{NatsStack, TestGateway, eventually, manifest_dir, metric};
use crate::nats_mode::{orders_stream, wait_trigger_consumer};

/// `plain` on the core subject `burst.plain`, `durable` on `orders.created`
/// (bound to the ORDERS stream).
pub(crate) const TWO_TRIGGERS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: plain }
spec:
  module: { file: "{echo}" }
  triggers: { nats: [ { subject: burst.plain } ] }
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: durable }
spec:
  module: { file: "{echo}" }
  triggers: { nats: [ { subject: orders.created } ] }
"#;

const PLAIN_BURST: usize = 3000;
const STREAM_BURST: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_event_buffer_drops_core_events_counted_and_no_stream_bound_one() {
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let js = orders_stream(&stack).await;
    let client = js.client();
    let dir = manifest_dir(TWO_TRIGGERS);
    stack.publish_dir(dir.path()).await;
    let gw = TestGateway::on_nats_with(stack, dir, |c| c.event_buffer = 16).await;
    gw.wait_routed("default/plain").await;
    gw.wait_routed("default/durable").await;
    // The plain subscription is up once a probe event is queued.
    eventually(
        "the plain trigger is subscribed",
        Duration::from_secs(30),
        async || {
            client.publish("burst.plain", "probe".into()).await.unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let queued = queued(&gw, "default/plain").await;
            (queued > 0.0)
                .then_some(())
                .ok_or(format!("{queued} queued"))
        },
    )
    .await;
    let before = queued(&gw, "default/plain").await;
    // A new stream trigger sees only what comes after its consumer.
    wait_trigger_consumer(&js.get_stream("ORDERS").await.unwrap()).await;

    for i in 0..STREAM_BURST {
        client
            .publish("orders.created", format!("order {i}").into())
            .await
            .unwrap();
    }
    for i in 0..PLAIN_BURST {
        client
            .publish("burst.plain", format!("event {i}").into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    // Every stream-bound event is queued, however small the buffer.
    eventually(
        "every stream-bound event is queued",
        Duration::from_secs(60),
        async || {
            let queued = queued(&gw, "default/durable").await;
            (queued == STREAM_BURST as f64)
                .then_some(())
                .ok_or(format!("{queued} queued"))
        },
    )
    .await;
    // The core burst overflowed sixteen messages' room: some were dropped
    // and counted, the rest queued. (Drops inside the client are counted as
    // async-nats reports them, which may be fewer than it dropped.)
    let (queued, dropped) = eventually(
        "the core burst is partly queued, partly counted as dropped",
        Duration::from_secs(30),
        async || {
            let text = gw.admin_get("/metrics").await.text();
            let queued = metric(
                &text,
                r#"sluice_events_queued_total{function="default/plain"}"#,
            ) - before;
            let dropped = metric(&text, "sluice_events_dropped_total");
            (queued > 0.0 && dropped > 0.0)
                .then_some((queued, dropped))
                .ok_or(format!("{queued} queued, {dropped} dropped"))
        },
    )
    .await;
    assert!(
        queued + dropped <= PLAIN_BURST as f64,
        "queued {queued}, dropped {dropped}"
    );
}

async fn queued(gw: &TestGateway, function: &str) -> f64 {
    let text = gw.admin_get("/metrics").await.text();
    metric(
        &text,
        &format!(r#"sluice_events_queued_total{{function="{function}"}}"#),
    )
}
