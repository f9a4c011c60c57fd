//! The chart's dashboards and alerts against the real thing: promtool
//! checks and unit-tests the alerts, and a real Prometheus (built by
//! `scripts/prometheus.sh`) scrapes a real run (a control plane and
//! nats-server, the operator, a gateway and a pool runtime, all on
//! loopback) in which functions were invoked, failed, retried,
//! dead-lettered, refused and scaled, and a scale was refused. Then every
//! panel query answers with at least one series, and every metric each
//! alert reads has series: a metric renamed in the code or in a query
//! fails here.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sluice_testing::prometheus::{Prometheus, promtool};
use sluice_testing::{SLUICE_NAMESPACE, repo_root};

use crate::support::{
    Sluice, eventually, example, http_get, http_get_within, http_post, post_async, settled,
};

fn monitoring_file(name: &str) -> PathBuf {
    repo_root()
        .join("charts/sluice/files/monitoring")
        .join(name)
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = repo_root().join("charts/sluice/files/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("charts/sluice/files/dashboards")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("a dashboard");
            let json = serde_json::from_str(&text).expect("a dashboard is JSON");
            (f.display().to_string(), json)
        })
        .collect()
}

fn succeeds(mut command: std::process::Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn the_alerts_pass_promtool_check_and_each_fires_and_stays_quiet_in_its_unit_tests() {
    let mut check = promtool();
    check
        .args(["check", "rules"])
        .arg(monitoring_file("alerts.yaml"));
    let text = succeeds(check, "promtool check rules");
    assert!(text.contains("SUCCESS: 11 rules found"), "{text}");
    let mut test = promtool();
    test.args(["test", "rules"])
        .arg(monitoring_file("alerts-test.yaml"));
    succeeds(test, "promtool test rules");
    // Every alert has a unit test that fires it and its runbook section.
    let alerts = std::fs::read_to_string(monitoring_file("alerts.yaml")).expect("alerts.yaml");
    let tests = std::fs::read_to_string(monitoring_file("alerts-test.yaml")).expect("tests");
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    for name in alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no promtool test"
        );
        assert!(
            readme.contains(&format!("#### {name}\n")),
            "{name} has no runbook section in README.md"
        );
    }
}

#[test]
fn the_dashboards_and_their_readme_list_are_what_scripts_dashboards_py_writes() {
    let mut check = std::process::Command::new("python3");
    check
        .arg(repo_root().join("scripts/dashboards.py"))
        .arg("--check");
    succeeds(check, "scripts/dashboards.py --check");
}

/// The pool Deployment the operator is given, and an admission policy that
/// refuses every change of its scale, as a quota or a policy engine would:
/// the autoscaler's write fails and is counted.
const FROZEN_POOL: &str = "apiVersion: apps/v1
kind: Deployment
metadata: { name: frozen-pool, namespace: sluice-system }
spec:
  replicas: 0
  selector: { matchLabels: { app: frozen-pool } }
  template:
    metadata: { labels: { app: frozen-pool } }
    spec: { containers: [{ name: runtime, image: registry.test/none:0 }] }
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: { name: frozen-pool }
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [apps]
        apiVersions: [v1]
        operations: [UPDATE]
        resources: [deployments/scale]
        resourceNames: [frozen-pool]
  validations:
    - expression: 'false'
      message: the pool's size is frozen
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: { name: frozen-pool }
spec:
  policyName: frozen-pool
  validationActions: [Deny]
";

/// A pool function of the `misbehave` component that answers what it is
/// asked (`/status/<code>`), retried once, quickly, and invoked by NATS
/// messages too.
const FLAKY: &str = "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: flaky, namespace: default }
spec:
  auth: { public: true }
  module: { configMap: { name: misbehave-wasm, key: misbehave.wasm } }
  timeout: 10s
  retry: { maxAttempts: 2, backoff: { initial: 100ms, max: 100ms } }
  triggers: { nats: [{ subject: monitoring.flaky }] }
";

/// Publishes one message on `subject` of the test's NATS server.
fn publish(sluice: &Sluice, subject: &'static str) {
    let url = sluice.nats.url.clone();
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async move {
            let client = async_nats::connect(&url).await.expect("NATS");
            client
                .publish(subject, "{}".into())
                .await
                .expect("published");
            client.flush().await.expect("flushed");
        });
}

/// A dedicated function whose Deployment the autoscaler scales on its
/// queue (no kubelet here: its pods never run, its queue stays).
const SCALED: &str = "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: scaled, namespace: default }
spec:
  auth: { public: true }
  module: { configMap: { name: misbehave-wasm, key: misbehave.wasm } }
  placement: dedicated
  scaling: { maxReplicas: 3, targetQueueDepth: 1 }
";

/// The function whose dashboard is checked.
const FUNCTION: &str = "default/flaky";

/// Grafana's variables as a dashboard query is sent: the rate window a
/// 1 s scrape gives, the function picked.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$function", FUNCTION)
}

/// Every selector of a parsed expression (Prometheus's
/// `/api/v1/parse_query`) that has no series, except under an `or` one of
/// whose sides has: an alternative (an event dead-lettered by the gateway,
/// or an invocation by the runtime) needs only one of them seen.
fn missing_selectors(prometheus: &Prometheus, node: &Value) -> Result<Vec<String>, String> {
    let children = |keys: &[&str]| -> Result<Vec<String>, String> {
        let mut missing = Vec::new();
        for key in keys {
            if !node[key].is_null() {
                missing.extend(missing_selectors(prometheus, &node[key])?);
            }
        }
        Ok(missing)
    };
    match node["type"].as_str().unwrap_or_default() {
        "vectorSelector" | "matrixSelector" => {
            let matchers: Vec<String> = node["matchers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{}{}{}",
                        m["name"].as_str().unwrap_or_default(),
                        m["type"].as_str().unwrap_or_default(),
                        m["value"]
                    )
                })
                .collect();
            let selector = format!("{{{}}}", matchers.join(","));
            let series = prometheus.query(&selector)?;
            Ok(if series.is_empty() {
                vec![selector]
            } else {
                vec![]
            })
        }
        "binaryExpr" if node["op"] == "or" => {
            let lhs = missing_selectors(prometheus, &node["lhs"])?;
            let rhs = missing_selectors(prometheus, &node["rhs"])?;
            Ok(if lhs.is_empty() || rhs.is_empty() {
                vec![]
            } else {
                [lhs, rhs].concat()
            })
        }
        "binaryExpr" => children(&["lhs", "rhs"]),
        "call" => {
            let mut missing = Vec::new();
            for arg in node["args"].as_array().into_iter().flatten() {
                missing.extend(missing_selectors(prometheus, arg)?);
            }
            Ok(missing)
        }
        _ => children(&["expr", "param"]),
    }
}

/// What is wrong with one panel query now, if anything: it must answer
/// with series, and every metric it reads must have some
/// ([`alert_problem`]).
fn panel_problem(prometheus: &Prometheus, expr: &str) -> Option<String> {
    match prometheus.query(expr) {
        Err(e) => Some(e),
        Ok(series) if series.is_empty() => Some("no series".to_owned()),
        Ok(_) => alert_problem(prometheus, expr),
    }
}

/// What is wrong with one alert expression now, if anything: it must
/// evaluate, and every metric it reads must have series (an alert that
/// does not fire returns none itself).
fn alert_problem(prometheus: &Prometheus, expr: &str) -> Option<String> {
    if let Err(e) = prometheus.query(expr) {
        return Some(e);
    }
    let parsed = match prometheus.api("parse_query", &[("query", expr)]) {
        Ok(parsed) => parsed,
        Err(e) => return Some(e),
    };
    match missing_selectors(prometheus, &parsed) {
        Err(e) => Some(e),
        Ok(missing) if missing.is_empty() => None,
        Ok(missing) => Some(format!("no series for {}", missing.join(", "))),
    }
}

/// The label a `label_values(<metric>, <label>)` variable lists, and its
/// metric.
fn label_values(query: &str) -> Option<(&str, &str)> {
    let inner = query.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (metric, label) = inner.split_once(',')?;
    Some((metric.trim(), label.trim()))
}

#[test]
fn every_panel_query_and_alert_expression_answers_from_a_real_run() {
    let sluice = Sluice::start();
    sluice.apply(FROZEN_POOL);
    let pool = format!("{SLUICE_NAMESPACE}/frozen-pool");
    let operator = sluice.operator(
        "op-1",
        15,
        &[
            "--autoscale-interval",
            "1s",
            "--pool-deployment",
            &pool,
            "--jetstream-storage-bound",
            "1Gi",
        ],
    );
    let (gateway_process, gateway) = sluice.gateway();
    // Components loaded on their first invocation, so that "Cold starts/s"
    // has a series: compiled ahead, they would be held already.
    let runtime = sluice.runtime_with(&["--precompile-registered=false"]);
    sluice.component_config_map("misbehave");
    sluice.component_config_map("echo");
    sluice.apply(FLAKY);
    sluice.apply(SCALED);
    // Its key Secret missing: not Ready (a reconcile failure with its
    // reason), and every call refused 401.
    sluice.apply(&example("secured-echo"));
    sluice.wait_ready("default", "flaky", "True", "Ready");
    sluice.wait_ready("default", "secured-echo", "False", "ApiKeySecretNotFound");

    let admin = |p: &crate::support::Process| -> SocketAddr { p.admin.expect("an admin address") };
    let prometheus = Prometheus::start(
        &[
            ("operator", admin(&operator)),
            ("gateway", admin(&gateway_process)),
            ("runtime", admin(&runtime)),
        ],
        &[&monitoring_file("alerts.yaml")],
    );

    // Invoked, failing with the function's 4xx and 5xx, retried and
    // dead-lettered, refused, and scaled.
    eventually("flaky answers 200", Duration::from_secs(60), || {
        (http_get_within(
            gateway,
            "/fn/default/flaky/status/200",
            Duration::from_secs(30),
        )?
        .0 == 200)
            .then_some(())
    });
    for path in [
        "/fn/default/flaky/status/404",
        "/fn/default/flaky/status/500",
    ] {
        http_get(gateway, path).expect("the gateway answers");
    }
    let failing = post_async(gateway, "/async/fn/default/flaky/status/500", 1);
    assert_eq!(settled(gateway, &failing[0]), "dead-lettered");
    let gateway_admin = admin(&gateway_process);
    eventually(
        "a NATS message queued as an event",
        Duration::from_secs(60),
        || {
            publish(&sluice, "monitoring.flaky");
            let (_, metrics) = http_get(gateway_admin, "/metrics")?;
            metrics
                .contains(r#"sluice_events_queued_total{function="default/flaky"}"#)
                .then_some(())
        },
    );
    eventually("secured-echo refusing", Duration::from_secs(30), || {
        (http_get(gateway, "/fn/default/secured-echo/")?.0 == 401).then_some(())
    });
    eventually(
        "scaled's Function registered",
        Duration::from_secs(60),
        || (http_post(gateway, "/async/fn/default/scaled/")?.0 == 202).then_some(()),
    );
    for _ in 0..2 {
        http_post(gateway, "/async/fn/default/scaled/").expect("an answer");
    }

    // Every query of every panel, every dashboard variable and every alert
    // expression, until all answer (scrapes and rates need a few seconds).
    let dashboards = dashboards();
    let rules = eventually("the alerts loaded", Duration::from_secs(30), || {
        let data = prometheus.api("rules", &[("type", "alert")]).ok()?;
        let rules: Vec<(String, String)> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| {
                Some((
                    r["name"].as_str()?.to_owned(),
                    r["query"].as_str()?.to_owned(),
                ))
            })
            .collect();
        (!rules.is_empty()).then_some(rules)
    });
    assert_eq!(rules.len(), 11, "{rules:?}");
    let mut problems = Vec::new();
    let mut all_answer = || -> Option<()> {
        problems.clear();
        for (file, dashboard) in &dashboards {
            for variable in dashboard["templating"]["list"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let Some(query) = variable["query"]["query"].as_str() else {
                    continue;
                };
                let (metric, label) = label_values(query).unwrap_or_else(|| {
                    panic!("{file}: {query} is not label_values(metric, label)")
                });
                let values = prometheus
                    .api(&format!("label/{label}/values"), &[("match[]", metric)])
                    .unwrap_or_default();
                if !values
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v == FUNCTION)
                {
                    problems.push(format!(
                        "{file}: variable {query}: {FUNCTION} not among {values}"
                    ));
                }
            }
            for panel in dashboard["panels"].as_array().into_iter().flatten() {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    let expr = as_grafana_sends(target["expr"].as_str().unwrap_or_default());
                    if let Some(problem) = panel_problem(&prometheus, &expr) {
                        problems.push(format!("{file}: {}: {expr}: {problem}", panel["title"]));
                    }
                }
            }
        }
        for (name, expr) in &rules {
            if let Some(problem) = alert_problem(&prometheus, expr) {
                problems.push(format!("alert {name}: {expr}: {problem}"));
            }
        }
        problems.is_empty().then_some(())
    };
    let answered = (0..600).find_map(|_| {
        let done = all_answer();
        if done.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        done
    });
    assert!(
        answered.is_some(),
        "not every query answers:\n{}\nprometheus:\n{}",
        problems.join("\n"),
        prometheus.log()
    );

    // The check can fail: a renamed metric has no series, in a panel and
    // in an alert.
    let renamed = "max by (function) (sluice_queue_depth_renamed)";
    assert_eq!(
        panel_problem(&prometheus, renamed).as_deref(),
        Some("no series")
    );
    let problem = alert_problem(
        &prometheus,
        &format!("max(sluice_queue_depth) > 0 and {renamed} > 100"),
    )
    .unwrap_or_default();
    assert!(problem.contains("sluice_queue_depth_renamed"), "{problem}");

    // Every metric the processes export is read by some panel or alert.
    let read: String = dashboards
        .iter()
        .map(|(_, d)| d.to_string())
        .chain(rules.iter().map(|(_, e)| e.clone()))
        .collect();
    let exported: BTreeSet<String> = prometheus
        .api(
            "label/__name__/values",
            &[("match[]", r#"{__name__=~"sluice_.+"}"#)],
        )
        .expect("metric names")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    let unread: Vec<&String> = exported
        .iter()
        .filter(|name| {
            let family = ["_bucket", "_count", "_sum", "_created"]
                .iter()
                .fold(name.as_str(), |n, suffix| {
                    n.strip_suffix(suffix).unwrap_or(n)
                });
            !read.contains(family)
        })
        .collect();
    assert!(
        unread.is_empty(),
        "exported but on no panel and in no alert: {unread:?}"
    );
}
