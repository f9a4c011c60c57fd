//! The operator stopped hard, restarted, and replicated: state converges
//! from the cluster, and exactly one replica reconciles.

use std::time::{Duration, Instant};

use crate::support::{OPERATOR_NAMESPACE, Sluice, eventually, example, wait_answer};

fn lease_holder(sluice: &Sluice) -> Option<String> {
    let output = sluice.cluster.kubectl_with(
        &[
            "get",
            "lease",
            "sluice-operator",
            "-n",
            OPERATOR_NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        "",
    );
    let holder = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !holder.is_empty()).then_some(holder)
}

#[test]
fn a_killed_operator_converges_on_restart_and_cleans_up_what_was_deleted_meanwhile() {
    let sluice = Sluice::start();
    let mut first = sluice.operator("op-1", 3, &[]);
    let (_gateway, gateway) = sluice.gateway();
    let _runtime = sluice.runtime();
    sluice.component_config_map("hello");
    sluice.component_config_map("echo");
    sluice.apply(&example("hello"));
    sluice.wait_ready("default", "hello", "True", "Ready");
    wait_answer(gateway, "/fn/default/hello/", 200, "Hello from Sluice!");

    first.kill();
    // While no operator runs: hello is deleted (its finalizer holds it),
    // echo is created.
    sluice
        .cluster
        .kubectl_ok(&["delete", "fn", "hello", "-n", "default", "--wait=false"]);
    sluice.apply(&example("echo"));
    let deleting = sluice.field("default", "hello", "{.metadata.deletionTimestamp}");
    assert!(!deleting.is_empty(), "hello waits for its cleanup");

    let _second = sluice.operator("op-2", 3, &[]);
    sluice.wait_ready("default", "echo", "True", "Ready");
    eventually("hello deleted", Duration::from_secs(60), || {
        let output = sluice
            .cluster
            .kubectl_with(&["get", "fn", "hello", "-n", "default"], "");
        (!output.status.success()).then_some(())
    });
    wait_answer(gateway, "/fn/default/hello/", 404, "unknown_function");
    wait_answer(gateway, "/fn/default/echo/x", 200, "");
}

#[test]
fn two_operators_elect_one_leader_and_a_standby_takes_over_when_it_dies() {
    let sluice = Sluice::start();
    let lease = 3;
    let mut a = sluice.operator("op-a", lease, &[]);
    let mut b = sluice.operator("op-b", lease, &[]);
    let leader = eventually("a leader", Duration::from_secs(60), || {
        lease_holder(&sluice)
    });
    sluice.component_config_map("hello");
    sluice.apply(&example("hello"));
    sluice.wait_ready("default", "hello", "True", "Ready");
    let (dead, standby) = if leader == "op-a" {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    assert!(
        !standby.log().contains("leading: reconciling"),
        "the standby reconciled while the other led:\n{}",
        standby.log()
    );

    dead.kill();
    let killed = Instant::now();
    sluice.component_config_map("echo");
    sluice.apply(&example("echo"));
    sluice.wait_ready("default", "echo", "True", "Ready");
    eprintln!(
        "a Function applied after the leader's SIGKILL was Ready {:.1}s later (Lease duration {lease}s)",
        killed.elapsed().as_secs_f64()
    );
    let successor = lease_holder(&sluice).expect("a new leader");
    assert_ne!(successor, leader);
    assert!(
        standby.log().contains("leading: reconciling"),
        "{}",
        standby.log()
    );
}
