//! Stranded sockets as real servers hold them: unbound (epoll), dnsmasq (poll), a tokio server
//! (epoll, SO_BINDTODEVICE) and Python select/poll waiters, each in its own netns with a veth.
//! `sockets --stranded --json` must name the reason, the owner and how the owner waits, and must
//! never mark a healthy socket.
use std::time::Duration;

use ifsock_tests::*;
use serde_json::Value;

#[path = "support/agent.rs"]
mod support;
use support::{poll, Agent};

const READY: Duration = Duration::from_secs(30);
const PORT: u16 = 10053;

fn port_rows(rows: &[Value], pid: u32, port: u16) -> Vec<Value> {
    rows_of(rows, pid).into_iter().filter(|r| r["local_port"] == port).collect()
}

/// Waits until `pid` holds sockets on `port` in `ns` and one of its threads sleeps in `waits`,
/// and returns the rows then.
fn ready(ns: &Netns, d: &mut Daemon, port: u16, waits: &[i64], want: usize) -> Vec<Value> {
    let pid = d.pid();
    let mut rows = Vec::new();
    wait_until("the daemon's sockets and its wait", READY, || {
        if d.check_running().is_err() {
            return true;
        }
        // The listing is bracketed by the daemon being in its wait: listed before it got there
        // (a fast `sockets` can be done while the daemon still starts up), its rows would
        // rightly name no waiter. An idle daemon does not leave its wait in between.
        if !in_syscall(pid, waits) {
            return false;
        }
        rows = port_rows(&socket_rows(ns, false).unwrap_or_default(), pid, port);
        rows.len() >= want && in_syscall(pid, waits)
    })
    .unwrap();
    d.check_running().unwrap();
    rows
}

fn assert_healthy(rows: &[Value]) {
    for r in rows {
        assert!(r["stranded"].is_null(), "healthy socket reported stranded: {r}");
    }
}

fn assert_no_false_alarms(ns: &Netns) {
    let stranded = socket_rows(ns, true).unwrap();
    for r in &stranded {
        assert!(!r["stranded"].is_null(), "--stranded listed a healthy row: {r}");
        let addr = r["local_addr"].as_str().unwrap_or("");
        assert!(!addr.starts_with("127.") && addr != "::1", "a loopback socket reported stranded: {r}");
    }
}

#[test]
fn unbound_loses_its_address_and_its_epoll_wait_is_named() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ua"), unique("ub"));
    ns.veth(&a, &b, Some("10.78.0.1/24")).unwrap();
    let (mut d, _conf) = start_unbound(&ns, "10.78.0.1", PORT).unwrap();
    let pid = d.pid();
    let before = ready(&ns, &mut d, PORT, &EPOLL_WAITS, 2);
    assert_healthy(&before);
    assert!(before.iter().all(|r| has_waiter(r, pid, "epoll")), "unbound waits in epoll: {before:#?}");

    ns.ip(&["link", "del", &a]).unwrap();
    let rows = port_rows(&socket_rows(&ns, true).unwrap(), pid, PORT);
    for proto in ["udp", "tcp"] {
        let r = rows.iter().find(|r| r["protocol"] == proto).unwrap_or_else(|| panic!("no stranded {proto} socket of unbound in {rows:#?}"));
        assert_eq!(r["stranded"]["reason"], "address_gone", "{r}");
        assert_eq!(r["stranded"]["address"], "10.78.0.1", "{r}");
        assert!(r["owners"].as_array().unwrap().iter().any(|o| o["comm"] == "unbound"), "{r}");
        let w = r["waiters"].as_array().unwrap().iter().find(|w| w["via"] == "epoll").unwrap_or_else(|| panic!("no epoll waiter: {r}"));
        assert_eq!(w["pid"], pid);
        assert!(w["syscall"].as_str().unwrap().starts_with("epoll_"), "{w}");
        assert!(w["epfd"].is_u64() && w["fd"].is_u64(), "{w}");
        let own_fd = r["owners"][0]["fd"].clone();
        assert_eq!(w["fd"], own_fd, "the registered fd is the socket's fd: {r}");
    }
    assert_no_false_alarms(&ns);
}

#[test]
fn dnsmasq_bound_to_an_interface_loses_its_address_and_its_poll_is_named() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("da"), unique("db"));
    ns.veth(&a, &b, Some("10.79.0.1/24")).unwrap();
    let mut d = start_dnsmasq(&ns, Some(&a), PORT).unwrap();
    let pid = d.pid();
    // --interface adds lo: sockets on 10.79.0.1 and 127.0.0.1, UDP and TCP each.
    let before = ready(&ns, &mut d, PORT, &POLL_WAITS, 4);
    assert_healthy(&before);

    ns.ip(&["link", "del", &a]).unwrap();
    let all = port_rows(&socket_rows(&ns, false).unwrap(), pid, PORT);
    let stranded = port_rows(&socket_rows(&ns, true).unwrap(), pid, PORT);
    for proto in ["udp", "tcp"] {
        let r = stranded
            .iter()
            .find(|r| r["protocol"] == proto && r["local_addr"] == "10.79.0.1")
            .unwrap_or_else(|| panic!("no stranded {proto} socket of dnsmasq on 10.79.0.1 in {stranded:#?}"));
        assert_eq!(r["stranded"]["reason"], "address_gone", "{r}");
        assert!(r["owners"].as_array().unwrap().iter().any(|o| o["comm"] == "dnsmasq"), "{r}");
        let w = r["waiters"].as_array().unwrap().iter().find(|w| w["via"] == "poll").unwrap_or_else(|| panic!("no poll waiter: {r}"));
        assert_eq!(w["fd"], r["owners"][0]["fd"], "{r}");
    }
    let lo: Vec<&Value> = all.iter().filter(|r| r["local_addr"] == "127.0.0.1").collect();
    assert!(!lo.is_empty(), "dnsmasq's loopback sockets: {all:#?}");
    for r in lo {
        assert!(r["stranded"].is_null(), "loopback socket stranded: {r}");
        assert!(has_waiter(r, pid, "poll"), "the same poll also waits on lo: {r}");
    }
    assert_no_false_alarms(&ns);
}

#[test]
fn dnsmasq_wildcard_sockets_are_not_marked_by_a_snapshot_after_deletion() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("wa"), unique("wb"));
    ns.veth(&a, &b, Some("10.80.0.1/24")).unwrap();
    let mut d = start_dnsmasq(&ns, None, PORT).unwrap();
    let pid = d.pid();
    let before = ready(&ns, &mut d, PORT, &POLL_WAITS, 2);
    assert!(before.iter().any(|r| r["protocol"] == "udp" && r["pktinfo"] == true), "wildcard IP_PKTINFO socket: {before:#?}");

    ns.ip(&["link", "del", &a]).unwrap();
    let rows = port_rows(&socket_rows(&ns, false).unwrap(), pid, PORT);
    let wild: Vec<&Value> = rows.iter().filter(|r| r["binding"] == "wildcard").collect();
    assert!(!wild.is_empty(), "{rows:#?}");
    for r in wild {
        assert!(r["stranded"].is_null(), "a snapshot alone never guesses interface_deleted: {r}");
        assert!(has_waiter(r, pid, "poll"), "{r}");
    }
    assert!(port_rows(&socket_rows(&ns, true).unwrap(), pid, PORT).is_empty());
}

#[test]
fn tokio_server_bound_to_a_device_is_stranded_while_it_is_down_and_healthy_again_when_up() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    ns.veth(&a, &b, Some("10.81.0.1/24")).unwrap();
    let bin = env!("CARGO_BIN_EXE_tokio-udp-server");
    let mut d = Daemon::start(&ns, &[bin, &format!("0.0.0.0:{PORT}"), &a, "4"]).unwrap();
    let pid = d.pid();
    let line = d.wait_line("ready", READY).unwrap();
    let fd: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let before = ready(&ns, &mut d, PORT, &EPOLL_WAITS, 1);
    assert_healthy(&before);
    assert_eq!(before[0]["binding"], "device", "{before:#?}");

    ns.ip(&["link", "set", &a, "down"]).unwrap();
    let rows = port_rows(&socket_rows(&ns, true).unwrap(), pid, PORT);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    assert_eq!(r["stranded"]["reason"], "device_down", "{r}");
    assert_eq!(r["stranded"]["ifname"], a.as_str(), "{r}");
    assert_eq!(r["stranded"]["ifindex"], ns.ifindex(&a).unwrap(), "{r}");
    let epoll: Vec<&Value> = r["waiters"].as_array().unwrap().iter().filter(|w| w["via"] == "epoll").collect();
    assert_eq!(epoll.len(), 1, "one tokio driver thread waits in epoll, workers park on futexes: {r}");
    assert_eq!(epoll[0]["fd"], fd, "{r}");

    ns.ip(&["link", "set", &a, "up"]).unwrap();
    let rows = port_rows(&socket_rows(&ns, false).unwrap(), pid, PORT);
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["stranded"].is_null(), "up again is healthy: {}", rows[0]);
    assert!(port_rows(&socket_rows(&ns, true).unwrap(), pid, PORT).is_empty());
}

const PY_SELECT: &str = r#"
import select, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other.bind(("127.0.0.1", 0))
print("ready", s.fileno(), other.fileno(), flush=True)
if sys.argv[3] == "select":
    select.select([other, s], [], [], 600)
else:
    p = select.poll()
    p.register(other.fileno(), select.POLLIN)
    p.register(s.fileno(), select.POLLIN)
    p.poll(600000)
"#;

fn python_waiter_is_named(kind: &str, waits: &[i64]) {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("pa"), unique("pb"));
    ns.veth(&a, &b, Some("10.82.0.1/24")).unwrap();
    let port = PORT.to_string();
    let mut d = Daemon::start(&ns, &["python3", "-c", PY_SELECT, "10.82.0.1", &port, kind]).unwrap();
    let pid = d.pid();
    let line = d.wait_line("ready", READY).unwrap();
    let fds: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
    wait_until("python in its wait", READY, || in_syscall(pid, waits)).unwrap();
    let rows = rows_of(&socket_rows(&ns, false).unwrap(), pid);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for (i, fd) in fds.iter().enumerate() {
        let r = rows.iter().find(|r| r["owners"][0]["fd"] == *fd).unwrap_or_else(|| panic!("fd {fd} not in {rows:#?}"));
        let w = r["waiters"].as_array().unwrap();
        assert_eq!(w.len(), 1, "{r}");
        assert_eq!(w[0]["via"], kind, "{r}");
        assert_eq!(w[0]["fd"], *fd, "{r}");
        assert_eq!(w[0]["pid"], pid);
        assert!(w[0]["epfd"].is_null());
        assert!(r["stranded"].is_null(), "{r}");
        if i == 0 {
            assert_eq!(r["local_port"], PORT);
        }
    }
    ns.ip(&["addr", "del", "10.82.0.1/24", "dev", &a]).unwrap();
    let rows = rows_of(&socket_rows(&ns, true).unwrap(), pid);
    assert_eq!(rows.len(), 1, "only the socket on the removed address: {rows:#?}");
    assert_eq!(rows[0]["stranded"]["reason"], "address_gone");
    assert_eq!(rows[0]["waiters"][0]["via"], kind);
}

#[test]
fn python_select_waiter_is_named_with_its_fd() {
    python_waiter_is_named("select", &SELECT_WAITS);
}

#[test]
fn python_poll_waiter_is_named_with_its_fd() {
    python_waiter_is_named("poll", &POLL_WAITS);
}

#[test]
fn healthy_sockets_on_a_live_interface_are_never_stranded() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ha"), unique("hb"));
    ns.veth(&a, &b, Some("10.83.0.1/24")).unwrap();
    ns.ip(&["addr", "add", "fd83::1/64", "dev", &a, "nodad"]).unwrap();
    let a2 = a.clone();
    let socks = ns
        .run(move || -> anyhow::Result<_> {
            let by_addr = std::net::UdpSocket::bind("10.83.0.1:0")?;
            let by_dev = std::net::UdpSocket::bind("0.0.0.0:0")?;
            bind_to_device(&by_dev, &a2)?;
            let wild = std::net::UdpSocket::bind("0.0.0.0:0")?;
            set_pktinfo(&wild)?;
            let v6 = std::net::UdpSocket::bind("[fd83::1]:0")?;
            let bcast = std::net::UdpSocket::bind("10.83.0.255:0")?;
            let lo = std::net::UdpSocket::bind("127.0.0.53:0")?;
            let tcp = std::net::TcpListener::bind("10.83.0.1:0")?;
            Ok((by_addr, by_dev, wild, v6, bcast, lo, tcp))
        })
        .unwrap()
        .unwrap();
    let all = rows_of(&socket_rows(&ns, false).unwrap(), std::process::id());
    assert_eq!(all.len(), 7, "{all:#?}");
    assert_healthy(&all);
    assert!(socket_rows(&ns, true).unwrap().is_empty(), "nothing is stranded");
    // The table form agrees: an empty --stranded result says what was searched, not a bare header.
    let out = ifsock(&["--netns", &ns.name, "sockets", "--stranded"]).unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim_end(), format!("no sockets found in netns {} ({}) (filters: --stranded)", ns.name, ns.ino().unwrap()), "{text}");
    drop(socks);
}

const PY_NESTED_EPOLL: &str = r#"
import select, socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
inner = select.epoll()
inner.register(s.fileno(), select.EPOLLIN)
outer = select.epoll()
outer.register(inner.fileno(), select.EPOLLIN)
for _ in range(3):
    threading.Thread(target=lambda: outer.poll(600), daemon=True).start()
print("ready", s.fileno(), outer.fileno(), flush=True)
outer.poll(600)
"#;

/// The threads of `pid` that the kernel shows asleep in an epoll wait
/// (`/proc/PID/task/TID/syscall`, first field).
fn epoll_tids(pid: u32) -> std::collections::HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|t| {
            t.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("syscall"))
                        .ok()
                        .and_then(|l| l.split_whitespace().next()?.parse::<i64>().ok())
                        .is_some_and(|nr| EPOLL_WAITS.contains(&nr))
                })
                .filter_map(|t| t.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nested_epoll_shared_by_threads_names_every_waiting_thread() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("na"), unique("nb"));
    ns.veth(&a, &b, Some("10.84.0.1/24")).unwrap();
    let port = PORT.to_string();
    let mut d = Daemon::start(&ns, &["python3", "-c", PY_NESTED_EPOLL, "10.84.0.1", &port]).unwrap();
    let pid = d.pid();
    let line = d.wait_line("ready", READY).unwrap();
    let fds: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
    let (sock_fd, outer_fd) = (fds[0], fds[1]);
    wait_until("four threads in epoll_wait on the outer instance", READY, || epoll_tids(pid).len() == 4).unwrap();
    let rows = rows_of(&socket_rows(&ns, false).unwrap(), pid);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let w = rows[0]["waiters"].as_array().unwrap();
    assert_eq!(w.len(), 4, "every thread sharing the epoll fd: {}", rows[0]);
    let tids: std::collections::HashSet<u64> = w.iter().map(|w| w["tid"].as_u64().unwrap()).collect();
    assert_eq!(tids, epoll_tids(pid), "each of the four threads the kernel shows in epoll_wait, once: {}", rows[0]);
    for w in w {
        assert_eq!(w["via"], "epoll", "{w}");
        assert_eq!(w["epfd"], outer_fd, "the fd the thread waits in: {w}");
        assert_eq!(w["fd"], sock_fd, "the socket's fd in the inner instance: {w}");
    }
}

/// A poll whose `pollfd` array was made unreadable (PROT_NONE) while the thread waits: the kernel has its own copy
/// and keeps waiting. The socket's wait queue still names it exactly; the `/proc` fallback's
/// `process_vm_readv` fails (EFAULT), and it must still report the waiter, as `poll` with
/// `fds: null` and the reason, on the sockets its process holds.
#[test]
fn unreadable_poll_set_is_reported_with_a_reason_not_dropped() {
    require_root();
    let ns = Netns::new().unwrap();
    let sock = ns.run(|| std::net::UdpSocket::bind("127.0.0.1:0")).unwrap().unwrap();
    let port = sock.local_addr().unwrap().port();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: an anonymous private page, protected below while the poller waits on its own copy.
    let page = unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    assert_ne!(page, libc::MAP_FAILED);
    let pfd = page.cast::<libc::pollfd>();
    // SAFETY: page is a writable mapping of 4096 bytes.
    unsafe { pfd.write(libc::pollfd { fd, events: libc::POLLIN, revents: 0 }) };
    let addr = page as usize;
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let poller = std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
        // SAFETY: a valid pollfd array at call time; the kernel copies it at entry.
        unsafe { libc::poll(addr as *mut libc::pollfd, 1, 60_000) }
    });
    let tid = tid_rx.recv().unwrap();
    wait_until("the poller in poll", READY, || {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).is_ok_and(|l| l.starts_with(&format!("{} ", libc::SYS_poll)))
    })
    .unwrap();
    // SAFETY: nothing else uses the page; the poller's kernel copy is unaffected. PROT_NONE rather
    // than munmap keeps the address reserved, so no later mapping makes it readable again.
    assert_eq!(unsafe { libc::mprotect(page, 4096, libc::PROT_NONE) }, 0);

    // The socket's wait queue names the poller whatever its memory holds.
    let rows = rows_of(&socket_rows(&ns, false).unwrap(), std::process::id());
    let row = rows.iter().find(|r| r["local_port"] == port).unwrap_or_else(|| panic!("{rows:#?}"));
    let w = row["waiters"].as_array().unwrap().iter().find(|w| w["tid"] == tid).unwrap_or_else(|| panic!("poller dropped: {row}"));
    assert_eq!((w["via"].as_str(), w["source"].as_str(), w["fd"].as_i64()), (Some("poll"), Some("wait_queue"), Some(fd as i64)), "{w}");
    // The /proc fallback reads the set from the task's memory and cannot.
    let out = std::process::Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "sockets", "--json"])
        .env("IFSOCK_WAITER_SOURCE", "proc")
        .output()
        .unwrap();
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let row = rows.iter().find(|r| r["local_port"] == port).unwrap_or_else(|| panic!("{rows:#?}"));
    let w = row["waiters"].as_array().unwrap().iter().find(|w| w["tid"] == tid).unwrap_or_else(|| panic!("poller dropped: {row}"));
    assert_eq!(w["via"], "poll", "{w}");
    assert_eq!(w["source"], "proc", "{w}");
    assert!(w.get("fds").is_some_and(Value::is_null), "fds: null for an unreadable set: {w}");
    assert!(w["reason"].as_str().is_some_and(|r| r.contains("EFAULT")), "{w}");
    assert!(w["fd"].is_null(), "{w}");

    ns.run(|| std::net::UdpSocket::bind("127.0.0.1:0")?.send_to(b"wake", ("127.0.0.1", port))).unwrap().unwrap();
    assert_eq!(poller.join().unwrap(), -1, "poll fails (EFAULT) writing revents to the protected array");
    // SAFETY: the page is ours and unused now.
    unsafe { libc::munmap(page, 4096) };
}

/// How long a `watch` event may take to appear (a failure bound, not a delay).
const EVENT: Duration = Duration::from_secs(20);

/// Starts `watch --json` in `ns` and waits for its `ready` line.
fn watch(ns: &Netns) -> Running {
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0"]).unwrap();
    w.wait_for("ready line", EVENT, |v| v["type"] == "ready").unwrap();
    w
}

/// Waits until `w` printed `kind` records for sockets of `pid` on `port` of every protocol in
/// `protos`; returns them (the first per protocol).
fn health_events(w: &mut Running, kind: &str, pid: u32, port: u16, protos: &[&str]) -> Vec<Value> {
    let mut got: Vec<Value> = Vec::new();
    w.wait_for(kind, EVENT, |v| {
        let s = &v["socket"];
        let ours = v["type"] == kind && s["local_port"] == port && s["owners"].as_array().is_some_and(|o| o.iter().any(|o| o["pid"] == pid));
        if ours && !got.iter().any(|g| g["socket"]["protocol"] == s["protocol"]) {
            got.push(v.clone());
        }
        protos.iter().all(|p| got.iter().any(|g| g["socket"]["protocol"] == *p))
    })
    .unwrap();
    got.retain(|g| protos.iter().any(|p| g["socket"]["protocol"] == *p));
    got
}

#[test]
fn watch_and_hung_name_unbounds_stranded_sockets_and_epoll_loop_but_not_a_healthy_neighbour() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ua"), unique("ub"));
    let (c, d2) = (unique("uc"), unique("ud"));
    ns.veth(&a, &b, Some("10.86.0.1/24")).unwrap();
    ns.veth(&c, &d2, Some("10.87.0.1/24")).unwrap();
    // A healthy socket on the other, live interface of the same netns.
    let healthy = ns.run(|| std::net::UdpSocket::bind("10.87.0.1:0")).unwrap().unwrap();
    let healthy_port = healthy.local_addr().unwrap().port();
    let (mut d, _conf) = start_unbound(&ns, "10.86.0.1", PORT).unwrap();
    let pid = d.pid();
    ready(&ns, &mut d, PORT, &EPOLL_WAITS, 2);
    let mut w = watch(&ns);

    ns.ip(&["link", "del", &a]).unwrap();
    let events = health_events(&mut w, "socket_stranded", pid, PORT, &["udp", "tcp"]);
    for e in &events {
        assert_eq!(e["reason"], "address_gone", "{e}");
        assert_eq!(e["address"], "10.86.0.1", "{e}");
        assert_eq!(e["netns_name"], ns.name.as_str(), "{e}");
        assert!(["deleted", "address_removed"].contains(&e["cause"].as_str().unwrap_or("")), "the change's cause: {e}");
        assert_eq!(e["socket"]["stranded"]["reason"], "address_gone", "{e}");
        assert!(e["socket"]["owners"].as_array().unwrap().iter().any(|o| o["comm"] == "unbound"), "{e}");
        let waiter = e["waiters"].as_array().unwrap().iter().find(|w| w["via"] == "epoll").unwrap_or_else(|| panic!("no epoll waiter: {e}"));
        assert_eq!(waiter["pid"], pid, "{e}");
        assert_eq!(waiter["fd"], e["socket"]["owners"][0]["fd"], "{e}");
    }
    // The change line comes first, in the same tick.
    let seen = w.rest();
    let first_health = seen.iter().position(|v| v["type"] == "socket_stranded").unwrap();
    assert!(seen[..first_health].iter().any(|v| v["type"] == "change"), "change before socket_stranded: {seen:#?}");

    // hung: unbound's event loop, apart from receivers.
    let rows = ifsock_json(&["--netns", &ns.name, "hung", "--json"]).unwrap();
    let loops: Vec<&Value> = rows.iter().filter(|r| r["type"] == "event_loop" && r["pid"] == pid).collect();
    assert!(!loops.is_empty(), "hung lists unbound's event loop: {rows:#?}");
    for l in &loops {
        assert_eq!(l["via"], "epoll", "{l}");
        assert!(l["syscall"].as_str().unwrap().starts_with("epoll_"), "{l}");
        assert!(l["epfd"].is_u64(), "{l}");
        assert_eq!(l["stranded"]["reason"], "address_gone", "{l}");
        assert_eq!(l["local_port"], PORT, "{l}");
    }
    let table = ifsock(&["--netns", &ns.name, "hung"]).unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("event loops waiting on stranded sockets") && text.contains("epoll:epoll_"), "{text}");

    assert!(w.interrupt().unwrap().success());
    let all = w.rest();
    for v in all.iter().filter(|v| v["type"] == "socket_stranded") {
        assert_ne!(v["socket"]["local_port"], healthy_port, "the healthy socket on the live interface is never stranded: {v}");
        assert_ne!(v["socket"]["local_addr"], "10.87.0.1", "{v}");
    }
    drop(healthy);
}

/// The false alarm of issue 27: an unrelated veth created and deleted beside dnsmasq in its
/// default mode (wildcard + IP_PKTINFO) and in its `-i` mode strands none of dnsmasq's sockets
/// in `sockets`, `watch`, `hung`, the agent's journal or its `ifsock_stranded_sockets` gauge. A
/// test-owned socket bound (SO_BINDTODEVICE) to the deleted veth is the control: every view
/// must report it, and only it, which also tells when each view has judged the deletion.
#[test]
fn an_unrelated_veth_deleted_beside_dnsmasq_strands_nothing_anywhere() {
    require_root();
    let agent = Agent::start(&[]).unwrap();
    let ns = Netns::new().unwrap();
    agent.wait_record("netns_added", |r| r["type"] == "netns_added" && r["netns_name"] == ns.name.as_str()).unwrap();
    let (a, b) = (unique("fa"), unique("fb"));
    ns.veth(&a, &b, Some("10.93.0.1/24")).unwrap();
    let mut wild = start_dnsmasq(&ns, None, PORT).unwrap();
    let mut bound = start_dnsmasq(&ns, Some(&a), PORT + 1).unwrap();
    ready(&ns, &mut wild, PORT, &POLL_WAITS, 2);
    ready(&ns, &mut bound, PORT + 1, &POLL_WAITS, 2);
    let pids = [wild.pid(), bound.pid()];
    assert!(rows_of(&socket_rows(&ns, false).unwrap(), pids[0]).iter().any(|r| r["pktinfo"] == true), "dnsmasq's default mode uses IP_PKTINFO");
    let mut w = watch(&ns);

    let (x, y) = (unique("fx"), unique("fy"));
    ns.veth(&x, &y, None).unwrap();
    agent.wait_record("the unrelated veth's creation", |r| r["type"] == "change" && r["event"] == "created" && r["name"] == x.as_str()).unwrap();
    let control = ns.run(|| std::net::UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    bind_to_device(&control, &x).unwrap();
    let control_port = control.local_addr().unwrap().port();
    // A snapshot of the agent saw the control on the veth, so the name the kernel forgets on
    // deletion is known even if the next snapshot sees the link gone before the deletion
    // record. (A change makes the agent take a snapshot: the peer going down.)
    ns.ip(&["link", "set", &y, "down"]).unwrap();
    let seen = format!("ifsock_sockets{{netns=\"{}\",ifname=\"{x}\",binding=\"device\",protocol=\"udp\"}}", ns.name);
    assert_eq!(agent.wait_sample(&seen).unwrap(), 1.0);
    ns.ip(&["link", "del", &x]).unwrap();

    // The control is `device_down` once the deletion takes the veth down, then `device_deleted`.
    let is_control = |v: &Value| v["type"] == "socket_stranded" && v["socket"]["local_port"] == control_port && v["reason"] == "device_deleted";
    let e = w.wait_for("the control's socket_stranded", EVENT, is_control).unwrap();
    assert_eq!(e["ifname"], x.as_str(), "the deleted device is named: {e}");
    let rec = agent.wait_record("the control's socket_stranded", is_control).unwrap();
    assert_eq!(rec["ifname"], x.as_str(), "{rec}");
    let gauge = format!("ifsock_stranded_sockets{{netns=\"{}\",", ns.name);
    poll("the control in the gauge", Duration::from_secs(30), || {
        agent.metrics().is_ok_and(|m| m.lines().any(|l| l.starts_with(&gauge) && l.contains("reason=\"device_deleted\"")))
    })
    .unwrap();

    let ours = |v: &Value| {
        let owners = v["socket"]["owners"].as_array().or(v["owners"].as_array());
        owners.is_some_and(|o| o.iter().any(|o| pids.contains(&o["pid"].as_u64().unwrap_or(0).try_into().unwrap_or(0))))
            || pids.iter().any(|&p| v["pid"] == p)
    };
    let m = agent.metrics().unwrap();
    let total: f64 = m.lines().filter(|l| l.starts_with(&gauge)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    assert_eq!(total, 1.0, "the gauge counts the control only: {m}");
    let journal = agent.journal_records();
    assert!(!journal.iter().any(|r| r["type"] == "socket_stranded" && ours(r)), "the agent marked dnsmasq stranded: {journal:#?}");
    let stranded = socket_rows(&ns, true).unwrap();
    assert_eq!(stranded.iter().map(|r| r["local_port"].clone()).collect::<Vec<_>>(), vec![Value::from(control_port)], "sockets --stranded: {stranded:#?}");
    let hung = ifsock_json(&["--netns", &ns.name, "hung", "--json"]).unwrap();
    assert!(!hung.iter().any(|v| ours(v) && !v["stranded"].is_null() && v["stranded"] != false), "hung: {hung:#?}");
    assert!(w.interrupt().unwrap().success());
    let all = w.rest();
    assert!(!all.iter().any(|v| v["type"] == "socket_stranded" && ours(v)), "watch marked dnsmasq stranded: {all:#?}");
    wild.check_running().unwrap();
    bound.check_running().unwrap();
}

/// Seed 004's incident: unbound (bound to the address), dnsmasq `-i` and a server bound with
/// SO_BINDTODEVICE (a socket of this test) share a netns; the veth is deleted and recreated with
/// the same name and address. `watch` says unbound and dnsmasq recovered and the device-bound
/// socket is still stranded, with the hint; `sockets --iface NAME`, `sockets --ifindex OLD` and
/// `abort --stranded --iface NAME --dry-run` each select that socket; after a rename,
/// `journal --iface OLDNAME` shows the later events.
#[test]
fn recreate_with_the_same_name_names_the_one_socket_still_stranded_and_every_selector_finds_it() {
    require_root();
    let agent = Agent::start(&[]).unwrap();
    let journal = agent.journal.0.to_string_lossy().into_owned();
    let ns = Netns::new().unwrap();
    agent.wait_record("netns_added", |r| r["type"] == "netns_added" && r["netns_name"] == ns.name.as_str()).unwrap();
    let (a, b) = (unique("ra"), unique("rb"));
    ns.veth(&a, &b, Some("10.94.0.1/24")).unwrap();
    let old = ns.ifindex(&a).unwrap();
    let (mut unbound, _conf) = start_unbound(&ns, "10.94.0.1", PORT).unwrap();
    let mut dnsmasq = start_dnsmasq(&ns, Some(&a), PORT + 1).unwrap();
    ready(&ns, &mut unbound, PORT, &EPOLL_WAITS, 2);
    ready(&ns, &mut dnsmasq, PORT + 1, &POLL_WAITS, 2);
    let (upid, dpid) = (unbound.pid(), dnsmasq.pid());
    let dead = ns.run(|| std::net::UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    bind_to_device(&dead, &a).unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    let dead_inode = socket_inode(&dead).unwrap();
    let mut w = watch(&ns);

    ns.ip(&["link", "del", &a]).unwrap();
    w.wait_for("the device-bound socket stranded", EVENT, |v| v["type"] == "socket_stranded" && v["socket"]["local_port"] == dead_port).unwrap();
    agent.wait_record("the deletion", |r| r["type"] == "change" && r["event"] == "deleted" && r["name"] == a.as_str()).unwrap();
    agent.wait_record("the agent's socket_stranded", |r| r["type"] == "socket_stranded" && r["socket"]["local_port"] == dead_port).unwrap();
    ns.veth(&a, &b, Some("10.94.0.1/24")).unwrap();
    let new = ns.ifindex(&a).unwrap();
    assert_ne!(old, new, "the kernel gives a recreated interface a new ifindex");

    // Two recovered (unbound, dnsmasq: their address is back), one still stranded.
    let owned_by = |v: &Value, pid: u32| v["socket"]["owners"].as_array().is_some_and(|o| o.iter().any(|o| o["pid"] == pid));
    let (mut recovered, mut still): (Vec<u32>, Option<Value>) = (Vec::new(), None);
    w.wait_for("two recovered and one still stranded", EVENT, |v| {
        if v["type"] == "socket_recovered" {
            for pid in [upid, dpid] {
                if owned_by(v, pid) && !recovered.contains(&pid) {
                    recovered.push(pid);
                }
            }
        }
        if v["type"] == "socket_still_stranded" && v["socket"]["local_port"] == dead_port {
            still = Some(v.clone());
        }
        recovered.len() == 2 && still.is_some()
    })
    .unwrap();
    let still = still.unwrap();
    assert_eq!((still["reason"].as_str(), still["ifindex"].as_u64(), still["ifname"].as_str(), still["now_ifindex"].as_u64()), (Some("device_deleted"), Some(u64::from(old)), Some(a.as_str()), Some(u64::from(new))), "{still}");
    let verdict = still["verdict"].as_str().unwrap_or_default();
    assert!(verdict.contains(&format!("is still bound to deleted ifindex {old} ({a}; {a} is now ifindex {new})")), "{verdict}");
    assert!(verdict.ends_with(&format!("restart it, or `ifsock abort --inode {dead_inode}`")), "{verdict}");
    assert!(w.interrupt().unwrap().success());
    let all = w.rest();
    assert!(!all.iter().any(|v| v["type"] == "socket_still_stranded" && (owned_by(v, upid) || owned_by(v, dpid))), "only the dead one: {all:#?}");

    // The agent's journal says the same, and `journal` prints the verdict.
    let rec = agent.wait_record("the agent's socket_still_stranded", |r| r["type"] == "socket_still_stranded" && r["socket"]["local_port"] == dead_port).unwrap();
    assert!(rec["verdict"].as_str().is_some_and(|v| v.contains(&format!("is still bound to deleted ifindex {old} ({a}; {a} is now ifindex {new})"))), "{rec}");
    let text = ifsock(&["journal", "--journal", &journal, "--iface", &a]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().any(|l| l.contains("socket_still_stranded") && l.contains(&format!("ifsock abort --inode {dead_inode}"))), "{text}");

    // Every selector finds the dead one, named.
    let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--json", "--iface", &a, "--journal", &journal]).unwrap();
    let row = rows.iter().find(|r| r["local_port"] == dead_port).unwrap_or_else(|| panic!("--iface {a} leaves out the dead socket: {rows:#?}"));
    assert_eq!((row["stranded"]["reason"].as_str(), row["stranded"]["ifname"].as_str(), row["stranded"]["now_ifindex"].as_u64()), (Some("device_deleted"), Some(a.as_str()), Some(u64::from(new))), "{row}");
    assert!(rows.iter().any(|r| r["local_port"] == PORT && rows_of(std::slice::from_ref(r), upid).len() == 1), "the live interface's sockets stay listed: {rows:#?}");
    let out = ifsock(&["--netns", &ns.name, "sockets", "--json", "--ifindex", &old.to_string(), "--journal", &journal]).unwrap();
    assert!(out.status.success(), "--ifindex {old}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("ifindex {old} is not an interface")), "a note: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.iter().map(|r| r["local_port"].clone()).collect::<Vec<_>>(), vec![Value::from(dead_port)], "{rows:#?}");
    let table = ifsock(&["--netns", &ns.name, "sockets", "--stranded", "--journal", &journal]).unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(&format!("{a} (deleted ifindex {old}; {a} is now ifindex {new})")), "{text}");
    let dry = ifsock_json(&["--netns", &ns.name, "abort", "--stranded", "--iface", &a, "--dry-run", "--json", "--journal", &journal]).unwrap();
    let selected: Vec<u64> = dry[0]["sockets"].as_array().unwrap().iter().filter_map(|s| s["inode"].as_u64()).collect();
    assert_eq!(selected, vec![dead_inode], "{dry:#?}");

    // A rename: the journal follows the interface under its old name.
    let renamed = unique("rn");
    ns.ip(&["link", "set", &a, "down"]).unwrap();
    ns.ip(&["link", "set", &a, "name", &renamed]).unwrap();
    ns.ip(&["link", "set", &renamed, "up"]).unwrap();
    agent.wait_record("the later up", |r| r["type"] == "change" && r["event"] == "up" && r["name"] == renamed.as_str()).unwrap();
    let lines = ifsock_json(&["journal", "--json", "--journal", &journal, "--iface", &a]).unwrap();
    assert!(lines.iter().any(|r| r["event"] == "up" && r["name"] == renamed.as_str()), "journal --iface {a} misses the later events: {lines:#?}");
    assert!(lines.iter().any(|r| r["event"] == "deleted" && r["name"] == a.as_str()), "{lines:#?}");
    let back = ifsock_json(&["journal", "--json", "--journal", &journal, "--iface", &renamed]).unwrap();
    assert!(back.iter().any(|r| r["event"] == "recreated" || r["event"] == "created"), "the new name shows the events before the rename: {back:#?}");
    unbound.check_running().unwrap();
    dnsmasq.check_running().unwrap();
}

#[test]
fn watch_reports_the_tokio_server_stranded_by_down_and_recovered_by_up() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    ns.veth(&a, &b, Some("10.89.0.1/24")).unwrap();
    let bin = env!("CARGO_BIN_EXE_tokio-udp-server");
    let mut d = Daemon::start(&ns, &[bin, &format!("0.0.0.0:{PORT}"), &a, "4"]).unwrap();
    let pid = d.pid();
    let line = d.wait_line("ready", READY).unwrap();
    let fd: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    ready(&ns, &mut d, PORT, &EPOLL_WAITS, 1);
    let mut w = watch(&ns);

    ns.ip(&["link", "set", &a, "down"]).unwrap();
    let e = health_events(&mut w, "socket_stranded", pid, PORT, &["udp"]).remove(0);
    assert_eq!(e["reason"], "device_down", "{e}");
    assert_eq!(e["cause"], "down", "{e}");
    assert_eq!(e["ifname"], a.as_str(), "{e}");
    assert_eq!(e["ifindex"], ns.ifindex(&a).unwrap(), "{e}");
    let epoll: Vec<&Value> = e["waiters"].as_array().unwrap().iter().filter(|w| w["via"] == "epoll").collect();
    assert_eq!(epoll.len(), 1, "{e}");
    assert_eq!(epoll[0]["fd"], fd, "{e}");

    ns.ip(&["link", "set", &a, "up"]).unwrap();
    let r = health_events(&mut w, "socket_recovered", pid, PORT, &["udp"]).remove(0);
    assert_eq!(r["reason"], "device_down", "what it recovered from: {r}");
    assert_eq!(r["cause"], "up", "{r}");
    assert!(r["socket"]["stranded"].is_null(), "{r}");
    assert!(w.interrupt().unwrap().success());
}
