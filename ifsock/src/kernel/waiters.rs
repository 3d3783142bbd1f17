//! Who waits on which socket now, from procfs and the waiting tasks' memory.
//!
//! One pass over `/proc` ([`WaiterIndex::discover`]): every sleeping thread's
//! `/proc/PID/task/TID/syscall` (`NR ARG0 … ARG5 SP PC`, CONFIG_HAVE_ARCH_TRACEHOOK) names the
//! syscall it sleeps in and its arguments, and each wait kind is resolved to socket inodes:
//! - receive syscalls: arg0 is the fd → `/proc/PID/fd/N` → `socket:[INO]`;
//! - epoll: arg0 is the epoll fd → `/proc/PID/fdinfo/EPFD` lists the interest list as
//!   `tfd: N events: … ino: HEX` (`ep_show_fdinfo()`, fs/eventpoll.c, since 3.8); an entry that is
//!   itself an epoll fd (`anon_inode:[eventpoll]`) is followed (nested epoll);
//! - poll/ppoll: arg0/arg1 are the `struct pollfd` array and its length, read with
//!   `process_vm_readv(2)`; select/pselect6: arg0 is nfds, args 1–3 the `fd_set` bitmaps.
//!   The kernel copies both into its own memory at entry and leaves the user copy alone until it
//!   returns, so the user copy is what it waits on — unless the thread returned and re-entered
//!   between our two reads, which a second read of `syscall` detects (reported as `unknown`).
//!
//! io_uring waits (`io_uring_enter`) name no fd in procfs; they are reported as `unknown` on
//! every socket the process holds.
use std::{
    collections::{HashMap, HashSet},
    fs,
    io::IoSliceMut,
};

use crate::model::{
    ids::SockInode,
    socket::Socket,
    stranded::{SocketReport, Stranded, Via, Waiter, WaiterSource},
    tie::TiedSocket,
};

/// `IORING_ENTER_GETEVENTS` (include/uapi/linux/io_uring.h): `io_uring_enter` waits for completions.
const IORING_ENTER_GETEVENTS: u64 = 1;
/// `PF_KTHREAD` (include/linux/sched.h) in `/proc/PID/stat` flags.
const PF_KTHREAD: u32 = 0x0020_0000;
/// Largest poll array / select nfds read from a task (1 Mi entries: `fs.nr_open`'s default cap).
const MAX_FDS: u64 = 1 << 20;
/// Nesting depth followed through epoll-in-epoll (the kernel's own limit, `EP_MAX_NESTS`, is 4).
const MAX_NEST: usize = 5;

/// What kind of wait a syscall number is, and its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitKind {
    /// A receive on arg0.
    Recv,
    /// epoll on arg0.
    Epoll,
    /// poll(arg0 = ufds, arg1 = nfds).
    Poll,
    /// select(arg0 = nfds, arg1..3 = fd_sets).
    Select,
    /// io_uring_enter.
    IoUring,
}

/// Classifies a syscall number (of the architecture ifsock is built for, [`crate::model::sys`]) as a
/// wait on file descriptors, with its name.
pub fn classify(nr: u64) -> Option<(WaitKind, &'static str)> {
    let name = crate::model::sys::fd_wait_syscall_name(nr)?;
    let kind = match name {
        "read" | "recvfrom" | "recvmsg" | "recvmmsg" => WaitKind::Recv,
        "epoll_wait" | "epoll_pwait" | "epoll_pwait2" => WaitKind::Epoll,
        "poll" | "ppoll" => WaitKind::Poll,
        "select" | "pselect6" => WaitKind::Select,
        "io_uring_enter" => WaitKind::IoUring,
        _ => return None,
    };
    Some((kind, name))
}

/// A parsed `/proc/PID/task/TID/syscall` line of a thread inside a syscall: its number and six
/// arguments (`proc_pid_syscall()`, fs/proc/base.c). `None` for `running`, `-1 …` (not in a
/// syscall) and malformed text.
pub fn parse_syscall(line: &str) -> Option<(u64, [u64; 6])> {
    let mut fields = line.split_whitespace();
    let nr = fields.next()?.parse::<u64>().ok()?;
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    }
    Some((nr, args))
}

/// One entry of an epoll interest list: the registered fd and the inode of its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollTarget {
    /// `tfd`: the fd number at registration (in the registering process).
    pub tfd: u32,
    /// `ino`: inode of the target file (hex in fdinfo): a socket inode for sockets.
    pub ino: u64,
}

/// Parses the `tfd:` lines of an epoll fd's `/proc/PID/fdinfo/N`
/// (`tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x`).
pub fn parse_epoll_fdinfo(text: &str) -> Vec<EpollTarget> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("tfd:")?;
            let tfd = rest.split_whitespace().next()?.parse().ok()?;
            let ino = rest.split_whitespace().find_map(|w| w.strip_prefix("ino:"))?;
            Some(EpollTarget { tfd, ino: u64::from_str_radix(ino, 16).ok()? })
        })
        .collect()
}

/// What an fd points at, from its `/proc/PID/fd/N` link text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// `socket:[INO]`.
    Socket(SockInode),
    /// `anon_inode:[eventpoll]`.
    Epoll,
    /// Anything else.
    Other,
}

/// Classifies an fd link (`socket:[123]`, `anon_inode:[eventpoll]`, a path, …).
pub fn fd_kind(link: &str) -> FdKind {
    if let Some(ino) = link.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')).and_then(|i| i.parse().ok()) {
        return FdKind::Socket(SockInode(ino));
    }
    if link == "anon_inode:[eventpoll]" {
        return FdKind::Epoll;
    }
    FdKind::Other
}

/// The non-negative fds of a `struct pollfd` array (`{int fd; short events; short revents;}`,
/// 8 bytes each, native endian) — negative fds are ignored by poll(2).
pub fn pollfds(bytes: &[u8]) -> Vec<u32> {
    let (entries, _) = bytes.as_chunks::<8>();
    entries.iter().filter_map(|c| u32::try_from(i32::from_ne_bytes([c[0], c[1], c[2], c[3]])).ok()).collect()
}

/// Bytes of the `fd_set` select reads for `nfds` (whole `unsigned long` words, as
/// `core_sys_select()` copies `FDS_BYTES(nfds)`).
pub fn fd_set_bytes(nfds: u64) -> usize {
    (nfds.div_ceil(64) * 8) as usize
}

/// The fds below `nfds` set in any of the bitmaps (bit `fd % 64` of native-endian word `fd / 64`).
pub fn select_fds(sets: &[Vec<u8>], nfds: u64) -> Vec<u32> {
    let mut out = Vec::new();
    for fd in 0..nfds.min(MAX_FDS) {
        let (word, bit) = ((fd / 64) as usize, fd % 64);
        let set = sets.iter().any(|s| {
            s.get(word * 8..word * 8 + 8)
                .and_then(|w| <[u8; 8]>::try_from(w).ok())
                .is_some_and(|w| u64::from_ne_bytes(w) & (1 << bit) != 0)
        });
        if set {
            out.push(fd as u32);
        }
    }
    out
}

/// Reads `len` bytes at `addr` of process `pid` (`process_vm_readv(2)`, same permission as
/// ptrace attach).
///
/// # Errors
/// The errno: `EPERM` (not allowed), `ESRCH` (gone), `EFAULT` (address not mapped), or a short read
/// (reported as `EFAULT`).
pub fn read_remote(pid: u32, addr: u64, len: usize) -> Result<Vec<u8>, nix::errno::Errno> {
    use nix::sys::uio::{process_vm_readv, RemoteIoVec};
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let remote = [RemoteIoVec { base: addr as usize, len }];
    let n = process_vm_readv(nix::unistd::Pid::from_raw(pid as i32), &mut [IoSliceMut::new(&mut buf)], &remote)?;
    if n != len {
        return Err(nix::errno::Errno::EFAULT);
    }
    Ok(buf)
}

/// The fd table of one process with a waiting thread, read lazily: only the fds a wait names
/// (the receive fd, an epoll interest list, a poll/select set) are looked up, each once per
/// discovery pass. A process holding 100k sockets and waiting on one costs one `readlink`,
/// not 100k.
struct FdTable {
    pid: u32,
    fds: std::cell::RefCell<HashMap<u32, Option<FdKind>>>,
}

impl FdTable {
    /// Checks that `/proc/PID/fd` can be read (the process exists and we may look).
    fn open(pid: u32) -> std::io::Result<Self> {
        drop(fs::read_dir(format!("/proc/{pid}/fd"))?);
        Ok(FdTable { pid, fds: Default::default() })
    }
    /// What `fd` points at; `None` when it is not open (or closed since).
    fn kind(&self, fd: u32) -> Option<FdKind> {
        *self.fds.borrow_mut().entry(fd).or_insert_with(|| fs::read_link(format!("/proc/{}/fd/{fd}", self.pid)).ok().map(|l| fd_kind(&l.to_string_lossy())))
    }
    fn socket(&self, fd: u32) -> Option<SockInode> {
        match self.kind(fd) {
            Some(FdKind::Socket(i)) => Some(i),
            _ => None,
        }
    }
}

/// Waiters found by one pass over `/proc`, keyed by socket inode; waits that could not be tied
/// to one socket are kept per process and shown on every socket it holds.
#[derive(Clone, Debug, Default)]
pub struct WaiterIndex {
    by_inode: HashMap<SockInode, Vec<Waiter>>,
    by_pid: HashMap<u32, Vec<Waiter>>,
    /// Which source filled it, and why the other one was not used.
    pub source: Option<SourceNote>,
    /// (socket inode, tid) → the fd a wait-queue receiver passed to its syscall (registers):
    /// picks among the process's fds of the socket when it holds several.
    passed_fd: HashMap<(u64, u32), i32>,
}

/// Which source a [`WaiterIndex`] came from, with the reason when it is the `/proc` fallback,
/// and what the waiter walk discarded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceNote {
    /// `wait_queue` or `proc`.
    pub used: Option<WaiterSource>,
    /// Why the wait queues were not read (`/proc` fallback only).
    pub fallback_reason: Option<String>,
    /// Wait-queue entries whose task led to no live thread (exiting, or torn down under the
    /// walk): counted, never shown.
    pub gone: u64,
    /// Sockets (or epoll instances) whose queue was longer than the walk's bound.
    pub truncated: u64,
}

/// Per-process state of one pass.
#[derive(Default)]
struct ProcState {
    fds: Option<Result<FdTable, String>>,
    /// Sockets reachable from an epoll fd (following nested epoll fds), per epfd.
    epolls: HashMap<u32, Result<Vec<(u32, SockInode)>, String>>,
}

fn thread_gone(pid: u32, tid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

impl WaiterIndex {
    /// Every thread of every process sleeping in a wait on fds (receive, epoll, poll, select,
    /// io_uring), resolved to socket inodes. Threads that exit during the pass are skipped;
    /// threads still there whose wait could not be resolved are kept as [`Via::Unknown`] (or
    /// `poll`/`select` with `fds: null` when their memory could not be read).
    pub fn discover() -> Self {
        let mut index = WaiterIndex::default();
        let Ok(procs) = procfs::process::all_processes() else { return index };
        for proc in procs.flatten() {
            let pid = proc.pid as u32;
            let Ok(tasks) = proc.tasks() else { continue };
            let mut state = ProcState::default();
            let mut refused = false;
            for task in tasks.flatten() {
                let tid = task.tid as u32;
                // `syscall` first: most threads sleep in futex or run, and are done after one read;
                // `stat` (state, kthread flag, comm) only for those in a wait on fds.
                let path = format!("/proc/{pid}/task/{tid}/syscall");
                let line = match fs::read_to_string(&path) {
                    Ok(line) => line,
                    // Another user's task without CAP_SYS_PTRACE (`proc_pid_syscall()` checks
                    // `ptrace_may_access()`): its waits cannot be seen, which is not "none".
                    // Said once per process, on every socket it holds.
                    Err(e) if !refused && matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
                        refused = true;
                        let comm = task.stat().map(|s| s.comm).unwrap_or_default();
                        let errno = crate::model::sys::errno_name(e.raw_os_error().unwrap_or(libc::EACCES));
                        let reason = format!("waits not readable: {path}: {errno} (another user's task: needs CAP_SYS_PTRACE; the wait-queue source does not)");
                        let w = Waiter { pid, tid, comm, syscall: "unknown", via: Via::Unknown, fd: None, epfd: None, fds: None, reason: Some(reason), source: WaiterSource::Proc };
                        index.by_pid.entry(pid).or_default().push(w);
                        continue;
                    }
                    Err(_) => continue,
                };
                let Some((nr, args)) = parse_syscall(&line) else { continue };
                let Some((kind, name)) = classify(nr) else { continue };
                let Ok(stat) = task.stat() else { continue };
                if !matches!(stat.state, 'S' | 'D') || stat.flags & PF_KTHREAD != 0 {
                    continue;
                }
                let waiter = |via, fd, epfd| Waiter { pid, tid, comm: stat.comm.clone(), syscall: name, via, fd, epfd, fds: None, reason: None, source: WaiterSource::Proc };
                index.resolve(&mut state, kind, args, &line, &path, waiter);
            }
        }
        index
    }

    fn resolve(
        &mut self,
        state: &mut ProcState,
        kind: WaitKind,
        args: [u64; 6],
        line: &str,
        path: &str,
        waiter: impl Fn(Via, Option<u32>, Option<u32>) -> Waiter,
    ) {
        let w = waiter(Via::Unknown, None, None);
        let (pid, tid) = (w.pid, w.tid);
        let unknown = |this: &mut Self, via: Via, reason: String, fds: Option<Option<Vec<u32>>>| {
            if thread_gone(pid, tid) {
                return;
            }
            let mut w = waiter(via, None, None);
            w.reason = Some(reason);
            w.fds = fds;
            this.by_pid.entry(pid).or_default().push(w);
        };
        if kind == WaitKind::IoUring {
            if args[3] & IORING_ENTER_GETEVENTS != 0 {
                unknown(self, Via::Unknown, "io_uring_enter: the operations it waits for are not visible in procfs".into(), None);
            }
            return;
        }
        let fds = state.fds.get_or_insert_with(|| FdTable::open(pid).map_err(|e| format!("reading /proc/{pid}/fd: {e}")));
        let table = match fds {
            Ok(t) => &*t,
            Err(e) => {
                let e = e.clone();
                unknown(self, Via::Unknown, e, None);
                return;
            }
        };
        match kind {
            WaitKind::Recv => {
                let fd = args[0] as u32;
                match table.socket(fd) {
                    Some(ino) => self.by_inode.entry(ino).or_default().push(waiter(Via::Recv, Some(fd), None)),
                    // read(2) on a pipe or file is no socket wait; a receive syscall on an fd
                    // closed while it sleeps still holds a socket we cannot name.
                    None if table.kind(fd).is_some() || args[0] as i64 == -1 => {}
                    None if w.syscall == "read" => {}
                    None => unknown(self, Via::Recv, format!("fd {fd} was closed while the thread waits in {}", w.syscall), None),
                }
            }
            WaitKind::Epoll => {
                let epfd = args[0] as u32;
                let resolved = state.epolls.entry(epfd).or_insert_with(|| {
                    let mut seen = HashSet::new();
                    epoll_sockets(pid, epfd, table, &mut seen, 0)
                });
                match resolved {
                    Ok(list) => {
                        for &(tfd, ino) in list.iter() {
                            self.by_inode.entry(ino).or_default().push(waiter(Via::Epoll, Some(tfd), Some(epfd)));
                        }
                    }
                    Err(e) => {
                        let e = e.clone();
                        unknown(self, Via::Unknown, e, None);
                    }
                }
            }
            WaitKind::Poll | WaitKind::Select => {
                let via = if kind == WaitKind::Poll { Via::Poll } else { Via::Select };
                let read = if kind == WaitKind::Poll {
                    let n = args[1].min(MAX_FDS);
                    read_remote(pid, args[0], (n * 8) as usize).map(|b| pollfds(&b))
                } else {
                    let nfds = args[0].min(MAX_FDS);
                    let len = fd_set_bytes(nfds);
                    args[1..4]
                        .iter()
                        .filter(|&&a| a != 0)
                        .map(|&a| read_remote(pid, a, len))
                        .collect::<Result<Vec<_>, _>>()
                        .map(|sets| select_fds(&sets, nfds))
                };
                let list = match read {
                    Ok(list) => list,
                    Err(e) => {
                        let reason = format!("process_vm_readv: {} ({})", e, e.desc());
                        unknown(self, via, reason, Some(None));
                        return;
                    }
                };
                // The set read is the one waited on only if the thread is still in the same call.
                if fs::read_to_string(path).ok().as_deref() != Some(line) {
                    unknown(self, Via::Unknown, format!("the {} set changed while it was read", w.syscall), None);
                    return;
                }
                for fd in list {
                    if let Some(ino) = table.socket(fd) {
                        self.by_inode.entry(ino).or_default().push(waiter(via, Some(fd), None));
                    }
                }
            }
            WaitKind::IoUring => {}
        }
    }

    /// The waiters from the waiter walk's records (`WaitRecord`s of every netns walked): one
    /// per thread and socket, keyed by the socket's inode (sockfs inodes are unique on the
    /// host). `names`: the kallsyms table, naming wake functions the walk did not classify.
    /// A record of a thread that no longer exists (`/proc/PID/task/TID` absent) is discarded
    /// and counted, as the walk's own `GONE` records are.
    pub fn from_wait_queue(records: &[ifsock_common::WaitRecord], names: &crate::kernel::kallsyms::Symbols) -> Self {
        use ifsock_common::wait_kind;
        let mut index = WaiterIndex::default();
        let mut note = SourceNote { used: Some(WaiterSource::WaitQueue), ..SourceNote::default() };
        let mut seen: HashSet<(u64, u32, u32, u64, u64)> = HashSet::new();
        for r in records {
            if r.ino == 0 || !seen.insert((r.ino, r.tid, r.kind, r.ep, r.func)) {
                continue;
            }
            let syscall = if r.syscall < 0 { "?" } else { wait_syscall_name(r.syscall as u64) };
            // Records with no task (idle epoll instance, truncation, another wake function)
            // carry whatever comm the walk read last: none is theirs.
            let comm = if r.tid == 0 { String::new() } else { String::from_utf8_lossy(&r.comm[..r.comm.iter().position(|b| *b == 0).unwrap_or(r.comm.len())]).into_owned() };
            let tfd = u32::try_from(r.tfd).ok();
            // The epoll fd the thread passed (`epoll_wait`'s first argument, read from its
            // registers): the outermost instance for nested epoll, as the thread sees it.
            let epfd = u32::try_from(r.arg0).ok().filter(|_| syscall.starts_with("epoll_"));
            let base = Waiter { pid: r.pid, tid: r.tid, comm, syscall, via: Via::Unknown, fd: None, epfd: None, fds: None, reason: None, source: WaiterSource::WaitQueue };
            let w = match r.kind {
                wait_kind::GONE => {
                    note.gone += 1;
                    continue;
                }
                wait_kind::TASK => Waiter { via: Via::Recv, ..base },
                wait_kind::POLL => Waiter { via: if matches!(syscall, "select" | "pselect6") { Via::Select } else { Via::Poll }, ..base },
                // The epoll fd is not read: only the registered socket fd (`epitem.ffd.fd`).
                wait_kind::EPOLL => Waiter { via: Via::Epoll, fd: tfd, epfd, ..base },
                wait_kind::EPOLL_IDLE => Waiter {
                    via: Via::Epoll,
                    fd: tfd,
                    syscall: "-",
                    reason: Some("an epoll instance holds the socket; no thread waits in it now".into()),
                    ..base
                },
                wait_kind::TRUNCATED => {
                    note.truncated += 1;
                    Waiter {
                        syscall: "-",
                        reason: Some(format!(
                            "the wait queue is longer than the walk's bound ({} entries, {} per epoll instance): the rest is not listed",
                            ifsock_common::WAIT_QUEUE_MAX,
                            ifsock_common::EPOLL_WAITERS_MAX
                        )),
                        ..base
                    }
                }
                _ => match names.name(r.func) {
                    Some(name) => Waiter { syscall: "-", reason: Some(format!("wake function {name}: its waiter is not followed")), ..base },
                    // No function starts there: an entry torn down under the walk.
                    None => {
                        note.gone += 1;
                        continue;
                    }
                },
            };
            if w.tid != 0 && thread_gone(w.pid, w.tid) {
                note.gone += 1;
                continue;
            }
            if w.via == Via::Recv {
                index.passed_fd.insert((r.ino, w.tid), r.arg0);
            }
            index.by_inode.entry(SockInode(r.ino)).or_default().push(w);
        }
        index.source = Some(note);
        index
    }

    /// True when the waiters came from the sockets' wait queues ([`WaiterIndex::from_wait_queue`]).
    pub fn is_wait_queue(&self) -> bool {
        self.source.as_ref().is_some_and(|n| n.used == Some(WaiterSource::WaitQueue))
    }

    /// The fd wait-queue receiver `tid` passed to its syscall on socket `ino` (its registers),
    /// whether or not the fd is still open.
    pub fn passed_fd(&self, ino: SockInode, tid: u32) -> Option<u32> {
        self.passed_fd.get(&(ino.0, tid)).and_then(|a| u32::try_from(*a).ok())
    }

    /// The `/proc` pass, labelled as the fallback with `reason` (why the wait queues were not read).
    pub fn discover_fallback(reason: String) -> Self {
        let mut index = Self::discover();
        index.source = Some(SourceNote { used: Some(WaiterSource::Proc), fallback_reason: Some(reason), ..SourceNote::default() });
        index
    }

    /// The waiters of `socket`: threads tied to its inode, then the unresolved waits of each
    /// process holding it (sorted by pid, tid). A wait-queue waiter of a receive or poll gets
    /// the fd its process holds the socket by (the owner walk, `iter/task_file`), if it still
    /// holds one.
    pub fn for_socket(&self, socket: &Socket) -> Vec<Waiter> {
        // No thread of the host waits: every row's answer, without two hash lookups and a pid
        // list per socket (100k rows: ~5 ms).
        if self.by_inode.is_empty() && self.by_pid.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<Waiter> = if socket.inode.0 == 0 { Vec::new() } else { self.by_inode.get(&socket.inode).cloned().unwrap_or_default() };
        let mut pids: Vec<u32> = socket.owners.iter().map(|o| o.pid).collect();
        pids.dedup();
        for pid in pids {
            out.extend(self.by_pid.get(&pid).into_iter().flatten().cloned());
        }
        for w in &mut out {
            if w.source == WaiterSource::WaitQueue && w.fd.is_none() && matches!(w.via, Via::Recv | Via::Poll | Via::Select) && w.tid != 0 {
                let passed = if w.via == Via::Recv { self.passed_fd(socket.inode, w.tid) } else { None };
                let fds = || socket.owners.iter().filter(|o| o.pid == w.pid).map(|o| o.fd);
                w.fd = fds().find(|fd| Some(*fd) == passed).or_else(|| fds().min());
            }
        }
        out.sort_by_key(|w| (w.pid, w.tid, w.fd));
        out.dedup();
        out
    }

    /// The report row of one tied socket: its health as given and its waiters from this pass.
    pub fn report(&self, tied: TiedSocket, stranded: Option<Stranded>) -> SocketReport {
        let waiters = self.for_socket(&tied.socket);
        SocketReport { tied, stranded, waiters }
    }
}

/// Name of a syscall a wait-queue waiter sleeps in (the fd waits of [`crate::model::sys`], then
/// accept, connect and the sends, which sleep on a socket's queue too), `?` for any other.
pub fn wait_syscall_name(nr: u64) -> &'static str {
    if let Some(name) = crate::model::sys::fd_wait_syscall_name(nr) {
        return name;
    }
    let others: [(libc::c_long, &'static str); 7] = [
        (libc::SYS_accept, "accept"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_sendto, "sendto"),
        (libc::SYS_sendmsg, "sendmsg"),
        (libc::SYS_sendmmsg, "sendmmsg"),
        (libc::SYS_write, "write"),
    ];
    others.iter().find(|(n, _)| *n as u64 == nr).map_or("?", |(_, s)| s)
}

/// Sockets in the interest list of `epfd` of `pid`, following nested epoll fds up to
/// [`MAX_NEST`] levels; `(tfd, inode)` pairs.
fn epoll_sockets(pid: u32, epfd: u32, table: &FdTable, seen: &mut HashSet<u32>, depth: usize) -> Result<Vec<(u32, SockInode)>, String> {
    if depth > MAX_NEST || !seen.insert(epfd) {
        return Ok(Vec::new());
    }
    let path = format!("/proc/{pid}/fdinfo/{epfd}");
    let text = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let mut out = Vec::new();
    for t in parse_epoll_fdinfo(&text) {
        match table.kind(t.tfd) {
            Some(FdKind::Epoll) => {
                // A nested instance that vanished in between just contributes nothing.
                if let Ok(inner) = epoll_sockets(pid, t.tfd, table, seen, depth + 1) {
                    out.extend(inner);
                }
            }
            _ => out.push((t.tfd, SockInode(t.ino))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines_parse_only_inside_a_syscall() {
        let line = "232 0x4 0x7ffd5e0 0x40 0xffffffff 0x0 0x0 0x7ffd5a8 0x7f12aa\n";
        assert_eq!(parse_syscall(line), Some((232, [4, 0x7ffd5e0, 0x40, 0xffff_ffff, 0, 0])));
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffd5a8 0x7f12aa\n"), None);
        assert_eq!(parse_syscall("7 0x1 0x2\n"), None, "truncated line");
        let nr = |n: libc::c_long| n as u64;
        assert_eq!(classify(nr(libc::SYS_ppoll)), Some((WaitKind::Poll, "ppoll")));
        assert_eq!(classify(nr(libc::SYS_pselect6)), Some((WaitKind::Select, "pselect6")));
        assert_eq!(classify(nr(libc::SYS_epoll_pwait2)), Some((WaitKind::Epoll, "epoll_pwait2")));
        assert_eq!(classify(nr(libc::SYS_recvmsg)), Some((WaitKind::Recv, "recvmsg")));
        assert_eq!(classify(nr(libc::SYS_io_uring_enter)), Some((WaitKind::IoUring, "io_uring_enter")));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(classify(nr(libc::SYS_poll)), Some((WaitKind::Poll, "poll")));
        assert_eq!(classify(nr(libc::SYS_futex)), None, "futex is not a wait on fds");
    }

    #[test]
    fn epoll_fdinfo_lists_targets_by_inode() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
tfd:        7 events:       19 data:                7  pos:0 ino:2c3a sdev:8\n\
tfd:       12 events:       19 data:       7f0000000c  pos:0 ino:2c3b sdev:8\n";
        assert_eq!(parse_epoll_fdinfo(text), vec![EpollTarget { tfd: 7, ino: 0x2c3a }, EpollTarget { tfd: 12, ino: 0x2c3b }]);
        assert!(parse_epoll_fdinfo("pos:\t0\nflags:\t02\n").is_empty(), "an empty interest list");
    }

    #[test]
    fn fd_links_are_classified() {
        assert_eq!(fd_kind("socket:[31337]"), FdKind::Socket(SockInode(31337)));
        assert_eq!(fd_kind("anon_inode:[eventpoll]"), FdKind::Epoll);
        assert_eq!(fd_kind("anon_inode:[eventfd]"), FdKind::Other);
        assert_eq!(fd_kind("/dev/null"), FdKind::Other);
        assert_eq!(fd_kind("socket:[x]"), FdKind::Other);
    }

    #[test]
    fn pollfd_arrays_and_fd_sets_decode() {
        let mut b = Vec::new();
        for (fd, ev) in [(3i32, 1i16), (-1, 1), (9, 4)] {
            b.extend(fd.to_ne_bytes());
            b.extend(ev.to_ne_bytes());
            b.extend(0i16.to_ne_bytes());
        }
        assert_eq!(pollfds(&b), vec![3, 9]);
        assert_eq!(fd_set_bytes(1), 8);
        assert_eq!(fd_set_bytes(65), 16);
        let mut read = vec![0u8; 16];
        read[..8].copy_from_slice(&((1u64 << 3) | (1 << 5)).to_ne_bytes());
        read[8..].copy_from_slice(&1u64.to_ne_bytes()); // fd 64
        let mut write = vec![0u8; 16];
        write[..8].copy_from_slice(&(1u64 << 4).to_ne_bytes());
        assert_eq!(select_fds(&[read.clone(), write], 65), vec![3, 4, 5, 64]);
        assert_eq!(select_fds(&[read], 5), vec![3], "bits at or above nfds are ignored");
    }

    #[test]
    fn unresolved_waits_show_on_every_socket_of_their_process_and_resolved_ones_on_theirs() {
        use crate::model::socket::Owner;
        let w = |pid, tid, via, fd: Option<u32>| Waiter { pid, tid, comm: "srv".into(), syscall: "ppoll", via, fd, epfd: None, fds: None, reason: None, source: WaiterSource::Proc };
        let mut index = WaiterIndex::default();
        index.by_inode.insert(SockInode(42), vec![w(10, 12, Via::Poll, Some(3)), w(10, 11, Via::Poll, Some(3))]);
        index.by_pid.insert(10, vec![Waiter { fds: Some(None), reason: Some("EPERM".into()), ..w(10, 13, Via::Poll, None) }]);
        index.by_pid.insert(99, vec![w(99, 99, Via::Unknown, None)]);
        let rec = ifsock_common::SockRecord {
            sk: 1, cookie: 1, ino: 42, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 17, state: 7, lport: 53, rport: 0,
            flags: 0, laddr: [0; 16], raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        let mut s = Socket::from_record(&rec);
        s.owners = vec![Owner { pid: 10, comm: "srv".into(), fd: 3 }, Owner { pid: 10, comm: "srv".into(), fd: 9 }];
        let got: Vec<(u32, Via, Option<u32>)> = index.for_socket(&s).iter().map(|w| (w.tid, w.via, w.fd)).collect();
        assert_eq!(got, vec![(11, Via::Poll, Some(3)), (12, Via::Poll, Some(3)), (13, Via::Poll, None)], "sorted, once per thread, pid 99 not involved");
        s.inode = SockInode(43);
        assert_eq!(index.for_socket(&s).len(), 1, "another socket of pid 10 still shows the unreadable poll");
        s.owners.clear();
        assert!(index.for_socket(&s).is_empty());
    }

    #[test]
    fn wait_queue_records_become_exact_waiters_and_dead_tasks_are_counted_not_shown() {
        use crate::model::socket::Owner;
        use ifsock_common::{wait_kind, WaitRecord};
        let names = crate::kernel::kallsyms::Symbols::parse(
            "ffffffff81000000 t pollwake\nffffffff81000100 t ep_poll_callback\nffffffff81000200 t receiver_wake_function\nffffffff81000300 t io_poll_wake\n".into(),
        )
        .unwrap();
        let (pid, tid) = (std::process::id(), nix::unistd::gettid().as_raw() as u32);
        let rec = |kind, tid, syscall: libc::c_long, arg0, tfd, func| WaitRecord {
            cookie: 1, ino: 42, ep: 0, func, kind, pid, tid, syscall: syscall as i32, arg0, tfd, depth: 1, _pad: 0, comm: *b"srv\0\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let records = [
            rec(wait_kind::TASK, tid, libc::SYS_recvmsg, 9, -1, 0),
            rec(wait_kind::TASK, tid, libc::SYS_recvmsg, 9, -1, 0), // the socket shown twice: once
            rec(wait_kind::POLL, tid, libc::SYS_pselect6, 4, -1, 0),
            rec(wait_kind::EPOLL, tid, libc::SYS_epoll_wait, 7, 3, 0),
            rec(wait_kind::GONE, 0, -1, -1, -1, 0),
            rec(wait_kind::TASK, u32::MAX - 1, libc::SYS_recvmsg, 3, -1, 0), // no such thread
            rec(wait_kind::UNKNOWN, 0, -1, -1, -1, 0xffffffff81000300),
            rec(wait_kind::UNKNOWN, 0, -1, -1, -1, 0xffff888100000308), // torn: no function there
        ];
        let index = WaiterIndex::from_wait_queue(&records, &names);
        assert!(index.is_wait_queue());
        assert_eq!(index.source.as_ref().map(|n| n.gone), Some(3), "the GONE record, the thread that does not exist, the torn entry");
        let rec = ifsock_common::SockRecord {
            sk: 1, cookie: 1, ino: 42, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 17, state: 7, lport: 53, rport: 0,
            flags: 0, laddr: [0; 16], raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        let mut s = Socket::from_record(&rec);
        s.owners = vec![Owner { pid, comm: "srv".into(), fd: 3 }, Owner { pid, comm: "srv".into(), fd: 9 }];
        type Row<'a> = (Via, &'a str, Option<u32>, Option<u32>, WaiterSource);
        let got: Vec<Row> = index.for_socket(&s).iter().map(|w| (w.via, w.syscall, w.fd, w.epfd, w.source)).collect();
        let wq = WaiterSource::WaitQueue;
        assert_eq!(
            got,
            vec![
                (Via::Unknown, "-", None, None, wq),
                (Via::Select, "pselect6", Some(3), None, wq),
                (Via::Epoll, "epoll_wait", Some(3), Some(7), wq),
                (Via::Recv, "recvmsg", Some(9), None, wq),
            ],
            "the receiver's fd is the one it passed (9, not the lowest), the epoll fd is epoll_wait's argument"
        );
        assert!(index.for_socket(&s)[0].reason.as_deref().is_some_and(|r| r.contains("io_poll_wake")));
        assert_eq!(index.for_socket(&s)[0].comm, "", "no task, no comm");
        s.owners.clear();
        assert_eq!(index.for_socket(&s).iter().find(|w| w.via == Via::Recv).map(|w| w.fd), Some(None), "a closed fd is named by no owner");
        assert_eq!(index.passed_fd(SockInode(42), tid), Some(9));
    }

    #[test]
    fn reading_own_memory_works_and_bad_addresses_fail_cleanly() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let got = read_remote(std::process::id(), data.as_ptr() as u64, 8).unwrap();
        assert_eq!(got, data);
        assert!(read_remote(std::process::id(), 8, 8).is_err(), "an unmapped address is an error, not a crash");
    }
}
