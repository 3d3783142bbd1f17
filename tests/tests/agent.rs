//! `ifsock agent` and `ifsock journal` on the real kernel: a socket stranded in a netns created
//! after the agent started shows in /metrics, the exposition passes the strict OpenMetrics
//! parser, a real Prometheus scrapes it; the journal stays bounded under a burst and skips a
//! torn line; SIGTERM leaves no BPF link behind; owners carry their cgroup.
use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use ifsock_tests::{ifsock, ifsock_bin, require_root, unique, Netns};
use serde_json::Value;

/// A free loopback port (bound and released: nothing else on this host picks ports in this range
/// on purpose, and a clash fails loudly as "port in use").
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// `GET path` over HTTP/1.1 on loopback: (status, body).
fn get(port: u16, path: &str) -> Result<(u16, String)> {
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

fn dechunk(mut body: &str) -> String {
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
fn poll(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
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
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ifsock-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running agent, killed on drop.
struct Agent {
    child: Child,
    port: u16,
    journal: TempDir,
}

impl Agent {
    /// Starts the agent and returns once /healthz answers.
    fn start(extra: &[&str]) -> Result<Self> {
        let port = free_port();
        let journal = TempDir::new("j");
        let listen = format!("127.0.0.1:{port}");
        let dir = journal.0.to_string_lossy().into_owned();
        let mut args = vec!["agent", "--listen", &listen, "--journal", &dir];
        args.extend_from_slice(extra);
        let child = Command::new(ifsock_bin()).args(&args).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn()?;
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

    fn metrics(&self) -> Result<String> {
        let (status, body) = get(self.port, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body)
    }

    /// Waits until /metrics has a sample line starting with `prefix`, and returns its value.
    fn wait_sample(&self, prefix: &str) -> Result<f64> {
        let mut value = None;
        poll(prefix, Duration::from_secs(30), || {
            value = self.metrics().ok().and_then(|m| sample(&m, prefix));
            value.is_some()
        })?;
        value.context("sample vanished")
    }

    fn journal_records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for f in journal_files(&self.journal.0) {
            for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    out.push(v);
                }
            }
        }
        out
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The value of the first sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The Python venv with `prometheus-client` (`.ci/run` makes it; `$IFSOCK_PY_VENV` or
/// /tmp/ifsock-venv).
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("IFSOCK_PY_VENV").map_or_else(|| PathBuf::from("/tmp/ifsock-venv"), PathBuf::from);
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "no Python venv at {} (fix: python3 -m venv {0} && {0}/bin/pip install prometheus-client, as .ci/run does; or set IFSOCK_PY_VENV)",
        venv.display()
    );
    py
}

/// Parses `text` with the strict OpenMetrics parser of Python's prometheus-client and
/// returns the family names it found.
fn openmetrics_families(text: &str) -> Result<Vec<String>> {
    let file = TempDir::new("om");
    std::fs::write(&file.0, text)?;
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nfor f in p(open(sys.argv[1]).read()):\n    print(f.name)\n";
    let out = Command::new(venv_python()).args(["-c", script]).arg(&file.0).output()?;
    if !out.status.success() {
        bail!("the OpenMetrics parser refused the exposition: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

/// A Prometheus server scraping one target every second, killed by pid on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Result<Self> {
        let bin = Path::new("/usr/bin/prometheus");
        assert!(bin.exists(), "no {} (fix: apt-get install prometheus, as .ci/run does)", bin.display());
        let dir = TempDir::new("prom");
        std::fs::create_dir_all(&dir.0)?;
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ifsock\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"),
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

    fn api(&self, path: &str) -> Option<Value> {
        let (status, body) = get(self.port, path).ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn stranded_socket_in_a_later_netns_is_exposed_parsed_and_scraped() -> Result<()> {
    require_root();
    let agent = Agent::start(&[])?;
    // Created after the agent started: it must find the namespace on its own.
    let ns = Netns::new()?;
    let (a, b) = (unique("ag"), unique("ah"));
    ns.veth(&a, &b, Some("10.241.0.1/24"))?;
    let sock = ns.run(|| std::net::UdpSocket::bind("10.241.0.1:5353"))??;
    let healthy = format!("ifsock_sockets{{netns=\"{}\",ifname=\"{a}\",binding=\"address\",protocol=\"udp\"}}", ns.name);
    assert_eq!(agent.wait_sample(&healthy)?, 1.0);
    let stranded_prefix = format!("ifsock_stranded_sockets{{netns=\"{}\",ifname=\"{a}\",reason=\"address_gone\"}}", ns.name);
    assert!(sample(&agent.metrics()?, &stranded_prefix).is_none(), "healthy socket reported stranded");
    ns.ip(&["link", "del", &a])?;
    assert_eq!(agent.wait_sample(&stranded_prefix)?, 1.0);

    let text = agent.metrics()?;
    let families = openmetrics_families(&text)?;
    for f in ["ifsock_sockets", "ifsock_stranded_sockets", "ifsock_link_events", "ifsock_events_lost", "ifsock_build"] {
        assert!(families.iter().any(|n| n == f), "family {f} missing from {families:?}");
    }

    let prom = Prometheus::start(agent.port)?;
    poll("prometheus to report the agent up", Duration::from_secs(60), || {
        prom.api("/api/v1/targets").is_some_and(|v| {
            v["data"]["activeTargets"].as_array().is_some_and(|t| t.iter().any(|t| t["health"] == "up" && t["scrapeUrl"].as_str().is_some_and(|u| u.contains(&agent.port.to_string()))))
        })
    })?;
    let query = format!("/api/v1/query?query=ifsock_stranded_sockets%7Bnetns%3D%22{}%22%7D", ns.name);
    let mut result = Value::Null;
    poll("prometheus to return the stranded sample", Duration::from_secs(30), || {
        result = prom.api(&query).map(|v| v["data"]["result"].clone()).unwrap_or(Value::Null);
        result.as_array().is_some_and(|r| !r.is_empty())
    })?;
    let r = &result[0];
    assert_eq!(r["metric"]["reason"], "address_gone", "{result}");
    assert_eq!(r["metric"]["ifname"], a.as_str());
    assert_eq!(r["value"][1], "1");

    // The journal has the deletion and the stranded socket, readable by `ifsock journal`.
    let out = ifsock(&["journal", "--journal", &agent.journal.0.to_string_lossy(), "--netns", &ns.name, "--json"])?;
    anyhow::ensure!(out.status.success(), "ifsock journal failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.iter().any(|l| l["type"] == "change" && l["event"] == "deleted" && l["name"] == a.as_str()), "{lines:?}");
    let stranded = lines.iter().find(|l| l["type"] == "socket_stranded").context("no socket_stranded in the journal")?;
    assert_eq!(stranded["reason"], "address_gone");
    assert_eq!(stranded["address"], "10.241.0.1");
    assert_eq!(stranded["socket"]["local_port"], 5353);
    assert!(lines.iter().all(|l| l["netns_name"] == ns.name.as_str()), "--netns filters");
    drop(sock);
    Ok(())
}

/// The `link_id` of every BPF link fd a process holds (`/proc/PID/fdinfo/FD` `link_id:`).
fn bpf_link_ids(pid: Option<u32>) -> HashSet<u64> {
    let mut out = HashSet::new();
    let pids: Vec<String> = match pid {
        Some(p) => vec![p.to_string()],
        None => std::fs::read_dir("/proc").map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.bytes().all(|b| b.is_ascii_digit())).collect()).unwrap_or_default(),
    };
    for p in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) else { continue };
        for fd in fds.flatten() {
            // The kernel names these `anon_inode:bpf_link` (bpf_link_prime()).
            if std::fs::read_link(fd.path()).is_ok_and(|t| matches!(t.to_string_lossy().as_ref(), "anon_inode:bpf_link" | "anon_inode:bpf-link")) {
                let info = std::fs::read_to_string(format!("/proc/{p}/fdinfo/{}", fd.file_name().to_string_lossy())).unwrap_or_default();
                if let Some(id) = info.lines().find_map(|l| l.strip_prefix("link_id:")).and_then(|v| v.trim().parse().ok()) {
                    out.insert(id);
                }
            }
        }
    }
    out
}

#[test]
fn sigterm_flushes_the_journal_and_leaves_no_bpf_links() -> Result<()> {
    require_root();
    let mut agent = Agent::start(&["--receivers"])?;
    let held = bpf_link_ids(Some(agent.child.id()));
    assert!(!held.is_empty(), "--receivers attaches the receive-path probes: the agent must hold BPF links");
    let ns = Netns::new()?;
    ns.veth(&unique("ag"), &unique("ah"), Some("10.242.0.1/24"))?;
    agent.wait_sample(&format!("ifsock_sockets{{netns=\"{}\"", ns.name)).ok();
    let status = agent.terminate()?;
    assert_eq!(status.code(), Some(143), "SIGTERM exits with 128+15");
    // Other programs on this host may create links of their own: check that none of ours lives on.
    let alive = bpf_link_ids(None);
    assert!(held.is_disjoint(&alive), "links {:?} outlived the agent", held.intersection(&alive).collect::<Vec<_>>());
    // The journal ends on a whole record.
    let files = journal_files(&agent.journal.0);
    let last = std::fs::read_to_string(files.last().context("no journal segment")?)?;
    assert!(last.is_empty() || last.ends_with('\n'), "journal ends mid-record");
    assert!(agent.journal_records().iter().any(|r| r["type"] == "netns_added" && r["netns_name"] == ns.name.as_str()));
    Ok(())
}

#[test]
fn journal_rotation_keeps_the_bound_under_a_burst_and_skips_a_torn_line() -> Result<()> {
    require_root();
    let max: u64 = 64 * 1024;
    let mut agent = Agent::start(&["--journal-max-bytes", &max.to_string()])?;
    let ns = Netns::new()?;
    agent.wait_sample(&format!("ifsock_sockets{{netns=\"{}\"", ns.name)).ok();
    // 1,000 link changes: 250 veth pairs created (2 created + up/carrier each), then deleted.
    let batch = TempDir::new("batch");
    let mut cmds = String::new();
    for i in 0..250 {
        cmds.push_str(&format!("link add bu{i} type veth peer name bv{i}\n"));
    }
    for i in 0..250 {
        cmds.push_str(&format!("link del bu{i}\n"));
    }
    std::fs::write(&batch.0, cmds)?;
    ns.ip(&["-batch", &batch.0.to_string_lossy()])?;
    poll("500 deletions counted", Duration::from_secs(60), || {
        agent.metrics().ok().and_then(|m| sample(&m, "ifsock_link_events_total{event=\"deleted\"}")).is_some_and(|v| v >= 500.0)
    })?;
    let status = agent.terminate()?;
    assert_eq!(status.code(), Some(143));
    let files = journal_files(&agent.journal.0);
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    assert!(files.len() > 1, "a burst of 1,000 records must rotate a 64 KiB journal");
    assert!(files.len() <= 8, "{} segments", files.len());
    assert!(total <= max, "journal holds {total} bytes, bound {max}");

    let dir = agent.journal.0.to_string_lossy().into_owned();
    let read = |args: &[&str]| -> Result<Vec<Value>> {
        let mut full = vec!["journal", "--journal", &dir, "--json"];
        full.extend_from_slice(args);
        let out = ifsock(&full)?;
        anyhow::ensure!(out.status.success(), "ifsock journal failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
    };
    let before = read(&[])?;
    assert!(before.iter().any(|r| r["event"] == "deleted"), "the newest records survive rotation");
    // A crash mid-write leaves a torn last line: it is skipped, never fatal.
    let last = files.last().context("no segment")?;
    std::fs::OpenOptions::new().append(true).open(last)?.write_all(br#"{"type":"change","ts_unix_ns":17"#)?;
    let after = read(&[])?;
    assert_eq!(after.len(), before.len());
    // Under ENOBUFS some pairs come and go unseen, so filter on a name the journal does hold.
    let name = before.iter().rev().find_map(|r| r["name"].as_str().filter(|n| n.starts_with("bu"))).context("no bu* change kept")?;
    let one = read(&["--iface", name])?;
    assert!(!one.is_empty() && one.iter().all(|r| r["name"] == name), "--iface {name} filters: {one:?}");
    Ok(())
}

/// A cgroup v2 directory made for one test, removed on drop (its processes must be gone).
struct TestCgroup(PathBuf);
impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn owners_of_a_stranded_socket_carry_their_cgroup() -> Result<()> {
    require_root();
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.lines().any(|l| l.contains(&format!(" {} ", p.display())) && l.contains("cgroup2"))))
        .context("no cgroup2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup")?;
    let name = format!("ifsock-test-{}", unique("cg"));
    let cg = TestCgroup(root.join(&name));
    std::fs::create_dir(&cg.0)?;
    let agent = Agent::start(&[])?;
    let ns = Netns::new()?;
    let (a, b) = (unique("ag"), unique("ah"));
    ns.veth(&a, &b, Some("10.243.0.1/24"))?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c"])
        .arg("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('10.243.0.1', 5354)); print('ready', flush=True); sys.stdin.read()")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = [0u8; 6];
    child.stdout.take().context("no stdout")?.read_exact(&mut ready)?;
    let child = Killed(child);
    std::fs::write(cg.0.join("cgroup.procs"), child.0.id().to_string())?;
    ns.ip(&["link", "del", &a])?;
    let want = format!("/{name}");
    let mut found = None;
    poll("socket_stranded with the owner's cgroup in the journal", Duration::from_secs(30), || {
        found = agent.journal_records().into_iter().find(|r| r["type"] == "socket_stranded" && r["netns_name"] == ns.name.as_str());
        found.is_some()
    })?;
    let rec = found.context("vanished")?;
    let cgroups = rec["owner_cgroups"].as_array().context("no owner_cgroups")?;
    assert!(
        cgroups.iter().any(|o| o["pid"] == child.0.id() && o["cgroup"] == want.as_str()),
        "owner {} not shown in {want}: {rec}",
        child.0.id()
    );
    drop(child);
    Ok(())
}

#[test]
fn port_in_use_and_unwritable_journal_fail_at_start_with_the_fix() -> Result<()> {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let dir = TempDir::new("j");
    let failure = |args: &[&str]| -> Result<String> {
        let out = ifsock(args)?;
        if out.status.success() {
            bail!("ifsock {args:?} succeeded");
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let err = failure(&["agent", "--listen", &addr, "--journal", &dir.0.to_string_lossy()])?;
    assert!(err.contains("in use") && err.contains("--listen"), "{err}");
    let file = TempDir::new("f");
    std::fs::write(&file.0, b"not a directory")?;
    let err = failure(&["agent", "--listen", "127.0.0.1:0", "--journal", &file.0.join("j").to_string_lossy()])?;
    assert!(err.contains("journal directory") && err.contains("--journal"), "{err}");
    Ok(())
}

/// Seed 003 with the agent running: a wildcard IP_PKTINFO receiver blocked in recvmsg in a test
/// netns, whose veth is then deleted. The kernel keeps no trace of which interface such a socket
/// last received on; the journal does, and `journal::deletions_since` (what `hung` and
/// `sockets --stranded` consult) returns the deletion. The agent itself marks the socket
/// `interface_deleted` with the blocked thread among its waiters.
#[test]
fn seed_003_deletion_under_a_blocked_pktinfo_receiver_is_in_the_journal() -> Result<()> {
    use ifsock::{journal, model::ids::NetnsIno};
    use ifsock_tests::BlockedReceiver;
    require_root();
    let agent = Agent::start(&[])?;
    let ns = Netns::new()?;
    let ino = NetnsIno(u32::try_from(ns.ino()?)?);
    poll("netns_added in the journal", Duration::from_secs(30), || {
        agent.journal_records().iter().any(|r| r["type"] == "netns_added" && r["netns_name"] == ns.name.as_str())
    })?;
    let (a, b) = (unique("sd"), unique("se"));
    ns.veth(&a, &b, Some("10.243.0.1/24"))?;
    poll("the veth's creation in the journal", Duration::from_secs(30), || {
        agent.journal_records().iter().any(|r| r["type"] == "change" && r["event"] == "created" && r["name"] == a.as_str())
    })?;
    let receiver = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None)?;
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let deleted_index = ns.ifindex(&a)?;
    ns.ip(&["link", "del", &a])?;

    let mut found = Vec::new();
    poll("the deletion from journal::deletions_since", Duration::from_secs(30), || {
        found = journal::deletions_since(&agent.journal.0, ino, since).unwrap_or_default();
        found.iter().any(|d| d.ifname == a)
    })?;
    let d = found.iter().find(|d| d.ifname == a).context("deletion vanished")?;
    assert_eq!(d.ifindex.0, deleted_index);
    assert!(d.ts_unix_ns >= since, "{d:?} is older than the deletion");
    assert!(journal::deletions_since(&agent.journal.0, ino, d.ts_unix_ns + 1)?.iter().all(|d| d.ifname != a), "since filters");
    assert!(journal::deletions_since(&agent.journal.0, NetnsIno(ino.0.wrapping_add(1)), since)?.is_empty(), "netns filters");

    let mut stranded = None;
    poll("socket_stranded interface_deleted in the journal", Duration::from_secs(30), || {
        stranded = agent.journal_records().into_iter().find(|r| {
            r["type"] == "socket_stranded" && r["netns_name"] == ns.name.as_str() && r["socket"]["local_port"] == receiver.port
        });
        stranded.is_some()
    })?;
    let rec = stranded.context("record vanished")?;
    assert_eq!(rec["reason"], "interface_deleted", "{rec}");
    // One RTM_DELLINK takes both ends of the pair: the latest deletion of the netns is named.
    assert!(rec["ifname"] == a.as_str() || rec["ifname"] == b.as_str(), "{rec}");
    let waiters = rec["waiters"].as_array().context("no waiters")?;
    assert!(waiters.iter().any(|w| w["tid"] == receiver.tid && w["via"] == "recv"), "{rec}");
    Ok(())
}
