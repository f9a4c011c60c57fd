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
    let mut layout = Layout::reconcile(client, &LayoutConfig::default())
        .await
        .expect("the layout")
        .layout;
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

/// A layout made by an earlier Sluice (no byte bounds) with an older
/// default (records kept 3s): the owner brings it to its settings (records
/// kept 10s), counting each change, and a record then outlives the old
/// TTL. (Short durations stand for 1h and 24h.)
#[tokio::test]
async fn the_owner_updates_a_layout_made_with_older_settings() {
    use std::time::Duration;
    let nats = NatsServer::start();
    let client = async_nats::connect(&nats.url).await.expect("NATS");
    let older = LayoutConfig {
        results_ttl: Duration::from_secs(3),
        ..LayoutConfig::default()
    };
    let first = Layout::reconcile(client.clone(), &older)
        .await
        .expect("the layout");
    assert_eq!(first.changes, []);
    // As an earlier Sluice left it: no byte bound on the results.
    let js = async_nats::jetstream::new(client.clone());
    let mut results = js.get_stream("KV_sluice-results").await.unwrap();
    let mut config = results.info().await.unwrap().config.clone();
    config.max_bytes = -1;
    js.update_stream(config).await.unwrap();

    let configured = LayoutConfig {
        results_ttl: Duration::from_secs(10),
        ..LayoutConfig::default()
    };
    let second = Layout::reconcile(client.clone(), &configured)
        .await
        .expect("the updated layout");
    let changed: Vec<_> = second
        .changes
        .iter()
        .map(|c| (c.stream.as_str(), c.setting, c.applied))
        .collect();
    assert_eq!(
        changed,
        [
            ("KV_sluice-results", "max_bytes", true),
            ("KV_sluice-results", "max_age", true),
            ("KV_sluice-results", "duplicate_window", true),
        ]
    );
    let info = results.info().await.unwrap().config.clone();
    assert_eq!(info.max_age, Duration::from_secs(10));
    assert_eq!(info.max_bytes, 2 << 30);
    // Idempotent: nothing more to change.
    let third = Layout::reconcile(client.clone(), &configured)
        .await
        .unwrap();
    assert_eq!(third.changes, []);

    // A record outlives the old TTL.
    third
        .layout
        .results
        .put("id-1", "queued".into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kept = third.layout.results.get("id-1").await.unwrap();
    assert_eq!(kept.as_deref(), Some(&b"queued"[..]));

    // A setting no stream takes in place is reported, and left.
    let memory = LayoutConfig::default();
    let mut dlq = js.get_stream("SLUICE_DEAD_LETTERS").await.unwrap();
    let before = dlq.info().await.unwrap().config.clone();
    js.delete_stream("SLUICE_DEAD_LETTERS").await.unwrap();
    js.create_stream(async_nats::jetstream::stream::Config {
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..before
    })
    .await
    .unwrap();
    let fourth = Layout::reconcile(client, &memory).await.unwrap();
    assert!(
        fourth
            .changes
            .iter()
            .any(|c| c.setting == "storage" && !c.applied && c.from == "Memory"),
        "{:?}",
        fourth.changes
    );
    dlq = js.get_stream("SLUICE_DEAD_LETTERS").await.unwrap();
    assert_eq!(
        dlq.info().await.unwrap().config.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
}

/// A part that is not the owner waits for the layout, saying who makes it.
#[tokio::test]
async fn a_missing_layout_is_worth_waiting_for() {
    let nats = NatsServer::start();
    let client = async_nats::connect(&nats.url).await.expect("NATS");
    let error = Layout::open(client.clone()).await.unwrap_err();
    assert!(!error.is_permanent());
    assert!(
        error.to_string().contains("waiting for the layout's owner"),
        "{error}"
    );
    Layout::reconcile(client.clone(), &LayoutConfig::default())
        .await
        .unwrap();
    Layout::open(client).await.expect("the layout, once made");
}

/// A server whose file store cannot reserve the layout's bounds gets an
/// error that names the stream, its bound and what to change.
#[tokio::test]
async fn a_file_store_too_small_for_the_bounds_is_named_with_what_to_change() {
    let nats = NatsServer::with_config("jetstream { max_file_store: 1GB }\n");
    let client = async_nats::connect(&nats.url).await.expect("NATS");
    let error = Layout::reconcile(client, &LayoutConfig::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("(max_bytes "), "{error}");
    assert!(error.contains("raise its max_file_store"), "{error}");
    assert!(error.contains("insufficient storage resources"), "{error}");
}

/// On a three-server cluster the owner raises a layout made with one copy
/// to three in place (what it holds kept), and the layout then survives
/// the loss of a stream's leader: a record stored before is read after,
/// through a client given every server's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_raises_replicas_in_place_and_the_layout_survives_its_leader() {
    use sluice_api::names::RESULTS_BUCKET;
    use sluice_testing::NatsCluster;
    use std::time::{Duration, Instant};
    let mut cluster = NatsCluster::start(3);
    let security = sluice_nats::NatsSecurity::default();
    let client = sluice_nats::connect(&cluster.url(), "test-owner", &security)
        .await
        .expect("the cluster");
    let one = Layout::reconcile(client.clone(), &LayoutConfig::default())
        .await
        .expect("the layout with one copy");
    one.layout
        .results
        .put("before", "kept".into())
        .await
        .expect("a record");
    let three = LayoutConfig {
        replicas: 3,
        ..LayoutConfig::default()
    };
    let raised = Layout::reconcile(client.clone(), &three)
        .await
        .expect("the layout with three copies");
    let mut raised_streams: Vec<_> = raised
        .changes
        .iter()
        .map(|c| (c.stream.as_str(), c.setting, c.from.as_str(), c.applied))
        .collect();
    raised_streams.sort_unstable();
    assert_eq!(
        raised_streams,
        [
            ("KV_sluice-functions", "replicas", "1", true),
            ("KV_sluice-results", "replicas", "1", true),
            ("OBJ_sluice-artifacts", "replicas", "1", true),
            ("OBJ_sluice-modules", "replicas", "1", true),
            ("SLUICE_DEAD_LETTERS", "replicas", "1", true),
            ("SLUICE_INVOCATIONS", "replicas", "1", true),
            ("SLUICE_LOGS", "replicas", "1", true),
        ]
    );
    let js = async_nats::jetstream::new(client.clone());
    let results_stream = format!("KV_{RESULTS_BUCKET}");
    // Each copy catches up in the background: wait for two current
    // followers of the results.
    let started = Instant::now();
    let leader = loop {
        let info = js
            .get_stream(&results_stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3);
        let cluster_info = info.cluster.clone().unwrap_or_default();
        let current = cluster_info.replicas.iter().filter(|r| r.current).count();
        if current == 2
            && let Some(leader) = cluster_info.leader
        {
            break leader;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no two current followers of {results_stream} within 60s: {cluster_info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        Layout::reconcile(client.clone(), &three)
            .await
            .unwrap()
            .changes,
        [],
        "idempotent"
    );

    let victim = NatsCluster::index_of(&leader).expect("the leader is one of ours");
    cluster.servers[victim].kill();
    let started = Instant::now();
    loop {
        match raised.layout.results.get("before").await {
            Ok(Some(value)) => {
                assert_eq!(&value[..], b"kept");
                break;
            }
            outcome => assert!(
                started.elapsed() < Duration::from_secs(60),
                "the record is not readable within 60s of its leader's loss: {outcome:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The stream's info comes from the meta leader, which may have been
    // the victim too: asked until a new leader answers.
    let started = Instant::now();
    loop {
        let info = match js.get_stream(&results_stream).await {
            Ok(mut stream) => stream.info().await.ok().cloned(),
            Err(_) => None,
        };
        let new_leader = info.and_then(|i| i.cluster).and_then(|c| c.leader);
        if new_leader.is_some() && new_leader.as_deref() != Some(leader.as_str()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no new leader after {leader} within 60s: {new_leader:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
