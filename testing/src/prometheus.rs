//! A real Prometheus server, and promtool, built from the pinned Go module
//! by `scripts/prometheus.sh` (which `scripts/test.sh` runs) and named in
//! `SLUICE_PROMETHEUS_BIN`. The server listens on loopback only, scrapes
//! loopback targets every second, sends nothing anywhere (no Alertmanager,
//! no remote write), and is stopped when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often targets are scraped and rules evaluated.
pub const SCRAPE_INTERVAL: &str = "1s";

/// `SLUICE_PROMETHEUS_BIN`, or what `prometheus.sh --cached-only` names.
pub fn bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SLUICE_PROMETHEUS_BIN") {
        return PathBuf::from(bin);
    }
    let output = Command::new(crate::repo_root().join("scripts/prometheus.sh"))
        .arg("--cached-only")
        .output()
        .expect("cannot run scripts/prometheus.sh");
    assert!(
        output.status.success(),
        "Prometheus is not built: run scripts/test.sh, or scripts/prometheus.sh once\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("SLUICE_PROMETHEUS_BIN="))
        .map(PathBuf::from)
        .expect("prometheus.sh named no SLUICE_PROMETHEUS_BIN")
}

/// A `promtool` command.
pub fn promtool() -> Command {
    Command::new(bin().join("promtool"))
}

/// A Prometheus server for one test.
#[derive(Debug)]
pub struct Prometheus {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Where its HTTP API answers.
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts a server scraping `targets` (job name, `/metrics` address)
    /// and evaluating the rules of `rule_files`, and waits until it is
    /// ready.
    pub fn start(targets: &[(&str, SocketAddr)], rule_files: &[&std::path::Path]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|f| format!("'{}'", f.display()))
            .collect();
        let mut config = format!(
            "global: {{ scrape_interval: {SCRAPE_INTERVAL}, evaluation_interval: {SCRAPE_INTERVAL} }}\nrule_files: [{}]\nscrape_configs:\n",
            rules.join(", ")
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs: [{{ targets: ['{addr}'] }}]\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("a config file");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file");
        let child = Command::new(bin().join("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start prometheus");
        let prometheus = Self {
            dir,
            child: Some(child),
            addr,
        };
        let started = Instant::now();
        while crate::http::get(addr, "/-/ready").map(|(s, _)| s) != Some(200) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "prometheus not ready in 30s:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<endpoint>?<params>`: the answer's `data`, or its error
    /// (`errorType: error`) when Prometheus refused.
    pub fn api(
        &self,
        endpoint: &str,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let path = format!("/api/v1/{endpoint}?{}", query.join("&"));
        let (status, body) =
            crate::http::get(self.addr, &path).ok_or_else(|| format!("no answer to {path}"))?;
        let answer: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("{status} {body:?} is not JSON: {e}"))?;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(format!(
                "{}: {}",
                answer["errorType"].as_str().unwrap_or("?"),
                answer["error"].as_str().unwrap_or(&body)
            )),
        }
    }

    /// The series an instant query returns now (`resultType: vector`).
    pub fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let data = self.api("query", &[("query", expr)])?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters kept).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_query_is_percent_encoded_byte_by_byte() {
        assert_eq!(
            super::encode(r#"sum(rate(x{a="b c"}[1m]))"#),
            "sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29"
        );
        assert_eq!(super::encode("é"), "%C3%A9");
    }
}
