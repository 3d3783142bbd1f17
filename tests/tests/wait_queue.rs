//! Waiters read from the sockets' own wait queues (`"source": "wait_queue"`): every way a
//! thread can sleep on a socket, checked against the kernel's own account of each thread
//! (`/proc/self/task/TID/syscall`: asleep in that syscall) and against the `/proc` pass run on
//! the same workload (`IFSOCK_WAITER_SOURCE=proc`); then many threads entering and leaving
//! `poll` while snapshots are taken.
//!
//! Each waiting thread is one of this test's own, started on a syscall made by number (libc's
//! wrappers may pick another one: `poll` → `ppoll`), and woken at the end by `shutdown(2)` of
//! the socket (`inet_shutdown()` wakes every waiter through `sk_state_change`).
use std::{
    collections::BTreeSet,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use ifsock_tests::{skip::Feature, *};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
/// `CAP_SYS_PTRACE` (include/uapi/linux/capability.h).
const CAP_SYS_PTRACE: libc::c_ulong = 19;

/// `gettid()`.
fn gettid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// True when thread `tid` of this process sleeps (`S`) in syscall `nr`.
fn asleep_in(tid: u32, nr: i64) -> bool {
    let sc = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).unwrap_or("");
    sc.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()) == Some(nr) && state == "S"
}

/// A UDP socket bound to 127.0.0.1 inside `ns`.
fn udp_in(ns: &Netns) -> Result<OwnedFd> {
    ns.run(|| -> Result<OwnedFd> {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        Ok(OwnedFd::from(s))
    })?
}

/// A TCP listener on 127.0.0.1 inside `ns`.
fn tcp_listener_in(ns: &Netns) -> Result<OwnedFd> {
    ns.run(|| -> Result<OwnedFd> {
        let s = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok(OwnedFd::from(s))
    })?
}

/// An epoll instance watching `fd` for input.
fn epoll_on(fd: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscalls on fds this test owns.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        ensure!(ep >= 0, "epoll_create1: {}", std::io::Error::last_os_error());
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
        ensure!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        Ok(owned(ep))
    }
}

/// One waiting thread: its tid, the syscall it sleeps in, the `via` and `fd` ifsock must report.
struct Waiting {
    what: &'static str,
    tid: u32,
    nr: i64,
    syscall: &'static str,
    via: &'static str,
    fd: i32,
    handle: JoinHandle<()>,
}

/// Starts a thread that makes one blocking call (`call`, given nothing: it captures its fds)
/// and returns once it is asleep in syscall `nr`.
fn start(what: &'static str, nr: i64, syscall: &'static str, via: &'static str, fd: i32, call: impl FnOnce() + Send + 'static) -> Result<Waiting> {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(gettid());
        call();
    });
    let tid = rx.recv_timeout(T).context("thread id")?;
    wait_until(&format!("{what}: thread {tid} asleep in syscall {nr}"), T, || asleep_in(tid, nr))?;
    Ok(Waiting { what, tid, nr, syscall, via, fd, handle })
}

/// The row of socket inode `ino` in `sockets --json` of `ns` (`env`: extra environment).
fn row_of(ns: &Netns, ino: u64, env: &[(&str, &str)]) -> Result<Value> {
    let out = std::process::Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "sockets", "--json"])
        .envs(env.iter().copied())
        .output()
        .context("running ifsock sockets")?;
    ensure!(out.status.success(), "ifsock sockets failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["inode"] == ino)
        .with_context(|| format!("no row for inode {ino}"))
}

/// (tid, via, fd) of every waiter of `row`.
fn ties(row: &Value) -> BTreeSet<(u64, String, i64)> {
    row["waiters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| (w["tid"].as_u64().unwrap_or(0), w["via"].as_str().unwrap_or("").to_string(), w["fd"].as_i64().unwrap_or(-1)))
        .collect()
}

#[test]
fn every_kind_of_waiter_on_one_socket_is_read_from_its_wait_queue() -> Result<()> {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return Ok(());
    }
    let ns = Netns::new()?;
    let sock = Arc::new(udp_in(&ns)?);
    let fd = sock.as_raw_fd();
    let ino = socket_inode(&*sock)?;
    let listener = Arc::new(tcp_listener_in(&ns)?);
    let lfd = listener.as_raw_fd();
    let lino = socket_inode(&*listener)?;
    let ep_wait = Arc::new(epoll_on(fd)?);
    let ep_pwait = Arc::new(epoll_on(fd)?);
    let inner = Arc::new(epoll_on(fd)?);
    let outer = Arc::new(epoll_on(inner.as_raw_fd())?);
    let shared = Arc::new(epoll_on(fd)?);
    let mut threads = Vec::new();
    // SAFETY (every closure below): one blocking syscall on fds kept alive by the Arcs the
    // closure holds, with buffers on its own stack.
    let s = sock.clone();
    threads.push(start("recvmsg", libc::SYS_recvmsg, "recvmsg", "recv", fd, move || unsafe {
        let mut buf = [0u8; 64];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        libc::syscall(libc::SYS_recvmsg, s.as_raw_fd(), &mut msg, 0);
    })?);
    let s = sock.clone();
    threads.push(start("recvfrom", libc::SYS_recvfrom, "recvfrom", "recv", fd, move || unsafe {
        let mut buf = [0u8; 64];
        libc::syscall(libc::SYS_recvfrom, s.as_raw_fd(), buf.as_mut_ptr(), buf.len(), 0, 0usize, 0usize);
    })?);
    let s = sock.clone();
    threads.push(start("recvmmsg", libc::SYS_recvmmsg, "recvmmsg", "recv", fd, move || unsafe {
        let mut buf = [0u8; 64];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut msg: libc::mmsghdr = std::mem::zeroed();
        msg.msg_hdr.msg_iov = &mut iov;
        msg.msg_hdr.msg_iovlen = 1;
        libc::syscall(libc::SYS_recvmmsg, s.as_raw_fd(), &mut msg, 1, 0, 0usize);
    })?);
    let s = sock.clone();
    threads.push(start("read", libc::SYS_read, "read", "recv", fd, move || unsafe {
        let mut buf = [0u8; 64];
        libc::syscall(libc::SYS_read, s.as_raw_fd(), buf.as_mut_ptr(), buf.len());
    })?);
    let s = sock.clone();
    threads.push(start("poll", libc::SYS_poll, "poll", "poll", fd, move || unsafe {
        let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        libc::syscall(libc::SYS_poll, &mut p, 1, -1);
    })?);
    let s = sock.clone();
    threads.push(start("ppoll", libc::SYS_ppoll, "ppoll", "poll", fd, move || unsafe {
        let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        libc::syscall(libc::SYS_ppoll, &mut p, 1, 0usize, 0usize, 8);
    })?);
    let s = sock.clone();
    threads.push(start("select", libc::SYS_select, "select", "select", fd, move || unsafe {
        let mut set: libc::fd_set = std::mem::zeroed();
        libc::FD_SET(s.as_raw_fd(), &mut set);
        libc::syscall(libc::SYS_select, s.as_raw_fd() + 1, &mut set, 0usize, 0usize, 0usize);
    })?);
    let s = sock.clone();
    threads.push(start("pselect6", libc::SYS_pselect6, "pselect6", "select", fd, move || unsafe {
        let mut set: libc::fd_set = std::mem::zeroed();
        libc::FD_SET(s.as_raw_fd(), &mut set);
        libc::syscall(libc::SYS_pselect6, s.as_raw_fd() + 1, &mut set, 0usize, 0usize, 0usize, 0usize);
    })?);
    let e = ep_wait.clone();
    threads.push(start("epoll_wait", libc::SYS_epoll_wait, "epoll_wait", "epoll", fd, move || unsafe {
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 1];
        libc::syscall(libc::SYS_epoll_wait, e.as_raw_fd(), ev.as_mut_ptr(), 1, -1);
    })?);
    let e = ep_pwait.clone();
    threads.push(start("epoll_pwait", libc::SYS_epoll_pwait, "epoll_pwait", "epoll", fd, move || unsafe {
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 1];
        libc::syscall(libc::SYS_epoll_pwait, e.as_raw_fd(), ev.as_mut_ptr(), 1, -1, 0usize, 8);
    })?);
    let (o, i) = (outer.clone(), inner.clone());
    threads.push(start("nested epoll", libc::SYS_epoll_wait, "epoll_wait", "epoll", fd, move || unsafe {
        let _inner = i;
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 1];
        libc::syscall(libc::SYS_epoll_wait, o.as_raw_fd(), ev.as_mut_ptr(), 1, -1);
    })?);
    for what in ["shared epoll 1", "shared epoll 2", "shared epoll 3"] {
        let e = shared.clone();
        threads.push(start(what, libc::SYS_epoll_wait, "epoll_wait", "epoll", fd, move || unsafe {
            let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 1];
            libc::syscall(libc::SYS_epoll_wait, e.as_raw_fd(), ev.as_mut_ptr(), 1, -1);
        })?);
    }
    let l = listener.clone();
    let accept = start("accept4", libc::SYS_accept4, "accept4", "recv", lfd, move || unsafe {
        libc::syscall(libc::SYS_accept4, l.as_raw_fd(), 0usize, 0usize, 0);
    })?;

    let result = (|| -> Result<()> {
        let row = row_of(&ns, ino, &[])?;
        let pid = std::process::id();
        let waiters = row["waiters"].as_array().context("waiters")?;
        for t in &threads {
            ensure!(asleep_in(t.tid, t.nr), "{}: thread {} left syscall {} before the snapshot was checked", t.what, t.tid, t.nr);
            let mine: Vec<&Value> = waiters.iter().filter(|w| w["tid"] == t.tid).collect();
            ensure!(mine.len() == 1, "{}: thread {} listed {} times: {row}", t.what, t.tid, mine.len());
            let w = mine[0];
            ensure!(w["pid"] == pid && w["source"] == "wait_queue", "{}: {w}", t.what);
            ensure!(w["via"] == t.via && w["syscall"] == t.syscall, "{}: expected via {} in {}: {w}", t.what, t.via, t.syscall);
            ensure!(w["fd"] == t.fd, "{}: expected fd {}: {w}", t.what, t.fd);
        }
        let threads_listed: BTreeSet<u64> = waiters.iter().filter_map(|w| w["tid"].as_u64()).collect();
        ensure!(threads_listed.len() == threads.len(), "only this test's threads wait on the socket: {row}");
        let lrow = row_of(&ns, lino, &[])?;
        let w = lrow["waiters"].as_array().and_then(|w| w.iter().find(|w| w["tid"] == accept.tid)).with_context(|| format!("accept waiter: {lrow}"))?;
        ensure!(w["via"] == "recv" && w["syscall"] == "accept4" && w["source"] == "wait_queue" && w["fd"] == lfd, "accept: {w}");

        // The /proc pass on the same workload agrees on every (tid, via, fd).
        let by_proc = row_of(&ns, ino, &[("IFSOCK_WAITER_SOURCE", "proc")])?;
        ensure!(by_proc["waiters"].as_array().is_some_and(|w| w.iter().all(|w| w["source"] == "proc")), "{by_proc}");
        ensure!(ties(&row) == ties(&by_proc), "the two sources disagree:\nwait_queue {row}\nproc {by_proc}");
        Ok(())
    })();
    // SAFETY: shutdown on fds this test owns; wakes every waiter.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
        libc::shutdown(lfd, libc::SHUT_RDWR);
    }
    for t in threads.into_iter().chain([accept]) {
        let _ = t.handle.join();
    }
    result
}

#[test]
fn pollers_entering_and_leaving_are_never_named_wrongly() -> Result<()> {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return Ok(());
    }
    const THREADS: usize = 200;
    const SNAPSHOTS: usize = 30;
    let ns = Netns::new()?;
    let a = Arc::new(udp_in(&ns)?);
    let b = Arc::new(udp_in(&ns)?);
    let (ia, ib) = (socket_inode(&*a)?, socket_inode(&*b)?);
    let stop = Arc::new(AtomicBool::new(false));
    // Even threads poll `a`, odd ones `b`, each for 1–5 ms at a time, until told to stop.
    let mut handles = Vec::new();
    let (tx, rx) = mpsc::channel();
    for i in 0..THREADS {
        let (sock, stop, tx) = (if i % 2 == 0 { a.clone() } else { b.clone() }, stop.clone(), tx.clone());
        handles.push(std::thread::spawn(move || {
            let _ = tx.send((gettid(), i % 2 == 0));
            while !stop.load(Ordering::Relaxed) {
                let mut p = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: a poll on an fd kept alive by the Arc.
                unsafe { libc::syscall(libc::SYS_poll, &mut p, 1, 1 + (i % 5) as i32) };
            }
        }));
    }
    drop(tx);
    let tids: std::collections::HashMap<u32, bool> = rx.iter().take(THREADS).collect();
    let result = (|| -> Result<()> {
        let mut seen = 0;
        for _ in 0..SNAPSHOTS {
            let out = ifsock(&["--netns", &ns.name, "sockets", "--json"])?;
            for row in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
                let on_a = if row["inode"] == ia {
                    true
                } else if row["inode"] == ib {
                    false
                } else {
                    continue;
                };
                for w in row["waiters"].as_array().into_iter().flatten() {
                    let tid = w["tid"].as_u64().context("tid")? as u32;
                    ensure!(w["source"] == "wait_queue", "{w}");
                    let mine = tids.get(&tid).with_context(|| format!("tid {tid} is none of the pollers: {w}"))?;
                    ensure!(*mine == on_a, "poller {tid} named on the wrong socket: {w}");
                    ensure!(w["via"] == "poll" && w["pid"] == std::process::id(), "{w}");
                    seen += 1;
                }
            }
        }
        ensure!(seen > 0, "no poller seen in {SNAPSHOTS} snapshots of {THREADS} threads");
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    result
}

/// Seed 003 twice in one namespace (a wildcard IP_PKTINFO UDP socket, its interface deleted,
/// its fd closed while a thread stays blocked in recvmsg), with ifsock started after: no fd
/// and no ownerless-socket inference can tell the two apart, the wait queues can.
#[test]
fn two_seed_003_receivers_with_closed_fds_are_each_on_their_own_socket() -> Result<()> {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return Ok(());
    }
    let ns = Netns::new()?;
    let (a, b) = (unique("wa"), unique("wb"));
    ns.veth(&a, &b, Some("10.208.0.1/24"))?;
    let r1 = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None)?;
    let r2 = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None)?;
    let ino = |fd: i32| {
        // SAFETY: the fd is open (owned by its BlockedReceiver) for the duration of the call.
        socket_inode(&unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
    };
    let (i1, i2) = (ino(r1.fd)?, ino(r2.fd)?);
    ns.ip(&["link", "del", &a])?;
    r1.close_fd();
    r2.close_fd();
    for r in [&r1, &r2] {
        ensure!(asleep_in(r.tid, libc::SYS_recvmsg), "seed 003: receiver {} survives the delete and the close", r.tid);
    }
    for (inode, r, other) in [(i1, &r1, &r2), (i2, &r2, &r1)] {
        let row = row_of(&ns, inode, &[])?;
        let w = row["waiters"].as_array().context("waiters")?;
        ensure!(w.len() == 1, "exactly its own receiver on socket {inode}: {row}");
        ensure!(w[0]["tid"] == r.tid && w[0]["tid"] != other.tid, "{row}");
        ensure!(w[0]["source"] == "wait_queue" && w[0]["via"] == "recv" && w[0]["syscall"] == "recvmsg", "{row}");
        ensure!(w[0]["fd"].is_null(), "the fd is closed: none is named: {row}");
        ensure!(row["owners"].as_array().is_some_and(Vec::is_empty), "{row}");
    }
    Ok(())
}

/// Least privilege: the waiter of another user's process (`nobody`) is found by an ifsock
/// without `CAP_SYS_PTRACE` (dropped from its bounding set before exec, so root's exec does
/// not regain it): the wait queue and the owner walk are read in the kernel, not through
/// `/proc/PID/fd` or the process's memory.
#[test]
fn a_nobody_receiver_is_found_without_cap_sys_ptrace() -> Result<()> {
    use std::os::unix::process::CommandExt;
    require_root();
    if !skip::needs(Feature::Iterators) {
        return Ok(());
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = sock.local_addr()?.port();
    let ino = socket_inode(&sock)?;
    let fd = sock.as_raw_fd();
    // SAFETY: the child makes only async-signal-safe syscalls (setgid, setuid, recvfrom,
    // _exit) before it exits; the parent keeps no lock the child needs.
    let child = unsafe { libc::fork() };
    ensure!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        // SAFETY: as above; the child never returns into the test harness.
        unsafe {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(2);
            }
            let mut buf = [0u8; 16];
            libc::recvfrom(fd, buf.as_mut_ptr().cast(), buf.len(), 0, std::ptr::null_mut(), std::ptr::null_mut());
            libc::_exit(0);
        }
    }
    let pid = child as u32;
    drop(sock);
    let result = (|| -> Result<()> {
        wait_until("the nobody child asleep in recvfrom", T, || {
            std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|s| s.starts_with(&format!("{} ", libc::SYS_recvfrom)))
        })?;
        let run = |env: &[(&str, &str)]| -> Result<Value> {
            let mut cmd = std::process::Command::new(ifsock_bin());
            cmd.args(["sockets", "--json"]).envs(env.iter().copied());
            // SAFETY: prctl in the forked child before exec; no allocation.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let out = cmd.output()?;
            ensure!(out.status.success(), "ifsock sockets without CAP_SYS_PTRACE failed: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| r["inode"] == ino)
                .with_context(|| format!("no row for udp :{port} (inode {ino})"))
        };
        let row = run(&[])?;
        let w = row["waiters"].as_array().and_then(|w| w.iter().find(|w| w["pid"] == pid)).with_context(|| format!("the nobody receiver: {row}"))?;
        ensure!(w["tid"] == pid && w["via"] == "recv" && w["syscall"] == "recvfrom" && w["source"] == "wait_queue", "{w}");
        ensure!(w["fd"] == fd, "its fd, from the in-kernel owner walk: {w}");
        // The /proc fallback, without the right to read another user's fd table, cannot.
        let by_proc = run(&[("IFSOCK_WAITER_SOURCE", "proc")])?;
        ensure!(
            !by_proc["waiters"].as_array().is_some_and(|w| w.iter().any(|w| w["pid"] == pid && w["via"] == "recv")),
            "the /proc pass needs CAP_SYS_PTRACE for this: {by_proc}"
        );
        Ok(())
    })();
    // SAFETY: our child; reaped below.
    unsafe { libc::kill(child, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    result
}
