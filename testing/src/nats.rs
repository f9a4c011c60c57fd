//! A real nats-server with JetStream on a random loopback port, one per
//! test, stopped when dropped. `scripts/test.sh` installs the binary and
//! names it in `SLUICE_NATS_SERVER`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestCa;

#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    pub url: String,
    port: u16,
    dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    std::env::var_os("SLUICE_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

impl NatsServer {
    pub fn start() -> Self {
        // Room for a 1 MiB body plus headers, and for 6 MiB responses.
        Self::with_config("max_payload: 8MB\n")
    }

    /// A server with `config` as its configuration file.
    pub fn with_config(config: &str) -> Self {
        Self::in_dir(tempfile::tempdir().unwrap(), config)
    }

    /// A server with `config` as its configuration file in `dir`, beside
    /// what the caller put there (nats-server reads an `include` relative
    /// to the including file, even an absolute one). The server owns the
    /// folder from now on.
    pub fn in_dir(dir: tempfile::TempDir, config: &str) -> Self {
        Self::in_dir_on(dir, config, -1)
    }

    /// [`NatsServer::start`] on loopback `port`, e.g. one a part under
    /// test was already told to connect to.
    pub fn start_on(port: u16) -> Self {
        Self::in_dir_on(
            tempfile::tempdir().unwrap(),
            "max_payload: 8MB\n",
            i32::from(port),
        )
    }

    /// `port` -1 picks a free one.
    fn in_dir_on(dir: tempfile::TempDir, config: &str, port: i32) -> Self {
        std::fs::write(
            dir.path().join("nats.conf"),
            format!("{FILE_STORE}{config}"),
        )
        .unwrap();
        let child = spawn(&dir, port);
        let ports_file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let started = Instant::now();
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = ports["nats"][0].as_str()
            {
                break url.to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not start in 10s: {}",
                std::fs::read_to_string(dir.path().join(LOG)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        Self {
            child: Some(child),
            url,
            port,
            dir,
        }
    }

    /// The folder of its configuration, files and store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id while it runs, e.g. to read its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL): no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM: it flushes its file store)
    /// and starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        self.child = Some(spawn(&self.dir, i32::from(self.port)));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not restart in 10s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// JetStream's file store, set rather than left to its default: 75 % of
/// the disk free when the server starts, which on a test machine with
/// less than about 13 GB free is below what the streams' and buckets'
/// `max_bytes` reserve (8.81 GiB by default, `sluice_nats::layout`), and
/// every layout then fails with "insufficient storage resources". The
/// tests store megabytes, so the bound is never what stops a write. A
/// caller's own `jetstream` block comes after it, and wins.
const FILE_STORE: &str = "jetstream { max_file_store: 1TB }\n";

/// Where the server's own log goes, in its folder.
const LOG: &str = "nats-server.log";

fn spawn(dir: &tempfile::TempDir, port: i32) -> Child {
    Command::new(binary())
        .arg("-c")
        .arg(dir.path().join("nats.conf"))
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js"])
        .arg("-sd")
        .arg(dir.path().join("store"))
        .arg("--ports_file_dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        // Appended to, across restarts.
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join(LOG))
                .map_or_else(|_| Stdio::null(), Stdio::from),
        )
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); scripts/test.sh installs nats-server and sets SLUICE_NATS_SERVER",
                binary().display()
            )
        })
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of nats-servers on loopback: each with its own
/// `server_name` (`n0`, `n1`, ...), client, route and monitoring ports
/// (free ones), and store, routed to each other on loopback. Stopped when
/// dropped. Its servers are [`NatsServer`]s: kill one (SIGKILL), restart
/// one (SIGTERM, then the same ports and store).
#[derive(Debug)]
pub struct NatsCluster {
    /// In the order of their names: `servers[i]` is `n<i>`.
    pub servers: Vec<NatsServer>,
    monitors: Vec<std::net::SocketAddr>,
}

/// The cluster's name (JetStream's too).
const CLUSTER_NAME: &str = "sluice-test";

impl NatsCluster {
    /// Starts `size` servers and returns once each reports JetStream
    /// healthy (its meta leader known), 60 s at most.
    pub fn start(size: usize) -> Self {
        let routes: Vec<u16> = (0..size).map(|_| crate::free_port()).collect();
        let ports: Vec<u16> = (0..size).map(|_| crate::free_port()).collect();
        let monitors: Vec<std::net::SocketAddr> = (0..size)
            .map(|_| std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_port())))
            .collect();
        let route_urls = routes
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let servers = (0..size)
            .map(|i| {
                let config = format!(
                    "server_name: {name}\n\
                     max_payload: 8MB\n\
                     http: \"{monitor}\"\n\
                     cluster {{\n  name: {CLUSTER_NAME}\n  listen: \"127.0.0.1:{route}\"\n  routes: [{route_urls}]\n}}\n",
                    name = Self::name(i),
                    monitor = monitors[i],
                    route = routes[i],
                );
                NatsServer::in_dir_on(tempfile::tempdir().unwrap(), &config, i32::from(ports[i]))
            })
            .collect();
        let cluster = Self { servers, monitors };
        cluster.wait_healthy();
        cluster
    }

    /// The `server_name` of `servers[i]`.
    pub fn name(i: usize) -> String {
        format!("n{i}")
    }

    /// The index in `servers` of the server named `name` (`n<i>`), as a
    /// stream's or consumer's cluster info names its leader.
    pub fn index_of(name: &str) -> Option<usize> {
        name.strip_prefix('n')?.parse().ok()
    }

    /// Every server's URL, comma-separated, as `--nats` takes them.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts `servers[killed]` again, then stops and restarts the next
    /// one (gracefully), waiting after each until the cluster is healthy:
    /// what follows a leader's SIGKILL in the failover tests. Returns the
    /// index of the server restarted besides.
    pub fn restart_with_another(&mut self, killed: usize) -> usize {
        self.servers[killed].restart();
        self.wait_healthy();
        let other = (killed + 1) % self.servers.len();
        eprintln!("restarting n{other}");
        self.servers[other].restart();
        self.wait_healthy();
        other
    }

    /// Waits (60 s at most) until every running server answers its
    /// monitoring `/healthz` 200: JetStream is up and caught up with the
    /// cluster's meta leader.
    pub fn wait_healthy(&self) {
        let started = Instant::now();
        for (server, monitor) in self.servers.iter().zip(&self.monitors) {
            if server.pid().is_none() {
                continue;
            }
            while crate::http::get(*monitor, "/healthz").map(|(status, _)| status) != Some(200) {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the NATS cluster is not healthy within 60s: {}",
                    std::fs::read_to_string(server.dir().join(LOG)).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A user of a [`SecureNats`] server.
#[derive(Debug, Clone, Copy)]
pub struct NatsUser<'a> {
    pub name: &'a str,
    /// The permissions variable of the included permissions file this user
    /// gets (`$SLUICE_GATEWAY`, say), or a literal permissions block
    /// (`{ publish: ... }`); `None`: everything.
    pub permissions: Option<&'a str>,
}

/// A nats-server as a careful deployment runs it: TLS only, with a
/// certificate from a CA made for this test, client certificates required
/// (mutual TLS), and users with passwords and the permissions of a given
/// permissions file.
#[derive(Debug)]
pub struct SecureNats {
    /// Its folder also holds the certificates, keys and password files.
    pub server: NatsServer,
}

/// Names of the files [`SecureNats`] writes.
const CA: &str = "ca.pem";
const OTHER_CA: &str = "other-ca.pem";
const CLIENT_CERT: &str = "client.pem";
const CLIENT_KEY: &str = "client-key.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";

impl SecureNats {
    /// Starts a server that includes `permissions_file` and knows `users`.
    /// (nats-server refuses a variable nobody refers to: every permission
    /// set of the file must go to some user.)
    pub fn start(permissions_file: &Path, users: &[NatsUser<'_>]) -> Self {
        let ca = TestCa::new();
        let other_ca = TestCa::new();
        let (server_cert, server_key) = ca.leaf(&["127.0.0.1", "localhost"]);
        let (client_cert, client_key) = ca.leaf(&["sluice-test-client"]);
        let files = tempfile::tempdir().unwrap();
        // Absolute: nats-server reads the certificate paths of its
        // configuration relative to its working directory.
        let write = |name: &str, contents: &str| {
            let path = files.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path.display().to_string()
        };
        write(CLIENT_CERT, &client_cert);
        write(CLIENT_KEY, &client_key);
        write(OTHER_CA, &other_ca.pem());
        let mut config = format!(
            "max_payload: 8MB\n\
             include \"permissions.conf\"\n\
             tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n\
             authorization {{\n  users: [\n",
            write(SERVER_CERT, &server_cert),
            write(SERVER_KEY, &server_key),
            write(CA, &ca.pem()),
        );
        for user in users {
            let permissions = user
                .permissions
                .map_or(String::new(), |p| format!(", permissions: {p}"));
            write(
                &format!("{}.password", user.name),
                &format!("{}-secret\n", user.name),
            );
            config.push_str(&format!(
                "    {{ user: \"{0}\", password: \"{0}-secret\"{permissions} }}\n",
                user.name
            ));
        }
        config.push_str("  ]\n}\n");
        let permissions = std::fs::read_to_string(permissions_file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", permissions_file.display()));
        write("permissions.conf", &permissions);
        Self {
            server: NatsServer::in_dir(files, &config),
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// The file holding `user`'s password.
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.server.dir().join(format!("{user}.password"))
    }

    /// PEM of the CA that signed the server's and the client's certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.server.dir().join(CA)
    }

    /// PEM of a CA that signed nothing here: a client trusting only it
    /// fails the handshake.
    pub fn other_ca_file(&self) -> PathBuf {
        self.server.dir().join(OTHER_CA)
    }

    /// A client certificate and key the server accepts.
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.server.dir().join(CLIENT_CERT),
            self.server.dir().join(CLIENT_KEY),
        )
    }

    /// The environment of a Sluice part connecting as `user` (the
    /// variables behind its `--nats-*` flags): its password file, the CA
    /// and the client certificate.
    pub fn env(&self, user: &str) -> Vec<(String, String)> {
        let (cert, key) = self.client_cert();
        [
            ("SLUICE_NATS_USER", PathBuf::from(user)),
            ("SLUICE_NATS_PASSWORD_FILE", self.password_file(user)),
            ("SLUICE_NATS_CA_FILE", self.ca_file()),
            ("SLUICE_NATS_CERT_FILE", cert),
            ("SLUICE_NATS_KEY_FILE", key),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.display().to_string()))
        .collect()
    }
}

/// A NATS server a part under test is told about before it runs: the part
/// starts first, as in a cluster where the server's pod is slower.
#[derive(Debug)]
pub struct LateNats {
    port: u16,
    /// The URL to give the part.
    pub url: String,
}

impl LateNats {
    pub fn new() -> Self {
        let port = crate::free_port();
        Self {
            port,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    /// Checks that the part serving `admin` waits for NATS: within 60s it
    /// answers `/healthz` 200 and `/readyz` 503 and its `log` names the
    /// server, saying it is waiting; it has not exited
    /// (`exit_code` gives its code once it has).
    pub fn check_waiting(
        &self,
        admin: std::net::SocketAddr,
        log: impl Fn() -> String,
        mut exit_code: impl FnMut() -> Option<i32>,
    ) {
        let waiting = || {
            let log = log();
            crate::http::get(admin, "/healthz").is_some_and(|(status, _)| status == 200)
                && crate::http::get(admin, "/readyz").is_some_and(|(status, _)| status == 503)
                && log.contains(&self.url)
                // At least two attempts: it keeps trying.
                && log.matches("waiting for NATS").count() >= 2
        };
        until(waiting, "waiting for NATS", &log, &mut exit_code);
    }

    /// Starts the server on the port the part was given.
    pub fn start(&self) -> NatsServer {
        NatsServer::start_on(self.port)
    }

    /// Waits (60s at most) for the part serving `admin` to answer
    /// `/readyz` 200 without exiting.
    pub fn check_ready(
        &self,
        admin: std::net::SocketAddr,
        log: impl Fn() -> String,
        mut exit_code: impl FnMut() -> Option<i32>,
    ) {
        let ready = || crate::http::get(admin, "/readyz").is_some_and(|(status, _)| status == 200);
        until(ready, "ready after NATS came", &log, &mut exit_code);
    }

    /// [`LateNats::check_waiting`], [`LateNats::start`], then
    /// [`LateNats::check_ready`]; returns the server.
    pub fn check_waiting_then_start(
        &self,
        admin: std::net::SocketAddr,
        log: impl Fn() -> String,
        mut exit_code: impl FnMut() -> Option<i32>,
    ) -> NatsServer {
        self.check_waiting(admin, &log, &mut exit_code);
        let server = self.start();
        self.check_ready(admin, &log, &mut exit_code);
        server
    }
}

/// Polls `done` (every 100 ms, 60 s at most) while the part runs: its
/// exit (`exit_code`) or the time running out fails with `what` and the
/// part's `log`.
fn until(
    done: impl Fn() -> bool,
    what: &str,
    log: impl Fn() -> String,
    mut exit_code: impl FnMut() -> Option<i32>,
) {
    let started = Instant::now();
    while !done() {
        if let Some(code) = exit_code() {
            panic!("it exited ({code}), not {what}:\n{}", log());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not {what} within 60s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Default for LateNats {
    fn default() -> Self {
        Self::new()
    }
}
