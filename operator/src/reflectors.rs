//! One reflector per kind that both the controller and the autoscaler
//! read: Functions, and the Deployments the operator labels as its own.
//! Each watch fills one store; the controller drives the watch (its
//! trigger streams are these [`Feeds`]) and the autoscaler reads the same
//! [`Stores`], so the API server serves each kind one watch, not two.
//!
//! The runtime pool's Deployment ([`pool`]) is followed apart, for as long
//! as the operator runs.
//!
//! With `--watch-namespace`, one of each per namespace: a store holds what
//! one watch lists, so watches of several namespaces cannot share one.

use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use sluice_api::Function;

use crate::context::PoolTarget;
use crate::resources::MANAGED_BY;
use crate::scope::WatchScope;

/// A watch's events after they reached its store.
pub type Feed<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// What one namespace's (or the cluster's) watches hold; cheap to clone.
#[derive(Clone, Debug)]
pub struct Stores {
    pub functions: Store<Function>,
    /// Only those labelled [`MANAGED_BY`]: the dedicated runtimes.
    pub deployments: Store<Deployment>,
}

/// The watches that fill a [`Stores`]: the stores are current only while
/// someone polls these (the controller, for as long as it runs).
pub struct Feeds {
    pub functions: Feed<Function>,
    pub deployments: Feed<Deployment>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds").finish_non_exhaustive()
    }
}

/// One [`Stores`] and its [`Feeds`] per namespace of `scope` (or one for
/// the cluster). Nothing is watched until the feeds are polled.
pub fn per_scope(client: &Client, scope: &WatchScope) -> Vec<(Stores, Feeds)> {
    scope
        .apis::<Function>(client)
        .into_iter()
        .zip(scope.apis::<Deployment>(client))
        .map(|(functions, deployments)| {
            let (function_store, function_writer) = reflector::store();
            let (deployment_store, deployment_writer) = reflector::store();
            let functions = watcher(functions, watcher::Config::default().any_semantic())
                .default_backoff()
                .reflect(function_writer)
                .boxed();
            let deployments = watcher(
                deployments,
                watcher::Config::default()
                    .labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
                    .any_semantic(),
            )
            .default_backoff()
            .reflect(deployment_writer)
            .boxed();
            (
                Stores {
                    functions: function_store,
                    deployments: deployment_store,
                },
                Feeds {
                    functions,
                    deployments,
                },
            )
        })
        .collect()
}

/// Watches `api` into a store, driven by a task that ends with the
/// returned guard.
fn follow<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, AbortOnDrop)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    (reader, AbortOnDrop(task.abort_handle()))
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The runtime pool's Deployment, alone in its store, followed until the
/// returned guard is dropped.
pub fn pool(client: &Client, target: &PoolTarget) -> (Store<Deployment>, AbortOnDrop) {
    follow(
        Api::<Deployment>::namespaced(client.clone(), &target.namespace),
        watcher::Config::default()
            .fields(&format!("metadata.name={}", target.name))
            .any_semantic(),
    )
}
