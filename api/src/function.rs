//! The `Function` custom resource (`sluice.dev/v1alpha1`, short name `fn`).
//!
//! Every field documents its default; the same defaults apply whether the
//! manifest is read by the local mode or admitted by the Kubernetes API
//! server (the generated CRD carries them as schema defaults).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::hash::{Hash as _, Hasher as _};

use crate::InvocationId;
use crate::auth::Auth;
use crate::quantity::{ByteSize, Duration};

/// API group of the `Function` resource.
pub const GROUP: &str = "sluice.dev";
/// API version of the `Function` resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";
/// `kind` as written in manifests.
pub const KIND: &str = "Function";

/// Desired state of a function: where its component comes from, how it is
/// triggered, and the limits it runs under.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
// Each printcolumn repeats `type_ = …`, which the lint mistakes for a
// duplicated attribute.
#[cfg_attr(feature = "crd", allow(clippy::duplicated_attributes))]
#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "sluice.dev",
        version = "v1alpha1",
        kind = "Function",
        namespaced,
        shortname = "fn",
        status = "FunctionStatus",
        scale(
            spec_replicas_path = ".spec.replicas",
            status_replicas_path = ".status.replicas",
            label_selector_path = ".status.selector"
        ),
        printcolumn(
            name = "Ready",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Ready\")].status"
        ),
        printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
        printcolumn(name = "Queue", type_ = "integer", json_path = ".status.queueDepth"),
        printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionSpec {
    /// Where the WebAssembly component comes from. Exactly one source.
    pub module: ModuleSource,
    /// How the function is invoked besides its default route
    /// `/fn/<namespace>/<name>/`. Default: no extra triggers.
    #[serde(default)]
    pub triggers: Triggers,
    /// Longest an attempt may run before it fails as a timeout. Default: `30s`.
    #[serde(default = "defaults::timeout")]
    pub timeout: Duration,
    /// In-flight invocations per replica. Default: `64`.
    #[serde(default = "defaults::concurrency")]
    #[schemars(range(min = 1, max = MAX_CONCURRENCY))]
    pub concurrency: u32,
    /// Retries for asynchronous and event invocations.
    /// Default: 5 attempts, backoff from 1s doubling up to 1m.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Where exhausted or poison invocations go.
    /// Default: subject `sluice.dlq.<namespace>.<name>`.
    #[serde(default)]
    pub dead_letter: DeadLetterPolicy,
    /// Where the final record of each asynchronous invocation is delivered,
    /// as a CloudEvent, once: `onSuccess` and `onFailure`, each a subject
    /// under `sluice.dest.<namespace>.` or another function of the
    /// namespace. Default: none.
    #[serde(default, skip_serializing_if = "Destinations::is_empty")]
    pub destinations: Destinations,
    /// Queue-depth autoscaling. Default: 0 to 20 replicas, 16 queued per replica.
    #[serde(default)]
    pub scaling: Scaling,
    /// Priority classes of its invocations (`Sluice-Priority`): the class
    /// of one that names none, and the highest a caller may ask for.
    /// Default: `normal` and `normal`.
    #[serde(default)]
    pub priority: crate::priority::PrioritySpec,
    /// Resource limits of each invocation. Default: 64Mi of memory.
    #[serde(default)]
    pub limits: Limits,
    /// Environment variables the component sees. Default: none.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Origins (`scheme://host[:port]`) the component may call over
    /// outbound HTTP. Default: none; every outbound request is refused.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Who may invoke the function over HTTP, and read its async results
    /// and dead letters: `public: true`, or `apiKeys` (a Secret's values)
    /// and/or `jwt`. Default: unset, which is public on a gateway without
    /// `--auth-required` (local mode) and refused (403) on one with it (the
    /// Helm chart's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Whether the function shares the runtime pool or gets its own
    /// Deployment. Default: `pool`.
    #[serde(default)]
    pub placement: Placement,
    /// Replicas pinned by hand (`kubectl scale fn/NAME --replicas=N` sets
    /// it): autoscaling is off for the function while it is set. Default:
    /// unset (autoscaled within `scaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_REPLICAS))]
    pub replicas: Option<u32>,
}

/// The source of a function's component. Exactly one of `oci`, `url`,
/// `configMap` and `file` is set; `url` requires `sha256`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.oci), has(self.url), has(self.configMap), has(self.file)].exists_one(x, x)",
        "message": "exactly one of oci, url, configMap or file must be set"
    },
    {
        "rule": "!has(self.url) || has(self.sha256)",
        "message": "url requires sha256"
    },
    {
        "rule": "!has(self.pullSecret) || has(self.oci)",
        "message": "pullSecret applies to oci only"
    }
]))]
pub struct ModuleSource {
    /// OCI artifact reference holding the component, by tag or digest,
    /// e.g. `ghcr.io/acme/hello:1.0.0` (the CNCF Wasm OCI artifact layout:
    /// config `application/vnd.wasm.config.v0+json`, one `application/wasm`
    /// layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub oci: Option<String>,
    /// With `oci`: a Secret in the function's namespace of type
    /// `kubernetes.io/dockerconfigjson` (as for `imagePullSecrets`) holding
    /// the registry's credentials. Default: pull anonymously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
    /// HTTP(S) URL of the component; requires `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Hex SHA-256 digest the downloaded or read component must match.
    /// Required with `url`, optional otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// A key of a ConfigMap in the function's namespace (binaryData), for
    /// small components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKey>,
    /// A path on the local disk, relative to the manifest. Local mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Which of the module sources a spec uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    Oci,
    Url,
    ConfigMap,
    File,
}

impl ModuleSource {
    /// The one source this module names, or an error naming the fields.
    pub fn kind(&self) -> Result<ModuleKind, SpecError> {
        let set: Vec<ModuleKind> = [
            self.oci.as_ref().map(|_| ModuleKind::Oci),
            self.url.as_ref().map(|_| ModuleKind::Url),
            self.config_map.as_ref().map(|_| ModuleKind::ConfigMap),
            self.file.as_ref().map(|_| ModuleKind::File),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [ModuleKind::Url] if self.sha256.is_none() => Err(SpecError::new(
                "spec.module.sha256",
                "is required with spec.module.url",
            )),
            [kind] if *kind != ModuleKind::Oci && self.pull_secret.is_some() => Err(
                SpecError::new("spec.module.pullSecret", "applies to spec.module.oci only"),
            ),
            [kind] => Ok(*kind),
            [] => Err(SpecError::new(
                "spec.module",
                "names no source: set one of oci, url, configMap or file",
            )),
            _ => Err(SpecError::new(
                "spec.module",
                "names more than one source: set exactly one of oci, url, configMap or file",
            )),
        }
    }
}

/// A key in a ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapKey {
    /// ConfigMap name, in the function's namespace.
    pub name: String,
    /// Key under `binaryData` (or `data`) holding the component.
    pub key: String,
}

/// Extra ways to invoke a function.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Triggers {
    /// An extra HTTP route. Default: none (the default route always exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTrigger>,
    /// NATS subjects whose messages become CloudEvent invocations, at most
    /// [`MAX_NATS_TRIGGERS`]. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // The bound also keeps the CEL rules' estimated cost low.
    #[schemars(length(max = MAX_NATS_TRIGGERS))]
    pub nats: Vec<NatsTrigger>,
    /// Cron schedules, each tick an asynchronous CloudEvent invocation,
    /// queued also while the function runs no replica; at most
    /// [`MAX_SCHEDULES`]. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SCHEDULES))]
    pub schedule: Vec<ScheduleTrigger>,
}

/// Most schedules of a function.
pub const MAX_SCHEDULES: u32 = 16;

/// A cron schedule that invokes the function.
///
/// Each tick is queued once, however many gateways run, as a CloudEvents
/// binary-mode `POST` (`ce-type: dev.sluice.schedule.<name>`, `ce-time`
/// the tick). A tick is fired up to a minute late (a gateway that was
/// suspended); ticks missed for longer (every gateway down) are skipped,
/// never run late. The CRD checks the expression's shape, its CEL rules
/// naming the field and what it takes; the gateway and operator parse it
/// in full, and the operator reports a bad one as `Ready=False`, reason
/// `InvalidSpec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.cron.matches('^\\\\s*(@[A-Za-z]+|[0-9A-Za-z*/,?#-]+(\\\\s+[0-9A-Za-z*/,?#-]+){4,5})\\\\s*$')",
        "message": "cron must be five space-separated fields (minute hour day-of-month month day-of-week, e.g. */5 * * * *), six with a leading seconds field, or a nickname such as @hourly",
        "fieldPath": ".cron",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!has(self.timeZone) || self.timeZone.matches('^[A-Za-z0-9_+/-]+$')",
        "message": "timeZone must be an IANA time zone name such as UTC or Europe/Paris",
        "fieldPath": ".timeZone",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct ScheduleTrigger {
    /// Names the schedule in the event's `ce-type` and in the id of each
    /// tick's invocation: lowercase letters, digits and `-`. Default: the
    /// schedule's position in the list (`0`, `1`, …), which changes when
    /// the list is reordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: Option<String>,
    /// Standard five-field cron (`minute hour day-of-month month
    /// day-of-week`, e.g. `*/5 * * * *`), or six fields whose first is
    /// the second (`*/10 * * * * *`); names (`MON`, `JAN`) and nicknames
    /// (`@hourly`, `@daily`, …) are accepted. No year field.
    #[schemars(length(min = 1, max = 256))]
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. `Europe/Paris`
    /// (daylight-saving changes included). Default: `UTC`.
    #[serde(default = "defaults::time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// Path (and query) the request is sent to, starting with `/`.
    /// Default: `/`.
    #[serde(default = "defaults::schedule_path")]
    #[schemars(length(max = 1024), regex(pattern = "^/[^\\s]*$"))]
    pub path: String,
    /// Request body (text). Default: empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    /// `Content-Type` of the body. Default: none sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// An extra HTTP route served by the gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.path != '/' && !['/fn', '/async/fn', '/invocations', '/dead-letters'].exists(r, self.path == r || self.path.startsWith(r + '/'))",
        "message": "path may be neither / nor under the gateway's own /fn, /async/fn, /invocations and /dead-letters"
    }
]))]
pub struct HttpTrigger {
    /// Path prefix, starting with `/`, e.g. `/hello`. Requests under it
    /// reach the function with the prefix stripped.
    // The length bound also keeps the CEL rule's estimated cost low.
    #[schemars(
        regex(pattern = "^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"),
        length(max = 1024)
    )]
    pub path: String,
}

impl HttpTrigger {
    /// The route this trigger claims: the path without trailing slashes
    /// (`/x/` and `/x` are one route).
    pub fn route(&self) -> &str {
        self.path.trim_end_matches('/')
    }
}

/// The order in which claims on one custom path are honoured, so that
/// every gateway and the operator agree on the owner: the function created
/// first keeps the path; equal times (and entries without a creation time,
/// which come after every dated one) fall back to `namespace/name` order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimOrder {
    undated: bool,
    /// RFC 3339 in UTC as Kubernetes writes `creationTimestamp`
    /// (`2026-12-06T07:05:12Z`), which sorts as text.
    created: Option<String>,
    function: crate::names::FunctionRef,
}

impl ClaimOrder {
    /// The claim of `function`, created at `created` (RFC 3339 UTC) if
    /// known.
    pub fn new(function: crate::names::FunctionRef, created: Option<String>) -> Self {
        Self {
            undated: created.is_none(),
            created,
            function,
        }
    }

    /// The claimant.
    pub fn function(&self) -> &crate::names::FunctionRef {
        &self.function
    }
}

/// Condition reason of a Function whose custom path an earlier Function
/// owns.
pub const PATH_CONFLICT: &str = "PathConflict";

/// Paths the gateway serves itself; no custom route may sit on or under
/// them.
pub const RESERVED_PATHS: [&str; 4] = ["/fn", "/async/fn", "/invocations", "/dead-letters"];

/// Longest `timeout`, backoff and scaling delay: a day is past any sane
/// value, and keeps deadlines and NATS durations (nanoseconds in an i64)
/// far from overflowing.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Longest trigger subject, in bytes.
pub const MAX_SUBJECT_LEN: u32 = 256;
/// Most NATS triggers of a function.
pub const MAX_NATS_TRIGGERS: u32 = 64;
/// Most in-flight invocations per replica.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// Most replicas of a function.
pub const MAX_REPLICAS: u32 = 1_000;

/// A NATS subject whose messages invoke the function.
///
/// Subjects that belong to NATS or to Sluice are refused
/// ([`reserved_trigger_subject`]), so that a Function cannot read other
/// functions' replies, records or queues: each CEL rule here is one of
/// [`RESERVED_TRIGGER_RULES`], kept equal by a test.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!self.subject.startsWith('_INBOX')",
        "message": "subject may not start with _INBOX (reserved-inbox rule: replies to other functions' requests travel there)"
    },
    {
        "rule": "!self.subject.startsWith('$')",
        "message": "subject may not start with $ (reserved-system rule: JetStream, KV and the server's own subjects)"
    },
    {
        "rule": "self.subject != 'sluice' && !self.subject.startsWith('sluice.')",
        "message": "subject may not be under sluice. (reserved-sluice rule: every function's queue and dead letters)"
    },
    {
        "rule": "!self.subject.startsWith('*') && !self.subject.startsWith('>')",
        "message": "subject must start with a literal token (leading-wildcard rule: a leading * or > also matches _INBOX, $ and sluice. subjects)"
    }
]))]
pub struct NatsTrigger {
    /// Subject, e.g. `orders.created`: dot-separated tokens, `*` and a
    /// final `>` as wildcards after a literal first token. Neither
    /// `_INBOX…`, `$…` nor `sluice.…`, and no leading wildcard.
    // The length bound also keeps the CEL rules' estimated cost low.
    #[schemars(
        length(min = 1, max = MAX_SUBJECT_LEN),
        regex(pattern = "^[^\\s.]+(\\.[^\\s.]+)*$")
    )]
    pub subject: String,
}

/// The rules a trigger subject must keep, as `(name, what it refuses)`;
/// the name appears in every refusal, in the CRD's CEL messages as in
/// [`FunctionSpec::validate`].
pub const RESERVED_TRIGGER_RULES: [(&str, &str); 4] = [
    (
        "reserved-inbox",
        "may not start with _INBOX: replies to other functions' requests travel there",
    ),
    (
        "reserved-system",
        "may not start with $: JetStream, KV and the server's own subjects",
    ),
    (
        "reserved-sluice",
        "may not be under sluice.: every function's queue and dead letters",
    ),
    (
        "leading-wildcard",
        "must start with a literal token: a leading * or > also matches _INBOX, $ and sluice. subjects",
    ),
];

/// The rule of [`RESERVED_TRIGGER_RULES`] that `subject` breaks, if any,
/// as `(name, what it refuses)`.
pub fn reserved_trigger_subject(subject: &str) -> Option<(&'static str, &'static str)> {
    let first = subject.split('.').next().unwrap_or_default();
    let broken = if first.starts_with("_INBOX") {
        0
    } else if first.starts_with('$') {
        1
    } else if first == "sluice" {
        2
    } else if first.starts_with('*') || first.starts_with('>') {
        3
    } else {
        return None;
    };
    Some(RESERVED_TRIGGER_RULES[broken])
}

/// Whether `subject` is a well-formed NATS subject to subscribe to: tokens
/// separated by single dots, none empty, no whitespace, `>` only as the
/// last token.
fn is_subscribable_subject(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.iter().enumerate().all(|(i, token)| {
        !token.is_empty()
            && !token.chars().any(char::is_whitespace)
            && (!token.contains('>') || (*token == ">" && i + 1 == tokens.len()))
    })
}

/// An optional rule for shared clusters: every trigger subject of a
/// function in namespace `ns` must start with a prefix made from `ns`
/// (the gateway's and operator's `--trigger-subject-prefix`, the chart's
/// `triggerSubjectPrefix`). Default: none, any unreserved subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerScope {
    template: String,
}

/// What `{namespace}` stands for in a [`TriggerScope`] template.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// A [`TriggerScope`] template that cannot scope anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "trigger subject prefix {0:?} must contain {{namespace}} and end with '.', e.g. \"{{namespace}}.\" or \"events.{{namespace}}.\""
)]
pub struct BadTriggerScope(String);

impl TriggerScope {
    /// A scope from a template such as `{namespace}.`: it must name the
    /// namespace (or it would not separate tenants) and end with a dot (or
    /// `shop` would own `shopping.…`).
    pub fn new(template: &str) -> Result<Self, BadTriggerScope> {
        if template.contains(NAMESPACE_PLACEHOLDER)
            && template.ends_with('.')
            && !template.starts_with(['*', '>', '$', '_'])
        {
            Ok(Self {
                template: template.to_owned(),
            })
        } else {
            Err(BadTriggerScope(template.to_owned()))
        }
    }

    /// The prefix every trigger subject of `namespace` must start with.
    pub fn prefix(&self, namespace: &str) -> String {
        self.template.replace(NAMESPACE_PLACEHOLDER, namespace)
    }

    /// Refuses the first trigger subject of `function` outside its
    /// namespace's prefix, naming it and the prefix. The reason word for
    /// a condition is [`TRIGGER_SUBJECT_OUT_OF_SCOPE`].
    pub fn check(
        &self,
        function: &crate::names::FunctionRef,
        spec: &FunctionSpec,
    ) -> Result<(), SpecError> {
        let prefix = self.prefix(&function.namespace);
        for (i, trigger) in spec.triggers.nats.iter().enumerate() {
            if !trigger.subject.starts_with(&prefix) {
                return Err(SpecError::new(
                    format!("spec.triggers.nats[{i}].subject"),
                    format!(
                        "{:?} is outside the namespace's scope: on this cluster, trigger subjects of namespace {} must start with {prefix:?}",
                        trigger.subject, function.namespace
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Condition reason of a Function whose trigger breaks the
/// [`TriggerScope`].
pub const TRIGGER_SUBJECT_OUT_OF_SCOPE: &str = "TriggerSubjectOutOfScope";

/// Retries for asynchronous and event invocations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Default: `5`.
    #[serde(default = "defaults::max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Delay before each retry. Default: from `1s`, doubling, at most `1m`;
    /// each delay is cut by up to a quarter at random, so that invocations
    /// that failed together do not retry together.
    #[serde(default)]
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: defaults::max_attempts(),
            backoff: Backoff::default(),
        }
    }
}

impl RetryPolicy {
    /// Delay before the attempt after `failed_attempt` (1-based) of
    /// invocation `id`, or `None` when no attempt is left: the backoff
    /// ([`Self::backoff_after`]) shortened by up to a quarter. The cut is
    /// drawn from the id and the attempt, so invocations that failed
    /// together (a dependency down) do not all retry together, and asking
    /// again for the same attempt gives the same delay.
    pub fn delay_after(
        &self,
        failed_attempt: u32,
        id: &InvocationId,
    ) -> Option<std::time::Duration> {
        let backoff = self.backoff_after(failed_attempt)?;
        let mut hasher = std::hash::DefaultHasher::new();
        (id, failed_attempt).hash(&mut hasher);
        let cut = (hasher.finish() % 1024) as f64 / 1024.0 * 0.25;
        Some(backoff.mul_f64(1.0 - cut))
    }

    /// The backoff before the attempt after `failed_attempt`, before
    /// jitter: doubling from `initial` up to `max`.
    pub fn backoff_after(&self, failed_attempt: u32) -> Option<std::time::Duration> {
        if failed_attempt >= self.max_attempts {
            return None;
        }
        Some(crate::backoff::doubling(
            self.backoff.initial.0,
            self.backoff.max.0,
            failed_attempt,
        ))
    }
}

/// Exponential backoff between retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    /// First delay. Default: `1s`.
    #[serde(default = "defaults::backoff_initial")]
    pub initial: Duration,
    /// Largest delay. Default: `1m`.
    #[serde(default = "defaults::backoff_max")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: defaults::backoff_initial(),
            max: defaults::backoff_max(),
        }
    }
}

/// Where dead letters go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterPolicy {
    /// NATS subject. Default: `sluice.dlq.<namespace>.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Where a function's final records go (see `crate::destination`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destinations {
    /// Where a record that ended `succeeded` goes. Default: nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Destination>,
    /// Where a record that ended `failed`, `dead_lettered` or `expired`
    /// goes (a `cancelled` one goes nowhere). Default: nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Destination>,
}

impl Destinations {
    /// Whether no destination is set.
    pub fn is_empty(&self) -> bool {
        self.on_success.is_none() && self.on_failure.is_none()
    }
}

/// One destination: exactly one of `subject` and `function`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.subject) != has(self.function)",
        "message": "exactly one of subject or function must be set"
    },
    {
        "rule": "!has(self.subject) || self.subject.startsWith('sluice.dest.')",
        "message": "subject must be under sluice.dest.<namespace>."
    }
]))]
pub struct Destination {
    /// A NATS subject under `sluice.dest.<namespace>.` (literal tokens of
    /// letters, digits, `-` and `_`; no wildcards). NATS mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_SUBJECT_LEN))]
    pub subject: Option<String>,
    /// The name of another function of the same namespace, invoked
    /// asynchronously with the record as its body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub function: Option<String>,
}

/// Queue-depth autoscaling bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scaling {
    /// Fewest replicas. Default: `0` (scale to zero).
    #[serde(default)]
    pub min_replicas: u32,
    /// Most replicas. Default: `20`.
    #[serde(default = "defaults::max_replicas")]
    #[schemars(range(max = MAX_REPLICAS))]
    pub max_replicas: u32,
    /// Queued invocations one replica is sized for. Default: `16`.
    #[serde(default = "defaults::target_queue_depth")]
    #[schemars(range(min = 1))]
    pub target_queue_depth: u32,
    /// How long demand must stay lower before scaling down. Default: `30s`.
    #[serde(default = "defaults::scale_down_delay")]
    pub scale_down_delay: Duration,
    /// How long the queue must stay empty before scaling to zero. Default: `60s`.
    #[serde(default = "defaults::scale_to_zero_after")]
    pub scale_to_zero_after: Duration,
    /// Its share of a runtime shared with its namespace's other functions
    /// when they wait for instances or memory together (1 to 100; a
    /// weight-2 function gets twice the instances of a weight-1 one).
    /// Namespaces share a runtime equally whatever their functions'
    /// weights ([`crate::share`]). Default: `1`.
    #[serde(default = "defaults::weight")]
    #[schemars(range(min = 1, max = MAX_WEIGHT))]
    pub weight: u32,
}

/// Largest `spec.scaling.weight`.
pub const MAX_WEIGHT: u32 = 100;

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: defaults::max_replicas(),
            target_queue_depth: defaults::target_queue_depth(),
            scale_down_delay: defaults::scale_down_delay(),
            scale_to_zero_after: defaults::scale_to_zero_after(),
            weight: defaults::weight(),
        }
    }
}

/// Per-invocation resource limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Linear memory an instance may hold. Default: `64Mi`.
    #[serde(default = "defaults::memory")]
    pub memory: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: defaults::memory(),
        }
    }
}

/// One environment variable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Value. Default: empty.
    #[serde(default)]
    pub value: String,
}

/// Where a function's instances run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Placement {
    /// The shared runtime pool (default).
    #[default]
    Pool,
    /// A Deployment of its own.
    Dedicated,
}

/// Observed state of a function, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `ModuleReady`, `QueueReady` and `Active`, one of each type
    /// (a map list keyed by `type`, so server-side apply merges them).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `sha256:<hex>` of the resolved component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_digest: Option<String>,
    /// URL of the function's default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Replicas running now.
    #[serde(default)]
    pub replicas: u32,
    /// Replicas the autoscaler asks for.
    #[serde(default)]
    pub desired_replicas: u32,
    /// Invocations queued or in flight.
    #[serde(default)]
    pub queue_depth: u64,
    /// Label selector of the function's runtime pods, for the scale
    /// subresource (an HPA or KEDA reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `ModuleReady`, `QueueReady` or `Active`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word for the cause.
    #[serde(default)]
    pub reason: String,
    /// What a person can do about it.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A spec problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct SpecError {
    /// Path of the offending field, e.g. `spec.module`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Whether `subject` is a literal subject under the namespace's own
/// `<prefix><namespace>.` (`sluice.dlq.` for dead letters, `sluice.dest.`
/// for destinations).
fn is_scoped_subject(prefix: &str, subject: &str, namespace: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(namespace))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| {
            rest.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        })
}

impl FunctionSpec {
    /// Where the function's dead letters go: `spec.deadLetter.subject`, or
    /// `sluice.dlq.<namespace>.<name>`.
    pub fn dead_letter_subject(&self, function: &crate::names::FunctionRef) -> String {
        self.dead_letter
            .subject
            .clone()
            .unwrap_or_else(|| function.dead_letter_subject())
    }

    /// Checks what the schema cannot express for `function` (whose
    /// namespace bounds its dead-letter subject); the first problem wins.
    pub fn validate(&self, function: &crate::names::FunctionRef) -> Result<(), SpecError> {
        self.module.kind()?;
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(SpecError::new(
                "spec.concurrency",
                format!("must be from 1 to {MAX_CONCURRENCY}"),
            ));
        }
        if self.replicas.is_some_and(|r| r > MAX_REPLICAS) {
            return Err(SpecError::new(
                "spec.replicas",
                format!("must be at most {MAX_REPLICAS}"),
            ));
        }
        if self.scaling.max_replicas > MAX_REPLICAS {
            return Err(SpecError::new(
                "spec.scaling.maxReplicas",
                format!("must be at most {MAX_REPLICAS}"),
            ));
        }
        for (field, duration) in [
            ("spec.timeout", self.timeout),
            ("spec.retry.backoff.initial", self.retry.backoff.initial),
            ("spec.retry.backoff.max", self.retry.backoff.max),
            ("spec.scaling.scaleDownDelay", self.scaling.scale_down_delay),
            (
                "spec.scaling.scaleToZeroAfter",
                self.scaling.scale_to_zero_after,
            ),
        ] {
            if duration.0 > MAX_DURATION {
                return Err(SpecError::new(
                    field,
                    format!("must be at most {}", Duration(MAX_DURATION)),
                ));
            }
        }
        if !self.priority.is_consistent() {
            return Err(SpecError::new(
                "spec.priority.default",
                format!(
                    "{} is above spec.priority.max ({})",
                    self.priority.default, self.priority.max
                ),
            ));
        }
        if self.timeout.0.is_zero() {
            return Err(SpecError::new("spec.timeout", "must be longer than 0s"));
        }
        if self.retry.max_attempts == 0 {
            return Err(SpecError::new(
                "spec.retry.maxAttempts",
                "must be at least 1",
            ));
        }
        if self.retry.backoff.initial > self.retry.backoff.max {
            return Err(SpecError::new(
                "spec.retry.backoff.initial",
                "must not exceed spec.retry.backoff.max",
            ));
        }
        if self.scaling.min_replicas > self.scaling.max_replicas {
            return Err(SpecError::new(
                "spec.scaling.minReplicas",
                "must not exceed spec.scaling.maxReplicas",
            ));
        }
        if self.scaling.target_queue_depth == 0 {
            return Err(SpecError::new(
                "spec.scaling.targetQueueDepth",
                "must be at least 1",
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&self.scaling.weight) {
            return Err(SpecError::new(
                "spec.scaling.weight",
                format!("must be 1 to {MAX_WEIGHT}"),
            ));
        }
        if let Some(http) = &self.triggers.http
            && (!http.path.starts_with('/')
                || http.path == "/"
                || RESERVED_PATHS.iter().any(|reserved| {
                    http.path
                        .strip_prefix(reserved)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                }))
        {
            return Err(SpecError::new(
                "spec.triggers.http.path",
                format!(
                    "must start with / and may be neither / nor on or under the gateway's own {}",
                    RESERVED_PATHS.join(", ")
                ),
            ));
        }
        if self.triggers.nats.len() > MAX_NATS_TRIGGERS as usize {
            return Err(SpecError::new(
                "spec.triggers.nats",
                format!("may list at most {MAX_NATS_TRIGGERS} subjects"),
            ));
        }
        for (i, trigger) in self.triggers.nats.iter().enumerate() {
            let field = format!("spec.triggers.nats[{i}].subject");
            if trigger.subject.len() > MAX_SUBJECT_LEN as usize {
                return Err(SpecError::new(
                    field,
                    format!("may be at most {MAX_SUBJECT_LEN} bytes long"),
                ));
            }
            if !is_subscribable_subject(&trigger.subject) {
                return Err(SpecError::new(
                    field,
                    format!(
                        "{:?} is not a NATS subject: dot-separated tokens, none empty, no whitespace, > only as the last token",
                        trigger.subject
                    ),
                ));
            }
            if let Some((rule, problem)) = reserved_trigger_subject(&trigger.subject) {
                return Err(SpecError::new(
                    field,
                    format!("{:?} {problem} ({rule} rule)", trigger.subject),
                ));
            }
        }
        if self.triggers.schedule.len() > MAX_SCHEDULES as usize {
            return Err(SpecError::new(
                "spec.triggers.schedule",
                format!("may list at most {MAX_SCHEDULES} schedules"),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, trigger) in self.triggers.schedule.iter().enumerate() {
            let field = |name: &str| format!("spec.triggers.schedule[{i}].{name}");
            crate::schedule::Schedule::parse(&trigger.cron, &trigger.time_zone)
                .map_err(|e| SpecError::new(field(e.field()), e.to_string()))?;
            if !trigger.path.starts_with('/') || trigger.path.contains(char::is_whitespace) {
                return Err(SpecError::new(
                    field("path"),
                    format!(
                        "{:?} must start with / and hold no whitespace",
                        trigger.path
                    ),
                ));
            }
            if !names.insert(trigger.name_at(i)) {
                return Err(SpecError::new(
                    field("name"),
                    format!(
                        "{:?} names another schedule of the function too: names must be unique",
                        trigger.name_at(i)
                    ),
                ));
            }
        }
        if let Some(subject) = &self.dead_letter.subject
            && !is_scoped_subject(
                crate::names::DEAD_LETTER_SUBJECT_PREFIX,
                subject,
                &function.namespace,
            )
        {
            return Err(SpecError::new(
                "spec.deadLetter.subject",
                format!(
                    "must be a NATS subject under sluice.dlq.{}. (the function's own namespace; letters, digits, '-', '_' and dots; no wildcards), so that the SLUICE_DEAD_LETTERS stream keeps it and no other namespace's dead letters are read or written",
                    function.namespace
                ),
            ));
        }
        for (field, destination) in [
            ("spec.destinations.onSuccess", &self.destinations.on_success),
            ("spec.destinations.onFailure", &self.destinations.on_failure),
        ] {
            let Some(destination) = destination else {
                continue;
            };
            match (&destination.subject, &destination.function) {
                (Some(subject), None) => {
                    if !is_scoped_subject(
                        crate::names::DESTINATION_SUBJECT_PREFIX,
                        subject,
                        &function.namespace,
                    ) {
                        return Err(SpecError::new(
                            format!("{field}.subject"),
                            format!(
                                "{subject:?} must be a NATS subject under sluice.dest.{}. (the function's own namespace; letters, digits, '-', '_' and dots; no wildcards), so that no namespace publishes on another's subjects",
                                function.namespace
                            ),
                        ));
                    }
                }
                (None, Some(name)) => {
                    if !crate::names::is_dns_label(name) {
                        return Err(SpecError::new(
                            format!("{field}.function"),
                            format!(
                                "{name:?} must name a function of the namespace {} (a DNS label)",
                                function.namespace
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(SpecError::new(
                        field,
                        "must set exactly one of subject or function",
                    ));
                }
            }
        }
        for (i, host) in self.allowed_outbound_hosts.iter().enumerate() {
            if !(host.starts_with("http://") || host.starts_with("https://")) {
                return Err(SpecError::new(
                    format!("spec.allowedOutboundHosts[{i}]"),
                    format!("{host:?} must be an origin like https://api.example.com"),
                ));
            }
        }
        Ok(())
    }
}

mod defaults {
    use super::{ByteSize, Duration};

    pub fn weight() -> u32 {
        1
    }

    pub fn timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn time_zone() -> String {
        "UTC".into()
    }
    pub fn schedule_path() -> String {
        "/".into()
    }
    pub fn concurrency() -> u32 {
        64
    }
    pub fn max_attempts() -> u32 {
        5
    }
    pub fn backoff_initial() -> Duration {
        Duration::from_secs(1)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_replicas() -> u32 {
        20
    }
    pub fn target_queue_depth() -> u32 {
        16
    }
    pub fn scale_down_delay() -> Duration {
        Duration::from_secs(30)
    }
    pub fn scale_to_zero_after() -> Duration {
        Duration::from_secs(60)
    }
    pub fn memory() -> ByteSize {
        ByteSize::mebibytes(64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function() -> crate::names::FunctionRef {
        "shop/checkout".parse().unwrap()
    }

    fn minimal() -> FunctionSpec {
        serde_json::from_value(serde_json::json!({ "module": { "file": "x.wasm" } })).unwrap()
    }

    #[test]
    fn a_minimal_spec_gets_every_documented_default() {
        let spec = minimal();
        assert_eq!(spec.timeout, Duration::from_secs(30));
        assert_eq!(spec.concurrency, 64);
        assert_eq!(spec.retry.max_attempts, 5);
        assert_eq!(spec.retry.backoff.initial, Duration::from_secs(1));
        assert_eq!(spec.retry.backoff.max, Duration::from_secs(60));
        assert_eq!(spec.scaling.min_replicas, 0);
        assert_eq!(spec.scaling.max_replicas, 20);
        assert_eq!(spec.scaling.target_queue_depth, 16);
        assert_eq!(spec.scaling.scale_down_delay, Duration::from_secs(30));
        assert_eq!(spec.scaling.scale_to_zero_after, Duration::from_secs(60));
        assert_eq!(spec.limits.memory, ByteSize::mebibytes(64));
        assert_eq!(spec.placement, Placement::Pool);
        assert!(spec.env.is_empty() && spec.allowed_outbound_hosts.is_empty());
        spec.validate(&function()).unwrap();
    }

    #[test]
    fn retry_delays_double_up_to_the_max_then_stop() {
        let policy = RetryPolicy {
            max_attempts: 6,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(500),
            },
        };
        let delays: Vec<_> = (1..=6)
            .map(|n| policy.backoff_after(n).map(|d| d.as_millis()))
            .collect();
        assert_eq!(
            delays,
            [Some(100), Some(200), Some(400), Some(500), Some(500), None]
        );
    }

    #[test]
    fn retry_delays_are_cut_by_up_to_a_quarter_depending_on_the_invocation() {
        let policy = RetryPolicy {
            max_attempts: 3,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(10),
            },
        };
        let ids: Vec<_> = (0..200).map(|_| InvocationId::random()).collect();
        let first: Vec<_> = ids
            .iter()
            .map(|id| policy.delay_after(1, id).unwrap())
            .collect();
        for (id, delay) in ids.iter().zip(&first) {
            assert!(
                (std::time::Duration::from_millis(750)..=std::time::Duration::from_secs(1))
                    .contains(delay),
                "{delay:?}"
            );
            assert_eq!(policy.delay_after(1, id), Some(*delay), "stable");
            let second = policy.delay_after(2, id).unwrap();
            assert!(second > *delay, "still growing: {delay:?} then {second:?}");
        }
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert!(distinct.len() > 100, "{} distinct delays", distinct.len());
        assert_eq!(policy.delay_after(3, &ids[0]), None);
    }

    #[test]
    fn a_module_must_name_exactly_one_source() {
        let mut spec = minimal();
        spec.module.oci = Some("ghcr.io/a/b:1".into());
        assert_eq!(spec.validate(&function()).unwrap_err().field, "spec.module");
        spec.module = ModuleSource::default();
        assert_eq!(spec.validate(&function()).unwrap_err().field, "spec.module");
        spec.module.url = Some("https://x/y.wasm".into());
        assert_eq!(
            spec.validate(&function()).unwrap_err().field,
            "spec.module.sha256"
        );
        spec.module.sha256 = Some("ab".repeat(32));
        spec.module.pull_secret = Some("registry".into());
        assert_eq!(
            spec.validate(&function()).unwrap_err().field,
            "spec.module.pullSecret"
        );
        spec.module.url = None;
        spec.module.oci = Some("ghcr.io/a/b:1".into());
        assert_eq!(spec.validate(&function()), Ok(()));
    }

    #[test]
    fn the_crds_route_rule_reserves_what_validation_reserves() {
        let schema = serde_json::to_string(&schemars::schema_for!(HttpTrigger)).unwrap();
        for reserved in RESERVED_PATHS {
            assert!(schema.contains(&format!("'{reserved}'")), "{reserved}");
        }
    }

    #[test]
    fn invalid_values_name_their_field() {
        type Mutation = fn(&mut FunctionSpec);
        let cases: [(Mutation, &str); 13] = [
            (|s| s.replicas = Some(1_001), "spec.replicas"),
            (|s| s.concurrency = 0, "spec.concurrency"),
            (|s| s.concurrency = 10_001, "spec.concurrency"),
            (
                |s| s.scaling.max_replicas = 5_000,
                "spec.scaling.maxReplicas",
            ),
            (
                |s| s.timeout = Duration(std::time::Duration::from_secs(u64::MAX)),
                "spec.timeout",
            ),
            (
                |s| s.retry.backoff.max = Duration(std::time::Duration::from_secs(25 * 3600)),
                "spec.retry.backoff.max",
            ),
            (
                |s| {
                    s.triggers.http = Some(HttpTrigger {
                        path: "/invocations".into(),
                    })
                },
                "spec.triggers.http.path",
            ),
            (
                |s| s.dead_letter.subject = Some("orders.failed".into()),
                "spec.deadLetter.subject",
            ),
            (
                |s| s.dead_letter.subject = Some("sluice.dlq.>".into()),
                "spec.deadLetter.subject",
            ),
            (
                |s| s.dead_letter.subject = Some("sluice.dlq.shopping.x".into()),
                "spec.deadLetter.subject",
            ),
            (|s| s.scaling.min_replicas = 50, "spec.scaling.minReplicas"),
            (
                |s| {
                    s.triggers.http = Some(HttpTrigger {
                        path: "/fn/x".into(),
                    })
                },
                "spec.triggers.http.path",
            ),
            (
                |s| s.allowed_outbound_hosts = vec!["api.example.com".into()],
                "spec.allowedOutboundHosts[0]",
            ),
        ];
        for (mutate, field) in cases {
            let mut spec = minimal();
            mutate(&mut spec);
            assert_eq!(spec.validate(&function()).unwrap_err().field, field);
        }
    }

    fn with_trigger(subject: &str) -> FunctionSpec {
        let mut spec = minimal();
        spec.triggers.nats = vec![NatsTrigger {
            subject: subject.into(),
        }];
        spec
    }

    #[test]
    fn bad_schedules_are_refused_naming_the_field() {
        let schedule =
            |name: Option<&str>, cron: &str, time_zone: &str, path: &str| ScheduleTrigger {
                name: name.map(Into::into),
                cron: cron.into(),
                time_zone: time_zone.into(),
                path: path.into(),
                ..ScheduleTrigger::default()
            };
        let good = schedule(None, "*/5 * * * *", "Europe/Paris", "/tick");
        for (schedules, field) in [
            (vec![good.clone()], None),
            (
                vec![good.clone(), schedule(None, "61 * * * *", "UTC", "/")],
                Some("spec.triggers.schedule[1].cron"),
            ),
            (
                vec![schedule(None, "* * * * *", "Mars/Olympus", "/")],
                Some("spec.triggers.schedule[0].timeZone"),
            ),
            (
                vec![schedule(None, "* * * * *", "UTC", "tick")],
                Some("spec.triggers.schedule[0].path"),
            ),
            // The second's default name is its position, 1.
            (
                vec![schedule(Some("1"), "@daily", "UTC", "/"), good.clone()],
                Some("spec.triggers.schedule[1].name"),
            ),
            (
                vec![good; MAX_SCHEDULES as usize + 1],
                Some("spec.triggers.schedule"),
            ),
        ] {
            let mut spec = minimal();
            spec.triggers.schedule = schedules;
            let error = spec.validate(&function()).err();
            assert_eq!(error.as_ref().map(|e| e.field.as_str()), field, "{error:?}");
        }
    }

    #[test]
    fn a_spy_on_sluice_or_server_subjects_is_refused_naming_the_rule() {
        for (subject, rule) in [
            ("_INBOX.>", "reserved-inbox"),
            ("_INBOX.abc.*", "reserved-inbox"),
            ("_INBOX_custom.>", "reserved-inbox"),
            ("$KV.sluice-results.>", "reserved-system"),
            ("$JS.API.>", "reserved-system"),
            ("$SYS.>", "reserved-system"),
            ("sluice.invoke.default.hello", "reserved-sluice"),
            ("sluice.dlq.>", "reserved-sluice"),
            ("sluice", "reserved-sluice"),
            (">", "leading-wildcard"),
            ("*.>", "leading-wildcard"),
            ("*.invoke.>", "leading-wildcard"),
            ("*.sluice-results.*", "leading-wildcard"),
        ] {
            let error = with_trigger(subject).validate(&function()).unwrap_err();
            assert_eq!(error.field, "spec.triggers.nats[0].subject", "{subject}");
            assert!(
                error.problem.contains(&format!("({rule} rule)")),
                "{subject}: {error}"
            );
        }
    }

    #[test]
    fn ordinary_and_wildcard_subjects_stay_allowed() {
        for subject in [
            "orders.created",
            "orders.*",
            "orders.>",
            "shop.eu.*.paid",
            "sluicegate.x",
            "INBOX.x",
        ] {
            assert_eq!(
                with_trigger(subject).validate(&function()),
                Ok(()),
                "{subject}"
            );
        }
    }

    #[test]
    fn malformed_subjects_are_refused() {
        for subject in [
            "orders..created",
            "orders.",
            ".orders",
            "orders created",
            "orders.>.x",
            "a.b>",
        ] {
            let error = with_trigger(subject).validate(&function()).unwrap_err();
            assert!(
                error.problem.contains("is not a NATS subject"),
                "{subject}: {error}"
            );
        }
    }

    #[test]
    fn the_crds_trigger_rules_are_the_rules_validation_names() {
        let schema = serde_json::to_value(schemars::schema_for!(NatsTrigger)).unwrap();
        let rules = schema["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(rules.len(), RESERVED_TRIGGER_RULES.len());
        for (rule, (name, problem)) in rules.iter().zip(RESERVED_TRIGGER_RULES) {
            let message = rule["message"].as_str().unwrap();
            assert!(message.contains(&format!("({name} rule")), "{message}");
            let gist = problem.split(':').next().unwrap();
            assert!(message.contains(gist), "{message} vs {gist}");
        }
    }

    #[test]
    fn dead_letters_stay_in_the_functions_own_namespace() {
        let mut spec = minimal();
        spec.dead_letter.subject = Some("sluice.dlq.default.hello".into());
        let error = spec.validate(&function()).unwrap_err();
        assert!(error.problem.contains("sluice.dlq.shop."), "{error}");
        spec.dead_letter.subject = Some("sluice.dlq.shop.other-fn".into());
        assert_eq!(spec.validate(&function()), Ok(()));
    }

    #[test]
    fn destinations_stay_in_the_functions_own_namespace() {
        let to = |subject: Option<&str>, function: Option<&str>| Destination {
            subject: subject.map(Into::into),
            function: function.map(Into::into),
        };
        for (success, failure, field) in [
            (to(Some("sluice.dest.shop.orders.done"), None), None, None),
            (to(None, Some("ship")), Some(to(None, Some("alert"))), None),
            (
                to(Some("sluice.dest.default.x"), None),
                None,
                Some("spec.destinations.onSuccess.subject"),
            ),
            (
                to(Some("sluice.dest.shop.>"), None),
                None,
                Some("spec.destinations.onSuccess.subject"),
            ),
            (
                to(Some("orders.done"), None),
                None,
                Some("spec.destinations.onSuccess.subject"),
            ),
            (
                to(None, Some("ship")),
                Some(to(None, Some("Not_A_Name"))),
                Some("spec.destinations.onFailure.function"),
            ),
            (
                to(Some("sluice.dest.shop.x"), Some("ship")),
                None,
                Some("spec.destinations.onSuccess"),
            ),
            (to(None, None), None, Some("spec.destinations.onSuccess")),
        ] {
            let mut spec = minimal();
            spec.destinations = Destinations {
                on_success: Some(success),
                on_failure: failure,
            };
            let error = spec.validate(&function()).err();
            assert_eq!(error.as_ref().map(|e| e.field.as_str()), field, "{error:?}");
        }
    }

    #[test]
    fn a_trigger_scope_confines_subjects_to_the_namespace() {
        let scope = TriggerScope::new("{namespace}.").unwrap();
        assert_eq!(
            scope.check(&function(), &with_trigger("shop.orders.>")),
            Ok(())
        );
        for subject in ["orders.created", "shopping.x", "default.orders"] {
            let error = scope
                .check(&function(), &with_trigger(subject))
                .unwrap_err();
            assert_eq!(error.field, "spec.triggers.nats[0].subject");
            assert!(
                error.problem.contains("must start with \"shop.\""),
                "{error}"
            );
        }
        let nested = TriggerScope::new("events.{namespace}.").unwrap();
        assert_eq!(nested.prefix("shop"), "events.shop.");
        for bad in [
            "events.",
            "{namespace}",
            "*.{namespace}.",
            "$X.{namespace}.",
            "",
        ] {
            assert!(TriggerScope::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_earliest_created_claim_comes_first_whatever_the_names() {
        let thief = ClaimOrder::new(
            "tenant-b/a-thief".parse().unwrap(),
            Some("2026-12-06T07:00:00Z".into()),
        );
        let owner = ClaimOrder::new(
            "shop/checkout".parse().unwrap(),
            Some("2026-12-01T00:00:00Z".into()),
        );
        let undated = ClaimOrder::new("a/a".parse().unwrap(), None);
        let mut claims = vec![undated.clone(), thief.clone(), owner.clone()];
        claims.sort();
        assert_eq!(claims, [owner, thief, undated]);
        let twin = ClaimOrder::new(
            "a/twin".parse().unwrap(),
            Some("2026-12-06T07:00:00Z".into()),
        );
        assert!(twin < claims[1], "equal times fall back to names");
    }
}
