//! `X-Callback-Url`: where a finished asynchronous invocation's record is
//! POSTed.

/// Checks a callback URL when the invocation is submitted, so that a bad
/// one is a 400 rather than a silent loss later. Accepted: an absolute
/// `http://` or `https://` URL with a host. The error is a sentence naming
/// the header.
pub fn validate_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("X-Callback-Url {url:?} is not a URL"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!(
            "X-Callback-Url {url:?} must be an absolute http:// or https:// URL"
        )),
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
            let e = validate_url(bad).unwrap_err();
            assert!(e.contains("X-Callback-Url"), "{bad}: {e}");
        }
    }
}
