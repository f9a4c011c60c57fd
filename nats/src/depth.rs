//! Queue depth: how many invocations of a function wait or run, read from
//! JetStream's own API (the consumer's `num_pending + num_ack_pending`),
//! never from a monitoring endpoint, which goes stale in clusters.

use std::collections::HashMap;

use async_nats::jetstream::{consumer, stream};
use futures::TryStreamExt as _;
use sluice_api::Lane;
use sluice_api::autoscale::Observation;
use sluice_api::names::{FunctionRef, Queue, SIDE_INVOKE_SUBJECTS};

/// Why depths could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DepthError {
    #[error("cannot list the invocation stream's consumers: {0}")]
    Consumers(#[source] stream::ConsumersError),
    #[error("cannot count the invocations queued in priority lanes or with ordering keys: {0}")]
    Keyed(String),
}

/// Invocations queued (pending) and delivered but not yet acknowledged
/// (ack-pending) on one consumer.
pub fn observe(info: &consumer::Info) -> Observation {
    Observation {
        pending: info.num_pending,
        in_flight: info.num_ack_pending as u64,
    }
}

/// The queue of every function that has a consumer on the invocation
/// stream, from one paged listing of its consumers (JetStream's
/// `CONSUMER.LIST`, 256 a page): the cost grows with pages, not with one
/// request per function. Consumers that filter no function's subject are
/// left out.
///
/// Invocations in the `sync`, `high` and `low` lanes or with an ordering
/// key are counted from the stream instead (one `STREAM.INFO` with a
/// subjects filter, its answer as long as the list of such subjects
/// holding messages): their consumers are created only when a runtime
/// first takes their work, so a function at zero replicas has none to
/// read. A work queue holds what is queued and what is running, so a
/// subject's count is both; it is added to `pending`.
pub async fn queue_depths(
    invocations: &stream::Stream,
) -> Result<HashMap<FunctionRef, Observation>, DepthError> {
    let mut depths = HashMap::<FunctionRef, Observation>::new();
    let mut consumers = invocations.consumers();
    while let Some(info) = consumers.try_next().await.map_err(DepthError::Consumers)? {
        if let Some((function, Queue::Lane(Lane::Normal))) =
            FunctionRef::queue_of_subject(&info.config.filter_subject)
        {
            let seen = observe(&info);
            let total = depths.entry(function).or_default();
            total.pending += seen.pending;
            total.in_flight += seen.in_flight;
        }
    }
    let keyed = |e: &dyn std::fmt::Display| DepthError::Keyed(e.to_string());
    let mut subjects = invocations
        .info_with_subjects(SIDE_INVOKE_SUBJECTS)
        .await
        .map_err(|e| keyed(&e))?;
    while let Some((subject, count)) = subjects.try_next().await.map_err(|e| keyed(&e))? {
        if let Some((function, queue)) = FunctionRef::queue_of_subject(&subject)
            && queue != Queue::Lane(Lane::Normal)
        {
            depths.entry(function).or_default().pending += count as u64;
        }
    }
    Ok(depths)
}
