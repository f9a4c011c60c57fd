//! NATS mode specifics (in one process, talking only through a real
//! nats-server): following the registry, dedicated runtimes, precompiled
//! cold starts, durable event consumption.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use http::StatusCode;
use sluice_api::invocation::{MAX_HEADER_BLOCK, header_line_len};
use sluice_api::names::{DEAD_LETTER_STREAM, FunctionRef, INVOCATION_STREAM};
use sluice_api::{Invocation, InvocationId};
use sluice_gateway::events::event_invocation_id;
use sluice_nats::layout::LayoutConfig;
use sluice_nats::{header_pairs, round_trip};
use sluice_runtime::node::{self, NodeConfig};

use crate::harness::{
    Backend, ECHO_ON_ORDERS, NatsStack, STOCK_MAX_PAYLOAD, TestGateway, eventually, manifest_dir,
    metric, stored_body, stored_header, stored_headers, wait_serving,
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

/// A changed function's new worker takes over the direct calls of the old
/// (nothing unsubscribes in between), and a removed function's runtime
/// declines calls until the gateways know (runtime `node::direct`): under
/// a steady stream of sync calls, every call answers at once, with either
/// version, then 404. A call lost between a subscription's end and the
/// server's knowing of it would instead wait out its 5s deadline for a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_call_through_changes_and_a_removal_answers() {
    let version = |n: usize| hello(&format!("V{n}")).replace("  env:", "  timeout: 5s\n  env:");
    let gw = TestGateway::start(Backend::Nats, &version(0)).await;
    assert_eq!(
        gw.get("/fn/default/hello").await.text(),
        "V0 from Sluice!\n"
    );
    let stack = gw.nats.as_ref().unwrap();
    let calls_until = async |last: &str| {
        let mut answered = 0;
        loop {
            let reply = gw.get("/fn/default/hello").await;
            answered += 1;
            let text = reply.text();
            match reply.status {
                StatusCode::OK if text == last => return answered,
                StatusCode::OK if text.ends_with(" from Sluice!\n") => {}
                StatusCode::NOT_FOUND if last.is_empty() => return answered,
                status => panic!("call {answered} answered {status} {text}"),
            }
        }
    };
    for n in 1..=8 {
        let dir = manifest_dir(&version(n));
        let last = format!("V{n} from Sluice!\n");
        let (_, answered) = tokio::join!(stack.publish_dir(dir.path()), calls_until(&last));
        assert!(answered > 0);
    }
    let function = "default/hello".parse().unwrap();
    let (removed, _) = tokio::join!(stack.publisher.unpublish(&function), calls_until(""));
    removed.unwrap();
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
    wait_serving(&node, &echo).await;
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
async fn a_function_never_invoked_costs_no_consumer_until_its_first_invocation() {
    let dir = manifest_dir(&hello("Hi"));
    let stack = NatsStack::start().await;
    stack.publish_dir(dir.path()).await;
    let hello: FunctionRef = "default/hello".parse().unwrap();
    stack.wait_serving(&hello).await;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/hello").await;
    let layout = &gw.nats.as_ref().unwrap().layout;
    let consumer = async || {
        layout
            .invocations
            .consumer_info(hello.consumer_name())
            .await
            .is_ok()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !consumer().await,
        "the runtime opened the consumer of a function never invoked"
    );

    assert_eq!(
        gw.get("/fn/default/hello/").await.text(),
        "Hi from Sluice!\n"
    );
    assert!(consumer().await, "the first invocation started the worker");
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
    let config = |url: &str| {
        let mut config = NodeConfig::new(url);
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.artifacts = Some(artifacts.path().to_owned());
        config.precompile_registered = false;
        config
    };
    stack.publish_dir(manifest_dir(&hello("Hi")).path()).await;
    let url = stack.server.url.clone();
    let gw = TestGateway::on_nats(stack, tempfile::tempdir().unwrap()).await;
    gw.wait_routed("default/hello").await;
    let cold_start = |text: &str, source: &str| {
        metric(
            text,
            &format!(
                r#"sluice_cold_start_seconds_count{{function="default/hello",source="{source}"}}"#
            ),
        )
    };

    let first = node::start(config(&url)).await.unwrap();
    // Loaded on the first invocation, not before.
    assert_eq!(cold_start(&first.metrics_text(), "fetched"), 0.0);
    assert_eq!(
        gw.get("/fn/default/hello").await.text(),
        "Hi from Sluice!\n"
    );
    let text = first.metrics_text();
    assert_eq!(cold_start(&text, "fetched"), 1.0, "{text}");
    first.shutdown().await;

    let second = node::start(config(&url)).await.unwrap();
    assert_eq!(
        gw.get("/fn/default/hello").await.text(),
        "Hi from Sluice!\n"
    );
    let text = second.metrics_text();
    assert_eq!(cold_start(&text, "precompiled"), 1.0, "{text}");
    assert_eq!(cold_start(&text, "fetched"), 0.0, "{text}");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_a_stream_bound_subject_are_consumed_durably_and_acked_once_stored() {
    let stack = NatsStack::start().await;
    let js = orders_stream(&stack).await;
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
    wait_trigger_consumer(&orders).await;
    js.publish("orders.created", "order 2".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let id = event_invocation_id(&echo, "orders.created", "ORDERS-2");
    let record = gw.wait_record(id.as_str()).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(stored_header(&record, "x-echo-h-ce-id"), "ORDERS-2");
    let old = event_invocation_id(&echo, "orders.created", "ORDERS-1");
    assert_eq!(
        gw.get(&format!("/invocations/{old}")).await.status,
        StatusCode::NOT_FOUND,
        "an event from before the trigger ran"
    );
    assert_eq!(
        stored_header(&record, "x-echo-h-ce-subject"),
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
/// misbehave, failing every attempt quickly: two attempts, then given up.
const FAILING: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: misbehave }
spec:
  module: { file: "{misbehave}" }
  retry: { maxAttempts: 2, backoff: { initial: 100ms, max: 100ms } }
"#;

/// Giving up always ends, on a stock (1 MiB `max_payload`) server: an
/// invocation that fills `max_payload` exactly, and one whose header block
/// is at JetStream's 64 KiB, fail every attempt; their dead letters, which
/// would not fit whole, are stored without the body, or with only the
/// invocation's identity, saying so, and both records end dead-lettered
/// within their retry budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_too_large_to_dead_letter_whole_still_ends_dead_lettered() {
    let stack = NatsStack::with_runtime(NatsServer::with_config("")).await;
    let dir = manifest_dir(FAILING);
    stack.publish_dir(dir.path()).await;
    let function: FunctionRef = "default/misbehave".parse().unwrap();
    stack.wait_serving(&function).await;
    let js = stack.layout.js.clone();
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/misbehave").await;

    // (header pad, whether the body fills what the headers leave)
    let cases = [(1000, true), (MAX_HEADER_BLOCK - 100, false)];
    let mut ids = Vec::new();
    for (pad, fill) in cases {
        let mut invocation = Invocation {
            id: InvocationId::random(),
            function: function.clone(),
            method: http::Method::POST,
            path: "/status/503".into(),
            query: None,
            forwarded_prefix: String::new(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
            deadline: std::time::SystemTime::now() + Duration::from_secs(120),
            traceparent: None,
        };
        let bare = invocation.header_block_len();
        let line = header_line_len("Sluice-H-x-pad", "");
        invocation
            .headers
            .insert("x-pad", "p".repeat(pad - bare - line).parse().unwrap());
        assert_eq!(invocation.header_block_len(), pad);
        if fill {
            invocation.body = vec![b'b'; STOCK_MAX_PAYLOAD - pad].into();
        }
        let (wire, body) = invocation.to_wire();
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &wire {
            headers.append(name.as_str(), value.as_str());
        }
        js.publish_with_headers(function.invoke_subject(), headers, body)
            .await
            .unwrap()
            .await
            .expect("JetStream stores a message that fits");
        ids.push(invocation.id);
    }
    for id in &ids {
        let record = gw.wait_record(id.as_str()).await;
        assert_eq!(record["state"], "dead-lettered", "{record}");
        assert_eq!(record["attempts"], 2, "{record}");
    }
    let letters = gw.get("/dead-letters/default/misbehave").await.json();
    let truncated = |id: &InvocationId| {
        let letter = letters
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no dead letter of {id}: {letters}"));
        assert!(
            letter["reason"]
                .as_str()
                .unwrap()
                .starts_with("gave up after 2 attempts"),
            "{letter}"
        );
        letter["truncated"].as_str().unwrap_or_default().to_owned()
    };
    let body_only = truncated(&ids[0]);
    assert!(body_only.starts_with("its body left out"), "{body_only}");
    let identity = truncated(&ids[1]);
    assert!(
        identity.starts_with("its body and all headers"),
        "{identity}"
    );
}

/// Events reach the function as CloudEvents HTTP requests that the
/// CloudEvents SDK accepts: binary mode with `datacontenttype` as
/// Content-Type and percent-encoded values, and structured mode passed on
/// as it came; a structured event published twice runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_functions_as_cloudevents_the_sdk_accepts_and_run_once() {
    use cloudevents::AttributesReader as _;

    let stack = NatsStack::start().await;
    let js = orders_stream(&stack).await;
    let dir = manifest_dir(ECHO_ON_ORDERS);
    stack.publish_dir(dir.path()).await;
    let node_metrics = stack.node.as_ref().unwrap().admin_addr;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/echo").await;
    let orders = js.get_stream("ORDERS").await.unwrap();
    wait_trigger_consumer(&orders).await;
    let echo: FunctionRef = "default/echo".parse().unwrap();

    let mut binary = async_nats::HeaderMap::new();
    binary.insert("ce-id", "bin-1");
    binary.insert("ce-source", "/shop/größe");
    binary.insert("ce-type", "com.example.order.created");
    binary.insert("ce-datacontenttype", "application/json");
    binary.insert("ce-note", "50% \"off\"");
    js.publish_with_headers("orders.created", binary, r#"{"order":1}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let id = event_invocation_id(&echo, "orders.created", "/shop/größe\nbin-1");
    let record = gw.wait_record(id.as_str()).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    let (headers, body) = request_seen(&record);
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("ce-datacontenttype").is_none(), "{headers:?}");
    let event = cloudevents::binding::http::to_event(&headers, body.clone())
        .unwrap_or_else(|e| panic!("the SDK refuses the binary event ({e}): {headers:?}"));
    assert_eq!(event.id(), "bin-1");
    assert_eq!(event.ty(), "com.example.order.created");
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert_eq!(event.source().to_string(), "/shop/gr%C3%B6%C3%9Fe");
    assert_eq!(headers["ce-note"], "50%25%20%22off%22");
    assert_eq!(body, br#"{"order":1}"#);

    let envelope = r#"{"specversion":"1.0","id":"st-1","source":"/shop","type":"com.example.order.created","datacontenttype":"application/json","data":{"order":2}}"#;
    for _ in 0..2 {
        let mut structured = async_nats::HeaderMap::new();
        structured.insert("Content-Type", "application/cloudevents+json");
        js.publish_with_headers("orders.created", structured, envelope.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let id = event_invocation_id(&echo, "orders.created", "/shop\nst-1");
    let record = gw.wait_record(id.as_str()).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    let (headers, body) = request_seen(&record);
    assert!(
        !headers.keys().any(|n| n.as_str().starts_with("ce-")),
        "{headers:?}"
    );
    let event = cloudevents::binding::http::to_event(&headers, body)
        .unwrap_or_else(|e| panic!("the SDK refuses the structured event ({e}): {headers:?}"));
    assert_eq!(event.id(), "st-1");
    assert_eq!(event.source().to_string(), "/shop");

    // Every message taken and acknowledged: three events, two runs.
    eventually(
        "the events are acknowledged",
        Duration::from_secs(30),
        async || {
            let mut names = orders.consumer_names();
            let name = futures::StreamExt::next(&mut names).await.unwrap().unwrap();
            let info = orders.consumer_info(&name).await.unwrap();
            (info.delivered.stream_sequence == 3
                && info.num_pending == 0
                && info.num_ack_pending == 0)
                .then_some(())
                .ok_or(format!("{info:?}"))
        },
    )
    .await;
    let runtime = TestGateway::remote(node_metrics);
    let metrics = runtime.get("/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_invocation_attempts_total{function="default/echo",outcome="success"}"#
        ),
        2.0,
        "{metrics}"
    );
}

/// The Python CloudEvents example, triggered by NATS: the Python SDK (not
/// one written here) parses a binary-mode and a structured-mode event as
/// the event bridge delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_cloudevents_sdk_parses_events_from_nats_in_both_modes() {
    let stack = NatsStack::start().await;
    let js = orders_stream(&stack).await;
    let dir = manifest_dir(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: events-py }
spec:
  module: { file: "{events-py}" }
  triggers: { nats: [ { subject: orders.created } ] }
"#,
    );
    stack.publish_dir(dir.path()).await;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/events-py").await;
    wait_trigger_consumer(&js.get_stream("ORDERS").await.unwrap()).await;
    let function: FunctionRef = "default/events-py".parse().unwrap();

    let mut binary = async_nats::HeaderMap::new();
    binary.insert("ce-id", "bin-1");
    binary.insert("ce-source", "/shop/größe");
    binary.insert("ce-type", "com.example.order.created");
    binary.insert("ce-datacontenttype", "application/json");
    js.publish_with_headers("orders.created", binary, r#"{"order":1}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut structured = async_nats::HeaderMap::new();
    structured.insert("Content-Type", "application/cloudevents+json");
    js.publish_with_headers(
        "orders.created",
        structured,
        r#"{"specversion":"1.0","id":"st-1","source":"/shop","type":"com.example.order.paid","data":{"order":2}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    for (identity, expected) in [
        (
            "/shop/größe\nbin-1",
            serde_json::json!({"id": "bin-1", "source": "/shop/größe",
                "type": "com.example.order.created", "subject": "orders.created",
                "data": {"order": 1}}),
        ),
        (
            "/shop\nst-1",
            serde_json::json!({"id": "st-1", "source": "/shop",
                "type": "com.example.order.paid", "subject": null, "data": {"order": 2}}),
        ),
    ] {
        let id = event_invocation_id(&function, "orders.created", identity);
        // Its first use compiles the Python component: 10 s or more, a
        // minute on a loaded machine, past `wait_record`'s 30 s.
        let record = gw.wait_succeeded(id.as_str()).await;
        let body = stored_body(&record);
        let seen: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        assert_eq!(seen, expected);
    }
}

/// Binds `orders.>` to a stream `ORDERS` on `stack`'s server.
pub(crate) async fn orders_stream(stack: &NatsStack) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(&stack.server.url).await.unwrap());
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

/// Waits up to 30s until the gateway has opened a trigger's durable
/// consumer on `stream`.
pub(crate) async fn wait_trigger_consumer(stream: &stream::Stream) {
    eventually(
        "the gateway opens the trigger's consumer",
        Duration::from_secs(30),
        async || {
            let mut names = stream.consumer_names();
            match futures::StreamExt::next(&mut names).await {
                Some(Ok(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// The request echo saw, from the response it stored: its `x-echo-h-*`
/// headers and its body.
fn request_seen(record: &serde_json::Value) -> (http::HeaderMap, Vec<u8>) {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &stored_headers(record) {
        if let Some(original) = name.as_str().strip_prefix("x-echo-h-") {
            headers.append(
                http::HeaderName::from_bytes(original.as_bytes()).unwrap(),
                value.clone(),
            );
        }
    }
    let body = stored_body(record);
    (headers, body)
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

/// Sets the most bytes the results bucket takes.
async fn limit_results(js: &jetstream::Context, max_bytes: i64) {
    let mut results = js.get_stream("KV_sluice-results").await.unwrap();
    let mut config = results.info().await.unwrap().config.clone();
    config.max_bytes = max_bytes;
    js.update_stream(config).await.unwrap();
}

/// The results bucket refuses the final record for a while: the runtime
/// keeps trying to store it instead of letting the message come back, so
/// the function ran once and the record ends succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_final_record_is_stored_later_without_running_the_function_again() {
    let recorder = crate::harness::Recorder::start().await;
    let manifest = crate::async_invocations::functions(&recorder);
    let gw = TestGateway::start(Backend::Nats, &manifest).await;
    let js = gw.nats.as_ref().unwrap().layout.js.clone();
    // Smaller than any record: every write is refused.
    limit_results(&js, 64).await;
    let id = gw
        .submit(
            &format!(
                "/async/fn/default/counted/call?url={}/hit",
                recorder.origin()
            ),
            &[],
            "",
        )
        .await;
    recorder.wait_for("/hit", 1).await;
    // Refused for a while: long enough for a redelivery (1 s) to have run
    // it again, were the message given back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    limit_results(&js, 1 << 30).await;
    let record = gw.wait_record(&id).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(recorder.received("/hit").len(), 1, "the function ran once");
}

/// A sync invocation goes straight to a warm runtime with a free slot, past
/// the stream; calls beyond its slots are declined and queued on the
/// stream, and still answered. The runtime reports the direct calls, which
/// no consumer sees, for the autoscaler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_calls_reach_a_warm_runtime_directly_and_overflow_to_the_stream() {
    let mut stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let dir = manifest_dir(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: slow }
spec:
  module: { file: "{misbehave}" }
  timeout: 20s
  concurrency: 1
"#,
    );
    stack.publish_dir(dir.path()).await;
    stack.start_runtime().await;
    let slow: FunctionRef = "default/slow".parse().unwrap();
    stack.wait_serving(&slow).await;
    let mut invocations = stack.layout.invocations.clone();
    let watcher = async_nats::connect(&stack.server.url).await.unwrap();
    let mut reports = watcher.subscribe(slow.load_subject()).await.unwrap();
    watcher.flush().await.unwrap();
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/slow").await;
    gw.wait_direct("/fn/default/slow/sleep/0").await;
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut reports),
    )
    .await
    .expect("a load report within 10s")
    .unwrap();
    let (_, peak) = sluice_nats::load::decode(&report.payload).expect("a load report");
    assert_eq!(peak, 1);

    // One slot: while one call sleeps, another waits for the slot there
    // and the third, declined, is queued.
    let calls = (0..3).map(|_| gw.get("/fn/default/slow/sleep/1500"));
    for reply in futures::future::join_all(calls).await {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let queued = invocations.info().await.unwrap().state.last_sequence;
    assert!(queued >= 1, "no call overflowed to the stream");
}
