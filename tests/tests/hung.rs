//! `ifsock hung` reproduces seed 003: a wildcard UDP socket with IP_PKTINFO, a thread blocked
//! in recvmsg, the interface deleted, the fd closed from another thread.
use std::time::{Duration, Instant};

use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// Longest kernel tick, ns (`CONFIG_HZ` 100): the most a tick-precise start can be early by.
const TICK_MAX_NS: u64 = 10_000_000;

fn mine(snapshot: &Value, tid: u32) -> Option<&Value> {
    snapshot["receivers"].as_array()?.iter().find(|r| r["tid"] == tid)
}

#[test]
fn hung_follow_records_orphaned_receiver_exactly() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ha"), unique("hb"));
    ns.veth(&a, &b, Some("10.205.0.1/24")).unwrap();
    // Recording: the blocked time checked below is the receive probes' (a tick-precise start).
    let mut h = Running::start(&["--netns", &ns.name, "hung", "--follow", "--json", "--min-blocked", "0", "--interval", "200ms", "--record-receives"]).unwrap();
    h.wait_for("ready", T, |v| v["type"] == "ready").unwrap();

    let t0 = Instant::now();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    // hung reads /proc before the in-flight map, so a thread that entered recvmsg between the
    // two is first listed with syscall "?" and no fd (under fentry/kprobe, whose record has no
    // fd): await the row with both views, as the next interval gives it.
    let healthy = h.wait_for("receiver listed", T, |v| mine(v, r.tid).is_some_and(|row| row["syscall"] != "?")).unwrap();
    // The receive was in flight by now.
    let listed = Instant::now();
    let row = mine(&healthy, r.tid).unwrap();
    assert_eq!(row["certainty"], "exact", "{row}");
    assert_eq!(row["stranded"], false, "healthy interface, not stranded: {row}");
    assert_eq!(row["fd_open"], true);
    // The entry probe records no comm or netns (userspace reads them from procfs): the row
    // still names the receiving thread and its netns.
    let comm = std::fs::read_to_string(format!("/proc/self/task/{}/comm", r.tid)).unwrap();
    assert_eq!(row["comm"], comm.trim_end(), "{row}");
    assert_eq!(row["netns"], ns.ino().unwrap(), "{row}");

    ns.ip(&["link", "del", &a]).unwrap();
    r.close_fd();
    // The snapshot awaited below shows the fd closed, so it was taken after this.
    let closed = Instant::now();
    let snap = h
        .wait_for("orphaned + deleted", T, |v| {
            mine(v, r.tid).is_some_and(|r| r["fd_open"] == false && r["interfaces"].as_array().is_some_and(|i| i.iter().any(|i| i["state"] == "deleted")))
        })
        .unwrap();
    let elapsed = t0.elapsed().as_nanos() as u64;
    let row = mine(&snap, r.tid).unwrap();
    assert_eq!(row["certainty"], "exact", "{row}");
    assert_eq!(row["blocked_since_source"], "recv_probe", "{row}");
    assert_eq!(row["syscall"], "recvmsg");
    assert_eq!(row["orphaned"], true, "no fd references the socket: {row}");
    assert_eq!(row["stranded"], false, "a wildcard IP_PKTINFO socket is never stranded by a deletion: {row}");
    assert_eq!(row["socket"]["pktinfo"], true);
    assert_eq!(row["socket"]["local_port"], r.port);
    let blocked = row["blocked_ns"].as_u64().unwrap();
    // The recorded start is the clock as first read in its tick on that CPU: early by less than
    // one tick (10 ms at the lowest CONFIG_HZ, 100), never late.
    let at_least = closed.duration_since(listed).as_nanos() as u64;
    assert!(
        blocked >= at_least && blocked <= elapsed + TICK_MAX_NS,
        "blocked {blocked} ns: not between {at_least} ns (listed → fd closed) and elapsed {elapsed} ns + one tick"
    );
    assert!(
        row["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == a.as_str() && i["state"] == "deleted"),
        "deleted interface missing: {row}"
    );

    assert_eq!(r.wake(&ns, "127.0.0.1").unwrap(), 4, "the receiver gets the datagram");
    h.wait_for("receiver gone after wake-up", T, |v| v["type"] == "snapshot" && mine(v, r.tid).is_none()).unwrap();
}

#[test]
fn hung_started_after_the_receiver_blocked_finds_it_on_the_wait_queue_or_infers_and_says_so() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("hc"), unique("hd"));
    ns.veth(&a, &b, Some("10.206.0.1/24")).unwrap();
    let t0 = Instant::now();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    ns.ip(&["link", "del", &a]).unwrap();
    r.close_fd();

    let pid = std::process::id().to_string();
    let rows = ifsock_json(&["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid]).unwrap();
    let elapsed = t0.elapsed().as_nanos() as u64;
    let row = rows.iter().find(|v| v["tid"] == r.tid).unwrap_or_else(|| panic!("receiver {} missing: {rows:#?}", r.tid));
    let walked = skip::Feature::Iterators.available().is_ok();
    if walked {
        // The thread is on its socket's wait queue: exact, whatever ifsock did before.
        assert_eq!((row["certainty"].as_str(), row["source"].as_str()), (Some("exact"), Some("wait_queue")), "{row}");
        assert_eq!(row["blocked_since_source"], "scheduler", "an estimate, labelled as one: {row}");
    }
    assert_eq!(row["fd_open"], false);
    assert_eq!(row["socket"]["pktinfo"], true, "{row}");
    assert_eq!(row["socket"]["local_port"], r.port);
    let blocked = row["blocked_ns"].as_u64().unwrap();
    assert!(blocked > 0 && blocked <= elapsed, "blocked {blocked} ns not within elapsed {elapsed} ns");
    // Where the wait queues cannot be read (the /proc fallback), the only ownerless socket of
    // the netns is an inference, labelled as one.
    let out = std::process::Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid])
        .env("IFSOCK_WAITER_SOURCE", "proc")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row: Value = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["tid"] == r.tid).unwrap_or_else(|| panic!("receiver {} missing from the fallback: {text}", r.tid));
    assert_eq!((row["certainty"].as_str(), row["source"].as_str()), (Some("inferred"), Some("proc")), "an inference is labelled as one: {row}");
    assert!(row["evidence"].as_str().unwrap().contains("inference"), "{row}");
    assert_eq!(row["socket"]["local_port"], r.port);
    assert_eq!(r.wake(&ns, "127.0.0.1").unwrap(), 4);
    let after = ifsock_json(&["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid]).unwrap();
    assert!(after.iter().all(|v| v["tid"] != r.tid), "a receiver that woke is not listed");
}

#[test]
fn device_bound_receiver_is_stranded_when_its_interface_goes_down() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("he"), unique("hf"));
    ns.veth(&a, &b, Some("10.207.0.1/24")).unwrap();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", false, Some(&a)).unwrap();
    let pid = std::process::id().to_string();
    let args = ["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid];
    let before = ifsock_json(&args).unwrap();
    let row = before.iter().find(|v| v["tid"] == r.tid).expect("receiver listed");
    // On its socket's wait queue (the walk); procfs's open fd where the walk cannot run.
    let expected = if skip::Feature::Iterators.available().is_ok() { "exact" } else { "current_fd" };
    assert_eq!(row["certainty"], expected, "{row}");
    assert_eq!(row["stranded"], false);
    ns.ip(&["link", "set", &a, "down"]).unwrap();
    let after = ifsock_json(&args).unwrap();
    let row = after.iter().find(|v| v["tid"] == r.tid).expect("receiver listed");
    assert_eq!(row["stranded"], true, "{row}");
    assert!(row["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == a.as_str() && i["state"] == "down" && i["binding"] == "device"));
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    assert_eq!(r.wake(&ns, "10.207.0.1").unwrap(), 4);
    r.close_fd();
}

/// The rows of `hung --json` one-shot for this test process.
fn rows_of(netns: Option<&str>, extra: &[&str]) -> Vec<Value> {
    let pid = std::process::id().to_string();
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        args.extend(["--netns", ns]);
    }
    args.extend(["hung", "--json", "--min-blocked", "0", "--pid", &pid]);
    args.extend(extra);
    ifsock_json(&args).unwrap()
}

fn tids(rows: &[Value]) -> Vec<u64> {
    rows.iter().filter_map(|r| r["tid"].as_u64()).collect()
}

#[test]
fn hung_netns_lists_only_the_receivers_of_that_netns() {
    require_root();
    let (na, nb, empty) = (Netns::new().unwrap(), Netns::new().unwrap(), Netns::new().unwrap());
    let ra = BlockedReceiver::start(&na, "127.0.0.1:0", false, None).unwrap();
    let rb = BlockedReceiver::start(&nb, "127.0.0.1:0", false, None).unwrap();
    let (a, b) = (u64::from(ra.tid), u64::from(rb.tid));

    let in_a = rows_of(Some(&na.name), &[]);
    assert!(tids(&in_a).contains(&a) && !tids(&in_a).contains(&b), "--netns A: only A's receiver: {in_a:#?}");
    assert!(in_a.iter().all(|r| r["netns"].as_u64() == Some(na.ino().unwrap())), "{in_a:#?}");
    let in_b = rows_of(Some(&nb.name), &[]);
    assert!(tids(&in_b).contains(&b) && !tids(&in_b).contains(&a), "--netns B: only B's receiver: {in_b:#?}");

    // No --pid: a namespace nobody lives in has no receivers at all, not the host's.
    let none = ifsock_json(&["--netns", &empty.name, "hung", "--json", "--min-blocked", "0"]).unwrap();
    assert!(none.is_empty(), "a netns with no process lists nothing: {none:#?}");

    let all = rows_of(None, &["--all-netns"]);
    let netns_of = |tid: u64| all.iter().find(|r| r["tid"] == tid).and_then(|r| r["netns"].as_u64());
    assert_eq!(netns_of(a), Some(na.ino().unwrap()), "{all:#?}");
    assert_eq!(netns_of(b), Some(nb.ino().unwrap()), "{all:#?}");
    let table = ifsock(&["hung", "--all-netns", "--min-blocked", "0", "--pid", &std::process::id().to_string()]).unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NETNS "), "--all-netns adds a NETNS column: {text}");
    assert!(text.lines().any(|l| l.starts_with(&na.name)), "named netns shown by name: {text}");

    assert_eq!(ra.wake(&na, "127.0.0.1").unwrap(), 4);
    assert_eq!(rb.wake(&nb, "127.0.0.1").unwrap(), 4);
    ra.close_fd();
    rb.close_fd();
}

fn refused(args: &[&str], needle: &str) -> std::process::Output {
    let out = ifsock(args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ifsock {args:?} succeeded");
    assert!(stderr.contains(needle), "ifsock {args:?}: stderr {stderr:?} lacks {needle:?}");
    assert!(!stderr.contains("panicked"), "ifsock {args:?} panicked: {stderr}");
    assert!(out.stdout.is_empty(), "ifsock {args:?} printed output: {}", String::from_utf8_lossy(&out.stdout));
    out
}

#[test]
fn zero_or_huge_intervals_are_refused_with_the_range() {
    refused(&["hung", "--follow", "--interval", "0"], "use 1ms to 24h");
    refused(&["hung", "--follow", "--interval=0s"], "use 1ms to 24h");
    refused(&["hung", "--follow", "--interval", "999999h"], "use 1ms to 24h");
    refused(&["tun", "--interval=999999h"], "use 0 to 24h");
    refused(&["hung", "--min-blocked", "999999h"], "use 0 to 24h");
}

#[test]
fn hung_arguments_that_make_no_sense_are_refused() {
    require_root();
    refused(&["hung", "--interval", "1s"], "--follow");
    refused(&["hung", "--probe-set", "tracepoint"], "--follow");
    refused(&["hung", "--pid", "0"], "0 is not in 1..");
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let missing = (pid_max + 1).to_string();
    let out = refused(&["hung", "--pid", &missing], "no such process");
    assert_eq!(out.status.code(), Some(1), "a pid that does not exist: rc 1");
}

#[test]
fn netns_with_all_netns_is_refused_not_ignored() {
    require_root();
    let ns = Netns::new().unwrap();
    refused(&["--netns", &ns.name, "sockets", "--all-netns"], "contradict");
    refused(&["--netns", &ns.name, "hung", "--all-netns"], "contradict");
}

/// Runs ifsock with a stdout whose reader is already gone: the first write gets EPIPE.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    std::process::Command::new(ifsock_bin())
        .args(args)
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn hung_stops_quietly_when_stdout_is_closed() {
    require_root();
    for args in [&["hung"][..], &["hung", "--json", "--follow", "--interval=1ms"], &["hung", "--follow", "--interval=1ms"]] {
        let out = with_closed_stdout(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "ifsock {args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe") && !stderr.contains("panicked") && !stderr.contains("error"), "ifsock {args:?}: {stderr}");
    }
    // As a shell pipeline runs it (`hung --follow | head -2`, built here without a shell so it
    // also runs in the busybox guest): `head` takes two lines and leaves; the next write fails.
    let mut hung = std::process::Command::new(ifsock_bin())
        .args(["hung", "--follow", "--interval=1ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let head = std::process::Command::new("head").arg("-2").stdin(hung.stdout.take().unwrap()).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(head.success());
    let status = hung.wait().unwrap();
    assert_eq!(status.code(), Some(141), "hung --follow | head -2");
}

#[test]
fn table_spells_current_fd_like_json() {
    require_root();
    let ns = Netns::new().unwrap();
    let r = BlockedReceiver::start(&ns, "127.0.0.1:0", false, None).unwrap();
    let pid = std::process::id().to_string();
    // The /proc fallback: with the wait queues read the receiver is `exact`.
    let out = std::process::Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "hung", "--min-blocked", "0", "--pid", &pid])
        .env("IFSOCK_WAITER_SOURCE", "proc")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.contains(&format!("/{} ", r.tid))).unwrap_or_else(|| panic!("receiver {} missing: {text}", r.tid));
    assert!(row.contains(" current_fd "), "{row}");
    assert!(!text.contains("currentfd"), "{text}");
    assert_eq!(r.wake(&ns, "127.0.0.1").unwrap(), 4);
    r.close_fd();
}

#[test]
fn v4_mapped_tcp6_socket_is_shown_like_ss_and_keeps_family_6() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("hm"), unique("hn"));
    ns.veth(&a, &b, Some("10.253.7.1/24")).unwrap();
    let listener = ns.run(|| std::net::TcpListener::bind("[::ffff:10.253.7.1]:0")).unwrap().unwrap();
    let port = listener.local_addr().unwrap().port();
    let ino = socket_inode(&listener).unwrap();

    let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--json"]).unwrap();
    let row = rows.iter().find(|r| r["inode"] == ino).unwrap_or_else(|| panic!("socket {ino} missing: {rows:#?}"));
    let s = row;
    assert_eq!((s["family"].as_u64(), s["v4_mapped"].as_bool()), (Some(6), Some(true)), "{row}");
    assert_eq!(s["local_addr"], "10.253.7.1", "the address field stays IPv4: {row}");
    assert_eq!(row["ifname"], a.as_str(), "matched as IPv4 to the interface holding 10.253.7.1: {row}");

    let out = ifsock(&["--netns", &ns.name, "sockets"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(&ino.to_string())).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&format!("[::ffff:10.253.7.1]:{port}")) && line.contains("tcp6"), "{line}");
}

#[test]
fn hung_follow_ends_cleanly_on_sigint_and_sigterm() {
    use std::io::BufRead;
    require_root();
    // A follower's normal end: exit 0 for both, as for `watch` (nothing was left half done).
    for (signal, code) in [(nix::sys::signal::Signal::SIGINT, 0), (nix::sys::signal::Signal::SIGTERM, 0)] {
        let mut child = std::process::Command::new(ifsock_bin())
            .args(["hung", "--follow", "--json", "--interval", "50ms"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(ready["type"], "ready", "{ready}");
        // A snapshot after ready: the loop is running when the signal comes.
        let snap: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(snap["type"], "snapshot", "{snap}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {status:?}");
    }
}

#[test]
fn hung_started_after_the_deletion_names_the_interface_from_the_journal() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("hj"), unique("hk"));
    ns.veth(&a, &b, Some("10.207.0.1/24")).unwrap();
    let ifindex = ns.ifindex(&a).unwrap();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    let pid = std::process::id().to_string();
    // The receive's start, for a receiver found in procfs, is estimated from the scheduler clock,
    // which can lag: delete only once that estimate itself says 1.5 s, so the deletion comes
    // after the estimated start by more than the lag (an observed state, not a fixed pause).
    wait_until("the estimate of the receiver's blocked time reaches 1.5 s", Duration::from_secs(60), || {
        ifsock_json(&["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid])
            .is_ok_and(|rows| rows.iter().any(|v| v["tid"] == r.tid && v["blocked_ns"].as_u64().is_some_and(|b| b >= 1_500_000_000)))
    })
    .unwrap();
    ns.ip(&["link", "del", &a]).unwrap();
    let deleted_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    r.close_fd();
    // The record a running agent journals for the deletion (a `change` line, as `watch --json`).
    let dir = TempDir::new("journal");
    let empty = TempDir::new("journal-empty");
    let record = serde_json::json!({"type": "change", "ts_unix_ns": deleted_at, "source": "netlink", "netns": ns.ino().unwrap(),
        "event": "deleted", "ifindex": ifindex, "name": a});
    std::fs::write(dir.0.join("journal-0000000000.jsonl"), format!("{record}\n")).unwrap();

    let row_with = |journal: &std::path::Path| {
        let rows = ifsock_json(&["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid, "--journal", journal.to_str().unwrap()]).unwrap();
        rows.into_iter().find(|v| v["tid"] == r.tid).unwrap_or_else(|| panic!("receiver {} missing", r.tid))
    };
    let without = row_with(&empty.0);
    assert_eq!(without["stranded"], false, "no recorder saw the deletion: a snapshot alone never guesses: {without}");
    let row = row_with(&dir.0);
    assert_eq!(row["stranded"], false, "information only: a wildcard socket still receives on the others: {row}");
    assert!(
        row["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == a.as_str() && i["ifindex"] == ifindex && i["state"] == "deleted"),
        "the deleted interface is named: {row}"
    );
    assert!(row["evidence"].as_str().unwrap().contains("from the journal"), "labelled as coming from the journal: {row}");
    let missing = ifsock(&["hung", "--journal", "/nonexistent/ifsock-journal"]).unwrap();
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no such directory"), "{missing:?}");
    assert_eq!(r.wake(&ns, "127.0.0.1").unwrap(), 4);
}

/// A directory made for one test, removed on drop (also when the test fails).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ifsock-{tag}-{}", unique("j")));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
