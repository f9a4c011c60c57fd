//! Destinations: a function's final records delivered, once each, as
//! binary-mode CloudEvents on its subjects (NATS mode), and chained into
//! another function (both queues).

use std::time::Duration;

use futures::StreamExt as _;
use sluice_api::destination::{DestinationKind, chained_id};
use sluice_api::names::FunctionRef;
use sluice_api::{InvocationId, InvocationRecord};

use crate::harness::{
    Backend, TestGateway, conformance, loopback_config, manifest_dir, stored_body, stored_header,
};

const CHAIN: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: a }
spec:
  module: { file: "{misbehave}" }
  destinations:
    onSuccess: { function: b }
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: b }
spec:
  module: { file: "{echo}" }
"#;

conformance!(a_success_of_a_chains_into_b_with_a_s_record);

async fn a_success_of_a_chains_into_b_with_a_s_record(backend: Backend) {
    let gateway = TestGateway::start(backend, CHAIN).await;
    let id = gateway
        .submit("/async/fn/default/a/status/200", &[], "")
        .await;
    let record_a = gateway.wait_succeeded(&id).await;
    let b = FunctionRef::new("default", "b").unwrap();
    let chained = chained_id(
        &InvocationId::parse(&id).unwrap(),
        DestinationKind::Success,
        &b,
    );
    let record_b = gateway.wait_succeeded(chained.as_str()).await;
    assert_eq!(
        stored_header(&record_b, "x-echo-h-ce-type"),
        "dev.sluice.invocation.succeeded",
        "{record_b}"
    );
    assert_eq!(stored_header(&record_b, "x-echo-h-ce-subject"), id);
    assert_eq!(
        stored_header(&record_b, "x-echo-h-ce-id"),
        format!("{id}.destination.success")
    );
    assert_eq!(
        stored_header(&record_b, "x-echo-h-ce-source"),
        "/sluice/default/a"
    );
    // B's body is A's final record, the one the status endpoint shows.
    let delivered: serde_json::Value = serde_json::from_slice(&stored_body(&record_b)).unwrap();
    assert_eq!(delivered, record_a);
}

const REPORTER: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: reporter }
spec:
  module: { file: "{misbehave}" }
  destinations:
    onSuccess: { subject: sluice.dest.default.reporter.done }
    onFailure: { subject: sluice.dest.default.reporter.failed }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_and_failure_records_arrive_once_each_on_their_subjects() {
    let gateway = TestGateway::start(Backend::Nats, REPORTER).await;
    let url = &gateway.nats.as_ref().unwrap().server.url;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let mut delivered = client.subscribe("sluice.dest.default.>").await.unwrap();
    client.flush().await.unwrap();

    let ok = gateway
        .submit("/async/fn/default/reporter/status/200", &[], "")
        .await;
    let bad = gateway
        .submit("/async/fn/default/reporter/status/422", &[], "")
        .await;
    let ok_record = gateway.wait_final(&ok).await;
    let bad_record = gateway.wait_final(&bad).await;
    assert_eq!(ok_record["state"], "succeeded", "{ok_record}");
    assert_eq!(bad_record["state"], "failed", "{bad_record}");

    let mut messages = Vec::new();
    while messages.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), delivered.next())
            .await
            .expect("both records are delivered")
            .unwrap();
        messages.push(message);
    }
    // Nothing more comes: each record is delivered once.
    client.flush().await.unwrap();
    let more = tokio::time::timeout(Duration::from_secs(2), delivered.next()).await;
    assert!(more.is_err(), "a third delivery: {more:?}");

    for (id, subject, kind, record) in [
        (
            &ok,
            "sluice.dest.default.reporter.done",
            "success",
            &ok_record,
        ),
        (
            &bad,
            "sluice.dest.default.reporter.failed",
            "failure",
            &bad_record,
        ),
    ] {
        let message = messages
            .iter()
            .find(|m| m.subject.as_str() == subject)
            .unwrap_or_else(|| panic!("nothing on {subject}"));
        let headers = message.headers.as_ref().unwrap();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let message_id = format!("{id}.destination.{kind}");
        assert_eq!(header("Nats-Msg-Id"), Some(message_id.clone()));
        assert_eq!(header("ce-id"), Some(message_id));
        assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(header("ce-subject").as_deref(), Some(id.as_str()));
        assert_eq!(
            header("ce-type"),
            Some(format!(
                "dev.sluice.invocation.{}",
                record["state"].as_str().unwrap()
            ))
        );
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(&body, record);
        let _: InvocationRecord = serde_json::from_value(body).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_refuses_a_subject_destination_naming_the_field() {
    let dir = manifest_dir(REPORTER);
    let Err(error) = sluice_gateway::local::start(loopback_config(dir.path())).await else {
        panic!("a subject destination is refused in local mode");
    };
    let error = error.to_string();
    assert!(
        error.contains("spec.destinations.onSuccess") && error.contains("local mode"),
        "{error}"
    );
}
