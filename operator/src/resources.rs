//! Pure builders of the Kubernetes objects the operator owns: the
//! Deployment of a `placement: dedicated` function, running
//! `sluice-runtime --function <ns>/<name>`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_api::egress::{Cidr, EgressPolicy};
use sluice_api::names::FunctionRef;

mod nats_secrets;
pub use nats_secrets::{NatsAuthMethod, RuntimeNatsSecrets};

/// Label every object the operator makes carries, with this value.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "sluice-operator");
/// Whether `object` is controlled by the object whose uid is `uid` (its
/// owner reference with `controller: true`): a Deployment of a dedicated
/// name that a Function does not control is neither scaled, taken over
/// nor deleted.
pub fn controlled_by(object: &impl kube::Resource, uid: &str) -> bool {
    use kube::ResourceExt as _;
    object
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Label naming the function a dedicated runtime serves.
pub const FUNCTION_LABEL: &str = "sluice.dev/function";
/// Port of the runtime's `/healthz`, `/readyz` and `/metrics`.
pub const RUNTIME_ADMIN_PORT: i32 = 9091;
/// The non-root user of the Sluice images.
const RUNTIME_USER: i64 = 65532;

/// How dedicated runtimes run, from the operator's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeTemplate {
    /// Image of `sluice-runtime`.
    pub image: String,
    /// NATS URL as the runtime pods reach it.
    pub nats_url: String,
    /// Requests (and memory limit) of each runtime container, as Kubernetes
    /// quantities, e.g. `100m` and `128Mi`.
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// The runtime's egress allow- and deny-lists (`--egress-allow`,
    /// `--egress-deny`), passed as `SLUICE_EGRESS_ALLOW` and
    /// `SLUICE_EGRESS_DENY`. Default: empty (public addresses only).
    pub egress: EgressPolicy,
    /// NATS credentials and TLS of the runtimes. Default: none.
    pub nats_secrets: RuntimeNatsSecrets,
}

/// The name of a function's dedicated Deployment: `<name>-runtime`, cut
/// and suffixed with a hash of the name when that would not fit a DNS
/// label (63 characters), so its pods' names and labels stay valid.
pub fn dedicated_name(function: &FunctionRef) -> String {
    let name = format!("{}-runtime", function.name);
    if name.len() <= 63 {
        return name;
    }
    let hash = fnv(function.name.as_bytes());
    let kept = function.name[..50].trim_end_matches('-');
    format!("{kept}-{hash:08x}-rt")
}

/// FNV-1a, 32 bits: a stable short hash (std's hasher may change between
/// Rust releases, and this name must not).
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The labels of a function's dedicated runtime pods; also its selector.
pub fn dedicated_labels(function: &FunctionRef) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sluice-runtime".into()),
        ("app.kubernetes.io/part-of".into(), "sluice".into()),
        (FUNCTION_LABEL.into(), function.name.clone()),
    ])
}

/// `status.selector` of a dedicated function: its pods' labels as a
/// label-selector string.
pub fn dedicated_selector(function: &FunctionRef) -> String {
    dedicated_labels(function)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The dedicated runtime's environment: where NATS is and which addresses
/// its callbacks and outbound HTTP may reach.
fn runtime_env(template: &RuntimeTemplate) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    let joined = |list: &[Cidr]| {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut env = vec![var("SLUICE_NATS_URL", template.nats_url.clone())];
    for (name, list) in [
        ("SLUICE_EGRESS_ALLOW", &template.egress.allow),
        ("SLUICE_EGRESS_DENY", &template.egress.deny),
    ] {
        if !list.is_empty() {
            env.push(var(name, joined(list)));
        }
    }
    env
}

/// The Deployment of a dedicated function, owned by it (so the garbage
/// collector removes it with the Function). It sets no `replicas`: the
/// autoscaler owns that field, and a server-side apply of this object must
/// never take it back.
pub fn dedicated_deployment(
    function: &FunctionRef,
    owner: OwnerReference,
    template: &RuntimeTemplate,
) -> Deployment {
    let labels = dedicated_labels(function);
    let mut object_labels = labels.clone();
    object_labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    object_labels.insert(
        "app.kubernetes.io/component".into(),
        "function-runtime".into(),
    );
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let quantity = |q: &str| Quantity(q.to_owned());
    let mut args = vec![
        "--function".into(),
        function.to_string(),
        "--admin-listen".into(),
        format!("0.0.0.0:{RUNTIME_ADMIN_PORT}"),
        // No folder for precompiled components: the root filesystem is
        // read-only, and a volume would hold the pod's start back by about
        // 300 ms (the kubelet's volume manager polls for its mount).
        // Components come from the shared bucket into memory.
        "--artifacts-in-memory".into(),
        "--log-json".into(),
    ];
    args.extend(template.nats_secrets.args());
    let env = runtime_env(template)
        .into_iter()
        .chain(template.nats_secrets.env())
        .collect();
    // Only for NATS TLS files: each volume delays the pod's start.
    let (volumes, volume_mounts): (Vec<Volume>, Vec<VolumeMount>) =
        template.nats_secrets.volumes().into_iter().unzip();
    let volumes = (!volumes.is_empty()).then_some(volumes);
    let volume_mounts = (!volume_mounts.is_empty()).then_some(volume_mounts);
    let container = Container {
        name: "runtime".into(),
        image: Some(template.image.clone()),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("admin".into()),
            container_port: RUNTIME_ADMIN_PORT,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity(&template.cpu_request)),
                ("memory".into(), quantity(&template.memory_request)),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                quantity(&template.memory_limit),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts,
        ..Container::default()
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(dedicated_name(function)),
            namespace: Some(function.namespace.clone()),
            labels: Some(object_labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    // A runtime talks only to NATS.
                    automount_service_account_token: Some(false),
                    // Within it a stopping runtime finishes what it holds
                    // and delivers its callbacks (20 s).
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUNTIME_USER),
                        run_as_group: Some(RUNTIME_USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes,
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> RuntimeTemplate {
        RuntimeTemplate {
            image: "registry.local/sluice-runtime:0.1.0".into(),
            nats_url: "nats://nats:4222".into(),
            cpu_request: "100m".into(),
            memory_request: "128Mi".into(),
            memory_limit: "512Mi".into(),
            egress: EgressPolicy::default(),
            nats_secrets: RuntimeNatsSecrets::default(),
        }
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "sluice.dev/v1alpha1".into(),
            kind: "Function".into(),
            name: "echo".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn a_dedicated_deployment_runs_one_function_locked_down_and_leaves_replicas_alone() {
        let function: FunctionRef = "team-a/echo".parse().unwrap();
        let deployment = dedicated_deployment(&function, owner(), &template());
        let json = serde_json::to_value(&deployment).unwrap();
        assert_eq!(json["metadata"]["name"], "echo-runtime");
        assert_eq!(json["metadata"]["namespace"], "team-a");
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "Function");
        assert!(json["spec"].get("replicas").is_none(), "{json}");
        let pod = &json["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let container = &pod["containers"][0];
        assert_eq!(container["args"][1], "team-a/echo");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(
            container["securityContext"]["capabilities"]["drop"][0],
            "ALL"
        );
        assert_eq!(
            json["spec"]["selector"]["matchLabels"],
            json["spec"]["template"]["metadata"]["labels"]
        );
        assert_eq!(
            dedicated_selector(&function),
            "app.kubernetes.io/name=sluice-runtime,app.kubernetes.io/part-of=sluice,sluice.dev/function=echo"
        );
    }

    #[test]
    fn dedicated_runtimes_get_the_egress_lists_only_when_set() {
        let function: FunctionRef = "team-a/echo".parse().unwrap();
        let env = |template: &RuntimeTemplate| {
            let deployment = dedicated_deployment(&function, owner(), template);
            let json = serde_json::to_value(&deployment).unwrap();
            json["spec"]["template"]["spec"]["containers"][0]["env"].clone()
        };
        let plain = env(&template());
        assert_eq!(plain.as_array().unwrap().len(), 1, "{plain}");
        let mut listed = template();
        listed.egress = EgressPolicy::parse(&["10.1.0.0/16", "192.168.5.5"], &[]).unwrap();
        let listed = env(&listed);
        assert_eq!(listed[1]["name"], "SLUICE_EGRESS_ALLOW");
        assert_eq!(listed[1]["value"], "10.1.0.0/16,192.168.5.5/32");
        assert!(listed.get(2).is_none(), "{listed}");
    }

    #[test]
    fn dedicated_runtimes_take_the_nats_secrets_they_are_given_without_mounting_credentials() {
        let function: FunctionRef = "team-a/echo".parse().unwrap();
        let plain =
            serde_json::to_value(dedicated_deployment(&function, owner(), &template())).unwrap();
        let pod = &plain["spec"]["template"]["spec"];
        // No volume at all: a pod with one starts ~300 ms later.
        assert!(pod.get("volumes").is_none(), "{pod}");
        assert!(pod["containers"][0].get("volumeMounts").is_none(), "{pod}");
        assert_eq!(pod["containers"][0]["env"].as_array().unwrap().len(), 1);
        assert!(
            plain["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "--artifacts-in-memory"),
            "{pod}"
        );

        let mut secured = template();
        secured.nats_secrets = RuntimeNatsSecrets {
            auth: Some((NatsAuthMethod::UserPassword, "nats-runtime".into())),
            ca: Some("nats-ca".into()),
            client_cert: Some("nats-client".into()),
            tls_required: true,
        };
        let json =
            serde_json::to_value(dedicated_deployment(&function, owner(), &secured)).unwrap();
        let pod = &json["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args[6..],
            [
                "--nats-password-env=SLUICE_NATS_PASSWORD",
                "--nats-ca-file=/etc/sluice/nats-ca/ca.crt",
                "--nats-cert-file=/etc/sluice/nats-client/tls.crt",
                "--nats-key-file=/etc/sluice/nats-client/tls.key",
                "--nats-tls-required",
            ]
        );
        assert_eq!(container["env"][1]["name"], "SLUICE_NATS_USER");
        assert_eq!(
            container["env"][1]["valueFrom"]["secretKeyRef"],
            serde_json::json!({ "name": "nats-runtime", "key": "user" })
        );
        assert_eq!(container["env"][2]["name"], "SLUICE_NATS_PASSWORD");
        assert_eq!(
            container["env"][2]["valueFrom"]["secretKeyRef"],
            serde_json::json!({ "name": "nats-runtime", "key": "password" })
        );
        let mounted: Vec<(&str, &str)> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["mountPath"].as_str().unwrap(),
                )
            })
            .collect();
        // The credentials come through the environment; only the TLS
        // files, which the NATS client reads from files, are mounted.
        assert_eq!(
            mounted,
            [
                ("nats-ca", "/etc/sluice/nats-ca"),
                ("nats-client", "/etc/sluice/nats-client"),
            ]
        );
        assert_eq!(pod["volumes"][0]["secret"]["items"][0]["key"], "ca.crt");
        assert_eq!(pod["volumes"][1]["secret"]["secretName"], "nats-client");
        assert_eq!(pod["volumes"].as_array().unwrap().len(), 2);

        // Every method: its secret from its key, named by its flag.
        for (method, flag, var, key) in [
            (
                NatsAuthMethod::Token,
                "--nats-token-env",
                "SLUICE_NATS_TOKEN",
                "token",
            ),
            (
                NatsAuthMethod::Nkey,
                "--nats-nkey-env",
                "SLUICE_NATS_NKEY",
                "nkey",
            ),
            (
                NatsAuthMethod::Creds,
                "--nats-creds-env",
                "SLUICE_NATS_CREDS",
                "creds",
            ),
        ] {
            let mut only_auth = template();
            only_auth.nats_secrets.auth = Some((method, "s".into()));
            let json =
                serde_json::to_value(dedicated_deployment(&function, owner(), &only_auth)).unwrap();
            let pod = &json["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            assert_eq!(container["args"][6], format!("{flag}={var}"), "{container}");
            assert_eq!(container["env"][1]["name"], var);
            assert_eq!(
                container["env"][1]["valueFrom"]["secretKeyRef"],
                serde_json::json!({ "name": "s", "key": key })
            );
            assert!(container["env"].get(2).is_none(), "{container}");
            assert!(pod.get("volumes").is_none(), "{pod}");
        }
        assert_eq!("nkey".parse::<NatsAuthMethod>(), Ok(NatsAuthMethod::Nkey));
        assert!("password".parse::<NatsAuthMethod>().is_err());
    }

    #[test]
    fn long_names_still_make_a_dns_label() {
        let long = "a".repeat(63);
        let function = FunctionRef::new("default", &long).unwrap();
        let name = dedicated_name(&function);
        assert!(name.len() <= 63, "{name}");
        assert!(sluice_api::names::is_dns_label(&name), "{name}");
        let other = FunctionRef::new("default", &format!("{}b", "a".repeat(62))).unwrap();
        assert_ne!(dedicated_name(&other), name);
        assert_eq!(
            dedicated_name(&"default/echo".parse().unwrap()),
            "echo-runtime"
        );
    }
}
