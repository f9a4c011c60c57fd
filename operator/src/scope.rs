//! Where the operator watches: every namespace (the default, with
//! ClusterRoles), or only the namespaces of `--watch-namespace`, which the
//! chart's `watchNamespaces` grants with namespaced Roles only.

use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource};

/// The namespaces the operator serves Functions in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace (`Api::all`). Default.
    #[default]
    Cluster,
    /// Only these (`Api::namespaced` each); Functions elsewhere are left
    /// alone.
    Namespaces(Vec<String>),
}

impl WatchScope {
    /// The cluster with no namespace given, else those namespaces
    /// (duplicates dropped).
    pub fn new(mut namespaces: Vec<String>) -> Self {
        namespaces.sort();
        namespaces.dedup();
        if namespaces.is_empty() {
            Self::Cluster
        } else {
            Self::Namespaces(namespaces)
        }
    }

    /// One API handle per watched namespace, or one for the cluster.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Self::Cluster => vec![Api::all(client.clone())],
            Self::Namespaces(namespaces) => namespaces
                .iter()
                .map(|namespace| Api::namespaced(client.clone(), namespace))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_means_the_cluster_and_duplicates_are_dropped() {
        assert_eq!(WatchScope::new(Vec::new()), WatchScope::Cluster);
        assert_eq!(
            WatchScope::new(vec!["b".into(), "a".into(), "b".into()]),
            WatchScope::Namespaces(vec!["a".into(), "b".into()])
        );
    }
}
