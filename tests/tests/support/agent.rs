//! The agent under test, shared by the host-only `agent` tests and the VM's
//! `kernel_probe_paths`: started on a free loopback port with a journal of its own, read over
//! HTTP (`/healthz`, `/metrics`) and from its journal files, killed on drop.
#![allow(dead_code)]
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use ifsock_tests::ifsock_bin;
use serde_json::Value;

/// A free loopback port (bound and released: nothing else on this host picks ports in this range
/// on purpose, and a clash fails loudly as "port in use").
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// `GET path` over HTTP/1.1 on loopback: (status, body).
pub fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status")?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok((status, body))
}

pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `cond` every 100 ms until it holds; `timeout` is a failure bound. For state read over
/// HTTP, which has no notification.
pub fn poll(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ifsock-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        // Some users write a single file at the path instead of a directory.
        if std::fs::remove_dir_all(&self.0).is_err() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A running agent, killed on drop.
pub struct Agent {
    pub child: Child,
    pub port: u16,
    pub journal: TempDir,
}

impl Agent {
    /// Starts the agent and returns once /healthz answers.
    pub fn start(extra: &[&str]) -> Result<Self> {
        Self::start_in(extra, TempDir::new("j"), Stdio::inherit())
    }

    /// As [`Agent::start`], journaling to `journal` (removed on drop) with stderr to `stderr`.
    pub fn start_in(extra: &[&str], journal: TempDir, stderr: Stdio) -> Result<Self> {
        Self::start_as(Command::new(ifsock_bin()), extra, journal, stderr)
    }

    /// As [`Agent::start`], under `capsh --drop=CAP` (the capability dropped from the bounding
    /// set before the shell execs the agent, so the agent never holds it) with `env` set.
    pub fn start_without(cap: &str, env: &[(&str, &str)], extra: &[&str]) -> Result<Self> {
        let mut cmd = Command::new("capsh");
        cmd.arg(format!("--drop={cap}")).args(["--", "-c", "exec \"$0\" \"$@\""]).arg(ifsock_bin()).envs(env.iter().copied());
        Self::start_as(cmd, extra, TempDir::new("j"), Stdio::inherit())
    }

    /// Starts `cmd` (the agent binary, or a wrapper that execs it) with the agent's arguments.
    fn start_as(mut cmd: Command, extra: &[&str], journal: TempDir, stderr: Stdio) -> Result<Self> {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let dir = journal.0.to_string_lossy().into_owned();
        let mut args = vec!["agent", "--listen", &listen, "--journal", &dir];
        args.extend_from_slice(extra);
        let child = cmd.args(&args).stdout(Stdio::null()).stderr(stderr).spawn().context("starting the agent (capsh: apt-get install libcap2-bin)")?;
        let mut agent = Agent { child, port, journal };
        poll("the agent's /healthz", Duration::from_secs(60), || {
            get(port, "/healthz").is_ok_and(|(s, b)| s == 200 && b == "ok\n")
        })
        .or_else(|e| match agent.child.try_wait() {
            Ok(Some(status)) => bail!("agent exited before serving: {status}"),
            _ => Err(e),
        })?;
        Ok(agent)
    }

    pub fn metrics(&self) -> Result<String> {
        let (status, body) = get(self.port, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body)
    }

    /// Waits until /metrics has a sample line starting with `prefix`, and returns its value.
    pub fn wait_sample(&self, prefix: &str) -> Result<f64> {
        let mut value = None;
        poll(prefix, Duration::from_secs(30), || {
            value = self.metrics().ok().and_then(|m| sample(&m, prefix));
            value.is_some()
        })?;
        value.context("sample vanished")
    }

    pub fn journal_records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for f in journal_files(&self.journal.0) {
            for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    ifsock_tests::record_json("agent-journal", &v);
                    out.push(v);
                }
            }
        }
        out
    }

    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM)
    }

    /// Sends `signal` and waits for the exit.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) -> Result<std::process::ExitStatus> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)?;
        Ok(self.child.wait()?)
    }

    /// Waits until the journal holds a record matching `pred`, and returns it.
    pub fn wait_record(&self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Result<Value> {
        let mut found = None;
        poll(what, Duration::from_secs(30), || {
            found = self.journal_records().into_iter().find(|r| pred(r));
            found.is_some()
        })?;
        found.context("record vanished")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The value of the first sample line starting with `prefix` (name and labels).
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A Prometheus server (Debian's `prometheus` package) scraping one target every second as job
/// `ifsock`, evaluating `rules` every second when given; killed by pid on drop.
pub struct Prometheus {
    child: Child,
    /// Its HTTP port on loopback.
    pub port: u16,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts it against the agent on `target_port`, with an optional rules file.
    pub fn start(target_port: u16, rules: Option<&Path>) -> Result<Self> {
        let bin = Path::new("/usr/bin/prometheus");
        assert!(bin.exists(), "no {} (fix: apt-get install prometheus, as .ci/run does)", bin.display());
        let dir = TempDir::new("prom");
        std::fs::create_dir_all(&dir.0)?;
        let config = dir.0.join("prometheus.yml");
        let rule_files = match rules {
            Some(r) => format!("  evaluation_interval: 1s\nrule_files: ['{}']\n", r.canonicalize()?.display()),
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n{rule_files}scrape_configs:\n  - job_name: ifsock\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"),
        )?;
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus")?;
        Ok(Prometheus { child, port, _dir: dir })
    }

    /// `GET path` on its HTTP API: the JSON body of a 200 answer.
    pub fn api(&self, path: &str) -> Option<Value> {
        let (status, body) = get(self.port, path).ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The result vector of an instant PromQL query (empty when none, or on error).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let enc: String = promql
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"_:.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        self.api(&format!("/api/v1/query?query={enc}")).and_then(|v| v["data"]["result"].as_array().cloned()).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
