//! What the controller watches and how a change maps to the Functions to
//! reconcile: Functions (by generation and finalizers), the ConfigMaps and
//! Secrets they name, the Deployments they own (spec changes only), and
//! the components runtimes compile ahead (for the Functions waiting for
//! theirs).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt as _;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate as _, WatchStreamExt as _, predicates, watcher};
use sluice_api::names::FunctionRef;
use sluice_api::{Function, FunctionSpec, Placement};
use tokio::sync::broadcast;

use super::{RECONCILE_CONCURRENCY, error_policy, reconcile};
use crate::context::Context;
use crate::reflectors::{Feeds, Stores};

/// Runs the controller until `shutdown` resolves: Functions (filtered by
/// generation, so the operator's own status writes do not loop), the
/// ConfigMaps and Secrets they name, and the Deployments they own.
///
/// With `--watch-namespace`, one controller per namespace, each with its
/// own watches: `watched` holds the shared reflectors of each (in the
/// order of [`crate::scope::WatchScope::apis`]), which the controller
/// drives for the autoscaler too.
pub async fn run(
    ctx: Arc<Context>,
    watched: Vec<(Stores, Feeds)>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt as _;
    let shutdown = shutdown.shared();
    // Whether the pool has a ready runtime decides whether a new Function's
    // Ready waits for its compile: known before the first reconcile.
    if let Some(pool) = &ctx.pool {
        let _ = pool.wait_until_ready().await;
    }
    let client = ctx.client.clone();
    let scope = ctx.settings.scope.clone();
    let controllers = watched
        .into_iter()
        .zip(scope.apis::<PartialObjectMeta<ConfigMap>>(&client))
        .zip(scope.apis::<PartialObjectMeta<Secret>>(&client))
        .map(|(((stores, feeds), config_maps), secrets)| {
            run_in(
                ctx.clone(),
                Watched {
                    stores,
                    feeds,
                    config_maps,
                    secrets,
                },
                shutdown.clone(),
            )
        });
    futures::future::join_all(controllers).await;
}

/// What one controller watches: the same namespace (or the cluster) for
/// each kind.
struct Watched {
    stores: Stores,
    feeds: Feeds,
    config_maps: Api<PartialObjectMeta<ConfigMap>>,
    secrets: Api<PartialObjectMeta<Secret>>,
}

async fn run_in(
    ctx: Arc<Context>,
    watched: Watched,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let reader = watched.stores.functions;
    let stream = watched.feeds.functions.applied_objects().predicate_filter(
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
    let compiled = waiting_for(ctx.compiled.subscribe(), reader.clone());
    let controller = Controller::for_stream(stream, reader)
        .owns_stream(spec_changes(watched.feeds.deployments))
        .reconcile_on(compiled)
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

/// The Functions of `store` that waited for a component just stored
/// compiled ([`crate::compiled`]); those of other namespaces are other
/// controllers'.
fn waiting_for(
    news: broadcast::Receiver<Vec<FunctionRef>>,
    store: reflector::Store<Function>,
) -> impl futures::Stream<Item = ObjectRef<Function>> + Send + 'static {
    let announced = futures::stream::unfold(news, |mut news| async move {
        loop {
            match news.recv().await {
                Ok(functions) => return Some((functions, news)),
                // The waiting ones look again by themselves meanwhile.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    announced.flat_map(move |functions| {
        let waiting: Vec<_> = functions
            .into_iter()
            .map(|f| ObjectRef::new(&f.name).within(&f.namespace))
            .filter(|f| store.get(f).is_some())
            .collect();
        futures::stream::iter(waiting)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
