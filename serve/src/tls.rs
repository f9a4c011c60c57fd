//! TLS on a listener: rustls (ring provider) serving a certificate chain
//! and key read from PEM files, reread while the listener serves so that a
//! renewed certificate (a mounted Secret that cert-manager rotates) is
//! served without a restart.
//!
//! [`ServerTls::load`] reads the files once and fails naming the file and
//! the problem; [`crate::serve`] then polls them every
//! [`RELOAD_INTERVAL`] and swaps the certificate new handshakes get. A
//! reload that fails (a half-written file, a key not matching the
//! certificate) is logged as an error naming the file, and the previous
//! certificate stays in service.

use crate::sync;
use std::fmt;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// How often the certificate and key files are reread to see whether they
/// changed.
///
/// Polling rather than a file watcher (inotify through `notify`): a
/// Kubernetes Secret volume changes by writing a new timestamped directory
/// and swapping the `..data` symlink that `tls.crt` and `tls.key` point
/// through, so neither file is modified in place and a watch on them never
/// fires (a watch on the directory would, but only on Kubernetes' layout).
/// Comparing metadata is no better: through the symlink the inode and
/// mtime change, but a file rewritten in place within the mtime's
/// granularity with the same length would be missed. Reading two files of
/// a few KiB each second and comparing their contents' hash follows
/// symlinks, works on every file system and layout, and costs nothing
/// measurable.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a client may take to complete the TLS handshake; a client that
/// connects and sends nothing is dropped then, as one that sends no
/// request head is after the header read timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A PEM certificate chain (leaf first) and its PEM private key (PKCS#8,
/// PKCS#1 or SEC1), as in a `kubernetes.io/tls` Secret's `tls.crt` and
/// `tls.key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate and key cannot be served. Every variant names the
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        /// "certificate" or "private key".
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} is not a usable certificate chain: {problem}", path.display())]
    BadCertificate { path: PathBuf, problem: String },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{} is not a usable private key: {problem}", path.display())]
    BadKey { path: PathBuf, problem: String },
    #[error("the private key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{cert_flag} and {key_flag} go together: {given} is given without {missing}")]
    HalfPair {
        cert_flag: &'static str,
        key_flag: &'static str,
        given: &'static str,
        missing: &'static str,
    },
}

/// `--tls-cert-file` and `--tls-key-file`: TLS on a process's main
/// listener (the gateway's invocations).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) to serve over TLS (https) with
    /// --tls-key-file; reread when it changes on disk. Default: plain HTTP.
    #[arg(long, env = "SLUICE_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "SLUICE_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, if TLS is asked for; half a pair is refused naming both
    /// flags.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        pair(
            ("--tls-cert-file", &self.tls_cert_file),
            ("--tls-key-file", &self.tls_key_file),
        )
    }
}

/// `--admin-tls-cert-file` and `--admin-tls-key-file`: TLS on the admin
/// listener (`/healthz`, `/readyz`, `/metrics`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AdminTlsArgs {
    /// PEM certificate chain (leaf first) to serve the admin endpoints over
    /// TLS with --admin-tls-key-file; reread when it changes on disk.
    /// Default: plain HTTP.
    #[arg(long, env = "SLUICE_ADMIN_TLS_CERT_FILE", value_name = "FILE")]
    pub admin_tls_cert_file: Option<PathBuf>,
    /// PEM private key of --admin-tls-cert-file.
    #[arg(long, env = "SLUICE_ADMIN_TLS_KEY_FILE", value_name = "FILE")]
    pub admin_tls_key_file: Option<PathBuf>,
}

impl AdminTlsArgs {
    /// The files, if TLS is asked for; half a pair is refused naming both
    /// flags.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        pair(
            ("--admin-tls-cert-file", &self.admin_tls_cert_file),
            ("--admin-tls-key-file", &self.admin_tls_key_file),
        )
    }
}

fn pair(
    (cert_flag, cert): (&'static str, &Option<PathBuf>),
    (key_flag, key): (&'static str, &Option<PathBuf>),
) -> Result<Option<TlsFiles>, TlsError> {
    let half = |given, missing| TlsError::HalfPair {
        cert_flag,
        key_flag,
        given,
        missing,
    };
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(half(cert_flag, key_flag)),
        (None, Some(_)) => Err(half(key_flag, cert_flag)),
    }
}

/// TLS for one listener: what [`crate::serve`] accepts connections with.
/// Cloning shares the certificate in service.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    cert: Arc<ReloadingCert>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.cert.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the certificate and key (blocking: a start-up
    /// step). Protocols are rustls' safe defaults (TLS 1.2 and 1.3); ALPN
    /// offers `http/1.1`, all the server speaks.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = std::fs::read(&files.cert).map_err(|source| TlsError::Read {
            what: "certificate",
            path: files.cert.clone(),
            source,
        })?;
        let key = std::fs::read(&files.key).map_err(|source| TlsError::Read {
            what: "private key",
            path: files.key.clone(),
            source,
        })?;
        let certified = certified_key(&files, &cert, &key, &provider)?;
        let cert = Arc::new(ReloadingCert {
            fingerprint: RwLock::new(fingerprint(&cert, &key)),
            current: RwLock::new(Arc::new(certified)),
            files,
            provider: provider.clone(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::BadCertificate {
                path: cert.files.cert.clone(),
                problem: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }

    /// The files served.
    pub fn files(&self) -> &TlsFiles {
        &self.cert.files
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Rereads the files and, when they changed since last read and hold a
    /// usable certificate and key, serves them to new handshakes. `Ok(true)`
    /// when the certificate was replaced, `Ok(false)` when the files are as
    /// they were (or as they were when they last failed); an error leaves
    /// the certificate in service as it was.
    pub async fn reload(&self) -> Result<bool, TlsError> {
        self.cert.reload().await
    }

    /// Polls the files every [`RELOAD_INTERVAL`] until the returned guard
    /// is dropped, logging each replacement and each failure (once per
    /// change of the files).
    pub(crate) fn watch(&self) -> Reloading {
        let tls = self.clone();
        Reloading(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_error = None;
            loop {
                tick.tick().await;
                match tls.reload().await {
                    Ok(true) => {
                        last_error = None;
                        tracing::info!(
                            cert = %tls.files().cert.display(),
                            key = %tls.files().key.display(),
                            "serving the new TLS certificate"
                        );
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let message = e.to_string();
                        if last_error.as_ref() != Some(&message) {
                            tracing::error!(
                                error = %message,
                                "cannot reload the TLS certificate; still serving the previous one"
                            );
                            last_error = Some(message);
                        }
                    }
                }
            }
        }))
    }
}

/// Stops a [`ServerTls::watch`] when dropped.
#[derive(Debug)]
pub(crate) struct Reloading(tokio::task::JoinHandle<()>);

impl Drop for Reloading {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The certificate new handshakes get, replaced when the files change.
#[derive(Debug)]
struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The hash of the files' contents last read, served or not: files
    /// that failed are not tried (nor logged) again until they change.
    fingerprint: RwLock<u64>,
}

impl ReloadingCert {
    async fn reload(&self) -> Result<bool, TlsError> {
        let read = |what, path: PathBuf| async move {
            tokio::fs::read(&path)
                .await
                .map_err(|source| TlsError::Read { what, path, source })
        };
        let cert = read("certificate", self.files.cert.clone()).await?;
        let key = read("private key", self.files.key.clone()).await?;
        let seen = fingerprint(&cert, &key);
        {
            let mut last = sync::write(&self.fingerprint);
            if *last == seen {
                return Ok(false);
            }
            *last = seen;
        }
        let certified = certified_key(&self.files, &cert, &key, &self.provider)?;
        *sync::write(&self.current) = Arc::new(certified);
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(sync::read(&self.current).clone())
    }
}

/// A hash of both files' contents, to notice a change (not a security
/// measure: whoever can write the files holds the key anyway).
fn fingerprint(cert: &[u8], key: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    cert.hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

/// Parses the PEM contents of `files` and checks that the key is the
/// certificate's.
fn certified_key(
    files: &TlsFiles,
    cert: &[u8],
    key: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let bad_cert = |path: &Path, problem: String| TlsError::BadCertificate {
        path: path.to_owned(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(&files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        e => TlsError::BadKey {
            path: files.key.clone(),
            problem: e.to_string(),
        },
    })?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey {
                path: files.key.clone(),
                problem: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // Parses the leaf (a malformed one fails here) and compares its public
    // key with the private key's.
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(e) => Err(bad_cert(&files.cert, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    fn served(tls: &ServerTls) -> CertificateDer<'static> {
        tls.cert.current.read().unwrap().cert[0].clone()
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn bad_files_at_start_up_are_named_with_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = leaf("a.test");
        let (_, other_key) = leaf("b.test");
        let truncated = &cert[..cert.len() / 2];
        let garbage_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let cases: [(&str, &str, &str, &str); 5] = [
            ("", &key, "tls.crt", "holds no PEM certificate"),
            (truncated, &key, "tls.crt", "not a usable certificate chain"),
            (
                garbage_cert,
                &key,
                "tls.crt",
                "not a usable certificate chain",
            ),
            (&cert, "not a key\n", "tls.key", "holds no PEM private key"),
            (
                &cert,
                &other_key,
                "tls.key",
                "does not belong to the certificate",
            ),
        ];
        for (cert, key, file, problem) in cases {
            let error = ServerTls::load(files(dir.path(), cert, key))
                .unwrap_err()
                .to_string();
            assert!(error.contains(file), "{error}");
            assert!(error.contains(problem), "{error}");
        }
        let missing = TlsFiles {
            cert: dir.path().join("missing.crt"),
            key: dir.path().join("tls.key"),
        };
        let error = ServerTls::load(missing).unwrap_err().to_string();
        assert!(
            error.contains("cannot read") && error.contains("missing.crt"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_changed_pair_is_served_and_a_bad_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (first, first_key) = leaf("first.test");
        let tls = ServerTls::load(files(dir.path(), &first, &first_key)).unwrap();
        assert_eq!(served(&tls), der(&first));
        assert!(!tls.reload().await.unwrap(), "unchanged files");

        // Half written: the new certificate with the old key.
        let (second, second_key) = leaf("second.test");
        files(dir.path(), &second, &first_key);
        let error = tls.reload().await.unwrap_err().to_string();
        assert!(error.contains("tls.key"), "{error}");
        assert_eq!(served(&tls), der(&first));
        // Not tried again until the files change.
        assert!(!tls.reload().await.unwrap());

        files(dir.path(), &second, &second_key);
        assert!(tls.reload().await.unwrap());
        assert_eq!(served(&tls), der(&second));

        // A vanished file is an error; the certificate stays.
        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        assert!(tls.reload().await.is_err());
        assert_eq!(served(&tls), der(&second));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_swap_as_kubernetes_does_it_is_noticed() {
        // A Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>.
        let dir = tempfile::tempdir().unwrap();
        let version = |name: &str, cert: &str, key: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("tls.crt"), cert).unwrap();
            std::fs::write(path.join("tls.key"), key).unwrap();
        };
        let (first, first_key) = leaf("first.test");
        version("..v1", &first, &first_key);
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), dir.path().join(file)).unwrap();
        }
        let tls = ServerTls::load(TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        })
        .unwrap();
        let (second, second_key) = leaf("second.test");
        version("..v2", &second, &second_key);
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        assert!(tls.reload().await.unwrap());
        assert_eq!(served(&tls), der(&second));
    }

    #[test]
    fn half_a_pair_is_refused_naming_both_flags() {
        let args = TlsArgs {
            tls_cert_file: Some("c".into()),
            tls_key_file: None,
        };
        let error = args.files().unwrap_err().to_string();
        assert!(
            error.contains("--tls-cert-file") && error.contains("--tls-key-file"),
            "{error}"
        );
        let args = AdminTlsArgs {
            admin_tls_cert_file: None,
            admin_tls_key_file: Some("k".into()),
        };
        let error = args.files().unwrap_err().to_string();
        assert!(
            error.contains("--admin-tls-key-file is given without --admin-tls-cert-file"),
            "{error}"
        );
        assert_eq!(TlsArgs::default().files().unwrap(), None);
    }
}
