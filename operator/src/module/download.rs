//! `spec.module.url`: a component downloaded over HTTP(S), its size capped
//! while it streams. Plain http is allowed: the required `sha256`, checked
//! by the caller, protects the bytes.

use std::time::Duration;

use super::ModuleError;
use sluice_serve::with_causes;

/// Longest wait for a connection to the server.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a download may take, from connecting to the body's last byte.
pub(crate) const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The client every download shares (its connections are reused): the
/// timeouts above, the roots of [`super::tls::TRUSTED_ROOTS`], redirects
/// followed (release assets redirect to storage), the system's proxy
/// settings (`HTTPS_PROXY`, `NO_PROXY`).
pub(crate) fn client() -> reqwest::Client {
    let roots = super::tls::TRUSTED_ROOTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok());
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(DOWNLOAD_TIMEOUT)
        .tls_certs_only(roots)
        .user_agent(concat!("sluice-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        // With ring installed and certificates rustls has parsed, only a
        // TLS backend that cannot start fails here, which no module could
        // be fetched without: it is a broken build, not a runtime error.
        .expect("reqwest builds a client with ring and parsed roots")
}

/// Downloads `url`, at most `limit` bytes: a Content-Length over it is
/// refused before the body is read, and a body that grows past it is cut.
pub(crate) async fn download(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, ModuleError> {
    let failed = |problem: String, status: Option<u16>, source: Option<reqwest::Error>| {
        ModuleError::ModuleDownloadFailed {
            url: url.to_owned(),
            problem,
            status,
            source: source.map(Into::into),
        }
    };
    let request_failed = |e: reqwest::Error| {
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
