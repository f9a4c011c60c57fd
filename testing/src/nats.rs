//! A real nats-server with JetStream on a random loopback port, one per
//! test, stopped when dropped. `scripts/test.sh` installs the binary and
//! names it in `SLUICE_NATS_SERVER`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nats.conf"), config).unwrap();
        let child = spawn(&dir, -1);
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
                "nats-server did not start in 10s"
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
        .stderr(Stdio::null())
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
