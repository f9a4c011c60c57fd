//! Resolving a Function's module and registering the function with NATS:
//! the component in the module store once per digest, the registry entry
//! gateways and runtimes follow, and the function's consumer.

use sluice_api::names::FunctionRef;
use sluice_api::{FunctionSpec, ModuleSource, RegistryEntry};

use super::apply::Outcome;
use super::{Error, RESYNC, RETRY_TRANSIENT};
use crate::conditions::{MODULE_READY, Observed, QUEUE_READY, Reason, Status};
use crate::context::Context;
use crate::module::{Fetched, ModuleError};

/// Resolves the module, then registers the function with NATS.
pub(super) async fn resolve(
    function: &FunctionRef,
    spec: &FunctionSpec,
    created: Option<String>,
    ctx: &Context,
) -> Outcome {
    let fetched = match module(&function.namespace, &spec.module, ctx).await {
        Ok(fetched) => fetched,
        Err(e) => {
            return Outcome {
                module: Observed::new(
                    MODULE_READY,
                    Status::False,
                    Reason::Module(e.reason()),
                    e.to_string(),
                ),
                queue: Observed::new(
                    QUEUE_READY,
                    Status::Unknown,
                    Reason::WaitingForModule,
                    "the function is registered once its module resolves",
                ),
                digest: None,
                published: false,
                requeue: if e.is_transient() {
                    RETRY_TRANSIENT
                } else {
                    RESYNC
                },
            };
        }
    };
    let module = Observed::new(
        MODULE_READY,
        Status::True,
        Reason::Resolved,
        format!("{} (sha256:{})", fetched.origin, fetched.digest),
    );
    // A Secret that cannot be read registers the function with no key
    // accepted (closed, not open with the keys of before) and says why.
    let (api_keys, keys_failed) =
        match crate::api_keys::resolve(&ctx.client, &function.namespace, spec).await {
            Ok(keys) => (keys, None),
            Err(e) => (Vec::new(), Some(e)),
        };
    match register(function, spec, api_keys, &fetched, created, ctx).await {
        Ok(published) => Outcome {
            module,
            queue: match &keys_failed {
                None => Observed::new(
                    QUEUE_READY,
                    Status::True,
                    Reason::Registered,
                    format!(
                        "registered in sluice-functions; invocations queue on {}",
                        function.invoke_subject()
                    ),
                ),
                Some(e) => Observed::new(
                    QUEUE_READY,
                    Status::False,
                    Reason::ApiKeys(e.reason()),
                    e.to_string(),
                ),
            },
            digest: Some(fetched.digest),
            published,
            requeue: if keys_failed.as_ref().is_some_and(|e| e.is_transient()) {
                RETRY_TRANSIENT
            } else {
                RESYNC
            },
        },
        Err(e) => Outcome {
            module,
            queue: Observed::new(
                QUEUE_READY,
                Status::False,
                Reason::NatsUnavailable,
                format!("{e}; retrying in {}s", RETRY_TRANSIENT.as_secs()),
            ),
            digest: Some(fetched.digest),
            published: false,
            requeue: RETRY_TRANSIENT,
        },
    }
}

/// The module `source` names: when the fetcher knows what the source
/// resolves to (the same URL and sha256, the same OCI manifest seen with
/// the same credentials) and the store holds that digest, its bytes are
/// not fetched again and `wasm` is empty; else it is fetched. A scale, a
/// resync or a touched Secret reconciles without a download.
async fn module(
    namespace: &str,
    source: &ModuleSource,
    ctx: &Context,
) -> Result<Fetched, ModuleError> {
    // When the source cannot be resolved, the fetch tries and says why.
    if let Ok(Some(known)) = ctx.fetcher.known(&ctx.client, namespace, source).await
        && ctx.layout.has_module(&known.digest).await.unwrap_or(false)
    {
        return Ok(Fetched {
            wasm: Vec::new(),
            digest: known.digest,
            origin: known.origin,
        });
    }
    ctx.fetcher.fetch(&ctx.client, namespace, source).await
}

/// Writes the registry entry (and the component, once per digest) unless
/// the registry already holds exactly this entry, then ensures the
/// consumer. True when the entry was written.
async fn register(
    function: &FunctionRef,
    spec: &FunctionSpec,
    api_keys: Vec<sluice_api::auth::ApiKeyDigest>,
    fetched: &Fetched,
    created: Option<String>,
    ctx: &Context,
) -> Result<bool, Error> {
    let wanted = RegistryEntry {
        function: function.clone(),
        spec: spec.clone(),
        module_digest: fetched.digest.clone(),
        api_keys,
        created,
    };
    let current = ctx
        .layout
        .functions
        .get(function.registry_key())
        .await
        .map_err(|source| Error::ReadEntry {
            function: function.clone(),
            source,
        })?
        .and_then(|bytes| RegistryEntry::parse(function, &bytes).ok());
    let changed = current.as_ref() != Some(&wanted);
    // The consumer first: a runtime that sees the entry finds it.
    ctx.layout.consumer(function, spec).await?;
    // An unchanged entry whose module left the store (deleted by hand, a
    // lost stream) is published again, module first.
    let in_store = ctx.layout.has_module(&fetched.digest).await?;
    if !in_store && fetched.wasm.is_empty() {
        // Known, not fetched, and gone since: the next reconcile fetches.
        return Err(Error::ModuleLeftStore {
            function: function.clone(),
            digest: fetched.digest.clone(),
        });
    }
    if changed || !in_store {
        ctx.publisher.publish_entry(&wanted, &fetched.wasm).await?;
    }
    if changed {
        ctx.registered.push(function.clone());
    }
    Ok(changed)
}
