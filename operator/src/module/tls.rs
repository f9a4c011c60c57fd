//! TLS for downloads and registry pulls: rustls with the ring provider, and
//! the certificate authorities servers are checked against.

use std::sync::LazyLock;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

/// Makes ring the process's rustls provider. reqwest and oci-client are
/// built without one (no aws-lc, no OpenSSL) and take the process default;
/// without it building a client panics. Whoever installed a provider first
/// (kube's client, another part of the operator) keeps it.
pub(crate) fn install_ring() {
    // Err means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificate authorities https servers and registries are checked
/// against: the system's (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace them,
/// as for OpenSSL), or Mozilla's bundled roots where the system has none,
/// as in a distroless image. Certificates rustls cannot parse are left out:
/// one would make building a client fail. Read once per process.
pub(crate) static TRUSTED_ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "skipping unreadable CA certificates");
    }
    let total = native.certs.len();
    let usable: Vec<CertificateDer<'static>> = native
        .certs
        .into_iter()
        .filter(|cert| RootCertStore::empty().add(cert.clone()).is_ok())
        .collect();
    if usable.len() < total {
        tracing::warn!(
            ignored = total - usable.len(),
            "skipping CA certificates rustls cannot use"
        );
    }
    if usable.is_empty() {
        tracing::info!(
            "no system CA certificates; trusting Mozilla's roots for module downloads and registries"
        );
        return webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec();
    }
    usable
});
