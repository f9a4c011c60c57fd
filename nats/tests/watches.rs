//! Watches and consumers on a three-server JetStream cluster
//! (`SLUICE_NATS_SERVER`) with an R3 layout, each across the SIGKILL of
//! its leader and the restart of servers: the registry watch follows
//! changes, a function's pull consumer (pulled as a runtime does) hands
//! out what is queued.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt as _;

use sluice_api::names::FunctionRef;
use sluice_api::{FunctionSpec, RegistryEntry};
use sluice_nats::layout::{Layout, LayoutConfig};
use sluice_nats::registry::{RegistryEvent, RegistryWatcher};
use sluice_testing::NatsCluster;

const FUNCTIONS_STREAM: &str = "KV_sluice-functions";

async fn r3_layout(cluster: &NatsCluster, name: &str) -> Layout {
    let client = sluice_nats::connect(&cluster.url(), name, &Default::default())
        .await
        .expect("the cluster");
    let config = LayoutConfig {
        replicas: 3,
        ..LayoutConfig::default()
    };
    Layout::reconcile(client, &config)
        .await
        .expect("the R3 layout")
        .layout
}

fn entry(name: &str, timeout: &str) -> RegistryEntry {
    let spec: FunctionSpec = serde_json::from_value(serde_json::json!({
        "module": { "file": "f.wasm" },
        "timeout": timeout
    }))
    .expect("a spec");
    RegistryEntry {
        function: FunctionRef::new("default", name).expect("a name"),
        spec,
        module_digest: sluice_api::ModuleDigest::of(name.as_bytes()),
        api_keys: Vec::new(),
        created: None,
    }
}

/// Puts `entry` into the registry, again until the bucket answers (it may
/// be electing a leader), 60 s at most.
async fn put(layout: &Layout, entry: &RegistryEntry) {
    let started = Instant::now();
    loop {
        match layout
            .functions
            .put(
                entry.function.registry_key(),
                serde_json::to_vec(entry).unwrap().into(),
            )
            .await
        {
            Ok(_) => return,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(60),
                "the registry took no put within 60s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (`within`) until `watcher` reports `wanted`.
async fn sees(watcher: &mut RegistryWatcher, wanted: &RegistryEntry, within: Duration) {
    let seen = tokio::time::timeout(within, async {
        loop {
            if let RegistryEvent::Put { entry, .. } = watcher.next().await
                && *entry == *wanted
            {
                return;
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "the watcher did not report {} ({}) within {within:?}",
        wanted.function,
        wanted.spec.timeout
    );
}

/// The index of the server leading `stream` (asked until one is known).
async fn leader_of(layout: &Layout, stream: &str) -> usize {
    let started = Instant::now();
    loop {
        if let Ok(mut stream) = layout.js.get_stream(stream).await
            && let Ok(info) = stream.info().await
            && let Some(name) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return NatsCluster::index_of(&name).expect("one of ours");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{stream} has no leader within 60s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_watch_follows_its_bucket_leader_loss_and_a_restart() {
    let mut cluster = NatsCluster::start(3);
    let layout = r3_layout(&cluster, "test-owner").await;
    let watching = r3_layout(&cluster, "test-watcher").await;
    let mut watcher = RegistryWatcher::new(watching.functions.clone());
    let first = entry("f", "10s");
    put(&layout, &first).await;
    sees(&mut watcher, &first, Duration::from_secs(30)).await;

    let leader = leader_of(&layout, FUNCTIONS_STREAM).await;
    eprintln!("SIGKILL n{leader}, the registry's leader");
    cluster.servers[leader].kill();
    let updated = entry("f", "20s");
    put(&layout, &updated).await;
    sees(&mut watcher, &updated, Duration::from_secs(60)).await;
    let second = entry("g", "10s");
    put(&layout, &second).await;
    sees(&mut watcher, &second, Duration::from_secs(60)).await;

    cluster.restart_with_another(leader);
    let third = entry("h", "10s");
    put(&layout, &third).await;
    sees(&mut watcher, &third, Duration::from_secs(60)).await;
}

/// Queues invocation `n` of `function`, through a failover if one is on.
async fn queue(layout: &Layout, function: &FunctionRef, n: usize) {
    let message = PublishMessage::build()
        .payload(n.to_string().into())
        .message_id(format!("{function}-{n}"));
    sluice_nats::failover::publish_patiently(
        &layout.js,
        &function.invoke_subject(),
        message,
        tokio::time::Instant::now() + Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("invocation {n} not queued: {e}"));
}

/// Pulls and acknowledges as a runtime's worker does (batches that
/// expire; after a failed pull, the same consumer again after a pause
/// growing from 250 ms to 2 s) until `wanted` arrived, 60 s at most.
async fn pull(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    wanted: std::ops::Range<usize>,
) {
    let wanted: BTreeSet<String> = wanted.map(|n| n.to_string()).collect();
    let mut got = BTreeSet::new();
    let started = Instant::now();
    let mut failures = 0;
    while !wanted.is_subset(&got) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pulled {got:?} of {wanted:?} within 60s"
        );
        let batch = consumer
            .batch()
            .max_messages(10)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let failed = match batch {
            Ok(mut batch) => loop {
                match batch.next().await {
                    Some(Ok(message)) => {
                        got.insert(String::from_utf8_lossy(&message.payload).into_owned());
                        // An acknowledgement lost to the failover only
                        // means the message comes again.
                        let _ = message.ack().await;
                    }
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break None,
                }
            },
            Err(e) => Some(e.to_string()),
        };
        match failed {
            Some(e) => {
                eprintln!("pulling failed: {e}");
                failures += 1;
                tokio::time::sleep(sluice_api::backoff::doubling(
                    Duration::from_millis(250),
                    Duration::from_secs(2),
                    failures,
                ))
                .await;
            }
            None => failures = 0,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_consumer_hands_out_what_is_queued_after_its_leader_dies_and_a_restart() {
    let mut cluster = NatsCluster::start(3);
    let layout = r3_layout(&cluster, "test-runtime").await;
    let function = FunctionRef::new("default", "f").expect("a name");
    let mut consumer = layout
        .consumer(&function, &entry("f", "10s").spec)
        .await
        .expect("its consumer");
    for n in 0..5 {
        queue(&layout, &function, n).await;
    }
    pull(&consumer, 0..5).await;

    let leader = consumer
        .info()
        .await
        .expect("the consumer's info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("a consumer leader");
    let leader = NatsCluster::index_of(&leader).expect("one of ours");
    eprintln!("SIGKILL n{leader}, the consumer's leader");
    cluster.servers[leader].kill();
    for n in 5..10 {
        queue(&layout, &function, n).await;
    }
    pull(&consumer, 5..10).await;

    cluster.restart_with_another(leader);
    for n in 10..15 {
        queue(&layout, &function, n).await;
    }
    pull(&consumer, 10..15).await;
}

/// A watch whose consumer stops delivering while the server still keeps
/// it (paused here, as a stall after a failover leaves it; async-nats'
/// own recovery did not recreate it within 40 s) is compared with the bucket
/// and opened again, and reports what was stored meanwhile, then
/// `CaughtUp`; not `CaughtUp` first because the bucket was empty when the
/// watcher's store was opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_watch_that_stalls_is_opened_again() {
    let server = sluice_testing::NatsServer::start();
    let client = sluice_nats::connect(&server.url, "test-owner", &Default::default())
        .await
        .expect("the server");
    let layout = Layout::reconcile(client.clone(), &LayoutConfig::default())
        .await
        .expect("the layout")
        .layout;
    let mut watcher = RegistryWatcher::new(layout.functions.clone());
    assert_eq!(
        watcher.next().await,
        RegistryEvent::CaughtUp,
        "an empty bucket"
    );
    let first = entry("f", "10s");
    put(&layout, &first).await;
    sees(&mut watcher, &first, Duration::from_secs(30)).await;

    let stream = layout.js.get_stream(FUNCTIONS_STREAM).await.unwrap();
    let names: Vec<String> = stream
        .consumer_names()
        .map(|name| name.expect("a consumer name"))
        .collect()
        .await;
    assert_eq!(names.len(), 1, "the watch's consumer alone: {names:?}");
    let paused: serde_json::Value = serde_json::from_slice(
        &client
            .request(
                format!("$JS.API.CONSUMER.PAUSE.{FUNCTIONS_STREAM}.{}", names[0]),
                r#"{"pause_until": "2099-01-01T00:00:00Z"}"#.into(),
            )
            .await
            .expect("the pause answered")
            .payload,
    )
    .unwrap();
    assert_eq!(paused["paused"], true, "{paused}");

    let second = entry("g", "10s");
    put(&layout, &second).await;
    // Two comparisons (10 s apart) and the reopen, with room.
    let reported = tokio::time::timeout(Duration::from_secs(40), async {
        let mut reported = Vec::new();
        loop {
            match watcher.next().await {
                RegistryEvent::CaughtUp => return reported,
                RegistryEvent::Put { entry, .. } => reported.push(entry.function.to_string()),
                RegistryEvent::Removed { function, .. } => reported.push(function.to_string()),
            }
        }
    })
    .await
    .expect("the stalled watch opened again within 40s");
    assert_eq!(reported, ["default/f", "default/g"]);
}
