//! Schedule triggers on both queues: a gateway runs a function's
//! every-second schedule by itself, each tick a binary-mode CloudEvent
//! under the invocation id derived from the tick.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use sluice_api::names::FunctionRef;
use sluice_api::schedule::tick_invocation_id;

use crate::harness::{Backend, TestGateway, conformance, eventually, with_components};

const TICKER: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: ticker }
spec:
  module: { file: "{echo}" }
  triggers:
    schedule:
      - name: every-second
        cron: "* * * * * *"
        timeZone: Europe/Paris
        path: /tick?n=1
        body: '{"tick": true}'
        contentType: application/json
"#;

conformance!(a_schedule_ticks_as_cloudevents_under_the_tick_s_id);

async fn a_schedule_ticks_as_cloudevents_under_the_tick_s_id(backend: Backend) {
    let from = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    let gateway = TestGateway::start(backend, &with_components(TICKER)).await;
    let function = FunctionRef::new("default", "ticker").unwrap();
    // The first tick whose record says it ran.
    let (tick, record) = eventually("a tick run", Duration::from_secs(600), async || {
        let mut tick = from;
        while tick <= Timestamp::now() {
            tick += SignedDuration::from_secs(1);
            let id = tick_invocation_id(&function, "every-second", tick);
            let reply = gateway.get(&format!("/invocations/{id}")).await;
            if reply.status == http::StatusCode::OK && reply.json()["state"] == "succeeded" {
                return Ok((tick, reply.json()));
            }
        }
        Err(format!("no tick after {from} succeeded"))
    })
    .await;
    let header = |name: &str| {
        record["response"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .and_then(|h| h["value"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(header("x-echo-method").as_deref(), Some("POST"), "{record}");
    assert_eq!(header("x-echo-path").as_deref(), Some("/tick?n=1"));
    assert_eq!(
        header("x-echo-h-ce-type").as_deref(),
        Some("dev.sluice.schedule.every-second")
    );
    assert_eq!(header("x-echo-h-ce-time"), Some(tick.to_string()));
    assert_eq!(
        header("x-echo-h-content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        header("x-echo-h-ce-source").as_deref(),
        Some("/sluice/default/ticker/schedules/every-second")
    );
}
