//! `spec.module.configMap`: a component stored in a ConfigMap key.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use sluice_api::ConfigMapKey;

use super::ModuleError;
use super::error::kubernetes_api;

/// Reads the ConfigMap `source.name` in `namespace` and takes its key.
pub(crate) async fn fetch(
    kube: &kube::Client,
    namespace: &str,
    source: &ConfigMapKey,
) -> Result<Vec<u8>, ModuleError> {
    let api = kube::Api::<ConfigMap>::namespaced(kube.clone(), namespace);
    match api.get_opt(&source.name).await {
        Ok(Some(config_map)) => key_bytes(config_map, namespace, source),
        Ok(None) => Err(ModuleError::ConfigMapNotFound {
            namespace: namespace.to_owned(),
            name: source.name.clone(),
            key: source.key.clone(),
        }),
        Err(e) => Err(kubernetes_api(
            "ConfigMap",
            "configmaps",
            namespace,
            &source.name,
            e,
        )),
    }
}

/// The bytes under `source.key`: from `binaryData` (which the API carries
/// base64-encoded and k8s-openapi decodes), or else from `data` as UTF-8
/// text. `kubectl create configmap --from-file` puts a file that is not
/// UTF-8 under `binaryData`, and a component never is.
pub(crate) fn key_bytes(
    config_map: ConfigMap,
    namespace: &str,
    source: &ConfigMapKey,
) -> Result<Vec<u8>, ModuleError> {
    let ConfigMap {
        mut binary_data,
        mut data,
        ..
    } = config_map;
    if let Some(bytes) = binary_data.as_mut().and_then(|d| d.remove(&source.key)) {
        return Ok(bytes.0);
    }
    if let Some(text) = data.as_mut().and_then(|d| d.remove(&source.key)) {
        return Ok(text.into_bytes());
    }
    let present: BTreeSet<String> = binary_data
        .iter()
        .flat_map(|d| d.keys())
        .chain(data.iter().flat_map(|d| d.keys()))
        .cloned()
        .collect();
    Err(ModuleError::ConfigMapKeyNotFound {
        namespace: namespace.to_owned(),
        name: source.name.clone(),
        key: source.key.clone(),
        present: present.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn config_map(binary: &[(&str, &[u8])], text: &[(&str, &str)]) -> ConfigMap {
        let binary: BTreeMap<String, ByteString> = binary
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
            .collect();
        let text: BTreeMap<String, String> = text
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ConfigMap {
            binary_data: (!binary.is_empty()).then_some(binary),
            data: (!text.is_empty()).then_some(text),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_key_is_read_from_binary_data_then_data() {
        let key = |key: &str| ConfigMapKey {
            name: "hello-wasm".into(),
            key: key.into(),
        };
        // The bytes, or the message.
        type Expected<'a> = Result<&'a [u8], &'a str>;
        let cases: [(ConfigMap, &str, Expected); 6] = [
            (
                config_map(&[("hello.wasm", b"\0asm")], &[]),
                "hello.wasm",
                Ok(b"\0asm"),
            ),
            (
                config_map(&[], &[("hello.wasm", "text")]),
                "hello.wasm",
                Ok(b"text"),
            ),
            // binaryData wins: the API server refuses a key in both, but a
            // hand-made object could have it.
            (
                config_map(&[("k", b"binary")], &[("k", "text")]),
                "k",
                Ok(b"binary"),
            ),
            (
                config_map(&[("b.wasm", b"")], &[("a.txt", "")]),
                "hello.wasm",
                Err(
                    "ConfigMap ns/hello-wasm has no key \"hello.wasm\" in binaryData or data (it has a.txt, b.wasm)",
                ),
            ),
            (
                config_map(&[], &[]),
                "hello.wasm",
                Err(
                    "ConfigMap ns/hello-wasm has no key \"hello.wasm\" in binaryData or data (it has none)",
                ),
            ),
            (config_map(&[("e", b"")], &[]), "e", Ok(b"")),
        ];
        for (config_map, name, expected) in cases {
            match (key_bytes(config_map, "ns", &key(name)), expected) {
                (Ok(bytes), Ok(expected)) => assert_eq!(bytes, expected, "{name}"),
                (Err(e), Err(text)) => {
                    assert_eq!(e.reason(), "ConfigMapKeyNotFound");
                    assert_eq!(e.to_string(), text);
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
