//! `ifsock abort` cures seed 003 (a wildcard IP_PKTINFO UDP socket, its interface deleted, its
//! fd closed, a thread still blocked in recvmsg) by destroying exactly that socket, with either
//! mechanism; `--stranded --iface` destroys exactly the dead sockets of one interface.
//!
//! A test for one mechanism runs it or skips on a kernel fact the harness reads
//! (`skip::needs`): the `bpf_sock_destroy` kfunc in BTF (>= 6.5), or the kernel's answer to
//! `SOCK_DESTROY` of a socket of the harness's own. A test without `--via` needs either.
use std::{os::fd::BorrowedFd, time::Duration};

use ifsock_tests::{
    skip::{self, Feature},
    *,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// Both mechanisms, in the order `abort` tries them.
const EITHER: [Feature; 2] = [Feature::BpfSockDestroy, Feature::SockDiagDestroy];

fn thread_in_recvmsg(tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).is_ok_and(|s| s.starts_with(&format!("{} ", libc::SYS_recvmsg)))
}

fn thread_gone(tid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

fn inode_of(fd: i32) -> u64 {
    // SAFETY: fd is open (owned by the BlockedReceiver) for the duration of the call.
    socket_inode(&unsafe { BorrowedFd::borrow_raw(fd) }).unwrap()
}

/// Seed 003 exactly: returns the namespace, the receiver and its socket inode.
fn seed_003() -> (Netns, BlockedReceiver, u64) {
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("aa"), unique("ab"));
    ns.veth(&a, &b, Some("10.207.0.1/24")).unwrap();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    let ino = inode_of(r.fd);
    ns.ip(&["link", "del", &a]).unwrap();
    r.close_fd();
    assert!(thread_in_recvmsg(r.tid), "seed 003: the receiver survives the delete and the close");
    (ns, r, ino)
}

fn abort_json(ns: &Netns, extra: &[&str]) -> Value {
    let mut args = vec!["--netns", ns.name.as_str(), "abort", "--json"];
    args.extend_from_slice(extra);
    ifsock_json(&args).unwrap().remove(0)
}

fn assert_cured(report: &Value, ino: u64, tid: u32, via: &str) {
    let socks = report["sockets"].as_array().unwrap();
    assert_eq!(socks.len(), 1, "exactly the named socket: {report}");
    let s = &socks[0];
    assert_eq!(s["inode"], ino);
    assert_eq!(s["destroyed"], true, "{s}");
    assert_eq!(s["via"], via, "{s}");
    assert_eq!(s["protocol"], "udp");
    assert!(s["cookie"].as_u64().is_some_and(|c| c > 0), "cookie reported: {s}");
    assert_eq!(s["owners"], serde_json::json!([]), "fd closed: no owners: {s}");
    let w = s["waiters"].as_array().unwrap();
    assert_eq!(w.len(), 1, "the blocked receiver is found although its fd is closed: {s}");
    assert_eq!(w[0]["tid"], tid);
    assert_eq!(w[0]["certainty"], "exact", "on the socket's own wait queue, although its fd is closed");
    assert_eq!(w[0]["woke"], true, "woke within the observation window: {s}");
    assert_eq!(w[0]["errno"], 103, "ECONNABORTED: {s}");
    assert_eq!(w[0]["errno_name"], "ECONNABORTED");
    assert_eq!(w[0]["observed_by"], "raw_syscalls:sys_exit");
    let ms = w[0]["woke_ms"].as_f64().unwrap();
    assert!((0.0..=500.0).contains(&ms), "woke_ms {ms} within --observe 500ms");
    wait_until("receiver thread returned and exited", T, || thread_gone(tid)).unwrap();
}

#[test]
fn abort_by_inode_wakes_seed_003_receiver_with_econnaborted() {
    require_root();
    if !skip::needs_any(&EITHER) {
        return;
    }
    let (ns, r, ino) = seed_003();
    let report = abort_json(&ns, &["--inode", &ino.to_string(), "--yes"]);
    let expected = if Feature::BpfSockDestroy.available().is_ok() { "bpf_sock_destroy" } else { "sock_diag" };
    assert_eq!(report["via"], expected, "mechanisms tried in order: {report}");
    assert_cured(&report, ino, r.tid, expected);
}

#[test]
fn abort_via_bpf_sock_destroy_wakes_seed_003_receiver() {
    require_root();
    if !skip::needs(Feature::BpfSockDestroy) {
        return;
    }
    let (ns, r, ino) = seed_003();
    let report = abort_json(&ns, &["--inode", &ino.to_string(), "--yes", "--via", "bpf"]);
    assert_cured(&report, ino, r.tid, "bpf_sock_destroy");
}

#[test]
fn abort_via_sock_diag_wakes_seed_003_receiver() {
    require_root();
    if !skip::needs(Feature::SockDiagDestroy) {
        return;
    }
    let (ns, r, ino) = seed_003();
    let report = abort_json(&ns, &["--inode", &ino.to_string(), "--yes", "--via", "sock-diag"]);
    assert_cured(&report, ino, r.tid, "sock_diag");
}

#[test]
fn dry_run_lists_the_socket_and_wakes_nothing() {
    require_root();
    let (ns, r, ino) = seed_003();
    let report = abort_json(&ns, &["--inode", &ino.to_string(), "--dry-run"]);
    assert_eq!(report["dry_run"], true);
    let s = &report["sockets"][0];
    assert_eq!(s["inode"], ino);
    assert_eq!(s["result"], "would_destroy");
    assert_eq!(s["destroyed"], false);
    assert_eq!(s["waiters"][0]["tid"], r.tid, "the waiter is listed: {s}");
    assert_eq!(s["waiters"][0]["woke"], false);
    assert!(thread_in_recvmsg(r.tid), "dry run: the receiver is still blocked in recvmsg");
    let out = ifsock(&["--netns", &ns.name, "sockets", "--json"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("\"inode\":{ino},")), "the socket still exists");
    release(&ns, ino, r.tid);
}

/// A real abort releases the thread, when this kernel has a mechanism (else the thread stays
/// blocked until the test process exits).
fn release(ns: &Netns, ino: u64, tid: u32) {
    if EITHER.iter().all(|f| f.available().is_err()) {
        return;
    }
    abort_json(ns, &["--inode", &ino.to_string(), "--yes"]);
    wait_until("receiver released", T, || thread_gone(tid)).unwrap();
}

#[test]
fn stranded_iface_destroys_exactly_that_interfaces_dead_sockets() {
    require_root();
    if !skip::needs_any(&EITHER) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (x, xp, y, yp, z, zp) = (unique("ax"), unique("axp"), unique("ay"), unique("ayp"), unique("az"), unique("azp"));
    ns.veth(&x, &xp, Some("10.208.1.1/24")).unwrap();
    ns.veth(&y, &yp, Some("10.208.2.1/24")).unwrap();
    ns.veth(&z, &zp, None).unwrap();
    let dead = BlockedReceiver::start(&ns, "0.0.0.0:0", false, Some(&x)).unwrap();
    let dead_ino = inode_of(dead.fd);
    let healthy = BlockedReceiver::start(&ns, "10.208.2.1:0", false, None).unwrap();
    let healthy_ino = inode_of(healthy.fd);
    let zname = z.clone();
    let other_dead = ns
        .run(move || -> anyhow::Result<std::net::UdpSocket> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            bind_to_device(&s, &zname)?;
            Ok(s)
        })
        .unwrap()
        .unwrap();
    let other_ino = socket_inode(&other_dead).unwrap();
    ns.ip(&["link", "set", &x, "down"]).unwrap();
    ns.ip(&["link", "set", &z, "down"]).unwrap();

    let report = abort_json(&ns, &["--stranded", "--iface", &x, "--yes"]);
    let socks = report["sockets"].as_array().unwrap();
    let inodes: Vec<u64> = socks.iter().filter_map(|s| s["inode"].as_u64()).collect();
    assert_eq!(inodes, vec![dead_ino], "only the dead socket of {x}: {report}");
    let s = &socks[0];
    assert_eq!(s["destroyed"], true);
    assert_eq!(s["stranded"]["reason"], "device_down", "{s}");
    assert_eq!(s["stranded"]["ifname"], x.as_str());
    assert_eq!(s["selected_by"], serde_json::json!(["stranded", "iface"]));
    assert_eq!(s["waiters"][0]["tid"], dead.tid);
    assert_eq!(s["waiters"][0]["certainty"], "exact");
    assert_eq!(s["waiters"][0]["errno"], 103, "{s}");
    wait_until("dead receiver woke", T, || thread_gone(dead.tid)).unwrap();

    let out = ifsock(&["--netns", &ns.name, "sockets", "--json"]).unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listing.contains(&format!("\"inode\":{other_ino},")), "the stranded socket of {z} is untouched");
    assert!(listing.contains(&format!("\"inode\":{healthy_ino},")), "the healthy socket is untouched");
    assert!(thread_in_recvmsg(healthy.tid), "the healthy receiver still waits");
    assert_eq!(healthy.wake(&ns, "10.208.2.1").unwrap(), 4, "and still receives a datagram sent to it");
    drop(other_dead);
}

#[test]
fn bad_selections_are_refused_with_a_reason() {
    require_root();
    let ns = Netns::new().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--inode", "0", "--yes"], "inode 0"),
        (&["--inode", "abc", "--yes"], "not a socket inode"),
        (&["--inode", "4294967000", "--yes"], "no TCP/UDP socket with inode 4294967000"),
        (&["--yes"], "nothing selected"),
        (&["--pid", "1", "--yes"], "--pid only narrows"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["--netns", ns.name.as_str(), "abort"];
        args.extend_from_slice(extra);
        let out = ifsock(&args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} must fail");
        assert!(err.contains(want), "{extra:?}: stderr {err:?} should say {want:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn abort_without_terminal_or_yes_is_refused_and_destroys_nothing() {
    require_root();
    let (ns, r, ino) = seed_003();
    let out = ifsock(&["--netns", &ns.name, "abort", "--inode", &ino.to_string()]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --yes"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(thread_in_recvmsg(r.tid), "nothing destroyed without confirmation");
    release(&ns, ino, r.tid);
}

#[test]
fn sigint_during_observation_prints_partial_report_and_exits_130() {
    require_root();
    if !skip::needs_any(&EITHER) {
        return;
    }
    // Seed 003, with a second thread waiting on the same socket that the destroy does not
    // release: select(2) with the socket only in its exceptfds (on a dup of the fd). The
    // destroy's error report wakes it (`pollwake`), select finds no exceptional condition
    // (POLLERR counts for the read and write sets only) and sleeps again, so the observation
    // window runs until SIGINT.
    let ns = Netns::new().unwrap();
    let (a, _b) = (unique("aa"), unique("ab"));
    ns.veth(&a, &_b, Some("10.207.0.1/24")).unwrap();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    let ino = inode_of(r.fd);
    // SAFETY: dup of an fd the receiver owns; the copy stays open for the select below.
    let keep = unsafe { libc::dup(r.fd) };
    assert!(keep >= 0);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
        // SAFETY: a select on an fd this test keeps open; the set and timeout are on this stack.
        unsafe {
            let mut except: libc::fd_set = std::mem::zeroed();
            libc::FD_SET(keep, &mut except);
            let mut timeout = libc::timeval { tv_sec: 300, tv_usec: 0 };
            libc::syscall(libc::SYS_select, keep + 1, 0usize, 0usize, &mut except, &mut timeout);
        }
    });
    let reader = tid_rx.recv().unwrap();
    wait_until("select waiter asleep in select", T, || {
        std::fs::read_to_string(format!("/proc/self/task/{reader}/syscall")).is_ok_and(|s| s.starts_with(&format!("{} ", libc::SYS_select)))
    })
    .unwrap();
    ns.ip(&["link", "del", &a]).unwrap();
    r.close_fd();
    assert!(thread_in_recvmsg(r.tid), "seed 003: the receiver survives the delete and the close");

    let mut run = Running::start(&["--netns", &ns.name, "abort", "--inode", &ino.to_string(), "--yes", "--json", "--observe", "60s"]).unwrap();
    // A failure bound: loading the probes takes seconds on a loaded CI host.
    wait_until("the receiver woke from the destroy", Duration::from_secs(180), || thread_gone(r.tid)).unwrap();
    let status = run.interrupt().unwrap();
    assert_eq!(status.code(), Some(130), "SIGINT exit status");
    let out = run.rest();
    let report = out.first().expect("the partial report is printed");
    assert_eq!(report["interrupted"], "SIGINT", "{report}");
    assert_eq!(report["destroyed"], 1, "what was destroyed is reported: {report}");
    let waiters = report["sockets"][0]["waiters"].as_array().unwrap();
    assert!(waiters.iter().any(|w| w["tid"] == r.tid && w["errno"] == 103), "{report}");
    assert!(waiters.iter().any(|w| w["tid"] == reader && w["via"] == "select" && w["certainty"] == "exact" && w["woke"] == false), "{report}");
    // The select thread ends at its timeout (the test process may exit first).
    // SAFETY: closing the dup this test made; the select holds its own file reference.
    unsafe { libc::close(keep) };
}

/// A UDP socket bound in `ns` and a thread in `epoll_wait` on an epoll instance holding it.
/// The thread sends (epoll_wait's return, its events, then the errno of a non-blocking
/// `recv` on the socket), as an event-loop application would see them.
fn epoll_waiter(ns: &Netns, addr: &str) -> (i32, u32, std::sync::mpsc::Receiver<(i32, u32, i32)>) {
    use std::os::fd::IntoRawFd;
    let addr = addr.to_string();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done) = std::sync::mpsc::channel();
    let fd = ns
        .run(move || -> anyhow::Result<i32> {
            let fd = std::net::UdpSocket::bind(&addr)?.into_raw_fd();
            std::thread::spawn(move || {
                let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
                // SAFETY: plain syscalls on fds this thread owns; the event buffer outlives them.
                unsafe {
                    let ep = libc::epoll_create1(0);
                    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
                    libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev);
                    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
                    let n = libc::epoll_wait(ep, out.as_mut_ptr(), 4, -1);
                    let mut buf = [0u8; 64];
                    let r = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
                    let errno = if r < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { 0 };
                    let _ = done_tx.send((n, out[0].events, errno));
                }
            });
            Ok(fd)
        })
        .unwrap()
        .unwrap();
    let tid = tid_rx.recv().unwrap();
    let waits = [libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2];
    wait_until("thread in epoll_wait", T, || {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
            .is_ok_and(|s| waits.iter().any(|nr| s.starts_with(&format!("{nr} "))))
    })
    .unwrap();
    (fd, tid, done)
}

#[test]
fn epoll_waiter_wakes_with_a_positive_count_and_its_next_recv_gets_econnaborted() {
    require_root();
    if !skip::needs_any(&EITHER) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ae"), unique("aep"));
    ns.veth(&a, &b, Some("10.209.1.1/24")).unwrap();
    let (fd, tid, done) = epoll_waiter(&ns, "10.209.1.1:0");
    let ino = inode_of(fd);
    let report = abort_json(&ns, &["--inode", &ino.to_string(), "--yes"]);
    let s = &report["sockets"][0];
    assert_eq!(s["destroyed"], true, "{report}");
    let w = s["waiters"].as_array().unwrap().iter().find(|w| w["tid"] == tid).unwrap_or_else(|| panic!("epoll waiter {tid} listed: {s}"));
    assert_eq!(w["via"], "epoll", "{w}");
    assert_eq!(w["syscall"].as_str().map(|c| c.starts_with("epoll_")), Some(true), "{w}");
    assert!(w["epfd"].as_u64().is_some(), "the epoll fd is named: {w}");
    assert_eq!(w["woke"], true, "{w}");
    assert!(w["woke_ms"].as_f64().is_some_and(|ms| (0.0..=500.0).contains(&ms)), "woke_ms within the window: {w}");
    assert!(w["ret"].as_i64().is_some_and(|r| r > 0), "epoll_wait returns a count, not an errno: {w}");
    assert!(w["errno"].is_null(), "{w}");
    let (n, events, errno) = done.recv_timeout(T).expect("the epoll thread returned");
    assert_eq!(n, 1, "one ready socket");
    assert_ne!(events & libc::EPOLLERR as u32, 0, "the destroyed socket is reported with EPOLLERR ({events:#x})");
    assert_eq!(errno, libc::ECONNABORTED, "the application's next recv gets ECONNABORTED");
    // SAFETY: the test owns fd.
    unsafe { libc::close(fd) };
}

#[test]
fn other_namespaces_are_touched_only_with_all_netns() {
    require_root();
    if !skip::needs_any(&EITHER) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("an"), unique("anp"));
    ns.veth(&a, &b, Some("10.209.2.1/24")).unwrap();
    let s = ns.run(|| std::net::UdpSocket::bind("10.209.2.1:0")).unwrap().unwrap();
    let ino = socket_inode(&s).unwrap();
    let so_error = || {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for the call on an fd the test owns.
        unsafe { libc::getsockopt(std::os::fd::AsRawFd::as_raw_fd(&s), libc::SOL_SOCKET, libc::SO_ERROR, (&mut v as *mut libc::c_int).cast(), &mut len) };
        v
    };
    // From the caller's netns, without --netns or --all-netns: not found, not destroyed.
    let out = ifsock(&["abort", "--inode", &ino.to_string(), "--yes"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all-netns"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(so_error(), 0, "a socket of another netns is never touched without --netns/--all-netns");
    let out = ifsock(&["--netns", &ns.name, "abort", "--all-netns", "--inode", &ino.to_string(), "--yes"]).unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("contradict"), "--netns with --all-netns is refused");
    let report = ifsock_json(&["abort", "--all-netns", "--inode", &ino.to_string(), "--yes", "--json"]).unwrap().remove(0);
    let r = &report["sockets"][0];
    assert_eq!(r["destroyed"], true, "{report}");
    assert_eq!(r["netns"], ns.ino().unwrap(), "destroyed inside its own netns: {report}");
    assert_eq!(so_error(), libc::ECONNABORTED, "the kernel aborted it");
}
