//! Waiters read from the sockets' own wait queues (`"source": "wait_queue"`): every way a
//! thread can sleep on a socket, checked against the kernel's own account of each thread
//! (`/proc/self/task/TID/syscall`: asleep in that syscall) and against the `/proc` pass run on
//! the same workload (`IFSOCK_WAITER_SOURCE=proc`); a tokio server, io_uring's entries; then
//! many threads entering and leaving `poll` while snapshots are taken.
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

/// True when this kernel runs under QEMU's software emulation (TCG): `-cpu max` there names
/// itself "QEMU TCG CPU" in `/proc/cpuinfo` (QEMU's `max_x86_cpu_initfn`); the 6.1 VM suite
/// (`cargo xtask vm-test`) boots that way unless `IFSOCK_VM_KVM=1`.
fn under_tcg() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("QEMU TCG CPU"))
}

/// The churn: 1,000 threads entering and leaving `poll` (each for 5–50 ms at a time)
/// on 10 sockets while 100 snapshots are taken. Every snapshot must succeed, every waiter must
/// be one of the pollers (a tid this test created), on the socket that poller polls.
/// Measured on the 2-core host (debug ifsock, other tests running beside): 12 s.
#[test]
fn pollers_entering_and_leaving_are_never_named_wrongly() -> Result<()> {
    use std::collections::HashMap;
    require_root();
    if !skip::needs(Feature::Iterators) {
        return Ok(());
    }
    // Under TCG every instruction is emulated: 1,000 threads waking every few ms leave the
    // guest's vCPUs no time for the snapshots (the whole VM suite has one time budget), so the
    // guest runs a quarter of the threads and of the snapshots (51 s in the 6.1 guest, where the
    // full scale's 16 times the work would take ~14 min). The walk's code is the same.
    let (threads, snapshots) = if under_tcg() { (250, 25) } else { (1000, 100) };
    if threads < 1000 {
        // Said where the log shows it (libtest captures only the `print!` family).
        let note = format!("NOTE churn scaled down under TCG (\"QEMU TCG CPU\" in /proc/cpuinfo): {threads} threads, {snapshots} snapshots\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
    }
    const SOCKETS: usize = 10;
    let ns = Netns::new()?;
    let socks: Vec<Arc<OwnedFd>> = (0..SOCKETS).map(|_| udp_in(&ns).map(Arc::new)).collect::<Result<_>>()?;
    let inodes: HashMap<u64, usize> = socks.iter().enumerate().map(|(i, s)| Ok((socket_inode(&**s)?, i))).collect::<Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    // Thread i polls socket i % SOCKETS, for 5–50 ms at a time, until told to stop.
    let mut handles = Vec::new();
    let (tx, rx) = mpsc::channel();
    let started = std::time::Instant::now();
    for i in 0..threads {
        let (sock, stop, tx) = (socks[i % SOCKETS].clone(), stop.clone(), tx.clone());
        handles.push(std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let _ = tx.send((gettid(), i % SOCKETS));
            while !stop.load(Ordering::Relaxed) {
                let mut p = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: a poll on an fd kept alive by the Arc.
                unsafe { libc::syscall(libc::SYS_poll, &mut p, 1, 5 + (i % 46) as i32) };
            }
        })?);
    }
    drop(tx);
    let tids: HashMap<u32, usize> = rx.iter().take(threads).collect();
    let result = (|| -> Result<()> {
        ensure!(tids.len() == threads, "{} of {threads} pollers started", tids.len());
        let (mut seen, mut on_sockets) = (0, BTreeSet::new());
        for n in 0..snapshots {
            let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--json"]).with_context(|| format!("snapshot {n} of {snapshots}"))?;
            for row in &rows {
                let Some(&sock) = row["inode"].as_u64().and_then(|i| inodes.get(&i)) else { continue };
                for w in row["waiters"].as_array().into_iter().flatten() {
                    let tid = w["tid"].as_u64().context("tid")? as u32;
                    ensure!(w["source"] == "wait_queue", "{w}");
                    let polls = tids.get(&tid).with_context(|| format!("snapshot {n}: tid {tid} is none of the pollers: {w}"))?;
                    ensure!(*polls == sock, "snapshot {n}: poller {tid} of socket {polls} named on socket {sock}: {w}");
                    ensure!(w["via"] == "poll" && w["syscall"] == "poll" && w["pid"] == std::process::id(), "{w}");
                    seen += 1;
                    on_sockets.insert(sock);
                }
            }
        }
        ensure!(on_sockets.len() == SOCKETS, "pollers seen on sockets {on_sockets:?} only, in {snapshots} snapshots of {threads} threads ({seen} waiters)");
        eprintln!("churn: {threads} threads, {snapshots} snapshots, {seen} waiters checked in {:?}", started.elapsed());
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

/// The epoll fds of this process that hold socket inode `ino` (`/proc/self/fdinfo/N`: an epoll
/// instance lists each registered file as `tfd: N events: … ino:HEX …`, fs/eventpoll.c
/// `ep_show_fdinfo`).
fn epoll_fds_holding(ino: u64) -> Vec<i32> {
    let needle = format!(" ino:{ino:x} ");
    std::fs::read_dir("/proc/self/fdinfo")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let fd: i32 = e.file_name().to_str()?.parse().ok()?;
                    let info = std::fs::read_to_string(e.path()).ok()?;
                    info.lines().any(|l| l.starts_with("tfd:") && format!("{l} ").contains(&needle)).then_some(fd)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Threads of this process named `comm` that sleep in one of `nrs`.
fn named_threads_in(comm: &str, nrs: &[i64]) -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|t| {
                    let tid: u32 = t.file_name().to_str()?.parse().ok()?;
                    let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
                    (name.trim() == comm && nrs.iter().any(|nr| asleep_in(tid, *nr))).then_some(tid)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A tokio UDP server (multi-thread runtime) awaiting `recv_from`: no thread sleeps on the
/// socket itself; mio registered it in the runtime's epoll instance, and the worker that holds
/// the I/O driver sleeps in `epoll_wait` on it. The wait queue names that worker, the epoll fd
/// and the socket's fd, as the `/proc` pass does.
#[test]
fn a_tokio_server_in_recv_from_is_named_through_its_runtimes_epoll() -> Result<()> {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return Ok(());
    }
    const WORKER: &str = "wq-tokio";
    let ns = Netns::new()?;
    let std_sock = ns.run(|| std::net::UdpSocket::bind("127.0.0.1:0"))??;
    std_sock.set_nonblocking(true)?;
    let (fd, ino) = (std_sock.as_raw_fd(), socket_inode(&std_sock)?);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name(WORKER).enable_io().build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (armed_tx, armed_rx) = mpsc::channel();
    let server = rt.spawn(async move {
        let sock = tokio::net::UdpSocket::from_std(std_sock)?;
        let _ = armed_tx.send(());
        let mut buf = [0u8; 64];
        tokio::select! {
            r = sock.recv_from(&mut buf) => r.map(|_| ()),
            _ = stop_rx => Ok(()),
        }
    });
    let result = (|| -> Result<()> {
        armed_rx.recv_timeout(T).context("the server task did not start")?;
        let mut epoll_tid = 0;
        wait_until("one runtime worker asleep in epoll_wait, the socket in its epoll set", T, || {
            let tids = named_threads_in(WORKER, &EPOLL_WAITS);
            epoll_tid = tids.first().copied().unwrap_or(0);
            tids.len() == 1 && !epoll_fds_holding(ino).is_empty()
        })?;
        // mio keeps a dup of the epoll fd (its `Registry`): the instance has two fds here, and
        // the worker waits through one of them.
        let epfds = epoll_fds_holding(ino);
        let row = row_of(&ns, ino, &[])?;
        ensure!(named_threads_in(WORKER, &EPOLL_WAITS) == [epoll_tid], "the driver moved to another worker during the snapshot");
        let waiters = row["waiters"].as_array().context("waiters")?;
        ensure!(waiters.len() == 1, "exactly the worker in epoll_wait: {row}");
        let w = &waiters[0];
        ensure!(w["source"] == "wait_queue" && w["via"] == "epoll", "{w}");
        ensure!(w["pid"] == std::process::id() && w["tid"] == epoll_tid && w["comm"] == WORKER, "the worker {epoll_tid}: {w}");
        ensure!(w["syscall"].as_str().is_some_and(|s| s.starts_with("epoll_")), "{w}");
        ensure!(w["fd"] == fd, "socket fd {fd}: {w}");
        ensure!(w["epfd"].as_i64().is_some_and(|e| epfds.contains(&(e as i32))), "an fd of the runtime's epoll instance {epfds:?}: {w}");
        let by_proc = row_of(&ns, ino, &[("IFSOCK_WAITER_SOURCE", "proc")])?;
        ensure!(ties(&row) == ties(&by_proc), "the two sources disagree:\nwait_queue {row}\nproc {by_proc}");
        ensure!(by_proc["waiters"][0]["epfd"] == w["epfd"], "the same epoll fd: {by_proc}");
        Ok(())
    })();
    let _ = stop_tx.send(());
    let served = rt.block_on(server);
    rt.shutdown_timeout(T);
    result?;
    served.context("the server task panicked")?.context("the server's recv_from")
}

/// An io_uring ring of this test's own (`io_uring_setup(2)`, `io_uring_enter(2)` made by
/// number; `struct io_uring_params`, `io_uring_sqe` from include/uapi/linux/io_uring.h).
struct Ring {
    fd: OwnedFd,
    sq: *mut u8,
    sq_len: usize,
    sqes: *mut u8,
    sqes_len: usize,
    /// `io_sqring_offsets`: tail, ring_mask, array.
    tail: usize,
    mask: usize,
    array: usize,
}

impl Ring {
    /// A ring of `entries` submission entries.
    fn new(entries: u32) -> Result<Self> {
        let mut p = [0u32; 30]; // struct io_uring_params: 120 bytes
        // SAFETY: io_uring_setup with a writable params buffer of the right size.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, entries, p.as_mut_ptr()) };
        ensure!(fd >= 0, "io_uring_setup: {}", std::io::Error::last_os_error());
        let fd = owned(fd as i32);
        // sq_entries at word 0; sq_off (io_sqring_offsets) from byte 40: head, tail, ring_mask,
        // ring_entries, flags, dropped, array.
        let (sq_entries, sq_off) = (p[0] as usize, &p[10..]);
        let (tail, mask, array) = (sq_off[1] as usize, sq_off[2] as usize, sq_off[6] as usize);
        let sq_len = array + sq_entries * 4;
        let sqes_len = sq_entries * 64;
        let map = |len: usize, off: libc::off_t| {
            // SAFETY: mapping the ring's own areas at the offsets the ABI defines.
            let m = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd(), off) };
            ensure!(m != libc::MAP_FAILED, "mmap of the ring at {off:#x}: {}", std::io::Error::last_os_error());
            Ok(m.cast::<u8>())
        };
        let sq = map(sq_len, 0)?; // IORING_OFF_SQ_RING
        let sqes = map(sqes_len, 0x1000_0000)?; // IORING_OFF_SQES
        Ok(Ring { fd, sq, sq_len, sqes, sqes_len, tail, mask, array })
    }

    /// Queues one SQE (`opcode`, `fd`, `addr`, `len`, the op's 32-bit flags) and submits it.
    fn submit(&mut self, opcode: u8, fd: i32, addr: u64, len: u32, op_flags: u32, user_data: u64) -> Result<()> {
        use std::sync::atomic::AtomicU32;
        // SAFETY: offsets inside the mappings made in `new`, as the kernel gave them; the tail is
        // published with a release store after the entry is written, as liburing does.
        unsafe {
            let tail = &*self.sq.add(self.tail).cast::<AtomicU32>();
            let t = tail.load(Ordering::Acquire);
            let idx = t & *self.sq.add(self.mask).cast::<u32>();
            let sqe = self.sqes.add(idx as usize * 64);
            std::ptr::write_bytes(sqe, 0, 64);
            *sqe = opcode;
            sqe.add(4).cast::<i32>().write(fd);
            sqe.add(16).cast::<u64>().write(addr);
            sqe.add(24).cast::<u32>().write(len);
            sqe.add(28).cast::<u32>().write(op_flags);
            sqe.add(32).cast::<u64>().write(user_data);
            self.sq.add(self.array).cast::<u32>().add(idx as usize).write(idx);
            tail.store(t.wrapping_add(1), Ordering::Release);
            let n = libc::syscall(libc::SYS_io_uring_enter, self.fd.as_raw_fd(), 1u32, 0u32, 0u32, 0usize, 0usize);
            ensure!(n == 1, "io_uring_enter submitted {n}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mappings made in `new`; the fd closes after.
        unsafe {
            libc::munmap(self.sqes.cast(), self.sqes_len);
            libc::munmap(self.sq.cast(), self.sq_len);
        }
    }
}

/// io_uring: an `IORING_OP_POLL_ADD` on one UDP socket and an `IORING_OP_RECV` on another
/// (no data: the receive arms an internal poll). No thread sleeps on either socket; the ring's
/// entry does, with wake function `io_poll_wake` (io_uring/poll.c). ifsock documents such an
/// entry as `via: unknown` naming the wake function (its waiter is not followed); the test
/// asserts exactly that, and that the entry is never dropped.
#[test]
fn io_uring_poll_and_recv_entries_are_reported_as_unknown_naming_io_poll_wake() -> Result<()> {
    require_root();
    if !skip::needs(Feature::Iterators) || !skip::needs(Feature::IoUring) {
        return Ok(());
    }
    const IORING_OP_POLL_ADD: u8 = 6;
    const IORING_OP_RECV: u8 = 27;
    let ns = Netns::new()?;
    let (polled, received) = (udp_in(&ns)?, udp_in(&ns)?);
    let (ip, ir) = (socket_inode(&polled)?, socket_inode(&received)?);
    let mut ring = Ring::new(4)?;
    // The receive's buffer outlives the ring (the kernel may still own the request while the
    // ring is torn down after the test): leaked, 64 bytes.
    let buf: &'static mut [u8; 64] = Box::leak(Box::new([0u8; 64]));
    ring.submit(IORING_OP_POLL_ADD, polled.as_raw_fd(), 0, 0, libc::POLLIN as u32, 1)?;
    ring.submit(IORING_OP_RECV, received.as_raw_fd(), buf.as_mut_ptr() as u64, buf.len() as u32, 0, 2)?;
    for (what, ino) in [("IORING_OP_POLL_ADD", ip), ("IORING_OP_RECV", ir)] {
        let mut row = Value::Null;
        // The RECV is queued, tried, and armed by the submitting call; read until the entry is
        // listed (bounded), then check it.
        wait_until(&format!("{what}: the ring's entry on socket {ino}"), T, || {
            row = row_of(&ns, ino, &[]).unwrap_or(Value::Null);
            row["waiters"].as_array().is_some_and(|w| !w.is_empty())
        })
        .with_context(|| format!("{what}: the entry was dropped: {row}"))?;
        let waiters = row["waiters"].as_array().context("waiters")?;
        ensure!(waiters.len() == 1, "{what}: one entry: {row}");
        let w = &waiters[0];
        ensure!(w["source"] == "wait_queue" && w["via"] == "unknown" && w["syscall"] == "-", "{what}: {w}");
        ensure!(w["reason"].as_str().is_some_and(|r| r.contains("io_poll_wake")), "{what}: the wake function is named: {w}");
    }
    drop(ring);
    Ok(())
}
