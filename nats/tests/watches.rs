//! The registry watch on a three-server JetStream cluster
//! (`SLUICE_NATS_SERVER`) with an R3 layout: it follows changes made after
//! the registry bucket's leader is SIGKILLed, and after a server restart.

use std::time::{Duration, Instant};

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

    cluster.servers[leader].restart();
    cluster.wait_healthy();
    let other = (leader + 1) % 3;
    eprintln!("restarting n{other}");
    cluster.servers[other].restart();
    cluster.wait_healthy();
    let third = entry("h", "10s");
    put(&layout, &third).await;
    sees(&mut watcher, &third, Duration::from_secs(60)).await;
}
