//! `spec.module.url`: a component downloaded over HTTP(S), its size capped
//! while it streams. Plain http is allowed: the required `sha256`, checked
//! by the caller, protects the bytes.

use std::sync::Arc;
use std::time::Duration;

use sluice_api::egress::EgressPolicy;
use sluice_serve::egress::{EgressError, check_literal};
use sluice_serve::with_causes;

use super::ModuleError;

/// Longest wait for a connection to the server.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a download may take, from connecting to the body's last byte.
pub(crate) const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Most redirects a download follows.
const MAX_REDIRECTS: usize = 10;

/// The client every download shares (its connections are reused): the
/// timeouts above, the roots of [`sluice_serve::egress::TRUSTED_ROOTS`], redirects
/// followed (release assets redirect to storage), the system's proxy
/// settings (`HTTPS_PROXY`, `NO_PROXY`), and the egress guard: a
/// Function's author chooses the URL, so names resolve only to addresses
/// `egress` allows and a redirect to a refused address literal is not
/// followed (the first URL's literal is checked by [`download`]).
pub(crate) fn client(egress: Arc<EgressPolicy>) -> reqwest::Client {
    let roots = sluice_serve::egress::TRUSTED_ROOTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok());
    let redirects = egress.clone();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(DOWNLOAD_TIMEOUT)
        .dns_resolver(Arc::new(GuardedDns(egress)))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match attempt
                .url()
                .host_str()
                .and_then(|host| check_literal(host, &redirects))
            {
                Some(Err(refused)) => attempt.error(refused),
                _ => attempt.follow(),
            }
        }))
        .tls_certs_only(roots)
        .user_agent(concat!("sluice-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        // With ring installed and certificates rustls has parsed, only a
        // TLS backend that cannot start fails here, which no module could
        // be fetched without: it is a broken build, not a runtime error.
        .expect("reqwest builds a client with ring and parsed roots")
}

/// reqwest's resolver through the egress guard.
struct GuardedDns(Arc<EgressPolicy>);

impl reqwest::dns::Resolve for GuardedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs = sluice_serve::egress::resolve(name.as_str(), 0, &policy).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Downloads `url`, at most `limit` bytes: a Content-Length over it is
/// refused before the body is read, and a body that grows past it is cut.
/// An address the egress guard refuses (named in the URL, resolved from
/// its name, or redirected to) is [`ModuleError::ModuleDownloadRefused`],
/// which says why without anything the address answered.
pub(crate) async fn download(
    client: &reqwest::Client,
    egress: &EgressPolicy,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, ModuleError> {
    let refused = |reason: &EgressError| ModuleError::ModuleDownloadRefused {
        url: url.to_owned(),
        reason: reason.finding(),
    };
    if let Some(Err(e)) = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().and_then(|host| check_literal(host, egress)))
    {
        return Err(refused(&e));
    }
    let failed = |problem: String, status: Option<u16>, source: Option<reqwest::Error>| {
        ModuleError::ModuleDownloadFailed {
            url: url.to_owned(),
            problem,
            status,
            source: source.map(Into::into),
        }
    };
    let request_failed = |e: reqwest::Error| {
        if let Some(reason) = EgressError::find(&e) {
            return refused(reason);
        }
        let problem = if e.is_timeout() {
            format!(
                "no complete answer within {}s (connect {}s): {}",
                DOWNLOAD_TIMEOUT.as_secs(),
                CONNECT_TIMEOUT.as_secs(),
                with_causes(&e)
            )
        } else {
            with_causes(&e)
        };
        failed(problem, None, Some(e))
    };
    let mut response = client.get(url).send().await.map_err(request_failed)?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(
            format!("the server answered {status}"),
            Some(status.as_u16()),
            None,
        ));
    }
    let too_large = |size| ModuleError::ModuleTooLarge {
        origin: url.to_owned(),
        limit,
        size,
    };
    let announced = response.content_length();
    if let Some(length) = announced
        && length > limit as u64
    {
        return Err(too_large(Some(length)));
    }
    // The announced length (checked against the limit above) sizes the
    // buffer once; an unannounced body grows it as it comes.
    let capacity = announced.map_or(0, |length| length as usize);
    let mut wasm = Vec::with_capacity(capacity);
    while let Some(chunk) = response.chunk().await.map_err(request_failed)? {
        if wasm.len() + chunk.len() > limit {
            return Err(too_large(None));
        }
        wasm.extend_from_slice(&chunk);
    }
    Ok(wasm)
}
