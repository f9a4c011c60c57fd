//! Exponential backoff, the one rule behind every wait between attempts in
//! Sluice: a function's retries ([`crate::function::RetryPolicy`]), waiting
//! for NATS, publishing through a failover, refetching a JWKS, storing a
//! dead letter, delivering a callback.

use std::time::Duration;

/// The pause after `failed` failed attempts in a row (1-based; 0 counts as
/// 1): `initial`, doubling with each further failure, never above `max`.
/// Saturates instead of overflowing, however many failures.
pub fn doubling(initial: Duration, max: Duration, failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(31);
    initial.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_up_to_max() {
        let ms = Duration::from_millis;
        let cases = [
            (0, ms(100)),
            (1, ms(100)),
            (2, ms(200)),
            (3, ms(400)),
            (4, ms(800)),
            (5, ms(1000)),
            (40, ms(1000)),
            (u32::MAX, ms(1000)),
        ];
        for (failed, want) in cases {
            assert_eq!(doubling(ms(100), ms(1000), failed), want, "after {failed}");
        }
        // A huge initial saturates rather than overflowing.
        assert_eq!(doubling(Duration::MAX, Duration::MAX, 31), Duration::MAX,);
    }
}
