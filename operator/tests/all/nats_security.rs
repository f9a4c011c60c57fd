//! The operator, gateway and runtime against a nats-server that requires
//! TLS with client certificates and gives each part only the permissions
//! of `charts/sluice/files/nats-permissions.conf`.

use crate::support::{Sluice, example, http_post, wait_answer};

#[test]
fn with_credentials_tls_and_the_documented_permissions_a_function_is_served_and_removed() {
    let sluice = Sluice::start_secure();
    let operator = sluice.operator("op-1", 15, &[]);
    let (gateway_process, gateway) = sluice.gateway();
    let runtime = sluice.runtime();

    sluice.component_config_map("hello");
    sluice.apply(&example("hello"));
    let ready = (0..600).any(|_| {
        let ready = sluice
            .condition("default", "hello", "Ready")
            .is_some_and(|(status, _, _)| status == "True");
        if !ready {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        ready
    });
    assert!(
        ready,
        "hello is not Ready in 60s; the operator:\n{}",
        operator.log()
    );
    wait_answer(gateway, "/fn/default/hello/", 200, "Hello from Sluice!");
    let (status, body) =
        http_post(gateway, "/async/fn/default/hello/").expect("the gateway answers");
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    wait_answer(
        gateway,
        &format!("/invocations/{id}?wait=5s"),
        200,
        r#""state":"succeeded""#,
    );

    // Deleting it unpublishes it, deletes its consumer and purges its queue.
    sluice.cluster.kubectl_ok(&[
        "delete",
        "fn",
        "hello",
        "-n",
        "default",
        "--wait=true",
        "--timeout=60s",
    ]);
    wait_answer(gateway, "/fn/default/hello/", 404, "unknown_function");
    // Queue depths were read every second (the default tick) all along.
    for (part, process) in [
        ("operator", &operator),
        ("gateway", &gateway_process),
        ("runtime", &runtime),
    ] {
        let log = process.log();
        assert!(
            !log.contains("NATS refused a permission"),
            "the {part} was refused a subject:\n{log}"
        );
    }
}
