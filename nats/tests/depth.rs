//! Queue depth on a three-server JetStream cluster (`SLUICE_NATS_SERVER`):
//! JetStream's API answers from the consumer's leader, so the depth stays
//! right when that leader is lost and another takes over.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use sluice_api::FunctionSpec;
use sluice_api::Lane;
use sluice_api::autoscale::Observation;
use sluice_api::names::FunctionRef;
use sluice_nats::depth::{observe, queue_depths};
use sluice_nats::layout::{Layout, LayoutConfig};
use sluice_testing::NatsCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depth_stays_right_when_the_consumer_leader_is_lost() {
    let mut cluster = NatsCluster::start(3);
    let client = sluice_nats::connect(&cluster.url(), "test-depth", &Default::default())
        .await
        .expect("the cluster");
    let config = LayoutConfig {
        replicas: 3,
        ..LayoutConfig::default()
    };
    let layout = Layout::reconcile(client, &config)
        .await
        .expect("the R3 layout")
        .layout;
    let function = FunctionRef::new("default", "f").expect("a name");
    // A long timeout: what is held stays in flight (ack_wait is the
    // timeout plus 5 s) however long the election takes.
    let spec: FunctionSpec = serde_json::from_value(serde_json::json!({
        "module": { "file": "f.wasm" },
        "timeout": "10m"
    }))
    .expect("a spec");
    let consumer = layout
        .consumer(&function, &spec)
        .await
        .expect("its consumer");
    for i in 0..50 {
        layout
            .js
            .publish(function.invoke_subject(), format!("{i}").into())
            .await
            .expect("sent")
            .await
            .expect("stored");
    }
    // Five taken and held (not acknowledged): in flight.
    let mut batch = consumer
        .fetch()
        .max_messages(5)
        .messages()
        .await
        .expect("a fetch");
    let mut held = Vec::new();
    while let Some(message) = batch.next().await {
        held.push(message.expect("a message"));
    }
    assert_eq!(held.len(), 5);
    let expected = Observation {
        pending: 45,
        in_flight: 5,
    };
    let depths = queue_depths(&layout.invocations).await.expect("depths");
    assert_eq!(depths.get(&function), Some(&expected));

    let mut consumer = consumer;
    let leader = consumer
        .info()
        .await
        .expect("the consumer's info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("a consumer leader");
    let victim = NatsCluster::index_of(&leader).expect("one of ours");
    cluster.servers[victim].kill();

    // Asked until a new leader answers; then the listing and the new
    // leader's own info agree with what was there.
    let started = Instant::now();
    loop {
        let listed = queue_depths(&layout.invocations).await.ok();
        let own = match consumer.info().await {
            Ok(info) => info
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .filter(|l| *l != leader)
                .map(|_| observe(info)),
            Err(_) => None,
        };
        if let (Some(listed), Some(own)) = (&listed, own) {
            assert_eq!(listed.get(&function), Some(&own));
            assert_eq!(own, expected);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no new consumer leader after {leader} within 60s: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(held);
}

/// Invocations with an ordering key count for their function's depth
/// before any runtime made their bucket's consumer (a function at zero
/// must scale up for them), and are counted once after; so are those of
/// the priority lanes besides `normal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_invocations_count_for_their_function_with_or_without_a_bucket_consumer() {
    let server = sluice_testing::NatsServer::start();
    let client = sluice_nats::connect(&server.url, "test-depth", &Default::default())
        .await
        .expect("the server");
    let layout = Layout::reconcile(client, &LayoutConfig::default())
        .await
        .expect("the layout")
        .layout;
    let function = FunctionRef::new("default", "f").expect("a name");
    let spec: FunctionSpec = serde_json::from_value(serde_json::json!({
        "module": { "file": "f.wasm" }
    }))
    .expect("a spec");
    layout
        .consumer(&function, &spec)
        .await
        .expect("its consumer");
    for subject in [
        function.invoke_subject(),
        function.keyed_subject(3),
        function.keyed_subject(3),
        function.keyed_subject(7),
        function.lane_subject(Lane::High),
        function.lane_subject(Lane::Sync),
    ] {
        layout
            .js
            .publish(subject, "x".into())
            .await
            .expect("sent")
            .await
            .expect("stored");
    }
    let depth = |depths: &std::collections::HashMap<FunctionRef, Observation>| {
        depths.get(&function).map(Observation::depth)
    };
    let depths = queue_depths(&layout.invocations).await.expect("depths");
    assert_eq!(depth(&depths), Some(6));
    // A bucket's or a lane's consumer, once made, is not counted a second
    // time.
    layout
        .keyed_consumer(&function, &spec, 3)
        .await
        .expect("the bucket's consumer");
    layout
        .lane_consumer(&function, &spec, Lane::High)
        .await
        .expect("the lane's consumer");
    let depths = queue_depths(&layout.invocations).await.expect("depths");
    assert_eq!(depth(&depths), Some(6));
}
