//! `ifsock abort` on TCP and the cookie re-check, against the real kernel:
//! - an established connection destroyed with each mechanism: `tcp_abort()` sends the peer a
//!   RST (its blocked read returns ECONNRESET) and the local blocked reader returns
//!   ECONNABORTED;
//! - a TCP LISTEN socket that `--stranded --iface` matches is kept (listed under `skipped`)
//!   and destroyed only when named by `--inode`;
//! - the socket closed, or its tuple taken by a new socket, between the listing and the
//!   destroy (the window held open by the confirmation prompt on a terminal): reported `gone`,
//!   exit status 0, and the new socket is untouched.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use ifsock_tests::{
    skip::{needs, Feature},
    *,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// `ss -N NS -H -n ARGS`: the sockets the kernel lists (sock_diag), one line each.
fn ss(ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut full = vec!["ss", "-N", ns.name.as_str(), "-H", "-n"];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&sh(&full).unwrap().stdout).lines().map(str::to_string).collect()
}

/// The `-e` line of `ss` for socket inode `ino`, if ss lists it.
fn ss_line(ns: &Netns, args: &[&str], ino: u64) -> Option<String> {
    let mut with_e = args.to_vec();
    with_e.push("-e");
    ss(ns, &with_e).into_iter().find(|l| l.split_whitespace().any(|w| w == format!("ino:{ino}")))
}

/// `recv(2)` on `fd` from a thread started inside `ns`; the result (bytes, or the errno) comes
/// back on the channel. Returns once the thread sleeps in recvfrom on the socket.
fn blocked_reader(ns: &Netns, fd: i32, ino: u64) -> mpsc::Receiver<Result<usize, i32>> {
    let (tx, rx) = mpsc::channel();
    ns.run(move || {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            // SAFETY: fd stays open (the test holds its socket) for the call.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            let _ = tx.send(if n < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(n as usize) });
        });
    })
    .unwrap();
    wait_until("reader blocked in recvfrom", T, || thread_blocked_in_recvfrom(ino)).unwrap();
    rx
}

/// An established connection on 127.0.0.1 inside `ns`: (client, server end).
fn connection(ns: &Netns) -> (TcpStream, TcpStream) {
    ns.run(|| -> anyhow::Result<_> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let c = TcpStream::connect(l.local_addr()?)?;
        let (s, _) = l.accept()?;
        Ok((c, s))
    })
    .unwrap()
    .unwrap()
}

fn established_resets_peer_and_wakes_reader(via: &str, reported: &str) {
    let ns = Netns::new().unwrap();
    let (client, server) = connection(&ns);
    let (c_ino, s_ino) = (socket_inode(&client).unwrap(), socket_inode(&server).unwrap());
    let c_port = client.local_addr().unwrap().port();
    assert!(ss_line(&ns, &["-t", "state", "established"], c_ino).is_some(), "ss lists the connection before");
    let local = blocked_reader(&ns, client.as_raw_fd(), c_ino);
    let peer = blocked_reader(&ns, server.as_raw_fd(), s_ino);

    let report = ifsock_json(&["--netns", &ns.name, "abort", "--inode", &c_ino.to_string(), "--yes", "--json", "--via", via]).unwrap().remove(0);
    let socks = report["sockets"].as_array().unwrap();
    assert_eq!(socks.len(), 1, "exactly the named socket: {report}");
    let s = &socks[0];
    assert_eq!((s["inode"].as_u64(), s["destroyed"].as_bool(), s["via"].as_str()), (Some(c_ino), Some(true), Some(reported)), "{s}");
    assert_eq!((s["protocol"].as_str(), s["state"].as_str()), (Some("tcp"), Some("ESTABLISHED")), "{s}");
    assert_eq!(s["local"], format!("127.0.0.1:{c_port}"), "{s}");

    // The kernel's answer, from both ends.
    assert_eq!(local.recv_timeout(T).unwrap(), Err(libc::ECONNABORTED), "the local reader gets ECONNABORTED");
    assert_eq!(peer.recv_timeout(T).unwrap(), Err(libc::ECONNRESET), "the peer got a RST");
    assert!(ss_line(&ns, &["-t", "state", "all"], c_ino).is_none() && ss_line(&ns, &["-t", "state", "all"], s_ino).is_none(), "both ends are closed: {:?}", ss(&ns, &["-t", "-a"]));
    let w = s["waiters"].as_array().unwrap();
    assert!(w.iter().any(|w| w["errno"] == libc::ECONNABORTED && w["woke"] == true), "the report saw the reader wake: {s}");
}

#[test]
fn abort_via_bpf_sock_destroy_resets_an_established_tcp_peer_and_wakes_the_reader_with_econnaborted() {
    require_root();
    if !needs(Feature::BpfSockDestroy) {
        return;
    }
    established_resets_peer_and_wakes_reader("bpf", "bpf_sock_destroy");
}

#[test]
fn abort_via_sock_diag_resets_an_established_tcp_peer_and_wakes_the_reader_with_econnaborted() {
    require_root();
    if !needs(Feature::SockDiagDestroy) {
        return;
    }
    established_resets_peer_and_wakes_reader("sock-diag", "sock_diag");
}

/// True when a thread of this process sleeps in `accept`/`accept4` (a kernel state with no
/// notification).
fn thread_in_accept() -> bool {
    in_syscall(std::process::id(), &[libc::SYS_accept, libc::SYS_accept4])
}

#[test]
fn a_listen_socket_matched_by_stranded_is_kept_and_destroyed_only_when_named() {
    require_root();
    // Either mechanism will do (abort picks one): a skip only when both are missing.
    if Feature::BpfSockDestroy.available().is_err() && !needs(Feature::SockDiagDestroy) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("la"), unique("lb"));
    ns.veth(&a, &b, Some("10.233.0.1/24")).unwrap();
    let dev = a.clone();
    let (listener, udp) = ns
        .run(move || -> anyhow::Result<(TcpListener, UdpSocket)> {
            let l = TcpListener::bind("0.0.0.0:0")?;
            bind_to_device(&l, &dev)?;
            let u = UdpSocket::bind("0.0.0.0:0")?;
            bind_to_device(&u, &dev)?;
            Ok((l, u))
        })
        .unwrap()
        .unwrap();
    let (l_ino, u_ino) = (socket_inode(&listener).unwrap(), socket_inode(&udp).unwrap());
    let (done_tx, accepted) = mpsc::channel();
    let l2 = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = done_tx.send(l2.accept().map(|_| ()).map_err(|e| e.raw_os_error().unwrap_or(0)));
    });
    wait_until("a thread blocked in accept", T, thread_in_accept).unwrap();
    ns.ip(&["link", "set", &a, "down"]).unwrap();

    let report = ifsock_json(&["--netns", &ns.name, "abort", "--stranded", "--iface", &a, "--yes", "--json"]).unwrap().remove(0);
    let destroyed: Vec<u64> = report["sockets"].as_array().unwrap().iter().filter(|s| s["destroyed"] == true).filter_map(|s| s["inode"].as_u64()).collect();
    assert_eq!(destroyed, vec![u_ino], "only the UDP socket: {report}");
    let kept = report["skipped"].as_array().unwrap_or_else(|| panic!("the kept sockets are listed: {report}"));
    assert!(kept.iter().any(|k| k["inode"] == l_ino), "the LISTEN socket is listed as kept: {report}");
    assert!(ss_line(&ns, &["-t", "state", "listening"], l_ino).is_some(), "ss still lists the listener: {:?}", ss(&ns, &["-tl"]));
    assert!(accepted.try_recv().is_err() && thread_in_accept(), "its accept still waits");

    let report = ifsock_json(&["--netns", &ns.name, "abort", "--inode", &l_ino.to_string(), "--yes", "--json"]).unwrap().remove(0);
    let s = &report["sockets"][0];
    assert_eq!((s["inode"].as_u64(), s["destroyed"].as_bool(), s["state"].as_str()), (Some(l_ino), Some(true), Some("LISTEN")), "named by --inode: {report}");
    assert!(ss_line(&ns, &["-t", "state", "all"], l_ino).is_none(), "ss no longer lists the listener: {:?}", ss(&ns, &["-ta"]));
    let woke = accepted.recv_timeout(T).expect("the accept returned");
    assert!(woke.is_err(), "accept on a destroyed listener fails: {woke:?}");
    drop((listener, udp));
}

/// A terminal for ifsock's stdin (`openpty(3)`): (master, slave).
fn pty() -> (std::fs::File, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: out-pointers to two ints; null name, termios and winsize are allowed.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are fresh and owned here.
    unsafe { (std::fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// `abort` asking on a terminal: its stderr is collected on a thread so the test can wait for
/// the prompt, its stdout holds the JSON report.
struct Asking {
    child: std::process::Child,
    master: std::fs::File,
    stderr: Arc<Mutex<String>>,
}

impl Asking {
    fn start(ns: &Netns, args: &[&str]) -> Self {
        let (master, slave) = pty();
        let mut child = Command::new(ifsock_bin())
            .args(["--netns", ns.name.as_str(), "abort", "--json"])
            .args(args)
            .stdin(Stdio::from(slave))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, mut from) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Asking { child, master, stderr }
    }

    fn wait_prompt(&mut self) {
        let stderr = self.stderr.clone();
        let child = &mut self.child;
        wait_until("the confirmation prompt", Duration::from_secs(120), || {
            stderr.lock().unwrap().contains("proceed? [y/N]") || child.try_wait().ok().flatten().is_some()
        })
        .unwrap();
        assert!(self.child.try_wait().unwrap().is_none(), "abort exited before asking: {}", self.stderr.lock().unwrap());
    }

    /// Answers the prompt and returns the exit status and the JSON report.
    fn answer(mut self, line: &str) -> (std::process::ExitStatus, Value) {
        self.master.write_all(line.as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "abort did not finish after the answer: {}", self.stderr.lock().unwrap());
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let report = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}; stderr {}", self.stderr.lock().unwrap()));
        (status, report)
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SO_ERROR` of a socket: 0 when nothing aborted it.
fn so_error(fd: &impl AsRawFd) -> i32 {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for the call.
    unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR, (&mut v as *mut libc::c_int).cast(), &mut len) };
    v
}

fn gone_between_listing_and_destroy(via: &str, reported: &str) {
    let ns = Netns::new().unwrap();
    for replaced in [false, true] {
        let old = ns.run(|| UdpSocket::bind("127.0.0.1:0")).unwrap().unwrap();
        let (ino, addr) = (socket_inode(&old).unwrap(), old.local_addr().unwrap());
        let mut asking = Asking::start(&ns, &["--inode", &ino.to_string(), "--via", via]);
        asking.wait_prompt();
        drop(old);
        // The same tuple for a new socket: only the cookie tells them apart.
        let new = replaced.then(|| ns.run(move || UdpSocket::bind(addr)).unwrap().unwrap());
        let (status, report) = asking.answer("y\n");
        assert!(status.success(), "a socket gone in between is not an error: {status}; {report}");
        let s = &report["sockets"][0];
        assert_eq!((s["inode"].as_u64(), s["result"].as_str(), s["destroyed"].as_bool()), (Some(ino), Some("gone"), Some(false)), "replaced {replaced}: {report}");
        assert_eq!(s["via"], reported, "{s}");
        assert_eq!((report["gone"].as_u64(), report["destroyed"].as_u64()), (Some(1), Some(0)), "{report}");
        if let Some(new) = new {
            assert_eq!(so_error(&new), 0, "the socket now on the tuple was not aborted");
            ns.run(move || UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"alive", addr))).unwrap().unwrap();
            let mut buf = [0u8; 8];
            new.set_read_timeout(Some(T)).unwrap();
            assert_eq!(new.recv(&mut buf).unwrap(), 5, "and still receives");
        }
    }
}

#[test]
fn via_bpf_sock_destroy_a_socket_gone_or_replaced_on_its_tuple_after_the_listing_is_reported_gone() {
    require_root();
    if !needs(Feature::BpfSockDestroy) {
        return;
    }
    gone_between_listing_and_destroy("bpf", "bpf_sock_destroy");
}

#[test]
fn via_sock_diag_a_socket_gone_or_replaced_on_its_tuple_after_the_listing_is_reported_gone() {
    require_root();
    if !needs(Feature::SockDiagDestroy) {
        return;
    }
    gone_between_listing_and_destroy("sock-diag", "sock_diag");
}
