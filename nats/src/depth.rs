//! Queue depth: how many invocations of a function wait or run, read from
//! JetStream's own API (the consumer's `num_pending + num_ack_pending`),
//! never from a monitoring endpoint, which goes stale in clusters.

use std::collections::HashMap;

use async_nats::jetstream::{consumer, stream};
use futures::TryStreamExt as _;
use sluice_api::autoscale::Observation;
use sluice_api::names::FunctionRef;

/// Why depths could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot list the invocation stream's consumers: {0}")]
pub struct DepthError(#[source] stream::ConsumersError);

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
pub async fn queue_depths(
    invocations: &stream::Stream,
) -> Result<HashMap<FunctionRef, Observation>, DepthError> {
    let mut depths = HashMap::<FunctionRef, Observation>::new();
    let mut consumers = invocations.consumers();
    while let Some(info) = consumers.try_next().await.map_err(DepthError)? {
        if let Some(function) = FunctionRef::from_invoke_subject(&info.config.filter_subject) {
            let seen = observe(&info);
            let total = depths.entry(function).or_default();
            total.pending += seen.pending;
            total.in_flight += seen.in_flight;
        }
    }
    Ok(depths)
}
