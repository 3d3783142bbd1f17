//! The library API (`ifsock::LinkWatcher`, `ifsock::SocketHealth`) and its examples. The
//! harness is privileged (it makes namespaces and links) but the watchers under test run as
//! uid 65534 without capabilities (`setpriv`), which is the point: no root, no BPF.
//!
//! The examples are run from `target/<profile>/examples/` beside this test binary: `cargo test
//! --workspace` (and so `cargo xtask test`) builds them; alone, `cargo build -p ifsock --examples`.
use std::{
    collections::BTreeMap,
    net::UdpSocket,
    path::PathBuf,
    time::Duration,
};

use ifsock::{Health, HealthTransition, SocketHealth, SocketId};
use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// An example binary built beside this test binary (`target/debug/deps/library-…` →
/// `target/debug/examples/NAME`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples").join(name);
    assert!(path.exists(), "{} missing: build the examples (cargo build -p ifsock --examples; cargo test --workspace builds them)", path.display());
    path
}

/// `setpriv` argv running `program args` as nobody (uid/gid 65534) with every capability
/// dropped, also from the inheritable and ambient sets.
fn as_nobody(program: &std::path::Path, args: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.push(program.display().to_string());
    argv.extend(args.iter().map(|s| s.to_string()));
    argv
}

fn start(ns: &Netns, argv: &[String]) -> Daemon {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    Daemon::start(ns, &argv).unwrap()
}

/// Fails unless `pid` runs as uid 65534 with an empty effective capability set.
fn assert_unprivileged(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap().split_whitespace().next().unwrap().to_string();
    assert_eq!(field("Uid:"), "65534", "the watcher runs as nobody");
    assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), 0, "the watcher has no capability");
}

/// The next JSON line of `watch_iface`.
fn next_json(d: &mut Daemon) -> Value {
    serde_json::from_str(&d.wait_line("{", T).unwrap()).unwrap()
}

/// No IPv6 in `ns`: link-local addresses would add `address_added` lines whose timing depends
/// on DAD.
fn no_ipv6(ns: &Netns) {
    sh(&["ip", "netns", "exec", &ns.name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]).unwrap();
}

#[test]
fn link_watcher_as_nobody_reports_delete_recreate_rename_move_and_addresses_in_order() {
    require_root();
    let (ns, other) = (Netns::new().unwrap(), Netns::new().unwrap());
    no_ipv6(&ns);
    let (w, p, renamed) = (unique("lw"), unique("lp"), unique("lr"));
    let mut d = start(&ns, &as_nobody(&example("watch_iface"), &["--iface", &w, "--reconcile", "0"]));
    let ready = next_json(&mut d);
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["links"], serde_json::json!([]), "{w} does not exist yet: {ready}");
    assert_unprivileged(d.pid());

    ns.ip(&["link", "add", &w, "type", "veth", "peer", "name", &p]).unwrap();
    let first = ns.ifindex(&w).unwrap();
    ns.ip(&["addr", "add", "10.9.0.1/24", "dev", &w]).unwrap();
    ns.ip(&["link", "set", &p, "up"]).unwrap();
    ns.ip(&["link", "set", &w, "up"]).unwrap();
    ns.ip(&["addr", "del", "10.9.0.1/24", "dev", &w]).unwrap();
    ns.ip(&["link", "set", &w, "down"]).unwrap();
    ns.ip(&["link", "set", &w, "name", &renamed]).unwrap();
    ns.ip(&["link", "set", &renamed, "name", &w]).unwrap();
    ns.ip(&["link", "del", &w]).unwrap();
    ns.ip(&["link", "add", &w, "type", "veth", "peer", "name", &p]).unwrap();
    let second = ns.ifindex(&w).unwrap();
    ns.ip(&["link", "set", &w, "netns", &other.name]).unwrap();

    // (event, name, ifindex, old_ifindex, old_name, address)
    type Row = (String, String, u64, Option<u64>, Option<String>, Option<String>);
    let row = |e: &str, n: &str, i: u32, oi: Option<u32>, on: Option<&str>, a: Option<&str>| -> Row {
        (e.into(), n.into(), u64::from(i), oi.map(u64::from), on.map(Into::into), a.map(Into::into))
    };
    let want = vec![
        row("created", &w, first, None, None, None),
        row("address_added", &w, first, None, None, Some("10.9.0.1")),
        row("up", &w, first, None, None, None),
        row("carrier_up", &w, first, None, None, None),
        row("address_removed", &w, first, None, None, Some("10.9.0.1")),
        row("down", &w, first, None, None, None),
        row("carrier_down", &w, first, None, None, None),
        row("renamed", &renamed, first, None, Some(&w), None),
        row("renamed", &w, first, None, Some(&renamed), None),
        row("deleted", &w, first, None, None, None),
        row("recreated", &w, second, Some(first), None, None),
        row("moved_out", &w, second, None, None, None),
    ];
    let mut got: Vec<Row> = Vec::new();
    let mut lines = Vec::new();
    while got.len() < want.len() {
        let v = next_json(&mut d);
        assert_eq!(v["type"], "change", "{v}");
        assert_eq!(v["source"], "netlink", "live changes come from netlink: {v}");
        got.push((
            v["event"].as_str().unwrap().into(),
            v["name"].as_str().unwrap().into(),
            v["ifindex"].as_u64().unwrap(),
            v["old_ifindex"].as_u64(),
            v["old_name"].as_str().map(Into::into),
            v["address"].as_str().map(Into::into),
        ));
        lines.push(v);
    }
    assert_eq!(got, want, "every change of {w}, in order: {lines:#?}");
}

/// Stops `pid` (SIGSTOP) while `f` runs: its subscription socket is not read meanwhile, so a
/// burst larger than the receive buffer overflows it (`netlink_overrun()` sets ENOBUFS).
fn with_stopped(pid: u32, f: impl FnOnce()) {
    use nix::sys::signal::{kill, Signal};
    let p = nix::unistd::Pid::from_raw(pid as i32);
    kill(p, Signal::SIGSTOP).unwrap();
    wait_until("watcher stopped", T, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().starts_with('T'))).unwrap_or(false)
    })
    .unwrap();
    f();
    kill(p, Signal::SIGCONT).unwrap();
}

fn kernel_links(ns: &Netns) -> BTreeMap<u64, String> {
    let out = ns.ip(&["-j", "link", "show"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().iter().map(|l| (l["ifindex"].as_u64().unwrap(), l["ifname"].as_str().unwrap().to_string())).collect()
}

/// Applies one change line to a link map, as a caller of the watcher would keep its state.
fn fold(links: &mut BTreeMap<u64, String>, v: &Value) {
    let (i, name) = (v["ifindex"].as_u64().unwrap(), v["name"].as_str().unwrap().to_string());
    match v["event"].as_str().unwrap() {
        "created" | "recreated" | "moved_in" | "renamed" => {
            links.insert(i, name);
        }
        "deleted" | "moved_out" => {
            links.remove(&i);
        }
        _ => {}
    }
}

#[test]
fn link_watcher_as_nobody_resyncs_after_enobufs_to_the_kernels_links() {
    require_root();
    let ns = Netns::new().unwrap();
    let mut d = start(&ns, &as_nobody(&example("watch_iface"), &["--rcvbuf", "4096", "--reconcile", "0"]));
    let ready = next_json(&mut d);
    assert_unprivileged(d.pid());
    let mut links: BTreeMap<u64, String> =
        ready["links"].as_array().unwrap().iter().map(|l| (l["ifindex"].as_u64().unwrap(), l["name"].as_str().unwrap().to_string())).collect();
    let prefix = unique("lb");
    let pairs: Vec<String> = (0..300).map(|i| format!("link add {prefix}a{i} type veth peer name {prefix}b{i}")).collect();
    let batch = TempPath::new("ifsk", "batch");
    std::fs::write(&batch.path, pairs.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    // 600 notifications of ~1 KiB into an 8 KiB buffer nobody reads: ENOBUFS is certain.
    with_stopped(d.pid(), || {
        sh(&["ip", "-n", &ns.name, "-batch", batch.as_str()]).unwrap();
    });
    // Deleting half of them while stopped again: the resync must also find deletions.
    let dels: Vec<String> = (0..150).map(|i| format!("link del {prefix}a{i}")).collect();
    std::fs::write(&batch.path, dels.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let (m1, m2) = (unique("mk"), unique("ml"));
    let mut lines = Vec::new();
    // Reads changes until the state they describe has both markers (`present`) or neither:
    // one request makes or deletes both ends of a veth pair, reported live in the kernel's
    // order and by a resync in ifindex order.
    let mut until = |d: &mut Daemon, present: bool| {
        let has = |links: &BTreeMap<u64, String>, n: &str| links.values().any(|l| l == n);
        while !(has(&links, &m1) == present && has(&links, &m2) == present) {
            let v = next_json(d);
            fold(&mut links, &v);
            lines.push(v);
        }
    };
    ns.veth(&m1, &m2, None).unwrap();
    until(&mut d, true);
    with_stopped(d.pid(), || {
        sh(&["ip", "-n", &ns.name, "-batch", batch.as_str()]).unwrap();
    });
    ns.ip(&["link", "del", &m1]).unwrap();
    // Everything before the markers' deletion is accounted for once it is (live or by resync).
    until(&mut d, false);
    assert_eq!(links, kernel_links(&ns), "the state the changes describe equals the kernel's");
    let resync = lines.iter().filter(|v| v["source"] == "resync").count();
    assert!(resync > 0, "what the overflow dropped came back as resync changes");
    assert!(lines.iter().any(|v| v["source"] == "resync" && v["event"] == "deleted"), "a resync reported deletions too");
    eprintln!("{} changes, {resync} from resync", lines.len());
}

/// Runs `f` inside `ns` on a current-thread tokio runtime (the library judges the netns of
/// the thread that makes it; sockets made there are in it).
fn in_ns<R: Send>(ns: &Netns, f: impl AsyncFnOnce() -> R + Send) -> R {
    ns.run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f())).unwrap()
}

async fn next_transition(h: &mut SocketHealth) -> HealthTransition {
    tokio::time::timeout(T, h.recv()).await.expect("a transition within the bound").expect("the watcher runs").unwrap()
}

fn udp(bind: &str, device: Option<&str>) -> UdpSocket {
    let s = UdpSocket::bind(bind).unwrap();
    if let Some(dev) = device {
        bind_to_device(&s, dev).unwrap();
    }
    s
}

#[test]
fn socket_health_reports_each_transition_of_the_tests_own_sockets_once() {
    require_root();
    let ns = Netns::new().unwrap();
    let (h0, hp, d0, dp) = (unique("sh"), unique("sp"), unique("sd"), unique("sq"));
    ns.veth(&h0, &hp, Some("10.7.0.1/24")).unwrap();
    ns.veth(&d0, &dp, None).unwrap();
    in_ns(&ns, async || {
        let by_addr = udp("10.7.0.1:0", None);
        let by_dev = udp("0.0.0.0:0", Some(&h0));
        let on_deleted = udp("0.0.0.0:0", Some(&d0));
        let mut health = SocketHealth::new().await.unwrap();
        let mut ids: Vec<SocketId> = Vec::new();
        for s in [&by_addr, &by_dev, &on_deleted] {
            let (id, now) = health.add(s).await.unwrap();
            assert_eq!(now, Health::Healthy);
            ids.push(id);
        }
        let (a, b, c) = (ids[0], ids[1], ids[2]);
        let expect = async |h: &mut SocketHealth, id: SocketId, from: Health, to: Health| {
            let t = next_transition(h).await;
            assert_eq!((t.socket, t.from, t.to), (id, from, to), "{t:?}");
            assert_eq!(h.health(id), Some(to));
            t
        };
        ns.ip(&["addr", "del", "10.7.0.1/24", "dev", &h0]).unwrap();
        let t = expect(&mut health, a, Health::Healthy, Health::AddressGone).await;
        assert_eq!(t.address, Some("10.7.0.1".parse().unwrap()));
        assert_eq!(t.ifname.as_deref(), Some(h0.as_str()), "the interface that last held it: {t:?}");
        ns.ip(&["addr", "add", "10.7.0.1/24", "dev", &h0]).unwrap();
        expect(&mut health, a, Health::AddressGone, Health::Healthy).await;
        ns.ip(&["link", "set", &h0, "down"]).unwrap();
        let t = expect(&mut health, b, Health::Healthy, Health::DeviceDown).await;
        assert_eq!(t.cause.as_ref().map(|c| c.kind), Some(ifsock::LinkChangeKind::Down), "{t:?}");
        ns.ip(&["link", "set", &h0, "up"]).unwrap();
        expect(&mut health, b, Health::DeviceDown, Health::Healthy).await;
        let deleted = ns.ifindex(&d0).unwrap();
        ns.ip(&["link", "del", &d0]).unwrap();
        let t = expect(&mut health, c, Health::Healthy, Health::DeviceDeleted).await;
        assert_eq!((t.ifindex, t.ifname.as_deref()), (Some(deleted), Some(d0.as_str())), "{t:?}");
        // A last, distinct transition: any repeat of the ones above would have come first.
        ns.ip(&["addr", "del", "10.7.0.1/24", "dev", &h0]).unwrap();
        expect(&mut health, a, Health::Healthy, Health::AddressGone).await;
        assert_eq!(health.refresh().await.unwrap(), Vec::new(), "a fresh judgement finds nothing unreported");
        assert_eq!(health.all(), vec![(a, Health::AddressGone), (b, Health::Healthy), (c, Health::DeviceDeleted)]);
    });
}

#[test]
fn self_heal_udp_as_nobody_receives_again_after_its_address_is_restored() {
    require_root();
    let ns = Netns::new().unwrap();
    let (s0, sp) = (unique("hs"), unique("hp"));
    ns.veth(&s0, &sp, Some("10.8.0.1/24")).unwrap();
    let mut d = start(&ns, &as_nobody(&example("self_heal_udp"), &["10.8.0.1:5300"]));
    d.wait_line("bound 10.8.0.1:5300 (healthy)", T).unwrap();
    assert_unprivileged(d.pid());
    let send = || ns.run(|| UdpSocket::bind("0.0.0.0:0").unwrap().send_to(b"ping", "10.8.0.1:5300").unwrap()).unwrap();
    send();
    d.wait_line("received 4 bytes", T).unwrap();
    ns.ip(&["addr", "del", "10.8.0.1/24", "dev", &s0]).unwrap();
    d.wait_line("stranded address_gone", T).unwrap();
    ns.ip(&["addr", "add", "10.8.0.1/24", "dev", &s0]).unwrap();
    d.wait_line("rebound 10.8.0.1:5300", T).unwrap();
    send();
    d.wait_line("received 4 bytes", T).unwrap();
    d.check_running().unwrap();
}

/// The crate documentation's example, word for word (the same file is the doc's code block).
mod tunnel_example {
    include!("../../ifsock/src/api/tunnel_example.rs");
}

/// Records what the example asked of the tunnel: `Some(ifindex)` for start, `None` for stop.
struct Recorder(tokio::sync::mpsc::UnboundedSender<Option<u32>>);
impl tunnel_example::Tunnel for Recorder {
    fn start(&mut self, ifindex: u32) {
        let _ = self.0.send(Some(ifindex));
    }
    fn stop(&mut self) {
        let _ = self.0.send(None);
    }
}

#[test]
fn crate_doc_example_restarts_the_tunnel_when_wg0_is_deleted_and_recreated() {
    require_root();
    let ns = Netns::new().unwrap();
    // Inside the test's netns the name is free.
    ns.veth("wg0", "wg0peer", None).unwrap();
    let first = ns.ifindex("wg0").unwrap();
    in_ns(&ns, async || {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let supervisor = tokio::spawn(async move { tunnel_example::supervise("wg0", &mut Recorder(tx)).await });
        let mut next = async || tokio::time::timeout(T, rx.recv()).await.expect("the tunnel is told within the bound").expect("supervise runs");
        assert_eq!(next().await, Some(first), "started on the wg0 of the start-up dump");
        ns.ip(&["link", "del", "wg0"]).unwrap();
        assert_eq!(next().await, None, "stopped when wg0 was deleted");
        ns.ip(&["link", "add", "wg0", "type", "veth", "peer", "name", "wg0peer"]).unwrap();
        let second = ns.ifindex("wg0").unwrap();
        assert_ne!(second, first);
        assert_eq!(next().await, Some(second), "restarted on the recreated wg0's new ifindex");
        assert!(!supervisor.is_finished(), "supervise still runs");
        supervisor.abort();
    });
}

#[test]
fn probes_snapshot_judges_sockets_as_socket_health_does() {
    require_root();
    if !ifsock_tests::skip::needs(ifsock_tests::skip::Feature::Iterators) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (a, p) = (unique("pa"), unique("pp"));
    ns.veth(&a, &p, Some("10.6.0.1/24")).unwrap();
    in_ns(&ns, async || {
        let s = udp("10.6.0.1:0", None);
        let inode = socket_inode(&s).unwrap();
        ns.ip(&["addr", "del", "10.6.0.1/24", "dev", &a]).unwrap();
        let mut probes = ifsock::Probes::load().unwrap();
        let all = probes.sockets().await.unwrap();
        let row = all.iter().find(|r| r.inode == inode).unwrap_or_else(|| panic!("socket {inode} in the snapshot: {all:?}"));
        assert_eq!(row.health, Health::AddressGone, "{row:?}");
        assert!(row.owners.iter().any(|(pid, _, _)| *pid == std::process::id()), "owned by this test: {row:?}");
        let mut health = SocketHealth::new().await.unwrap();
        assert_eq!(health.add(&s).await.unwrap().1, Health::AddressGone, "the unprivileged judgement agrees");
    });
}

#[test]
fn link_watcher_follows_a_named_netns_from_outside_it() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("na"), unique("nb"));
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let mut w = ifsock::LinkWatcher::builder().netns(ifsock::Netns::Named(ns.name.clone())).interface(a.clone()).start().await.unwrap();
        assert_eq!(u64::from(w.netns()), ns.ino().unwrap(), "the named netns, not the test's");
        ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]).unwrap();
        let c = tokio::time::timeout(T, w.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!((c.kind, c.name.as_str(), c.ifindex), (ifsock::LinkChangeKind::Created, a.as_str(), ns.ifindex(&a).unwrap()), "{c:?}");
        let missing = ifsock::LinkWatcher::builder().netns(ifsock::Netns::Named(unique("none"))).start().await.unwrap_err();
        assert!(matches!(missing, ifsock::Error::Netns(_)), "{missing}");
    });
}

#[test]
fn probes_load_names_the_missing_capabilities() {
    require_root();
    let bin = env!("CARGO_BIN_EXE_ifsock-probes-load");
    let run = |argv: &[&str]| {
        let out = std::process::Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let nobody = as_nobody(std::path::Path::new(bin), &[]);
    let (ok, line) = run(&nobody.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok, "{line}");
    assert!(line.starts_with("error: missing capabilities: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN"), "{line}");
    // Root without two of them (dropped from the bounding set, so not regained at exec).
    let (ok, line) = run(&["setpriv", "--bounding-set=-bpf,-perfmon", "--inh-caps=-all", bin]);
    assert!(!ok, "{line}");
    assert!(line.starts_with("error: missing capabilities: CAP_BPF, CAP_PERFMON ("), "only the two dropped ones are named: {line}");
}
