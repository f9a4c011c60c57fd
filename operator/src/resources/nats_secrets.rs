//! The NATS credentials and TLS files of dedicated runtimes: which Secrets
//! their pods take them from, and the runtime flags that point at them.
//!
//! Credentials come through the environment (`valueFrom.secretKeyRef`),
//! not a Secret volume: the kubelet resolves those as it creates the
//! container, while a pod with any volume starts only once the kubelet's
//! volume manager has seen it mounted, which it checks every 300 ms after
//! a first look (`podAttachAndMountRetryInterval`), so about 300 ms later
//! on every start from zero. TLS files (the CA, the client certificate)
//! are still mounted: the NATS client reads them only from files.

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, KeyToPath, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};

/// How a dedicated runtime authenticates to NATS, named as the chart's
/// `nats.external.auth.method`; each reads its secret from the key of the
/// same name (user and password from `user` and `password`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatsAuthMethod {
    UserPassword,
    Token,
    Nkey,
    Creds,
}

impl std::str::FromStr for NatsAuthMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "userPassword" => Ok(Self::UserPassword),
            "token" => Ok(Self::Token),
            "nkey" => Ok(Self::Nkey),
            "creds" => Ok(Self::Creds),
            other => Err(format!(
                "{other:?} is not a NATS auth method: userPassword, token, nkey or creds"
            )),
        }
    }
}

impl NatsAuthMethod {
    /// The runtime flag naming the environment variable that holds the
    /// secret, that variable, and the Secret key it is filled from.
    fn env_flag(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::UserPassword => ("--nats-password-env", "SLUICE_NATS_PASSWORD", "password"),
            Self::Token => ("--nats-token-env", "SLUICE_NATS_TOKEN", "token"),
            Self::Nkey => ("--nats-nkey-env", "SLUICE_NATS_NKEY", "nkey"),
            Self::Creds => ("--nats-creds-env", "SLUICE_NATS_CREDS", "creds"),
        }
    }
}

/// Secrets holding the NATS credentials and TLS files of dedicated
/// runtimes: the credentials put into the environment, the TLS files
/// mounted where the chart mounts the pool's. A pod takes Secrets of its
/// own namespace only, so each must exist, under these names, in every
/// namespace with a dedicated function. All unset by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeNatsSecrets {
    /// The method and the Secret holding its credentials.
    pub auth: Option<(NatsAuthMethod, String)>,
    /// A Secret with `ca.crt`, the CA of the server's certificate.
    pub ca: Option<String>,
    /// A `kubernetes.io/tls` Secret: the client certificate (mutual TLS).
    pub client_cert: Option<String>,
    /// Refuse plain text without the two above too.
    pub tls_required: bool,
}

const NATS_CA_DIR: &str = "/etc/sluice/nats-ca";
const NATS_CLIENT_DIR: &str = "/etc/sluice/nats-client";

impl RuntimeNatsSecrets {
    /// The names of the Secrets a dedicated runtime's pod uses.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.auth
            .iter()
            .map(|(_, name)| name.as_str())
            .chain(self.ca.as_deref())
            .chain(self.client_cert.as_deref())
    }

    pub(super) fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some((method, _)) = self.auth {
            let (flag, var, _) = method.env_flag();
            args.push(format!("{flag}={var}"));
        }
        if self.ca.is_some() {
            args.push(format!("--nats-ca-file={NATS_CA_DIR}/ca.crt"));
        }
        if self.client_cert.is_some() {
            args.push(format!("--nats-cert-file={NATS_CLIENT_DIR}/tls.crt"));
            args.push(format!("--nats-key-file={NATS_CLIENT_DIR}/tls.key"));
        }
        if self.tls_required {
            args.push("--nats-tls-required".into());
        }
        args
    }

    /// The environment filled from the credentials' Secret: the user
    /// name (`SLUICE_NATS_USER`) and the secret the method needs.
    pub(super) fn env(&self) -> Vec<EnvVar> {
        let Some((method, secret)) = &self.auth else {
            return Vec::new();
        };
        let from_secret = |name: &str, key: &str| EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: key.into(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        };
        let mut env = Vec::new();
        if *method == NatsAuthMethod::UserPassword {
            env.push(from_secret("SLUICE_NATS_USER", "user"));
        }
        let (_, var, key) = method.env_flag();
        env.push(from_secret(var, key));
        env
    }

    /// Volumes and where they are mounted: the TLS files only.
    pub(super) fn volumes(&self) -> Vec<(Volume, VolumeMount)> {
        let secret = |volume: &str, name: &str, dir: &str, only: Option<&str>| {
            (
                Volume {
                    name: volume.into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(name.to_owned()),
                        items: only.map(|key| {
                            vec![KeyToPath {
                                key: key.into(),
                                path: key.into(),
                                ..KeyToPath::default()
                            }]
                        }),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                VolumeMount {
                    name: volume.into(),
                    mount_path: dir.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
            )
        };
        let mut volumes = Vec::new();
        if let Some(name) = &self.ca {
            volumes.push(secret("nats-ca", name, NATS_CA_DIR, Some("ca.crt")));
        }
        if let Some(name) = &self.client_cert {
            volumes.push(secret("nats-client", name, NATS_CLIENT_DIR, None));
        }
        volumes
    }
}
