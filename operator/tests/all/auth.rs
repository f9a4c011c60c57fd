//! `spec.auth.apiKeys` under the operator: the Secret's values hashed into
//! the registry (never stored there), a missing or weak Secret reported on
//! the Function, and a changed Secret served at once.

use std::time::Duration;

use sluice_api::auth::token_digest;
use sluice_api::names::FunctionRef;

use crate::support::{Sluice, eventually, example};
use sluice_testing::http::get_with;

const FIRST: &str = "first-key-0123456789abcdef0123456789abcdef";
const SECOND: &str = "second-key-0123456789abcdef0123456789abcdef";

fn secret(sluice: &Sluice, value: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: secured-echo-keys, namespace: default }}\nstringData: {{ ci: \"{value}\" }}\n"
    );
    sluice.apply(&yaml);
}

/// The registry entry of default/secured-echo, as NATS holds it.
fn registry_entry(sluice: &Sluice) -> String {
    let url = sluice.nats.url.clone();
    let key = FunctionRef::new("default", "secured-echo")
        .unwrap()
        .registry_key();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let client = async_nats::connect(&url).await.unwrap();
            let kv = async_nats::jetstream::new(client)
                .get_key_value("sluice-functions")
                .await
                .unwrap();
            let value = kv.get(&key).await.unwrap().unwrap_or_default();
            String::from_utf8_lossy(&value).into_owned()
        })
}

fn status_with(addr: std::net::SocketAddr, key: Option<&str>) -> Option<u16> {
    let header = key.map(|k| format!("X-Api-Key: {k}"));
    let headers: Vec<&str> = header.iter().map(String::as_str).collect();
    get_with(addr, "/fn/default/secured-echo/", &headers).map(|(s, _)| s)
}

#[test]
fn api_keys_come_from_a_secret_hashed_and_followed() {
    let sluice = Sluice::start();
    let _operator = sluice.operator("op-1", 15, &[]);
    let (_gateway, gateway) = sluice.gateway();
    let _runtime = sluice.runtime();
    sluice.component_config_map("echo");

    // No Secret yet: registered closed, and the Function says why.
    sluice.apply(&example("secured-echo"));
    let message = sluice.wait_ready("default", "secured-echo", "False", "ApiKeySecretNotFound");
    assert!(message.contains("default/secured-echo-keys"), "{message}");
    eventually("the reason as an Event", Duration::from_secs(30), || {
        let reasons = sluice.event_reasons("default", "secured-echo");
        reasons
            .iter()
            .any(|r| r == "ApiKeySecretNotFound")
            .then_some(())
    });
    eventually("refused without a Secret", Duration::from_secs(60), || {
        (status_with(gateway, Some(FIRST))? == 401).then_some(())
    });

    // A key too short to be hashed unsalted is refused, naming it.
    secret(&sluice, "short");
    let message = sluice.wait_ready("default", "secured-echo", "False", "ApiKeyTooShort");
    assert!(message.contains("\"ci\""), "{message}");

    secret(&sluice, FIRST);
    sluice.wait_ready("default", "secured-echo", "True", "Ready");
    eventually("served with the key", Duration::from_secs(60), || {
        (status_with(gateway, Some(FIRST))? == 200).then_some(())
    });
    assert_eq!(status_with(gateway, None), Some(401));
    let entry = registry_entry(&sluice);
    assert!(entry.contains(&token_digest(FIRST.as_bytes())), "{entry}");
    assert!(
        !entry.contains(FIRST),
        "the key itself reached NATS: {entry}"
    );

    // Rotated: the old key is refused well before the operator's resync.
    secret(&sluice, SECOND);
    eventually("the old key refused", Duration::from_secs(30), || {
        (status_with(gateway, Some(FIRST))? == 401).then_some(())
    });
    assert_eq!(status_with(gateway, Some(SECOND)), Some(200));
}
