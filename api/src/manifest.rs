//! Reading `Function` manifests from YAML, as `kubectl apply` would accept
//! them, with errors that name the document and the field.

use serde::{Deserialize, Serialize};

use crate::function::{API_VERSION, FunctionSpec, KIND};
use crate::names::{FunctionRef, is_dns_label};

/// A `Function` manifest as written in a YAML file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: FunctionSpec,
}

/// The part of `metadata` Sluice reads; other keys (labels, annotations)
/// are accepted and ignored, as Kubernetes would keep them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    /// Default: `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl FunctionManifest {
    pub fn function_ref(&self) -> FunctionRef {
        FunctionRef {
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
        }
    }
}

/// A manifest problem: which document (1-based) and which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("document {document}: {field}: {problem}")]
    Field {
        document: usize,
        field: String,
        problem: String,
    },
}

/// Parses every `Function` in a (multi-document) YAML text. Documents of
/// other kinds (a ConfigMap next to a Function, say) are skipped; empty
/// documents too.
pub fn parse_functions(yaml: &str) -> Result<Vec<FunctionManifest>, ManifestError> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let mut functions = Vec::new();
    for (index, doc) in documents.into_iter().enumerate() {
        let document = index + 1;
        let field_error = |field: &str, problem: String| ManifestError::Field {
            document,
            field: field.to_owned(),
            problem,
        };
        if doc.is_null() {
            continue;
        }
        if doc.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
            if doc.get("apiVersion").and_then(|v| v.as_str()) == Some(API_VERSION) {
                return Err(field_error("kind", format!("expected {KIND:?}")));
            }
            continue;
        }
        let manifest: FunctionManifest = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            field_error(&path, e.into_inner().to_string())
        })?;
        if manifest.api_version != API_VERSION {
            return Err(field_error(
                "apiVersion",
                format!("{:?} is not {API_VERSION:?}", manifest.api_version),
            ));
        }
        for (field, value) in [
            ("metadata.name", &manifest.metadata.name),
            ("metadata.namespace", &manifest.metadata.namespace),
        ] {
            if !is_dns_label(value) {
                return Err(field_error(
                    field,
                    format!(
                        "{value:?} must be a DNS label: lowercase letters, digits and '-', at most 63"
                    ),
                ));
            }
        }
        let function = FunctionRef::new(&manifest.metadata.namespace, &manifest.metadata.name)
            .map_err(|e| field_error("metadata", e.to_string()))?;
        manifest
            .spec
            .validate(&function)
            .map_err(|e| field_error(&e.field, e.problem))?;
        functions.push(manifest);
    }
    Ok(functions)
}

/// A `v1` `Secret` manifest, as local mode reads it for
/// `spec.auth.apiKeys`: the values of `data` (base64) and `stringData`
/// (plain, winning over `data` for the same key, as the API server merges
/// them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretManifest {
    pub namespace: String,
    pub name: String,
    pub data: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Parses every `v1` `Secret` in a (multi-document) YAML text; other
/// documents are skipped.
pub fn parse_secrets(yaml: &str) -> Result<Vec<SecretManifest>, ManifestError> {
    use base64::Engine as _;
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let mut secrets = Vec::new();
    for (index, doc) in documents.into_iter().enumerate() {
        if doc.get("kind").and_then(|k| k.as_str()) != Some("Secret")
            || doc.get("apiVersion").and_then(|v| v.as_str()) != Some("v1")
        {
            continue;
        }
        let field_error = |field: &str, problem: &str| ManifestError::Field {
            document: index + 1,
            field: field.to_owned(),
            problem: problem.to_owned(),
        };
        let metadata = &doc["metadata"];
        let name = metadata["name"]
            .as_str()
            .ok_or_else(|| field_error("metadata.name", "is required"))?;
        let namespace = metadata["namespace"].as_str().unwrap_or("default");
        let mut data = std::collections::BTreeMap::new();
        for (section, base64) in [("data", true), ("stringData", false)] {
            let Some(values) = doc.get(section).filter(|v| !v.is_null()) else {
                continue;
            };
            let values = values
                .as_object()
                .ok_or_else(|| field_error(section, "must be a map"))?;
            for (key, value) in values {
                let field = format!("{section}.{key}");
                let text = value
                    .as_str()
                    .ok_or_else(|| field_error(&field, "must be a string"))?;
                let bytes = if base64 {
                    base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|_| field_error(&field, "is not base64"))?
                } else {
                    text.as_bytes().to_vec()
                };
                data.insert(key.clone(), bytes);
            }
        }
        secrets.push(SecretManifest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            data,
        });
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello }
spec:
  module: { file: hello.wasm }
  timeout: 5s
  env: [ { name: GREETING, value: hi } ]
---
apiVersion: v1
kind: ConfigMap
metadata: { name: unrelated }
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: echo, namespace: tools, labels: { a: b } }
spec:
  module: { file: echo.wasm }
  triggers: { http: { path: /echo } }
"#;

    #[test]
    fn multi_document_files_yield_every_function() {
        let fns = parse_functions(GOOD).unwrap();
        let refs: Vec<String> = fns.iter().map(|f| f.function_ref().to_string()).collect();
        assert_eq!(refs, ["default/hello", "tools/echo"]);
        assert_eq!(fns[0].spec.timeout.to_string(), "5s");
        assert_eq!(fns[1].spec.triggers.http.as_ref().unwrap().path, "/echo");
    }

    fn error_of(yaml: &str) -> String {
        parse_functions(yaml).unwrap_err().to_string()
    }

    #[test]
    fn a_misspelt_field_is_named_with_its_path() {
        let err = error_of(
            "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec:\n  module: {file: a.wasm}\n  retry: {maxAttempt: 3}\n",
        );
        assert!(err.contains("document 1: spec.retry"), "{err}");
        assert!(err.contains("maxAttempt"), "{err}");
    }

    #[test]
    fn a_wrongly_typed_field_is_named_with_its_path() {
        let err = error_of(
            "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec:\n  module: {file: a.wasm}\n  timeout: soon\n",
        );
        assert!(err.contains("spec.timeout"), "{err}");
        assert!(err.contains("\"soon\""), "{err}");
    }

    #[test]
    fn semantic_problems_are_named_too() {
        let err = error_of(
            "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {name: Bad_Name}\nspec: {module: {file: a.wasm}}\n",
        );
        assert!(err.contains("metadata.name"), "{err}");
        let err = error_of(
            "apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec: {module: {file: a.wasm, oci: x}}\n",
        );
        assert!(err.contains("spec.module"), "{err}");
        let err = error_of(
            "apiVersion: sluice.dev/v1\nkind: Function\nmetadata: {name: a}\nspec: {module: {file: a.wasm}}\n",
        );
        assert!(err.contains("apiVersion"), "{err}");
    }

    #[test]
    fn secrets_merge_data_and_string_data() {
        let secrets = parse_secrets(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: tools}\ndata: {a: YWFh, b: YmJi}\nstringData: {b: plain}\n---\nkind: Secret\napiVersion: v2\nmetadata: {name: other}\n",
        )
        .unwrap();
        assert_eq!(secrets.len(), 1);
        assert_eq!(
            (secrets[0].namespace.as_str(), secrets[0].name.as_str()),
            ("tools", "keys")
        );
        assert_eq!(secrets[0].data["a"], b"aaa");
        assert_eq!(secrets[0].data["b"], b"plain");
        let err =
            parse_secrets("apiVersion: v1\nkind: Secret\nmetadata: {name: k}\ndata: {a: '%%'}\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("document 1: data.a: is not base64"), "{err}");
    }

    #[test]
    fn broken_yaml_is_reported_not_panicked_on() {
        assert!(error_of("spec: [unclosed").contains("not valid YAML"));
    }
}
