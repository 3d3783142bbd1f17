//! `hung`'s receivers from the sockets' own wait queues (`"source": "wait_queue"`): seed 003
//! several times in one netns, found after the fact, each `exact` on its own socket; no receive
//! tracing unless `--record-receives` asks for it, proven from the programs the kernel says the
//! ifsock process holds (`/proc/PID/fdinfo`, `BPF_OBJ_GET_INFO_BY_FD`).
use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ifsock_tests::{skip::Feature, *};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// Longest kernel tick, ns (`CONFIG_HZ` 100): the most a tick-precise start can be early by.
const TICK_MAX_NS: u64 = 10_000_000;

/// `hung --json` one-shot rows, with `IFSOCK_WAITER_SOURCE` set when `source` is given.
fn hung_rows(ns: &Netns, source: Option<&str>) -> Result<Vec<Value>> {
    let pid = std::process::id().to_string();
    let mut cmd = Command::new(ifsock_bin());
    cmd.args(["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid]);
    if let Some(s) = source {
        cmd.env("IFSOCK_WAITER_SOURCE", s);
    }
    let out = cmd.output().context("running ifsock hung")?;
    if !out.status.success() {
        bail!("ifsock hung failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

#[test]
fn hung_after_the_fact_lists_each_of_three_closed_fd_receivers_exact_on_its_own_socket() {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("wa"), unique("wb"));
    ns.veth(&a, &b, Some("10.213.0.1/24")).unwrap();
    // Seed 003 three times: a wildcard IP_PKTINFO socket each, a thread blocked in recvmsg, the
    // interface deleted, each fd closed from another thread; ifsock starts only afterwards.
    let receivers: Vec<BlockedReceiver> = (0..3).map(|_| BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap()).collect();
    ns.ip(&["link", "del", &a]).unwrap();
    for r in &receivers {
        r.close_fd();
    }
    let t0 = Instant::now();
    let rows = hung_rows(&ns, None).unwrap();
    let mut inodes = BTreeSet::new();
    for r in &receivers {
        let mine: Vec<&Value> = rows.iter().filter(|v| v["tid"] == r.tid).collect();
        assert_eq!(mine.len(), 1, "receiver {} listed once: {rows:#?}", r.tid);
        let row = mine[0];
        assert_eq!(row["certainty"], "exact", "the thread is on its socket's wait queue: {row}");
        assert_eq!(row["source"], "wait_queue", "{row}");
        assert_eq!(row["syscall"], "recvmsg", "{row}");
        assert_eq!(row["fd"], r.fd, "the fd it passed, from its registers: {row}");
        assert_eq!(row["fd_open"], false, "{row}");
        assert_eq!(row["orphaned"], true, "{row}");
        assert_eq!(row["socket"]["local_port"], r.port, "its own socket, not a neighbour's: {row}");
        assert_eq!(row["socket"]["pktinfo"], true, "{row}");
        assert!(row["candidates"].as_array().is_some_and(|c| c.is_empty()), "{row}");
        assert_eq!(row["blocked_since_source"], "scheduler", "no receive was recorded: an estimate, said so: {row}");
        assert!(row["blocked_ns"].as_u64().is_some_and(|n| n > 0), "{row}");
        inodes.insert(row["socket"]["inode"].as_u64().unwrap());
    }
    assert_eq!(inodes.len(), 3, "three sockets for three receivers: {rows:#?}");
    assert!(t0.elapsed() < T);

    // The /proc fallback on the same threads can only guess among the three ownerless sockets.
    let fallback = hung_rows(&ns, Some("proc")).unwrap();
    for r in &receivers {
        let row = fallback.iter().find(|v| v["tid"] == r.tid).unwrap_or_else(|| panic!("receiver {} missing from the fallback: {fallback:#?}", r.tid));
        assert_eq!((row["certainty"].as_str(), row["source"].as_str()), (Some("ambiguous"), Some("proc")), "{row}");
        assert!(row["candidates"].as_array().is_some_and(|c| c.len() >= 3), "{row}");
    }
    for r in &receivers {
        assert_eq!(r.wake(&ns, "127.0.0.1").unwrap(), 4, "the receiver gets the datagram");
    }
    let after = hung_rows(&ns, None).unwrap();
    assert!(receivers.iter().all(|r| after.iter().all(|v| v["tid"] != r.tid)), "receivers that woke are not listed: {after:#?}");
}

/// `bpf(2)` with a zeroed attribute block of which the first bytes are `attr`.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> Result<i64> {
    // SAFETY: attr is a 128-byte buffer that outlives the call; the kernel reads its size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if r < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

/// The name of BPF program `id` (`bpf_prog_info.name`, 16 bytes at offset 64; through
/// `BPF_PROG_GET_FD_BY_ID` (13) and `BPF_OBJ_GET_INFO_BY_FD` (15)).
fn prog_name(id: u32) -> Result<String> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    let fd = bpf(13, &mut attr)?;
    let mut info = [0u8; 256];
    let mut attr = [0u64; 16];
    attr[0] = (fd as u64) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    let got = bpf(15, &mut attr);
    // SAFETY: fd was returned by the kernel above and is closed once.
    unsafe { libc::close(fd as i32) };
    got?;
    let name = &info[64..80];
    Ok(String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap_or(16)]).into_owned())
}

/// A field of an fdinfo text (`prog_id:\t12`).
fn fdinfo_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

/// The BPF programs process `pid` holds, by name, and the names of those a BPF link of the
/// process attaches (`anon_inode:bpf-prog` and `anon_inode:bpf_link` fds, their fdinfo
/// `prog_id`): what the kernel says is loaded and attached, not what ifsock logs.
fn programs_of(pid: u32) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let (mut loaded, mut linked) = (BTreeSet::new(), BTreeSet::new());
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy().into_owned();
        let is_link = target == "anon_inode:bpf_link";
        if !is_link && target != "anon_inode:bpf-prog" {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy())) else { continue };
        let Some(id) = fdinfo_field(&info, "prog_id").and_then(|v| v.parse::<u32>().ok()) else { continue };
        let name = prog_name(id)?;
        if is_link {
            linked.insert(name);
        } else {
            loaded.insert(name);
        }
    }
    Ok((loaded, linked))
}

/// Every receive-path program of ifsock-ebpf is named `recv_*` (recv.rs): the syscall
/// tracepoints `recv_enter`, `recv_enter_read`, `recv_exit`, and the fentry/kprobe sets.
fn receive_programs(names: &BTreeSet<String>) -> Vec<&String> {
    names.iter().filter(|n| n.starts_with("recv_")).collect()
}

#[test]
fn hung_follow_traces_no_receive_unless_asked_and_record_receives_gives_the_probe_start() {
    require_root();
    if !skip::needs(Feature::Iterators) || !skip::needs(Feature::Tracepoint) {
        return;
    }
    let ns = Netns::new().unwrap();
    let mut h = Running::start(&["--netns", &ns.name, "hung", "--follow", "--json", "--min-blocked", "0", "--interval", "100ms"]).unwrap();
    let ready = h.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    assert_eq!(ready["record_receives"], false, "{ready}");
    assert!(ready["probe_set"].is_null(), "{ready}");
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    let mine = |v: &Value, tid: u32| v["receivers"].as_array().and_then(|rows| rows.iter().find(|row| row["tid"] == tid).cloned());
    let snap = h.wait_for("the receiver from its wait queue", T, |v| mine(v, r.tid).is_some()).unwrap();
    let row = mine(&snap, r.tid).unwrap();
    assert_eq!((row["certainty"].as_str(), row["source"].as_str()), (Some("exact"), Some("wait_queue")), "{row}");
    assert_eq!(row["blocked_since_source"], "scheduler", "{row}");
    assert!(row["probe"].is_null(), "{row}");
    // The walk's iterator programs are held by now (the snapshot above used them): the listing
    // sees ifsock's programs, and none of them is a receive program.
    let (loaded, linked) = programs_of(h.pid()).unwrap();
    assert!(!loaded.is_empty(), "no BPF program found in ifsock's fds: the check would prove nothing");
    assert!(receive_programs(&loaded).is_empty() && receive_programs(&linked).is_empty(), "receive programs without --record-receives: {loaded:?} {linked:?}");
    assert!(h.interrupt().unwrap().success());
    drop(r);

    // Asked for: the receive probes are attached, and a receive that starts now is timed by them.
    let mut h = Running::start(&["--netns", &ns.name, "hung", "--follow", "--json", "--min-blocked", "0", "--interval", "100ms", "--record-receives"]).unwrap();
    let ready = h.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    assert_eq!(ready["record_receives"], true, "{ready}");
    assert!(ready["probe_set"]["chosen"].is_string(), "{ready}");
    let (_, linked) = programs_of(h.pid()).unwrap();
    assert!(!receive_programs(&linked).is_empty(), "--record-receives attached no receive program: {linked:?}");
    let t0 = Instant::now();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    let snap = h.wait_for("the recorded receiver", T, |v| mine(v, r.tid).is_some_and(|row| row["syscall"] != "?")).unwrap();
    let elapsed = t0.elapsed().as_nanos() as u64;
    let row = mine(&snap, r.tid).unwrap();
    assert_eq!((row["certainty"].as_str(), row["source"].as_str()), (Some("exact"), Some("wait_queue")), "{row}");
    assert_eq!(row["blocked_since_source"], "recv_probe", "{row}");
    assert!(row["probe"].as_str().is_some_and(|p| !p.is_empty()), "{row}");
    let blocked = row["blocked_ns"].as_u64().unwrap();
    assert!(blocked <= elapsed + TICK_MAX_NS, "recorded start {blocked} ns ago, but the receive began at most {elapsed} ns ago");
    assert_eq!(r.wake(&ns, "127.0.0.1").unwrap(), 4);
    h.wait_for("receiver gone after wake-up", T, |v| v["type"] == "snapshot" && mine(v, r.tid).is_none()).unwrap();
    assert!(h.interrupt().unwrap().success());
}

/// A UDP reader in `read(2)` whose fd was closed: procfs alone does not list it (a `read` of a
/// closed fd is too common to infer from), its socket's wait queue does, `exact`.
#[test]
fn a_read_of_a_closed_fd_is_found_on_its_sockets_wait_queue() {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (fd, port) = ns
        .run(|| -> Result<(i32, u16)> {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let port = s.local_addr()?.port();
            Ok((std::os::fd::IntoRawFd::into_raw_fd(s), port))
        })
        .unwrap()
        .unwrap();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
        let mut buf = [0u8; 16];
        // SAFETY: fd and buf are valid for the call; the fd is closed by another thread while
        // the call holds the socket.
        unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
    });
    let tid = tid_rx.recv().unwrap();
    wait_until("the reader asleep in read", T, || {
        let sc = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
        sc.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()) == Some(libc::SYS_read) && stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('S'))
    })
    .unwrap();
    // SAFETY: the fd was taken from the socket above and is closed once, here.
    unsafe { libc::close(fd) };
    let rows = hung_rows(&ns, None).unwrap();
    let row = rows.iter().find(|v| v["tid"] == tid).unwrap_or_else(|| panic!("reader {tid} missing: {rows:#?}"));
    assert_eq!((row["certainty"].as_str(), row["source"].as_str(), row["syscall"].as_str()), (Some("exact"), Some("wait_queue"), Some("read")), "{row}");
    assert_eq!((row["fd"].as_i64(), row["fd_open"].as_bool()), (Some(i64::from(fd)), Some(false)), "{row}");
    assert_eq!(row["socket"]["local_port"], port, "{row}");
    ns.run(move || std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"wake", ("127.0.0.1", port)))).unwrap().unwrap();
    assert_eq!(reader.join().unwrap(), 4, "the reader gets the datagram");
}

/// A thread in `accept4` on a listening TCP socket: it sleeps on the listener's wait queue
/// (`inet_csk_wait_for_connect`, `autoremove_wake_function`), so `hung` lists it `exact` through
/// that socket, with the fd it passed.
#[test]
fn a_tcp_accept_waiter_is_found_exact_on_its_listening_sockets_wait_queue() {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return;
    }
    let ns = Netns::new().unwrap();
    let listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0")).unwrap().unwrap();
    let port = listener.local_addr().unwrap().port();
    let ino = socket_inode(&listener).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let acceptor = std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
        listener.accept().map(|(_, peer)| peer)
    });
    let tid = tid_rx.recv().unwrap();
    wait_until("the acceptor asleep in accept", T, || {
        let sc = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
        let nr = sc.split_whitespace().next().and_then(|n| n.parse::<i64>().ok());
        (nr == Some(libc::SYS_accept4) || nr == Some(libc::SYS_accept)) && stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('S'))
    })
    .unwrap();
    let rows = hung_rows(&ns, None).unwrap();
    let row = rows.iter().find(|v| v["tid"] == tid).unwrap_or_else(|| panic!("acceptor {tid} missing: {rows:#?}"));
    assert_eq!((row["certainty"].as_str(), row["source"].as_str()), (Some("exact"), Some("wait_queue")), "{row}");
    assert!(matches!(row["syscall"].as_str(), Some("accept4" | "accept")), "{row}");
    assert_eq!((row["fd"].as_i64(), row["fd_open"].as_bool()), (Some(i64::from(fd)), Some(true)), "{row}");
    assert_eq!((row["socket"]["inode"].as_u64(), row["socket"]["local_port"].as_u64()), (Some(ino), Some(u64::from(port))), "via its own socket: {row}");
    assert_eq!(row["socket"]["state"], "LISTEN", "{row}");
    let client = ns.run(move || std::net::TcpStream::connect(("127.0.0.1", port))).unwrap().unwrap();
    assert_eq!(acceptor.join().unwrap().unwrap(), client.local_addr().unwrap(), "the acceptor gets the connection");
}
