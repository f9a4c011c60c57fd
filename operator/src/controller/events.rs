//! The Events a reconcile publishes about a Function.

use kube::Resource as _;
use kube::runtime::events::{Event, EventType};
use sluice_api::{Function, FunctionStatus};

use super::apply::Outcome;
use crate::conditions::{self, Observed, Status};
use crate::context::Context;

/// Publishes Events for what changed: readiness or its reason, a newly
/// resolved module, a registry write.
pub(super) async fn report(
    function: &Function,
    previous: &FunctionStatus,
    ready: &Observed,
    outcome: &Outcome,
    ctx: &Context,
) {
    let was = previous
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY);
    let changed =
        was.is_none_or(|c| c.status != ready.status.as_str() || c.reason != ready.reason.as_str());
    let mut events = Vec::new();
    if changed {
        events.push(Event {
            type_: if ready.status == Status::True || ready.reason.in_progress() {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: ready.reason.to_string(),
            note: Some(truncate(&ready.message)),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    if outcome.published {
        events.push(Event {
            type_: EventType::Normal,
            reason: "Published".into(),
            note: Some(truncate(&format!(
                "registered with module sha256:{}",
                outcome
                    .digest
                    .as_ref()
                    .map_or_else(String::new, ToString::to_string)
            ))),
            action: "Publish".into(),
            secondary: None,
        });
    }
    let reference = function.object_ref(&());
    for event in events {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = %event.reason, "cannot record an Event");
        }
    }
}

/// Event notes are at most 1 kB.
fn truncate(text: &str) -> String {
    if text.len() <= 1000 {
        return text.to_owned();
    }
    let mut end = 1000;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
