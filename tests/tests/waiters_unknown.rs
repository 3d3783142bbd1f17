//! The two waits README says ifsock's `/proc` fallback (`IFSOCK_WAITER_SOURCE=proc`) cannot tie to one socket, and how it says so (`via:
//! "unknown"` with a `reason`, on every socket the process holds):
//! - a thread in `io_uring_enter` waiting for an `IORING_OP_RECV` on a UDP socket (raw io_uring
//!   syscalls: the ring, one SQE, `IORING_ENTER_GETEVENTS`);
//! - a `poll` whose set changes while ifsock reads it. The race is forced, not hoped for: the
//!   `pollfd` page is registered with userfaultfd and emptied (`MADV_DONTNEED`), so ifsock's
//!   `process_vm_readv` of it stops in a page fault this test is told about; the thread is then
//!   made to leave that `poll` and wait in another one on another socket, and only then is the
//!   fault resolved. A reader that did not look at `syscall` again would report the old set.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, ensure, Result};
use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const PAGE: usize = 4096;

/// The kernel's view of thread `tid` of this process: asleep (`S`) in syscall `nr`, with its
/// arguments (`/proc/self/task/TID/syscall`: `NR ARG0 … ARG5 SP PC`, arguments in hex).
fn asleep_in(tid: u32, nr: i64) -> Option<Vec<u64>> {
    let sc = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next())?;
    let mut words = sc.split_whitespace();
    if words.next()?.parse::<i64>().ok()? != nr || state != "S" {
        return None;
    }
    Some(words.take(6).filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok()).collect())
}

fn waiters_of(row: &Value, tid: u32) -> Vec<Value> {
    row["waiters"].as_array().map(|w| w.iter().filter(|w| w["tid"] == tid).cloned().collect()).unwrap_or_default()
}

// --- io_uring, by raw syscalls (include/uapi/linux/io_uring.h) ---

/// `IORING_OFF_SQ_RING`, `IORING_OFF_CQ_RING`, `IORING_OFF_SQES`: mmap offsets of the rings.
const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_CQ_RING: i64 = 0x800_0000;
const IORING_OFF_SQES: i64 = 0x1000_0000;
/// `IORING_OP_RECV` (5.6).
const IORING_OP_RECV: u8 = 27;
/// `IORING_ENTER_GETEVENTS`.
const IORING_ENTER_GETEVENTS: u64 = 1;

/// A mapping removed on drop.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(fd: i32, len: usize, offset: i64) -> Result<Self> {
        // SAFETY: a fresh shared mapping of the ring fd at a documented offset.
        let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_POPULATE, fd, offset) };
        if addr == libc::MAP_FAILED {
            bail!("mmap of the io_uring ring at {offset:#x}: {}", std::io::Error::last_os_error());
        }
        Ok(Mapping { addr: addr.cast(), len })
    }

    /// The u32 at byte `off`, atomically (the kernel writes it concurrently).
    fn u32_at(&self, off: u32) -> &std::sync::atomic::AtomicU32 {
        assert!(off as usize + 4 <= self.len);
        // SAFETY: in bounds, 4-byte aligned ring fields (the kernel's offsets).
        unsafe { &*self.addr.add(off as usize).cast::<std::sync::atomic::AtomicU32>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: this mapping, unmapped once.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

// SAFETY: the mappings are used by one thread at a time (moved into the waiting thread).
unsafe impl Send for Mapping {}

/// An io_uring instance with one `IORING_OP_RECV` queued on `sock`, not yet submitted.
struct RecvRing {
    ring: OwnedFd,
    _sq: Mapping,
    cq: Mapping,
    _sqes: Mapping,
    cq_head: u32,
    cq_tail: u32,
    cqes: u32,
    _buf: Box<[u8; 64]>,
}

impl RecvRing {
    fn new(sock: i32) -> Result<Self> {
        // struct io_uring_params: 10 u32 (sq_entries … resv[3]), io_sqring_offsets (10 u32),
        // io_cqring_offsets (10 u32): 120 bytes.
        let mut p = [0u32; 30];
        // SAFETY: p is a valid, zeroed io_uring_params.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, p.as_mut_ptr()) };
        if fd < 0 {
            bail!("io_uring_setup: {} (is io_uring disabled? /proc/sys/kernel/io_uring_disabled)", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned here.
        let ring = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let (sq_entries, cq_entries) = (p[0], p[1]);
        let (sq_tail, sq_mask, sq_array) = (p[11], p[12], p[16]);
        let (cq_head, cq_tail, cqes) = (p[20], p[21], p[25]);
        let sq = Mapping::new(fd as i32, (sq_array + sq_entries * 4) as usize, IORING_OFF_SQ_RING)?;
        let cq = Mapping::new(fd as i32, (cqes + cq_entries * 16) as usize, IORING_OFF_CQ_RING)?;
        let sqes = Mapping::new(fd as i32, sq_entries as usize * 64, IORING_OFF_SQES)?;
        let mut buf = Box::new([0u8; 64]);
        // struct io_uring_sqe (64 bytes): opcode, flags, ioprio, fd, off, addr, len, msg_flags,
        // user_data.
        let mut sqe = [0u8; 64];
        sqe[0] = IORING_OP_RECV;
        sqe[4..8].copy_from_slice(&sock.to_ne_bytes());
        sqe[16..24].copy_from_slice(&(buf.as_mut_ptr() as u64).to_ne_bytes());
        sqe[24..28].copy_from_slice(&(buf.len() as u32).to_ne_bytes());
        sqe[32..40].copy_from_slice(&0x1f5u64.to_ne_bytes());
        let tail = sq.u32_at(sq_tail).load(std::sync::atomic::Ordering::Acquire);
        let slot = tail & sq.u32_at(sq_mask).load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: slot < sq_entries; the SQE array holds sq_entries 64-byte entries.
        unsafe { std::ptr::copy_nonoverlapping(sqe.as_ptr(), sqes.addr.add(slot as usize * 64), 64) };
        sq.u32_at(sq_array + slot * 4).store(slot, std::sync::atomic::Ordering::Relaxed);
        sq.u32_at(sq_tail).store(tail.wrapping_add(1), std::sync::atomic::Ordering::Release);
        Ok(RecvRing { ring, _sq: sq, cq, _sqes: sqes, cq_head, cq_tail, cqes, _buf: buf })
    }

    /// Submits the receive and waits for its completion (`io_uring_enter(fd, 1, 1,
    /// IORING_ENTER_GETEVENTS)`); returns the completion's `res` (bytes received, or -errno).
    fn submit_and_wait(&self) -> Result<i32> {
        // SAFETY: valid ring fd; no signal mask.
        let n = unsafe {
            libc::syscall(libc::SYS_io_uring_enter, self.ring.as_raw_fd(), 1u32, 1u32, IORING_ENTER_GETEVENTS as u32, std::ptr::null::<u8>(), 0usize)
        };
        ensure!(n == 1, "io_uring_enter submitted {n}: {}", std::io::Error::last_os_error());
        let head = self.cq.u32_at(self.cq_head).load(std::sync::atomic::Ordering::Acquire);
        let tail = self.cq.u32_at(self.cq_tail).load(std::sync::atomic::Ordering::Acquire);
        ensure!(tail != head, "io_uring_enter returned without a completion");
        // struct io_uring_cqe: user_data u64, res i32, flags u32; the mask is cq_entries - 1.
        let cq_entries = (self.cq.len as u32 - self.cqes) / 16;
        let off = self.cqes + (head & (cq_entries - 1)) * 16;
        let user_data = u64::from(self.cq.u32_at(off).load(std::sync::atomic::Ordering::Relaxed))
            | (u64::from(self.cq.u32_at(off + 4).load(std::sync::atomic::Ordering::Relaxed)) << 32);
        ensure!(user_data == 0x1f5, "a completion of another request: {user_data:#x}");
        Ok(self.cq.u32_at(off + 8).load(std::sync::atomic::Ordering::Relaxed) as i32)
    }
}

/// A UDP socket in `ns` whose `shutdown` in `Drop` ends any receive still waiting on it.
struct Sock(std::net::UdpSocket);

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: our own socket; SHUT_RD completes a pending receive with 0 bytes.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

#[test]
fn io_uring_waiter_is_unknown_on_every_socket_of_its_process_and_in_hungs_event_loops() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ia"), unique("ib"));
    ns.veth(&a, &b, Some("10.91.0.1/24")).unwrap();
    let (sock, other) = ns.run(|| -> Result<_> { Ok((Sock(std::net::UdpSocket::bind("10.91.0.1:0")?), Sock(std::net::UdpSocket::bind("127.0.0.1:0")?))) }).unwrap().unwrap();
    let port = sock.0.local_addr().unwrap().port();
    let ring = RecvRing::new(sock.0.as_raw_fd()).unwrap();
    let ring_fd = ring.ring.as_raw_fd();
    let (tid_tx, tid_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
        ring.submit_and_wait()
    });
    let tid = tid_rx.recv().unwrap();
    wait_until("the thread asleep in io_uring_enter(GETEVENTS) on the ring", T, || {
        asleep_in(tid, libc::SYS_io_uring_enter).is_some_and(|args| args.first() == Some(&(ring_fd as u64)) && args.get(3).is_some_and(|f| f & IORING_ENTER_GETEVENTS != 0))
    })
    .unwrap();

    let pid = std::process::id();
    // The socket's own wait queue holds the ring's poll entry (`io_poll_wake`), not the thread:
    // named by its wake function, with no thread.
    let rows = rows_of(&socket_rows(&ns, false).unwrap(), pid);
    let row = rows.iter().find(|r| r["local_port"] == port).unwrap_or_else(|| panic!("udp :{port} missing: {rows:#?}"));
    assert!(
        row["waiters"].as_array().unwrap().iter().any(|w| w["source"] == "wait_queue" && w["via"] == "unknown" && w["reason"].as_str().is_some_and(|r| r.contains("io_poll_wake"))),
        "the ring's entry on the socket's wait queue: {row}"
    );
    // The /proc fallback ties the thread in io_uring_enter to every socket of its process.
    let rows = rows_of(&socket_rows_from_proc(&ns).unwrap(), pid);
    for p in [port, other.0.local_addr().unwrap().port()] {
        let row = rows.iter().find(|r| r["local_port"] == p).unwrap_or_else(|| panic!("udp :{p} missing: {rows:#?}"));
        let w = waiters_of(row, tid);
        assert_eq!(w.len(), 1, "the io_uring waiter once per socket of its process: {row}");
        assert_eq!(w[0]["via"], "unknown", "{row}");
        assert_eq!(w[0]["syscall"], "io_uring_enter", "{row}");
        assert!(w[0]["fd"].is_null() && w[0]["epfd"].is_null(), "no fd can be named: {row}");
        assert!(w[0]["reason"].as_str().is_some_and(|r| !r.is_empty()), "an uncertain entry carries its reason: {row}");
    }

    // Stranded (its address removed), the socket shows in hung's event loops with the same
    // uncertain waiter.
    ns.ip(&["addr", "del", "10.91.0.1/24", "dev", &a]).unwrap();
    // (hung's event loops come from the wait queues too, where the ring's entry names no
    // thread: the /proc fallback is asked.)
    let out = Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "hung", "--json", "--pid", &pid.to_string()])
        .env("IFSOCK_WAITER_SOURCE", "proc")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hung: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let l = hung
        .iter()
        .find(|r| r["type"] == "event_loop" && r["tid"] == tid && r["local_port"] == port)
        .unwrap_or_else(|| panic!("io_uring waiter missing from hung's event loops: {hung:#?}"));
    assert_eq!(l["via"], "unknown", "{l}");
    assert_eq!(l["syscall"], "io_uring_enter", "{l}");
    assert_eq!(l["stranded"]["reason"], "address_gone", "{l}");
    assert!(hung.iter().all(|r| r["local_port"] != other.0.local_addr().unwrap().port()), "the healthy socket is no event loop's: {hung:#?}");

    // The receive really was pending in the ring: a datagram completes it.
    ns.ip(&["addr", "add", "10.91.0.1/24", "dev", &a]).unwrap();
    ns.run(|| std::net::UdpSocket::bind("10.91.0.1:0")?.send_to(b"wake", ("10.91.0.1", port))).unwrap().unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), 4, "the IORING_OP_RECV completes with the datagram");
}

// --- userfaultfd (include/uapi/linux/userfaultfd.h) ---

const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)` (24 bytes).
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)` (32 bytes).
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)` (40 bytes).
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// An anonymous private page, unmapped on drop.
struct Page(*mut u8);

impl Page {
    fn new() -> Result<Self> {
        // SAFETY: a fresh anonymous mapping.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        ensure!(p != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        Ok(Page(p.cast()))
    }

    fn addr(&self) -> u64 {
        self.0 as u64
    }

    fn protect(&self, prot: i32) -> Result<()> {
        // SAFETY: our page.
        ensure!(unsafe { libc::mprotect(self.0.cast(), PAGE, prot) } == 0, "mprotect: {}", std::io::Error::last_os_error());
        Ok(())
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: our page, unmapped once.
        unsafe { libc::munmap(self.0.cast(), PAGE) };
    }
}

fn pollfd_page(fd: i32) -> Result<Page> {
    let page = Page::new()?;
    // SAFETY: the page is writable and large enough for one pollfd.
    unsafe { page.0.cast::<libc::pollfd>().write(libc::pollfd { fd, events: libc::POLLIN, revents: 0 }) };
    Ok(page)
}

fn uffd_ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: &mut [u64]) -> Result<()> {
    // SAFETY: arg is the request's struct, laid out as u64 words.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg.as_mut_ptr()) };
    ensure!(rc == 0, "userfaultfd ioctl {req:#x}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// A userfaultfd watching `page` for missing-page faults.
fn userfaultfd_on(page: &Page) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    ensure!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    uffd_ioctl(&fd, UFFDIO_API, &mut [UFFD_API, 0, 0])?;
    uffd_ioctl(&fd, UFFDIO_REGISTER, &mut [page.addr(), PAGE as u64, UFFDIO_REGISTER_MODE_MISSING, 0])?;
    Ok(fd)
}

/// Waits (bounded) for a page fault on `page` and returns the faulting address.
fn await_fault(uffd: &OwnedFd, page: &Page) -> Result<u64> {
    let mut pfd = libc::pollfd { fd: uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, T.as_millis() as i32) };
    ensure!(n == 1, "no page fault on the pollfd page within {T:?}: ifsock never read the poll set from memory");
    let mut msg = [0u8; 32];
    // SAFETY: struct uffd_msg is 32 bytes.
    let r = unsafe { libc::read(uffd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
    ensure!(r == 32, "reading the userfaultfd: {}", std::io::Error::last_os_error());
    ensure!(msg[0] == UFFD_EVENT_PAGEFAULT, "userfaultfd event {:#x}, not a page fault", msg[0]);
    let addr = u64::from_ne_bytes(msg[16..24].try_into()?);
    ensure!(addr & !(PAGE as u64 - 1) == page.addr(), "fault at {addr:#x}, not on the page {:#x}", page.addr());
    Ok(addr)
}

#[test]
fn poll_set_changed_while_it_was_read_is_unknown_not_the_old_set() {
    require_root();
    let ns = Netns::new().unwrap();
    let (first, second) = ns.run(|| -> Result<_> { Ok((Sock(std::net::UdpSocket::bind("127.0.0.1:0")?), Sock(std::net::UdpSocket::bind("127.0.0.1:0")?))) }).unwrap().unwrap();
    let (p1, p2) = (first.0.local_addr().unwrap().port(), second.0.local_addr().unwrap().port());
    let (fd1, fd2) = (first.0.as_raw_fd(), second.0.as_raw_fd());
    // The first poll waits on `first` from page `old`, the second on `second` from page `new`.
    let old = pollfd_page(fd1).unwrap();
    let new = pollfd_page(fd2).unwrap();
    let uffd = userfaultfd_on(&old).unwrap();
    let (old_addr, new_addr) = (old.addr(), new.addr());
    let (tid_tx, tid_rx) = mpsc::channel();
    let poller = std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
        // SAFETY: the pages outlive the thread (joined below); the kernel copies each array at entry.
        let r1 = unsafe { libc::poll(old_addr as *mut libc::pollfd, 1, 60_000) };
        let e1 = std::io::Error::last_os_error().raw_os_error();
        let mut buf = [0u8; 8];
        // SAFETY: fd1 is open until the join; consumes the datagram that woke the first poll.
        let got = unsafe { libc::recv(fd1, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        // SAFETY: as above.
        let r2 = unsafe { libc::poll(new_addr as *mut libc::pollfd, 1, 60_000) };
        (r1, e1, got, r2)
    });
    let tid = tid_rx.recv().unwrap();
    wait_until("the poller in its first poll", T, || asleep_in(tid, libc::SYS_poll).is_some_and(|a| a.first() == Some(&old_addr))).unwrap();
    // The kernel has its own copy of the array; the user page is emptied, so the next read of it
    // (ifsock's) faults into this test.
    // SAFETY: our page; its next access faults to the userfaultfd.
    assert_eq!(unsafe { libc::madvise(old.0.cast(), PAGE, libc::MADV_DONTNEED) }, 0);

    let pid = std::process::id();
    // The /proc fallback reads the set from memory (the wait queue needs no read, no race).
    let sockets = Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "sockets", "--json"])
        .env("IFSOCK_WAITER_SOURCE", "proc")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Whatever happens below, ifsock must not stay stuck in our fault: resolve it on every path.
    let result = (|| -> Result<()> {
        await_fault(&uffd, &old)?;
        // ifsock has read `syscall` (first poll) and waits on the page. The thread now leaves that
        // poll (the revents write-back hits PROT_NONE: EFAULT, with no second fault) and waits in
        // the second one, on the other socket.
        old.protect(libc::PROT_NONE)?;
        ns.run(|| std::net::UdpSocket::bind("127.0.0.1:0")?.send_to(b"wake", ("127.0.0.1", p1)))??;
        wait_until("the poller in its second poll", T, || asleep_in(tid, libc::SYS_poll).is_some_and(|a| a.first() == Some(&new_addr)))?;
        old.protect(libc::PROT_READ | libc::PROT_WRITE)
    })();
    // Resolve the fault with the old array's contents: what a reader that trusted its first look
    // would take as the set.
    let src = pollfd_page(fd1).unwrap();
    let mut copy = [old.addr(), src.addr(), PAGE as u64, 0, 0];
    let copied = uffd_ioctl(&uffd, UFFDIO_COPY, &mut copy);
    let out = sockets.wait_with_output().unwrap();
    result.unwrap();
    copied.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rows = rows_of(&rows, pid);
    for p in [p1, p2] {
        let row = rows.iter().find(|r| r["local_port"] == p).unwrap_or_else(|| panic!("udp :{p} missing: {rows:#?}"));
        let w = waiters_of(row, tid);
        assert_eq!(w.len(), 1, "the poller once per socket of its process, never as a poll on the old set: {row}");
        assert_eq!(w[0]["via"], "unknown", "{row}");
        assert_eq!(w[0]["syscall"], "poll", "{row}");
        assert_eq!(w[0]["reason"], "the poll set changed while it was read", "{row}");
        assert!(w[0]["fd"].is_null(), "{row}");
    }

    ns.run(|| std::net::UdpSocket::bind("127.0.0.1:0")?.send_to(b"wake", ("127.0.0.1", p2))).unwrap().unwrap();
    let (r1, e1, got, r2) = poller.join().unwrap();
    assert_eq!((r1, e1), (-1, Some(libc::EFAULT)), "the first poll ended writing revents to the PROT_NONE page");
    assert_eq!(got, 4, "the datagram that woke the first poll");
    assert_eq!(r2, 1, "the second poll saw its socket readable");
    drop((first, second, src));
}
