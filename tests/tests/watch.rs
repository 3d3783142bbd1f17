//! `ifsock watch` against the real kernel: classification, order, bound sockets at deletion,
//! the pid of the process that deleted the link (syscall tracepoint evidence), veth peers,
//! namespaces that go away, SIGTERM and a second signal during the clean-up, `--iface`,
//! `--count`, `--netns pid:PID`, a reconcile finding what the subscription never got, and
//! refused arguments.
use std::{io::Write, net::UdpSocket, os::fd::AsRawFd, process::Command, time::Duration};

use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

#[test]
fn watch_reports_down_up_rename_delete_recreate_in_order() {
    require_root();
    // The deleting pid comes from the syscall tracepoints (or fentry/kprobe where allowed).
    if !ifsock_tests::skip::needs(ifsock_tests::skip::Feature::Tracepoint) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (a, b, renamed) = (unique("wa"), unique("wb"), unique("wr"));
    ns.veth(&a, &b, Some("10.204.0.1/24")).unwrap();
    let first = ns.ifindex(&a).unwrap();
    // `--sockets-inline`: the deletion's own record carries the sockets it had.
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--sockets-inline"]).unwrap();
    w.wait_for("ready line", T, |v| v["type"] == "ready").unwrap();

    let a2 = a.clone();
    let bound = ns
        .run(move || -> anyhow::Result<_> {
            let s = UdpSocket::bind("0.0.0.0:6301")?;
            bind_to_device(&s, &a2)?;
            let by_addr = UdpSocket::bind("10.204.0.1:6302")?;
            Ok((s, by_addr))
        })
        .unwrap()
        .unwrap();

    let on = |kind: &'static str, idx: u32| move |v: &Value| v["type"] == "change" && v["event"] == kind && v["ifindex"] == idx;
    ns.ip(&["link", "set", &a, "down"]).unwrap();
    let down = w.wait_for("down", T, on("down", first)).unwrap();
    assert_eq!(down["cause"]["comm"], "ip", "{down}");
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    w.wait_for("up", T, on("up", first)).unwrap();
    // Kernels before 6.2 refuse to rename an up interface (EBUSY): rename it while down.
    ns.ip(&["link", "set", &a, "down"]).unwrap();
    ns.ip(&["link", "set", &a, "name", &renamed]).unwrap();
    let ren = w.wait_for("renamed", T, on("renamed", first)).unwrap();
    assert_eq!(ren["old_name"], a.as_str());
    assert_eq!(ren["name"], renamed.as_str());

    let deleter = Command::new("ip").args(["-n", &ns.name, "link", "del", &renamed]).spawn().unwrap();
    let deleter_pid = deleter.id();
    assert!(deleter.wait_with_output().unwrap().status.success());
    let del = w.wait_for("deleted", T, on("deleted", first)).unwrap();
    assert_eq!(del["name"], renamed.as_str());
    assert_eq!(del["cause"]["pid"], deleter_pid, "deleting pid: {del}");
    assert_eq!(del["cause"]["request"], "RTM_DELLINK");
    let sockets = del["sockets"].as_array().unwrap();
    let has = |port: u16, binding: &str, fd: i32| {
        sockets.iter().any(|s| {
            s["local_port"] == port
                && s["binding"] == binding
                && s["owners"].as_array().unwrap().iter().any(|o| o["pid"] == std::process::id() && o["fd"] == fd)
        })
    };
    assert!(has(6301, "device", bound.0.as_raw_fd()), "device-bound socket missing at deletion: {del}");
    assert!(has(6302, "address", bound.1.as_raw_fd()), "address-bound socket missing at deletion: {del}");

    ns.ip(&["link", "add", &renamed, "type", "veth", "peer", "name", &b]).unwrap();
    let rec = w
        .wait_for("recreated", T, |v| v["type"] == "change" && v["event"] == "recreated" && v["name"] == renamed.as_str())
        .unwrap();
    assert_eq!(rec["old_ifindex"], first);
    assert_ne!(rec["ifindex"], first, "recreation must have a new ifindex");

    let status = w.interrupt().unwrap();
    assert!(status.success(), "watch exits cleanly on Ctrl-C: {status}");
    let counters = w.rest().into_iter().find(|v| v["type"] == "counters").expect("counters line on exit");
    assert_eq!(counters["counters"]["ringbuf_drops"], 0);
    assert!(counters["counters"]["link_requests"].as_u64().unwrap() >= 4, "{counters}");
    drop(bound);
}

#[test]
fn by_default_the_deletion_is_printed_first_then_the_sockets_it_had() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("sa"), unique("sb"));
    ns.veth(&a, &b, Some("10.207.0.1/24")).unwrap();
    let index = ns.ifindex(&a).unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0"]).unwrap();
    w.wait_for("ready line", T, |v| v["type"] == "ready").unwrap();
    let a2 = a.clone();
    let bound = ns
        .run(move || -> anyhow::Result<_> {
            let s = UdpSocket::bind("0.0.0.0:6311")?;
            bind_to_device(&s, &a2)?;
            Ok((s, UdpSocket::bind("10.207.0.1:6312")?))
        })
        .unwrap()
        .unwrap();
    ns.ip(&["link", "del", &a]).unwrap();
    let del = w.wait_for("deleted", T, |v| v["type"] == "change" && v["event"] == "deleted" && v["ifindex"] == index).unwrap();
    assert_eq!(del["sockets_follow"], true, "{del}");
    assert!(del["sockets"].as_array().unwrap().is_empty(), "{del}");
    // One list per burst: the deletion's sockets may be listed with the `down` before it (then
    // `also` names the deletion).
    let names_deleted = |v: &Value| v["event"] == "deleted" || v["also"].as_array().is_some_and(|a| a.iter().any(|a| a["event"] == "deleted"));
    let follow = w
        .wait_for("change_sockets", T, |v| v["type"] == "change_sockets" && v["ifindex"] == index && names_deleted(v))
        .unwrap();
    let deleted_ts = if follow["event"] == "deleted" {
        follow["change_ts_unix_ns"].clone()
    } else {
        follow["also"].as_array().unwrap().iter().find(|a| a["event"] == "deleted").unwrap()["change_ts_unix_ns"].clone()
    };
    assert_eq!(deleted_ts, del["ts_unix_ns"], "{follow}");
    let sockets = follow["sockets"].as_array().unwrap();
    for (port, binding, fd) in [(6311, "device", bound.0.as_raw_fd()), (6312, "address", bound.1.as_raw_fd())] {
        assert!(
            sockets.iter().any(|s| s["local_port"] == port && s["binding"] == binding && s["owners"].as_array().unwrap().iter().any(|o| o["fd"] == fd)),
            "{binding}-bound socket :{port} missing: {follow}"
        );
    }
    w.interrupt().unwrap();
}

#[test]
fn second_watch_run_works_after_ctrl_c() {
    require_root();
    let ns = Netns::new().unwrap();
    for _ in 0..2 {
        let mut w = Running::start(&["--netns", &ns.name, "watch", "--json"]).unwrap();
        w.wait_for("ready line", T, |v| v["type"] == "ready").unwrap();
        let (a, b) = (unique("wc"), unique("wd"));
        ns.veth(&a, &b, None).unwrap();
        w.wait_for("created", T, |v| v["event"] == "created" && v["name"] == a.as_str()).unwrap();
        assert!(w.interrupt().unwrap().success());
    }
}

#[test]
fn watch_raises_receiver_stranded_on_delete_and_after_threshold() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b, c, d) = (unique("sa"), unique("sb"), unique("sc"), unique("sd"));
    ns.veth(&a, &b, Some("10.208.0.1/24")).unwrap();
    ns.veth(&c, &d, Some("10.209.0.1/24")).unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--stranded-after", "1s"]).unwrap();
    w.wait_for("ready line", T, |v| v["type"] == "ready").unwrap();
    // A receiver bound to the device that goes; seed 003 (wildcard + IP_PKTINFO), which a
    // deletion never strands (it still receives on the other interfaces); and a healthy
    // receiver bound to another device.
    let on_a = BlockedReceiver::start(&ns, "0.0.0.0:0", false, Some(&a)).unwrap();
    let seed = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    let healthy = BlockedReceiver::start(&ns, "0.0.0.0:0", false, Some(&c)).unwrap();
    let first = ns.ifindex(&a).unwrap();
    ns.ip(&["link", "del", &a]).unwrap();
    let ev = w
        .wait_for("receiver_stranded", T, |v| v["type"] == "receiver_stranded" && v["receiver"]["tid"] == on_a.tid)
        .unwrap();
    assert_eq!(ev["phase"], "interface_change");
    assert_eq!(ev["change"]["event"], "deleted", "{ev}");
    assert_eq!(ev["change"]["ifindex"], first);
    assert_eq!(ev["receiver"]["certainty"], "exact", "{ev}");
    let late = w
        .wait_for("threshold", T, |v| v["type"] == "receiver_stranded" && v["phase"] == "threshold")
        .unwrap();
    assert_eq!(late["receiver"]["tid"], on_a.tid, "only the stranded receiver passes the threshold: {late}");
    assert!(late["receiver"]["blocked_ns"].as_u64().unwrap() >= 1_000_000_000);
    assert!(w.interrupt().unwrap().success());
    let rest = w.rest();
    for r in [&seed, &healthy] {
        assert!(
            rest.iter().all(|v| v["type"] != "receiver_stranded" || v["receiver"]["tid"] != r.tid),
            "a wildcard receiver and one on a healthy interface are not stranded: {rest:#?}"
        );
    }
    assert_eq!(seed.wake(&ns, "127.0.0.1").unwrap(), 4);
    assert_eq!(healthy.wake(&ns, "10.209.0.1").unwrap(), 4);
    healthy.close_fd();
}

/// The process has exited and waits to be reaped (`/proc/PID/stat` state `Z`): after that a
/// signal can no longer change its exit status.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"))
        .unwrap_or(true)
}

fn link_exists(ns: &Netns, name: &str) -> bool {
    ns.ip(&["link", "show", "dev", name]).is_ok()
}

#[test]
fn deleting_the_watched_netns_reports_netns_removed_once_releases_it_and_exits_nonzero() {
    require_root();
    let (watched, other) = (Netns::new().unwrap(), Netns::new().unwrap());
    let (a, b) = (unique("ga"), unique("gb"));
    // The peer lives in `other`: it disappears only when the watched netns is really destroyed.
    watched.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &other.name]).unwrap();
    let ino = watched.ino().unwrap();
    let mut w = Running::start(&["--netns", &watched.name, "watch", "--json", "--reconcile-every", "0", "--no-sockets"]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    sh(&["ip", "netns", "del", &watched.name]).unwrap();
    let removed = w.wait_for("netns_removed", T, |v| v["type"] == "netns_removed").unwrap();
    assert_eq!((removed["netns"].as_u64(), removed["netns_name"].as_str()), (Some(ino), Some(watched.name.as_str())), "{removed}");
    assert_eq!((removed["still_exists"].as_bool(), removed["held_by_ifsock"].as_bool()), (Some(true), Some(true)), "{removed}");
    assert_eq!(removed["other_holders"], serde_json::json!([]), "{removed}");
    wait_until("watch exits by itself", T, || exited(w.pid())).unwrap();
    let status = w.interrupt().unwrap();
    assert_eq!(status.code(), Some(1), "losing the watched netns is an error: {status}");
    let lines = w.rest();
    assert_eq!(lines.iter().filter(|v| v["type"] == "netns_removed").count(), 1, "netns_removed once");
    let gone: Vec<&Value> = lines.iter().filter(|v| v["type"] == "change" && v["source"] == "netns_removed").collect();
    assert!(gone.iter().any(|v| v["event"] == "deleted" && v["name"] == a.as_str()), "its veth reported deleted: {gone:?}");
    assert!(lines.iter().any(|v| v["type"] == "counters"), "counters on the way out");
    // Nothing keeps the namespace alive any more: it is destroyed and takes the veth pair along.
    wait_until("the peer in the other netns goes with the destroyed netns", T, || !link_exists(&other, &b)).unwrap();
}

#[test]
fn all_netns_reports_each_interface_of_a_destroyed_netns_deleted_and_lets_it_go() {
    require_root();
    let (doomed, other) = (Netns::new().unwrap(), Netns::new().unwrap());
    let (a, b, c, d) = (unique("ha"), unique("hb"), unique("hc"), unique("hd"));
    doomed.veth(&a, &b, None).unwrap();
    doomed.ip(&["link", "add", &c, "type", "veth", "peer", "name", &d, "netns", &other.name]).unwrap();
    let ino = doomed.ino().unwrap();
    let mut w = Running::start(&["watch", "--all-netns", "--json", "--reconcile-every", "0", "--no-sockets"]).unwrap();
    let ready = w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    assert!(ready["netns"].as_array().unwrap().iter().any(|n| n == ino), "{ready}");
    let name = doomed.name.clone();
    drop(doomed);
    let removed = w.wait_for("netns_removed", T, |v| v["type"] == "netns_removed" && v["netns"] == ino).unwrap();
    assert_eq!((removed["netns_name"].as_str(), removed["links"].as_u64()), (Some(name.as_str()), Some(4)), "lo, two ends and one end: {removed}");
    let lines = w.rest();
    let pos = lines.iter().position(|v| v["type"] == "netns_removed" && v["netns"] == ino).unwrap();
    for n in ["lo", a.as_str(), b.as_str(), c.as_str()] {
        let del = lines[..pos].iter().find(|v| v["type"] == "change" && v["netns"] == ino && v["name"] == n).unwrap_or_else(|| panic!("no deletion of {n} before netns_removed"));
        assert_eq!((del["event"].as_str(), del["source"].as_str()), (Some("deleted"), Some("netns_removed")), "{del}");
    }
    // ifsock let it go: the namespace is destroyed, and its veth's peer in `other` with it.
    let ino_other = other.ino().unwrap();
    w.wait_for("peer deleted in the other netns", T, |v| v["type"] == "change" && v["netns"] == ino_other && v["name"] == d.as_str() && v["event"] == "deleted").unwrap();
    assert!(!link_exists(&other, &d));
    assert!(w.interrupt().unwrap().success(), "with --all-netns a namespace going away is no error");
}

#[test]
fn sigterm_stops_watch_cleanly_with_final_state_and_counters() {
    require_root();
    let ns = Netns::new().unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0"]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    ns.veth(&a, &b, None).unwrap();
    w.wait_for("created", T, |v| v["event"] == "created" && v["name"] == a.as_str()).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.pid() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_until("watch exits on SIGTERM", T, || exited(w.pid())).unwrap();
    let status = w.interrupt().unwrap();
    assert_eq!(status.code(), Some(0), "a signal is the normal way to end watch: {status}");
    let lines = w.rest();
    let state = lines.iter().find(|v| v["type"] == "state").expect("state line after SIGTERM");
    assert!(state["links"].as_array().unwrap().iter().any(|l| l["name"] == a.as_str()), "{state}");
    let counters = lines.iter().find(|v| v["type"] == "counters").expect("counters line after SIGTERM");
    assert!(counters["counters"]["events"].as_u64().unwrap() >= 1, "{counters}");
}

#[test]
fn both_ends_of_each_veth_pair_in_a_burst_get_the_request_that_made_and_deleted_them() {
    require_root();
    let ns = Netns::new().unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--no-sockets"]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    let pairs: Vec<(String, String)> = (0..20).map(|_| (unique("pa"), unique("pb"))).collect();
    let batch = |lines: Vec<String>| -> u32 {
        // Removed in Drop, also when `ip -batch` fails.
        let path = TempPath::new("pbt", "batch");
        std::fs::write(&path.path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let child = Command::new("ip").args(["-n", &ns.name, "-batch", path.as_str()]).spawn().unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        pid
    };
    let maker = batch(pairs.iter().map(|(a, b)| format!("link add {a} type veth peer name {b}")).collect());
    let index: Vec<(u32, u32)> = pairs.iter().map(|(a, b)| (ns.ifindex(a).unwrap(), ns.ifindex(b).unwrap())).collect();
    let deleter = batch(pairs.iter().map(|(a, _)| format!("link del {a}")).collect());
    let (_, last) = pairs.last().unwrap();
    w.wait_for("last peer deleted", T, |v| v["type"] == "change" && v["event"] == "deleted" && v["name"] == last.as_str()).unwrap();
    let lines = w.rest();
    let find = |event: &str, name: &str| -> Value {
        lines.iter().find(|v| v["type"] == "change" && v["event"] == event && v["name"] == name).cloned().unwrap_or_else(|| panic!("no {event} for {name}"))
    };
    for ((a, b), (ia, _)) in pairs.iter().zip(&index) {
        let (ca, cb) = (find("created", a), find("created", b));
        assert_eq!(ca["cause"]["pid"], maker, "{ca}");
        assert_eq!(cb["cause"]["pid"], maker, "the peer made by the same request: {cb}");
        assert_eq!(cb["cause"]["request"], "RTM_NEWLINK");
        assert!(cb["cause"]["evidence"].as_str().unwrap().starts_with("peer of "), "{cb}");
        let (da, db) = (find("deleted", a), find("deleted", b));
        assert_eq!(da["cause"]["pid"], deleter, "{da}");
        assert_eq!(db["cause"]["pid"], deleter, "the peer deleted by the same request: {db}");
        assert_eq!(db["cause"]["evidence"], format!("peer of {ia}"), "{db}");
    }
    assert!(w.interrupt().unwrap().success());
}

#[test]
fn empty_iface_and_out_of_range_rcvbuf_are_refused_with_the_range() {
    for (args, says) in [
        (vec!["watch", "--iface", ""], "empty name"),
        (vec!["watch", "--iface", "a-name-far-too-long"], "longer than an interface name"),
        (vec!["watch", "--rcvbuf", "0"], "1 to 1073741823 bytes"),
        (vec!["watch", "--rcvbuf", "2147483648"], "1 to 1073741823 bytes"),
        (vec!["watch", "--rcvbuf", "4k"], "not a size in bytes"),
        (vec!["watch", "--sockets-inline", "--no-sockets"], "cannot be used with"),
        (vec!["watch", "--sockets-inline", "--sockets-after"], "cannot be used with"),
    ] {
        let out = ifsock(&args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn ready_reports_the_effective_rcvbuf_including_above_rmem_max() {
    require_root();
    let ns = Netns::new().unwrap();
    let read = |f: &str| -> u64 { std::fs::read_to_string(format!("/proc/sys/net/core/{f}")).unwrap().trim().parse().unwrap() };
    let (default, max) = (read("rmem_default"), read("rmem_max"));
    // SO_RCVBUF doubles the request (sk_setsockopt); above rmem_max SO_RCVBUFFORCE is used
    // instead of the kernel capping it silently.
    for (arg, want) in [(None, default), (Some(4096), 8192), (Some(max + 4096), 2 * (max + 4096))] {
        let size = arg.map(|a: u64| a.to_string());
        let mut args = vec!["--netns", ns.name.as_str(), "watch", "--json", "--reconcile-every", "0"];
        if let Some(s) = &size {
            args.extend(["--rcvbuf", s.as_str()]);
        }
        let mut w = Running::start(&args).unwrap();
        let ready = w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
        assert_eq!(ready["rcvbuf"].as_u64(), Some(want), "--rcvbuf {arg:?}: {ready}");
        // What the kernel has on watch's own subscription socket, read through a copy of it.
        let subs = subscriptions_of(w.pid());
        let real = sockopt_int(&subs[0], libc::SOL_SOCKET, libc::SO_RCVBUF).map(|b| b as u64);
        assert_eq!(real, Some(want), "SO_RCVBUF of the subscription socket itself, --rcvbuf {arg:?}");
        assert!(w.interrupt().unwrap().success());
    }
}

/// An `int` socket option of `fd`.
fn sockopt_int(fd: &impl AsRawFd, level: i32, name: i32) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for the call.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
    (rc == 0).then_some(v)
}

/// The multicast groups `fd` (a netlink socket) has joined: `NETLINK_LIST_MEMBERSHIPS`, a
/// bitmap where bit N-1 is group N.
fn memberships(fd: &impl AsRawFd) -> Vec<u32> {
    let mut bits = [0u32; 8];
    let mut len = std::mem::size_of_val(&bits) as libc::socklen_t;
    // SAFETY: bits and len are valid for the call.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_NETLINK, libc::NETLINK_LIST_MEMBERSHIPS, bits.as_mut_ptr().cast(), &mut len) };
    assert_eq!(rc, 0, "NETLINK_LIST_MEMBERSHIPS: {}", std::io::Error::last_os_error());
    (0..256u32).filter(|g| bits[(g / 32) as usize] & (1 << (g % 32)) != 0).map(|g| g + 1).collect()
}

/// The NETLINK_ROUTE sockets of process `pid` that joined multicast groups (watch's
/// subscription: its dump sockets join none), duplicated into this process with
/// `pidfd_getfd(2)`: the same open socket, so a socket option read or set here is its own.
fn subscriptions_of(pid: u32) -> Vec<std::os::fd::OwnedFd> {
    // SAFETY: plain syscall; the fd is owned below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    assert!(pidfd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    let pidfd = owned(pidfd as i32);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if !std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:[")) {
            continue;
        }
        let Ok(target) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else { continue };
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
        if fd < 0 {
            continue; // closed since the listing
        }
        let fd = owned(fd as i32);
        let route = sockopt_int(&fd, libc::SOL_SOCKET, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
            && sockopt_int(&fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::NETLINK_ROUTE);
        if route && !memberships(&fd).is_empty() {
            out.push(fd);
        }
    }
    out
}

/// Makes watch's subscription deaf: every group it joined is dropped on its own socket
/// (`NETLINK_DROP_MEMBERSHIP` through a pidfd_getfd copy), so the kernel sends it nothing
/// more and says nothing about it: the silent loss a reconcile exists for.
fn deafen(pid: u32) {
    let subs = subscriptions_of(pid);
    assert_eq!(subs.len(), 1, "one rtnetlink subscription in watch --netns");
    for fd in &subs {
        for group in memberships(fd) {
            setsockopt(fd, libc::SOL_NETLINK, libc::NETLINK_DROP_MEMBERSHIP, &group.to_ne_bytes()).unwrap();
        }
        assert_eq!(memberships(fd), Vec::<u32>::new(), "the subscription left every group");
    }
}

const IFF_UP: u64 = 1;

#[test]
fn reconcile_every_reports_a_change_the_subscription_never_delivered_and_only_with_the_option() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ra"), unique("rb"));
    ns.veth(&a, &b, None).unwrap();
    let index = ns.ifindex(&a).unwrap();
    let of_a = |v: &Value| v["type"] == "change" && v["ifindex"] == index;

    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "1s", "--no-sockets"]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    deafen(w.pid());
    let started = std::time::Instant::now();
    ns.ip(&["link", "set", &a, "down"]).unwrap();
    let late = w.wait_for("the down found by a reconcile", T, |v| of_a(v) && v["event"] == "down").unwrap();
    let took = started.elapsed();
    assert_eq!(late["source"], "reconcile", "the subscription was deaf: only a re-dump can have found it: {late}");
    assert!(w.interrupt().unwrap().success());
    let lines = w.rest();
    assert!(!lines.iter().any(|v| of_a(v) && v["source"] == "netlink"), "a notification reached the deaf subscription");
    let counters = lines.iter().find(|v| v["type"] == "counters").expect("counters on exit");
    assert!(counters["counters"]["reconcile_changes"].as_u64().unwrap() >= 1, "{counters}");

    // The same silent change without a reconcile: watch never learns it. The window is three
    // times what the reconcile above took (at least 3 s): an absence has no event to wait for.
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--no-sockets"]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    deafen(w.pid());
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    let window = (took * 3).max(Duration::from_secs(3));
    let seen = w.wait_for("no change of the deafened link", window, |v| of_a(v));
    assert!(seen.is_err(), "a change reached watch without a reconcile: {seen:?}");
    assert!(w.interrupt().unwrap().success());
    let lines = w.rest();
    let counters = lines.iter().find(|v| v["type"] == "counters").expect("counters on exit");
    assert_eq!(counters["counters"]["reconciles"], 0, "{counters}");
    // The kernel has the link up; watch's last known state still has it down.
    let kernel_up = ns.ip(&["-j", "link", "show", "dev", &a]).map(|o| String::from_utf8_lossy(&o.stdout).contains("\"UP\"")).unwrap();
    assert!(kernel_up, "ip link shows {a} up");
    let state = lines.iter().find(|v| v["type"] == "state").expect("state on exit");
    let link = state["links"].as_array().unwrap().iter().find(|l| l["ifindex"] == index).unwrap_or_else(|| panic!("{a} in {state}"));
    assert_eq!(link["flags"].as_u64().unwrap() & IFF_UP, 0, "watch never learnt of the up: {link}");
}

#[test]
fn iface_filter_prints_only_the_changes_of_that_name_current_or_previous() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b, c, d, renamed, e) = (unique("fa"), unique("fb"), unique("fc"), unique("fd"), unique("fr"), unique("fe"));
    ns.veth(&a, &b, Some("10.232.0.1/24")).unwrap();
    ns.veth(&c, &d, Some("10.232.1.1/24")).unwrap();
    let index = ns.ifindex(&a).unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--no-sockets", "--iface", &a]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    let on_a = |event: &'static str| move |v: &Value| v["type"] == "change" && v["event"] == event && v["ifindex"] == index;
    // One subscription delivers the notifications in order: another interface's change made
    // before one of `a`'s is handled (and, were it not filtered, printed) before it.
    ns.ip(&["link", "set", &c, "down"]).unwrap();
    ns.ip(&["link", "set", &a, "down"]).unwrap();
    w.wait_for("a down", T, on_a("down")).unwrap();
    ns.ip(&["link", "set", &c, "up"]).unwrap();
    ns.ip(&["addr", "add", "10.232.1.2/24", "dev", &c]).unwrap();
    ns.ip(&["link", "set", &a, "name", &renamed]).unwrap();
    // The rename is `a`'s (its previous name); what the link does under its new name is not.
    w.wait_for("renamed", T, on_a("renamed")).unwrap();
    ns.ip(&["link", "set", &renamed, "up"]).unwrap();
    ns.ip(&["link", "set", &d, "down"]).unwrap();
    // A new interface that takes the name is `a` again.
    ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &e]).unwrap();
    let new = w.wait_for("the new a", T, |v| v["type"] == "change" && v["name"] == a.as_str() && v["ifindex"] != index).unwrap();
    assert!(new["event"] == "created" || new["event"] == "recreated", "{new}");
    assert!(w.interrupt().unwrap().success());
    let changes: Vec<Value> = w.rest().into_iter().filter(|v| v["type"] == "change").collect();
    let foreign: Vec<&Value> = changes.iter().filter(|v| v["name"] != a.as_str() && v["old_name"] != a.as_str()).collect();
    assert!(foreign.is_empty(), "changes of other names printed with --iface {a}: {foreign:#?}");
    for event in ["down", "renamed"] {
        assert!(changes.iter().any(|v| v["event"] == event && v["ifindex"] == index), "{event} of {a}: {changes:#?}");
    }
}

#[test]
fn count_n_exits_zero_by_itself_after_n_changes() {
    require_root();
    let ns = Netns::new().unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--no-sockets", "--count", "2"]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    let (a, b) = (unique("ca"), unique("cb"));
    // One request, two changes: both ends of the pair created.
    ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]).unwrap();
    wait_until("watch exits by itself after 2 changes", T, || exited(w.pid())).unwrap();
    let status = w.interrupt().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    let lines = w.rest();
    let created: Vec<&Value> = lines.iter().filter(|v| v["type"] == "change").collect();
    assert_eq!(created.len(), 2, "{created:#?}");
    for n in [&a, &b] {
        assert!(created.iter().any(|v| v["event"] == "created" && v["name"] == n.as_str()), "{n} created: {created:#?}");
    }
    assert!(lines.iter().any(|v| v["type"] == "counters"), "counters printed on the way out");
}

/// The bits of the signals `pid` catches (`SigCgt` in /proc/PID/status).
fn caught(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("SigCgt:").map(|v| u64::from_str_radix(v.trim(), 16).unwrap_or(0))))
        .unwrap_or(0)
}

#[test]
fn a_second_signal_during_the_clean_up_ends_watch_at_once() {
    use std::{io::BufRead as _, os::fd::FromRawFd as _, os::unix::fs::OpenOptionsExt as _, os::unix::process::ExitStatusExt as _};
    require_root();
    let ns = Netns::new().unwrap();
    // stdout is a one-page pipe that the test stops reading after `ready` and then fills: the
    // clean-up's first line (the final state) blocks in write(2) until the process ends.
    // Close-on-exec, so that no child holds the read end: once the test drops it, a watch
    // still blocked (a failure) gets EPIPE instead of waiting forever.
    let (r, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own.
    assert!(unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 4096);
    // A second open file of the same pipe, non-blocking, to fill it without making watch's
    // own stdout non-blocking.
    let filler = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(format!("/proc/self/fd/{}", wr.as_raw_fd())).unwrap();
    let mut child = Reaped(
        Command::new(ifsock_bin())
            .args(["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0"])
            .stdout(std::process::Stdio::from(wr))
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    // SAFETY: r is ours; the File owns it from here.
    let mut reader = std::io::BufReader::new(unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(r)) });
    let mut line = String::new();
    while !line.contains("\"type\":\"ready\"") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "watch exited before ready");
    }
    let mut full = 0;
    loop {
        match (&filler).write(b"x") {
            Ok(_) => full += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    assert!(full > 0);
    let (sigint, sigterm) = (1u64 << (libc::SIGINT - 1), 1u64 << (libc::SIGTERM - 1));
    assert_ne!(caught(pid) & sigint, 0, "watch catches SIGINT while it runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    wait_until("watch cleaning up, blocked writing its final state", T, || {
        caught(pid) & (sigint | sigterm) == 0 && in_syscall(pid, &[libc::SYS_write, libc::SYS_writev])
    })
    .unwrap();
    assert!(!exited(pid), "watch is still in its clean-up");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_until("the second signal ends watch", Duration::from_secs(5), || exited(pid)).unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "ended by the second signal itself, not by finishing its clean-up: {status}");
    drop(reader);
}

/// A child process killed and reaped on drop, also when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn netns_pid_follows_the_namespace_of_that_process() {
    require_root();
    let ns = Netns::new().unwrap();
    let ino = ns.ino().unwrap();
    // `ip netns exec NS sleep 600`: a process living in the namespace.
    let resident = Reaped(Command::new("ip").args(["netns", "exec", &ns.name, "sleep", "600"]).spawn().unwrap());
    let pid = resident.0.id();
    wait_until("the resident entered the netns", T, || std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == format!("net:[{ino}]"))).unwrap();
    let target = format!("pid:{pid}");
    let mut w = Running::start(&["--netns", &target, "watch", "--json", "--reconcile-every", "0", "--no-sockets"]).unwrap();
    let ready = w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    assert_eq!(ready["netns"], serde_json::json!([ino]), "{ready}");
    let (a, b) = (unique("na"), unique("nb"));
    ns.veth(&a, &b, None).unwrap();
    let created = w.wait_for("created", T, |v| v["type"] == "change" && v["event"] == "created" && v["name"] == a.as_str()).unwrap();
    assert_eq!(created["netns"], ino, "{created}");
    assert!(w.interrupt().unwrap().success());
    drop(resident);
}

/// Seed 004's recreate done in one `ip -batch` (delete, then add the same name back): a
/// device-bound socket stays on the dead ifindex. Whether ifsock judges the deletion before or
/// after it reads the re-creation, the user gets the verdict with the next step: on the
/// `socket_stranded` record itself (the name already has a new ifindex), or on the
/// `socket_still_stranded` that follows the recreate.
#[test]
fn a_device_bound_socket_left_by_a_recreate_in_one_batch_gets_its_verdict() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("rv"), unique("rw"));
    ns.veth(&a, &b, None).unwrap();
    let old = ns.ifindex(&a).unwrap();
    let dead = ns.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    bind_to_device(&dead, &a).unwrap();
    let (port, inode) = (dead.local_addr().unwrap().port(), socket_inode(&dead).unwrap());
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0"]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    let batch = TempPath::new("rvb", "batch");
    std::fs::write(&batch.path, format!("link del {a}\nlink add {a} type veth peer name {b}\nlink set {a} up\n")).unwrap();
    ns.ip(&["-batch", batch.as_str()]).unwrap();
    let new = ns.ifindex(&a).unwrap();
    assert_ne!(old, new, "the kernel gives a recreated interface a new ifindex");
    let with_verdict = |v: &Value| {
        (v["type"] == "socket_stranded" || v["type"] == "socket_still_stranded") && v["socket"]["local_port"] == port && v["verdict"].is_string()
    };
    let rec = w.wait_for("the verdict on the socket left on the dead ifindex", T, with_verdict).unwrap();
    let verdict = rec["verdict"].as_str().unwrap_or_default();
    assert!(verdict.contains(&format!("is still bound to deleted ifindex {old} ({a}; {a} is now ifindex {new})")), "{rec}");
    assert!(verdict.ends_with(&format!("restart it, or `ifsock abort --inode {inode}`")), "{rec}");
    assert!(w.interrupt().unwrap().success());
    drop(dead);
}
