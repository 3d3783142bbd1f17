//! `ifsock agent` and `ifsock journal` on the real kernel: a socket stranded in a netns created
//! after the agent started shows in /metrics, the exposition passes the strict OpenMetrics
//! parser, a real Prometheus scrapes it; the journal stays bounded under a burst and skips a
//! torn line; SIGTERM leaves no BPF link behind; owners carry their cgroup.
use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use ifsock_tests::{ifsock, ifsock_json, require_root, sh, unique, wait_until, BlockedReceiver, Netns};
use serde_json::Value;

#[path = "support/agent.rs"]
mod support;
use support::{get, journal_files, poll, sample, Agent, Prometheus, TempDir};

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

    let prom = Prometheus::start(agent.port, None)?;
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

/// SIGTERM and SIGINT: the journal is flushed and ends on a whole record, no BPF link of the
/// agent outlives it, and the exit status is 128 + the signal.
fn signal_flushes_the_journal_and_leaves_no_bpf_links(signal: nix::sys::signal::Signal, code: i32) -> Result<()> {
    require_root();
    let mut agent = Agent::start(&["--receivers", "--record-receives"])?;
    let held = bpf_link_ids(Some(agent.child.id()));
    assert!(!held.is_empty(), "--record-receives attaches the receive-path probes: the agent must hold BPF links");
    let ns = Netns::new()?;
    let a = unique("ag");
    ns.veth(&a, &unique("ah"), Some("10.242.0.1/24"))?;
    agent.wait_record("the veth's creation in the journal", |r| r["type"] == "change" && r["event"] == "created" && r["name"] == a.as_str())?;
    let status = agent.signal(signal)?;
    assert_eq!(status.code(), Some(code), "{signal} exits with 128+{}", signal as i32);
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
fn sigterm_flushes_the_journal_and_leaves_no_bpf_links() -> Result<()> {
    signal_flushes_the_journal_and_leaves_no_bpf_links(nix::sys::signal::Signal::SIGTERM, 143)
}

#[test]
fn sigint_flushes_the_journal_leaves_no_bpf_links_and_exits_130() -> Result<()> {
    signal_flushes_the_journal_and_leaves_no_bpf_links(nix::sys::signal::Signal::SIGINT, 130)
}

/// A 1,000-change burst in one netns (250 veth pairs created, then deleted). The agent's
/// subscription socket is sized for it (README: an 8 MiB receive buffer), so the test forces no
/// overflow and requires it: no ENOBUFS loss and no resync while the burst runs, and the deletions
/// the bounded journal kept are the newest ones, in order, without a gap.
#[test]
fn journal_rotation_keeps_the_bound_under_a_burst_and_skips_a_torn_line() -> Result<()> {
    require_root();
    let max: u64 = 64 * 1024;
    let mut agent = Agent::start(&["--journal-max-bytes", &max.to_string()])?;
    let ns = Netns::new()?;
    agent.wait_record("netns_added in the journal", |r| r["type"] == "netns_added" && r["netns_name"] == ns.name.as_str())?;
    let lost = |agent: &Agent| -> Result<(f64, f64)> {
        let m = agent.metrics()?;
        let enobufs = sample(&m, "ifsock_events_lost_total{source=\"netlink_enobufs\"}").context("no netlink_enobufs loss counter")?;
        let resyncs = sample(&m, "ifsock_resyncs_total").context("no resync counter")?;
        Ok((enobufs, resyncs))
    };
    let before = lost(&agent)?;
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
    let in_ns = |r: &Value| r["netns_name"] == ns.name.as_str();
    let deleted = |r: &Value, name: &str| r["type"] == "change" && r["event"] == "deleted" && r["name"] == name;
    // The journal is written in the order the kernel sent the changes: the last pair's deletion
    // comes last.
    agent.wait_record("the last pair's deletion in the journal", |r| in_ns(r) && (deleted(r, "bu249") || deleted(r, "bv249")))?;
    assert_eq!(lost(&agent)?, before, "(ENOBUFS losses, resyncs) during the burst: the receive buffer must hold it");
    let status = agent.terminate()?;
    assert_eq!(status.code(), Some(143));
    let files = journal_files(&agent.journal.0);
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    assert!(files.len() > 1, "a burst of 1,000 records must rotate a 64 KiB journal");
    assert!(files.len() <= 8, "{} segments", files.len());
    assert!(total <= max, "journal holds {total} bytes, bound {max}");

    // What rotation kept of the deletions is a suffix of the batch: pairs k..=249, each pair's
    // two deletions (either order) before the next pair's; only the oldest kept pair may have
    // lost one of its two to the removed segment.
    let records = agent.journal_records();
    let pairs: Vec<u32> = records
        .iter()
        .filter(|r| in_ns(r) && r["type"] == "change" && r["event"] == "deleted")
        .filter_map(|r| r["name"].as_str()?.get(2..)?.parse().ok())
        .collect();
    let first = *pairs.first().context("no deletion kept")?;
    let mut want: Vec<u32> = (first..250).flat_map(|i| [i, i]).collect();
    if pairs.len() % 2 == 1 {
        want.remove(0);
    }
    assert_eq!(pairs, want, "deletions kept, by pair number: a gap is a change the agent never saw");

    let dir = agent.journal.0.to_string_lossy().into_owned();
    let read = |args: &[&str]| -> Result<Vec<Value>> {
        let mut full = vec!["journal", "--journal", &dir, "--json"];
        full.extend_from_slice(args);
        let out = ifsock(&full)?;
        anyhow::ensure!(out.status.success(), "ifsock journal failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
    };
    let before = read(&[])?;
    assert_eq!(before.len(), records.len(), "ifsock journal prints every stored record");
    // A crash mid-write leaves a torn last line: it is skipped, never fatal.
    let last = files.last().context("no segment")?;
    std::fs::OpenOptions::new().append(true).open(last)?.write_all(br#"{"type":"change","ts_unix_ns":17"#)?;
    let after = read(&[])?;
    assert_eq!(after.len(), before.len());
    let one = read(&["--iface", "bu249"])?;
    assert!(one.iter().any(|r| deleted(r, "bu249")), "--iface bu249 keeps its deletion: {one:?}");
    assert!(one.iter().all(|r| r["name"] == "bu249"), "--iface bu249 filters: {one:?}");
    Ok(())
}

/// The cgroup2 mount: `/sys/fs/cgroup/unified` on a hybrid host, `/sys/fs/cgroup` on a unified
/// one (`/proc/self/mountinfo` says which is cgroup2).
fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && mountinfo.lines().any(|l| l.contains(&format!(" {} ", p.display())) && l.contains(" - cgroup2 ")))
        .context("no cgroup2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup")
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
    let root = cgroup2_root()?;
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
/// `sockets --stranded` consult) returns the deletion. The agent does not mark the wildcard
/// socket stranded (it still receives on every other interface); a receiver bound to the
/// deleted device beside it is `device_deleted`, named, with its blocked thread as waiter.
#[test]
fn seed_003_deletion_under_a_blocked_pktinfo_receiver_is_in_the_journal() -> Result<()> {
    use ifsock::{journal, model::ids::NetnsIno};
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
    let on_device = BlockedReceiver::start(&ns, "0.0.0.0:0", false, Some(&a))?;
    // A snapshot of the agent saw the device-bound socket on `a` (so its name is known even if
    // the next snapshot sees the link gone before the deletion record). A change makes the
    // agent take one: the peer going down.
    ns.ip(&["link", "set", &b, "down"])?;
    agent.wait_sample(&format!("ifsock_sockets{{netns=\"{}\",ifname=\"{a}\",binding=\"device\"", ns.name))?;
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
    poll("socket_stranded device_deleted in the journal", Duration::from_secs(30), || {
        stranded = agent.journal_records().into_iter().find(|r| {
            r["type"] == "socket_stranded" && r["netns_name"] == ns.name.as_str() && r["socket"]["local_port"] == on_device.port
        });
        stranded.is_some()
    })?;
    let rec = stranded.context("record vanished")?;
    assert_eq!(rec["reason"], "device_deleted", "{rec}");
    assert_eq!(rec["ifname"], a.as_str(), "the deleted ifindex keeps its last name: {rec}");
    let waiters = rec["waiters"].as_array().context("no waiters")?;
    assert!(waiters.iter().any(|w| w["tid"] == on_device.tid && w["via"] == "recv"), "{rec}");
    // The same judgement covered the wildcard receiver: it is not stranded.
    let gauge = format!("ifsock_stranded_sockets{{netns=\"{}\",", ns.name);
    poll("the device-bound socket in the gauge", Duration::from_secs(30), || agent.metrics().is_ok_and(|m| m.contains(&gauge)))?;
    let journal = agent.journal_records();
    assert!(
        !journal.iter().any(|r| r["type"] == "socket_stranded" && r["socket"]["local_port"] == receiver.port),
        "the wildcard IP_PKTINFO receiver was marked stranded: {journal:#?}"
    );
    Ok(())
}

/// A tmpfs of `size` mounted on a fresh directory for one test; unmounted and removed on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ifsock-test-{}", unique("fs")));
        std::fs::create_dir(&dir)?;
        let fs = Tmpfs(dir);
        sh(&["mount", "-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "ifsock-test", &fs.0.to_string_lossy()])?;
        Ok(fs)
    }

    /// Writes zeros to `filler` until the kernel answers ENOSPC.
    fn fill(&self) -> Result<PathBuf> {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path)?;
        let block = [0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => bail!("write returned 0 before ENOSPC"),
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(path),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// README: a full disk does not stop the agent; failed records are counted in
/// `ifsock_journal_write_errors_total`, the first failure of a run is logged, and the journal
/// starts a fresh segment when writes succeed again. The journal lives on a 1 MiB tmpfs that the
/// test fills to ENOSPC.
#[test]
fn a_full_disk_is_counted_and_the_agent_keeps_serving_and_recovers() -> Result<()> {
    require_root();
    let fs = Tmpfs::mount("1m")?;
    let log = TempDir::new("stderr");
    let mut agent = Agent::start_in(&[], TempDir(fs.0.join("j")), Stdio::from(std::fs::File::create(&log.0)?))?;
    let ns = Netns::new()?;
    agent.wait_record("netns_added in the journal", |r| r["type"] == "netns_added" && r["netns_name"] == ns.name.as_str())?;
    let errors = |agent: &Agent| agent.metrics().ok().and_then(|m| sample(&m, "ifsock_journal_write_errors_total"));
    assert_eq!(errors(&agent), Some(0.0), "no write error before the disk fills");
    let seq_of = |p: &Path| p.file_name()?.to_str()?.strip_prefix("journal-")?.strip_suffix(".jsonl")?.parse::<u64>().ok();
    let last_seq_before = journal_files(&agent.journal.0).last().and_then(|p| seq_of(p)).context("no segment")?;

    let filler = fs.fill()?;
    // 20 veth pairs: far more records than the page the open segment may still have room in.
    let batch = TempDir::new("batch");
    std::fs::write(&batch.0, (0..20).map(|i| format!("link add fu{i} type veth peer name fv{i}\n")).collect::<String>())?;
    ns.ip(&["-batch", &batch.0.to_string_lossy()])?;
    poll("journal write errors counted", Duration::from_secs(30), || errors(&agent).is_some_and(|e| e > 0.0))?;

    // Still serving, and still following: a socket stranded now shows in the gauges.
    let (a, b) = (unique("ag"), unique("ah"));
    ns.veth(&a, &b, Some("10.244.0.1/24"))?;
    let sock = ns.run(|| std::net::UdpSocket::bind("10.244.0.1:5356"))??;
    // Seen healthy first: a snapshot taken only after the deletion could not name the interface.
    let healthy = format!("ifsock_sockets{{netns=\"{}\",ifname=\"{a}\",binding=\"address\",protocol=\"udp\"}}", ns.name);
    assert_eq!(agent.wait_sample(&healthy)?, 1.0);
    ns.ip(&["link", "del", &a])?;
    let stranded = format!("ifsock_stranded_sockets{{netns=\"{}\",ifname=\"{a}\",reason=\"address_gone\"}}", ns.name);
    assert_eq!(agent.wait_sample(&stranded)?, 1.0, "the event loop goes on with a failing journal");
    assert!(get(agent.port, "/healthz").is_ok_and(|(s, b)| s == 200 && b == "ok\n"), "/healthz answers with a full disk");
    let failed = errors(&agent).context("no error counter")?;

    // Space again: the next records land in a segment started after the failure, whole.
    std::fs::remove_file(&filler)?;
    let c = unique("ag");
    ns.ip(&["link", "add", &c, "type", "veth", "peer", "name", &unique("ah")])?;
    let rec = agent.wait_record("a change journaled after the disk has room again", |r| r["type"] == "change" && r["event"] == "created" && r["name"] == c.as_str())?;
    let holder = journal_files(&agent.journal.0)
        .into_iter()
        .find(|f| std::fs::read_to_string(f).is_ok_and(|t| t.lines().any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v == rec))))
        .context("record vanished")?;
    let seq = seq_of(&holder).context("segment name")?;
    assert!(seq > last_seq_before, "recovered into segment {seq}, not a fresh one after {last_seq_before}");
    let text = std::fs::read_to_string(&holder)?;
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "the fresh segment holds only whole records: {text}");
    assert_eq!(errors(&agent), Some(failed), "no write error once there is room");
    let status = agent.terminate()?;
    assert_eq!(status.code(), Some(143));
    let stderr = std::fs::read_to_string(&log.0)?;
    let enospc = stderr.lines().filter(|l| l.contains("No space left on device")).count();
    assert_eq!(enospc, 1, "one log line for the one run of {failed} failures: {stderr}");
    // The reader takes the journal as it is: torn records of the failed writes are skipped.
    let out = ifsock(&["journal", "--journal", &agent.journal.0.to_string_lossy(), "--json"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.contains(&format!("\"name\":\"{c}\""))));
    drop(sock);
    Ok(())
}

/// Cgroup directories made for one test (leaf last), removed leaf first on drop; a directory
/// that was already there is left alone.
struct CgroupPath(Vec<PathBuf>);

impl CgroupPath {
    fn create(root: &Path, rel: &str) -> Result<Self> {
        let mut made = CgroupPath(Vec::new());
        let mut p = root.to_path_buf();
        for comp in rel.trim_start_matches('/').split('/') {
            p = p.join(comp);
            match std::fs::create_dir(&p) {
                Ok(()) => made.0.push(p.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(anyhow::Error::from(e).context(format!("creating cgroup {}", p.display()))),
            }
        }
        Ok(made)
    }
}

impl Drop for CgroupPath {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

const PY_HOLD: &str = "import socket,sys\nprint('up', flush=True)\nsys.stdin.readline()\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind((sys.argv[1], int(sys.argv[2])))\nprint('ready', flush=True)\nsys.stdin.read()\n";

/// A process in a cgroup shaped like a Kubernetes container's (cgroupfs driver:
/// `/kubepods/burstable/pod<uid>/<64-hex id>`), in a netns of its own with no name under
/// /run/netns, holds a UDP socket on a veth address. The agent (started afterwards, so it finds
/// the netns from the process) labels the netns `container:<id12>` and the socket's owner with
/// `cgroup`, `container_id` and `pod_uid`, once the address goes.
#[test]
fn a_container_shaped_cgroup_labels_the_netns_and_the_owner() -> Result<()> {
    require_root();
    let root = cgroup2_root()?;
    let tag = unique("k");
    let digits: String = tag.bytes().map(|b| format!("{:x}", b % 16)).collect();
    let uid = format!("{:0>8}-0000-4000-8000-{:0>12}", &digits[..digits.len().min(8)], digits);
    let uid = uid[..36].to_string();
    let id = format!("{:0>64}", format!("ab{digits}"));
    let rel = format!("/kubepods/burstable/pod{uid}/{id}");
    let cg = CgroupPath::create(&root, &rel)?;
    let leaf = root.join(rel.trim_start_matches('/'));
    let mut child = Command::new("unshare")
        .args(["--net", "python3", "-c", PY_HOLD, "10.245.0.1", "5357"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().context("no stdout")?);
    let mut stdin = child.stdin.take().context("no stdin")?;
    let child = Killed(child);
    let pid = child.0.id();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    anyhow::ensure!(line.trim() == "up", "python3 in a new netns: {line:?}");
    std::fs::write(leaf.join("cgroup.procs"), pid.to_string())?;
    let in_ns = |args: &[&str]| -> Result<std::process::Output> {
        let target = pid.to_string();
        let mut full = vec!["nsenter", "-t", &target, "-n", "ip"];
        full.extend_from_slice(args);
        sh(&full)
    };
    let (a, b) = (unique("ca"), unique("cb"));
    sh(&["ip", "link", "add", &a, "netns", &pid.to_string(), "type", "veth", "peer", "name", &b, "netns", &pid.to_string()])?;
    in_ns(&["addr", "add", "10.245.0.1/24", "dev", &a])?;
    in_ns(&["link", "set", &a, "up"])?;
    writeln!(stdin, "go")?;
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    anyhow::ensure!(line.trim() == "ready", "the socket bound: {line:?}");
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    anyhow::ensure!(proc_cgroup.lines().any(|l| l == format!("0::{rel}")), "the kernel puts the process in {rel}: {proc_cgroup}");

    let agent = Agent::start(&[])?;
    let label = format!("container:{}", &id[..12]);
    // Found at start (from the process), so no netns_added line: the label shows in the gauges.
    let healthy = format!("ifsock_sockets{{netns=\"{label}\",ifname=\"{a}\",binding=\"address\",protocol=\"udp\"}}");
    assert_eq!(agent.wait_sample(&healthy)?, 1.0, "a netns with no name is labelled by its container");
    in_ns(&["link", "del", &a])?;
    let rec = agent.wait_record("socket_stranded in the container's netns", |r| r["type"] == "socket_stranded" && r["netns"] == ino)?;
    assert_eq!(rec["netns_name"], label.as_str(), "{rec}");
    assert_eq!(rec["socket"]["local_port"], 5357, "{rec}");
    let owner = rec["owner_cgroups"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["pid"] == pid))
        .unwrap_or_else(|| panic!("owner {pid} missing: {rec}"));
    assert_eq!(owner["cgroup"], rel.as_str(), "{rec}");
    assert_eq!(owner["container_id"], id.as_str(), "{rec}");
    assert_eq!(owner["pod_uid"], uid.as_str(), "{rec}");
    let stranded = format!("ifsock_stranded_sockets{{netns=\"{label}\",ifname=\"{a}\",reason=\"address_gone\"}}");
    assert_eq!(agent.wait_sample(&stranded)?, 1.0, "the metric labels carry the container label too");
    drop(agent);
    drop(child);
    drop(cg);
    Ok(())
}

/// `hung --journal DIR` on a journal a real agent wrote: seed 003 (a wildcard IP_PKTINFO receiver
/// blocked in recvmsg) while an agent runs; the veth is deleted; the agent is stopped; a later
/// `hung` ties the receiver to the deleted interface from that journal, and says so, as
/// information: the receiver is not stranded (a wildcard socket receives on every other interface).
#[test]
fn hung_reads_the_deletion_from_a_journal_the_agent_wrote() -> Result<()> {
    require_root();
    let mut agent = Agent::start(&[])?;
    let ns = Netns::new()?;
    let (a, b) = (unique("hj"), unique("hk"));
    ns.veth(&a, &b, Some("10.246.0.1/24"))?;
    let ifindex = ns.ifindex(&a)?;
    agent.wait_record("the veth's creation in the journal", |r| r["type"] == "change" && r["event"] == "created" && r["name"] == a.as_str())?;
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None)?;
    let pid = std::process::id().to_string();
    let hung = |journal: &str| -> Result<Value> {
        let rows = ifsock_json(&["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid, "--journal", journal])?;
        rows.into_iter().find(|v| v["tid"] == r.tid).with_context(|| format!("receiver {} missing", r.tid))
    };
    let empty = TempDir::new("empty");
    std::fs::create_dir_all(&empty.0)?;
    // The receive's start, for a receiver found in procfs, is estimated from the scheduler clock,
    // which can lag: delete only once that estimate itself says 1.5 s, so the deletion comes
    // after the estimated start by more than the lag (an observed state, not a fixed pause).
    wait_until("the estimate of the receiver's blocked time reaches 1.5 s", Duration::from_secs(60), || {
        hung(&empty.0.to_string_lossy()).is_ok_and(|v| v["blocked_ns"].as_u64().is_some_and(|b| b >= 1_500_000_000))
    })?;
    ns.ip(&["link", "del", &a])?;
    agent.wait_record("the deletion in the journal", |r| r["type"] == "change" && r["event"] == "deleted" && r["name"] == a.as_str())?;
    assert_eq!(agent.terminate()?.code(), Some(143));

    let dir = agent.journal.0.to_string_lossy().into_owned();
    let without = hung(&empty.0.to_string_lossy())?;
    assert_eq!(without["stranded"], false, "a snapshot alone never guesses which interface a wildcard socket lost: {without}");
    let row = hung(&dir)?;
    assert_eq!(row["stranded"], false, "a wildcard socket is never stranded by a deletion: {row}");
    assert_eq!(row["syscall"], "recvmsg", "{row}");
    assert_eq!(row["socket"]["local_port"], r.port, "{row}");
    assert!(
        row["interfaces"].as_array().is_some_and(|i| i.iter().any(|i| i["name"] == a.as_str() && i["ifindex"] == ifindex && i["state"] == "deleted")),
        "the deleted interface is named: {row}"
    );
    let evidence = row["evidence"].as_str().unwrap_or_default();
    assert!(evidence.ends_with(&format!("from the journal {dir}")), "the evidence names the journal: {row}");
    assert_eq!(r.wake(&ns, "127.0.0.1")?, 4);
    r.close_fd();
    Ok(())
}

/// README: the journal's total size stays under `--journal-max-bytes`, the oldest segments going
/// when a new one starts, and a full disk does not stop the agent. A record that failed to be
/// written counts nothing toward the bound and leaves no empty segment behind, so no history
/// that fits the bound is deleted while the disk is full (before a1d0ef2 it was).
#[test]
fn a_full_disk_keeps_the_history_that_fits_the_bound() -> Result<()> {
    require_root();
    let max: u64 = 32 * 1024;
    let fs = Tmpfs::mount("1m")?;
    let mut agent = Agent::start_in(&["--journal-max-bytes", &max.to_string()], TempDir(fs.0.join("j")), Stdio::null())?;
    let ns = Netns::new()?;
    agent.wait_record("netns_added in the journal", |r| r["type"] == "netns_added" && r["netns_name"] == ns.name.as_str())?;
    let batch = TempDir::new("batch");
    std::fs::write(&batch.0, (0..10).map(|i| format!("link add hu{i} type veth peer name hv{i}\n")).collect::<String>())?;
    ns.ip(&["-batch", &batch.0.to_string_lossy()])?;
    agent.wait_record("the history in the journal", |r| r["type"] == "change" && r["name"] == "hu9")?;
    let sizes = |dir: &Path| -> Vec<(PathBuf, u64)> { journal_files(dir).into_iter().map(|f| { let n = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0); (f, n) }).collect() };
    let before = sizes(&agent.journal.0);

    let filler = fs.fill()?;
    let errors = |agent: &Agent| agent.metrics().ok().and_then(|m| sample(&m, "ifsock_journal_write_errors_total"));
    std::fs::write(&batch.0, (10..160).map(|i| format!("link add hu{i} type veth peer name hv{i}\n")).collect::<String>())?;
    ns.ip(&["-batch", &batch.0.to_string_lossy()])?;
    poll("100 journal write errors", Duration::from_secs(30), || errors(&agent).is_some_and(|e| e >= 100.0))?;
    std::fs::remove_file(&filler)?;
    let c = unique("ag");
    ns.ip(&["link", "add", &c, "type", "veth", "peer", "name", &unique("ah")])?;
    agent.wait_record("a change after the disk has room again", |r| r["type"] == "change" && r["name"] == c.as_str())?;
    assert_eq!(agent.terminate()?.code(), Some(143));

    let after = sizes(&agent.journal.0);
    let on_disk: u64 = after.iter().map(|(_, n)| n).sum();
    let removed: Vec<&(PathBuf, u64)> = before.iter().filter(|(f, _)| !f.exists()).collect();
    let removed_bytes: u64 = removed.iter().map(|(_, n)| n).sum();
    // A removal is due only when keeping the segment would have passed the bound.
    assert!(
        removed.is_empty() || on_disk + removed_bytes + max / 8 > max,
        "segments {removed:?} were removed with {on_disk} bytes on disk (+{removed_bytes} removed), bound {max}"
    );
    let empty = after.iter().filter(|(_, n)| *n == 0).count();
    assert!(empty <= 1, "{empty} empty segment files left by failed writes");
    Ok(())
}
