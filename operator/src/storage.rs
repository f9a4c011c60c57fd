//! JetStream's storage use against its bound, for the metrics
//! (`sluice_jetstream_storage_bytes`, `sluice_jetstream_storage_bound_bytes`)
//! and the `JetStreamStorageNearBound` alert. Read from JetStream's own
//! account API (`$JS.API.INFO`), as queue depth is, never from a monitoring
//! endpoint: a NATS server's monitoring port does not speak Prometheus.

use std::time::Duration;

use crate::metrics::Metrics;

/// How often the account's use is read: storage fills over minutes, and an
/// alert waits longer than this before it fires.
pub const READ_EVERY: Duration = Duration::from_secs(10);

/// The bound to report: the account's own storage limit when it has one
/// (JetStream reports `-1` or nothing for none), else `configured`
/// (`--jetstream-storage-bound`), else unknown.
pub fn bound(account_limit: Option<i64>, configured: Option<u64>) -> Option<u64> {
    account_limit
        .and_then(|limit| u64::try_from(limit).ok())
        .filter(|limit| *limit > 0)
        .or(configured)
}

/// Reads the account's storage every [`READ_EVERY`] into `metrics` until
/// `shutdown`; a failed read is logged and the last values stay (NATS being
/// away is what `sluice_nats_connected` reports).
pub async fn run(
    js: async_nats::jetstream::Context,
    configured: Option<u64>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(READ_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        match js.query_account().await {
            Ok(account) => metrics.storage(
                account.storage,
                bound(account.limits.max_storage, configured),
            ),
            Err(e) => tracing::warn!(error = %e, "cannot read JetStream's storage use"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accounts_limit_wins_and_an_unlimited_account_falls_back_to_the_configured_bound() {
        let cases = [
            (Some(1000), Some(5), Some(1000)),
            (Some(-1), Some(5), Some(5)),
            (Some(0), Some(5), Some(5)),
            (None, Some(5), Some(5)),
            (Some(-1), None, None),
            (None, None, None),
        ];
        for (limit, configured, expected) in cases {
            assert_eq!(
                bound(limit, configured),
                expected,
                "{limit:?} {configured:?}"
            );
        }
    }
}
