//! The Function controller: one `reconcile`, wrapped in kube-runtime's
//! finalizer, and one `error_policy`.
//!
//! Applying a Function validates its spec, resolves its module (checked to
//! be a `wasi:http` component), stores the component in `sluice-modules`
//! once per digest, writes the registry entry gateways and runtimes follow,
//! ensures the function's JetStream consumer, owns the Deployment of a
//! dedicated function, and reports all of it in the status conditions and
//! in Events. Deleting one removes its registry entry and consumer; its
//! Deployment goes with it by owner reference.
//!
//! What the cluster holds is the truth: a restarted operator recomputes
//! everything from the Functions, ConfigMaps and NATS, and a Function
//! deleted while it was down still has its finalizer, so it is cleaned up
//! when the operator returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate as _, WatchStreamExt as _, predicates, watcher};
use kube::{Resource as _, ResourceExt as _};
use sluice_api::names::FunctionRef;
use sluice_api::{
    ByteSize, ClaimOrder, Function, FunctionSpec, FunctionStatus, Placement, RegistryEntry,
};

use crate::conditions::{self, MODULE_READY, Observed, QUEUE_READY, Status};
use crate::context::Context;
use crate::module::Fetched;
use crate::resources::{self, MANAGED_BY};

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "sluice-operator";
/// Held on every Function until its registry entry and consumer are gone.
pub const FINALIZER: &str = "sluice.dev/cleanup";

/// How soon a Function is looked at again after a failure that may pass by
/// itself (NATS away, a registry or URL unreachable).
const RETRY_TRANSIENT: Duration = Duration::from_secs(10);
/// Reconciles running at once: each may hold a module of up to
/// `--max-module-size` in memory while it checks and stores it.
const RECONCILE_CONCURRENCY: u16 = 8;
/// How often a Function is looked at again in any case: an OCI tag may
/// have moved, and a lost NATS entry is restored.
const RESYNC: Duration = Duration::from_secs(300);

/// Why a reconcile failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Function has no namespace")]
    NoNamespace,
    #[error("Kubernetes API error: {0}")]
    Kube(#[source] kube::Error),
    #[error("cannot remove {function} from NATS: {source}")]
    Cleanup {
        function: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Finalizer(Box<finalizer::Error<Error>>),
}

/// Runs the controller until `shutdown` resolves: Functions (filtered by
/// generation, so the operator's own status writes do not loop), the
/// ConfigMaps and Secrets they name, and the Deployments they own.
///
/// With `--watch-namespace`, one controller per namespace, each with its
/// own watches: a reflector store holds what one watch lists, so watches
/// of several namespaces cannot share one.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    use futures::FutureExt as _;
    let shutdown = shutdown.shared();
    let client = ctx.client.clone();
    let scope = ctx.settings.scope.clone();
    let controllers = scope
        .apis::<Function>(&client)
        .into_iter()
        .zip(scope.apis::<PartialObjectMeta<ConfigMap>>(&client))
        .zip(scope.apis::<PartialObjectMeta<Secret>>(&client))
        .zip(scope.apis::<Deployment>(&client))
        .map(|(((functions, config_maps), secrets), deployments)| {
            run_in(
                ctx.clone(),
                Watched {
                    functions,
                    config_maps,
                    secrets,
                    deployments,
                },
                shutdown.clone(),
            )
        });
    futures::future::join_all(controllers).await;
}

/// What one controller watches: the same namespace (or the cluster) for
/// each kind.
struct Watched {
    functions: Api<Function>,
    config_maps: Api<PartialObjectMeta<ConfigMap>>,
    secrets: Api<PartialObjectMeta<Secret>>,
    deployments: Api<Deployment>,
}

async fn run_in(
    ctx: Arc<Context>,
    watched: Watched,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let functions = watched.functions;
    let (reader, writer) = reflector::store();
    let stream = watcher(functions, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers),
            Default::default(),
        );
    // Only their metadata: which ConfigMap changed is all a mapper needs.
    let config_maps = watcher(
        watched.config_maps,
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .touched_objects();
    // Secrets too, for API keys and pull secrets: a rotated or revoked key
    // takes effect at once, not at the next resync.
    let secrets = watcher(watched.secrets, watcher::Config::default().any_semantic())
        .default_backoff()
        .touched_objects();
    let store = reader.clone();
    let secret_store = reader.clone();
    let runtime_secrets: Vec<String> = ctx
        .settings
        .runtime
        .nats_secrets
        .names()
        .map(str::to_owned)
        .collect();
    let controller = Controller::for_stream(stream, reader)
        .owns_stream(spec_changes(
            watcher(
                watched.deployments,
                watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)),
            )
            .default_backoff(),
        ))
        .watches_stream(config_maps, move |config_map| {
            // The Functions whose module is in this ConfigMap.
            naming(&store, &config_map, |spec, name| {
                spec.module
                    .config_map
                    .as_ref()
                    .is_some_and(|c| c.name == name)
            })
        })
        .watches_stream(secrets, move |secret| {
            // The Functions whose API keys or pull credentials it holds,
            // and the dedicated ones whose runtime mounts it.
            naming(&secret_store, &secret, |spec, name| {
                spec.module.pull_secret.as_deref() == Some(name)
                    || (spec.placement == Placement::Dedicated
                        && runtime_secrets.iter().any(|s| s == name))
                    || spec
                        .auth
                        .as_ref()
                        .and_then(|a| a.api_keys.as_ref())
                        .is_some_and(|k| k.secret_name == name)
            })
        })
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .graceful_shutdown_on(shutdown);
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        })
        .await;
}

/// The owned Deployments that need their Function reconciled: new ones,
/// deleted ones and those whose spec changed other than in `replicas`.
/// Scaling (the autoscaler's every decision) and status updates (every
/// pod's readiness) change nothing the reconcile decides, and each
/// reconcile resolves the module again.
fn spec_changes(
    events: impl futures::Stream<Item = Result<watcher::Event<Deployment>, watcher::Error>>
    + Send
    + 'static,
) -> impl futures::Stream<Item = Result<Deployment, watcher::Error>> + Send + 'static {
    let mut seen: HashMap<ObjectRef<Deployment>, u64> = HashMap::new();
    events.filter_map(move |event| {
        let passed = match event {
            Ok(watcher::Event::Apply(deployment) | watcher::Event::InitApply(deployment)) => {
                let hash = spec_hash(&deployment);
                (seen.insert(ObjectRef::from_obj(&deployment), hash) != Some(hash))
                    .then_some(Ok(deployment))
            }
            Ok(watcher::Event::Delete(deployment)) => {
                seen.remove(&ObjectRef::from_obj(&deployment));
                Some(Ok(deployment))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        std::future::ready(passed)
    })
}

/// A hash of what the operator sets on a Deployment: its spec without
/// `replicas` (the autoscaler's), with its labels and owners.
fn spec_hash(deployment: &Deployment) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut spec = deployment.spec.clone();
    spec.replicas = None;
    let mut hasher = std::hash::DefaultHasher::new();
    serde_json::to_string(&(
        &spec,
        &deployment.metadata.labels,
        &deployment.metadata.owner_references,
    ))
    .unwrap_or_default()
    .hash(&mut hasher);
    hasher.finish()
}

/// The Functions in `object`'s namespace whose spec names it.
fn naming<K: kube::Resource>(
    store: &reflector::Store<Function>,
    object: &K,
    names: impl Fn(&FunctionSpec, &str) -> bool,
) -> Vec<ObjectRef<Function>> {
    let namespace = object.namespace();
    let name = object.name_any();
    store
        .state()
        .into_iter()
        .filter(|f| f.namespace() == namespace && names(&f.spec, &name))
        .map(|f| ObjectRef::from_obj(&*f))
        .collect()
}

/// Reconciles one Function: [`apply`] or [`cleanup`] under the finalizer.
pub async fn reconcile(function: Arc<Function>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = function.namespace().ok_or(Error::NoNamespace)?;
    let name = function.name_any();
    let api: Api<Function> = Api::namespaced(ctx.client.clone(), &namespace);
    let outcome = finalizer(&api, FINALIZER, function, |event| async {
        match event {
            finalizer::Event::Apply(f) => apply(&f, &ctx).await,
            finalizer::Event::Cleanup(f) => {
                cleanup(&f, &ctx).await.map(|()| Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(function) = FunctionRef::new(&namespace, &name)
        && outcome.is_err()
    {
        ctx.metrics.reconciled(&function, seconds, Err(()));
    }
    outcome
}

/// Backs off a Function whose reconcile failed.
pub fn error_policy(function: Arc<Function>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        function = %format!("{}/{}", function.namespace().unwrap_or_default(), function.name_any()),
        error = %error,
        "reconcile failed; retrying"
    );
    Action::requeue(RETRY_TRANSIENT)
}

/// What resolving and registering a Function came to.
struct Outcome {
    module: Observed,
    queue: Observed,
    digest: Option<sluice_api::ModuleDigest>,
    /// The registry entry was written (it changed).
    published: bool,
    requeue: Duration,
}

async fn apply(function: &Function, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = function.namespace().ok_or(Error::NoNamespace)?;
    let name = function.name_any();
    let generation = function.metadata.generation;
    let reference = FunctionRef::new(&namespace, &name);
    let outcome = match &reference {
        Err(e) => invalid(format!(
            "metadata.name: {e}; Sluice function names are DNS labels (no dots), as they name NATS subjects"
        )),
        Ok(reference) => match function.spec.validate(reference) {
            Err(e) => invalid(e.to_string()),
            Ok(()) => match too_much_memory(&function.spec, ctx.settings.max_instance_memory) {
                Some(problem) => invalid(problem),
                None => match ctx
                    .settings
                    .trigger_scope
                    .as_ref()
                    .map_or(Ok(()), |scope| scope.check(reference, &function.spec))
                {
                    Err(e) => Outcome {
                        module: Observed::new(
                            MODULE_READY,
                            Status::False,
                            sluice_api::TRIGGER_SUBJECT_OUT_OF_SCOPE,
                            format!("{e}; change the subject, or ask the cluster's operators"),
                        ),
                        ..invalid(String::new())
                    },
                    Ok(()) => {
                        let mut outcome =
                            resolve(reference, &function.spec, created(function), ctx).await;
                        if let Some(owner) = path_owner(function, reference, ctx).await? {
                            outcome.queue = Observed::new(
                                QUEUE_READY,
                                Status::False,
                                sluice_api::PATH_CONFLICT,
                                format!(
                                    "spec.triggers.http.path {} is the route of {owner}, created earlier, which keeps it on every gateway; choose another path (the default route /fn/{reference}/ still works)",
                                    function
                                        .spec
                                        .triggers
                                        .http
                                        .as_ref()
                                        .map_or("", |h| h.route()),
                                ),
                            );
                            outcome.requeue = outcome.requeue.min(PATH_RECHECK);
                        }
                        outcome
                    }
                },
            },
        },
    };
    let mut outcome = outcome;
    let selector = match &reference {
        Ok(reference) if outcome.queue.reason != "InvalidSpec" => {
            match ensure_placement(function, reference, ctx).await? {
                Ok(selector) => selector,
                Err(failed) => {
                    outcome.queue = failed;
                    outcome.requeue = RETRY_TRANSIENT;
                    None
                }
            }
        }
        _ => None,
    };
    let ready = conditions::ready(&outcome.module, &outcome.queue);
    let current = function.status.clone().unwrap_or_default();
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    // Only the fields this reconcile decides: the conditions list is a map
    // keyed by type, so others' conditions (the autoscaler's Active) and
    // fields (replicas, queueDepth) are left to their writers.
    let conditions = conditions::merge(
        &current.conditions,
        &[ready.clone(), outcome.module.clone(), outcome.queue.clone()],
        generation,
        &now,
    );
    let own = [conditions::READY, MODULE_READY, QUEUE_READY];
    let module_digest = outcome
        .digest
        .as_ref()
        .map(|d| format!("sha256:{d}"))
        .or(current.module_digest.clone());
    let mut status = serde_json::json!({
        "observedGeneration": generation,
        "conditions": conditions
            .iter()
            .filter(|c| own.contains(&c.type_.as_str()))
            .collect::<Vec<_>>(),
        "url": format!(
            "{}/fn/{namespace}/{name}/",
            ctx.settings.gateway_url.trim_end_matches('/')
        ),
    });
    if let Some(digest) = module_digest {
        status["moduleDigest"] = digest.into();
    }
    if let Some(selector) = selector {
        status["selector"] = selector.into();
    }
    let api: Api<Function> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": sluice_api::API_VERSION,
        "kind": sluice_api::KIND,
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    report(function, &current, &ready, &outcome, ctx).await;
    if let Ok(reference) = &reference {
        let is_ready = ready.status == Status::True;
        ctx.metrics.reconciled(
            reference,
            started.elapsed().as_secs_f64(),
            Ok((is_ready, (!is_ready).then_some(ready.reason.as_str()))),
        );
    }
    Ok(Action::requeue(outcome.requeue))
}

/// Why `spec` cannot run on runtimes that take at most `max` of
/// `limits.memory`, if it cannot.
fn too_much_memory(spec: &FunctionSpec, max: Option<ByteSize>) -> Option<String> {
    let max = max?;
    (spec.limits.memory > max).then(|| {
        format!(
            "spec.limits.memory: {} is more than the runtimes' largest instance, {max} (their --max-instance-memory, the chart's runtime.maxInstanceMemory): lower it, or raise that with the runtimes' memory limit",
            spec.limits.memory
        )
    })
}

/// `metadata.creationTimestamp` as Kubernetes writes it (RFC 3339 UTC).
fn created(function: &Function) -> Option<String> {
    let time = function.metadata.creation_timestamp.as_ref()?;
    serde_json::to_value(time).ok()?.as_str().map(str::to_owned)
}

/// How often a Function that lost its custom path looks again: the owner
/// may be deleted or move, and nothing else wakes the loser.
const PATH_RECHECK: Duration = Duration::from_secs(30);

/// The Function that owns `function`'s custom path if that is not
/// `function` itself: the earliest created claimant ([`ClaimOrder`]), the
/// same one every gateway routes the path to.
async fn path_owner(
    function: &Function,
    reference: &FunctionRef,
    ctx: &Context,
) -> Result<Option<FunctionRef>, Error> {
    let Some(http) = &function.spec.triggers.http else {
        return Ok(None);
    };
    let mut claims = vec![ClaimOrder::new(reference.clone(), created(function))];
    let mut others = Vec::new();
    for api in ctx.settings.scope.apis::<Function>(&ctx.client) {
        others.extend(api.list(&Default::default()).await.map_err(Error::Kube)?);
    }
    for other in others {
        let (Some(namespace), Some(path)) = (other.namespace(), &other.spec.triggers.http) else {
            continue;
        };
        let Ok(other_ref) = FunctionRef::new(&namespace, &other.name_any()) else {
            continue;
        };
        if other_ref != *reference
            && path.route() == http.route()
            && other.metadata.deletion_timestamp.is_none()
            && other.spec.validate(&other_ref).is_ok()
        {
            claims.push(ClaimOrder::new(other_ref, created(&other)));
        }
    }
    let owner = claims.into_iter().min().map(|c| c.function().clone());
    Ok(owner.filter(|owner| owner != reference))
}

fn invalid(message: String) -> Outcome {
    Outcome {
        module: Observed::new(MODULE_READY, Status::False, "InvalidSpec", message),
        queue: Observed::new(
            QUEUE_READY,
            Status::Unknown,
            "InvalidSpec",
            "waiting for a valid spec",
        ),
        digest: None,
        published: false,
        // Only a change of the spec can fix it.
        requeue: RESYNC,
    }
}

/// Resolves the module, then registers the function with NATS.
async fn resolve(
    function: &FunctionRef,
    spec: &FunctionSpec,
    created: Option<String>,
    ctx: &Context,
) -> Outcome {
    let fetched = match ctx
        .fetcher
        .fetch(&ctx.client, &function.namespace, &spec.module)
        .await
    {
        Ok(fetched) => fetched,
        Err(e) => {
            return Outcome {
                module: Observed::new(MODULE_READY, Status::False, e.reason(), e.to_string()),
                queue: Observed::new(
                    QUEUE_READY,
                    Status::Unknown,
                    "WaitingForModule",
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
        "Resolved",
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
                    "Registered",
                    format!(
                        "registered in sluice-functions; invocations queue on {}",
                        function.invoke_subject()
                    ),
                ),
                Some(e) => Observed::new(QUEUE_READY, Status::False, e.reason(), e.to_string()),
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
                "NatsUnavailable",
                format!("{e}; retrying in {}s", RETRY_TRANSIENT.as_secs()),
            ),
            digest: Some(fetched.digest),
            published: false,
            requeue: RETRY_TRANSIENT,
        },
    }
}

/// Why a function could not be registered with NATS.
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error(transparent)]
    Publish(#[from] sluice_nats::publish::PublishError),
    #[error(transparent)]
    Nats(#[from] sluice_nats::NatsError),
    #[error("cannot read the registry entry of {function}: {source}")]
    Read {
        function: FunctionRef,
        #[source]
        source: async_nats::jetstream::kv::EntryError,
    },
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
) -> Result<bool, RegisterError> {
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
        .map_err(|source| RegisterError::Read {
            function: function.clone(),
            source,
        })?
        .and_then(|bytes| RegistryEntry::parse(function, &bytes).ok());
    let changed = current.as_ref() != Some(&wanted);
    // The consumer first: a runtime that sees the entry finds it.
    ctx.layout.consumer(function, spec).await?;
    // An unchanged entry whose module left the store (deleted by hand, a
    // lost stream) is published again, module first.
    if changed || !ctx.layout.has_module(&fetched.digest).await? {
        ctx.publisher.publish_entry(&wanted, &fetched.wasm).await?;
    }
    Ok(changed)
}

/// Applies the dedicated Deployment of a `placement: dedicated` function,
/// or deletes the one a formerly dedicated function left; returns its
/// pods' selector, or the condition that says why placement failed. A
/// Deployment of that name the Function does not control is never taken
/// over nor deleted.
/// Reason of a dedicated Function whose namespace lacks a Secret its
/// runtime mounts.
const RUNTIME_SECRET_MISSING: &str = "RuntimeSecretMissing";

async fn ensure_placement(
    function: &Function,
    reference: &FunctionRef,
    ctx: &Context,
) -> Result<Result<Option<String>, Observed>, Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &reference.namespace);
    let name = resources::dedicated_name(reference);
    let uid = function.metadata.uid.clone().unwrap_or_default();
    let existing = deployments.get_opt(&name).await.map_err(Error::Kube)?;
    let ours = existing.as_ref().is_some_and(|d| {
        d.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid)
    });
    if function.spec.placement != Placement::Dedicated {
        if ours {
            let only_ours = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: existing.and_then(|d| d.metadata.uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match deployments.delete(&name, &only_ours).await {
                Ok(_) => {
                    tracing::info!(function = %reference, deployment = %name, "placement: pool; deleted the dedicated Deployment");
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(Error::Kube(e)),
            }
        }
        return Ok(Ok(None));
    }
    if existing.is_some() && !ours {
        return Ok(Err(Observed::new(
            QUEUE_READY,
            Status::False,
            "PlacementConflict",
            format!(
                "a Deployment {name} this Function does not own already exists in {}; rename or delete it, or rename the Function",
                reference.namespace
            ),
        )));
    }
    // A pod whose Secret volume is missing never starts, and says so only
    // in its own events: the Function says it instead, and no Deployment
    // waits in ContainerCreating.
    let secrets: Api<PartialObjectMeta<Secret>> =
        Api::namespaced(ctx.client.clone(), &reference.namespace);
    for secret in ctx.settings.runtime.nats_secrets.names() {
        if secrets
            .get_metadata_opt(secret)
            .await
            .map_err(Error::Kube)?
            .is_none()
        {
            return Ok(Err(Observed::new(
                QUEUE_READY,
                Status::False,
                RUNTIME_SECRET_MISSING,
                format!(
                    "placement: dedicated runs the function's own runtime in {ns}, which mounts Secret {secret} (its NATS credentials or TLS files), and {ns} has no such Secret: copy it there from Sluice's namespace, or use placement: pool",
                    ns = reference.namespace
                ),
            )));
        }
    }
    let owner = function
        .controller_owner_ref(&())
        .ok_or(Error::NoNamespace)?;
    let deployment = resources::dedicated_deployment(reference, owner, &ctx.settings.runtime);
    match deployments
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await
    {
        Ok(_) => Ok(Ok(Some(resources::dedicated_selector(reference)))),
        // Refused as invalid (a bad resource quantity in the operator's
        // settings, say): the Function's status says so.
        Err(kube::Error::Api(e)) if e.code == 422 => Ok(Err(Observed::new(
            QUEUE_READY,
            Status::False,
            "PlacementFailed",
            format!(
                "the API server refused the Deployment {name}: {}",
                e.message
            ),
        ))),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// Publishes Events for what changed: readiness or its reason, a newly
/// resolved module, a registry write.
async fn report(
    function: &Function,
    previous: &FunctionStatus,
    ready: &Observed,
    outcome: &Outcome,
    ctx: &Context,
) {
    let was = previous
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY);
    let changed = was.is_none_or(|c| c.status != ready.status.as_str() || c.reason != ready.reason);
    let mut events = Vec::new();
    if changed {
        events.push(Event {
            type_: if ready.status == Status::True {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: ready.reason.clone(),
            note: Some(truncate(&ready.message)),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    if outcome.published {
        events.push(Event {
            type_: EventType::Normal,
            reason: "Published".into(),
            note: Some(truncate(&format!(
                "registered with module sha256:{}",
                outcome
                    .digest
                    .as_ref()
                    .map_or_else(String::new, ToString::to_string)
            ))),
            action: "Publish".into(),
            secondary: None,
        });
    }
    let reference = function.object_ref(&());
    for event in events {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = %event.reason, "cannot record an Event");
        }
    }
}

/// Event notes are at most 1 kB.
fn truncate(text: &str) -> String {
    if text.len() <= 1000 {
        return text.to_owned();
    }
    let mut end = 1000;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Removes a deleted Function from NATS: its registry entry (gateways and
/// runtimes stop serving it) and its consumer, with what it still held.
async fn cleanup(function: &Function, ctx: &Context) -> Result<(), Error> {
    let namespace = function.namespace().ok_or(Error::NoNamespace)?;
    let name = function.name_any();
    let Ok(reference) = FunctionRef::new(&namespace, &name) else {
        // Never registered: its name cannot name one.
        return Ok(());
    };
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Cleanup {
        function: reference.to_string(),
        source,
    };
    ctx.publisher
        .unpublish(&reference)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    ctx.layout
        .delete_consumer(&reference)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    // A work queue keeps its messages without consumers: a Function created
    // again under the name must not run these.
    let purged = ctx
        .layout
        .purge_invocations(&reference)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    if purged > 0 {
        tracing::info!(function = %reference, purged, "dropped the invocations still queued");
    }
    ctx.metrics.removed(&reference);
    tracing::info!(function = %reference, "removed from the registry and its queue");
    let event = Event {
        type_: EventType::Normal,
        reason: "Removed".into(),
        note: Some(
            "removed from the registry; its consumer and queued invocations are deleted".into(),
        ),
        action: "Cleanup".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &function.object_ref(&()))
        .await
    {
        tracing::debug!(error = %e, "cannot record the removal");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_asking_more_memory_than_the_runtimes_take_is_refused_naming_both() {
        let spec = |memory: &str| -> FunctionSpec {
            serde_json::from_value(serde_json::json!({
                "module": { "oci": "example.com/f:1" },
                "limits": { "memory": memory },
            }))
            .unwrap()
        };
        let max = Some(ByteSize::mebibytes(512));
        assert_eq!(too_much_memory(&spec("512Mi"), max), None);
        assert_eq!(too_much_memory(&spec("2Gi"), None), None);
        let problem = too_much_memory(&spec("600Mi"), max).unwrap();
        assert!(
            problem.starts_with("spec.limits.memory: 600Mi is more than")
                && problem.contains("512Mi"),
            "{problem}"
        );
    }

    fn deployment(replicas: i32, image: &str, ready: i32) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "echo", "namespace": "default", "labels": { "app": "echo" } },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": "echo" } },
                "template": {
                    "metadata": { "labels": { "app": "echo" } },
                    "spec": { "containers": [ { "name": "runtime", "image": image } ] }
                }
            },
            "status": { "readyReplicas": ready }
        }))
        .expect("a Deployment")
    }

    fn image(deployment: &Deployment) -> String {
        let pod = deployment.spec.template.spec.as_ref().expect("a pod spec");
        pod.containers[0].image.clone().unwrap_or_default()
    }

    #[tokio::test]
    async fn fifty_scales_and_pod_readiness_reconcile_nothing_a_changed_template_does() {
        let mut events = vec![
            watcher::Event::Init,
            watcher::Event::InitApply(deployment(0, "one", 0)),
            watcher::Event::InitDone,
        ];
        for n in 1..=50 {
            events.push(watcher::Event::Apply(deployment(n % 7, "one", n % 5)));
        }
        events.push(watcher::Event::Apply(deployment(3, "two", 3)));
        events.push(watcher::Event::Apply(deployment(4, "two", 3)));
        events.push(watcher::Event::Delete(deployment(4, "two", 3)));
        events.push(watcher::Event::Apply(deployment(0, "two", 0)));
        let passed: Vec<String> = spec_changes(futures::stream::iter(events.into_iter().map(Ok)))
            .map(|d| image(&d.expect("no error")))
            .collect()
            .await;
        // The first sight, the new template, its deletion, its successor.
        assert_eq!(passed, ["one", "two", "two", "two"]);
    }
}
