//! The committed CRD as the API server sees it: accepted, applied without
//! warnings, and refusing bad Functions at `kubectl apply` with the
//! schema's or the CEL rule's words.

use crate::support::{Sluice, example};

#[test]
fn the_crd_is_accepted_and_every_example_applies_without_a_warning() {
    let sluice = Sluice::start();
    let examples = [
        "hello",
        "echo",
        "misbehave",
        "hello-py",
        "events-py",
        "hello-js",
        "secured-echo",
    ];
    for name in examples {
        let warnings = sluice.apply(&example(name));
        assert!(
            !warnings.to_lowercase().contains("warning"),
            "{name}: {warnings}"
        );
    }
    let names = sluice
        .cluster
        .kubectl_ok(&["get", "fn", "-n", "default", "-o", "name"]);
    assert_eq!(
        names.lines().count(),
        examples.len(),
        "the short name lists them all: {names}"
    );
}

#[test]
fn bad_functions_are_refused_at_apply_time_naming_the_problem() {
    let sluice = Sluice::start();
    let function = |spec: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: bad, namespace: default }}\nspec:\n{spec}"
        )
    };
    let cases = [
        (
            "  module: { configMap: { name: a, key: b } }\n  concurrency: lots\n",
            "spec.concurrency",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  placement: sideways\n",
            "spec.placement",
        ),
        (
            "  module: { configMap: { name: a, key: b }, oci: example.com/a:1 }\n",
            "exactly one of oci, url, configMap or file must be set",
        ),
        (
            "  module: { url: https://example.com/a.wasm }\n",
            "url requires sha256",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  triggers: { http: { path: /invocations/x } }\n",
            "path may be neither",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  auth: {}\n",
            "set either public: true, or apiKeys and/or jwt",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  auth: { public: true, apiKeys: { secretName: k } }\n",
            "set either public: true, or apiKeys and/or jwt",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  auth: { jwt: { issuer: i, audiences: [a] } }\n",
            "set exactly one of jwksUrl or publicKey",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  auth: { apiKey: { secretName: k } }\n",
            "apiKey",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  triggers: { schedule: [ { cron: \"every minute\" } ] }\n",
            "spec.triggers.schedule[0].cron: Invalid value",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  triggers: { schedule: [ { cron: \"* * * *\" } ] }\n",
            "cron must be five space-separated fields",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  triggers: { schedule: [ { cron: \"* * * * *\", timeZone: \"Europe/Paris ; rm\" } ] }\n",
            "spec.triggers.schedule[0].timeZone: Invalid value",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  destinations: { onSuccess: { subject: sluice.dest.default.x, function: b } }\n",
            "exactly one of subject or function must be set",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  destinations: { onFailure: {} }\n",
            "spec.destinations.onFailure: Invalid value",
        ),
        (
            "  module: { configMap: { name: a, key: b } }\n  destinations: { onSuccess: { subject: orders.done } }\n",
            "subject must be under sluice.dest.<namespace>.",
        ),
    ];
    for (spec, expected) in cases {
        let output = sluice.cluster.apply(&function(spec));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted:\n{spec}");
        assert!(stderr.contains(expected), "{spec}\n{stderr}");
    }
}

#[test]
fn a_spy_on_inboxes_results_or_sluice_subjects_is_refused_by_the_crd() {
    let sluice = Sluice::start();
    let spy = |subject: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {{ name: spy, namespace: tenant-b }}\nspec:\n  module: {{ configMap: {{ name: a, key: b }} }}\n  triggers: {{ nats: [ {{ subject: \"{subject}\" }} ] }}\n"
        )
    };
    sluice
        .cluster
        .kubectl_ok(&["create", "namespace", "tenant-b"]);
    for (subject, rule) in [
        ("_INBOX.>", "reserved-inbox rule"),
        ("$KV.sluice-results.>", "reserved-system rule"),
        ("$JS.API.>", "reserved-system rule"),
        (">", "leading-wildcard rule"),
        ("*.invoke.>", "leading-wildcard rule"),
        ("sluice.invoke.default.hello", "reserved-sluice rule"),
        ("sluice.dlq.>", "reserved-sluice rule"),
    ] {
        let output = sluice.cluster.apply(&spy(subject));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted a spy on {subject}");
        assert!(stderr.contains(rule), "{subject}: {stderr}");
    }
    let output = sluice.cluster.apply(&spy("orders.created"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
