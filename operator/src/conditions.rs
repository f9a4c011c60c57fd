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
//! Knative. A new pool function's `Ready` also waits, bounded, for the
//! warm pool to compile its component ahead ([`crate::compiled`]).

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

/// Why a condition is as it is: a CamelCase word whose [`Display`] is what
/// the condition's `reason` holds on the wire (and what Events and the
/// `reason` metric label say).
///
/// [`Display`]: std::fmt::Display
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `Ready=True`.
    Ready,
    /// `ModuleReady=True`: resolved and stored.
    Resolved,
    /// `QueueReady=True`: in the registry, with its consumer.
    Registered,
    /// The spec (or the name) cannot be served as it is.
    InvalidSpec,
    /// `QueueReady` while the module does not resolve.
    WaitingForModule,
    /// `Ready=False` while the warm pool compiles the component ahead
    /// ([`crate::compiled`]): in progress, not a fault.
    CompilingAhead,
    /// NATS refused or did not answer a registration.
    NatsUnavailable,
    /// Another Function, created earlier, owns the custom path.
    PathConflict,
    /// A trigger subject is outside the namespace's prefix.
    TriggerSubjectOutOfScope,
    /// A Deployment of the dedicated name belongs to someone else.
    PlacementConflict,
    /// The API server refused the dedicated Deployment.
    PlacementFailed,
    /// The namespace lacks a Secret the dedicated runtime mounts.
    RuntimeSecretMissing,
    /// `Active=True`.
    ScaledUp,
    /// `Active=False`.
    ScaledToZero,
    /// `Active=Unknown`: the pool is sized outside Sluice.
    PoolNotManaged,
    /// The module source failed: [`crate::module::ModuleError::reason`].
    Module(&'static str),
    /// The API keys' Secret failed: [`crate::api_keys::ApiKeysError::reason`].
    ApiKeys(&'static str),
}

impl Reason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Resolved => "Resolved",
            Self::Registered => "Registered",
            Self::InvalidSpec => "InvalidSpec",
            Self::WaitingForModule => "WaitingForModule",
            Self::CompilingAhead => "CompilingAhead",
            Self::NatsUnavailable => "NatsUnavailable",
            Self::PathConflict => sluice_api::PATH_CONFLICT,
            Self::TriggerSubjectOutOfScope => sluice_api::TRIGGER_SUBJECT_OUT_OF_SCOPE,
            Self::PlacementConflict => "PlacementConflict",
            Self::PlacementFailed => "PlacementFailed",
            Self::RuntimeSecretMissing => "RuntimeSecretMissing",
            Self::ScaledUp => "ScaledUp",
            Self::ScaledToZero => "ScaledToZero",
            Self::PoolNotManaged => "PoolNotManaged",
            Self::Module(reason) | Self::ApiKeys(reason) => reason,
        }
    }
}

impl Reason {
    /// Whether it names work under way that ends by itself, not something
    /// for a person to fix: reported as a Normal Event, not a Warning.
    pub fn in_progress(self) -> bool {
        matches!(self, Self::CompilingAhead)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition as a reconcile decides it, before its transition time is
/// known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: Status,
    pub reason: Reason,
    pub message: String,
}

impl Observed {
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
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
                part.reason,
                part.message.clone(),
            );
        }
    }
    Observed::new(
        READY,
        Status::True,
        Reason::Ready,
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
                reason: o.reason.to_string(),
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

    fn module(status: Status, reason: Reason) -> Observed {
        Observed::new(MODULE_READY, status, reason, format!("module {reason}"))
    }

    fn queue(status: Status, reason: Reason) -> Observed {
        Observed::new(QUEUE_READY, status, reason, format!("queue {reason}"))
    }

    #[test]
    fn a_reason_displays_as_its_wire_string() {
        let table = [
            (Reason::Ready, "Ready"),
            (Reason::Resolved, "Resolved"),
            (Reason::Registered, "Registered"),
            (Reason::InvalidSpec, "InvalidSpec"),
            (Reason::WaitingForModule, "WaitingForModule"),
            (Reason::CompilingAhead, "CompilingAhead"),
            (Reason::NatsUnavailable, "NatsUnavailable"),
            (Reason::PathConflict, "PathConflict"),
            (Reason::TriggerSubjectOutOfScope, "TriggerSubjectOutOfScope"),
            (Reason::PlacementConflict, "PlacementConflict"),
            (Reason::PlacementFailed, "PlacementFailed"),
            (Reason::RuntimeSecretMissing, "RuntimeSecretMissing"),
            (Reason::ScaledUp, "ScaledUp"),
            (Reason::ScaledToZero, "ScaledToZero"),
            (Reason::PoolNotManaged, "PoolNotManaged"),
            (Reason::Module("ConfigMapNotFound"), "ConfigMapNotFound"),
            (
                Reason::ApiKeys("ApiKeySecretNotFound"),
                "ApiKeySecretNotFound",
            ),
        ];
        for (reason, wire) in table {
            assert_eq!(reason.to_string(), wire);
        }
    }

    #[test]
    fn ready_summarises_the_first_condition_that_is_not_true() {
        let cases = [
            (
                module(Status::True, Reason::Resolved),
                queue(Status::True, Reason::Registered),
                Status::True,
                "Ready",
            ),
            (
                module(Status::False, Reason::Module("ConfigMapNotFound")),
                queue(Status::Unknown, Reason::WaitingForModule),
                Status::False,
                "ConfigMapNotFound",
            ),
            (
                module(Status::True, Reason::Resolved),
                queue(Status::False, Reason::NatsUnavailable),
                Status::False,
                "NatsUnavailable",
            ),
            (
                module(Status::Unknown, Reason::Module("Resolving")),
                queue(Status::False, Reason::NatsUnavailable),
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
            &[module(Status::False, Reason::Module("ConfigMapNotFound"))],
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
            &[module(
                Status::False,
                Reason::Module("ConfigMapKeyNotFound"),
            )],
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
            &[module(Status::True, Reason::Resolved)],
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
            &[module(Status::True, Reason::Resolved)],
            None,
            "t",
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1], active);
        assert!(!is_ready(&merged));
        let ready = merge(
            &merged,
            &[ready(
                &module(Status::True, Reason::Resolved),
                &queue(Status::True, Reason::Registered),
            )],
            None,
            "t",
        );
        assert!(is_ready(&ready));
    }
}
