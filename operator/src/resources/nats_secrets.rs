//! The NATS credentials and TLS files of dedicated runtimes: which Secrets
//! their pods mount, where, and the runtime flags that point at them.

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
    /// The runtime flag naming the secret file, and the Secret key (the
    /// file's name) it reads.
    fn file_flag(self) -> (&'static str, &'static str) {
        match self {
            Self::UserPassword => ("--nats-password-file", "password"),
            Self::Token => ("--nats-token-file", "token"),
            Self::Nkey => ("--nats-nkey-file", "nkey"),
            Self::Creds => ("--nats-creds-file", "creds"),
        }
    }
}

/// Secrets holding the NATS credentials and TLS files of dedicated
/// runtimes, mounted as files where the chart mounts the pool's. A pod
/// mounts Secrets of its own namespace only, so each must exist, under
/// these names, in every namespace with a dedicated function. All unset
/// by default.
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

const NATS_AUTH_DIR: &str = "/etc/sluice/nats-auth";
const NATS_CA_DIR: &str = "/etc/sluice/nats-ca";
const NATS_CLIENT_DIR: &str = "/etc/sluice/nats-client";

impl RuntimeNatsSecrets {
    /// The names of the Secrets a dedicated runtime's pod mounts.
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
            let (flag, key) = method.file_flag();
            args.push(format!("{flag}={NATS_AUTH_DIR}/{key}"));
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

    pub(super) fn env(&self) -> Option<EnvVar> {
        let Some((NatsAuthMethod::UserPassword, secret)) = &self.auth else {
            return None;
        };
        Some(EnvVar {
            name: "SLUICE_NATS_USER".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: "user".into(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        })
    }

    /// Volumes and where they are mounted.
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
        if let Some((_, name)) = &self.auth {
            volumes.push(secret("nats-auth", name, NATS_AUTH_DIR, None));
        }
        if let Some(name) = &self.ca {
            volumes.push(secret("nats-ca", name, NATS_CA_DIR, Some("ca.crt")));
        }
        if let Some(name) = &self.client_cert {
            volumes.push(secret("nats-client", name, NATS_CLIENT_DIR, None));
        }
        volumes
    }
}
