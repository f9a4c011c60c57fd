//! Queue depth: how many invocations of a function wait or run, read from
//! JetStream's own API (the consumer's `num_pending + num_ack_pending`),
//! never from a monitoring endpoint, which goes stale in clusters.

use std::collections::HashMap;

use async_nats::jetstream::{consumer, stream};
use futures::TryStreamExt as _;
use sluice_api::names::FunctionRef;

/// Why depths could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot list the invocation stream's consumers: {0}")]
pub struct DepthError(#[source] stream::ConsumersError);

/// Invocations queued (pending) plus delivered and not yet acknowledged
/// (ack-pending) on one consumer.
pub fn depth(info: &consumer::Info) -> u64 {
    info.num_pending + info.num_ack_pending as u64
}

/// The depth of every function that has a consumer on the invocation
/// stream, from one paged listing of its consumers (JetStream's
/// `CONSUMER.LIST`, 256 a page): the cost grows with pages, not with one
/// request per function. Consumers that filter no function's subject are
/// left out.
pub async fn queue_depths(
    invocations: &stream::Stream,
) -> Result<HashMap<FunctionRef, u64>, DepthError> {
    let mut depths = HashMap::new();
    let mut consumers = invocations.consumers();
    while let Some(info) = consumers.try_next().await.map_err(DepthError)? {
        if let Some(function) = FunctionRef::from_invoke_subject(&info.config.filter_subject) {
            *depths.entry(function).or_default() += depth(&info);
        }
    }
    Ok(depths)
}
