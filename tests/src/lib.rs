//! Helpers for ifsock's privileged integration tests: unique network namespaces and links that
//! are removed in `Drop` (even when a test fails), sockets created inside a namespace, and a
//! line-oriented reader for long-running ifsock subcommands.
use std::{
    io::{BufRead, BufReader},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

pub mod skip;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name, `<prefix><pid>-<n>`: the pid in 5 base-36 digits (fixed width, so
/// every pid up to `pid_max`'s limit 2^22 fits and two processes never share a name; printing
/// the bare decimal pid let pid 1234 with n 56 meet pid 12345 with n 6), then a per-process
/// counter in base 36. At most 15 bytes (IFNAMSIZ - 1) with a prefix of up to 5 bytes and
/// fewer than 36^4 names per process.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}-{}", base36(std::process::id(), 5), base36(n, 1));
    assert!(name.len() <= 15, "interface name too long: {name}");
    name
}

/// `v` in base 36 (`0-9a-z`), zero-padded to at least `width` digits.
fn base36(mut v: u32, width: usize) -> String {
    let mut digits = Vec::new();
    while v > 0 || digits.len() < width {
        digits.push(char::from_digit(v % 36, 36).unwrap_or('0'));
        v /= 36;
    }
    digits.iter().rev().collect()
}

/// The ifsock binary under test: `$IFSOCK_BIN`, else `target/debug/ifsock`.
pub fn ifsock_bin() -> PathBuf {
    std::env::var_os("IFSOCK_BIN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ifsock")
    })
}

/// Fails the test unless running as root: the privileged tests are the real proof and must
/// not pass silently where they cannot run.
pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "privileged test: run as root (cargo xtask test does in CI)");
}

/// Runs a command and fails with its stderr when it fails.
pub fn sh(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

/// A network namespace created for one test and deleted on drop.
pub struct Netns {
    /// Name under /run/netns.
    pub name: String,
}

impl Netns {
    /// `ip netns add <unique>` and brings `lo` up inside.
    pub fn new() -> Result<Self> {
        let name = unique("ifsk");
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// ifindex of a link in this namespace.
    pub fn ifindex(&self, link: &str) -> Result<u32> {
        let out = self.ip(&["-j", "link", "show", "dev", link])?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        v[0]["ifindex"].as_u64().map(|i| i as u32).context("no ifindex in ip -j output")
    }

    /// A veth pair `a`/`b` inside this namespace, `a` up with `addr` (CIDR), `b` up.
    pub fn veth(&self, a: &str, b: &str, addr: Option<&str>) -> Result<()> {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        if let Some(addr) = addr {
            self.ip(&["addr", "add", addr, "dev", a])?;
        }
        self.ip(&["link", "set", a, "up"])?;
        self.ip(&["link", "set", b, "up"])?;
        Ok(())
    }

    /// Runs `f` on a thread inside this namespace (sockets created there stay in it).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
        })
    }

    /// Inode of this namespace.
    pub fn ino(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(format!("/run/netns/{}", self.name))?.ino())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes every link created inside it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A socket option call on a raw fd.
pub fn setsockopt(fd: &impl AsRawFd, level: i32, name: i32, value: &[u8]) -> Result<()> {
    // SAFETY: value is a valid buffer of value.len() bytes.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), value.len() as u32) };
    if rc != 0 {
        bail!("setsockopt({level}, {name}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_BINDTODEVICE` to `dev`.
pub fn bind_to_device(fd: &impl AsRawFd, dev: &str) -> Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes())
}

/// `IP_PKTINFO` on.
pub fn set_pktinfo(fd: &impl AsRawFd) -> Result<()> {
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, &1i32.to_ne_bytes())
}

/// Runs ifsock to completion; with `--json`, each JSON line of its stdout goes to
/// [`record_json`].
pub fn ifsock(args: &[&str]) -> Result<Output> {
    let out = Command::new(ifsock_bin()).args(args).output().with_context(|| format!("running ifsock {args:?}"))?;
    if args.contains(&"--json") {
        record_json_lines(&command_of(args), &String::from_utf8_lossy(&out.stdout));
    }
    Ok(out)
}

/// ifsock's subcommands, as the record log tags them.
const SUBCOMMANDS: &[&str] = &["abort", "agent", "doctor", "hung", "journal", "sockets", "teardown", "tun", "watch"];

/// The subcommand in ifsock's `args` (`--netns blue sockets --json` → `sockets`); `ifsock`
/// when none is there.
pub fn command_of<S: AsRef<str>>(args: &[S]) -> String {
    args.iter().map(AsRef::as_ref).find(|a| SUBCOMMANDS.contains(a)).unwrap_or("ifsock").to_string()
}

/// Appends `record`, tagged with the `command` that produced it, to the file named by
/// `$IFSOCK_RECORD_LOG` (nothing when unset): one line `{"command":"sockets","record":{…}}`.
/// `cargo xtask test` sets it and validates the log against docs/schema/ at the end
/// (xtask/scripts/validate_records.py). The file is opened `O_APPEND` and each line is one
/// `write(2)`, so tests in parallel processes never interleave within a line. A record already
/// logged by this process (an agent's journal polled again) is not logged twice.
pub fn record_json(command: &str, record: &Value) {
    use std::io::Write as _;
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
    let Some(path) = std::env::var_os("IFSOCK_RECORD_LOG") else { return };
    let mut line = serde_json::json!({ "command": command, "record": record }).to_string();
    {
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.get_or_insert_with(Default::default).insert(line.clone()) {
            return;
        }
    }
    line.push('\n');
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
    let written = file.and_then(|mut f| f.write(line.as_bytes()).map(|n| (n, line.len())));
    match written {
        Ok((n, len)) if n == len => {}
        other => panic!("appending a record to $IFSOCK_RECORD_LOG {}: {other:?}", PathBuf::from(path).display()),
    }
}

/// [`record_json`] for each line of `text` that is a JSON value (ifsock's `--json` stdout,
/// or a journal file).
pub fn record_json_lines(command: &str, text: &str) {
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            record_json(command, &v);
        }
    }
}

/// Parses JSON lines of a finished ifsock run, failing with stderr when it failed.
pub fn ifsock_json(args: &[&str]) -> Result<Vec<Value>> {
    let out = ifsock(args)?;
    if !out.status.success() {
        bail!("ifsock {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// A running ifsock whose stdout JSON lines are read on a thread.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Running {
    /// Starts ifsock with piped stdout.
    pub fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(ifsock_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting ifsock")?;
        let stdout: ChildStdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Only `--json` output is a record (a human line may happen to parse as JSON).
        let command = args.contains(&"--json").then(|| command_of(args));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if let Some(command) = &command {
                        record_json(command, &v);
                    }
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Running { child, lines: rx, seen: Vec::new() })
    }

    /// Waits for the next line matching `pred`; `timeout` is a failure bound, not a delay.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, mut pred: impl FnMut(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("timed out after {timeout:?} waiting for {what}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("ifsock exited while waiting for {what}: {:?}", self.child.try_wait()),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT (Ctrl-C) and waits for exit; returns the exit status.
    pub fn interrupt(&mut self) -> Result<std::process::ExitStatus> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGINT)?;
        Ok(self.child.wait()?)
    }

    /// Every line read so far plus every remaining one (call after exit for the whole output).
    pub fn rest(&mut self) -> Vec<Value> {
        let more: Vec<Value> = self.lines.try_iter().collect();
        self.seen.extend(more);
        self.seen.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wraps a raw fd that the test owns.
pub fn owned(fd: i32) -> OwnedFd {
    // SAFETY: the caller transfers ownership of a valid fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A thread blocked in `recvmsg(2)` on a UDP socket, created inside a namespace.
///
/// `Drop` releases the thread and the socket: while the fd is open it is shut down
/// (`shutdown(SHUT_RDWR)` wakes a recvmsg on an unconnected UDP socket too: `inet_shutdown` sets
/// `RCV_SHUTDOWN` and calls `sk_state_change`, although it returns `ENOTCONN`), then closed;
/// after [`BlockedReceiver::close_fd`] the thread is woken with a datagram sent from its own
/// netns to its bound address. The thread is joined once it returns (bounded wait). A socket
/// that no fd and no datagram can reach any more (fd closed and bound to a device) keeps its
/// thread blocked until the test process exits: that is the state the test built.
pub struct BlockedReceiver {
    /// The receiving thread's tid.
    pub tid: u32,
    /// The socket's fd (owned by the test until [`BlockedReceiver::close_fd`]).
    pub fd: i32,
    /// The local port.
    pub port: u16,
    done: mpsc::Receiver<isize>,
    /// The bound address, for the wake-up datagram in `Drop`.
    local: std::net::SocketAddr,
    /// Bound to a device (`SO_BINDTODEVICE`): a datagram from loopback never reaches it.
    device_bound: bool,
    thread: Option<std::thread::JoinHandle<()>>,
    fd_closed: AtomicBool,
    returned: AtomicBool,
}

impl BlockedReceiver {
    /// Binds `addr` in `ns`, optionally with IP_PKTINFO or SO_BINDTODEVICE, and starts a thread
    /// blocked in `recvmsg`. Returns once procfs shows the thread inside recvmsg (`libc::SYS_recvmsg`).
    pub fn start(ns: &Netns, addr: &str, pktinfo: bool, device: Option<&str>) -> Result<Self> {
        use std::os::fd::IntoRawFd;
        let addr = addr.to_string();
        let device = device.map(str::to_string);
        let device_bound = device.is_some();
        let (tid_tx, tid_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        // The receiving thread is spawned inside the namespace, like a service living there.
        let (fd, local, thread) = ns.run(move || -> Result<(i32, std::net::SocketAddr, std::thread::JoinHandle<()>)> {
            let s = std::net::UdpSocket::bind(&addr)?;
            if pktinfo {
                set_pktinfo(&s)?;
            }
            if let Some(d) = &device {
                bind_to_device(&s, d)?;
            }
            let local = s.local_addr()?;
            let fd = s.into_raw_fd();
            let thread = std::thread::spawn(move || {
                let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
                let mut buf = [0u8; 512];
                let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
                // SAFETY: msghdr is plain data; zeroed is a valid empty header.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                // SAFETY: fd and buffers are valid for the call.
                let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
                let _ = done_tx.send(n);
            });
            Ok((fd, local, thread))
        })??;
        let tid = tid_rx.recv()?;
        let r = BlockedReceiver {
            tid,
            fd,
            port: local.port(),
            done,
            local,
            device_bound,
            thread: Some(thread),
            fd_closed: AtomicBool::new(false),
            returned: AtomicBool::new(false),
        };
        r.await_blocked()?;
        Ok(r)
    }

    /// Waits until the kernel reports the thread inside recvmsg (polls procfs: a kernel state,
    /// not an event; bounded to 10 s).
    fn await_blocked(&self) -> Result<()> {
        let path = format!("/proc/self/task/{}/syscall", self.tid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let sc = std::fs::read_to_string(&path).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid)).unwrap_or_default();
            let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).unwrap_or("");
            let nr = sc.split_whitespace().next().and_then(|w| w.parse::<i64>().ok());
            if nr == Some(libc::SYS_recvmsg) && state == "S" {
                return Ok(());
            }
            std::thread::yield_now();
        }
        bail!("thread {} never blocked in recvmsg", self.tid)
    }

    /// Closes the fd from another thread (the blocked recvmsg keeps the socket alive).
    pub fn close_fd(&self) {
        if !self.fd_closed.swap(true, Ordering::SeqCst) {
            // SAFETY: the fd is owned by this receiver and closed once (the flag above).
            unsafe { libc::close(self.fd) };
        }
    }

    /// Wakes the receiver by sending it a datagram inside `ns` (to 127.0.0.1 or `to`), and
    /// waits for recvmsg to return; returns its result.
    pub fn wake(&self, ns: &Netns, to: &str) -> Result<isize> {
        let to = format!("{to}:{}", self.port);
        ns.run(move || -> Result<()> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.send_to(b"wake", &to)?;
            Ok(())
        })??;
        let n = self.done.recv_timeout(Duration::from_secs(10))?;
        self.returned.store(true, Ordering::SeqCst);
        Ok(n)
    }

    /// Sends one datagram to the bound address (127.0.0.1 for a wildcard) from the receiving
    /// thread's own netns (`/proc/self/task/TID/ns/net`: the namespace object may outlive its
    /// `Netns` name).
    fn poke(&self) -> Result<()> {
        let ns = std::fs::File::open(format!("/proc/self/task/{}/ns/net", self.tid))?;
        let mut to = self.local;
        if to.ip().is_unspecified() {
            to.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                std::net::UdpSocket::bind("0.0.0.0:0")?.send_to(b"drop", to)?;
                Ok(())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("poke thread panicked"))?
        })
    }
}

impl Drop for BlockedReceiver {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        let fd_open = !self.fd_closed.load(Ordering::SeqCst);
        let mut returned = self.returned.load(Ordering::SeqCst) || thread.is_finished();
        if !returned {
            let woken = if fd_open {
                // SAFETY: the fd is still owned by this receiver (not closed: the flag).
                unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) == 0 || nix::errno::Errno::last() == nix::errno::Errno::ENOTCONN }
            } else {
                !self.device_bound && self.poke().is_ok()
            };
            returned = woken && self.done.recv_timeout(Duration::from_secs(5)).is_ok();
        }
        if returned {
            let _ = thread.join();
        }
        if fd_open {
            // SAFETY: as above; closed once, here.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// Socket inode of an fd (`st_ino`, the `N` of `socket:[N]`).
pub fn socket_inode(fd: &impl std::os::fd::AsFd) -> Result<u64> {
    let st = nix::sys::stat::fstat(fd).context("fstat on a socket")?;
    Ok(st.st_ino)
}

/// Polls `cond` until it holds; `timeout` is a failure bound. For kernel state that has no
/// notification (a thread reaching its wait in a syscall).
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// True when a thread of this process sleeps in `recvfrom` on a socket with inode `ino`
/// (`/proc/self/task/*/syscall`: `NR FD …`).
pub fn thread_blocked_in_recvfrom(ino: u64) -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return false };
    tasks.flatten().any(|t| {
        let Ok(line) = std::fs::read_to_string(t.path().join("syscall")) else { return false };
        let mut words = line.split_whitespace();
        let nr = words.next().and_then(|w| w.parse::<i64>().ok());
        let fd = words.next().and_then(|w| i64::from_str_radix(w.trim_start_matches("0x"), 16).ok());
        match (nr, fd) {
            (Some(nr), Some(fd)) if nr == libc::SYS_recvfrom => std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .is_ok_and(|p| p.to_string_lossy() == format!("socket:[{ino}]")),
            _ => false,
        }
    })
}

/// `ip -n NS monitor link` with its lines read on a thread, for waiting on link changes made
/// by another process.
pub struct LinkMonitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl LinkMonitor {
    /// Starts the monitor and proves it is subscribed: it toggles `probe_link`'s MTU and waits
    /// for that notification (subscribe first, then act).
    pub fn start(ns: &Netns, probe_link: &str) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["-n", &ns.name, "-o", "monitor", "link"])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting ip monitor link")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mon = LinkMonitor { child, lines: rx };
        for mtu in 1400..1500 {
            ns.ip(&["link", "set", probe_link, "mtu", &mtu.to_string()])?;
            let want = format!("mtu {mtu} ");
            if mon.wait_for("monitor subscription", Duration::from_millis(200), |l| l.contains(&want)).is_ok() {
                return Ok(mon);
            }
        }
        bail!("ip monitor link never reported an MTU change of {probe_link}")
    }

    /// Waits for the next line matching `pred`; `timeout` is a failure bound.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return Ok(l),
                Ok(_) => continue,
                Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }
}

impl Drop for LinkMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `IFF_TUN` (include/uapi/linux/if_tun.h).
pub const IFF_TUN: i16 = 0x0001;
/// `IFF_NO_PI`.
pub const IFF_NO_PI: i16 = 0x1000;
/// `IFF_MULTI_QUEUE`.
pub const IFF_MULTI_QUEUE: i16 = 0x0100;
/// `IFF_DETACH_QUEUE` (`TUNSETQUEUE`).
pub const IFF_DETACH_QUEUE: i16 = 0x0400;
/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETQUEUE` = `_IOW('T', 217, int)`.
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;

fn tun_ioctl(fd: &impl AsRawFd, request: libc::c_ulong, name: &str, flags: i16) -> Result<()> {
    // struct ifreq: ifr_name[16], then the union whose first member here is short ifr_flags.
    let mut ifr = [0u8; 40];
    if name.len() > 15 {
        bail!("interface name {name:?} too long");
    }
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: ifr is a valid 40-byte struct ifreq for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, ifr.as_mut_ptr()) };
    if rc != 0 {
        bail!("ioctl({request:#x}) on {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `/dev/net/tun` and attaches it to (or creates) device `name` with `flags`
/// (`TUNSETIFF`); the device lives in the calling thread's netns.
pub fn tun_queue(name: &str, flags: i16) -> Result<OwnedFd> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").context("opening /dev/net/tun")?;
    let fd = OwnedFd::from(file);
    tun_ioctl(&fd, TUNSETIFF, name, flags)?;
    Ok(fd)
}

/// Detaches the queue of a multi-queue tun fd (`TUNSETQUEUE` with `IFF_DETACH_QUEUE`).
pub fn tun_detach_queue(fd: &impl AsRawFd) -> Result<()> {
    tun_ioctl(fd, TUNSETQUEUE, "", IFF_DETACH_QUEUE)
}

/// A server process started in a test's namespace (`ip netns exec NS …`, which execs, so the
/// pid is the daemon's own), in the foreground, killed by pid (SIGKILL) and reaped in `Drop`.
pub struct Daemon {
    child: Child,
    /// Its stdout lines, read on a thread (for servers that print when ready).
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    /// Starts `argv` inside `ns` with stdout piped (stderr inherited, for the test log).
    pub fn start(ns: &Netns, argv: &[&str]) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {argv:?} in {}", ns.name))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Daemon { child, lines })
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix`; `timeout` is a failure bound.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => continue,
                Err(_) => bail!("{:?}: no line {prefix:?} within {timeout:?} (exited: {:?})", self.child.id(), self.child.try_wait()),
            }
        }
    }

    /// Fails when the daemon has already exited (a bad config, a port in use).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("daemon {} exited: {status}", self.child.id());
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A `nobody` process in `ns` (Debian's `/usr/bin/python3` under `setpriv`) blocked in
/// `recvfrom` on a UDP socket bound to `addr`, returned once it sleeps on the socket
/// (`wchan` `__skb_wait_for_more_packets`; the caller holds CAP_SYS_PTRACE to read it).
pub fn nobody_udp_receiver(ns: &Netns, addr: &str) -> Result<Daemon> {
    let script = format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{addr}', 0))\nprint('ready', s.getsockname()[1], flush=True)\ns.recvfrom(1)\n");
    let mut d = Daemon::start(ns, &["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c", &script])?;
    d.wait_line("ready ", Duration::from_secs(30))?;
    let pid = d.pid();
    wait_until("the nobody receiver asleep in recvfrom", Duration::from_secs(30), || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/wchan")).is_ok_and(|w| w.trim() == "__skb_wait_for_more_packets")
    })?;
    Ok(d)
}

/// A file in a fresh per-test directory under the system temp dir, removed in `Drop`.
pub struct TempFile {
    /// Its path.
    pub path: PathBuf,
}

impl TempFile {
    /// Writes `contents` to a new uniquely named file (removed also when the write fails).
    pub fn new(stem: &str, contents: &str) -> Result<Self> {
        let file = TempFile { path: std::env::temp_dir().join(format!("{}-{stem}", unique("ifsk"))) };
        std::fs::write(&file.path, contents).with_context(|| format!("writing {}", file.path.display()))?;
        Ok(file)
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A unique path under the system temp dir that nothing exists at yet; whatever the test puts
/// there (a file, or a directory tree such as a journal) is removed in `Drop`, also when the test
/// fails.
pub struct TempPath {
    /// The path.
    pub path: PathBuf,
}

impl TempPath {
    /// `<temp dir>/<unique(prefix)>-<stem>`.
    pub fn new(prefix: &str, stem: &str) -> Self {
        TempPath { path: std::env::temp_dir().join(format!("{}-{stem}", unique(prefix))) }
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir_all(&self.path);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&self.path);
            }
            Err(_) => {}
        }
    }
}

/// unbound (`/usr/sbin/unbound -d -c CONF`) serving on `addr@port` inside `ns`, with a config
/// the test writes: foreground, no privilege drop or chroot, no logging to syslog, no remote
/// control, IPv4 only, one thread (it waits in `epoll_wait` through libevent).
pub fn start_unbound(ns: &Netns, addr: &str, port: u16) -> Result<(Daemon, TempFile)> {
    let conf = TempFile::new(
        "unbound.conf",
        &format!(
            "server:\n    interface: {addr}@{port}\n    port: {port}\n    do-daemonize: no\n    username: \"\"\n    chroot: \"\"\n    directory: \"\"\n    use-syslog: no\n    logfile: \"\"\n    pidfile: \"\"\n    do-ip6: no\n    num-threads: 1\n    access-control: 0.0.0.0/0 allow\nremote-control:\n    control-enable: no\n"
        ),
    )?;
    sh(&["unbound-checkconf", conf.as_str()])?;
    let d = Daemon::start(ns, &["/usr/sbin/unbound", "-d", "-c", conf.as_str()])?;
    Ok((d, conf))
}

/// dnsmasq in the foreground inside `ns` on `port` as a DNS server only (no DHCP, no upstream
/// servers, no hosts file, no config file, no pid file, running as root; it waits in `poll`).
/// `iface`: `--bind-interfaces --interface=IFACE` (sockets bound to IFACE's addresses, and lo's);
/// `None`: the default wildcard mode (sockets on 0.0.0.0/:: with IP_PKTINFO).
pub fn start_dnsmasq(ns: &Netns, iface: Option<&str>, port: u16) -> Result<Daemon> {
    let port_arg = format!("--port={port}");
    let mut argv = vec![
        "/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
        "--pid-file=", "--user=root", "--group=root", &port_arg,
    ];
    let iface_arg;
    if let Some(i) = iface {
        iface_arg = format!("--interface={i}");
        argv.extend(["--bind-interfaces", &iface_arg]);
    }
    Daemon::start(ns, &argv)
}

/// The `sockets --json` rows of `ns` (optionally only `--stranded` ones).
pub fn socket_rows(ns: &Netns, stranded: bool) -> Result<Vec<Value>> {
    let mut args = vec!["--netns", &ns.name, "sockets", "--json"];
    if stranded {
        args.push("--stranded");
    }
    ifsock_json(&args)
}

/// The `sockets --json` rows of `ns` with waiters from the `/proc` fallback
/// (`IFSOCK_WAITER_SOURCE=proc`) instead of the sockets' wait queues.
pub fn socket_rows_from_proc(ns: &Netns) -> Result<Vec<Value>> {
    let out = Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "sockets", "--json"])
        .env("IFSOCK_WAITER_SOURCE", "proc")
        .output()
        .context("running ifsock sockets")?;
    if !out.status.success() {
        bail!("ifsock sockets failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    record_json_lines("sockets", &String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// Rows owned by `pid`.
pub fn rows_of(rows: &[Value], pid: u32) -> Vec<Value> {
    rows.iter().filter(|r| r["owners"].as_array().is_some_and(|o| o.iter().any(|o| o["pid"] == pid))).cloned().collect()
}

/// True when `row` has a waiter from `pid` with `via`.
pub fn has_waiter(row: &Value, pid: u32, via: &str) -> bool {
    row["waiters"].as_array().is_some_and(|w| w.iter().any(|w| w["pid"] == pid && w["via"] == via))
}

/// True when some thread of `pid` sleeps in one of the syscalls `nrs`
/// (`/proc/PID/task/*/syscall`, first field): a kernel state with no notification, for
/// [`wait_until`].
pub fn in_syscall(pid: u32, nrs: &[i64]) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("syscall"))
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()))
            .is_some_and(|nr| nrs.contains(&nr))
    })
}

/// epoll_wait, epoll_pwait, epoll_pwait2.
pub const EPOLL_WAITS: [i64; 3] = [libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2];
/// poll, ppoll.
pub const POLL_WAITS: [i64; 2] = [libc::SYS_poll, libc::SYS_ppoll];
/// select, pselect6.
pub const SELECT_WAITS: [i64; 2] = [libc::SYS_select, libc::SYS_pselect6];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_of_different_pids_never_meet() {
        // The old decimal form: pid 1234 with n 56 and pid 12345 with n 6 were both "x123456".
        let name = |pid: u32, n: u32| format!("x{}-{}", base36(pid, 5), base36(n, 1));
        assert_ne!(name(1234, 56), name(12345, 6));
        assert_eq!(base36(0, 5), "00000");
        assert_eq!(base36(4_194_304, 5), "2hwcg", "pid_max's limit still fits 5 digits");
        assert_eq!(base36(35, 1), "z");
        assert_eq!(base36(36, 1), "10");
        let u = unique("abcd");
        assert!(u.len() <= 15 && u.starts_with("abcd"), "{u}");
    }

    #[test]
    fn blocked_receiver_drop_releases_its_thread_with_the_fd_open_or_closed() {
        require_root();
        let ns = Netns::new().unwrap();
        for close_first in [false, true] {
            let r = BlockedReceiver::start(&ns, "0.0.0.0:0", false, None).unwrap();
            let tid = r.tid;
            if close_first {
                r.close_fd();
            }
            drop(r);
            // Drop joined the thread; the kernel releases its task right after (a thread's
            // exit clears the tid that join waits on before the task leaves /proc).
            wait_until(&format!("thread {tid} gone (fd closed first: {close_first})"), Duration::from_secs(5), || {
                !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
            })
            .unwrap();
        }
    }

    #[test]
    fn temp_path_removes_a_tree_on_drop() {
        let t = TempPath::new("tp", "tree");
        std::fs::create_dir_all(t.path.join("a/b")).unwrap();
        std::fs::write(t.path.join("a/b/f"), "x").unwrap();
        let p = t.path.clone();
        drop(t);
        assert!(!p.exists());
    }
}
