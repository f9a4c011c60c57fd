//! Waiting for NATS at start: a part started before its NATS server (in a
//! cluster the server's pod, or its volume, is often slower than the
//! parts) keeps trying with capped exponential backoff, saying at each
//! attempt where it connects and why it failed, instead of exiting into a
//! crash loop whose back-off keeps growing after NATS is back. Only what a
//! retry cannot fix (credentials refused, a TLS or credentials setting that
//! cannot be used) ends the wait.

use std::time::Duration;

use crate::NatsError;

/// First delay after a failed attempt.
pub const RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Largest delay between attempts: a part is ready at most this long after
/// its NATS server is (plus the attempt itself).
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// The delay after `failed` consecutive failed attempts (1-based): doubling
/// from [`RETRY_INITIAL`] up to [`RETRY_MAX`].
pub fn retry_delay(failed: u32) -> Duration {
    sluice_api::backoff::doubling(RETRY_INITIAL, RETRY_MAX, failed)
}

impl NatsError {
    /// Whether trying again later cannot help: the server refused the
    /// credentials, they cannot sign its challenge, TLS failed, or the
    /// security settings are unusable. An unreachable server or a layout
    /// it cannot serve yet (JetStream still starting) may come right.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Refused { .. }
                | Self::Sign { .. }
                | Self::Tls { .. }
                | Self::Security(_)
                | Self::CredentialsInUrl { .. }
        )
    }
}

/// `url` without credentials (`nats://user:pass@host` gives
/// `nats://host`), for logs and errors; each of a comma-separated list of
/// servers is cleaned.
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, server),
            };
            // The authority ends at the first '/'; its userinfo at its last '@'.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let rest = match rest[..authority_end].rfind('@') {
                Some(at) => &rest[at + 1..],
                None => rest,
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{rest}"),
                None => rest.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `attempt` until it succeeds or fails permanently
/// ([`NatsError::is_permanent`]), waiting [`retry_delay`] between
/// attempts and logging each failure as a warning naming `what` (e.g.
/// "connecting", "the layout"), the server `url` without credentials and
/// the error (its message quotes its cause).
pub async fn patiently<T, F, Fut>(what: &str, url: &str, mut attempt: F) -> Result<T, NatsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, NatsError>>,
{
    let shown = redacted(url);
    let mut failed = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failed > 0 {
                    tracing::info!(nats = %shown, attempts = failed + 1, "{what}: done");
                }
                return Ok(value);
            }
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                failed = failed.saturating_add(1);
                let delay = retry_delay(failed);
                tracing::warn!(
                    nats = %shown,
                    attempt = failed,
                    error = %e,
                    "{what}: waiting for NATS (not ready meanwhile); trying again in {delay:?}"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_its_cap() {
        let table = [
            (0, 100),
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1600),
            (6, 2000),
            (40, 2000),
            (u32::MAX, 2000),
        ];
        for (failed, millis) in table {
            assert_eq!(
                retry_delay(failed),
                Duration::from_millis(millis),
                "after {failed}"
            );
        }
    }

    #[test]
    fn credentials_never_reach_a_log() {
        let table = [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://user:secret@nats:4222", "nats://nats:4222"),
            ("tls://token@nats.svc:4222/x@y", "tls://nats.svc:4222/x@y"),
            ("u:p@nats:4222", "nats:4222"),
            (
                "nats://a:b@one:4222,nats://c:d@two:4222",
                "nats://one:4222,nats://two:4222",
            ),
            ("nats://p@ss:w@rd@host", "nats://host"),
        ];
        for (url, shown) in table {
            assert_eq!(redacted(url), shown, "{url}");
        }
    }

    #[tokio::test]
    async fn a_permanent_failure_ends_the_wait_and_others_are_retried() {
        let mut calls = 0;
        let result: Result<(), _> = patiently("testing", "nats://x", || {
            calls += 1;
            let error = if calls < 3 {
                NatsError::Layout {
                    what: "x".into(),
                    source: "not yet".into(),
                }
            } else {
                NatsError::Security(crate::SecurityError::Conflict("bad flags".into()))
            };
            std::future::ready(Err(error))
        })
        .await;
        assert!(result.unwrap_err().is_permanent());
        assert_eq!(calls, 3);
    }
}
