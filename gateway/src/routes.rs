//! Which function a request path names, and what path the function sees.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_api::auth::{ApiKeyDigest, Auth};
use sluice_api::names::{BadFunctionRef, FunctionRef};
use sluice_api::{ClaimOrder, FunctionSpec};

/// The functions the gateway routes to, with their routes.
#[derive(Debug, Default)]
pub struct RoutedFunctions {
    specs: HashMap<FunctionRef, Arc<FunctionSpec>>,
    routes: RouteTable,
    /// The digests of each function's `spec.auth.apiKeys` keys.
    api_keys: HashMap<FunctionRef, Vec<ApiKeyDigest>>,
}

impl RoutedFunctions {
    /// The functions of a local folder: a custom path claimed twice is an
    /// error to fix before start-up.
    pub fn new(specs: HashMap<FunctionRef, Arc<FunctionSpec>>) -> Result<Self, RouteConflict> {
        let routes = RouteTable::new(custom_routes(&specs, &HashMap::new()))?;
        Ok(Self {
            specs,
            routes,
            api_keys: HashMap::new(),
        })
    }

    /// The functions of a shared registry, which the gateway cannot refuse:
    /// a custom path claimed twice stays with the function created first
    /// (`created`: RFC 3339 creation times from the registry entries; see
    /// [`ClaimOrder`]), as on every other gateway and in the operator's
    /// `PathConflict` status, and the later claims are returned to be
    /// reported.
    pub fn first_claim_wins(
        specs: HashMap<FunctionRef, Arc<FunctionSpec>>,
        created: &HashMap<FunctionRef, String>,
    ) -> (Self, Vec<RouteConflict>) {
        let (routes, conflicts) = RouteTable::first_claim_wins(custom_routes(&specs, created));
        let functions = Self {
            specs,
            routes,
            api_keys: HashMap::new(),
        };
        (functions, conflicts)
    }

    /// The same functions, with the digests of their API keys.
    pub fn with_api_keys(mut self, api_keys: HashMap<FunctionRef, Vec<ApiKeyDigest>>) -> Self {
        self.api_keys = api_keys;
        self
    }

    /// Each function's `spec.auth` and API-key digests.
    pub fn auth(&self) -> impl Iterator<Item = (&FunctionRef, Option<&Auth>, &[ApiKeyDigest])> {
        self.specs.iter().map(|(function, spec)| {
            let keys = self.api_keys.get(function).map_or(&[][..], Vec::as_slice);
            (function, spec.auth.as_ref(), keys)
        })
    }

    pub fn get(&self, function: &FunctionRef) -> Option<&Arc<FunctionSpec>> {
        self.specs.get(function)
    }

    /// Resolves a path under a custom trigger route.
    pub fn resolve_custom(&self, path: &str) -> Option<Resolved> {
        self.routes.resolve_custom(path)
    }
}

/// Custom trigger paths, in [`ClaimOrder`]: earliest created first, then
/// by name.
fn custom_routes<'a>(
    specs: &'a HashMap<FunctionRef, Arc<FunctionSpec>>,
    created: &HashMap<FunctionRef, String>,
) -> Vec<(&'a FunctionRef, Option<&'a str>)> {
    let mut sorted: Vec<_> = specs
        .iter()
        .map(|(f, spec)| {
            (
                ClaimOrder::new(f.clone(), created.get(f).cloned()),
                (f, spec.triggers.http.as_ref().map(|h| h.path.as_str())),
            )
        })
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.into_iter().map(|(_, route)| route).collect()
}

/// The routes of the deployed functions: the default `/fn/<ns>/<name>`
/// and any `triggers.http.path`.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Custom prefixes, longest first so the most specific wins.
    custom: Vec<(String, FunctionRef)>,
}

/// A request path resolved to a function.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    pub function: FunctionRef,
    /// The prefix that was stripped (`X-Forwarded-Prefix`).
    pub prefix: String,
    /// What the function sees, always starting with `/`.
    pub rest: String,
}

/// Why a set of routes cannot be served together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("spec.triggers.http.path {path} of {second} is already the route of {first}")]
pub struct RouteConflict {
    pub path: String,
    pub first: FunctionRef,
    pub second: FunctionRef,
}

impl RouteTable {
    /// Builds the table from each function's custom path, if any.
    pub fn new<'a>(
        custom: impl IntoIterator<Item = (&'a FunctionRef, Option<&'a str>)>,
    ) -> Result<Self, RouteConflict> {
        let (table, mut conflicts) = Self::first_claim_wins(custom);
        match conflicts.drain(..).next() {
            Some(conflict) => Err(conflict),
            None => Ok(table),
        }
    }

    /// Like [`Self::new`], but a path claimed again stays with its first
    /// claimant; the later claims are returned, to be reported.
    pub fn first_claim_wins<'a>(
        custom: impl IntoIterator<Item = (&'a FunctionRef, Option<&'a str>)>,
    ) -> (Self, Vec<RouteConflict>) {
        let mut seen: HashMap<String, FunctionRef> = HashMap::new();
        let mut conflicts = Vec::new();
        for (function, path) in custom {
            let Some(path) = path else { continue };
            let path = path.trim_end_matches('/').to_owned();
            if let Some(first) = seen.get(&path) {
                conflicts.push(RouteConflict {
                    path,
                    first: first.clone(),
                    second: function.clone(),
                });
                continue;
            }
            seen.insert(path, function.clone());
        }
        let mut custom: Vec<_> = seen.into_iter().collect();
        custom.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        (Self { custom }, conflicts)
    }

    /// Resolves a path under a custom trigger route.
    pub fn resolve_custom(&self, path: &str) -> Option<Resolved> {
        self.custom.iter().find_map(|(prefix, function)| {
            let rest = strip_segment_prefix(path, prefix)?;
            Some(Resolved {
                function: function.clone(),
                prefix: prefix.clone(),
                rest,
            })
        })
    }
}

/// Resolves `<base>/<ns>/<name>[/<rest>]`, for `base` `/fn` or `/async/fn`.
/// `Err` when the `ns/name` part is not a valid reference.
pub fn resolve_default(base: &str, path: &str) -> Option<Result<Resolved, BadFunctionRef>> {
    let tail = path.strip_prefix(base)?.strip_prefix('/')?;
    let mut parts = tail.splitn(3, '/');
    let (namespace, name) = (parts.next()?, parts.next()?);
    let rest = format!("/{}", parts.next().unwrap_or(""));
    Some(FunctionRef::new(namespace, name).map(|function| Resolved {
        prefix: format!("{base}/{namespace}/{name}"),
        function,
        rest,
    }))
}

/// `path` below `prefix` on a segment boundary, as the function sees it.
fn strip_segment_prefix(path: &str, prefix: &str) -> Option<String> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/".to_owned())
    } else if rest.starts_with('/') {
        Some(rest.to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> FunctionRef {
        s.parse().unwrap()
    }

    #[test]
    fn default_routes_strip_the_function_prefix() {
        let r = resolve_default("/fn", "/fn/default/echo/a/b")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.function, r.prefix.as_str(), r.rest.as_str()),
            (f("default/echo"), "/fn/default/echo", "/a/b")
        );
        assert_eq!(
            resolve_default("/fn", "/fn/default/echo")
                .unwrap()
                .unwrap()
                .rest,
            "/"
        );
        assert_eq!(
            resolve_default("/fn", "/fn/default/echo/")
                .unwrap()
                .unwrap()
                .rest,
            "/"
        );
        assert_eq!(
            resolve_default("/async/fn", "/async/fn/a/b/c")
                .unwrap()
                .unwrap()
                .prefix,
            "/async/fn/a/b"
        );
        assert_eq!(resolve_default("/fn", "/fn/default"), None);
        assert_eq!(resolve_default("/fn", "/fnord/a/b"), None);
        assert_eq!(
            resolve_default("/fn", "/fn/UP/x").map(|r| r.map_err(|e| e.text().to_owned())),
            Some(Err("UP/x".into()))
        );
    }

    #[test]
    fn custom_routes_match_whole_segments_and_the_longest_wins() {
        let a = f("default/a");
        let b = f("default/b");
        let table = RouteTable::new([(&a, Some("/api")), (&b, Some("/api/v2/"))]).unwrap();
        assert_eq!(table.resolve_custom("/api/x").unwrap().function, a);
        assert_eq!(table.resolve_custom("/api").unwrap().rest, "/");
        let r = table.resolve_custom("/api/v2/x").unwrap();
        assert_eq!(
            (r.function, r.prefix.as_str(), r.rest.as_str()),
            (b, "/api/v2", "/x")
        );
        assert_eq!(table.resolve_custom("/apix"), None);
    }

    #[test]
    fn two_functions_cannot_share_a_route() {
        let a = f("default/a");
        let b = f("default/b");
        let err = RouteTable::new([(&a, Some("/x")), (&b, Some("/x/"))]).unwrap_err();
        assert_eq!(err.path, "/x");
    }

    #[test]
    fn a_shared_registry_keeps_the_first_claim_and_reports_the_rest() {
        let a = f("default/a");
        let b = f("default/b");
        let c = f("default/c");
        let (table, conflicts) =
            RouteTable::first_claim_wins([(&a, Some("/x")), (&b, Some("/x")), (&c, Some("/y"))]);
        assert_eq!(table.resolve_custom("/x/1").unwrap().function, a);
        assert_eq!(table.resolve_custom("/y").unwrap().function, c);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].second, b);
    }

    #[test]
    fn a_later_function_cannot_take_a_path_whatever_its_name() {
        let owner = f("shop/checkout");
        let thief = f("tenant-b/a-thief");
        let spec = |path: &str| {
            let mut spec: FunctionSpec =
                serde_json::from_value(serde_json::json!({ "module": { "file": "x.wasm" } }))
                    .unwrap();
            spec.triggers.http = Some(sluice_api::HttpTrigger { path: path.into() });
            Arc::new(spec)
        };
        let specs = HashMap::from([
            (owner.clone(), spec("/checkout")),
            (thief.clone(), spec("/checkout/")),
        ]);
        let created = HashMap::from([
            (owner.clone(), "2026-12-01T00:00:00Z".to_owned()),
            (thief.clone(), "2026-12-06T07:00:00Z".to_owned()),
        ]);
        // Every gateway, whatever order it learnt the entries in.
        for _ in 0..4 {
            let (routed, conflicts) = RoutedFunctions::first_claim_wins(specs.clone(), &created);
            assert_eq!(
                routed.resolve_custom("/checkout/pay").unwrap().function,
                owner
            );
            assert_eq!(conflicts.len(), 1);
            assert_eq!(
                (&conflicts[0].first, &conflicts[0].second),
                (&owner, &thief)
            );
        }
    }
}
