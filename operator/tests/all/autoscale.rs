//! The autoscaler end to end: a real control plane and nats-server, real
//! gateway and operator processes, and real `sluice-runtime` processes for
//! the runtime Deployments' replicas (the harness plays the kubelet).

use std::thread;
use std::time::Duration;

use sluice_testing::NatsCluster;

use crate::support::{
    Sluice, eventually, http_get_within, http_post, metrics, post_async, settled,
};

/// A dedicated function of the `misbehave` component, whose `/sleep/<ms>`
/// holds each invocation, so a queue stays deep while runtimes start.
fn sleeper(name: &str, scaling: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: {name}, namespace: default }}
spec:
  module: {{ configMap: {{ name: misbehave-wasm, key: misbehave.wasm }} }}
  placement: dedicated
  timeout: 30s
  concurrency: 10
  scaling: {scaling}
"
    )
}

/// Applies `surge` (at most 5 replicas, 10 queued per replica, quick to
/// scale down) and waits until, created with one warm replica and idle
/// for `scaleToZeroAfter`, it is at zero; its Deployment's name.
fn surge_at_zero(sluice: &Sluice, kubelet: &sluice_testing::Kubelet) -> &'static str {
    sluice.component_config_map("misbehave");
    sluice.apply(&sleeper(
        "surge",
        "{ maxReplicas: 5, targetQueueDepth: 10, scaleDownDelay: 2s, scaleToZeroAfter: 3s }",
    ));
    sluice.wait_ready("default", "surge", "True", "Ready");
    let deployment = "surge-runtime";
    eventually("idle to zero", Duration::from_secs(60), || {
        let at_zero = kubelet.replica_history("default", deployment).last() == Some(&0)
            && kubelet.running("default", deployment) == 0;
        at_zero.then_some(())
    });
    deployment
}

/// Joins `posters` (500 async invocations in all), waits until each
/// `succeeded`, then until `deployment` is back at zero, and checks that
/// since `before_surge` (its length of replica history) it went up to 5
/// replicas (`surge`'s maxReplicas) and no further.
fn served_up_to_five_and_back_to_zero(
    posters: Vec<thread::JoinHandle<Vec<String>>>,
    gateway: std::net::SocketAddr,
    kubelet: &sluice_testing::Kubelet,
    deployment: &str,
    before_surge: usize,
) {
    let ids: Vec<String> = posters
        .into_iter()
        .flat_map(|p| p.join().expect("an async poster"))
        .collect();
    assert_eq!(ids.len(), 500);
    for id in &ids {
        assert_eq!(settled(gateway, id), "succeeded", "invocation {id}");
    }
    eventually("back to zero", Duration::from_secs(90), || {
        (kubelet.replica_history("default", deployment).last() == Some(&0)).then_some(())
    });
    let surge = kubelet.replica_history("default", deployment)[before_surge..].to_vec();
    assert_eq!(
        surge.iter().max(),
        Some(&5),
        "up to maxReplicas and no further: {surge:?}"
    );
}

#[test]
fn a_surge_at_zero_scales_up_to_max_replicas_is_served_whole_and_returns_to_zero_and_a_pin_holds() {
    let sluice = Sluice::start();
    let operator = sluice.operator("op-1", 15, &["--autoscale-interval", "1s"]);
    let (_gateway, gateway) = sluice.gateway();
    let kubelet = sluice.kubelet(Duration::from_secs(1));
    let deployment = surge_at_zero(&sluice, &kubelet);
    eventually("Active=False", Duration::from_secs(30), || {
        let (status, reason, _) = sluice.condition("default", "surge", "Active")?;
        (status == "False" && reason == "ScaledToZero").then_some(())
    });
    let before_surge = kubelet.replica_history("default", deployment).len();

    // 20 synchronous and 500 asynchronous invocations at once, at zero.
    let sync: Vec<_> = (0..20)
        .map(|_| {
            thread::spawn(move || {
                http_get_within(
                    gateway,
                    "/fn/default/surge/sleep/100",
                    Duration::from_secs(60),
                )
            })
        })
        .collect();
    let posters: Vec<_> = (0..10)
        .map(|_| {
            thread::spawn(move || post_async(gateway, "/async/fn/default/surge/sleep/100", 50))
        })
        .collect();
    for answer in sync {
        let answer = answer.join().expect("a sync caller");
        assert!(
            matches!(answer, Some((200, _))),
            "a synchronous invocation made at zero is answered once a runtime starts: {answer:?}"
        );
    }
    served_up_to_five_and_back_to_zero(posters, gateway, &kubelet, deployment, before_surge);
    let reasons = sluice.event_reasons("default", "surge");
    for reason in ["ScaledFromZero", "ScaledUp", "ScaledToZero"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}"
        );
    }
    eventually("the status at zero", Duration::from_secs(30), || {
        let desired = sluice.field("default", "surge", "{.status.desiredReplicas}");
        let depth = sluice.field("default", "surge", "{.status.queueDepth}");
        (desired == "0" && depth == "0").then_some(())
    });
    let text = metrics(&operator);
    assert!(
        text.contains(
            r#"sluice_autoscaler_decisions_total{function="default/surge",direction="up",reason="#
        ) && text.contains(r#"sluice_queue_depth{function="default/surge"} 0"#),
        "{text}"
    );

    // A pin holds under load, and autoscaling resumes when it goes.
    sluice
        .cluster
        .kubectl_ok(&["scale", "fn/surge", "-n", "default", "--replicas=2"]);
    eventually("pinned at 2", Duration::from_secs(30), || {
        (kubelet.replica_history("default", deployment).last() == Some(&2)).then_some(())
    });
    let pinned_from = kubelet.replica_history("default", deployment).len();
    let ids = post_async(gateway, "/async/fn/default/surge/sleep/100", 200);
    for id in &ids {
        assert_eq!(settled(gateway, id), "succeeded", "invocation {id}");
    }
    assert_eq!(
        kubelet.replica_history("default", deployment).len(),
        pinned_from,
        "200 queued did not move a pinned function: {:?}",
        kubelet.replica_history("default", deployment)
    );
    assert_eq!(
        sluice.field("default", "surge", "{.status.desiredReplicas}"),
        "2"
    );
    sluice.cluster.kubectl_ok(&[
        "patch",
        "fn",
        "surge",
        "-n",
        "default",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/replicas"}]"#,
    ]);
    eventually("unpinned: idle to zero", Duration::from_secs(60), || {
        (kubelet.replica_history("default", deployment).last() == Some(&0)).then_some(())
    });
}

/// Applies `woken` (down to zero at once) with a first operator, then
/// starts the one returned, whose ticks are an hour apart: the first, at
/// start, finds the function idle and scales it to zero, and no other
/// comes within a test; returns once no runtime is left, a stopping one
/// included (only a scale can serve). Both operators get `extra` flags.
fn woken_at_zero(
    sluice: &Sluice,
    kubelet: &sluice_testing::Kubelet,
    extra: &[&str],
) -> crate::support::Process {
    sluice.component_config_map("misbehave");
    {
        let _first = sluice.operator("op-1", 15, &[&["--leader-elect", "false"], extra].concat());
        sluice.apply(&sleeper(
            "woken",
            "{ scaleDownDelay: 0s, scaleToZeroAfter: 0s }",
        ));
        sluice.wait_ready("default", "woken", "True", "Ready");
    }
    let operator = sluice.operator(
        "op-2",
        15,
        &[
            &["--leader-elect", "false", "--autoscale-interval", "1h"],
            extra,
        ]
        .concat(),
    );
    eventually("at zero", Duration::from_secs(60), || {
        (kubelet.replica_history("default", "woken-runtime").last() == Some(&0)
            && kubelet.alive("default", "woken-runtime") == 0)
            .then_some(())
    });
    operator
}

/// A sync call of `woken` at zero is answered, and `operator` counts
/// the wake that scaled it up.
fn woken_by_a_call(gateway: std::net::SocketAddr, operator: &crate::support::Process) {
    let answer = http_get_within(
        gateway,
        "/fn/default/woken/sleep/1",
        Duration::from_secs(90),
    );
    assert!(matches!(answer, Some((200, _))), "{answer:?}");
    eventually("the wake counted", Duration::from_secs(30), || {
        metrics(operator)
            .contains(r#"sluice_autoscaler_decision_latency_seconds_count{trigger="wake"} 1"#)
            .then_some(())
    });
}

#[test]
fn a_first_invocation_at_zero_scales_up_without_waiting_for_a_tick() {
    let sluice = Sluice::start();
    let (_gateway, gateway) = sluice.gateway();
    let kubelet = sluice.kubelet(Duration::ZERO);
    let operator = woken_at_zero(&sluice, &kubelet, &[]);
    woken_by_a_call(gateway, &operator);
}

/// The pool, as the Helm chart makes it, at zero, and the `misbehave`
/// component in ConfigMap `default/misbehave-wasm`. Its pods never start
/// here, so what is queued stays queued: the returned stand-in kubelet
/// only records the pool's scales.
fn pool_at_zero(sluice: &Sluice) -> sluice_testing::Kubelet {
    sluice.component_config_map("misbehave");
    sluice.apply(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: sluice-runtime-pool
  namespace: sluice-system
  labels: { app.kubernetes.io/name: sluice-runtime-pool }
spec:
  replicas: 0
  selector: { matchLabels: { app.kubernetes.io/name: sluice-runtime-pool } }
  template:
    metadata: { labels: { app.kubernetes.io/name: sluice-runtime-pool } }
    spec: { containers: [ { name: runtime, image: registry.test/sluice-runtime:test } ] }
",
    );
    sluice_testing::Kubelet::start(
        &sluice.cluster,
        "app.kubernetes.io/name=sluice-runtime-pool",
        std::path::Path::new("/nonexistent/never-started"),
        Duration::from_secs(3600),
        sluice.cluster.dir(),
    )
}

/// A pool function applied while the pool is at zero wakes the pool with
/// its first invocation, not at the first queue reading that finds it:
/// the operator's readings are an hour apart, and its first was taken
/// before the function existed. (Before, a new function's first request
/// waited up to `--autoscale-interval` for a reading to show its consumer,
/// the real node's `kubectl apply` to first 200 being 0.7–1.6 s.)
#[test]
fn a_pool_function_applied_at_zero_wakes_the_pool_with_its_first_invocation() {
    let sluice = Sluice::start();
    let pool_watch = pool_at_zero(&sluice);
    let operator = sluice.operator(
        "op-1",
        15,
        &[
            "--leader-elect",
            "false",
            "--autoscale-interval",
            "1h",
            "--pool-deployment",
            "sluice-system/sluice-runtime-pool",
        ],
    );
    eventually(
        "the operator's first reading",
        Duration::from_secs(60),
        || {
            metrics(&operator)
                .contains("sluice_autoscaler_tick_duration_seconds_count 1")
                .then_some(())
        },
    );
    let (_gateway, gateway) = sluice.gateway();
    sluice.apply(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: fresh, namespace: default }
spec:
  module: { configMap: { name: misbehave-wasm, key: misbehave.wasm } }
",
    );
    sluice.wait_ready("default", "fresh", "True", "Ready");
    post_async(gateway, "/async/fn/default/fresh/status/200", 1);
    eventually("the pool woken", Duration::from_secs(30), || {
        (pool_watch
            .replica_history("sluice-system", "sluice-runtime-pool")
            .last()
            == Some(&1))
        .then_some(())
    });
    // Woken by its first invocation, not by a reading (counted once the
    // scale is written).
    eventually("the wake counted", Duration::from_secs(30), || {
        metrics(&operator)
            .contains(r#"sluice_autoscaler_decision_latency_seconds_count{trigger="wake"} 1"#)
            .then_some(())
    });
}

#[test]
fn the_pool_scales_on_its_functions_sum_a_restarted_operator_resumes_without_a_dip_and_no_functions_mean_its_minimum()
 {
    let sluice = Sluice::start();
    let pool_watch = pool_at_zero(&sluice);
    let flags = [
        "--leader-elect",
        "false",
        "--pool-deployment",
        "sluice-system/sluice-runtime-pool",
        "--pool-min-replicas",
        "1",
        "--pool-max-replicas",
        "10",
    ];
    let mut first = sluice.operator("op-1", 15, &flags);
    let (_gateway, gateway) = sluice.gateway();
    for (name, target) in [("left", 10), ("right", 5)] {
        sluice.apply(&format!(
            "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: {name}, namespace: default }}
spec:
  module: {{ configMap: {{ name: misbehave-wasm, key: misbehave.wasm }} }}
  scaling: {{ targetQueueDepth: {target}, scaleDownDelay: 10m, scaleToZeroAfter: 10m }}
"
        ));
        sluice.wait_ready("default", name, "True", "Ready");
    }
    // 30 queued for left (3 replicas at 10 each) and 20 for right (4 at 5
    // each): the pool wants 7.
    post_async(gateway, "/async/fn/default/left/status/200", 30);
    post_async(gateway, "/async/fn/default/right/status/200", 20);
    eventually("the pool at 7", Duration::from_secs(30), || {
        (pool_watch
            .replica_history("sluice-system", "sluice-runtime-pool")
            .last()
            == Some(&7))
        .then_some(())
    });
    for (name, desired) in [("left", "3"), ("right", "4")] {
        eventually(
            &format!("{name} desires {desired}"),
            Duration::from_secs(30),
            || {
                (sluice.field("default", name, "{.status.desiredReplicas}") == desired)
                    .then_some(())
            },
        );
    }
    let at_seven = pool_watch
        .replica_history("sluice-system", "sluice-runtime-pool")
        .len();

    // Killed mid-surge; its successor resumes from what it finds.
    first.kill();
    let second = sluice.operator("op-2", 15, &flags);
    eventually(
        "three ticks of the new operator",
        Duration::from_secs(60),
        || {
            let text = metrics(&second);
            let ticks = text
                .lines()
                .find_map(|l| l.strip_prefix("sluice_autoscaler_tick_duration_seconds_count "))?
                .trim()
                .parse::<u64>()
                .ok()?;
            (ticks >= 3).then_some(())
        },
    );
    let history = pool_watch.replica_history("sluice-system", "sluice-runtime-pool");
    assert_eq!(
        history.len(),
        at_seven,
        "the pool never left 7 across the restart: {history:?}"
    );
    // More demand raises the sum, up to the pool's max.
    post_async(gateway, "/async/fn/default/left/status/200", 100);
    eventually("the pool at its max", Duration::from_secs(30), || {
        (pool_watch
            .replica_history("sluice-system", "sluice-runtime-pool")
            .last()
            == Some(&10))
        .then_some(())
    });
    // Its last functions deleted, the pool returns to its minimum.
    sluice.cluster.kubectl_ok(&[
        "delete",
        "functions.sluice.dev",
        "-n",
        "default",
        "left",
        "right",
        "--wait=true",
    ]);
    eventually("the pool at its min", Duration::from_secs(30), || {
        (pool_watch
            .replica_history("sluice-system", "sluice-runtime-pool")
            .last()
            == Some(&1))
        .then_some(())
    });
}

/// The server leading the consumer of `default/<function>` on the
/// invocation stream, asked over `nats` until one is known (60 s).
fn consumer_leader(nats: &str, function: &str) -> usize {
    let function = sluice_api::names::FunctionRef::new("default", function).expect("a name");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client = sluice_nats::connect(nats, "test-leader", &Default::default())
            .await
            .expect("the cluster");
        let js = async_nats::jetstream::new(client);
        let started = std::time::Instant::now();
        loop {
            if let Ok(stream) = js.get_stream(sluice_api::names::INVOCATION_STREAM).await
                && let Ok(info) = stream.consumer_info(function.consumer_name()).await
                && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
            {
                return NatsCluster::index_of(&leader).expect("one of ours");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the consumer of {function} has no leader within 60s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// `count` async invocations of `path`, each posted again after a 503 (a
/// publish that found no leader through a failover); their ids.
fn post_async_through_failover(
    gateway: std::net::SocketAddr,
    path: &str,
    count: usize,
) -> Vec<String> {
    (0..count)
        .map(|_| {
            eventually("a 202", Duration::from_secs(60), || {
                let (status, body) = http_post(gateway, path)?;
                if status == 503 {
                    thread::sleep(Duration::from_millis(200));
                    return None;
                }
                assert_eq!(status, 202, "{body}");
                let accepted: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                Some(accepted["id"].as_str().expect("an id").to_owned())
            })
        })
        .collect()
}

/// On a three-server NATS cluster with an R3 layout, a surge scales up to
/// `maxReplicas` and no further, is served whole, and scales back to zero
/// while the function's consumer leader is SIGKILLed mid-surge (and
/// started again): the depth the autoscaler reads after the move is the
/// new leader's, neither lost nor stale.
#[test]
fn a_surge_scales_to_max_replicas_and_back_while_the_consumer_leader_moves() {
    let mut nats = NatsCluster::start(3);
    let url = nats.url();
    let sluice = Sluice::start();
    let _operator = sluice.operator(
        "op-1",
        15,
        &[
            "--autoscale-interval",
            "1s",
            "--nats",
            &url,
            "--stream-replicas",
            "3",
        ],
    );
    let (_gateway, gateway) = sluice.gateway_on(&url, &["--own-layout=false"]);
    let kubelet = sluice.kubelet(Duration::from_secs(1));
    let deployment = surge_at_zero(&sluice, &kubelet);
    let before_surge = kubelet.replica_history("default", deployment).len();
    let leader = consumer_leader(&url, "surge");

    let posters: Vec<_> = (0..10)
        .map(|_| {
            thread::spawn(move || {
                post_async_through_failover(gateway, "/async/fn/default/surge/sleep/100", 50)
            })
        })
        .collect();
    // Mid-surge: scaled up from zero, the queue still deep.
    eventually("scaling up", Duration::from_secs(60), || {
        (kubelet.replica_history("default", deployment)[before_surge..]
            .iter()
            .any(|&n| n > 1))
        .then_some(())
    });
    eprintln!("SIGKILL n{leader}, the consumer's leader");
    nats.servers[leader].kill();
    thread::sleep(Duration::from_secs(3));
    nats.servers[leader].restart();
    nats.wait_healthy();

    served_up_to_five_and_back_to_zero(posters, gateway, &kubelet, deployment, before_surge);
    eventually("the status at zero", Duration::from_secs(30), || {
        let desired = sluice.field("default", "surge", "{.status.desiredReplicas}");
        let depth = sluice.field("default", "surge", "{.status.queueDepth}");
        (desired == "0" && depth == "0").then_some(())
    });
}

/// On a three-server NATS cluster, the autoscaler's wake subscription
/// outlives a restart of every server (one after another, so whichever
/// the operator is connected to): a first invocation at zero still
/// scales the function up without waiting for a tick.
#[test]
fn a_wake_at_zero_outlives_a_restart_of_every_nats_server() {
    let mut nats = NatsCluster::start(3);
    let url = nats.url();
    let sluice = Sluice::start();
    let on_cluster = ["--nats", &url, "--stream-replicas", "3"];
    let (_gateway, gateway) = sluice.gateway_on(&url, &["--own-layout=false"]);
    let kubelet = sluice.kubelet(Duration::ZERO);
    let operator = woken_at_zero(&sluice, &kubelet, &on_cluster);
    for i in 0..nats.servers.len() {
        eprintln!("restarting n{i}");
        nats.servers[i].restart();
        nats.wait_healthy();
    }
    woken_by_a_call(gateway, &operator);
}
