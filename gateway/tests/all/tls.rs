//! TLS on the gateway's listeners: certificates from a CA of the test's
//! own, written to files as a mounted Secret holds them, replaced on disk
//! while the gateway serves.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice_serve::TlsFiles;

use crate::distributed::gateway_binary;
use crate::harness::{HELLO, TestGateway, eventually, manifest_dir};

/// A certificate authority of the test's own.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    /// A CA named `name` (two CAs of one name would be told apart only
    /// by their signatures).
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.0.pem().as_bytes()).unwrap()
    }

    /// A certificate for 127.0.0.1 and `name`, and its key (PEM).
    fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.0)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `tls.crt` and `tls.key` into `dir`, as a `kubernetes.io/tls`
/// Secret's volume holds them.
fn write_pair(dir: &Path, (cert, key): &(String, String)) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    files
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// What an https GET on a new connection got.
struct Fetched {
    status: StatusCode,
    body: String,
    /// The certificate the server presented.
    leaf: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
}

/// GETs `path` over https from `addr` on a new connection, trusting only
/// `ca`; an error describes a failed handshake.
async fn https_get(
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    path: &str,
) -> Result<Fetched, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the handshake ends within 30s")
    .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates().unwrap()[0].clone();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
        .await
        .expect("an answer within a minute")
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(Fetched {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        leaf,
        alpn,
    })
}

#[tokio::test]
async fn a_client_trusting_the_ca_gets_200_over_https_and_one_that_does_not_fails_the_handshake() {
    let ca = Ca::new("Sluice test CA");
    let other_ca = Ca::new("Another CA");
    let certs = tempfile::tempdir().unwrap();
    let pair = ca.leaf("gateway.test");
    let files = write_pair(certs.path(), &pair);
    let gw = TestGateway::start_with(HELLO, |c| c.tls = Some(files)).await;

    // A client that connects and never says hello holds nothing up.
    let _silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();

    let fetched = https_get(gw.addr, ca.der(), "/fn/default/hello")
        .await
        .unwrap();
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, "Hello from Sluice!\n");
    assert_eq!(fetched.leaf, der(&pair.0));
    assert_eq!(fetched.alpn.as_deref(), Some(&b"http/1.1"[..]));

    let error = https_get(gw.addr, other_ca.der(), "/fn/default/hello")
        .await
        .err()
        .expect("a client not trusting the CA fails the handshake");
    assert!(error.contains("UnknownIssuer"), "{error}");

    // Plain HTTP to the TLS port gets no HTTP answer, and breaks nothing.
    let plain = plain_http_exchange(gw.addr).await;
    assert!(!plain.starts_with(b"HTTP/"), "{plain:?}");
    let again = https_get(gw.addr, ca.der(), "/fn/default/hello")
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::OK);

    // The admin listener stays plain HTTP unless told otherwise.
    assert_eq!(gw.admin_get("/healthz").await.status, StatusCode::OK);
}

/// Sends a plain-text HTTP request to `addr`; what came back before the
/// server closed the connection.
async fn plain_http_exchange(addr: SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /fn/default/hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    answer
}

#[tokio::test]
async fn the_admin_listener_serves_tls_when_asked() {
    let ca = Ca::new("Sluice test CA");
    let gateway_certs = tempfile::tempdir().unwrap();
    let admin_certs = tempfile::tempdir().unwrap();
    let gateway_files = write_pair(gateway_certs.path(), &ca.leaf("gateway.test"));
    let admin_pair = ca.leaf("admin.test");
    let admin_files = write_pair(admin_certs.path(), &admin_pair);
    let gw = TestGateway::start_with(HELLO, |c| {
        c.tls = Some(gateway_files);
        c.admin_tls = Some(admin_files);
    })
    .await;
    let fetched = https_get(gw.admin, ca.der(), "/readyz").await.unwrap();
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.leaf, der(&admin_pair.0));
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let ca = Ca::new("Sluice test CA");
    let certs = tempfile::tempdir().unwrap();
    let first = ca.leaf("first.test");
    let files = write_pair(certs.path(), &first);
    let gw = TestGateway::start_with(HELLO, |c| c.tls = Some(files.clone())).await;
    let served = async || {
        https_get(gw.addr, ca.der(), "/fn/default/hello")
            .await
            .unwrap()
    };
    assert_eq!(served().await.leaf, der(&first.0));

    // A malformed replacement (a certificate cut short) is not served;
    // the first one stays. Several reload intervals pass.
    std::fs::write(&files.cert, &first.0[..first.0.len() / 2]).unwrap();
    tokio::time::sleep(sluice_serve::tls::RELOAD_INTERVAL * 3).await;
    let fetched = served().await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.leaf, der(&first.0));

    // A new certificate and key, written one after the other (in between,
    // the key does not match the certificate), are served once both are
    // there, to new connections, without a restart.
    let second = ca.leaf("second.test");
    write_pair(certs.path(), &second);
    let fetched = eventually(
        "the new certificate is served",
        Duration::from_secs(10),
        async || match served().await {
            fetched if fetched.leaf == der(&second.0) => Ok(fetched),
            _ => Err("the previous certificate".to_owned()),
        },
    )
    .await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, "Hello from Sluice!\n");
}

#[tokio::test]
async fn a_bad_certificate_stops_start_up_naming_the_file() {
    let ca = Ca::new("Sluice test CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, _) = ca.leaf("a.test");
    let (_, other_key) = ca.leaf("b.test");
    let files = write_pair(certs.path(), &(cert, other_key));
    let dir = manifest_dir(HELLO);
    let mut config = crate::harness::loopback_config(dir.path());
    config.tls = Some(files);
    let error = sluice_gateway::local::start(config)
        .await
        .expect_err("start-up fails")
        .to_string();
    assert!(error.contains("tls.key"), "{error}");
    assert!(
        error.contains("does not belong to the certificate"),
        "{error}"
    );
}

/// The binary's flags, in local and NATS mode: half a pair is refused
/// naming both flags, and a certificate that cannot be read stops NATS
/// mode before it connects anywhere.
#[test]
fn the_tls_flags_are_checked_before_anything_starts() {
    let dir = manifest_dir(HELLO);
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(gateway_binary())
            .args(args)
            .env_remove("SLUICE_TLS_CERT_FILE")
            .env_remove("SLUICE_TLS_KEY_FILE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let local = dir.path().to_str().unwrap();
    let stderr = run(
        &[
            "--local",
            local,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[("SLUICE_TLS_CERT_FILE", "/nonexistent/tls.crt")],
    );
    assert!(
        stderr.contains("--tls-cert-file is given without --tls-key-file"),
        "{stderr}"
    );
    let stderr = run(
        &[
            "--nats",
            "nats://127.0.0.1:1",
            "--admin-tls-key-file",
            "/nonexistent/tls.key",
        ],
        &[],
    );
    assert!(
        stderr.contains("--admin-tls-key-file is given without --admin-tls-cert-file"),
        "{stderr}"
    );
    let stderr = run(
        &[
            "--nats",
            "nats://127.0.0.1:1",
            "--tls-cert-file",
            "/nonexistent/tls.crt",
            "--tls-key-file",
            "/nonexistent/tls.key",
        ],
        &[],
    );
    assert!(
        stderr.contains("cannot read the TLS certificate /nonexistent/tls.crt"),
        "{stderr}"
    );
}
