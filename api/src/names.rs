//! Names of NATS subjects, streams, consumers and buckets, and the
//! `<namespace>/<name>` reference to a function. One place, so that the
//! gateway, runtime and operator always agree.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::invocation::InvocationId;
use crate::ordering::ORDERING_BUCKETS;
use crate::priority::Lane;

/// Stream holding queued invocations.
pub const INVOCATION_STREAM: &str = "SLUICE_INVOCATIONS";
/// Subjects of the invocation stream.
pub const INVOKE_SUBJECTS: &str = "sluice.invoke.>";
/// What every invocation subject starts with.
pub const INVOKE_SUBJECT_PREFIX: &str = "sluice.invoke.";
/// The token after `sluice.invoke.<ns>.<fn>` that marks an ordering
/// bucket's subject ([`FunctionRef::keyed_subject`]).
const KEYED_TOKEN: &str = "k";
/// The token before a priority lane's name in its subject.
const LANE_TOKEN: &str = "p";
/// Every priority lane's and ordering bucket's subject, of every function
/// (everything but the functions' `normal` subjects).
pub const SIDE_INVOKE_SUBJECTS: &str = "sluice.invoke.*.*.*.*";
/// Stream holding dead letters.
pub const DEAD_LETTER_STREAM: &str = "SLUICE_DEAD_LETTERS";
/// Subjects of the dead-letter stream.
pub const DEAD_LETTER_SUBJECTS: &str = "sluice.dlq.>";
/// What every dead-letter subject starts with, so that the dead-letter
/// stream keeps it.
pub const DEAD_LETTER_SUBJECT_PREFIX: &str = "sluice.dlq.";
/// What every destination subject starts with: a function of namespace
/// `ns` delivers its final records under `sluice.dest.<ns>.` only
/// (`spec.destinations`), so no tenant publishes on another's subjects.
pub const DESTINATION_SUBJECT_PREFIX: &str = "sluice.dest.";
/// What every cancel subject starts with: `DELETE /invocations/<id>`
/// publishes the id on `sluice.cancel.<ns>.<fn>` (core NATS, no stream),
/// and a runtime running it interrupts it.
pub const CANCEL_SUBJECT_PREFIX: &str = "sluice.cancel.";
/// Every cancel subject, as runtimes subscribe to them.
pub const CANCEL_SUBJECTS: &str = "sluice.cancel.>";
/// Stream holding functions' stdout/stderr, one message per attempt
/// (`crate::logs::AttemptLog`) on its function's [`FunctionRef::log_subject`].
pub const LOG_STREAM: &str = "SLUICE_LOGS";
/// Subjects of the log stream.
pub const LOG_SUBJECTS: &str = "sluice.logs.>";
/// What every log subject starts with.
pub const LOG_SUBJECT_PREFIX: &str = "sluice.logs.";
/// What every direct-call subject starts with: a gateway sends a sync
/// invocation as a core NATS request on `sluice.call.<ns>.<fn>` to the
/// function's warm runtimes (one queue group), falling back to the
/// invocation stream when none answers or all are busy.
pub const CALL_SUBJECT_PREFIX: &str = "sluice.call.";
/// Every direct-call subject.
pub const CALL_SUBJECTS: &str = "sluice.call.>";
/// The queue group a function's runtimes take direct calls in: one of
/// them gets each call.
pub const CALL_QUEUE_GROUP: &str = "sluice";
/// What every load-report subject starts with: a runtime serving direct
/// calls of a function reports how many ran at once on
/// `sluice.load.<ns>.<fn>`, since the stream's consumer never sees them
/// and the autoscaler must.
pub const LOAD_SUBJECT_PREFIX: &str = "sluice.load.";
/// Every load-report subject, as the autoscaler subscribes to them.
pub const LOAD_SUBJECTS: &str = "sluice.load.>";
/// KV bucket of async invocation records.
pub const RESULTS_BUCKET: &str = "sluice-results";
/// KV bucket of resolved function specs, keyed `<ns>.<fn>`.
pub const FUNCTIONS_BUCKET: &str = "sluice-functions";
/// Object store of components, keyed `sha256-<hex>`
/// ([`crate::ModuleDigest::object_key`]).
pub const MODULES_BUCKET: &str = "sluice-modules";
/// Object store of components precompiled by runtimes, keyed
/// [`artifact_key`], so a new runtime deserializes what another compiled.
/// Only runtimes write it: they run what it holds.
pub const ARTIFACTS_BUCKET: &str = "sluice-artifacts";

/// The key of `digest`'s component, compiled by an engine whose
/// compatibility hash is `engine`, in [`ARTIFACTS_BUCKET`]:
/// `<engine>.<64 hex digits>`, so a runtime never fetches code another
/// engine built.
pub fn artifact_key(engine: &str, digest: &crate::ModuleDigest) -> String {
    format!("{engine}.{digest}")
}

/// The component an [`artifact_key`] holds compiled, whatever the engine;
/// `None` for any other name.
pub fn artifact_digest(key: &str) -> Option<crate::ModuleDigest> {
    let (engine, digest) = key.split_once('.')?;
    (!engine.is_empty() && !engine.contains('.'))
        .then(|| digest.parse().ok())
        .flatten()
}

/// The subject a record of the results bucket is written on: a record can
/// be published without waiting for the store's answer.
pub fn result_subject(id: &InvocationId) -> String {
    format!("$KV.{RESULTS_BUCKET}.{id}")
}

/// A function's namespace and name, written `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionRef {
    pub namespace: String,
    pub name: String,
}

/// A namespace or name that cannot be used in NATS subjects and URLs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid function reference: expected <namespace>/<name>, each a DNS label (lowercase letters, digits and '-', at most 63)"
)]
pub struct BadFunctionRef(String);

impl BadFunctionRef {
    /// The text that is not a reference.
    pub fn text(&self) -> &str {
        &self.0
    }
}

/// Whether `s` is an RFC 1123 DNS label, as Kubernetes namespaces and
/// Sluice function names must be. Dots are excluded because names become
/// NATS subject tokens.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// One of a function's queues on the invocation stream: a priority lane
/// ([`FunctionRef::lane_subject`]) or an ordering bucket
/// ([`FunctionRef::keyed_subject`]), each a subject with its own consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Queue {
    Lane(Lane),
    Bucket(u16),
}

impl FunctionRef {
    pub fn new(namespace: &str, name: &str) -> Result<Self, BadFunctionRef> {
        if is_dns_label(namespace) && is_dns_label(name) {
            Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        } else {
            Err(BadFunctionRef(format!("{namespace}/{name}")))
        }
    }

    /// `sluice.invoke.<ns>.<fn>`: where the function's invocations queue.
    pub fn invoke_subject(&self) -> String {
        format!("{INVOKE_SUBJECT_PREFIX}{}.{}", self.namespace, self.name)
    }

    /// The function whose invocations queue on `subject`, if any: any of
    /// its lanes' ([`Self::lane_subject`]) or ordering buckets'
    /// ([`Self::keyed_subject`]).
    pub fn from_invoke_subject(subject: &str) -> Option<Self> {
        Self::queue_of_subject(subject).map(|(function, _)| function)
    }

    /// The function and queue whose invocations wait on `subject`, if any.
    pub fn queue_of_subject(subject: &str) -> Option<(Self, Queue)> {
        let rest = subject.strip_prefix(INVOKE_SUBJECT_PREFIX)?;
        let mut tokens = rest.split('.');
        let function = Self::new(tokens.next()?, tokens.next()?).ok()?;
        let queue = match (tokens.next(), tokens.next(), tokens.next()) {
            (None, _, _) => Queue::Lane(Lane::Normal),
            (Some(KEYED_TOKEN), Some(token), None) => {
                let bucket = token.parse::<u16>().ok()?;
                // Only the canonical spelling: `07` is no bucket.
                if bucket >= ORDERING_BUCKETS || bucket.to_string() != token {
                    return None;
                }
                Queue::Bucket(bucket)
            }
            // `normal` has the bare subject only.
            (Some(LANE_TOKEN), Some(token), None) => {
                Queue::Lane(Lane::parse(token).filter(|lane| *lane != Lane::Normal)?)
            }
            _ => return None,
        };
        Some((function, queue))
    }

    /// Where the invocations of `lane` wait: `sluice.invoke.<ns>.<fn>` for
    /// `normal` (the subject from before lanes), else
    /// `sluice.invoke.<ns>.<fn>.p.<lane>` (`sync`, `high` or `low`). Each
    /// lane's subject has the stream's per-subject depth bound to itself.
    pub fn lane_subject(&self, lane: Lane) -> String {
        match lane {
            Lane::Normal => self.invoke_subject(),
            other => format!("{}.{LANE_TOKEN}.{}", self.invoke_subject(), other.as_str()),
        }
    }

    /// Durable consumer of one lane: [`Self::consumer_name`] for `normal`,
    /// else `fn_<ns>_<fn>_p<lane>` (`_` is in no DNS label, so it is no
    /// other function's name).
    pub fn lane_consumer_name(&self, lane: Lane) -> String {
        match lane {
            Lane::Normal => self.consumer_name(),
            other => format!("{}_p{}", self.consumer_name(), other.as_str()),
        }
    }

    /// `sluice.invoke.<ns>.<fn>.k.<bucket>`: where the function's
    /// invocations whose ordering key hashes to `bucket` queue
    /// ([`crate::ordering`]). It overlaps no function's other subjects, as
    /// the work-queue stream requires of its consumers' filters.
    pub fn keyed_subject(&self, bucket: u16) -> String {
        format!("{}.{KEYED_TOKEN}.{bucket}", self.invoke_subject())
    }

    /// The two subjects that hold every queue of the function, for a
    /// subscription or a stream filter: its `normal` lane's and
    /// `sluice.invoke.<ns>.<fn>.*.*` (its other lanes and its ordering
    /// buckets).
    pub fn queue_subjects(&self) -> [String; 2] {
        let normal = self.invoke_subject();
        let side = format!("{normal}.*.*");
        [normal, side]
    }

    /// Durable consumer of one ordering bucket, `fn_<ns>_<fn>_k<bucket>`
    /// (`_` is in no DNS label, so it is no other function's name).
    pub fn keyed_consumer_name(&self, bucket: u16) -> String {
        format!("{}_k{bucket}", self.consumer_name())
    }

    /// `sluice.call.<ns>.<fn>`: where its sync invocations reach a warm
    /// runtime directly.
    pub fn call_subject(&self) -> String {
        format!("{CALL_SUBJECT_PREFIX}{}.{}", self.namespace, self.name)
    }

    /// `sluice.load.<ns>.<fn>`: where its runtimes report direct calls.
    pub fn load_subject(&self) -> String {
        format!("{LOAD_SUBJECT_PREFIX}{}.{}", self.namespace, self.name)
    }

    /// The function whose load is reported on `subject`, if any.
    pub fn from_load_subject(subject: &str) -> Option<Self> {
        Self::from_dotted(subject.strip_prefix(LOAD_SUBJECT_PREFIX)?)
    }

    /// The function whose registry key is `key` (`<ns>.<fn>`), if any.
    pub fn from_registry_key(key: &str) -> Option<Self> {
        Self::from_dotted(key)
    }

    fn from_dotted(s: &str) -> Option<Self> {
        let (namespace, name) = s.split_once('.')?;
        Self::new(namespace, name).ok()
    }

    /// `sluice.dlq.<ns>.<fn>`: the default dead-letter subject.
    pub fn dead_letter_subject(&self) -> String {
        format!(
            "{DEAD_LETTER_SUBJECT_PREFIX}{}.{}",
            self.namespace, self.name
        )
    }

    /// `sluice.cancel.<ns>.<fn>`: where cancelling one of its invocations
    /// is announced to the runtimes.
    pub fn cancel_subject(&self) -> String {
        format!("{CANCEL_SUBJECT_PREFIX}{}.{}", self.namespace, self.name)
    }

    /// `sluice.logs.<ns>.<fn>`: where its attempts' logs are kept, one
    /// subject per function so that the log stream bounds each function's
    /// count of attempts on its own.
    pub fn log_subject(&self) -> String {
        format!("{LOG_SUBJECT_PREFIX}{}.{}", self.namespace, self.name)
    }

    /// `<ns>.<fn>`: the function's key in the registry bucket.
    pub fn registry_key(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// Durable consumer name of the function on the invocation stream.
    pub fn consumer_name(&self) -> String {
        format!("fn_{}", self.unique_token())
    }

    /// Queue group in which every gateway subscribes to a plain trigger
    /// subject for this function: one per function, so that functions
    /// sharing a subject each get every event, and gateways share each
    /// function's.
    pub fn event_queue_group(&self) -> String {
        format!("sluice-events_{}", self.unique_token())
    }

    /// Durable consumer, shared by every gateway, through which this
    /// function's trigger on `subject` reads a subject bound to a stream.
    /// Subjects may hold characters consumer names may not, so a hash of
    /// the subject tells triggers apart.
    pub fn event_consumer_name(&self, subject: &str) -> String {
        let hash = hex::encode(&Sha256::digest(subject.as_bytes())[..6]);
        format!("sluice-events_{}_{hash}", self.unique_token())
    }

    /// `<ns>_<fn>`: distinct for distinct functions (`_` is in no DNS
    /// label, unlike `-`: `team-a/orders` and `team/a-orders`), and valid in
    /// consumer, queue group and stream names.
    pub fn unique_token(&self) -> String {
        format!("{}_{}", self.namespace, self.name)
    }

    /// The default HTTP route prefix, `/fn/<ns>/<fn>`.
    pub fn route_prefix(&self) -> String {
        format!("/fn/{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for FunctionRef {
    type Err = BadFunctionRef;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = s.split_once('/').ok_or_else(|| BadFunctionRef(s.into()))?;
        Self::new(namespace, name)
    }
}

impl TryFrom<String> for FunctionRef {
    type Error = BadFunctionRef;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<FunctionRef> for String {
    fn from(f: FunctionRef) -> Self {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_artifact_key_names_its_component_for_any_engine() {
        let digest = crate::ModuleDigest::of(b"component");
        let key = artifact_key("00ff00ff00ff00ff", &digest);
        assert_eq!(key, format!("00ff00ff00ff00ff.{}", digest.as_str()));
        assert_eq!(artifact_digest(&key), Some(digest.clone()));
        for other in [
            String::new(),
            digest.to_string(),
            format!(".{digest}"),
            format!("a.b.{digest}"),
            format!("engine.sha256-{digest}"),
            format!("engine.{}", &digest.as_str()[1..]),
        ] {
            assert_eq!(artifact_digest(&other), None, "{other:?}");
        }
    }
    use super::*;

    #[test]
    fn functions_whose_names_join_alike_get_distinct_consumers() {
        let a = FunctionRef::new("team-a", "orders").unwrap();
        let b = FunctionRef::new("team", "a-orders").unwrap();
        assert_ne!(a.consumer_name(), b.consumer_name());
        assert_eq!(a.consumer_name(), "fn_team-a_orders");
    }

    #[test]
    fn every_lane_has_its_subject_and_consumer() {
        let f: FunctionRef = "default/hello".parse().unwrap();
        let table = [
            (
                Lane::Sync,
                "sluice.invoke.default.hello.p.sync",
                "fn_default_hello_psync",
            ),
            (
                Lane::High,
                "sluice.invoke.default.hello.p.high",
                "fn_default_hello_phigh",
            ),
            (
                Lane::Normal,
                "sluice.invoke.default.hello",
                "fn_default_hello",
            ),
            (
                Lane::Low,
                "sluice.invoke.default.hello.p.low",
                "fn_default_hello_plow",
            ),
        ];
        for (lane, subject, consumer) in table {
            assert_eq!(f.lane_subject(lane), subject);
            assert_eq!(f.lane_consumer_name(lane), consumer);
            assert_eq!(
                FunctionRef::queue_of_subject(subject),
                Some((f.clone(), Queue::Lane(lane)))
            );
        }
    }

    #[test]
    fn names_follow_the_nats_layout() {
        let f: FunctionRef = "default/hello".parse().unwrap();
        assert_eq!(f.invoke_subject(), "sluice.invoke.default.hello");
        assert_eq!(f.dead_letter_subject(), "sluice.dlq.default.hello");
        assert_eq!(f.cancel_subject(), "sluice.cancel.default.hello");
        assert_eq!(
            FunctionRef::from_invoke_subject(&f.invoke_subject()),
            Some(f.clone())
        );
        assert_eq!(
            FunctionRef::from_invoke_subject("sluice.invoke.a.b.c"),
            None
        );
        assert_eq!(f.keyed_subject(7), "sluice.invoke.default.hello.k.7");
        assert_eq!(
            f.queue_subjects(),
            [
                "sluice.invoke.default.hello",
                "sluice.invoke.default.hello.*.*"
            ]
        );
        assert_eq!(f.keyed_consumer_name(7), "fn_default_hello_k7");
        assert_eq!(
            FunctionRef::queue_of_subject(&f.keyed_subject(7)),
            Some((f.clone(), Queue::Bucket(7)))
        );
        assert_eq!(
            FunctionRef::queue_of_subject(&f.invoke_subject()),
            Some((f.clone(), Queue::Lane(Lane::Normal)))
        );
        assert_eq!(
            FunctionRef::from_invoke_subject(&f.keyed_subject(31)),
            Some(f.clone())
        );
        for not_a_bucket in [
            "k.32", "k.07", "k.x", "k.1.2", "k", "q.1", "p.normal", "p.urgent", "p.high.x", "high",
        ] {
            let subject = format!("{}.{not_a_bucket}", f.invoke_subject());
            assert_eq!(FunctionRef::queue_of_subject(&subject), None, "{subject}");
        }
        assert_eq!(f.call_subject(), "sluice.call.default.hello");
        assert_eq!(
            FunctionRef::from_load_subject(&f.load_subject()),
            Some(f.clone())
        );
        assert_eq!(FunctionRef::from_load_subject("sluice.load.a.b.c"), None);
        assert_eq!(f.registry_key(), "default.hello");
        assert_eq!(
            FunctionRef::from_registry_key("default.hello"),
            Some(f.clone())
        );
        assert_eq!(FunctionRef::from_registry_key("default"), None);
        assert_eq!(f.route_prefix(), "/fn/default/hello");
        assert_eq!(f.event_queue_group(), "sluice-events_default_hello");
        let on_a = f.event_consumer_name("orders.a");
        assert!(on_a.starts_with("sluice-events_default_hello_"), "{on_a}");
        assert_ne!(on_a, f.event_consumer_name("orders.b"));
        let id = InvocationId::random();
        assert_eq!(result_subject(&id), format!("$KV.sluice-results.{id}"));
    }

    #[test]
    fn references_that_would_break_subjects_are_rejected() {
        for bad in [
            "hello", "a.b/c", "a/b.c", "a/*", "A/b", "/b", "a/", "a/-b", "a/b/c",
        ] {
            assert!(bad.parse::<FunctionRef>().is_err(), "{bad}");
        }
    }
}
