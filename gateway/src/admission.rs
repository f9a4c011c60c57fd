//! What the gateway holds at once is bounded, so that no flood of callers
//! can exhaust its memory: open connections (each buffers at most
//! `sluice_serve::MAX_REQUEST_HEAD` of request head, and HTTP/1.1 handles
//! one request at a time on each, so they bound requests in flight too)
//! and buffered bytes (request bodies as they arrive, and for a
//! synchronous call the largest response that may come back, which
//! arrives whole, from before it is queued). A request body is held as it
//! is read, so a thousand slow uploads hold what they sent, not what they
//! announced. Past either bound the caller gets 503 `overloaded`
//! with `Retry-After`, never an out-of-memory kill.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use sluice_api::ByteSize;
use sluice_serve::ConnectionLimit;
use sluice_serve::memory::{MemoryBudget, Reservation};

use crate::error::GatewayError;
use crate::metrics::Metrics;

/// Bytes a connection is counted for when sizing the connection limit: its
/// read and write buffers as hyper grows them for common heads, and the
/// kernel's socket buffers, which the container's memory cgroup is charged
/// for too (measured: 64 KiB each let 768 slow uploads OOM-kill a 256Mi
/// gateway).
pub const CONNECTION_BYTES: u64 = 256 << 10;

/// The gateway's own share of its container's memory (the process, its
/// routing tables and NATS client), kept out of the limits. Default of
/// `--memory-reserve`.
pub const DEFAULT_MEMORY_RESERVE: ByteSize = ByteSize::mebibytes(64);

/// The limits a gateway admits requests under, bytes and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections open at once; `None`: no limit.
    pub max_connections: Option<usize>,
    /// Bytes of request and synchronous response bodies held at once;
    /// `None`: no limit.
    pub max_buffered: Option<u64>,
}

/// Sizes the limits from the container's memory limit less `reserve`: a
/// quarter for connections (at [`CONNECTION_BYTES`] each), half for
/// buffered bytes (a body being read may briefly take twice its size as
/// its buffer grows), the last quarter as headroom. A flag set (`max_connections`, `max_buffered`) wins;
/// without a container limit, only what the flags set is limited.
pub fn size_limits(
    container_limit: Option<u64>,
    reserve: u64,
    max_connections: Option<usize>,
    max_buffered: Option<u64>,
) -> AdmissionLimits {
    let budget = container_limit.map(|limit| limit.saturating_sub(reserve));
    AdmissionLimits {
        max_connections: max_connections.or_else(|| {
            budget.map(|b| usize::try_from((b / 4 / CONNECTION_BYTES).max(1)).unwrap_or(usize::MAX))
        }),
        max_buffered: max_buffered.or_else(|| budget.map(|b| b / 2)),
    }
}

/// A limit of `max` connections, answering 503 `overloaded` past it,
/// counted in `metrics`.
pub fn connection_limit(max: usize, metrics: &Metrics) -> ConnectionLimit {
    let error = GatewayError::Overloaded(format!(
        "the gateway has its limit of {max} connections open (--max-connections); retry later"
    ));
    let body = error.body(None).to_string();
    let response = error.into_response(None);
    metrics.count_connections(ConnectionLimit::new(
        max,
        response.status(),
        response.headers(),
        body.as_bytes(),
    ))
}

/// The buffered-bytes budget of a gateway.
#[derive(Debug, Clone)]
pub struct Admission {
    budget: Option<Arc<MemoryBudget>>,
}

impl Admission {
    /// A budget of `max_buffered` bytes whose use `gauge` shows.
    pub fn new(max_buffered: Option<u64>, gauge: Gauge) -> Self {
        Self {
            budget: max_buffered.map(|total| MemoryBudget::with_gauge(total, gauge)),
        }
    }

    /// A hold of no bytes yet, grown as the request is read.
    pub fn hold(&self) -> Held {
        Held {
            reservation: self.budget.as_ref().and_then(|b| b.try_reserve(0)),
        }
    }
}

/// What one request has buffered, held against the budget until dropped.
#[derive(Debug)]
pub struct Held {
    reservation: Option<Reservation>,
}

impl Held {
    /// Holds `bytes` more, or refuses with 503 `overloaded`.
    pub fn grow(&mut self, bytes: usize) -> Result<(), GatewayError> {
        let Some(reservation) = &mut self.reservation else {
            return Ok(());
        };
        if reservation.try_grow(bytes as u64) {
            return Ok(());
        }
        Err(GatewayError::Overloaded(format!(
            "the gateway holds its limit of {} of request and response bodies (--max-buffered); retry later",
            ByteSize(reservation.budget().total())
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    #[test]
    fn limits_come_from_the_container_unless_a_flag_says() {
        assert_eq!(
            size_limits(Some(512 * MI), 64 * MI, None, None),
            AdmissionLimits {
                max_connections: Some(448),
                max_buffered: Some(224 * MI),
            }
        );
        assert_eq!(
            size_limits(Some(512 * MI), 64 * MI, Some(10), Some(MI)),
            AdmissionLimits {
                max_connections: Some(10),
                max_buffered: Some(MI),
            }
        );
        assert_eq!(
            size_limits(None, 64 * MI, None, Some(MI)),
            AdmissionLimits {
                max_connections: None,
                max_buffered: Some(MI),
            }
        );
    }

    #[test]
    fn past_the_budget_a_request_is_refused_as_overloaded() {
        let admission = Admission::new(Some(100), Gauge::default());
        let mut first = admission.hold();
        first.grow(60).unwrap();
        first.grow(20).unwrap();
        let mut second = admission.hold();
        let refused = second.grow(30).unwrap_err();
        assert_eq!(refused.code(), "overloaded");
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        drop(first);
        second.grow(30).unwrap();
        Admission::new(None, Gauge::default())
            .hold()
            .grow(usize::MAX)
            .unwrap();
    }
}
