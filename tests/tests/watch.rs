//! `ifsock watch` against the real kernel: classification, order, bound sockets at deletion,
//! the pid of the process that deleted the link (syscall tracepoint evidence), veth peers,
//! namespaces that go away, SIGTERM, and refused arguments.
use std::{io::Write, net::UdpSocket, os::fd::AsRawFd, process::Command, time::Duration};

use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

#[test]
fn watch_reports_down_up_rename_delete_recreate_in_order() {
    require_root();
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
    let follow = w
        .wait_for("change_sockets", T, |v| v["type"] == "change_sockets" && v["ifindex"] == index && v["event"] == "deleted")
        .unwrap();
    assert_eq!(follow["change_ts_unix_ns"], del["ts_unix_ns"], "{follow}");
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
    // Seed 003: wildcard + IP_PKTINFO receiver; and a healthy receiver bound to another device.
    let seed = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    let healthy = BlockedReceiver::start(&ns, "0.0.0.0:0", false, Some(&c)).unwrap();
    let first = ns.ifindex(&a).unwrap();
    ns.ip(&["link", "del", &a]).unwrap();
    let ev = w
        .wait_for("receiver_stranded", T, |v| v["type"] == "receiver_stranded" && v["receiver"]["tid"] == seed.tid)
        .unwrap();
    assert_eq!(ev["phase"], "interface_change");
    assert_eq!(ev["change"]["event"], "deleted", "{ev}");
    assert_eq!(ev["change"]["ifindex"], first);
    assert_eq!(ev["receiver"]["certainty"], "exact", "{ev}");
    assert_eq!(ev["receiver"]["socket"]["pktinfo"], true);
    seed.close_fd();
    let late = w
        .wait_for("threshold", T, |v| v["type"] == "receiver_stranded" && v["phase"] == "threshold")
        .unwrap();
    assert_eq!(late["receiver"]["tid"], seed.tid, "only the stranded receiver passes the threshold: {late}");
    assert!(late["receiver"]["blocked_ns"].as_u64().unwrap() >= 1_000_000_000);
    assert!(w.interrupt().unwrap().success());
    assert!(
        w.rest().iter().all(|v| v["type"] != "receiver_stranded" || v["receiver"]["tid"] != healthy.tid),
        "a receiver on a healthy interface is not stranded"
    );
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
        let path = std::env::temp_dir().join(format!("{}.batch", unique("pbt")));
        let mut f = std::fs::File::create(&path).unwrap();
        for l in &lines {
            writeln!(f, "{l}").unwrap();
        }
        drop(f);
        let child = Command::new("ip").args(["-n", &ns.name, "-batch", path.to_str().unwrap()]).spawn().unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        let _ = std::fs::remove_file(&path);
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
        assert!(w.interrupt().unwrap().success());
    }
}
