//! TLS for downloads and registry pulls: rustls with the ring provider.
//! The certificate authorities servers are checked against are every
//! part's: [`sluice_serve::egress::TRUSTED_ROOTS`].

/// Makes ring the process's rustls provider. reqwest and oci-client are
/// built without one (no aws-lc, no OpenSSL) and take the process default;
/// without it building a client panics. Whoever installed a provider first
/// (kube's client, another part of the operator) keeps it.
pub(crate) fn install_ring() {
    // Err means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
