//! NATS mode specifics (in one process, talking only through a real
//! nats-server): following the registry, dedicated runtimes, precompiled
//! cold starts, durable event consumption.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use http::StatusCode;
use sluice_api::Invocation;
use sluice_api::names::{DEAD_LETTER_STREAM, FunctionRef, INVOCATION_STREAM};
use sluice_gateway::events::event_invocation_id;
use sluice_nats::layout::LayoutConfig;
use sluice_nats::{header_pairs, round_trip};
use sluice_runtime::node::{self, NodeConfig};

use crate::harness::{
    Backend, ECHO_ON_ORDERS, NatsStack, TestGateway, eventually, manifest_dir, metric,
};
use sluice_testing::NatsServer;

fn hello(greeting: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: hello }}
spec:
  module: {{ file: "{{hello}}" }}
  env: [ {{ name: GREETING, value: {greeting} }} ]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_and_removed_functions_take_effect_without_restart() {
    let gw = TestGateway::start(Backend::Nats, &hello("One")).await;
    assert_eq!(
        gw.get("/fn/default/hello").await.text(),
        "One from Sluice!\n"
    );

    let stack = gw.nats.as_ref().unwrap();
    stack.publish_dir(manifest_dir(&hello("Two")).path()).await;
    gw.wait_answer("/fn/default/hello", |r| r.text() == "Two from Sluice!\n")
        .await;

    stack
        .publisher
        .unpublish(&"default/hello".parse().unwrap())
        .await
        .unwrap();
    gw.wait_answer("/fn/default/hello", |r| r.status == StatusCode::NOT_FOUND)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_runtime_serves_only_its_function() {
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let dir = manifest_dir(&format!("{}---{ECHO_ON_ORDERS}", hello("Hi")));
    stack.publish_dir(dir.path()).await;
    let mut config = NodeConfig::new(&stack.server.url);
    config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.function = Some("default/echo".parse().unwrap());
    let node = node::start(config).await.unwrap();
    let echo: FunctionRef = "default/echo".parse().unwrap();
    stack.wait_serving(&echo).await;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/echo").await;
    let reply = gw.get("/fn/default/echo/x").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-echo-path"), "/x");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let hello_consumer = gw
        .nats
        .as_ref()
        .unwrap()
        .layout
        .invocations
        .consumer_info(
            "default/hello"
                .parse::<FunctionRef>()
                .unwrap()
                .consumer_name(),
        )
        .await;
    assert!(
        hello_consumer.is_err(),
        "the dedicated runtime opened hello's consumer"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_runtime_leaves_dedicated_functions_to_their_own() {
    let dedicated_echo = ECHO_ON_ORDERS.replace(
        "module: { file: \"{echo}\" }",
        "module: { file: \"{echo}\" }\n  placement: dedicated",
    );
    let dir = manifest_dir(&format!("{}---{dedicated_echo}", hello("Hi")));
    let stack = NatsStack::start().await;
    stack.publish_dir(dir.path()).await;
    let hello: FunctionRef = "default/hello".parse().unwrap();
    let echo: FunctionRef = "default/echo".parse().unwrap();
    stack.wait_serving(&hello).await;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/echo").await;
    assert_eq!(gw.get("/fn/default/hello/").await.status, StatusCode::OK);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let layout = &gw.nats.as_ref().unwrap().layout;
    assert!(
        layout
            .invocations
            .consumer_info(echo.consumer_name())
            .await
            .is_err(),
        "the pool runtime opened the dedicated function's consumer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_loads_the_precompiled_component_from_disk() {
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let artifacts = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = NodeConfig::new(&stack.server.url);
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.artifacts = Some(artifacts.path().to_owned());
        config
    };
    stack.publish_dir(manifest_dir(&hello("Hi")).path()).await;
    let hello: FunctionRef = "default/hello".parse().unwrap();

    let first = node::start(config()).await.unwrap();
    stack.wait_serving(&hello).await;
    let cold_start = |text: &str, source: &str| {
        metric(
            text,
            &format!(
                r#"sluice_cold_start_seconds_count{{function="default/hello",source="{source}"}}"#
            ),
        )
    };
    let text = first.metrics_text();
    assert_eq!(cold_start(&text, "fetched"), 1.0, "{text}");
    first.shutdown().await;

    let second = node::start(config()).await.unwrap();
    eventually(
        "the second runtime loads hello from disk",
        Duration::from_secs(30),
        async || {
            let text = second.metrics_text();
            (cold_start(&text, "precompiled") == 1.0)
                .then_some(())
                .ok_or(text)
        },
    )
    .await;
    assert_eq!(cold_start(&second.metrics_text(), "fetched"), 0.0);
    let gw = TestGateway::on_nats(stack, tempfile::tempdir().unwrap()).await;
    gw.wait_routed("default/hello").await;
    assert_eq!(
        gw.get("/fn/default/hello").await.text(),
        "Hi from Sluice!\n"
    );
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_a_stream_bound_subject_are_consumed_durably_and_acked_once_stored() {
    let stack = NatsStack::start().await;
    let js = jetstream::new(async_nats::connect(&stack.server.url).await.unwrap());
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    // Already in the stream before the trigger exists: a new trigger does
    // not replay the past.
    js.publish("orders.created", "old order".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let dir = manifest_dir(ECHO_ON_ORDERS);
    stack.publish_dir(dir.path()).await;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/echo").await;

    let echo = "default/echo".parse().unwrap();
    let orders = js.get_stream("ORDERS").await.unwrap();
    eventually(
        "the gateway opens the trigger's consumer",
        Duration::from_secs(30),
        async || {
            let mut names = orders.consumer_names();
            match futures::StreamExt::next(&mut names).await {
                Some(Ok(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    js.publish("orders.created", "order 2".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let id = event_invocation_id(&echo, "orders.created", "ORDERS-2");
    let record = gw.wait_record(id.as_str()).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["response"]["headers"]["x-echo-h-ce-id"], "ORDERS-2");
    let old = event_invocation_id(&echo, "orders.created", "ORDERS-1");
    assert_eq!(
        gw.get(&format!("/invocations/{old}")).await.status,
        StatusCode::NOT_FOUND,
        "an event from before the trigger ran"
    );
    assert_eq!(
        record["response"]["headers"]["x-echo-h-ce-subject"],
        "orders.created"
    );

    let mut names = orders.consumer_names();
    let name = futures::StreamExt::next(&mut names)
        .await
        .expect("a durable consumer exists")
        .unwrap();
    assert!(name.starts_with("sluice-events_default_echo_"), "{name}");
    eventually(
        "the event is acknowledged",
        Duration::from_secs(10),
        async || {
            let info = orders.consumer_info(&name).await.unwrap();
            (info.num_pending == 0 && info.num_ack_pending == 0)
                .then_some(())
                .ok_or(format!("{info:?}"))
        },
    )
    .await;

    // A removed trigger takes its durable consumer along.
    gw.nats
        .as_ref()
        .unwrap()
        .publisher
        .unpublish(&echo)
        .await
        .unwrap();
    eventually(
        "the removed trigger's consumer is deleted",
        Duration::from_secs(10),
        async || match orders.consumer_info(&name).await {
            Err(_) => Ok(()),
            Ok(info) => Err(format!("{info:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_functions_on_one_trigger_subject_each_get_every_event() {
    let both = format!(
        "{ECHO_ON_ORDERS}---{}",
        ECHO_ON_ORDERS.replace("name: echo", "name: audit")
    );
    let gw = TestGateway::start(Backend::Nats, &both).await;
    let client = async_nats::connect(&gw.nats.as_ref().unwrap().server.url)
        .await
        .unwrap();
    let ids: Vec<_> = ["default/echo", "default/audit"]
        .iter()
        .map(|f| event_invocation_id(&f.parse().unwrap(), "orders.created", "order-1"))
        .collect();
    // Sent until both have it: a plain subject drops what arrives before
    // the subscriptions; the event id makes the copies one invocation each.
    eventually(
        "both functions record the event",
        Duration::from_secs(30),
        async || {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", "order-1");
            client
                .publish_with_headers("orders.created", headers, "order".into())
                .await
                .unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            for id in &ids {
                let reply = gw.get(&format!("/invocations/{id}")).await;
                if reply.status != StatusCode::OK {
                    return Err(format!("{id}: {}", reply.status));
                }
            }
            Ok(())
        },
    )
    .await;
    for id in &ids {
        assert_eq!(gw.wait_record(id.as_str()).await["state"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_queued_is_dead_lettered_with_its_data() {
    let stack = NatsStack::without_runtime(LayoutConfig {
        max_queue_depth: 1,
        ..LayoutConfig::default()
    })
    .await;
    let dir = manifest_dir(ECHO_ON_ORDERS);
    stack.publish_dir(dir.path()).await;
    let url = stack.server.url.clone();
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/echo").await;
    // No runtime consumes: one queued invocation fills echo's queue.
    let filler = gw
        .send(http::Method::POST, "/async/fn/default/echo/", &[], "")
        .await;
    assert_eq!(filler.status, StatusCode::ACCEPTED, "{}", filler.text());

    let client = async_nats::connect(&url).await.unwrap();
    let function: FunctionRef = "default/echo".parse().unwrap();
    let id = event_invocation_id(&function, "orders.created", "order-9");
    // Sent until it shows up: a plain subject drops what arrives before
    // the gateway subscribes.
    let letters = eventually(
        "the event is dead-lettered",
        Duration::from_secs(30),
        async || {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("ce-id", "order-9");
            client
                .publish_with_headers("orders.created", headers, "order nine".into())
                .await
                .unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let letters = gw.get("/dead-letters/default/echo").await.json();
            match letters.as_array() {
                Some(list) if !list.is_empty() => Ok(letters),
                _ => Err(letters.to_string()),
            }
        },
    )
    .await;
    let letter = &letters[0];
    assert_eq!(letter["id"], id.as_str(), "{letters}");
    assert_eq!(letter["method"], "POST");
    assert_eq!(letter["path"], "/");
    assert_eq!(letter["attempts"], 0);
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("could not be queued") && reason.contains("is full"),
        "{reason}"
    );

    // The dead letter keeps the event itself: its data and CloudEvents
    // headers.
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("SLUICE_DEAD_LETTERS").await.unwrap();
    let message = stream
        .get_last_raw_message_by_subject("sluice.dlq.default.echo")
        .await
        .unwrap();
    let event = Invocation::from_wire(
        header_pairs(Some(&message.headers)),
        message.payload.clone(),
    )
    .unwrap();
    assert_eq!(event.id, id);
    assert_eq!(event.body.as_ref(), b"order nine");
    assert_eq!(event.headers["ce-id"], "order-9");
    assert_eq!(event.headers["ce-subject"], "orders.created");
}

/// Core NATS does not send an event twice: a stopping gateway unsubscribes
/// and still queues every event the server had sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_queues_the_plain_events_it_already_received() {
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let dir = manifest_dir(ECHO_ON_ORDERS);
    stack.publish_dir(dir.path()).await;
    let url = stack.server.url.clone();
    let mut gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/echo").await;
    let client = async_nats::connect(&url).await.unwrap();
    let publish = async |event_id: String| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("ce-id", event_id.as_str());
        client
            .publish_with_headers("orders.created", headers, "order".into())
            .await
            .unwrap();
    };
    let function: FunctionRef = "default/echo".parse().unwrap();
    let probe = event_invocation_id(&function, "orders.created", "probe");
    eventually(
        "the gateway consumes events",
        Duration::from_secs(30),
        async || {
            publish("probe".to_owned()).await;
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let reply = gw.get(&format!("/invocations/{probe}")).await;
            match reply.status {
                StatusCode::OK => Ok(()),
                _ => Err(reply.text()),
            }
        },
    )
    .await;

    let burst = 300;
    for i in 0..burst {
        publish(format!("burst-{i}")).await;
    }
    // After a round trip the server has routed every event to the
    // gateway's subscription, ahead of the unsubscribe that shutdown sends.
    round_trip(&client, Duration::from_secs(10)).await.unwrap();
    gw.gateway.take().unwrap().shutdown().await;

    let js = jetstream::new(client);
    let mut stream = js.get_stream(INVOCATION_STREAM).await.unwrap();
    let queued = stream.info().await.unwrap().state.messages;
    let mut dead_letters = js.get_stream(DEAD_LETTER_STREAM).await.unwrap();
    let dead = dead_letters.info().await.unwrap().state.messages;
    assert_eq!(
        (queued, dead),
        (1 + burst, 0),
        "the probe and every event of the burst queued, none dead-lettered"
    );
}

/// An invocation is one NATS message: on a server with the default 1 MB
/// max_payload, a body that cannot fit with its headers gets 413, not 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_limit_shrinks_to_what_the_servers_max_payload_carries() {
    let stack = NatsStack::on_server(NatsServer::with_config(""), LayoutConfig::default()).await;
    let dir = manifest_dir(ECHO_ON_ORDERS);
    stack.publish_dir(dir.path()).await;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/echo").await;
    let at_default_limit = "x".repeat(1 << 20);
    let reply = gw
        .send(
            http::Method::POST,
            "/async/fn/default/echo/",
            &[],
            at_default_limit,
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text()
    );
    let fits = "x".repeat(512 << 10);
    let reply = gw
        .send(http::Method::POST, "/async/fn/default/echo/", &[], fits)
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
}

/// A message waiting for a free instance is reported in progress, so the
/// server does not deliver it again after `ack_wait` (timeout + 5s) while a
/// runtime still holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_waiting_for_an_instance_are_not_delivered_twice() {
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let dir = manifest_dir(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: slow }
spec:
  module: { file: "{misbehave}" }
  timeout: 1s
  concurrency: 10
"#,
    );
    stack.publish_dir(dir.path()).await;
    let mut config = NodeConfig::new(&stack.server.url);
    config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // One instance at a time: the tenth waits about 7s, past ack_wait (6s).
    config.runtime.max_instances = 1;
    let node = node::start(config).await.unwrap();
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/slow").await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(gw.submit("/async/fn/default/slow/sleep/800", &[], "").await);
    }
    for id in &ids {
        let record = gw.wait_final(id).await;
        assert_eq!(record["state"], "succeeded", "{record}");
        assert_eq!(record["attempts"], 1, "{record}");
    }
    let metrics = TestGateway::remote(node.admin_addr)
        .get("/metrics")
        .await
        .text();
    let redelivered = metric(
        &metrics,
        r#"sluice_redeliveries_total{function="default/slow"}"#,
    );
    assert_eq!(redelivered, 0.0, "{metrics}");
    node.shutdown().await;
}
