//! The status fields the autoscaler owns (`replicas`, `desiredReplicas`,
//! `queueDepth` and the `Active` condition): what a function shows, when a
//! change of depth alone is worth a write, and the server-side apply patch.

use std::time::{Duration, SystemTime};

use sluice_api::{Condition, Function};

use crate::conditions::{self, Observed, Reason, Status};
use crate::status::{ScaleStatus, StatusApply};

/// The condition the autoscaler keeps: `True` while the function's runtimes
/// are scaled above zero. Not part of `Ready`.
pub const ACTIVE: &str = "Active";
/// How often, at most, a changing `status.queueDepth` alone is written
/// ([`depth_due`]).
const DEPTH_STATUS_EVERY: Duration = Duration::from_secs(30);

/// The order of magnitude of a queue depth: 0, then 1 for 1–9, 2 for
/// 10–99, and so on.
fn depth_band(depth: u64) -> u32 {
    depth.checked_ilog10().map_or(0, |log| log + 1)
}

/// Whether `status.queueDepth` alone is worth a status write (a change of
/// replicas or conditions writes it anyway): when the depth changed its
/// order of magnitude ([`depth_band`]) and the last depth write is
/// [`DEPTH_STATUS_EVERY`] old, or at once when the queue became empty. The
/// exact depth is in `sluice_queue_depth` every tick; a busy function's
/// status is not rewritten each time its depth moves.
pub(super) fn depth_due(shown: u64, now: u64, since_written: Duration) -> bool {
    if depth_band(shown) == depth_band(now) {
        return false;
    }
    now == 0 || since_written >= DEPTH_STATUS_EVERY
}

/// What the status shows of a function's scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shown {
    pub(super) replicas: u32,
    pub(super) desired: u32,
    pub(super) depth: u64,
    pub(super) active: Option<bool>,
}

/// What a Function's status shows now, so that a restarted autoscaler
/// does not write every status again.
pub(super) fn shown_in(function: &Function) -> Shown {
    let status = function.status.clone().unwrap_or_default();
    Shown {
        replicas: status.replicas,
        desired: status.desired_replicas,
        depth: status.queue_depth,
        active: status
            .conditions
            .iter()
            .find(|c| c.type_ == ACTIVE)
            .map(|c| c.status == "True"),
    }
}

/// The `Active` condition for `shown`.
fn active(shown: Shown) -> Observed {
    match shown.active {
        Some(true) => Observed::new(
            ACTIVE,
            Status::True,
            Reason::ScaledUp,
            format!(
                "{} replicas wanted, {} running",
                shown.desired, shown.replicas
            ),
        ),
        Some(false) => Observed::new(
            ACTIVE,
            Status::False,
            Reason::ScaledToZero,
            "no replicas; the first invocation scales it up",
        ),
        None => Observed::new(
            ACTIVE,
            Status::Unknown,
            Reason::PoolNotManaged,
            "the operator runs without --pool-deployment: the runtime pool is sized outside Sluice",
        ),
    }
}

/// The status fields the autoscaler owns, for a server-side apply.
pub(super) fn status_patch(function: &Function, shown: Shown) -> StatusApply<ScaleStatus> {
    let current: &[Condition] = function
        .status
        .as_ref()
        .map_or(&[], |s| s.conditions.as_slice());
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let conditions = conditions::merge(
        current,
        &[active(shown)],
        function.metadata.generation,
        &now,
    );
    StatusApply::new(ScaleStatus {
        replicas: shown.replicas,
        desired_replicas: shown.desired,
        queue_depth: shown.depth,
        conditions: conditions
            .into_iter()
            .filter(|c| c.type_ == ACTIVE)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_depth_alone_is_written_on_a_change_of_magnitude_not_on_every_move() {
        let long = DEPTH_STATUS_EVERY;
        let short = Duration::from_secs(1);
        let table = [
            // (shown, now, since written, due)
            (0, 0, long, false),
            (900, 950, long, false),
            (900, 1_100, long, true),
            (900, 1_100, short, false),
            (5, 0, short, true),
            (0, 3, short, false),
            (0, 3, long, true),
            (99, 10, long, false),
            (100, 99, long, true),
        ];
        for (shown, now, since, due) in table {
            assert_eq!(
                depth_due(shown, now, since),
                due,
                "{shown} -> {now} after {since:?}"
            );
        }
        assert_eq!(
            [0, 1, 9, 10, 99, 100, u64::MAX].map(depth_band),
            [0, 1, 1, 2, 2, 3, 20]
        );
    }

    fn function(active: Option<(&str, &str)>) -> Function {
        let mut function = Function::new(
            "f",
            serde_json::from_value(serde_json::json!({ "module": { "file": "f.wasm" } }))
                .expect("a spec"),
        );
        function.metadata.generation = Some(3);
        function.status = active.map(|(status, since)| sluice_api::FunctionStatus {
            conditions: vec![Condition {
                type_: ACTIVE.into(),
                status: status.into(),
                reason: "ScaledUp".into(),
                message: String::new(),
                last_transition_time: Some(since.into()),
                observed_generation: Some(2),
            }],
            ..Default::default()
        });
        function
    }

    fn shown(active: Option<bool>) -> Shown {
        Shown {
            replicas: 2,
            desired: 3,
            depth: 40,
            active,
        }
    }

    #[test]
    fn the_status_patch_holds_only_the_autoscalers_fields() {
        let patch = serde_json::to_value(status_patch(&function(None), shown(Some(true)))).unwrap();
        let status = patch["status"].as_object().expect("a status");
        let mut keys: Vec<&str> = status.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["conditions", "desiredReplicas", "queueDepth", "replicas"]
        );
        assert_eq!(status["replicas"], 2);
        assert_eq!(status["desiredReplicas"], 3);
        assert_eq!(status["queueDepth"], 40);
        let conditions = status["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 1, "Active only: {conditions:?}");
        assert_eq!(conditions[0]["type"], "Active");
        assert_eq!(conditions[0]["status"], "True");
        assert_eq!(conditions[0]["observedGeneration"], 3);
    }

    #[test]
    fn active_keeps_its_transition_time_until_its_status_changes() {
        let since = "2026-01-01T00:00:00Z";
        let same = serde_json::to_value(status_patch(
            &function(Some(("True", since))),
            shown(Some(true)),
        ))
        .unwrap();
        assert_eq!(same["status"]["conditions"][0]["lastTransitionTime"], since);
        let changed = serde_json::to_value(status_patch(
            &function(Some(("True", since))),
            shown(Some(false)),
        ))
        .unwrap();
        let condition = &changed["status"]["conditions"][0];
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "ScaledToZero");
        assert_ne!(condition["lastTransitionTime"], since);
        let unmanaged = serde_json::to_value(status_patch(&function(None), shown(None))).unwrap();
        assert_eq!(
            unmanaged["status"]["conditions"][0]["reason"],
            "PoolNotManaged"
        );
    }
}
