//! `X-Callback-Url`: where a finished asynchronous invocation's record is
//! POSTed.

/// A callback URL that cannot be called; its message names the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCallbackUrl {
    #[error("X-Callback-Url {0:?} is not a URL")]
    NotAUrl(String),
    #[error("X-Callback-Url {0:?} must be an absolute http:// or https:// URL")]
    NotHttp(String),
}

/// Checks a callback URL when the invocation is submitted, so that a bad
/// one is a 400 rather than a silent loss later. Accepted: an absolute
/// `http://` or `https://` URL with a host.
pub fn validate_url(url: &str) -> Result<http::Uri, BadCallbackUrl> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| BadCallbackUrl::NotAUrl(url.to_owned()))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(BadCallbackUrl::NotHttp(url.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_callbacks() {
        assert!(validate_url("http://127.0.0.1:9/done").is_ok());
        assert!(validate_url("https://example.com/x?y=1").is_ok());
        for bad in ["", "/relative", "ftp://host/x", "not a url", "http://"] {
            let e = validate_url(bad).unwrap_err().to_string();
            assert!(e.contains("X-Callback-Url"), "{bad}: {e}");
        }
    }
}
