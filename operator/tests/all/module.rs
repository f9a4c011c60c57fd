//! Resolving module sources against real servers on loopback: a download
//! server, a stand-in Kubernetes API for ConfigMaps and Secrets, and a real
//! OCI registry (`scripts/oci-registry.sh` installs it).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_api::egress::EgressPolicy;
use sluice_api::{ConfigMapKey, ModuleDigest, ModuleSource};
use sluice_operator::module::{
    DEFAULT_MAX_MODULE_BYTES, Fetched, FetcherConfig, ModuleError, ModuleFetcher,
};

use crate::support::http::{Framing, HttpServer, Reply};
use crate::support::registry::{self, Registry};

const NAMESPACE: &str = "fns";
/// The smallest core module: the header alone.
const CORE_MODULE: &[u8] = b"\0asm\x01\0\0\0";

fn hello() -> Vec<u8> {
    std::fs::read(sluice_examples::component("hello")).unwrap()
}

/// The test servers' loopback addresses, which the egress guard refuses
/// unless allowed.
fn loopback() -> Arc<EgressPolicy> {
    Arc::new(EgressPolicy::parse(&["127.0.0.1", "::1"], &[]).unwrap())
}

fn fetcher() -> ModuleFetcher {
    fetcher_with(DEFAULT_MAX_MODULE_BYTES, &[])
}

fn fetcher_with(max_module_bytes: usize, insecure_registries: &[&str]) -> ModuleFetcher {
    ModuleFetcher::new(FetcherConfig {
        max_module_bytes,
        insecure_registries: insecure_registries
            .iter()
            .map(|r| (*r).to_owned())
            .collect(),
        egress: loopback(),
    })
}

/// A Kubernetes API holding nothing: 404 for every object.
async fn empty_api() -> HttpServer {
    HttpServer::start(|request| {
        Reply::kubernetes_status(404, "NotFound", &format!("{} not found", request.path))
    })
    .await
}

fn url(url: &str, sha256: &ModuleDigest) -> ModuleSource {
    ModuleSource {
        url: Some(url.to_owned()),
        sha256: Some(sha256.to_string()),
        ..ModuleSource::default()
    }
}

fn oci(reference: &str, pull_secret: Option<&str>) -> ModuleSource {
    ModuleSource {
        oci: Some(reference.to_owned()),
        pull_secret: pull_secret.map(str::to_owned),
        ..ModuleSource::default()
    }
}

fn config_map(name: &str, key: &str) -> ModuleSource {
    ModuleSource {
        config_map: Some(ConfigMapKey {
            name: name.into(),
            key: key.into(),
        }),
        ..ModuleSource::default()
    }
}

async fn fetch(
    fetcher: &ModuleFetcher,
    api: &HttpServer,
    source: &ModuleSource,
) -> Result<Fetched, ModuleError> {
    fetcher.fetch(&api.kube_client(), NAMESPACE, source).await
}

/// Asserts `result` failed with `reason`, a message containing `text`,
/// and `transient`; returns the message.
#[track_caller]
fn assert_failed(
    result: Result<Fetched, ModuleError>,
    reason: &str,
    text: &str,
    transient: bool,
) -> String {
    let error = match result {
        Ok(fetched) => panic!("expected {reason}, fetched {fetched:?}"),
        Err(e) => e,
    };
    let message = error.to_string();
    eprintln!(
        "DEBUG {} transient={}: {message}",
        error.reason(),
        error.is_transient()
    );
    assert_eq!(error.reason(), reason, "{message}");
    assert!(message.contains(text), "{text:?} not in: {message}");
    assert_eq!(error.is_transient(), transient, "{message}");
    message
}

/// Asserts that nothing reached `internal`, the server a tenant wanted the
/// operator to ask.
#[track_caller]
fn assert_never_asked(internal: &HttpServer) {
    assert!(
        internal.requests().is_empty(),
        "the internal server was asked: {:?}",
        internal.requests()
    );
}

// ---- url ----

#[tokio::test]
async fn a_url_with_the_right_sha256_is_fetched_and_any_other_refused() {
    let wasm = hello();
    let served = wasm.clone();
    let server = HttpServer::start(move |_| Reply::bytes(served.clone())).await;
    let api = empty_api().await;
    let digest = ModuleDigest::of(&wasm);
    let link = server.url("/hello.wasm");

    let fetched = fetch(&fetcher(), &api, &url(&link, &digest)).await.unwrap();
    assert_eq!(fetched.wasm, wasm);
    assert_eq!(fetched.digest, digest);
    assert_eq!(fetched.origin, link);
    let request = &server.requests()[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("GET", "/hello.wasm")
    );
    assert!(
        request
            .headers
            .iter()
            .any(|(name, value)| name == "user-agent" && value.starts_with("sluice-operator/")),
        "{request:?}"
    );

    let other = ModuleDigest::of(b"something else");
    let message = assert_failed(
        fetch(&fetcher(), &api, &url(&link, &other)).await,
        "ModuleDigestMismatch",
        "spec.module.sha256",
        false,
    );
    assert!(
        message.contains(digest.as_str()) && message.contains(other.as_str()),
        "{message}"
    );
}

#[tokio::test]
async fn a_url_or_a_redirect_to_an_internal_address_is_refused_and_never_requested() {
    let wasm = hello();
    let digest = ModuleDigest::of(&wasm);
    let served = wasm.clone();
    let internal = HttpServer::start(move |_| Reply::bytes(served.clone())).await;
    let api = empty_api().await;
    let public_only = ModuleFetcher::new(FetcherConfig::default());
    let port = internal.addr.port();
    // By address, and by a name that resolves to it.
    for (link, reason) in [
        (
            internal.url("/secret"),
            "address 127.0.0.1, a loopback address",
        ),
        (
            format!("http://localhost:{port}/secret"),
            "localhost resolves to",
        ),
    ] {
        let message = assert_failed(
            fetch(&public_only, &api, &url(&link, &digest)).await,
            "ModuleDownloadRefused",
            reason,
            false,
        );
        assert!(
            message.contains("--runtime-egress-allow")
                && message.matches("refused unless").count() == 1,
            "{message}"
        );
    }
    // A server the operator may reach cannot redirect it elsewhere.
    let target = format!("http://127.0.0.2:{port}/secret");
    let redirecting = HttpServer::start(move |_| Reply::redirect(&target)).await;
    assert_failed(
        fetch(&fetcher(), &api, &url(&redirecting.url("/m.wasm"), &digest)).await,
        "ModuleDownloadRefused",
        "address 127.0.0.2, a loopback address",
        false,
    );
    assert_eq!(redirecting.requests().len(), 1);
    assert_never_asked(&internal);
}

#[tokio::test]
async fn a_failed_download_names_the_status_or_the_cause() {
    let server = HttpServer::start(|request| match request.path.as_str() {
        "/missing.wasm" => Reply::status(404),
        _ => Reply::status(503),
    })
    .await;
    let api = empty_api().await;
    let digest = ModuleDigest::of(b"");
    let fetcher = fetcher();

    assert_failed(
        fetch(&fetcher, &api, &url(&server.url("/missing.wasm"), &digest)).await,
        "ModuleDownloadFailed",
        "answered 404 Not Found",
        false,
    );
    assert_failed(
        fetch(&fetcher, &api, &url(&server.url("/busy.wasm"), &digest)).await,
        "ModuleDownloadFailed",
        "answered 503 Service Unavailable",
        true,
    );
    // Nothing listens on a port just freed.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let message = assert_failed(
        fetch(
            &fetcher,
            &api,
            &url(&format!("http://{closed}/x.wasm"), &digest),
        )
        .await,
        "ModuleDownloadFailed",
        &format!("cannot download http://{closed}/x.wasm: "),
        true,
    );
    assert!(message.contains("Connection refused"), "{message}");
}

#[tokio::test]
async fn a_download_over_the_limit_is_cut_with_or_without_content_length() {
    let wasm = hello();
    let served = wasm.clone();
    let server = HttpServer::start(move |request| {
        let reply = Reply::bytes(served.clone());
        match request.path.as_str() {
            "/unannounced.wasm" => reply.framed(Framing::UntilClose),
            // Claims a terabyte: refused on the header, or the test would
            // wait for bytes that never come.
            "/terabyte.wasm" => reply.framed(Framing::ClaimedLength(1 << 40)),
            _ => reply,
        }
    })
    .await;
    let api = empty_api().await;
    let digest = ModuleDigest::of(&wasm);
    let small = fetcher_with(wasm.len() - 1, &[]);

    assert_failed(
        fetch(&small, &api, &url(&server.url("/hello.wasm"), &digest)).await,
        "ModuleTooLarge",
        &format!(
            "is {} bytes, over the operator's limit of {}",
            wasm.len(),
            wasm.len() - 1
        ),
        false,
    );
    assert_failed(
        fetch(
            &small,
            &api,
            &url(&server.url("/unannounced.wasm"), &digest),
        )
        .await,
        "ModuleTooLarge",
        "is larger, over the operator's limit",
        false,
    );
    assert_failed(
        fetch(
            &fetcher(),
            &api,
            &url(&server.url("/terabyte.wasm"), &digest),
        )
        .await,
        "ModuleTooLarge",
        &format!("is 1099511627776 bytes, over the operator's limit of {DEFAULT_MAX_MODULE_BYTES}"),
        false,
    );
    // Exactly at the limit is allowed, announced or not.
    let exact = fetcher_with(wasm.len(), &[]);
    for path in ["/hello.wasm", "/unannounced.wasm"] {
        let fetched = fetch(&exact, &api, &url(&server.url(path), &digest))
            .await
            .unwrap();
        assert_eq!(fetched.wasm, wasm, "{path}");
    }
}

#[tokio::test]
async fn downloaded_bytes_must_be_an_http_component() {
    let server = HttpServer::start(|_| Reply::bytes(CORE_MODULE)).await;
    let api = empty_api().await;
    let link = server.url("/core.wasm");
    let message = assert_failed(
        fetch(
            &fetcher(),
            &api,
            &url(&link, &ModuleDigest::of(CORE_MODULE)),
        )
        .await,
        "NotAComponent",
        "wasm32-wasip2",
        false,
    );
    assert!(message.starts_with(&link), "{message}");
}

#[tokio::test]
async fn sources_that_mean_nothing_in_a_cluster_are_refused() {
    let api = empty_api().await;
    let fetcher = fetcher();
    let file = ModuleSource {
        file: Some("hello.wasm".into()),
        ..ModuleSource::default()
    };
    assert_failed(
        fetch(&fetcher, &api, &file).await,
        "FileSourceInCluster",
        "spec.module.file is for local mode only; use configMap, url or oci",
        false,
    );
    assert_failed(
        fetch(&fetcher, &api, &ModuleSource::default()).await,
        "InvalidModuleSource",
        "names no source",
        false,
    );
    let ftp = url("ftp://example.com/hello.wasm", &ModuleDigest::of(b""));
    assert_failed(
        fetch(&fetcher, &api, &ftp).await,
        "InvalidModuleSource",
        "must be http or https, not ftp",
        false,
    );
    let mut bad_digest = url("http://127.0.0.1:1/x.wasm", &ModuleDigest::of(b""));
    bad_digest.sha256 = Some("ABC".into());
    assert_failed(
        fetch(&fetcher, &api, &bad_digest).await,
        "InvalidModuleSource",
        "spec.module.sha256 is not 64 lowercase hex digits",
        false,
    );
    assert_failed(
        fetch(&fetcher, &api, &oci("Not A Reference!", None)).await,
        "InvalidModuleSource",
        "spec.module.oci is not an OCI reference",
        false,
    );
}

// ---- configMap ----

/// A Kubernetes API with ConfigMap `hello-wasm` (binaryData `hello.wasm`,
/// data `README`), ConfigMap `text` (data `module`), and a refusal to
/// read `secret-plans`.
async fn api_with_config_maps(wasm: Vec<u8>) -> HttpServer {
    HttpServer::start(move |request| {
        let prefix = format!("/api/v1/namespaces/{NAMESPACE}/configmaps/");
        let name = request.path.strip_prefix(&prefix).unwrap_or_default();
        let meta = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        };
        match name {
            "hello-wasm" => Reply::json(
                200,
                &ConfigMap {
                    metadata: meta,
                    binary_data: Some(BTreeMap::from([(
                        "hello.wasm".to_owned(),
                        ByteString(wasm.clone()),
                    )])),
                    data: Some(BTreeMap::from([("README".to_owned(), "hi".to_owned())])),
                    ..ConfigMap::default()
                },
            ),
            "text" => Reply::json(
                200,
                &ConfigMap {
                    metadata: meta,
                    data: Some(BTreeMap::from([("module".to_owned(), "not wasm".to_owned())])),
                    ..ConfigMap::default()
                },
            ),
            "secret-plans" => Reply::kubernetes_status(
                403,
                "Forbidden",
                "configmaps \"secret-plans\" is forbidden: User \"system:serviceaccount:sluice:operator\" cannot get resource \"configmaps\"",
            ),
            _ => Reply::kubernetes_status(
                404,
                "NotFound",
                &format!("configmaps \"{name}\" not found"),
            ),
        }
    })
    .await
}

#[tokio::test]
async fn a_config_map_key_is_fetched_and_its_absence_named() {
    let wasm = hello();
    let api = api_with_config_maps(wasm.clone()).await;
    let fetcher = fetcher();

    let fetched = fetch(&fetcher, &api, &config_map("hello-wasm", "hello.wasm"))
        .await
        .unwrap();
    assert_eq!(fetched.wasm, wasm);
    assert_eq!(fetched.digest, ModuleDigest::of(&wasm));
    assert_eq!(fetched.origin, "configMap hello-wasm key hello.wasm");

    assert_failed(
        fetch(&fetcher, &api, &config_map("hello-wasm", "hello")).await,
        "ConfigMapKeyNotFound",
        "ConfigMap fns/hello-wasm has no key \"hello\" in binaryData or data (it has README, hello.wasm)",
        false,
    );
    assert_failed(
        fetch(&fetcher, &api, &config_map("goodbye-wasm", "hello.wasm")).await,
        "ConfigMapNotFound",
        "ConfigMap fns/goodbye-wasm does not exist",
        false,
    );
    assert_failed(
        fetch(&fetcher, &api, &config_map("secret-plans", "x")).await,
        "KubernetesApi",
        "cannot get ConfigMap fns/secret-plans: forbidden: the operator's service account needs RBAC permission to get configmaps in namespace fns",
        true,
    );
    // A text key is read as its UTF-8 bytes, which are no component.
    assert_failed(
        fetch(&fetcher, &api, &config_map("text", "module")).await,
        "NotAComponent",
        "configMap text key module is not a WebAssembly component: not WebAssembly",
        false,
    );
}

#[tokio::test]
async fn a_config_map_component_is_held_to_sha256_and_the_limit() {
    let wasm = hello();
    let api = api_with_config_maps(wasm.clone()).await;
    let mut pinned = config_map("hello-wasm", "hello.wasm");
    pinned.sha256 = Some(ModuleDigest::of(&wasm).to_string());
    fetch(&fetcher(), &api, &pinned).await.unwrap();

    pinned.sha256 = Some(ModuleDigest::of(b"other").to_string());
    assert_failed(
        fetch(&fetcher(), &api, &pinned).await,
        "ModuleDigestMismatch",
        "configMap hello-wasm key hello.wasm has SHA-256",
        false,
    );
    assert_failed(
        fetch(
            &fetcher_with(100, &[]),
            &api,
            &config_map("hello-wasm", "hello.wasm"),
        )
        .await,
        "ModuleTooLarge",
        "over the operator's limit of 100 bytes",
        false,
    );
}

// ---- oci ----

#[tokio::test]
async fn a_component_is_pulled_by_tag_and_by_digest() {
    let registry = Registry::start();
    let wasm = hello();
    let manifest = registry.push_component("sluice/hello:1.0.0", &wasm).await;
    let api = empty_api().await;
    let fetcher = fetcher_with(DEFAULT_MAX_MODULE_BYTES, &[&registry.host]);
    let digest = ModuleDigest::of(&wasm);
    let origin = format!("{}/sluice/hello@{manifest}", registry.host);

    let by_tag = fetch(
        &fetcher,
        &api,
        &oci(&registry.reference("sluice/hello:1.0.0"), None),
    )
    .await
    .unwrap();
    assert_eq!(by_tag.wasm, wasm);
    assert_eq!(by_tag.digest, digest);
    assert_eq!(by_tag.origin, origin);

    let by_digest = fetch(
        &fetcher,
        &api,
        &oci(
            &registry.reference(&format!("sluice/hello@{manifest}")),
            None,
        ),
    )
    .await
    .unwrap();
    assert_eq!(by_digest, by_tag);

    // spec.module.sha256 pins the component whatever the tag points at.
    let mut pinned = oci(&registry.reference("sluice/hello:1.0.0"), None);
    pinned.sha256 = Some(digest.to_string());
    assert_eq!(fetch(&fetcher, &api, &pinned).await.unwrap(), by_tag);
    pinned.sha256 = Some(ModuleDigest::of(b"other").to_string());
    assert_failed(
        fetch(&fetcher, &api, &pinned).await,
        "ModuleDigestMismatch",
        &format!("{origin} has SHA-256 {digest}, but spec.module.sha256 says"),
        false,
    );
}

#[tokio::test]
async fn what_a_registry_does_not_hold_is_named() {
    let registry = Registry::start();
    registry
        .push_component("sluice/hello:1.0.0", &hello())
        .await;
    let api = empty_api().await;
    let fetcher = fetcher_with(DEFAULT_MAX_MODULE_BYTES, &[&registry.host]);

    let unknown_tag = registry.reference("sluice/hello:2.0.0");
    let message = assert_failed(
        fetch(&fetcher, &api, &oci(&unknown_tag, None)).await,
        "OciPullFailed",
        &format!("cannot pull {unknown_tag}: "),
        false,
    );
    assert!(
        message.contains("no such repository, tag or digest in the registry")
            && message.contains("manifest unknown"),
        "{message}"
    );
    assert_failed(
        fetch(
            &fetcher,
            &api,
            &oci(&registry.reference("sluice/nothing:1"), None),
        )
        .await,
        "OciPullFailed",
        "no such repository, tag or digest in the registry",
        false,
    );
}

#[tokio::test]
async fn only_wasm_component_artifacts_are_pulled() {
    let registry = Registry::start();
    let wasm = hello();
    registry
        .push(
            "sluice/image:1",
            "application/vnd.oci.image.config.v1+json",
            &[(
                b"not a tarball".as_slice(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )],
        )
        .await;
    registry
        .push(
            "sluice/two:1",
            registry::WASM_CONFIG,
            &[
                (wasm.as_slice(), registry::WASM_LAYER),
                (CORE_MODULE, registry::WASM_LAYER),
            ],
        )
        .await;
    registry.push_component("sluice/core:1", CORE_MODULE).await;
    registry
        .push(
            "sluice/legacy:1",
            "application/vnd.wasm.config.v1+json",
            &[(
                wasm.as_slice(),
                "application/vnd.module.wasm.content.layer.v1+wasm",
            )],
        )
        .await;
    let api = empty_api().await;
    let fetcher = fetcher_with(DEFAULT_MAX_MODULE_BYTES, &[&registry.host]);

    assert_failed(
        fetch(
            &fetcher,
            &api,
            &oci(&registry.reference("sluice/image:1"), None),
        )
        .await,
        "OciPullFailed",
        "it is not a WebAssembly component artifact: its config is application/vnd.oci.image.config.v1+json \
         and its layers are [application/vnd.oci.image.layer.v1.tar+gzip]; \
         expected config application/vnd.wasm.config.v0+json and one application/wasm layer",
        false,
    );
    assert_failed(
        fetch(
            &fetcher,
            &api,
            &oci(&registry.reference("sluice/two:1"), None),
        )
        .await,
        "OciPullFailed",
        "its layers are [application/wasm, application/wasm]",
        false,
    );
    assert_failed(
        fetch(
            &fetcher,
            &api,
            &oci(&registry.reference("sluice/core:1"), None),
        )
        .await,
        "NotAComponent",
        "a core WebAssembly module, not a component",
        false,
    );
    let legacy = fetch(
        &fetcher,
        &api,
        &oci(&registry.reference("sluice/legacy:1"), None),
    )
    .await
    .unwrap();
    assert_eq!(legacy.wasm, wasm);
}

#[tokio::test]
async fn a_layer_over_the_limit_is_not_pulled() {
    let registry = Registry::start();
    let wasm = hello();
    registry.push_component("sluice/hello:1", &wasm).await;
    let api = empty_api().await;
    let small = fetcher_with(wasm.len() - 1, &[&registry.host]);
    assert_failed(
        fetch(
            &small,
            &api,
            &oci(&registry.reference("sluice/hello:1"), None),
        )
        .await,
        "ModuleTooLarge",
        &format!(
            "is {} bytes, over the operator's limit of {}",
            wasm.len(),
            wasm.len() - 1
        ),
        false,
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_worth_retrying() {
    let registry = Registry::start();
    registry.push_component("sluice/hello:1", &hello()).await;
    let api = empty_api().await;
    let reference = registry.reference("sluice/hello:1");

    // Not named insecure: spoken to in TLS, which a plain-HTTP registry
    // cannot answer.
    assert_failed(
        fetch(&fetcher(), &api, &oci(&reference, None)).await,
        "OciPullFailed",
        &format!("cannot pull {reference}: "),
        true,
    );

    let host = registry.host.clone();
    drop(registry);
    let message = assert_failed(
        fetch(
            &fetcher_with(DEFAULT_MAX_MODULE_BYTES, &[&host]),
            &api,
            &oci(&reference, None),
        )
        .await,
        "OciPullFailed",
        &format!("cannot pull {reference}: "),
        true,
    );
    assert!(message.contains("Connection refused"), "{message}");
}

#[tokio::test]
async fn a_registry_sending_other_bytes_than_its_manifest_names_is_caught() {
    // A registry stand-in whose manifest names hello's digest but whose
    // blob is something else: a real registry would not, a broken cache or
    // a tampering proxy might.
    let wasm = hello();
    let named = ModuleDigest::of(&wasm);
    let manifest = manifest_of(&wasm);
    let registry = HttpServer::start(move |request| match request.path.as_str() {
        "/v2/" => Reply::json(200, &serde_json::json!({})),
        "/v2/evil/hello/manifests/1" => Reply {
            content_type: "application/vnd.oci.image.manifest.v1+json",
            ..Reply::json(200, &manifest)
        },
        path if path.starts_with("/v2/evil/hello/blobs/") => Reply::bytes(CORE_MODULE),
        _ => Reply::status(404),
    })
    .await;
    let api = empty_api().await;
    let host = registry.addr.to_string();
    let fetcher = fetcher_with(DEFAULT_MAX_MODULE_BYTES, &[&host]);
    assert_failed(
        fetch(&fetcher, &api, &oci(&format!("{host}/evil/hello:1"), None)).await,
        "ModuleDigestMismatch",
        &format!(
            "has SHA-256 {}, but the layer descriptor of its manifest says {named}",
            ModuleDigest::of(CORE_MODULE)
        ),
        false,
    );
}

/// A Wasm artifact manifest naming `wasm` as its one layer.
fn manifest_of(wasm: &[u8]) -> serde_json::Value {
    let config = b"{}";
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": registry::WASM_CONFIG,
            "digest": format!("sha256:{}", ModuleDigest::of(config)),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": registry::WASM_LAYER,
            "digest": format!("sha256:{}", ModuleDigest::of(wasm)),
            "size": wasm.len(),
        }],
    })
}

#[tokio::test]
async fn a_registry_at_an_internal_address_or_a_redirect_there_is_refused_and_never_asked() {
    // What a tenant would like the operator to read for it.
    let internal =
        HttpServer::start(|_| Reply::json(200, &serde_json::json!({ "token": "s3cret" }))).await;
    let port = internal.addr.port();
    let api = empty_api().await;
    // The admin named one registry, on loopback like the real node's is on
    // a private address; the guard allows nothing else that is not public.
    let registry = Registry::start();
    let wasm = hello();
    registry.push_component("sluice/hello:1", &wasm).await;
    let guarded = |named: &[&str]| {
        ModuleFetcher::new(FetcherConfig {
            insecure_registries: named.iter().map(|r| (*r).to_owned()).collect(),
            ..FetcherConfig::default()
        })
    };
    let fetched = fetch(
        &guarded(&[&registry.host]),
        &api,
        &oci(&registry.reference("sluice/hello:1"), None),
    )
    .await
    .unwrap();
    assert_eq!(fetched.wasm, wasm, "the named registry is pulled from");

    for (reference, reason) in [
        // Unspecified: 0.0.0.0 reaches this host. (Every address here
        // stays on the machine should the guard ever let one through; the
        // classes of the others, such as 169.254.169.254, are unit-tested
        // in sluice_api::egress.)
        (
            format!("0.0.0.0:{port}/latest/meta-data:1"),
            "address 0.0.0.0, an unspecified address",
        ),
        (
            format!("127.0.0.1:{port}/sluice/hello:1"),
            "address 127.0.0.1, a loopback address",
        ),
        (
            format!("localhost:{port}/sluice/hello:1"),
            "localhost resolves to",
        ),
    ] {
        let message = assert_failed(
            fetch(&guarded(&[&registry.host]), &api, &oci(&reference, None)).await,
            "ModuleDownloadRefused",
            reason,
            false,
        );
        assert!(
            message.starts_with(&format!("cannot pull {reference}: "))
                && message.contains("--insecure-registry")
                && message.matches("refused unless").count() == 1,
            "{message}"
        );
    }

    // A named registry cannot send the pull on to an internal address:
    // neither by redirecting the blob to an address or a name, nor by
    // naming one as its token realm (where a pull secret would go).
    let manifest = manifest_of(&wasm);
    let challenge = format!("Bearer realm=\"http://127.0.0.2:{port}/token\",service=\"registry\"");
    for (sent_on, redirect) in [
        (
            "/v2/evil/hello/blobs/",
            format!("http://127.0.0.2:{port}/blob"),
        ),
        (
            "/v2/evil/hello/blobs/",
            format!("http://localhost:{port}/blob"),
        ),
        ("/v2/", String::new()),
    ] {
        let manifest = manifest.clone();
        let challenge = challenge.clone();
        let redirect_to = redirect.clone();
        let stand_in = HttpServer::start(move |request| match request.path.as_str() {
            "/v2/" if redirect_to.is_empty() => Reply {
                headers: vec![("www-authenticate", challenge.clone())],
                ..Reply::json(401, &serde_json::json!({ "errors": [] }))
            },
            "/v2/" => Reply::json(200, &serde_json::json!({})),
            "/v2/evil/hello/manifests/1" => Reply {
                content_type: "application/vnd.oci.image.manifest.v1+json",
                ..Reply::json(200, &manifest)
            },
            path if path.starts_with("/v2/evil/hello/blobs/") => Reply::redirect(&redirect_to),
            _ => Reply::status(404),
        })
        .await;
        let host = stand_in.addr.to_string();
        assert_failed(
            fetch(
                &guarded(&[&host]),
                &api,
                &oci(&format!("{host}/evil/hello:1"), None),
            )
            .await,
            "ModuleDownloadRefused",
            "a loopback address",
            false,
        );
        assert!(
            stand_in
                .requests()
                .iter()
                .any(|r| r.path.starts_with(sent_on)),
            "{sent_on} was not asked: {:?}",
            stand_in.requests()
        );
    }
    assert_never_asked(&internal);
}

#[tokio::test]
async fn a_registrys_answer_that_is_no_oci_error_stays_out_of_the_status() {
    // What a service that is not a registry answers is not the registry's
    // to tell: only its status reaches the Function's condition.
    let stand_in = HttpServer::start(|request| match request.path.as_str() {
        "/v2/" => Reply::json(200, &serde_json::json!({})),
        _ => Reply {
            status: 500,
            ..Reply::bytes(b"db password is hunter2".to_vec())
        },
    })
    .await;
    let api = empty_api().await;
    let host = stand_in.addr.to_string();
    let message = assert_failed(
        fetch(
            &fetcher_with(DEFAULT_MAX_MODULE_BYTES, &[&host]),
            &api,
            &oci(&format!("{host}/any/thing:1"), None),
        )
        .await,
        "OciPullFailed",
        "answered 500 (not an OCI registry error)",
        true,
    );
    assert!(!message.contains("hunter2"), "{message}");
}

// ---- oci with credentials ----

/// A `kubernetes.io/dockerconfigjson` Secret with `auths` `entries`.
fn docker_secret(name: &str, auths: serde_json::Value) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            ByteString(serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap()),
        )])),
        ..Secret::default()
    }
}

#[tokio::test]
async fn a_private_registry_is_pulled_from_with_the_pull_secret() {
    let registry = Registry::with_basic_auth();
    let wasm = hello();
    registry.push_component("private/hello:1", &wasm).await;
    let host = registry.host.clone();
    let basic = |user: &str, password: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    };
    let secrets = BTreeMap::from([
        (
            "regcred",
            docker_secret(
                "regcred",
                serde_json::json!({ &host: { "auth": basic(registry::USER, registry::PASSWORD) } }),
            ),
        ),
        (
            "wrongcred",
            docker_secret(
                "wrongcred",
                serde_json::json!({ &host: { "username": registry::USER, "password": "guess" } }),
            ),
        ),
        (
            "othercred",
            docker_secret(
                "othercred",
                serde_json::json!({ "ghcr.io": { "auth": basic("a", "b") } }),
            ),
        ),
    ]);
    let api = HttpServer::start(move |request| {
        let prefix = format!("/api/v1/namespaces/{NAMESPACE}/secrets/");
        let name = request.path.strip_prefix(&prefix).unwrap_or_default();
        match secrets.get(name) {
            Some(secret) => Reply::json(200, secret),
            None => {
                Reply::kubernetes_status(404, "NotFound", &format!("secrets \"{name}\" not found"))
            }
        }
    })
    .await;
    let fetcher = fetcher_with(DEFAULT_MAX_MODULE_BYTES, &[&registry.host]);
    let reference = registry.reference("private/hello:1");

    let fetched = fetch(&fetcher, &api, &oci(&reference, Some("regcred")))
        .await
        .unwrap();
    assert_eq!(fetched.wasm, wasm);

    assert_failed(
        fetch(&fetcher, &api, &oci(&reference, None)).await,
        "OciPullFailed",
        "the registry wants credentials: name a kubernetes.io/dockerconfigjson Secret in spec.module.pullSecret",
        false,
    );
    assert_failed(
        fetch(&fetcher, &api, &oci(&reference, Some("wrongcred"))).await,
        "OciPullFailed",
        "the registry refused the pull secret's credentials",
        false,
    );
    assert_failed(
        fetch(&fetcher, &api, &oci(&reference, Some("othercred"))).await,
        "PullSecretInvalid",
        &format!(
            "pull secret fns/othercred is unusable: it has no credentials for registry {host} (it has: ghcr.io)"
        ),
        false,
    );
    assert_failed(
        fetch(&fetcher, &api, &oci(&reference, Some("nocred"))).await,
        "PullSecretNotFound",
        "pull secret fns/nocred does not exist",
        false,
    );
}
