//! Stranded sockets, the agent and a TCP reader on a kernel whose fentry or kprobe sets work
//! (the 6.1 VM: `cargo xtask vm-test --only kernel_probe_paths`). The host-only `stranded` and
//! `agent` binaries never run there, so this file uses only the tests crate's own sockets and
//! threads (no python, no daemons). Each test needs its set's kernel fact ([`skip::needs`]),
//! forces the set, and checks that the set it asked for is the one that ran.
use std::time::Duration;

use ifsock_tests::{
    skip::{needs, Feature},
    *,
};
use serde_json::Value;

#[path = "support/agent.rs"]
mod support;
use support::Agent;

const T: Duration = Duration::from_secs(60);

fn feature(set: &str) -> Feature {
    match set {
        "fentry" => Feature::Fentry,
        "kprobe" => Feature::Kprobe,
        other => panic!("no kernel-probe set {other}"),
    }
}

/// `watch --probe-set SET --record-receives` while a veth goes away under three sockets of one netns: bound to its
/// address, bound to it as a device, and a wildcard IP_PKTINFO receiver blocked in recvmsg. The
/// deletion is confirmed at the kernel function (`kernel.via` SET), the address-bound socket is
/// `address_gone`, the device-bound one `device_deleted`, the receiver stranded with the SET probe
/// as its evidence; `sockets --stranded` (BPF iterators on this kernel) agrees afterwards.
fn stranded_sockets_are_seen_with(set: &str) {
    require_root();
    if !needs(feature(set)) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("pa"), unique("pb"));
    ns.veth(&a, &b, Some("10.212.0.1/24")).unwrap();
    let ifindex = ns.ifindex(&a).unwrap();
    let a2 = a.clone();
    let (by_addr, by_dev) = ns
        .run(move || -> anyhow::Result<_> {
            let by_addr = std::net::UdpSocket::bind("10.212.0.1:6501")?;
            let by_dev = std::net::UdpSocket::bind("0.0.0.0:6502")?;
            bind_to_device(&by_dev, &a2)?;
            Ok((by_addr, by_dev))
        })
        .unwrap()
        .unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--probe-set", set, "--record-receives"]).unwrap();
    let ready = w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    assert_eq!(ready["probe_set"]["chosen"], set, "{ready}");
    // Bound to the device that goes: a wildcard receiver is never stranded by a deletion (it
    // still receives on every other interface).
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", false, Some(&a)).unwrap();
    let pid = std::process::id();

    ns.ip(&["link", "del", &a]).unwrap();
    // One pass over the lines: a socket can be stranded by the address removal or the down that
    // come before the deletion.
    let mut change = None;
    let mut reasons = std::collections::BTreeMap::new();
    let mut receiver = None;
    w.wait_for("the deletion, both sockets and the receiver stranded", T, |v| {
        let s = &v["socket"];
        if v["type"] == "change" && v["event"] == "deleted" && v["ifindex"] == ifindex {
            change = Some(v.clone());
        }
        if v["type"] == "socket_stranded" && s["owners"].as_array().is_some_and(|o| o.iter().any(|o| o["pid"] == pid)) {
            if let Some(port) = s["local_port"].as_u64() {
                reasons.insert(port, v["reason"].as_str().unwrap_or_default().to_string());
            }
        }
        if v["type"] == "receiver_stranded" && v["receiver"]["tid"] == r.tid {
            receiver = Some(v.clone());
        }
        change.is_some() && reasons.contains_key(&6501) && reasons.contains_key(&6502) && receiver.is_some()
    })
    .unwrap();
    let change = change.unwrap();
    assert_eq!(change["source"], "kernel+netlink", "{change}");
    assert_eq!(change["kernel"]["via"], set, "{change}");
    assert_eq!(reasons[&6501], "address_gone", "{reasons:?}");
    assert_eq!(reasons[&6502], "device_deleted", "{reasons:?}");
    let ev = receiver.unwrap();
    assert_eq!(ev["change"]["ifindex"], ifindex, "{ev}");
    assert_eq!(ev["receiver"]["certainty"], "exact", "{ev}");
    assert_eq!(ev["receiver"]["probe"], format!("{set}:__skb_recv_udp").as_str(), "the {set} probe saw the receive: {ev}");
    assert_eq!(ev["receiver"]["socket"]["local_port"], r.port, "{ev}");
    assert!(w.interrupt().unwrap().success());

    let rows = rows_of(&socket_rows(&ns, true).unwrap(), pid);
    let reason = |port: u16| rows.iter().find(|r| r["local_port"] == port).map(|r| r["stranded"]["reason"].clone());
    assert_eq!(reason(6501), Some(Value::from("address_gone")), "{rows:#?}");
    assert_eq!(reason(6502), Some(Value::from("device_deleted")), "{rows:#?}");
    assert_eq!(reason(r.port), Some(Value::from("device_deleted")), "the receiver's socket: {rows:#?}");
    // A device-bound socket gets no datagram from loopback: Drop wakes it with a shutdown.
    drop(r);
    drop((by_addr, by_dev));
}

#[test]
fn fentry_watch_and_sockets_report_stranded_sockets_and_a_stranded_receiver() {
    stranded_sockets_are_seen_with("fentry");
}

#[test]
fn kprobe_watch_and_sockets_report_stranded_sockets_and_a_stranded_receiver() {
    stranded_sockets_are_seen_with("kprobe");
}

/// `hung --follow --probe-set SET` and a TCP reader blocked in `read`: TCP receives do not go
/// through the probed functions, so the reader is found on its socket's wait queue (`exact`,
/// `source: wait_queue`; procfs's `current_fd` where the walk cannot run) with its fd and
/// syscall; a UDP receiver beside it is the probe's (`exact`, `probe` named).
fn tcp_reader_is_found_with(set: &str) {
    require_root();
    if !needs(feature(set)) {
        return;
    }
    let ns = Netns::new().unwrap();
    let mut h = Running::start(&["--netns", &ns.name, "hung", "--follow", "--json", "--min-blocked", "0", "--interval", "100ms", "--probe-set", set]).unwrap();
    let ready = h.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    assert_eq!(ready["probe_set"]["chosen"], set, "{ready}");
    let (server, client) = ns
        .run(|| -> anyhow::Result<_> {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let client = std::net::TcpStream::connect(listener.local_addr()?)?;
            Ok((listener.accept()?.0, client))
        })
        .unwrap()
        .unwrap();
    let port = server.local_addr().unwrap().port();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&server);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
        let mut buf = [0u8; 16];
        // read(2) itself: std's TcpStream::read is recvfrom(2). The stream stays open until the
        // thread ends.
        // SAFETY: fd and buf are valid for the call.
        let n = unsafe { libc::read(std::os::fd::AsRawFd::as_raw_fd(&server), buf.as_mut_ptr().cast(), buf.len()) };
        drop(server);
        n
    });
    let tid = tid_rx.recv().unwrap();
    wait_until("the TCP reader asleep in read", T, || {
        let sc = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
        let mut words = sc.split_whitespace();
        words.next().and_then(|w| w.parse::<i64>().ok()) == Some(libc::SYS_read)
            && words.next().and_then(|w| i64::from_str_radix(w.trim_start_matches("0x"), 16).ok()) == Some(i64::from(fd))
    })
    .unwrap();
    let udp = BlockedReceiver::start(&ns, "127.0.0.1:0", false, None).unwrap();
    let mine = |v: &Value, tid: u32| v["receivers"].as_array().and_then(|r| r.iter().find(|r| r["tid"] == tid).cloned());
    let snap = h.wait_for("both receivers listed", T, |v| mine(v, tid).is_some() && mine(v, udp.tid).is_some_and(|r| r["syscall"] != "?")).unwrap();
    let row = mine(&snap, tid).unwrap();
    if Feature::Iterators.available().is_ok() {
        assert_eq!((row["certainty"].as_str(), row["source"].as_str()), (Some("exact"), Some("wait_queue")), "a TCP reader is on its socket's wait queue: {row}");
    } else {
        assert_eq!(row["certainty"], "current_fd", "a TCP reader is found through procfs: {row}");
    }
    assert_eq!(row["syscall"], "read", "{row}");
    assert_eq!(row["fd"], fd, "{row}");
    assert_eq!(row["socket"]["protocol"], "tcp", "{row}");
    assert_eq!(row["socket"]["local_port"], port, "{row}");
    let u = mine(&snap, udp.tid).unwrap();
    assert_eq!(u["certainty"], "exact", "{u}");
    assert_eq!(u["probe"], format!("{set}:__skb_recv_udp").as_str(), "{u}");

    {
        use std::io::Write as _;
        let mut client = client;
        client.write_all(b"wake").unwrap();
        assert_eq!(reader.join().unwrap(), 4);
    }
    h.wait_for("the TCP reader gone after it returned", T, |v| v["type"] == "snapshot" && mine(v, tid).is_none()).unwrap();
    assert_eq!(udp.wake(&ns, "127.0.0.1").unwrap(), 4);
    udp.close_fd();
    assert!(h.interrupt().unwrap().success());
}

#[test]
fn fentry_hung_finds_a_tcp_reader_on_its_wait_queue() {
    tcp_reader_is_found_with("fentry");
}

#[test]
fn kprobe_hung_finds_a_tcp_reader_on_its_wait_queue() {
    tcp_reader_is_found_with("kprobe");
}

/// The agent with `--receivers --record-receives` on a kernel with BPF trampolines serves the receive path from
/// fentry (it has no `--probe-set`: it takes the best set), follows a netns created after it
/// started, and journals a receiver bound (SO_BINDTODEVICE) to a deleted veth as stranded, with
/// the blocked thread as its waiter; the blocked-receivers gauge counts it as stranded. (A
/// wildcard IP_PKTINFO receiver, seed 003, is never stranded by a deletion.)
#[test]
fn agent_with_receivers_on_fentry_journals_a_stranded_receiver() {
    require_root();
    if !needs(Feature::Fentry) {
        return;
    }
    let mut agent = Agent::start(&["--receivers", "--record-receives"]).unwrap();
    let m = agent.metrics().unwrap();
    assert!(m.lines().any(|l| l == "ifsock_probe_set_info{path=\"recv\",set=\"fentry\"} 1"), "the receive path on fentry: {m}");
    let ns = Netns::new().unwrap();
    agent.wait_record("netns_added", |r| r["type"] == "netns_added" && r["netns_name"] == ns.name.as_str()).unwrap();
    let (a, b) = (unique("qa"), unique("qb"));
    ns.veth(&a, &b, Some("10.213.0.1/24")).unwrap();
    agent.wait_record("the veth's creation", |r| r["type"] == "change" && r["event"] == "created" && r["name"] == a.as_str()).unwrap();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", false, Some(&a)).unwrap();
    ns.ip(&["link", "del", &a]).unwrap();
    let rec = agent
        .wait_record("socket_stranded device_deleted", |v| {
            v["type"] == "socket_stranded" && v["netns_name"] == ns.name.as_str() && v["socket"]["local_port"] == r.port
        })
        .unwrap();
    assert_eq!(rec["reason"], "device_deleted", "{rec}");
    assert!(rec["waiters"].as_array().is_some_and(|w| w.iter().any(|w| w["tid"] == r.tid && w["via"] == "recv")), "{rec}");
    let gauge = format!("ifsock_blocked_receivers{{netns=\"{}\",stranded=\"true\"}}", ns.name);
    assert!(agent.wait_sample(&gauge).unwrap() >= 1.0);
    // A device-bound socket gets no datagram from loopback: Drop wakes it with a shutdown.
    drop(r);
    assert_eq!(agent.terminate().unwrap().code(), Some(143));
}
