//! `ifsock watch` against the real kernel: classification, order, bound sockets at deletion,
//! and the pid of the process that deleted the link (syscall tracepoint evidence).
use std::{net::UdpSocket, os::fd::AsRawFd, process::Command, time::Duration};

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
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0"]).unwrap();
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
