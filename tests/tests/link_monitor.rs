//! Link monitoring that never silently misses a change: ENOBUFS resync under a burst, netns
//! moves, and namespaces that appear while `watch --all-netns` runs.
use std::{collections::BTreeSet, time::Duration};

use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn batch(ns: &Netns, lines: &[String]) {
    // Removed in Drop, also when `ip -batch` fails.
    let path = TempPath::new("ifsk", "batch");
    std::fs::write(&path.path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    sh(&["ip", "-n", &ns.name, "-batch", path.as_str()]).unwrap();
}

fn kernel_links(ns: &Netns) -> BTreeSet<(u64, String)> {
    let out = ns.ip(&["-j", "link", "show"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().iter().map(|l| (l["ifindex"].as_u64().unwrap(), l["ifname"].as_str().unwrap().to_string())).collect()
}

/// Stops (SIGSTOP) the watch process while `f` runs and resumes it after: its subscription
/// socket is not read meanwhile, so a burst larger than the receive buffer must overflow it
/// (`netlink_overrun()` sets ENOBUFS), whatever the scheduling.
fn with_reader_stopped(w: &Running, f: impl FnOnce()) {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(w.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    wait_until("watch stopped", T, || process_state(w.pid()) == Some('T')).unwrap();
    f();
    kill(pid, Signal::SIGCONT).unwrap();
}

/// The state letter of `/proc/PID/stat` (`T`: stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().next()?.chars().next()
}

#[test]
fn burst_with_small_rcvbuf_loses_events_and_resync_accounts_for_every_link() {
    require_root();
    let ns = Netns::new().unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--rcvbuf", "4096", "--reconcile-every", "0", "--no-sockets"]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    let prefix = unique("bu");
    let names: Vec<(String, String)> = (0..1000).map(|i| (format!("{prefix}a{i}"), format!("{prefix}b{i}"))).collect();
    // 2,000 notifications of ~1 KiB into an 8 KiB buffer nobody reads: ENOBUFS is certain.
    with_reader_stopped(&w, || batch(&ns, &names.iter().map(|(a, b)| format!("link add {a} type veth peer name {b}")).collect::<Vec<_>>()));
    // Everything before the marker is accounted for once the marker is (live or by resync).
    let (m1, m2) = (unique("mk"), unique("ml"));
    ns.veth(&m1, &m2, None).unwrap();
    w.wait_for("marker created", T, |v| v["type"] == "change" && v["event"] == "created" && v["name"] == m1.as_str()).unwrap();
    with_reader_stopped(&w, || batch(&ns, &names.iter().map(|(a, _)| format!("link del {a}")).collect::<Vec<_>>()));
    ns.ip(&["link", "del", &m1]).unwrap();
    w.wait_for("marker deleted", T, |v| v["type"] == "change" && v["event"] == "deleted" && v["name"] == m1.as_str()).unwrap();
    assert!(w.interrupt().unwrap().success());
    let lines = w.rest();

    let counters = &lines.iter().find(|v| v["type"] == "counters").expect("counters")["counters"];
    assert!(counters["enobufs"].as_u64().unwrap() >= 2, "each burst against a stopped reader overflows: {counters}");
    assert_eq!(counters["resyncs"], counters["enobufs"], "every ENOBUFS is followed by a re-dump: {counters}");
    let state = lines.iter().find(|v| v["type"] == "state").expect("state line");
    let reported: BTreeSet<(u64, String)> = state["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["ifindex"].as_u64().unwrap(), l["name"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(reported, kernel_links(&ns), "final interface set equals the kernel's");

    let changes: Vec<&Value> = lines.iter().filter(|v| v["type"] == "change").collect();
    let seen = |name: &str, event: &str| changes.iter().any(|c| c["name"] == name && c["event"] == event);
    for (a, b) in &names {
        for n in [a, b] {
            assert!(seen(n, "created"), "creation of {n} unaccounted");
            assert!(seen(n, "deleted"), "deletion of {n} unaccounted");
        }
    }
    let from_resync = changes.iter().filter(|c| c["source"] == "resync").count() as u64;
    assert!(from_resync > 0, "what the overflow dropped came from the resync");
    assert_eq!(counters["resync_changes"].as_u64(), Some(from_resync), "resync_changes counts the changes resyncs reported: {counters}");
    eprintln!("burst: {} changes, {from_resync} from resync, counters {counters}", changes.len());
}

#[test]
fn netns_move_is_classified_out_and_in() {
    require_root();
    let (ns1, ns2) = (Netns::new().unwrap(), Netns::new().unwrap());
    let (a, b) = (unique("ma"), unique("mb"));
    ns1.veth(&a, &b, None).unwrap();
    let index = ns1.ifindex(&a).unwrap();
    let mut single = Running::start(&["--netns", &ns1.name, "watch", "--json", "--reconcile-every", "0"]).unwrap();
    single.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    let mut all = Running::start(&["watch", "--all-netns", "--json", "--reconcile-every", "0", "--no-sockets"]).unwrap();
    all.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    ns1.ip(&["link", "set", &a, "netns", &ns2.name]).unwrap();
    let out = single
        .wait_for("moved_out", T, |v| v["type"] == "change" && v["name"] == a.as_str() && v["event"] == "moved_out")
        .unwrap();
    assert_eq!(out["event"], "moved_out", "{out}");
    assert_eq!(out["cause"]["comm"], "ip", "{out}");
    assert_eq!(out["ifindex"], index);
    let ino2 = ns2.ino().unwrap();
    let arrived = all
        .wait_for("moved_in", T, |v| v["type"] == "change" && v["name"] == a.as_str() && v["netns"] == ino2 && ["moved_in", "created"].contains(&v["event"].as_str().unwrap_or("")))
        .unwrap();
    assert_eq!(arrived["event"], "moved_in", "{arrived}");
    assert_eq!(arrived["from_netns"], ns1.ino().unwrap());
    assert!(all.rest().iter().any(|v| v["event"] == "moved_out" && v["name"] == a.as_str() && v["netns"] == ns1.ino().unwrap()));
}

#[test]
fn all_netns_follows_a_namespace_created_after_start() {
    require_root();
    let mut w = Running::start(&["watch", "--all-netns", "--json", "--reconcile-every", "0", "--no-sockets"]).unwrap();
    w.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    let ns = Netns::new().unwrap();
    let ino = ns.ino().unwrap();
    w.wait_for("netns_added", T, |v| v["type"] == "netns_added" && v["netns"] == ino).unwrap();
    let (a, b) = (unique("na"), unique("nb"));
    ns.veth(&a, &b, None).unwrap();
    let ev = w.wait_for("created in new netns", T, |v| v["type"] == "change" && v["name"] == a.as_str()).unwrap();
    assert_eq!(ev["netns"], ino);
    assert_eq!(ev["netns_name"], ns.name.as_str());
    assert!(ev["event"] == "created", "{ev}");
    let name = ns.name.clone();
    drop(ns);
    w.wait_for("netns_removed", T, |v| v["type"] == "netns_removed" && v["netns_name"] == name.as_str()).unwrap();
}
