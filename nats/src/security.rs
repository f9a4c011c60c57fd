//! How a Sluice part proves itself to NATS and protects the connection:
//! one authentication method (user and password, token, NKey seed, or a
//! `.creds` file with a JWT and its seed) and TLS (a CA to trust, a client
//! certificate for mutual TLS). Everything is handed to async-nats'
//! own `ConnectOptions`; nothing here signs or encrypts by itself.
//!
//! Secrets are named by file or by environment variable, never given as
//! values, so they appear in no process listing: a mounted Kubernetes
//! Secret can be used as it is, and so can one Kubernetes puts into the
//! environment (`valueFrom.secretKeyRef`, which needs no volume, so the
//! kubelet starts the pod without waiting for volumes to mount). Both are
//! read at each [`crate::connect`], not when flags are parsed.

use std::path::{Path, PathBuf};

/// Where a secret is read from (at each connect): never the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file.
    File(PathBuf),
    /// An environment variable of this process, by name.
    Env(String),
}

/// How to authenticate; at most one method per connection (NATS accepts
/// one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// `user` with the password held in `password`.
    UserPassword {
        user: String,
        password: SecretSource,
    },
    /// The token held in `token`.
    Token { token: SecretSource },
    /// The NKey seed (`SU…`) held in `seed`; the server must know the
    /// matching public key.
    NKey { seed: SecretSource },
    /// A `.creds` file's content: a user JWT and its NKey seed, as `nsc`
    /// writes them (decentralised, operator-mode auth).
    Creds { creds: SecretSource },
}

/// TLS towards the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// PEM file of the CA(s) that signed the server's certificate. Default:
    /// none, so the system's roots are trusted.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate and key this client presents (mutual TLS). Default:
    /// none.
    pub client_cert: Option<ClientCert>,
    /// Refuse to talk without TLS. Default: false, but implied by
    /// `ca_file` and `client_cert` (a client given a CA must never fall
    /// back to plain text) and by a `tls://` URL.
    pub required: bool,
}

/// A client certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Everything about a connection's security. The default is none at all:
/// no credentials, TLS only if the URL or server asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    pub auth: Option<NatsAuth>,
    pub tls: NatsTls,
}

/// Why the security settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// Flags that do not go together; the message names them.
    #[error("{0}")]
    Conflict(String),
    /// A secret or certificate file could not be read.
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A secret holds nothing once trailing whitespace is removed.
    #[error("{flag} {from} is empty")]
    Empty { flag: &'static str, from: String },
    /// The environment variable naming a secret is not set (or not UTF-8).
    #[error("{flag} {var}: no such environment variable")]
    Env { flag: &'static str, var: String },
}

/// The command-line flags (and environment variables) of
/// [`NatsSecurity`], for every Sluice binary to flatten into its own
/// arguments. All are unset by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct NatsSecurityArgs {
    /// NATS user name; the password comes from --nats-password-file or
    /// --nats-password-env.
    #[arg(long, env = "SLUICE_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS password of --nats-user.
    #[arg(long, env = "SLUICE_NATS_PASSWORD_FILE", value_name = "FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// Environment variable holding the NATS password of --nats-user
    /// (e.g. filled from a Kubernetes Secret), instead of a file.
    #[arg(
        long,
        env = "SLUICE_NATS_PASSWORD_ENV",
        value_name = "VAR",
        conflicts_with = "nats_password_file"
    )]
    pub nats_password_env: Option<String>,
    /// File holding a NATS token.
    #[arg(long, env = "SLUICE_NATS_TOKEN_FILE", value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// Environment variable holding a NATS token, instead of a file.
    #[arg(
        long,
        env = "SLUICE_NATS_TOKEN_ENV",
        value_name = "VAR",
        conflicts_with = "nats_token_file"
    )]
    pub nats_token_env: Option<String>,
    /// File holding an NKey seed (SU...).
    #[arg(long, env = "SLUICE_NATS_NKEY_FILE", value_name = "FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// Environment variable holding an NKey seed, instead of a file.
    #[arg(
        long,
        env = "SLUICE_NATS_NKEY_ENV",
        value_name = "VAR",
        conflicts_with = "nats_nkey_file"
    )]
    pub nats_nkey_env: Option<String>,
    /// NATS .creds file (user JWT and NKey seed).
    #[arg(long, env = "SLUICE_NATS_CREDS_FILE", value_name = "FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// Environment variable holding a .creds file's content, instead of
    /// the file.
    #[arg(
        long,
        env = "SLUICE_NATS_CREDS_ENV",
        value_name = "VAR",
        conflicts_with = "nats_creds_file"
    )]
    pub nats_creds_env: Option<String>,
    /// PEM file of the CA that signed the NATS server's certificate
    /// (implies TLS). Default: the system's roots.
    #[arg(long, env = "SLUICE_NATS_CA_FILE", value_name = "FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --nats-key-file).
    #[arg(long, env = "SLUICE_NATS_CERT_FILE", value_name = "FILE")]
    pub nats_cert_file: Option<PathBuf>,
    /// PEM private key of --nats-cert-file.
    #[arg(long, env = "SLUICE_NATS_KEY_FILE", value_name = "FILE")]
    pub nats_key_file: Option<PathBuf>,
    /// Refuse to talk to NATS without TLS.
    #[arg(long, env = "SLUICE_NATS_TLS_REQUIRED", value_parser = clap::builder::BoolishValueParser::new())]
    pub nats_tls_required: bool,
}

impl NatsSecurityArgs {
    /// The settings these flags describe; fails, naming the flags, when
    /// they ask for two authentication methods or give half a pair
    /// (user without password, certificate without key).
    pub fn security(&self) -> Result<NatsSecurity, SecurityError> {
        let source = |file: &Option<PathBuf>, env: &Option<String>| {
            file.clone()
                .map(SecretSource::File)
                .or_else(|| env.clone().map(SecretSource::Env))
        };
        let password = source(&self.nats_password_file, &self.nats_password_env);
        let token = source(&self.nats_token_file, &self.nats_token_env);
        let nkey = source(&self.nats_nkey_file, &self.nats_nkey_env);
        let creds = source(&self.nats_creds_file, &self.nats_creds_env);
        let methods: Vec<&str> = [
            self.nats_user.as_ref().map(|_| "--nats-user"),
            token.as_ref().map(SecretSource::token_flag),
            nkey.as_ref().map(SecretSource::nkey_flag),
            creds.as_ref().map(SecretSource::creds_flag),
        ]
        .into_iter()
        .flatten()
        .collect();
        if methods.len() > 1 {
            return Err(SecurityError::Conflict(format!(
                "{} cannot be combined: NATS takes one authentication method",
                methods.join(" and ")
            )));
        }
        let auth = match (&self.nats_user, password, token, nkey, creds) {
            (Some(user), Some(password), ..) => Some(NatsAuth::UserPassword {
                user: user.clone(),
                password,
            }),
            (Some(_), None, ..) => {
                return Err(SecurityError::Conflict(
                    "--nats-user needs --nats-password-file or --nats-password-env".into(),
                ));
            }
            (None, Some(password), ..) => {
                return Err(SecurityError::Conflict(format!(
                    "{} needs --nats-user",
                    password.password_flag()
                )));
            }
            (None, None, Some(token), ..) => Some(NatsAuth::Token { token }),
            (None, None, None, Some(seed), _) => Some(NatsAuth::NKey { seed }),
            (None, None, None, None, Some(creds)) => Some(NatsAuth::Creds { creds }),
            (None, None, None, None, None) => None,
        };
        let client_cert = match (&self.nats_cert_file, &self.nats_key_file) {
            (Some(cert_file), Some(key_file)) => Some(ClientCert {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            }),
            (Some(_), None) => {
                return Err(SecurityError::Conflict(
                    "--nats-cert-file needs --nats-key-file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(SecurityError::Conflict(
                    "--nats-key-file needs --nats-cert-file".into(),
                ));
            }
            (None, None) => None,
        };
        Ok(NatsSecurity {
            auth,
            tls: NatsTls {
                ca_file: self.nats_ca_file.clone(),
                client_cert,
                required: self.nats_tls_required,
            },
        })
    }
}

impl NatsTls {
    /// Whether the client refuses plain text.
    pub fn is_required(&self) -> bool {
        self.required || self.ca_file.is_some() || self.client_cert.is_some()
    }
}

impl NatsSecurity {
    /// `options` with these credentials and TLS settings; reads the secret
    /// files now.
    pub async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, SecurityError> {
        options = match &self.auth {
            None => options,
            Some(NatsAuth::UserPassword { user, password }) => options.user_and_password(
                user.clone(),
                read_secret(password.password_flag(), password).await?,
            ),
            Some(NatsAuth::Token { token }) => {
                options.token(read_secret(token.token_flag(), token).await?)
            }
            Some(NatsAuth::NKey { seed }) => {
                options.nkey(read_secret(seed.nkey_flag(), seed).await?)
            }
            Some(NatsAuth::Creds {
                creds: SecretSource::File(file),
            }) => options
                .credentials_file(file)
                .await
                .map_err(|source| SecurityError::Read {
                    flag: "--nats-creds-file",
                    path: file.clone(),
                    source,
                })?,
            Some(NatsAuth::Creds { creds }) => {
                let flag = creds.creds_flag();
                let text = read_secret(flag, creds).await?;
                options
                    .credentials(&text)
                    .map_err(|source| SecurityError::Read {
                        flag,
                        path: creds.shown().into(),
                        source,
                    })?
            }
        };
        // async-nats reads the certificate files only while connecting, where
        // a missing one would look like a handshake failure: check first.
        if let Some(ca_file) = &self.tls.ca_file {
            check_readable("--nats-ca-file", ca_file).await?;
            options = options.add_root_certificates(ca_file.clone());
        }
        if let Some(cert) = &self.tls.client_cert {
            check_readable("--nats-cert-file", &cert.cert_file).await?;
            check_readable("--nats-key-file", &cert.key_file).await?;
            options = options.add_client_certificate(cert.cert_file.clone(), cert.key_file.clone());
        }
        Ok(options.require_tls(self.tls.is_required()))
    }
}

impl SecretSource {
    /// The flag that names this source: `file` for a file, `env` for an
    /// environment variable.
    fn flag(&self, file: &'static str, env: &'static str) -> &'static str {
        match self {
            Self::File(_) => file,
            Self::Env(_) => env,
        }
    }

    fn password_flag(&self) -> &'static str {
        self.flag("--nats-password-file", "--nats-password-env")
    }

    fn token_flag(&self) -> &'static str {
        self.flag("--nats-token-file", "--nats-token-env")
    }

    fn nkey_flag(&self) -> &'static str {
        self.flag("--nats-nkey-file", "--nats-nkey-env")
    }

    fn creds_flag(&self) -> &'static str {
        self.flag("--nats-creds-file", "--nats-creds-env")
    }

    /// The file's path, or `$VAR`.
    fn shown(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Env(var) => format!("${var}"),
        }
    }
}

/// The secret `source` holds, without the trailing newline editors and
/// `kubectl create secret --from-file` leave.
async fn read_secret(flag: &'static str, source: &SecretSource) -> Result<String, SecurityError> {
    let (text, from) = match source {
        SecretSource::File(path) => (
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| SecurityError::Read {
                    flag,
                    path: path.to_owned(),
                    source,
                })?,
            source.shown(),
        ),
        SecretSource::Env(var) => (
            std::env::var(var).map_err(|_| SecurityError::Env {
                flag,
                var: var.clone(),
            })?,
            source.shown(),
        ),
    };
    let secret = text.trim_end();
    if secret.is_empty() {
        return Err(SecurityError::Empty { flag, from });
    }
    Ok(secret.to_owned())
}

async fn check_readable(flag: &'static str, path: &Path) -> Result<(), SecurityError> {
    tokio::fs::File::open(path)
        .await
        .map(drop)
        .map_err(|source| SecurityError::Read {
            flag,
            path: path.to_owned(),
            source,
        })
}

/// What the server refused, read from its `-ERR 'Permissions Violation
/// for <Publish|Subscription> to "<subject>"'` (the only form it has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionViolation {
    /// `publish` or `subscribe`.
    pub operation: &'static str,
    pub subject: String,
}

/// The violation a server error reports, if it reports one.
pub fn permission_violation(error: &str) -> Option<PermissionViolation> {
    let rest = error
        .trim()
        .trim_matches('\'')
        .strip_prefix("Permissions Violation for ")?;
    let (operation, rest) = if let Some(rest) = rest.strip_prefix("Publish to ") {
        ("publish", rest)
    } else if let Some(rest) = rest.strip_prefix("Subscription to ") {
        ("subscribe", rest)
    } else {
        return None;
    };
    // The subscription form may add ` using queue "<group>"`.
    let subject = rest.strip_prefix('"')?.split('"').next()?;
    Some(PermissionViolation {
        operation,
        subject: subject.to_owned(),
    })
}

/// Logs what the connection reports by itself: refusals the server sends
/// outside any request (a permission violation shows up only here; the
/// request that caused it just times out), losing and regaining it.
pub(crate) fn log_event(url: &str, event: async_nats::Event) {
    use async_nats::{Event, ServerError};
    match event {
        Event::ServerError(ServerError::Other(error)) => match permission_violation(&error) {
            Some(violation) => tracing::error!(
                nats = url,
                operation = violation.operation,
                subject = %violation.subject,
                "NATS refused a permission: this user may not {} {:?}; grant it (README, \"NATS permissions\")",
                violation.operation,
                violation.subject,
            ),
            None => tracing::error!(nats = url, %error, "NATS server error"),
        },
        Event::ServerError(ServerError::AuthorizationViolation) => tracing::error!(
            nats = url,
            "NATS refused the credentials: authorization violation"
        ),
        Event::ServerError(ServerError::SlowConsumer(sid)) | Event::SlowConsumer(sid) => {
            tracing::warn!(nats = url, sid, "NATS: slow consumer, messages dropped")
        }
        Event::Disconnected => tracing::warn!(nats = url, "disconnected from NATS; reconnecting"),
        Event::Connected => tracing::info!(nats = url, "connected to NATS"),
        Event::LameDuckMode => tracing::warn!(nats = url, "the NATS server is going away"),
        Event::ClientError(error) => tracing::warn!(nats = url, %error, "NATS client error"),
        Event::Draining | Event::Closed => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> NatsSecurityArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            security: NatsSecurityArgs,
        }
        Cli::try_parse_from(std::iter::once("test").chain(flags.iter().copied()))
            .unwrap()
            .security
    }

    #[test]
    fn flags_make_one_method_or_name_the_conflict() {
        let ok = |flags: &[&str]| args(flags).security().unwrap();
        let err = |flags: &[&str]| args(flags).security().unwrap_err().to_string();
        assert_eq!(ok(&[]), NatsSecurity::default());
        assert_eq!(
            ok(&["--nats-user", "gw", "--nats-password-file", "/p"]).auth,
            Some(NatsAuth::UserPassword {
                user: "gw".into(),
                password: SecretSource::File("/p".into())
            })
        );
        assert_eq!(
            ok(&["--nats-user", "gw", "--nats-password-env", "PW"]).auth,
            Some(NatsAuth::UserPassword {
                user: "gw".into(),
                password: SecretSource::Env("PW".into())
            })
        );
        assert_eq!(
            ok(&["--nats-creds-file", "/c"]).auth,
            Some(NatsAuth::Creds {
                creds: SecretSource::File("/c".into())
            })
        );
        assert_eq!(
            ok(&["--nats-creds-env", "C"]).auth,
            Some(NatsAuth::Creds {
                creds: SecretSource::Env("C".into())
            })
        );
        assert_eq!(
            ok(&["--nats-nkey-file", "/n"]).auth,
            Some(NatsAuth::NKey {
                seed: SecretSource::File("/n".into())
            })
        );
        assert_eq!(
            ok(&["--nats-nkey-env", "N"]).auth,
            Some(NatsAuth::NKey {
                seed: SecretSource::Env("N".into())
            })
        );
        assert_eq!(
            ok(&["--nats-token-file", "/t"]).auth,
            Some(NatsAuth::Token {
                token: SecretSource::File("/t".into())
            })
        );
        assert_eq!(
            ok(&["--nats-token-env", "T"]).auth,
            Some(NatsAuth::Token {
                token: SecretSource::Env("T".into())
            })
        );
        let tls = ok(&[
            "--nats-ca-file",
            "/ca",
            "--nats-cert-file",
            "/c",
            "--nats-key-file",
            "/k",
        ])
        .tls;
        assert!(tls.is_required());
        assert_eq!(tls.ca_file, Some("/ca".into()));
        assert!(ok(&["--nats-tls-required"]).tls.is_required());
        assert!(!ok(&[]).tls.is_required());

        assert_eq!(
            err(&["--nats-token-file", "/t", "--nats-creds-file", "/c"]),
            "--nats-token-file and --nats-creds-file cannot be combined: NATS takes one authentication method"
        );
        assert_eq!(
            err(&["--nats-token-env", "T", "--nats-user", "u"]),
            "--nats-user and --nats-token-env cannot be combined: NATS takes one authentication method"
        );
        assert_eq!(
            err(&["--nats-user", "u"]),
            "--nats-user needs --nats-password-file or --nats-password-env"
        );
        assert_eq!(
            err(&["--nats-password-file", "/p"]),
            "--nats-password-file needs --nats-user"
        );
        assert_eq!(
            err(&["--nats-password-env", "PW"]),
            "--nats-password-env needs --nats-user"
        );
        assert_eq!(
            err(&["--nats-cert-file", "/c"]),
            "--nats-cert-file needs --nats-key-file"
        );
        assert_eq!(
            err(&["--nats-key-file", "/k"]),
            "--nats-key-file needs --nats-cert-file"
        );
    }

    #[tokio::test]
    async fn secret_files_are_read_trimmed_and_missing_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let security = |file: &Path| NatsSecurity {
            auth: Some(NatsAuth::Token {
                token: SecretSource::File(file.to_owned()),
            }),
            ..NatsSecurity::default()
        };
        let options = async_nats::ConnectOptions::new;
        let e = security(&empty).apply(options()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("--nats-token-file {} is empty", empty.display())
        );
        let missing = dir.path().join("missing");
        let e = security(&missing).apply(options()).await.unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "cannot read --nats-token-file {}:",
                missing.display()
            )),
            "{e}"
        );
        let tls = NatsSecurity {
            tls: NatsTls {
                ca_file: Some(missing.clone()),
                ..NatsTls::default()
            },
            ..NatsSecurity::default()
        };
        let e = tls.apply(options()).await.unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read --nats-ca-file"),
            "{e}"
        );
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        assert_eq!(
            read_secret("--nats-token-file", &SecretSource::File(token))
                .await
                .unwrap(),
            "s3cret"
        );
    }

    #[tokio::test]
    async fn secrets_in_the_environment_are_read_and_missing_ones_named() {
        // Set by Cargo for every test process; no test may change the
        // environment of the others.
        let set = SecretSource::Env("CARGO_PKG_NAME".into());
        assert_eq!(
            read_secret("--nats-token-env", &set).await.unwrap(),
            "sluice-nats"
        );
        let missing = NatsSecurity {
            auth: Some(NatsAuth::UserPassword {
                user: "u".into(),
                password: SecretSource::Env("SLUICE_TEST_NO_SUCH_VARIABLE".into()),
            }),
            ..NatsSecurity::default()
        };
        let e = missing
            .apply(async_nats::ConnectOptions::new())
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--nats-password-env SLUICE_TEST_NO_SUCH_VARIABLE: no such environment variable"
        );
    }

    #[test]
    fn permission_violations_are_read_from_server_errors() {
        let table = [
            (
                r#"Permissions Violation for Publish to "sluice.invoke.a.b""#,
                Some(("publish", "sluice.invoke.a.b")),
            ),
            (
                r#"'Permissions Violation for Subscription to "orders.>" using queue "q"'"#,
                Some(("subscribe", "orders.>")),
            ),
            (r#"permissions violation for publish to "x""#, None),
            ("Maximum Payload Violation", None),
            (r#"Permissions Violation for Publish to x"#, None),
        ];
        for (error, expected) in table {
            let got = permission_violation(error);
            let got = got.as_ref().map(|v| (v.operation, v.subject.as_str()));
            assert_eq!(got, expected, "{error}");
        }
    }
}
