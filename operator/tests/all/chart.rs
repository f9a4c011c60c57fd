//! The Helm chart (`charts/sluice/`) with the real `helm` and a real API
//! server: linted, its renderings accepted, its pods admitted under the
//! restricted Pod Security Standard, installed and upgraded without taking
//! back what the autoscaler set, and its RBAC enough for the operator.
//! No kubelet runs, so nothing waits for pods to be ready; the operator,
//! gateway and runtime run as local processes with the flags the chart
//! renders.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_testing::{ControlPlane, NatsServer, repo_root, run_with_stdin as run, succeeded as ok};

use crate::support::monitoring_crds::{PROMETHEUS_RULE_CRD, SERVICE_MONITOR_CRD};
use crate::support::{
    Process, Slot, binary, component, eventually, example, free_port, wait_answer,
};

/// The release name and namespace of the tests; `helm install sluice
/// charts/sluice -n sluice-system` as the README says.
const RELEASE: &str = "sluice";
const NAMESPACE: &str = "sluice-system";

fn chart() -> PathBuf {
    repo_root().join("charts/sluice")
}

/// Every values file under `charts/sluice/ci/`, by name.
fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/sluice/ci")
        .map(|e| e.expect("a ci entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files
}

/// `helm template` of the chart with `args` (values files, `--set`s).
fn template(args: &[&str]) -> String {
    let mut helm = sluice_testing::helm();
    helm.args(["template", RELEASE])
        .arg(chart())
        .args(["-n", NAMESPACE])
        .args(args);
    ok(run(helm, ""), &format!("helm template {}", args.join(" ")))
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// The values the chart is checked with: its defaults, then each file
/// under ci/ (named, with the arguments that pass it).
fn value_sets() -> Vec<(String, Vec<String>)> {
    let mut sets = vec![("defaults".to_owned(), vec![])];
    sets.extend(
        ci_values()
            .iter()
            .map(|f| (path_str(f), vec!["-f".to_owned(), path_str(f)])),
    );
    sets
}

#[test]
fn helm_lint_strict_passes_on_the_defaults_and_every_ci_values_file() {
    for (name, args) in value_sets() {
        let mut helm = sluice_testing::helm();
        helm.args(["lint", "--strict"]).arg(chart()).args(&args);
        let output = ok(run(helm, ""), &format!("helm lint --strict ({name})"));
        assert!(output.contains("0 chart(s) failed"), "{output}");
    }
}

#[test]
fn a_value_of_the_wrong_type_or_an_unknown_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let cases = [
        (
            "gateway:\n  replicas: two\n",
            "/gateway/replicas",
            "want integer",
        ),
        ("nats:\n  mode: sideways\n", "/nats/mode", "must be one of"),
        (
            "operator:\n  autoscaleInterval: soon\n",
            "/operator/autoscaleInterval",
            "soon",
        ),
        (
            "runtime:\n  pool:\n    maxReplica: 3\n",
            "/runtime/pool",
            "maxReplica",
        ),
        ("gatway:\n  replicas: 2\n", "at ''", "gatway"),
        (
            "nats:\n  mode: external\n",
            "/nats/external/url",
            "minLength",
        ),
        (
            "egress:\n  allow: [ \"localhost\" ]\n",
            "/egress/allow/0",
            "does not match pattern",
        ),
        // Credentials in the URL would be copied in plain text into every
        // Deployment that connects.
        (
            "nats:\n  mode: external\n  external:\n    url: nats://u:p@nats:4222\n",
            "/nats/external/url",
            "does not match pattern",
        ),
    ];
    for (i, (values, at, word)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, values).expect("a values file");
        for command in ["lint", "template"] {
            let mut helm = sluice_testing::helm();
            helm.arg(command);
            if command == "lint" {
                helm.arg("--strict");
            } else {
                helm.arg(RELEASE);
            }
            helm.arg(chart()).arg("-f").arg(&file);
            let output = run(helm, "");
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(!output.status.success(), "{command} accepted:\n{values}");
            let said = format!("{stdout}{stderr}");
            assert!(
                said.contains(at) && said.contains(word),
                "helm {command} of\n{values}should name {at} and {word}:\n{said}"
            );
        }
    }
}

#[test]
fn the_egress_lists_reach_the_gateway_the_pool_and_dedicated_runtimes() {
    let flags = |show: &str, sets: &[&str]| {
        let mut args = vec!["--show-only", show];
        for set in sets {
            args.extend(["--set", set]);
        }
        template(&args)
    };
    let sets = [
        "egress.allow={10.20.0.0/16,192.168.7.7}",
        "egress.deny={203.0.113.0/24}",
    ];
    for (show, prefix) in [
        ("templates/gateway.yaml", "--"),
        ("templates/runtime.yaml", "--"),
        ("templates/operator.yaml", "--runtime-"),
    ] {
        let rendered = flags(show, &sets);
        for flag in [
            "egress-allow=10.20.0.0/16",
            "egress-allow=192.168.7.7",
            "egress-deny=203.0.113.0/24",
        ] {
            assert!(
                rendered.contains(&format!("- {prefix}{flag}\n")),
                "{show} lacks {prefix}{flag}:\n{rendered}"
            );
        }
        assert!(!flags(show, &[]).contains("egress-"), "{show} by default");
    }
}

/// The NetworkPolicies of a rendering with `sets`, by name.
fn network_policies(sets: &[&str]) -> Vec<(String, Value)> {
    let mut args = vec![];
    for set in sets {
        args.extend(["--set", set]);
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(&template(&args)).expect("YAML");
    docs.into_iter()
        .filter(|doc| doc["kind"] == "NetworkPolicy")
        .map(|doc| (doc["metadata"]["name"].as_str().unwrap().to_owned(), doc))
        .collect()
}

/// The NATS policy's peers on the client port, as `(namespace selector,
/// pod selector)`; `None` for a peer without a namespace selector (the
/// policy's own namespace).
fn nats_peers(policy: &Value) -> Vec<(Option<Value>, Value)> {
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    let client = rules
        .iter()
        .find(|rule| rule["ports"][0]["port"] == 4222)
        .expect("a rule for port 4222");
    client["from"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|peer| {
            (
                peer.get("namespaceSelector").cloned(),
                peer["podSelector"].clone(),
            )
        })
        .collect()
}

#[test]
fn by_default_nats_admits_only_sluices_parts_and_nothing_else_is_restricted() {
    let runtime_pods = serde_json::json!({
        "matchLabels": { "app.kubernetes.io/name": "sluice-runtime" },
        "matchExpressions": [{ "key": "sluice.dev/function", "operator": "Exists" }],
    });
    let release_pods = |name: &str| {
        serde_json::json!({ "matchLabels": {
            "app.kubernetes.io/name": name, "app.kubernetes.io/instance": RELEASE,
        } })
    };
    let parts: Vec<(Option<Value>, Value)> = ["operator", "gateway", "runtime"]
        .iter()
        .map(|part| (None, release_pods(&format!("sluice-{part}"))))
        .collect();

    // Defaults: the NATS policy alone; its clients are the release's parts
    // (pods of its own namespace, which tenants cannot create) and pods
    // labelled as dedicated runtimes in any namespace.
    let defaults = network_policies(&[]);
    let names: Vec<&str> = defaults.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["sluice-nats"]);
    let nats = &defaults[0].1;
    assert_eq!(nats["spec"]["podSelector"], release_pods("sluice-nats"));
    assert_eq!(nats["spec"]["egress"], serde_json::json!([]));
    assert_eq!(
        nats["spec"]["ingress"].as_array().unwrap().len(),
        1,
        "{nats}"
    );
    let mut expected = parts.clone();
    expected.push((Some(serde_json::json!({})), runtime_pods.clone()));
    assert_eq!(nats_peers(nats), expected);

    // Namespaces are matched on kubernetes.io/metadata.name, which the API
    // server sets: the operator's watchNamespaces, or dedicatedNamespaces.
    let by_name = |namespace: &str| {
        Some(serde_json::json!({ "matchLabels": { "kubernetes.io/metadata.name": namespace } }))
    };
    for (sets, namespaces) in [
        (
            vec!["operator.watchNamespaces={shop,tenant-b}"],
            vec!["shop", "tenant-b"],
        ),
        (
            vec![
                "operator.watchNamespaces={shop,tenant-b}",
                "networkPolicy.dedicatedNamespaces={shop}",
            ],
            vec!["shop"],
        ),
    ] {
        let policies = network_policies(&sets);
        let mut expected = parts.clone();
        expected.extend(
            namespaces
                .iter()
                .map(|namespace| (by_name(namespace), runtime_pods.clone())),
        );
        assert_eq!(nats_peers(&policies[0].1), expected, "{sets:?}");
    }

    // Off: none at all; with an external NATS there is no NATS to guard.
    assert!(network_policies(&["networkPolicy.enabled=false"]).is_empty());
    assert!(
        network_policies(&[
            "nats.mode=external",
            "nats.external.url=nats://nats.example:4222"
        ])
        .is_empty()
    );

    // restrictParts: every part has its policy; the gateway's HTTP port is
    // open to all and its egress holds the JWKS hosts' rule.
    let jwks = "networkPolicy.gatewayEgress[0].to[0].ipBlock.cidr=0.0.0.0/0";
    let restricted = network_policies(&["networkPolicy.restrictParts=true", jwks]);
    let names: Vec<&str> = restricted.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sluice-gateway",
            "sluice-runtime",
            "sluice-operator",
            "sluice-nats"
        ]
    );
    let gateway = &restricted[0].1["spec"];
    assert_eq!(
        gateway["ingress"][0],
        serde_json::json!({ "ports": [{ "port": 8080, "protocol": "TCP" }] }),
        "no `from`: anyone"
    );
    assert!(
        gateway["egress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rule| rule["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"),
        "{gateway}"
    );
}

/// The pod template of the NATS StatefulSet in a rendering.
fn nats_pod_template(rendered: &str) -> String {
    let statefulset = rendered
        .split("\n---")
        .find(|doc| doc.contains("\nkind: StatefulSet"))
        .expect("the NATS StatefulSet");
    let start = statefulset.find("\n  template:").expect("its template");
    let end = statefulset
        .find("\n  volumeClaimTemplates:")
        .expect("its volume claims");
    statefulset[start..end].to_owned()
}

#[test]
fn a_new_chart_version_leaves_the_nats_pod_template_as_it_was() {
    let bumped = tempfile::tempdir().expect("a temporary folder");
    ok(
        Command::new("cp")
            .arg("-r")
            .arg(chart())
            .arg(bumped.path())
            .output()
            .expect("cp"),
        "copying the chart",
    );
    let bumped_chart = bumped.path().join("sluice");
    let manifest = std::fs::read_to_string(bumped_chart.join("Chart.yaml")).expect("Chart.yaml");
    let manifest: String = manifest
        .lines()
        .map(|line| {
            if line.starts_with("version:") {
                "version: 99.0.0".to_owned()
            } else if line.starts_with("appVersion:") {
                "appVersion: \"99.0.0\"".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(manifest.contains("version: 99.0.0"), "{manifest}");
    std::fs::write(bumped_chart.join("Chart.yaml"), manifest).expect("Chart.yaml written");
    let show = ["--show-only", "templates/nats.yaml"];
    let before = template(&show);
    let mut helm = sluice_testing::helm();
    helm.args(["template", RELEASE])
        .arg(&bumped_chart)
        .args(["-n", NAMESPACE])
        .args(show);
    let after = ok(run(helm, ""), "helm template of the bumped chart");
    assert_ne!(before, after, "the objects' own labels carry the version");
    assert_eq!(nats_pod_template(&before), nats_pod_template(&after));
}

#[test]
fn the_operator_owns_the_layout_with_the_charts_values_and_the_file_store_fits_the_volume() {
    let operator = template(&[
        "--show-only",
        "templates/operator.yaml",
        "--set",
        "gateway.asyncDeadline=24h",
        "--set",
        "nats.layout.maxBytes.results=3Gi",
    ]);
    for flag in [
        "--async-deadline=24h",
        "--max-queue-depth=10000",
        "--results-max-bytes=3Gi",
        "--invocations-max-bytes=4Gi",
        "--logs-max-bytes=256Mi",
        "--logs-per-function=1000",
        "--logs-max-age=24h",
        "--stream-replicas=1",
    ] {
        assert!(
            operator.contains(&format!("- {flag}\n")),
            "{flag}:\n{operator}"
        );
    }
    let gateway = template(&["--show-only", "templates/gateway.yaml"]);
    assert!(gateway.contains("- --own-layout=false\n"), "{gateway}");
    let nats = template(&["--show-only", "templates/nats.yaml"]);
    assert!(nats.contains("max_file_store: 9663676416\n"), "{nats}");

    let mut helm = sluice_testing::helm();
    helm.args(["template", RELEASE])
        .arg(chart())
        .args(["--set", "nats.bundled.storage.maxFileStore=10Gi"]);
    let refused = run(helm, "");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("must be below nats.bundled.storage.size"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// `nats.bundled.replicas: 3` (ci/nats-cluster-values.yaml): three
/// servers routed through the headless Service, each with its own
/// server_name, routes authenticated as their own user, spread over
/// nodes, one allowed down at a time; the layout replicated three times.
/// One server (the default) renders no cluster at all.
#[test]
fn three_bundled_servers_form_a_cluster_and_the_layout_follows() {
    let values = path_str(&chart().join("ci/nats-cluster-values.yaml"));
    let show = |template_file: &str| template(&["-f", &values, "--show-only", template_file]);
    let nats = show("templates/nats.yaml");
    for expected in [
        "  replicas: 3\n",
        "server_name: $POD_NAME\n",
        "cluster {\n      name: sluice-nats\n      port: 6222\n",
        "user: sluice-route\n",
        "routes: [$NATS_ROUTE_0, $NATS_ROUTE_1, $NATS_ROUTE_2]\n",
        "podAntiAffinity:\n",
        "containerPort: 6222\n",
    ] {
        assert!(nats.contains(expected), "{expected:?} in:\n{nats}");
    }
    for pod in 0..3 {
        let route = format!(
            "nats://sluice-route:$(NATS_ROUTE_PASSWORD)@sluice-nats-{pod}.sluice-nats-headless.{NAMESPACE}.svc:6222\n"
        );
        assert!(nats.contains(&route), "{route} in:\n{nats}");
    }
    assert!(
        show("templates/nats-auth.yaml").contains("name: sluice-nats-route\n"),
        "the routes' Secret"
    );
    let budget = show("templates/pdb.yaml");
    let nats_budget = budget
        .split("\n---")
        .find(|doc| doc.contains("name: sluice-nats\n"))
        .expect("the NATS PodDisruptionBudget");
    assert!(nats_budget.contains("maxUnavailable: 1\n"), "{nats_budget}");
    assert!(
        show("templates/operator.yaml").contains("- --stream-replicas=3\n"),
        "the layout follows"
    );

    let single = template(&["--show-only", "templates/nats.yaml"]);
    assert!(
        !single.contains("cluster {") && !single.contains("6222") && !single.contains("affinity"),
        "{single}"
    );
}

#[test]
fn the_crd_template_is_the_repositorys_crd_byte_for_byte() {
    let committed = std::fs::read(repo_root().join("crds/function.yaml")).expect("crds/");
    let copy = std::fs::read(chart().join("files/function.yaml")).expect("the chart's copy");
    assert!(
        committed == copy,
        "charts/sluice/files/function.yaml differs from crds/function.yaml: \
         cp crds/function.yaml charts/sluice/files/function.yaml"
    );
    let committed = String::from_utf8(committed).expect("UTF-8");
    // Everything from `spec:` on is rendered as committed; the template
    // adds only labels and the keep annotation to the metadata.
    let spec = &committed[committed.find("\nspec:\n").expect("a spec")..];
    let rendered = template(&["--show-only", "templates/crds.yaml"]);
    assert!(rendered.contains(spec), "{rendered}");
    assert!(
        rendered.contains("helm.sh/resource-policy: keep"),
        "{rendered}"
    );
    let unkept = template(&[
        "--show-only",
        "templates/crds.yaml",
        "--set",
        "crds.keep=false",
    ]);
    assert!(unkept.contains(spec), "{unkept}");
    assert!(!unkept.contains("resource-policy"), "{unkept}");
    let mut helm = sluice_testing::helm();
    helm.args(["template", RELEASE])
        .arg(chart())
        .args(["--set", "crds.install=false"]);
    let without = ok(run(helm, ""), "helm template without the CRD");
    assert!(!without.contains("CustomResourceDefinition"), "{without}");
}

/// A schema node with its `$ref` (to `#/$defs/…`) followed, and the name
/// of the definition it came from.
fn resolve<'a>(schema: &'a Value, node: &'a Value) -> (&'a Value, Option<&'a str>) {
    match node["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/$defs/");
            (&schema["$defs"][name], Some(name))
        }
        None => (node, None),
    }
}

/// How the values table names a value's type.
fn type_name(schema: &Value, node: &Value) -> String {
    let (node, def) = resolve(schema, node);
    if let Some(def) = def {
        return match def {
            "pullPolicy" => enum_name(node),
            "labels" => "map of strings".into(),
            "port" => "port".into(),
            other => other.into(),
        };
    }
    if node.get("enum").is_some() {
        return enum_name(node);
    }
    match node["type"].as_str() {
        Some("array") => format!("list of {}", type_name(schema, &node["items"])),
        Some(other) => other.into(),
        None => "any".into(),
    }
}

fn enum_name(node: &Value) -> String {
    node["enum"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" \\| ")
        })
        .unwrap_or_default()
}

/// The rows of the values table under `path`: a row for every value that
/// is not an object spelled out in the schema; its default from
/// values.yaml, which must hold one.
fn rows(schema: &Value, node: &Value, defaults: &Value, path: &str, out: &mut Vec<String>) {
    let Some(properties) = node["properties"].as_object() else {
        return;
    };
    for (key, child) in properties {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let default = defaults
            .get(key)
            .unwrap_or_else(|| panic!("values.yaml has no default for {here}"));
        if child.get("$ref").is_none() && child["properties"].is_object() {
            rows(schema, child, default, &here, out);
            continue;
        }
        let description = child["description"]
            .as_str()
            .unwrap_or_else(|| panic!("{here} has no description in the schema"));
        let default = match default {
            Value::String(s) if s.is_empty() => "`\"\"`".to_owned(),
            Value::String(s) => format!("`{s}`"),
            other => format!("`{other}`"),
        };
        out.push(format!(
            "| `{here}` | {} | {default} | {description} |",
            type_name(schema, child)
        ));
    }
}

const TABLE_START: &str = "<!-- values table: generated from charts/sluice/values.schema.json and values.yaml; a test keeps it equal -->";
const TABLE_END: &str = "<!-- end of values table -->";

#[test]
fn the_readme_values_table_is_the_schema_with_the_defaults() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("values.schema.json")).expect("the schema"),
    )
    .expect("the schema is JSON");
    let defaults: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let mut table = vec![
        "| value | type | default | what |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    rows(&schema, &schema, &defaults, "", &mut table);
    let expected = format!("{TABLE_START}\n{}\n{TABLE_END}", table.join("\n"));
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let found = readme
        .find(TABLE_START)
        .and_then(|start| {
            let end = readme[start..].find(TABLE_END)? + start + TABLE_END.len();
            Some(&readme[start..end])
        })
        .unwrap_or_default();
    assert!(
        found == expected,
        "README.md's values table differs from the schema; replace it with:\n{expected}"
    );
}

/// A control plane with the namespace of the release, which enforces the
/// restricted Pod Security Standard (and warns of it at apply time).
fn restricted_cluster() -> ControlPlane {
    let cluster = ControlPlane::start();
    cluster.kubectl_ok(&["create", "namespace", NAMESPACE]);
    cluster.kubectl_ok(&[
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    cluster
}

#[test]
fn every_rendering_is_accepted_by_the_api_server_and_restricted_pod_security() {
    let _slot = Slot::take();
    let cluster = restricted_cluster();
    let applied = cluster.apply(SERVICE_MONITOR_CRD);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    established(&cluster, "servicemonitors.monitoring.coreos.com");
    // ci/external-nats-values.yaml watches these.
    for namespace in ["shop", "tenant-b"] {
        cluster.kubectl_ok(&["create", "namespace", namespace]);
    }
    for (name, args) in value_sets() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let rendered = template(&args);
        // Hooks too: `helm template` renders the `helm test` Pod, which the
        // restricted namespace must admit as well.
        assert!(rendered.contains("kind: Pod\n"), "{name}: no test Pod");
        let output = cluster.kubectl_with(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=helm",
                "-f",
                "-",
            ],
            &rendered,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name} refused:\n{stderr}");
        assert!(
            !stderr.contains("PodSecurity") && !stderr.to_lowercase().contains("warning"),
            "{name}: {stderr}"
        );
    }
}

/// Waits until CRD `name` is Established. `kubectl wait` fails at once
/// while the CRD has no conditions yet, so it is asked again.
fn established(cluster: &ControlPlane, name: &str) {
    let crd = format!("crd/{name}");
    let args = ["wait", "--for=condition=Established", &crd, "--timeout=60s"];
    eventually(
        &format!("{name} Established"),
        Duration::from_secs(60),
        || {
            cluster
                .kubectl_with(&args, "")
                .status
                .success()
                .then_some(())
        },
    );
}

/// The number of Pods of a component of the release.
fn pods(cluster: &ControlPlane, component: &str) -> usize {
    let selector =
        format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=sluice-{component}");
    cluster
        .kubectl_ok(&[
            "get", "pods", "-n", NAMESPACE, "-l", &selector, "-o", "name",
        ])
        .lines()
        .count()
}

/// A field of a Deployment of the release, by JSONPath.
fn deployment_field(cluster: &ControlPlane, component: &str, path: &str) -> String {
    cluster.kubectl_ok(&[
        "get",
        "deployment",
        &format!("{RELEASE}-{component}"),
        "-n",
        NAMESPACE,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// The container args of a Deployment of the release, each `--flag=value`
/// of `moved` given its new value (each must be there).
fn chart_args(cluster: &ControlPlane, component: &str, moved: &[(&str, String)]) -> Vec<String> {
    let rendered = deployment_field(
        cluster,
        component,
        "{.spec.template.spec.containers[0].args}",
    );
    let mut args: Vec<String> = serde_json::from_str(&rendered).expect("a Deployment's args");
    for (flag, value) in moved {
        let arg = args
            .iter_mut()
            .find(|a| a.split_once('=').is_some_and(|(f, _)| f == *flag))
            .unwrap_or_else(|| panic!("the chart passes {component} no {flag}"));
        *arg = format!("{flag}={value}");
    }
    args
}

fn helm_ok(cluster: &ControlPlane, args: &[&str]) -> String {
    let mut helm = cluster.helm();
    helm.args(args);
    ok(run(helm, ""), &format!("helm {}", args.join(" ")))
}

#[test]
fn install_is_admitted_and_upgrade_leaves_the_autoscalers_replicas_alone() {
    let _slot = Slot::take();
    let cluster = restricted_cluster();
    let chart = path_str(&chart());

    // The schema refuses a wrong value before anything is installed.
    let mut helm = cluster.helm();
    helm.args(["install", RELEASE, &chart, "-n", NAMESPACE])
        .args(["--set", "runtime.pool.maxReplicas=many"]);
    let refused = run(helm, "");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("/runtime/pool/maxReplicas"), "{said}");

    let notes = helm_ok(&cluster, &["install", RELEASE, &chart, "-n", NAMESPACE]);
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(
        notes.contains("kubectl apply -f examples/cluster/hello.yaml"),
        "{notes}"
    );

    // The controllers create every pod the chart asks for, and the
    // restricted namespace admits them all (a refused pod would leave its
    // ReplicaSet or StatefulSet short, with a FailedCreate Event).
    for (component, count) in [("operator", 1), ("gateway", 2), ("runtime", 1), ("nats", 1)] {
        eventually(
            &format!("{count} {component} pod(s) admitted"),
            Duration::from_secs(60),
            || (pods(&cluster, component) == count).then_some(()),
        );
    }
    let events = cluster.kubectl_ok(&["get", "events", "-n", NAMESPACE]);
    assert!(!events.contains("PodSecurity"), "{events}");
    // Gateway and runtime talk only to NATS: no API token in their pods.
    for component in ["gateway", "runtime"] {
        let automount = deployment_field(
            &cluster,
            component,
            "{.spec.template.spec.automountServiceAccountToken}",
        );
        assert_eq!(automount, "false", "{component}");
    }
    // The chart sets no replicas on the pool: the API server's default.
    assert_eq!(
        deployment_field(&cluster, "runtime", "{.spec.replicas}"),
        "1"
    );

    // The autoscaler's write: the scale subresource, its field manager.
    cluster.kubectl_ok(&[
        "patch",
        "deployment",
        &format!("{RELEASE}-runtime"),
        "-n",
        NAMESPACE,
        "--subresource=scale",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
        "--field-manager=sluice-autoscaler",
    ]);
    let passwords_before = nats_passwords(&cluster);
    // An upgrade that changes the pool's pod template (so Helm applies the
    // pool Deployment again) and the gateway's replicas.
    helm_ok(
        &cluster,
        &[
            "upgrade",
            RELEASE,
            &chart,
            "-n",
            NAMESPACE,
            "--set",
            "runtime.maxInstances=128",
            "--set",
            "gateway.replicas=3",
        ],
    );
    let args = deployment_field(
        &cluster,
        "runtime",
        "{.spec.template.spec.containers[0].args}",
    );
    assert!(args.contains("--max-instances=128"), "{args}");
    assert_eq!(
        deployment_field(&cluster, "gateway", "{.spec.replicas}"),
        "3"
    );
    assert_eq!(
        deployment_field(&cluster, "runtime", "{.spec.replicas}"),
        "3",
        "helm upgrade took back the autoscaler's replicas"
    );
    let status = helm_ok(&cluster, &["status", RELEASE, "-n", NAMESPACE]);
    assert!(status.contains("REVISION: 2"), "{status}");
    // The generated NATS passwords survive the upgrade (a new one would
    // lock every running part out until it restarted).
    assert_eq!(nats_passwords(&cluster), passwords_before);
}

/// The bundled NATS's password of each part, from the release's Secrets.
fn nats_passwords(cluster: &ControlPlane) -> Vec<(&'static str, String)> {
    use base64::Engine as _;
    ["gateway", "events", "runtime", "operator"]
        .into_iter()
        .map(|part| {
            let encoded = cluster.kubectl_ok(&[
                "get",
                "secret",
                &format!("{RELEASE}-nats-{part}"),
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.data.password}",
            ]);
            let password = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .expect("base64");
            let password = String::from_utf8(password).expect("a text password");
            assert!(password.len() >= 32, "{part}: a short password");
            (part, password)
        })
        .collect()
}

#[test]
fn with_the_charts_flags_and_service_account_a_function_becomes_ready_and_is_served() {
    let _slot = Slot::take();
    let cluster = restricted_cluster();
    helm_ok(
        &cluster,
        &["install", RELEASE, &path_str(&chart()), "-n", NAMESPACE],
    );
    established(&cluster, "functions.sluice.dev");
    // The bundled NATS as the chart configures it, with the passwords the
    // chart generated; each part connects as its own user with them (as
    // its pod would, from its Secret), so a permission the chart's sets
    // lack shows in a log.
    let nats = ChartNats::start(&cluster);
    let password_file = |part: &str| nats.password_file(part);

    // The operator's flags exactly as the chart renders them, but for the
    // NATS server (the bundled one has no pod here) and a loopback admin
    // port; its permissions exactly the chart's ServiceAccount's.
    let logs = tempfile::tempdir().expect("a temporary folder");
    let (operator, args) = chart_operator(&cluster, &nats, &[], logs.path());
    assert!(
        args.iter()
            .any(|a| a == &format!("--pool-deployment={NAMESPACE}/{RELEASE}-runtime")),
        "{args:?}"
    );

    hello_config_map(&cluster, "default");
    let applied = cluster.apply(&example("hello"));
    assert!(applied.status.success());
    let field = |path: &str| {
        let jsonpath = format!("jsonpath={path}");
        let args = ["get", "fn", "hello", "-n", "default", "-o", &jsonpath];
        String::from_utf8_lossy(&cluster.kubectl_with(&args, "").stdout).into_owned()
    };
    eventually("hello Ready", Duration::from_secs(90), || {
        (field(r#"{.status.conditions[?(@.type=="Ready")].status}"#) == "True").then_some(())
    });
    let url = field("{.status.url}");
    assert_eq!(
        url,
        format!("http://{RELEASE}-gateway.{NAMESPACE}.svc:8080/fn/default/hello/")
    );
    // The Lease in the release's namespace: leader election under the
    // chart's RoleBinding.
    let holder = cluster.kubectl_ok(&[
        "get",
        "lease",
        "sluice-operator",
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, "sluice-operator-0");
    let log = operator.log();
    assert!(!log.contains("forbidden"), "{log}");

    // The gateway and a pool runtime with the chart's flags too (NATS and
    // listeners on loopback): the function is served end to end.
    let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(binary("sluice-gateway"));
    command
        .args(chart_args(
            &cluster,
            "gateway",
            &[
                ("--nats", nats.server.url.clone()),
                ("--listen", gateway.to_string()),
                ("--admin-listen", "127.0.0.1:0".into()),
                ("--nats-password-file", password_file("gateway")),
                ("--events-nats-password-file", password_file("events")),
            ],
        ))
        .env("SLUICE_NATS_USER", "sluice-gateway")
        .env("SLUICE_EVENTS_NATS_USER", "sluice-events");
    let gateway_process = Process::spawn(command, logs.path().join("gateway.log"));
    // The pool runtime takes its password from the environment, as its
    // pod does from its Secret (secretKeyRef): the chart gives it no
    // volume, so the flag names the variable and stays as rendered.
    let mut command = Command::new(binary("sluice-runtime"));
    let runtime_args = chart_args(
        &cluster,
        "runtime",
        &[
            ("--nats", nats.server.url.clone()),
            ("--admin-listen", "127.0.0.1:0".into()),
        ],
    );
    assert!(
        runtime_args.contains(&"--nats-password-env=SLUICE_NATS_PASSWORD".to_owned())
            && runtime_args.contains(&"--artifacts-in-memory".to_owned()),
        "{runtime_args:?}"
    );
    command
        .args(runtime_args)
        .env("SLUICE_NATS_USER", "sluice-runtime")
        .env(
            "SLUICE_NATS_PASSWORD",
            std::fs::read_to_string(password_file("runtime")).expect("the runtime's password"),
        );
    let runtime = Process::spawn(command, logs.path().join("runtime.log"));
    wait_answer(gateway, "/fn/default/hello/", 200, "Hello from Sluice!");
    for (part, log) in [
        ("operator", operator.log()),
        ("gateway", gateway_process.log()),
        ("runtime", runtime.log()),
    ] {
        assert!(!log.contains("NATS refused"), "{part}: {log}");
    }
}

/// The bundled NATS's configuration as the chart renders it (the
/// ConfigMap's files), with what the pod's environment fills in (the
/// passwords from the chart's Secrets, the pod's name) filled in here, and
/// the pod's fixed paths, store and monitoring port left to the test
/// server.
fn bundled_nats_config(passwords: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    bundled_nats_config_with(&[], passwords)
}

/// [`bundled_nats_config`] rendered with `values` (values files, `--set`s).
fn bundled_nats_config_with(
    values: &[&str],
    passwords: &[(&str, &str)],
) -> (tempfile::TempDir, String) {
    let mut args = values.to_vec();
    args.extend(["--show-only", "templates/nats.yaml"]);
    let rendered = template(&args);
    let config_map: Value = serde_saphyr::from_multiple::<Value>(&rendered)
        .expect("the rendering is YAML")
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the NATS ConfigMap");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut config = String::new();
    for (file, text) in config_map["data"].as_object().expect("its files") {
        let text = text.as_str().expect("a file's text");
        if file == "nats.conf" {
            config = text
                .lines()
                .filter(|l| {
                    let l = l.trim_start();
                    !["http_port", "pid_file", "store_dir"]
                        .iter()
                        .any(|pod_only| l.starts_with(pod_only))
                })
                .collect::<Vec<_>>()
                .join("\n")
                .replace("$POD_NAME", "chart-test");
            for (part, password) in passwords {
                let variable = format!("$NATS_{}_PASSWORD", part.to_uppercase());
                assert!(config.contains(&variable), "{variable} in {config}");
                config = config.replace(&variable, &format!("\"{password}\""));
            }
        } else {
            std::fs::write(dir.path().join(file), text).expect("a file written");
        }
    }
    assert!(
        config.contains("include \"nats-permissions.conf\""),
        "{config}"
    );
    (dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_nats_refuses_strangers_and_gives_each_part_only_its_set() {
    let parts = [
        ("gateway", "g-secret"),
        ("events", "e-secret"),
        ("runtime", "r-secret"),
        ("operator", "o-secret"),
    ];
    let (dir, config) = bundled_nats_config(&parts);
    let nats = NatsServer::in_dir(dir, &config);

    // No credentials (a pod that found the Service): refused.
    let stranger = async_nats::connect(nats.url.as_str()).await;
    assert!(stranger.is_err(), "a client without credentials connected");

    // Each part may connect, and is refused what is another's.
    for ((part, password), (operation, subject)) in parts.iter().zip([
        // The gateway may not rewrite the registry (serve a victim's
        // traffic with another module).
        ("publish", "$KV.sluice-functions.shop.checkout"),
        // The event bridge may not read other parts' replies.
        ("subscribe", "_INBOX.>"),
        // A runtime may not rewrite the registry either.
        ("publish", "$KV.sluice-functions.shop.checkout"),
        // The operator may not read async results.
        ("subscribe", "$KV.sluice-results.>"),
    ]) {
        let (violations, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(
            format!("sluice-{part}"),
            (*password).to_owned(),
        )
        .event_callback(move |event| {
            if let async_nats::Event::ServerError(e) = event {
                let _ = violations.send(e.to_string());
            }
            std::future::ready(())
        })
        .connect(nats.url.as_str())
        .await
        .unwrap_or_else(|e| panic!("sluice-{part} cannot connect: {e}"));
        let _subscription;
        if operation == "publish" {
            client.publish(subject, "x".into()).await.expect("sent");
        } else {
            _subscription = client.subscribe(subject).await.expect("sent");
        }
        client.flush().await.expect("flushed");
        let error = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap_or_else(|_| panic!("sluice-{part} may {operation} {subject}"))
            .expect("a violation");
        assert!(
            error.contains("Permissions Violation") && error.contains(subject),
            "sluice-{part}: {error}"
        );
        // With another part's password, nobody gets in.
        let wrong = async_nats::ConnectOptions::with_user_and_password(
            format!("sluice-{part}"),
            "o-secret-not".to_owned(),
        )
        .connect(nats.url.as_str())
        .await;
        assert!(wrong.is_err(), "sluice-{part} with a wrong password");
    }
}

/// Three servers configured as the chart configures a bundled cluster
/// (ci/nats-cluster-values.yaml), with what the pods' environment gives
/// filled in (each its server_name, the route URLs with the routes'
/// password, routes on loopback): their routes authenticate, and the
/// operator's user creates the layout replicated three times on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_as_the_chart_configures_them_form_a_cluster_the_operator_uses() {
    let parts = [
        ("gateway", "g-secret"),
        ("events", "e-secret"),
        ("runtime", "r-secret"),
        ("operator", "o-secret"),
        ("route", "route-secret"),
    ];
    let values = path_str(&chart().join("ci/nats-cluster-values.yaml"));
    let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let servers: Vec<NatsServer> = (0..3)
        .map(|i| {
            let (dir, mut config) = bundled_nats_config_with(&["-f", &values], &parts);
            assert!(config.contains("port: 6222\n"), "{config}");
            config = config
                .replace("server_name: chart-test", &format!("server_name: n{i}"))
                .replace(
                    "port: 6222\n",
                    &format!("listen: 127.0.0.1:{}\n", route_ports[i]),
                );
            for (j, port) in route_ports.iter().enumerate() {
                config = config.replace(
                    &format!("$NATS_ROUTE_{j}"),
                    &format!("\"nats://sluice-route:route-secret@127.0.0.1:{port}\""),
                );
            }
            NatsServer::in_dir(dir, &config)
        })
        .collect();
    let client = async_nats::ConnectOptions::with_user_and_password(
        "sluice-operator".to_owned(),
        "o-secret".to_owned(),
    )
    .connect(servers[0].url.as_str())
    .await
    .expect("the operator's user connects");
    let config = sluice_nats::LayoutConfig {
        replicas: 3,
        ..sluice_nats::LayoutConfig::default()
    };
    // The cluster elects its meta leader first: asked again until then.
    let started = std::time::Instant::now();
    let layout = loop {
        match sluice_nats::Layout::reconcile(client.clone(), &config).await {
            Ok(reconciled) => break reconciled.layout,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(60),
                "no R3 layout on the chart's cluster within 60s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut invocations = layout.invocations.clone();
    let info = invocations.info().await.expect("the stream's info");
    assert_eq!(info.config.num_replicas, 3);
    let peers = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
    assert_eq!(peers, 2, "two followers: {:?}", info.cluster);
}

#[test]
fn the_bundled_nats_credentials_are_secrets_each_part_mounts_its_own() {
    let rendered = template(&[]);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&rendered).expect("YAML");
    let secrets: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "Secret")
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    for part in ["gateway", "events", "runtime", "operator"] {
        assert!(
            secrets.contains(&format!("sluice-nats-{part}").as_str()),
            "{secrets:?}"
        );
    }
    // Every Deployment uses only its own parts' Secrets (mounted, or for
    // the runtime pool put into its environment).
    for (component, own) in [
        (
            "gateway",
            &["sluice-nats-gateway", "sluice-nats-events"][..],
        ),
        ("runtime", &["sluice-nats-runtime"][..]),
        ("operator", &["sluice-nats-operator"][..]),
    ] {
        let deployment = docs
            .iter()
            .find(|d| {
                d["kind"] == "Deployment" && d["metadata"]["name"] == format!("sluice-{component}")
            })
            .unwrap_or_else(|| panic!("the {component} Deployment"));
        let text = deployment.to_string();
        for part in ["gateway", "events", "runtime", "operator"] {
            let secret = format!("sluice-nats-{part}");
            assert_eq!(
                text.contains(&format!("\"{secret}\"")),
                own.contains(&secret.as_str()),
                "{component} and {secret}"
            );
        }
    }
}

#[test]
fn with_watch_namespaces_the_operator_serves_those_with_roles_only_and_ignores_others() {
    let _slot = Slot::take();
    let cluster = restricted_cluster();
    for namespace in ["shop", "tenant-b"] {
        cluster.kubectl_ok(&["create", "namespace", namespace]);
    }
    helm_ok(
        &cluster,
        &[
            "install",
            RELEASE,
            &path_str(&chart()),
            "-n",
            NAMESPACE,
            "--set",
            "operator.watchNamespaces={shop}",
        ],
    );
    established(&cluster, "functions.sluice.dev");
    // No ClusterRole, no ClusterRoleBinding of the release.
    for kind in ["clusterrole", "clusterrolebinding"] {
        let names = cluster.kubectl_ok(&["get", kind, "-o", "name"]);
        assert!(!names.contains("sluice-operator"), "{kind}: {names}");
    }
    let nats = ChartNats::start(&cluster);
    let logs = tempfile::tempdir().expect("a temporary folder");
    let (operator, _) = chart_operator(
        &cluster,
        &nats,
        &[("--watch-namespace", "shop".into())],
        logs.path(),
    );
    for namespace in ["shop", "tenant-b"] {
        hello_config_map(&cluster, namespace);
        let function =
            example("hello").replace("namespace: default", &format!("namespace: {namespace}"));
        let applied = cluster.apply(&function);
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    let ready = |namespace: &str| {
        let args = [
            "get",
            "fn",
            "hello",
            "-n",
            namespace,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ];
        String::from_utf8_lossy(&cluster.kubectl_with(&args, "").stdout).into_owned()
    };
    eventually("shop/hello Ready", Duration::from_secs(90), || {
        (ready("shop") == "True").then_some(())
    });
    // The other namespace's Function is left alone: no status, no
    // finalizer, and the operator was refused nothing.
    assert_eq!(ready("tenant-b"), "");
    let finalizers = cluster.kubectl_ok(&[
        "get",
        "fn",
        "hello",
        "-n",
        "tenant-b",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert_eq!(finalizers, "");
    let log = operator.log();
    assert!(
        !log.contains("forbidden") && !log.contains("NATS refused"),
        "{log}"
    );
}

/// The bundled NATS as the installed chart configures it, with the
/// passwords the chart generated, each also in a file of its part's name
/// (as its pod mounts it).
struct ChartNats {
    server: NatsServer,
    secrets: tempfile::TempDir,
}

impl ChartNats {
    fn start(cluster: &ControlPlane) -> Self {
        let passwords = nats_passwords(cluster);
        let borrowed: Vec<(&str, &str)> = passwords.iter().map(|(p, w)| (*p, w.as_str())).collect();
        let (dir, config) = bundled_nats_config(&borrowed);
        let secrets = tempfile::tempdir().expect("a temporary folder");
        for (part, password) in &passwords {
            std::fs::write(secrets.path().join(part), password).expect("a password file");
        }
        Self {
            server: NatsServer::in_dir(dir, &config),
            secrets,
        }
    }

    fn password_file(&self, part: &str) -> String {
        path_str(&self.secrets.path().join(part))
    }
}

/// `sluice-operator` with the chart's flags (`moved` besides NATS, its
/// password and a loopback admin port) as the chart's ServiceAccount, and
/// the flags it got.
fn chart_operator(
    cluster: &ControlPlane,
    nats: &ChartNats,
    moved: &[(&str, String)],
    logs: &Path,
) -> (Process, Vec<String>) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut moved = moved.to_vec();
    moved.extend([
        ("--nats", nats.server.url.clone()),
        ("--runtime-nats-url", nats.server.url.clone()),
        ("--admin-listen", admin.to_string()),
        ("--nats-password-file", nats.password_file("operator")),
    ]);
    let args = chart_args(cluster, "operator", &moved);
    let kubeconfig = cluster.service_account_kubeconfig(NAMESPACE, &format!("{RELEASE}-operator"));
    let mut command = Command::new(binary("sluice-operator"));
    command
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("SLUICE_NATS_USER", "sluice-operator")
        .env("POD_NAME", "sluice-operator-0")
        .env("POD_NAMESPACE", NAMESPACE);
    (Process::spawn(command, logs.join("operator.log")), args)
}

/// ConfigMap `hello-wasm` in `namespace` with the hello component.
fn hello_config_map(cluster: &ControlPlane, namespace: &str) {
    let from = format!("--from-file=hello.wasm={}", component("hello").display());
    let config_map = cluster.kubectl_ok(&[
        "create",
        "configmap",
        "hello-wasm",
        "-n",
        namespace,
        &from,
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    assert!(cluster.apply(&config_map).status.success());
}

/// What `--api-versions` tells `helm template` of a cluster with
/// prometheus-operator's PrometheusRule.
const PROMETHEUS_RULE_API: &str = "monitoring.coreos.com/v1/PrometheusRule";

fn monitoring_values() -> String {
    path_str(&chart().join("ci/monitoring-values.yaml"))
}

#[test]
fn dashboards_and_alerts_render_only_when_on_and_where_the_api_exists() {
    let count = |rendered: &str, text: &str| rendered.matches(text).count();
    // Off by default; the alerts come with the ServiceMonitor or the
    // dashboards, where the PrometheusRule API exists.
    let defaults = template(&["--api-versions", PROMETHEUS_RULE_API]);
    assert_eq!(count(&defaults, "grafana_dashboard"), 0);
    assert_eq!(count(&defaults, "kind: PrometheusRule"), 0);
    for on in [
        "monitoring.dashboards.enabled=true",
        "metrics.serviceMonitor.enabled=true",
    ] {
        let rendered = template(&["--api-versions", PROMETHEUS_RULE_API, "--set", on]);
        assert_eq!(count(&rendered, "kind: PrometheusRule"), 1, "{on}");
    }
    let without_api = template(&["--set", "monitoring.dashboards.enabled=true"]);
    assert_eq!(count(&without_api, "grafana_dashboard: \"1\""), 3);
    assert_eq!(count(&without_api, "kind: PrometheusRule"), 0);
    let off = template(&[
        "--api-versions",
        PROMETHEUS_RULE_API,
        "--set",
        "monitoring.dashboards.enabled=true",
        "--set",
        "monitoring.alerts.enabled=false",
    ]);
    assert_eq!(count(&off, "kind: PrometheusRule"), 0);
    // Renamed for a sidecar that looks for another label, elsewhere.
    let renamed = template(&[
        "--set",
        "monitoring.dashboards.enabled=true",
        "--set",
        "monitoring.dashboards.label=dashboards",
        "--set",
        "monitoring.dashboards.labelValue=sluice",
        "--set",
        "monitoring.dashboards.namespace=grafana",
    ]);
    assert_eq!(count(&renamed, "dashboards: \"sluice\""), 3);
    assert_eq!(count(&renamed, "grafana_dashboard"), 0);
    assert_eq!(count(&renamed, "namespace: grafana\n"), 3);
    // The bundled volume's size is the storage bound, unless one is given.
    let bundled = template(&[]);
    assert!(
        bundled.contains("--jetstream-storage-bound=10Gi"),
        "{bundled}"
    );
    let given = template(&["--set", "monitoring.jetstreamStorageBound=2Gi"]);
    assert!(given.contains("--jetstream-storage-bound=2Gi"));
    let fractional = template(&["--set", "nats.bundled.storage.size=1.5Gi"]);
    assert!(!fractional.contains("--jetstream-storage-bound"));
}

#[test]
fn the_api_server_accepts_the_dashboards_and_alerts_as_the_files_hold_them() {
    let _slot = Slot::take();
    let cluster = restricted_cluster();
    for crd in [SERVICE_MONITOR_CRD, PROMETHEUS_RULE_CRD] {
        let applied = cluster.apply(crd);
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    established(&cluster, "servicemonitors.monitoring.coreos.com");
    established(&cluster, "prometheusrules.monitoring.coreos.com");
    let rendered = template(&[
        "-f",
        &monitoring_values(),
        "--api-versions",
        PROMETHEUS_RULE_API,
    ]);
    let output = cluster.kubectl_with(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=helm",
            "-o",
            "json",
            "-f",
            "-",
        ],
        &rendered,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "refused:\n{stderr}");
    let applied: Value = serde_json::from_slice(&output.stdout).expect("kubectl's JSON");
    let items = applied["items"].as_array().expect("a List");
    let dashboards: Vec<&Value> = items
        .iter()
        .filter(|i| i["kind"] == "ConfigMap" && i["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 3);
    for slug in ["overview", "function", "platform"] {
        let file = std::fs::read_to_string(chart().join(format!("files/dashboards/{slug}.json")))
            .expect("a dashboard");
        let served = dashboards
            .iter()
            .find_map(|d| d["data"][format!("sluice-{slug}.json")].as_str())
            .unwrap_or_else(|| panic!("no ConfigMap holds sluice-{slug}.json"));
        assert_eq!(served, file.trim_end(), "{slug}");
        assert!(
            dashboards
                .iter()
                .all(|d| d["metadata"]["annotations"]["grafana_folder"] == "Sluice")
        );
    }
    let rule = items
        .iter()
        .find(|i| i["kind"] == "PrometheusRule")
        .expect("the PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    let file =
        std::fs::read_to_string(chart().join("files/monitoring/alerts.yaml")).expect("alerts");
    let expected: Vec<&str> = file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts, expected);
}
