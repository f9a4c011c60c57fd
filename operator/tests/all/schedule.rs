//! Schedule triggers end to end: two NATS-mode gateways both run a
//! function's every-second schedule while it has no replica; each tick is
//! queued once. (That the queued ticks wake the function, which runs
//! them, is shown on the real node: `operator/tests/node`.)

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use sluice_api::names::{FunctionRef, INVOCATION_STREAM};
use sluice_api::schedule::tick_invocation_id;

use crate::support::{Sluice, eventually, http_get};

fn ticking(schedule: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: ticking, namespace: default }}
spec:
  module: {{ configMap: {{ name: misbehave-wasm, key: misbehave.wasm }} }}
  placement: dedicated
  scaling: {{ scaleDownDelay: 0s, scaleToZeroAfter: 0s }}
  triggers: {schedule}
"
    )
}

/// Messages ever stored on the invocation stream (its last sequence).
fn stored_invocations(sluice: &Sluice) -> u64 {
    let url = sluice.nats.url.clone();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let client = async_nats::connect(&url).await.unwrap();
            let mut stream = async_nats::jetstream::new(client)
                .get_stream(INVOCATION_STREAM)
                .await
                .unwrap();
            stream.info().await.unwrap().state.last_sequence
        })
}

#[test]
fn two_gateways_queue_each_tick_of_a_schedule_once_while_the_function_is_at_zero() {
    let sluice = Sluice::start();
    let (_one, gateway) = sluice.gateway_named("gateway-1");
    let (_two, _) = sluice.gateway_named("gateway-2");
    sluice.component_config_map("misbehave");
    let _operator = sluice.operator("op-1", 15, &["--leader-elect", "false"]);
    sluice.apply(&ticking("{}"));
    sluice.wait_ready("default", "ticking", "True", "Ready");
    // Nothing plays the kubelet: the Deployment's pods never run, and
    // what is queued stays queued.
    eventually("at zero", Duration::from_secs(60), || {
        (sluice.cluster.kubectl_ok(&[
            "get",
            "deployment",
            "ticking-runtime",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.replicas}",
        ]) == "0")
            .then_some(())
    });
    assert_eq!(stored_invocations(&sluice), 0, "nothing queued yet");
    let from = Timestamp::now();
    sluice.apply(&ticking(
        "{ schedule: [ { name: every-second, cron: \"* * * * * *\", timeZone: Europe/Paris, path: /sleep/1 } ] }",
    ));
    let function = FunctionRef::new("default", "ticking").unwrap();
    let queued = |tick: Timestamp| {
        let id = tick_invocation_id(&function, "every-second", tick);
        http_get(gateway, &format!("/invocations/{id}")).is_some_and(|(status, _)| status == 200)
    };
    let seconds_since_start = |to: Timestamp| {
        let mut tick = Timestamp::from_second(from.as_second()).unwrap();
        std::iter::from_fn(move || {
            tick += SignedDuration::from_secs(1);
            (tick <= to).then_some(tick)
        })
    };
    eventually("three ticks queued", Duration::from_secs(60), || {
        (seconds_since_start(Timestamp::now())
            .filter(|&t| queued(t))
            .count()
            >= 3)
            .then_some(())
    });
    // With the schedule gone, every stored message is a distinct tick:
    // each of the two gateways fired each tick, one was kept.
    sluice.apply(&ticking("{}"));
    let (ticks, stored) = eventually(
        "the stream holds one message per tick",
        Duration::from_secs(60),
        || {
            let ticks = seconds_since_start(Timestamp::now())
                .filter(|&t| queued(t))
                .count() as u64;
            let stored = stored_invocations(&sluice);
            (ticks >= 3 && stored == ticks).then_some((ticks, stored))
        },
    );
    assert_eq!(ticks, stored);
}

#[test]
fn a_spec_the_schema_admits_but_the_operator_refuses_leaves_the_function_not_ready() {
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &["--leader-elect", "false"]);
    sluice.component_config_map("misbehave");
    // Five fields of the right shape, but no minute 61.
    sluice.apply(&ticking("{ schedule: [ { cron: \"61 * * * *\" } ] }"));
    let message = sluice.wait_ready("default", "ticking", "False", "InvalidSpec");
    assert!(
        message.contains("spec.triggers.schedule[0].cron"),
        "{message}"
    );
    let reasons = sluice.event_reasons("default", "ticking");
    assert!(reasons.iter().any(|r| r == "InvalidSpec"), "{reasons:?}");
    sluice.apply(&ticking("{ schedule: [ { cron: \"1 * * * *\" } ] }"));
    sluice.wait_ready("default", "ticking", "True", "Ready");

    // The schema checks a destination's prefix; the namespace after it is
    // the operator's to check, so that no tenant publishes on another's.
    let elsewhere = ticking("{}").replace(
        "  triggers:",
        "  destinations: { onSuccess: { subject: sluice.dest.shop.done } }\n  triggers:",
    );
    sluice.apply(&elsewhere);
    let message = sluice.wait_ready("default", "ticking", "False", "InvalidSpec");
    assert!(
        message.contains("spec.destinations.onSuccess.subject")
            && message.contains("sluice.dest.default."),
        "{message}"
    );
    sluice.apply(&ticking("{}"));
    sluice.wait_ready("default", "ticking", "True", "Ready");
}
