//! The Python and JavaScript examples (componentize-py, componentize-js;
//! built by scripts/polyglot.sh), served unchanged like the Rust ones: sync
//! and async, the same limits, the same outbound policy.

use http::StatusCode;

use std::time::Duration;

use crate::harness::{Backend, Recorder, TestGateway, conformance, eventually, stored_body};

const FUNCTIONS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello-py }
spec:
  module: { file: "{hello-py}" }
  env: [ { name: GREETING, value: Hola } ]
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello-js }
spec:
  module: { file: "{hello-js}" }
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: events-py }
spec:
  module: { file: "{events-py}" }
"#;

/// A structured-mode CloudEvent (CloudEvents 1.0 JSON format).
const STRUCTURED: &str = r#"{"specversion":"1.0","id":"st-7","source":"/shop","type":"com.example.order.created","subject":"order-7","datacontenttype":"application/json","data":{"order":7}}"#;

/// Invokes each function once, asynchronously, and waits until it ran
/// (whatever it answered): a NATS runtime compiles a component on its
/// first use, which may take longer than a sync call's timeout here.
async fn warm(gw: &TestGateway, functions: &[&str]) {
    for name in functions {
        let id = gw
            .submit(&format!("/async/fn/default/{name}/"), &[], "")
            .await;
        eventually(
            &format!("{name} ran once"),
            Duration::from_secs(600),
            async || {
                let reply = gw.get(&format!("/invocations/{id}?wait=20s")).await;
                match reply.json()["state"].as_str() {
                    Some("queued" | "running") | None => Err(reply.text()),
                    Some(_) => Ok(()),
                }
            },
        )
        .await;
    }
}

async fn python_and_javascript_examples_answer_sync_and_async(backend: Backend) {
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    warm(&gw, &["hello-py", "hello-js", "events-py"]).await;

    let reply = gw.get("/fn/default/hello-py/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "Hola from Python!\n");
    let reply = gw.get("/fn/default/hello-js/a/b?c=d").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "Hello from JavaScript! /a/b?c=d\n");

    for (path, expected) in [
        ("/async/fn/default/hello-py/", "Hola from Python!\n"),
        (
            "/async/fn/default/hello-js/x",
            "Hello from JavaScript! /x\n",
        ),
    ] {
        let id = gw.submit(path, &[], "").await;
        let record = gw.wait_final(&id).await;
        assert_eq!(record["state"], "succeeded", "{path}: {record}");
        assert_eq!(record["response"]["status"], 200, "{record}");
        let body = stored_body(&record);
        assert_eq!(String::from_utf8_lossy(&body), expected, "{path}");
    }

    // The CloudEvents example over HTTP, both content modes, sync and
    // async: the Python SDK reads the attributes and the data.
    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "bin-7"),
        ("ce-source", "/shop/gr%C3%B6%C3%9Fe"),
        ("ce-type", "com.example.order.created"),
        ("content-type", "application/json"),
    ];
    let reply = gw
        .send(
            http::Method::POST,
            "/fn/default/events-py/",
            &binary,
            r#"{"order":7}"#.to_owned(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json(),
        serde_json::json!({"id": "bin-7", "source": "/shop/größe",
            "type": "com.example.order.created", "subject": null, "data": {"order": 7}})
    );
    let id = gw
        .submit(
            "/async/fn/default/events-py/",
            &[("content-type", "application/cloudevents+json")],
            STRUCTURED,
        )
        .await;
    let record = gw.wait_final(&id).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    let body = stored_body(&record);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"id": "st-7", "source": "/shop",
            "type": "com.example.order.created", "subject": "order-7", "data": {"order": 7}})
    );

    let reply = gw
        .send(
            http::Method::POST,
            "/fn/default/events-py/",
            &[],
            "just text".to_owned(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(
        reply.text().starts_with("not a CloudEvent"),
        "{}",
        reply.text()
    );
}

conformance!(python_and_javascript_examples_answer_sync_and_async,);

/// Interpreted guests keep to their memory limit and timeout, each failing
/// alone, and make outbound requests only where allowed.
async fn python_and_javascript_guests_keep_to_their_limits(backend: Backend) {
    let allowed = Recorder::start().await;
    let other = Recorder::start().await;
    let functions = format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: hello-py }}
spec:
  module: {{ file: "{{hello-py}}" }}
  timeout: 2s
  limits: {{ memory: 64Mi }}
  allowedOutboundHosts: [ "{}" ]
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: hello-js }}
spec:
  module: {{ file: "{{hello-js}}" }}
  timeout: 2s
  limits: {{ memory: 64Mi }}
"#,
        allowed.origin()
    );
    let gw = TestGateway::start(backend, &functions).await;
    warm(&gw, &["hello-py", "hello-js"]).await;

    for language in ["py", "js"] {
        let function = format!("/fn/default/hello-{language}");
        let reply = gw.get(&format!("{function}/allocate/8")).await;
        assert_eq!(reply.status, StatusCode::OK, "{language}: {}", reply.text());
        assert_eq!(reply.text(), "allocated 8 MiB\n");

        let reply = gw.get(&format!("{function}/allocate/100")).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "{language}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["error"], "memory_limit", "{language}");
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .contains("memory limit of 64Mi"),
            "{language}: {}",
            reply.text()
        );

        let reply = gw.get(&format!("{function}/spin")).await;
        assert_eq!(
            reply.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{language}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["error"], "timeout", "{language}");

        // Each failure was that invocation's alone.
        let reply = gw.get(&format!("{function}/")).await;
        assert_eq!(reply.status, StatusCode::OK, "{language}: {}", reply.text());
    }

    let reply = gw
        .get(&format!(
            "/fn/default/hello-py/fetch?url={}/allowed",
            allowed.origin()
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().starts_with("200 "), "{}", reply.text());
    assert_eq!(allowed.received("/allowed").len(), 1);

    let reply = gw
        .get(&format!(
            "/fn/default/hello-py/fetch?url={}/refused",
            other.origin()
        ))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(
        reply.text().contains("HttpRequestDenied"),
        "{}",
        reply.text()
    );
    assert!(
        other.received("/refused").is_empty(),
        "nothing left the sandbox"
    );
}

conformance!(python_and_javascript_guests_keep_to_their_limits,);
