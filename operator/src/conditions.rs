//! The status conditions of a Function, in the kstatus style that
//! `kubectl wait --for=condition=Ready` and `helm --wait` understand: one
//! condition per type, `True`/`False`/`Unknown`, a CamelCase reason, a
//! message a person can act on, and a transition time that moves only when
//! the status does.
//!
//! `Ready` is the summary: `True` when the module is resolved and stored
//! (`ModuleReady`) and the function is registered with its queue
//! (`QueueReady`). Whether it runs above zero replicas (`Active`, the
//! autoscaler's) is not part of it: a function at zero is Ready, as in
//! Knative.

use sluice_api::Condition;

/// Condition types.
pub const READY: &str = "Ready";
pub const MODULE_READY: &str = "ModuleReady";
pub const QUEUE_READY: &str = "QueueReady";

/// A condition's status, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// One condition as a reconcile decides it, before its transition time is
/// known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: Status,
    /// CamelCase, e.g. `ConfigMapNotFound`.
    pub reason: String,
    pub message: String,
}

impl Observed {
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// `Ready` from the two conditions it summarises: the first that is not
/// `True` decides, with its reason and message; both `True` make it `True`.
pub fn ready(module: &Observed, queue: &Observed) -> Observed {
    for part in [module, queue] {
        if part.status != Status::True {
            return Observed::new(
                READY,
                if part.status == Status::False {
                    Status::False
                } else {
                    Status::Unknown
                },
                part.reason.clone(),
                part.message.clone(),
            );
        }
    }
    Observed::new(
        READY,
        Status::True,
        "Ready",
        "the function is registered and can be invoked",
    )
}

/// The conditions to write: `observed` in order, each keeping the
/// transition time of the `current` condition of its type when its status
/// did not change, else stamped `now` (RFC 3339). Conditions of other types
/// in `current` (another writer's, such as `Active`) are kept as they are.
pub fn merge(
    current: &[Condition],
    observed: &[Observed],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let mut merged: Vec<Condition> = observed
        .iter()
        .map(|o| {
            let previous = current.iter().find(|c| c.type_ == o.type_);
            let since = match previous {
                Some(p) if p.status == o.status.as_str() => p.last_transition_time.clone(),
                _ => None,
            };
            Condition {
                type_: o.type_.to_owned(),
                status: o.status.as_str().to_owned(),
                reason: o.reason.clone(),
                message: o.message.clone(),
                last_transition_time: Some(since.unwrap_or_else(|| now.to_owned())),
                observed_generation: generation,
            }
        })
        .collect();
    merged.extend(
        current
            .iter()
            .filter(|c| !observed.iter().any(|o| o.type_ == c.type_))
            .cloned(),
    );
    merged
}

/// Whether `conditions` say the function is Ready.
pub fn is_ready(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == Status::True.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(status: Status, reason: &str) -> Observed {
        Observed::new(MODULE_READY, status, reason, format!("module {reason}"))
    }

    fn queue(status: Status, reason: &str) -> Observed {
        Observed::new(QUEUE_READY, status, reason, format!("queue {reason}"))
    }

    #[test]
    fn ready_summarises_the_first_condition_that_is_not_true() {
        let cases = [
            (
                module(Status::True, "Resolved"),
                queue(Status::True, "Registered"),
                Status::True,
                "Ready",
            ),
            (
                module(Status::False, "ConfigMapNotFound"),
                queue(Status::Unknown, "WaitingForModule"),
                Status::False,
                "ConfigMapNotFound",
            ),
            (
                module(Status::True, "Resolved"),
                queue(Status::False, "NatsUnavailable"),
                Status::False,
                "NatsUnavailable",
            ),
            (
                module(Status::Unknown, "Resolving"),
                queue(Status::False, "NatsUnavailable"),
                Status::Unknown,
                "Resolving",
            ),
        ];
        for (m, q, status, reason) in cases {
            let ready = ready(&m, &q);
            assert_eq!((ready.status, ready.reason.as_str()), (status, reason));
        }
    }

    #[test]
    fn a_transition_time_moves_only_when_the_status_does() {
        let first = merge(
            &[],
            &[module(Status::False, "ConfigMapNotFound")],
            Some(1),
            "2026-12-01T00:00:00Z",
        );
        assert_eq!(
            first[0].last_transition_time.as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        // Same status, other reason: the time stays.
        let again = merge(
            &first,
            &[module(Status::False, "ConfigMapKeyNotFound")],
            Some(2),
            "2026-12-01T00:05:00Z",
        );
        assert_eq!(
            again[0].last_transition_time.as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        assert_eq!(again[0].reason, "ConfigMapKeyNotFound");
        assert_eq!(again[0].observed_generation, Some(2));
        // A new status: the time moves.
        let fixed = merge(
            &again,
            &[module(Status::True, "Resolved")],
            Some(3),
            "2026-12-01T00:09:00Z",
        );
        assert_eq!(
            fixed[0].last_transition_time.as_deref(),
            Some("2026-12-01T00:09:00Z")
        );
    }

    #[test]
    fn conditions_of_other_writers_are_kept() {
        let active = Condition {
            type_: "Active".into(),
            status: "False".into(),
            reason: "ScaledToZero".into(),
            ..Condition::default()
        };
        let merged = merge(
            std::slice::from_ref(&active),
            &[module(Status::True, "Resolved")],
            None,
            "t",
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1], active);
        assert!(!is_ready(&merged));
        let ready = merge(
            &merged,
            &[ready(
                &module(Status::True, "Resolved"),
                &queue(Status::True, "Registered"),
            )],
            None,
            "t",
        );
        assert!(is_ready(&ready));
    }
}
