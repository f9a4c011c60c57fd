//! A real OCI registry (the CNCF Distribution registry Debian packages as
//! `docker-registry`) on a random loopback port, one per test, with its
//! storage in a temporary folder, killed when dropped. `scripts/oci-registry.sh`
//! installs it and names it in `SLUICE_DOCKER_REGISTRY`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sluice_testing::free_port;

/// The user of [`Registry::with_basic_auth`].
pub const USER: &str = "sluice";
/// Its password.
pub const PASSWORD: &str = "sluice-test-password";
/// bcrypt (cost 4, the least: the registry checks it on every request) of
/// [`PASSWORD`], made with Python's `crypt.crypt(PASSWORD,
/// crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))`.
const PASSWORD_BCRYPT: &str = "$2b$04$qVJ9n9HeJdKn9Hx2T17lGOhDQJG7WHYBf0cRJlppvnzj1mSZgrp62";

/// Config media type of the CNCF Wasm OCI artifact layout.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of the CNCF Wasm OCI artifact layout.
pub const WASM_LAYER: &str = "application/wasm";

#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`, the registry part of references.
    pub host: String,
    dir: tempfile::TempDir,
    /// Credentials for pushing: none, or those of [`USER`].
    auth: RegistryAuth,
}

fn binary() -> PathBuf {
    std::env::var_os("SLUICE_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docker-registry"))
}

impl Registry {
    /// A registry anyone may pull from and push to.
    pub fn start() -> Self {
        Self::spawn(false, false)
    }

    /// A registry anyone may pull from, logging every request (the
    /// combined log format: `"GET /v2/… HTTP/1.1" 200 …`) to [`Self::log`].
    pub fn with_access_log() -> Self {
        Self::spawn(false, true)
    }

    /// A registry that wants HTTP basic auth as [`USER`] and [`PASSWORD`]
    /// for everything.
    pub fn with_basic_auth() -> Self {
        Self::spawn(true, false)
    }

    fn spawn(basic_auth: bool, access_log: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth_config = if basic_auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: sluice-test\n    path: {}\n",
                htpasswd.display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: {}\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n\
             {auth_config}",
            !access_log,
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(binary())
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); scripts/oci-registry.sh installs docker-registry and sets SLUICE_DOCKER_REGISTRY",
                    binary().display()
                )
            });
        let mut registry = Self {
            child,
            host: format!("127.0.0.1:{port}"),
            dir,
            auth: if basic_auth {
                RegistryAuth::Basic(USER.into(), PASSWORD.into())
            } else {
                RegistryAuth::Anonymous
            },
        };
        registry.wait_until_ready();
        registry
    }

    /// Waits until `GET /v2/` gets an HTTP answer (200, or 401 with auth).
    fn wait_until_ready(&mut self) {
        use std::io::{Read as _, Write as _};
        let started = Instant::now();
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(&self.host) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let request = format!(
                    "GET /v2/ HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
                    self.host
                );
                let mut answer = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.1 ")
                {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status}:\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "docker-registry did not answer /v2/ in 20s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the registry wrote to stdout and stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:<port>/<name>`: a reference to `name` (`repo:tag` or
    /// `repo@sha256:…`) in this registry.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// Pushes `wasm` to `name` (`repo:tag`) in the Wasm OCI artifact
    /// layout; returns the manifest's digest (`sha256:…`).
    pub async fn push_component(&self, name: &str, wasm: &[u8]) -> String {
        self.push(name, WASM_CONFIG, &[(wasm, WASM_LAYER)]).await
    }

    /// Pushes an artifact to `name` (`repo:tag`): a config of
    /// `config_media_type` and `layers` (bytes, media type); returns the
    /// manifest's digest (`sha256:…`).
    pub async fn push(
        &self,
        name: &str,
        config_media_type: &str,
        layers: &[(&[u8], &str)],
    ) -> String {
        let reference = self.reference(name);
        push_artifact(&reference, &self.auth, config_media_type, layers)
            .await
            .unwrap_or_else(|e| panic!("push {reference}: {e}\n{}", self.log()))
    }
}

/// Pushes an artifact over plain HTTP to `reference`: a config of
/// `config_media_type` and `layers` (bytes, media type); the manifest's
/// digest (`sha256:…`).
pub async fn push_artifact(
    reference: &str,
    auth: &RegistryAuth,
    config_media_type: &str,
    layers: &[(&[u8], &str)],
) -> Result<String, oci_client::errors::OciDistributionError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference: Reference = reference.parse().expect("a valid reference");
    let layers: Vec<ImageLayer> = layers
        .iter()
        .map(|(data, media_type)| ImageLayer::new(data.to_vec(), (*media_type).into(), None))
        .collect();
    let config = Config::new(
        br#"{"architecture":"wasm","os":"wasip2"}"#.to_vec(),
        config_media_type.into(),
        None,
    );
    client.push(&reference, &layers, config, auth, None).await?;
    client.fetch_manifest_digest(&reference, auth).await
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
