//! Which components runtimes have compiled: the digests the shared bucket
//! of precompiled components (`sluice-artifacts`) holds under any engine's
//! key ([`sluice_api::names::artifact_key`]), as one listing and then each
//! one stored after it. The operator follows it to report a pool
//! Function Ready once the warm pool has compiled its component ahead.

use async_nats::jetstream::{self, context, object_store, object_store::ObjectStore};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use sluice_api::ModuleDigest;
use sluice_api::names::{ARTIFACTS_BUCKET, artifact_digest};

/// Why the compiled components could not be followed.
#[derive(Debug, thiserror::Error)]
pub enum CompiledError {
    #[error("cannot watch the precompiled components' bucket: {0}")]
    Watch(#[source] object_store::WatchError),
    #[error("cannot list the precompiled components' bucket: {0}")]
    List(#[source] object_store::ListError),
    #[error("cannot read the precompiled components' bucket's listing: {0}")]
    Listing(#[source] object_store::ListerError),
    #[error("cannot read the precompiled components' bucket: {0}")]
    Read(#[source] object_store::WatcherError),
    #[error("cannot read the precompiled components' bucket's size: {0}")]
    Info(#[source] context::GetStreamError),
}

/// The digests `bucket` holds compiled now, and a stream of each one
/// stored from then on (with repeats: a digest compiled again by another
/// engine, or stored again). The watch starts before the listing, so that
/// nothing stored in between is missed. The stream ends with an error when
/// the watch breaks (a lost connection); follow again then.
///
/// # Errors
/// [`CompiledError`] when the watch cannot be made or the listing read.
pub async fn compiled(
    bucket: &ObjectStore,
) -> Result<
    (
        Vec<ModuleDigest>,
        impl Stream<Item = Result<ModuleDigest, CompiledError>> + Send + 'static,
    ),
    CompiledError,
> {
    let watch = bucket.watch().await.map_err(CompiledError::Watch)?;
    let listed: Vec<ModuleDigest> = bucket
        .list()
        .await
        .map_err(CompiledError::List)?
        .try_filter_map(|info| async move {
            Ok((!info.deleted)
                .then(|| artifact_digest(&info.name))
                .flatten())
        })
        .try_collect()
        .await
        .map_err(CompiledError::Listing)?;
    let stored = watch.filter_map(|info| async move {
        match info {
            Ok(info) if info.deleted => None,
            Ok(info) => artifact_digest(&info.name).map(Ok),
            Err(e) => Some(Err(CompiledError::Read(e))),
        }
    });
    Ok((listed, stored))
}

/// Bytes the bucket can still take before it refuses new artifacts (its
/// stream discards new messages when full); `None` when it has no bound.
///
/// # Errors
/// [`CompiledError::Info`] when the bucket's stream cannot be read.
pub async fn room(js: &jetstream::Context) -> Result<Option<u64>, CompiledError> {
    let info = js
        .get_stream(crate::layout::object_store_stream(ARTIFACTS_BUCKET))
        .await
        .map_err(CompiledError::Info)?
        .cached_info()
        .clone();
    Ok(u64::try_from(info.config.max_bytes)
        .ok()
        .map(|max| max.saturating_sub(info.state.bytes)))
}
