//! The egress guard's I/O half: resolving a caller-chosen host and
//! checking every address it resolves to against the operator's
//! [`EgressPolicy`] (the pure decision, in `sluice_api::egress`).
//!
//! The gateway resolves a callback's host when the invocation is submitted,
//! to refuse it early; the runtime resolves it again when it delivers,
//! through [`GuardedResolver`], which is the resolver of the connector that
//! connects: the addresses checked are the addresses connected to, so a
//! name whose answer changes in between (DNS rebinding) gains nothing.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use sluice_api::egress::{Cidr, EgressPolicy, Refusal};

/// The egress flags the gateway and the runtime share.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EgressArgs {
    /// Let callbacks and functions' outbound HTTP reach this range although
    /// it is not public (loopback, link-local, private, carrier-grade NAT,
    /// ...): a CIDR or an address. Repeat the flag, or separate entries with
    /// commas. Default: none.
    #[arg(
        long = "egress-allow",
        value_name = "CIDR",
        env = "SLUICE_EGRESS_ALLOW",
        value_delimiter = ','
    )]
    pub allow: Vec<Cidr>,
    /// Refuse this range too, such as the cluster's service network when it
    /// is public address space. The allow-list wins where both match.
    /// Default: none.
    #[arg(
        long = "egress-deny",
        value_name = "CIDR",
        env = "SLUICE_EGRESS_DENY",
        value_delimiter = ','
    )]
    pub deny: Vec<Cidr>,
}

impl EgressArgs {
    pub fn policy(&self) -> Arc<EgressPolicy> {
        Arc::new(EgressPolicy {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
        })
    }
}

/// Longest a name may take to resolve: a resolver that never answers must
/// not hold a submit or a delivery.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a host may not be connected to.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The host is an IP address the policy refuses.
    #[error("address {0}")]
    RefusedAddress(#[source] Refusal),
    /// The host is a name resolving to (at least) one refused address.
    #[error("{host} resolves to {refusal}")]
    RefusedName {
        host: String,
        #[source]
        refusal: Refusal,
    },
    #[error("cannot resolve {host}")]
    Lookup {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
}

impl EgressError {
    /// Whether the policy refused the host (rather than the lookup
    /// failing): trying again would be refused again.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::RefusedAddress(_) | Self::RefusedName { .. })
    }

    /// What was refused and why, without the hint naming the gateway's
    /// and runtime's `--egress-allow` (see [`Refusal::finding`]); other
    /// errors as displayed.
    pub fn finding(&self) -> String {
        match self {
            Self::RefusedAddress(refusal) => format!("address {}", refusal.finding()),
            Self::RefusedName { host, refusal } => {
                format!("{host} resolves to {}", refusal.finding())
            }
            other => other.to_string(),
        }
    }

    /// The egress error somewhere in `error`'s chain of sources, as a
    /// client library wraps its resolver's error.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<Self>() {
                return Some(found);
            }
            next = error.source();
        }
        None
    }
}

/// `uri` as logs may show it: without its query, which often carries a
/// token (`?sig=…`), and without any `user:password@`.
pub fn redact_query(uri: &http::Uri) -> String {
    let authority = uri.authority().map_or("", |a| a.as_str());
    let authority = authority
        .rsplit_once('@')
        .map_or(authority.to_owned(), |(_, host)| format!("***@{host}"));
    let query = if uri.query().is_some() { "?…" } else { "" };
    match uri.scheme_str() {
        Some(scheme) => format!("{scheme}://{authority}{}{query}", uri.path()),
        None => format!("{}{query}", uri.path()),
    }
}

/// The IP address `host` is, if it is one: `127.0.0.1`, or `[::1]` as
/// `http::Uri::host` gives IPv6 addresses.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// Checks a host given as an IP address; `None` when `host` is a name.
pub fn check_literal(host: &str, policy: &EgressPolicy) -> Option<Result<IpAddr, EgressError>> {
    let ip = ip_literal(host)?;
    Some(
        policy
            .check(ip)
            .map(|()| ip)
            .map_err(EgressError::RefusedAddress),
    )
}

/// Resolves `host` (a name or an IP address) and returns its addresses
/// with `port`, or the refusal of the first address the policy refuses. A
/// name is refused when any of its addresses is: its owner chooses them
/// all, and a client may try any.
pub async fn resolve(
    host: &str,
    port: u16,
    policy: &EgressPolicy,
) -> Result<Vec<SocketAddr>, EgressError> {
    if let Some(checked) = check_literal(host, policy) {
        return checked.map(|ip| vec![SocketAddr::new(ip, port)]);
    }
    let lookup_error = |source| EgressError::Lookup {
        host: host.to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| {
                lookup_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {LOOKUP_TIMEOUT:?}"),
                ))
            })?
            .map_err(lookup_error)?
            .collect();
    if addrs.is_empty() {
        return Err(EgressError::NoAddress {
            host: host.to_owned(),
        });
    }
    for addr in &addrs {
        policy
            .check(addr.ip())
            .map_err(|refusal| EgressError::RefusedName {
                host: host.to_owned(),
                refusal,
            })?;
    }
    Ok(addrs)
}

/// A resolver for hyper-util's `HttpConnector` that yields only addresses
/// the policy allows, refusing the name otherwise. The connector does not
/// ask its resolver about IP-address hosts: check those with
/// [`check_literal`] before the request.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self { policy }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, EgressError>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = EgressError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), EgressError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        // The connector sets the port on what the resolver returns.
        Box::pin(async move { resolve(name.as_str(), 0, &policy).await.map(Vec::into_iter) })
    }
}

/// The certificate authorities every https destination Sluice reaches is
/// checked against (callbacks, functions' outbound HTTP, JWKS URLs, the
/// operator's module downloads and registries): the system's
/// (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace them, as for OpenSSL), or
/// Mozilla's bundled roots where the system has none, as in a distroless
/// image. Certificates rustls cannot parse are left out: one would make
/// building a client fail. Read once per process (milliseconds).
pub static TRUSTED_ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
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
            "no system CA certificates; trusting Mozilla's roots for https destinations"
        );
        return webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec();
    }
    usable
});

fn trusted_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(TRUSTED_ROOTS.iter().cloned());
    roots
}

/// Reading and parsing the system's CA certificates takes milliseconds:
/// done once per process, however many queues deliver callbacks.
pub static CLIENT_TLS: LazyLock<ClientConfig> = LazyLock::new(|| {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring implements the default TLS versions")
        .with_root_certificates(trusted_roots())
        .with_no_client_auth()
});

/// The connector of every caller-chosen destination: TLS with
/// [`CLIENT_TLS`]'s roots, names resolved by the egress guard, and
/// `connect_timeout` when given.
pub type GuardedConnector = HttpsConnector<HttpConnector<GuardedResolver>>;

pub fn guarded_connector(
    policy: Arc<EgressPolicy>,
    connect_timeout: Option<Duration>,
) -> GuardedConnector {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(policy));
    // hyper-rustls needs the connector to accept https:// URIs.
    http.enforce_http(false);
    http.set_connect_timeout(connect_timeout);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(CLIENT_TLS.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

#[cfg(test)]
mod tests {
    #[test]
    fn logged_urls_keep_neither_query_tokens_nor_credentials() {
        let uri: http::Uri = "https://u:pw@hooks.example.com:8443/done?sig=s3cret&x=1"
            .parse()
            .unwrap();
        let shown = super::redact_query(&uri);
        assert_eq!(shown, "https://***@hooks.example.com:8443/done?…");
        let plain: http::Uri = "http://127.0.0.1:9/a".parse().unwrap();
        assert_eq!(super::redact_query(&plain), "http://127.0.0.1:9/a");
    }

    use super::*;

    fn loopback_allowed() -> EgressPolicy {
        EgressPolicy::parse(&["127.0.0.0/8", "::1"], &[]).unwrap()
    }

    #[tokio::test]
    async fn localhost_is_refused_unless_allow_listed() {
        let refused = resolve("localhost", 80, &EgressPolicy::default())
            .await
            .unwrap_err();
        assert!(refused.is_refusal(), "{refused}");
        assert!(
            refused.to_string().starts_with("localhost resolves to "),
            "{refused}"
        );
        assert!(refused.to_string().contains("loopback"), "{refused}");
        let addrs = resolve("localhost", 80, &loopback_allowed()).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
    }

    #[tokio::test]
    async fn ip_literals_are_checked_without_a_lookup() {
        let refused = resolve("[::1]", 9, &EgressPolicy::default())
            .await
            .unwrap_err();
        assert!(
            matches!(refused, EgressError::RefusedAddress(_)),
            "{refused:?}"
        );
        assert!(refused.to_string().starts_with("address ::1, a loopback"));
        assert_eq!(
            resolve("127.0.0.1", 9, &loopback_allowed()).await.unwrap(),
            [SocketAddr::from(([127, 0, 0, 1], 9))]
        );
        assert_eq!(ip_literal("example.com"), None);
    }

    #[tokio::test]
    async fn the_guarded_resolver_refuses_through_a_client_error_chain() {
        use hyper_util::client::legacy::connect::HttpConnector;
        use tower_service::Service as _;
        let resolver = GuardedResolver::new(Arc::new(EgressPolicy::default()));
        let mut connector = HttpConnector::new_with_resolver(resolver);
        let error = connector
            .call("http://localhost:9/".parse().unwrap())
            .await
            .unwrap_err();
        let found = EgressError::find(&error).expect("the refusal is in the chain");
        assert!(found.is_refusal(), "{found}");
    }
}
