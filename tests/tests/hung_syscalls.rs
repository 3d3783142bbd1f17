//! `hung` on the receive syscalls besides `recvmsg` that README's row names (`read` and
//! `recvmmsg` on a UDP socket) and on a TCP reader blocked in `read`: the one-shot run finds each
//! through procfs (`current_fd`), `hung --follow` started before the receive records it at syscall
//! entry (`exact`, the tracepoint set forced so that the answer is the same on every kernel).
//! Which syscall the thread sleeps in is checked against the kernel's own
//! `/proc/self/task/TID/syscall` before ifsock is asked.
use std::{
    os::fd::{AsRawFd, IntoRawFd},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Result;
use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// The receive call a [`Blocked`] thread sleeps in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// `read(2)` on a UDP socket.
    UdpRead,
    /// `recvmmsg(2)` for one message, no timeout, on a UDP socket.
    UdpRecvmmsg,
    /// `read(2)` on the accepted end of a loopback TCP connection.
    TcpRead,
}

impl Call {
    fn nr(self) -> i64 {
        match self {
            Call::UdpRead | Call::TcpRead => libc::SYS_read,
            Call::UdpRecvmmsg => libc::SYS_recvmmsg,
        }
    }

    /// The syscall name ifsock prints (the kernel's name for `nr`).
    fn name(self) -> &'static str {
        match self {
            Call::UdpRead | Call::TcpRead => "read",
            Call::UdpRecvmmsg => "recvmmsg",
        }
    }

    fn protocol(self) -> &'static str {
        if self == Call::TcpRead { "tcp" } else { "udp" }
    }
}

/// A thread of this process blocked in one receive call on a loopback socket inside a netns.
/// `Drop` shuts the socket down (which wakes the thread) and closes every fd it holds.
struct Blocked {
    tid: u32,
    /// The fd the thread receives on.
    fd: i32,
    /// The local port of that socket.
    port: u16,
    /// The TCP peer (client end), kept open so that the connection stays established.
    peer: Option<std::net::TcpStream>,
    done: mpsc::Receiver<isize>,
}

impl Blocked {
    /// Binds (or connects) in `ns`, starts the thread, and returns once procfs shows it asleep
    /// in the call (`/proc/self/task/TID/syscall` first field, state `S`).
    fn start(ns: &Netns, call: Call) -> Result<Self> {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (fd, port, peer) = ns.run(move || -> Result<(i32, u16, Option<std::net::TcpStream>)> {
            let (fd, port, peer) = match call {
                Call::TcpRead => {
                    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
                    let (server, _) = listener.accept()?;
                    let port = server.local_addr()?.port();
                    (server.into_raw_fd(), port, Some(client))
                }
                Call::UdpRead | Call::UdpRecvmmsg => {
                    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
                    let port = s.local_addr()?.port();
                    (s.into_raw_fd(), port, None)
                }
            };
            std::thread::spawn(move || {
                let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
                let mut buf = [0u8; 512];
                let n = match call {
                    // SAFETY: fd and buf are valid for the call.
                    Call::UdpRead | Call::TcpRead => unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) },
                    Call::UdpRecvmmsg => {
                        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
                        // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
                        let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        msg.msg_hdr.msg_iov = &mut iov;
                        msg.msg_hdr.msg_iovlen = 1;
                        // SAFETY: fd, msg and iov are valid for the call; no timeout.
                        unsafe { libc::recvmmsg(fd, &mut msg, 1, 0, std::ptr::null_mut()) as isize }
                    }
                };
                let _ = done_tx.send(n);
            });
            Ok((fd, port, peer))
        })??;
        let tid = tid_rx.recv()?;
        let b = Blocked { tid, fd, port, peer, done };
        wait_until(&format!("thread {tid} asleep in {}", call.name()), T, || asleep_in(tid, call.nr(), fd))?;
        Ok(b)
    }

    /// Wakes the receiver with 4 bytes (a datagram to its port, or the TCP peer's write) and
    /// returns the call's result.
    fn wake(&mut self, ns: &Netns) -> Result<isize> {
        use std::io::Write as _;
        match &mut self.peer {
            Some(peer) => peer.write_all(b"wake")?,
            None => {
                let port = self.port;
                ns.run(move || std::net::UdpSocket::bind("127.0.0.1:0")?.send_to(b"wake", ("127.0.0.1", port)))??;
            }
        }
        Ok(self.done.recv_timeout(T)?)
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // SAFETY: the fd is this receiver's; shutdown wakes a blocked receive (RCV_SHUTDOWN), and
        // the fd is closed once, here.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
            libc::close(self.fd);
        }
    }
}

/// The kernel's view: thread `tid` sleeps (`S`) in syscall `nr` on `fd`
/// (`/proc/self/task/TID/syscall`: `NR ARG0 …`, ARG0 in hex).
fn asleep_in(tid: u32, nr: i64, fd: i32) -> bool {
    let sc = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
    let mut words = sc.split_whitespace();
    let got_nr = words.next().and_then(|w| w.parse::<i64>().ok());
    let got_fd = words.next().and_then(|w| i64::from_str_radix(w.trim_start_matches("0x"), 16).ok());
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).unwrap_or("");
    got_nr == Some(nr) && got_fd == Some(i64::from(fd)) && state == "S"
}

fn row_of(rows: &[Value], tid: u32) -> Option<Value> {
    rows.iter().find(|r| r["tid"] == tid).cloned()
}

fn one_shot(ns: &Netns) -> Vec<Value> {
    let pid = std::process::id().to_string();
    ifsock_json(&["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid]).unwrap()
}

/// The one-shot run names the call, the fd and the socket: `exact` from the socket's wait queue
/// (`current_fd` from procfs where the queues cannot be read).
fn one_shot_finds(call: Call) {
    require_root();
    let ns = Netns::new().unwrap();
    let mut b = Blocked::start(&ns, call).unwrap();
    let rows = one_shot(&ns);
    let row = row_of(&rows, b.tid).unwrap_or_else(|| panic!("{call:?} receiver {} missing: {rows:#?}", b.tid));
    assert_eq!(row["syscall"], call.name(), "{row}");
    assert_eq!(row["fd"], b.fd, "{row}");
    assert_eq!(row["fd_open"], true, "{row}");
    if skip::Feature::Iterators.available().is_ok() {
        assert_eq!((row["certainty"].as_str(), row["source"].as_str()), (Some("exact"), Some("wait_queue")), "{row}");
    } else {
        assert_eq!(row["certainty"], "current_fd", "{row}");
    }
    assert_eq!(row["socket"]["protocol"], call.protocol(), "{row}");
    assert_eq!(row["socket"]["local_port"], b.port, "{row}");
    assert_eq!(row["netns"], ns.ino().unwrap(), "{row}");
    assert_eq!(b.wake(&ns).unwrap(), if call == Call::UdpRecvmmsg { 1 } else { 4 }, "the receive returns with the wake-up");
    let after = one_shot(&ns);
    assert!(row_of(&after, b.tid).is_none(), "a receiver that returned is not listed: {after:#?}");
}

#[test]
fn hung_lists_a_udp_reader_blocked_in_read() {
    one_shot_finds(Call::UdpRead);
}

#[test]
fn hung_lists_a_udp_receiver_blocked_in_recvmmsg() {
    one_shot_finds(Call::UdpRecvmmsg);
}

#[test]
fn hung_lists_a_tcp_reader_blocked_in_read() {
    one_shot_finds(Call::TcpRead);
}

/// `hung --follow --probe-set tracepoint`, running before the call starts: the syscall-entry
/// tracepoint of that call records it (`exact`, `probe` names the tracepoint, `blocked_source`
/// `syscall_entry`); the blocked time grows; the row goes when the call returns.
fn follow_records(call: Call) {
    require_root();
    let ns = Netns::new().unwrap();
    let mut h = Running::start(&["--netns", &ns.name, "hung", "--follow", "--json", "--min-blocked", "0", "--interval", "100ms", "--probe-set", "tracepoint"]).unwrap();
    let ready = h.wait_for("ready", T, |v| v["type"] == "ready").unwrap();
    assert_eq!(ready["probe_set"]["chosen"], "tracepoint", "{ready}");
    let probe = format!("tracepoint:syscalls:sys_enter_{}", call.name());
    let probes: Vec<&str> = ready["probes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let attached = format!("syscalls:sys_enter_{}", call.name());
    assert!(probes.contains(&attached.as_str()), "{attached} not attached: {ready}");
    let started = Instant::now();
    let mut b = Blocked::start(&ns, call).unwrap();
    let tid = b.tid;
    let mine = move |v: &Value| v["receivers"].as_array().and_then(|r| row_of(r, tid));
    let snap = h.wait_for("the receiver recorded", T, |v| mine(v).is_some()).unwrap();
    let row = mine(&snap).unwrap();
    assert_eq!(row["certainty"], "exact", "{row}");
    assert_eq!(row["probe"], probe.as_str(), "{row}");
    assert_eq!(row["blocked_source"], "syscall_entry", "{row}");
    assert_eq!(row["syscall"], call.name(), "{row}");
    assert_eq!(row["fd"], b.fd, "{row}");
    assert_eq!(row["socket"]["protocol"], call.protocol(), "{row}");
    assert_eq!(row["socket"]["local_port"], b.port, "{row}");
    let b1 = row["blocked_ns"].as_u64().unwrap();
    assert!(b1 <= started.elapsed().as_nanos() as u64 + 10_000_000, "blocked {b1} ns is longer than the test has run");
    h.wait_for("blocked time grows", T, |v| mine(v).is_some_and(|r| r["blocked_ns"].as_u64().is_some_and(|n| n > b1 + 100_000_000))).unwrap();
    assert!(asleep_in(b.tid, call.nr(), b.fd), "the thread is still in {} (procfs)", call.name());
    assert_eq!(b.wake(&ns).unwrap(), if call == Call::UdpRecvmmsg { 1 } else { 4 });
    h.wait_for("receiver gone after wake-up", T, |v| v["type"] == "snapshot" && mine(v).is_none()).unwrap();
    assert!(h.interrupt().unwrap().success());
}

#[test]
fn hung_follow_records_a_udp_read_at_syscall_entry() {
    follow_records(Call::UdpRead);
}

#[test]
fn hung_follow_records_a_udp_recvmmsg_at_syscall_entry() {
    follow_records(Call::UdpRecvmmsg);
}

#[test]
fn hung_follow_records_a_tcp_read_at_syscall_entry() {
    follow_records(Call::TcpRead);
}

/// A `read` on a pipe is no socket wait: never listed, even next to a socket reader.
#[test]
fn a_thread_reading_a_pipe_is_not_a_receiver() {
    require_root();
    let ns = Netns::new().unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    let fd = r.as_raw_fd();
    let (tid_tx, tid_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
        let mut buf = [0u8; 8];
        // SAFETY: fd and buf are valid; the pipe's read end lives until the join below.
        unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
    });
    let tid = tid_rx.recv().unwrap();
    wait_until("the pipe reader asleep in read", T, || asleep_in(tid, libc::SYS_read, fd)).unwrap();
    let mut b = Blocked::start(&ns, Call::UdpRead).unwrap();
    let rows = one_shot(&ns);
    assert!(row_of(&rows, b.tid).is_some(), "the socket reader is listed: {rows:#?}");
    assert!(row_of(&rows, tid).is_none(), "the pipe reader is not: {rows:#?}");
    nix::unistd::write(&w, b"x").unwrap();
    assert_eq!(reader.join().unwrap(), 1);
    assert_eq!(b.wake(&ns).unwrap(), 4);
    drop(r);
}

