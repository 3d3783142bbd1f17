//! `abort`: which sockets to destroy (selection), who waits on them, and what each waiter saw
//! after the destroy (observation). No I/O: sockets, their health (`model::stranded::health`),
//! procfs threads, `kernel::waiters` waits, destroy outcomes, syscall returns and clock values
//! come in as values; report records go out.
use std::collections::HashMap;

use serde::Serialize;

use crate::{
    model::{
        ids::{IfIndex, NetnsIno, SockInode},
        socket::{endpoint, Owner, Protocol, Socket},
        receiver::BlockedThread,
        stranded::{self, Stranded},
        sys::{errno_name, recv_syscall_name as syscall_name},
    },
};

/// What the user asked for; every present selector must match (AND).
#[derive(Clone, Debug, Default)]
pub struct Selector {
    /// `--inode N`... (non-zero, parsed at the edge).
    pub inodes: Vec<SockInode>,
    /// `--stranded`.
    pub stranded: bool,
    /// `--iface NAME` (only with `--stranded`) and the ifindex it has in each selected netns
    /// (a deleted interface's sockets keep its old ifindex in `stranded.ifindex`).
    pub iface: Option<(String, Vec<(NetnsIno, IfIndex)>)>,
    /// `--pid PID`: an owner of the socket, or a thread blocked on it, belongs to PID.
    pub pid: Option<u32>,
}

/// A socket chosen for destruction, and why.
#[derive(Clone, Debug)]
pub struct Target {
    /// The socket as the iterator saw it.
    pub socket: Socket,
    /// Its health, when the health check says it is dead.
    pub stranded: Option<Stranded>,
    /// The selectors it matched (`inode`, `stranded`, `iface`, `pid`).
    pub because: Vec<&'static str>,
}

/// A socket matched by `--stranded` but kept, with the rule that kept it.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// Socket inode.
    pub inode: SockInode,
    /// Why it is not destroyed.
    pub why: &'static str,
}

/// Selection errors: each names the cause and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// No selector at all.
    #[error("nothing selected: name sockets with --inode N, --stranded [--iface NAME] or --pid PID (abort never destroys all sockets)")]
    NoSelector,
    /// `--pid` alone would select every socket of a process.
    #[error("--pid only narrows a selection: combine it with --inode or --stranded")]
    PidAlone,
    /// An inode that is no TCP/UDP socket of the selected namespaces (the second field names them).
    #[error("no TCP/UDP socket with inode {0} in {1} (check `ifsock sockets`; a socket of another netns needs --netns NAME or --all-netns)")]
    NoSuchInode(SockInode, String),
    /// Selectors that match nothing.
    #[error("the selection ({0}) matches no socket in {1}; see `ifsock sockets` or `ifsock hung`")]
    NothingMatched(String, String),
}

/// True when `pid` owns the socket or has a thread blocked on it.
fn held_by(s: &Socket, pid: u32, waiters: &[Waiter]) -> bool {
    s.owners.iter().any(|o| o.pid == pid) || waiters.iter().any(|w| w.socket == s.inode && w.pid == pid)
}

/// `netns N` for one namespace, `netns N, M` for several.
fn scope_text(scope: &[NetnsIno]) -> String {
    format!("netns {}", scope.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "))
}

/// Picks the sockets of the namespaces in `scope` to destroy (the caller's netns, the one of
/// `--netns`, or every one with `--all-netns`). `health` says whether a socket is stranded
/// (`model::stranded::health` against the links and addresses of the socket's netns);
/// `waiters` come from [`waiters_of`] (for `--pid` on orphaned sockets).
///
/// Safety rules: sockets of namespaces outside `scope` are never selected; a TCP LISTEN socket
/// only when named by `--inode` (otherwise it is returned in the skipped list).
///
/// # Errors
/// [`SelectError`] for an empty selector, an unknown inode, or a selection matching nothing.
pub fn select(
    sockets: &[Socket],
    scope: &[NetnsIno],
    sel: &Selector,
    waiters: &[Waiter],
    health: impl Fn(&Socket) -> Option<Stranded>,
) -> Result<(Vec<Target>, Vec<Skipped>), SelectError> {
    if sel.inodes.is_empty() && !sel.stranded {
        return Err(if sel.pid.is_some() { SelectError::PidAlone } else { SelectError::NoSelector });
    }
    let here: Vec<&Socket> = sockets.iter().filter(|s| scope.contains(&s.netns) && s.inode.0 != 0).collect();
    for ino in &sel.inodes {
        if !here.iter().any(|s| s.inode == *ino) {
            return Err(SelectError::NoSuchInode(*ino, scope_text(scope)));
        }
    }
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in here {
        if !seen.insert(s.inode) {
            continue; // kernels before 6.16 may list a socket twice
        }
        let mut because = Vec::new();
        if !sel.inodes.is_empty() {
            if !sel.inodes.contains(&s.inode) {
                continue;
            }
            because.push("inode");
        }
        let stranded = health(s);
        if sel.stranded {
            let Some(st) = &stranded else { continue };
            because.push("stranded");
            if let Some((_, per_ns)) = &sel.iface {
                if !per_ns.iter().any(|(ns, i)| *ns == s.netns && st.ifindex == Some(*i)) {
                    continue;
                }
                because.push("iface");
            }
        }
        if let Some(pid) = sel.pid {
            if !held_by(s, pid, waiters) {
                continue;
            }
            because.push("pid");
        }
        if s.protocol == Protocol::Tcp && s.state == "LISTEN" && !sel.inodes.contains(&s.inode) {
            skipped.push(Skipped { inode: s.inode, why: "TCP LISTEN socket: destroyed only when named by --inode" });
            continue;
        }
        targets.push(Target { socket: s.clone(), stranded, because });
    }
    if targets.is_empty() {
        let mut what = Vec::new();
        if !sel.inodes.is_empty() {
            what.push(format!("inode {}", sel.inodes.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")));
        }
        if sel.stranded {
            what.push("stranded".to_string());
        }
        if let Some((n, _)) = &sel.iface {
            what.push(format!("iface {n}"));
        }
        if let Some(p) = sel.pid {
            what.push(format!("pid {p}"));
        }
        let mut text = what.join(" and ");
        if !skipped.is_empty() {
            text.push_str(&format!("; {} TCP LISTEN socket(s) kept", skipped.len()));
        }
        return Err(SelectError::NothingMatched(text, scope_text(scope)));
    }
    Ok((targets, skipped))
}

/// A thread waiting on a selected socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Waiter {
    /// The socket it waits on.
    pub socket: SockInode,
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread command.
    pub comm: String,
    /// The syscall it sleeps in (`recvmsg`, …, from `/proc/PID/task/TID/syscall`).
    pub syscall: &'static str,
    /// `recv` (blocked in a receive syscall on it), `epoll` (in epoll_wait/epoll_pwait/epoll_pwait2 on an
    /// instance whose interest list holds it), `poll` or `select` (its fd is in the set the
    /// thread waits on): `model::stranded::Via`.
    pub via: &'static str,
    /// The socket's fd in the waiting process (the receive's fd, or the epoll/poll/select entry).
    pub fd: u32,
    /// The epoll fd waited on (`via: epoll`), else null.
    pub epfd: Option<u32>,
    /// `exact`: the thread is on the socket's own wait queue (the waiter walk); `fd`: the fd
    /// still points at the socket; `inferred`: the fd is closed and the socket is the only one
    /// without an fd in the thread's netns (an inference, not a record). The last two come from
    /// the `/proc` fallback.
    pub certainty: &'static str,
}

/// Adds the epoll/poll/select waits `kernel::waiters` found on `socket`
/// (`WaiterIndex::for_socket`) to `out`. Receivers come from [`waiters_of`] only: the index ties
/// a receive to whatever its fd number points at now, and after a close that number may name
/// a newer socket of the same process (in another netns, even). Waits the index could not tie
/// to this socket's fd (`via: unknown`, or a set that could not be read) are left out.
pub fn add_indexed(out: &mut Vec<Waiter>, socket: SockInode, found: &[stranded::Waiter]) {
    for w in found {
        let Some(fd) = w.fd else { continue };
        let indexed_only = matches!(w.via, stranded::Via::Epoll | stranded::Via::Poll | stranded::Via::Select);
        if !indexed_only || out.iter().any(|o| o.socket == socket && o.tid == w.tid) {
            continue;
        }
        out.push(Waiter { socket, pid: w.pid, tid: w.tid, comm: w.comm.clone(), syscall: w.syscall, via: w.via.name(), fd, epfd: w.epfd, certainty: "fd" });
    }
    out.sort_by_key(|w| (w.socket, w.tid));
}

/// Adds the threads the sockets' wait queues hold for `socket` (waiters with `source:
/// wait_queue`, `WaiterIndex::for_socket`), receivers included, as `certainty: "exact"`: the
/// thread sleeps on this socket's own queue whatever its fd points at now. A receiver whose
/// process no longer holds the socket gets the fd it passed (`passed`, from its registers); a
/// waiter with no fd to name and entries with no thread (an idle epoll instance, an io_uring
/// entry) are not threads to watch and are left out.
pub fn add_wait_queue(out: &mut Vec<Waiter>, socket: SockInode, found: &[stranded::Waiter], passed: impl Fn(u32) -> Option<u32>) {
    for w in found {
        if w.tid == 0 || w.source != stranded::WaiterSource::WaitQueue || out.iter().any(|o| o.socket == socket && o.tid == w.tid) {
            continue;
        }
        let fd = w.fd.or_else(|| if w.via == stranded::Via::Recv { passed(w.tid) } else { None });
        let Some(fd) = fd else { continue };
        out.push(Waiter { socket, pid: w.pid, tid: w.tid, comm: w.comm.clone(), syscall: w.syscall, via: w.via.name(), fd, epfd: w.epfd, certainty: "exact" });
    }
    out.sort_by_key(|w| (w.socket, w.tid));
}

/// Threads blocked receiving on one of `targets`: an open fd that points at it, or a closed fd
/// when the target is the only ownerless socket of the thread's netns (`all` is every socket of
/// that netns).
pub fn waiters_of(targets: &[Socket], all: &[Socket], blocked: &[BlockedThread]) -> Vec<Waiter> {
    let mut out = Vec::new();
    for b in blocked {
        // The fd number in `/proc/.../syscall` is what the thread passed; after a close it may
        // have been reused. It counts only when it points at a TCP/UDP socket of the thread's own
        // netns. A receive syscall (not `read`) whose fd now points at anything else had its fd
        // closed (and maybe reused), like a closed fd.
        let recv_call = b.syscall != 0;
        let current = b.fd_socket.filter(|ino| all.iter().any(|s| s.inode == *ino && s.netns == b.netns));
        let (socket, certainty) = match current {
            Some(ino) => (ino, "fd"),
            None if !b.fd_open || recv_call => {
                let orphans: Vec<&Socket> = all
                    .iter()
                    .filter(|s| s.netns == b.netns && s.owners.is_empty() && s.inode.0 != 0 && s.state != "LISTEN")
                    .collect();
                match orphans.as_slice() {
                    [one] => (one.inode, "inferred"),
                    _ => continue,
                }
            }
            None => continue,
        };
        if !targets.iter().any(|t| t.inode == socket) {
            continue;
        }
        out.push(Waiter {
            socket,
            pid: b.pid,
            tid: b.tid,
            comm: b.comm.clone(),
            syscall: syscall_name(b.syscall),
            via: "recv",
            fd: b.fd,
            epfd: None,
            certainty,
        });
    }
    out.sort_by_key(|w| (w.socket, w.tid));
    out.dedup_by_key(|w| w.tid);
    out
}

/// The mechanism that destroys a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `bpf_sock_destroy()` from an `iter/udp` / `iter/tcp` program (Linux >= 6.5).
    BpfSockDestroy,
    /// `SOCK_DESTROY` over NETLINK_SOCK_DIAG (`CONFIG_INET_DIAG_DESTROY`).
    SockDiag,
}

impl Via {
    /// JSON spelling (`bpf_sock_destroy`, `sock_diag`).
    pub fn name(self) -> &'static str {
        match self {
            Via::BpfSockDestroy => "bpf_sock_destroy",
            Via::SockDiag => "sock_diag",
        }
    }
}

/// What happened to one selected socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `--dry-run`: nothing was done.
    WouldDestroy,
    /// Destroyed by `via`.
    Destroyed(Via),
    /// The socket went away (or its cookie changed) between selection and destroy: not an error.
    Gone(Via),
    /// It could not be destroyed; the message names the cause.
    Failed(Option<Via>, String),
}

/// The first syscall return of a watched waiter (`raw_syscalls:sys_exit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Return {
    /// CLOCK_MONOTONIC ns of the return.
    pub ts_ns: u64,
    /// Return value (`-errno` on error).
    pub ret: i64,
    /// Syscall number.
    pub nr: i64,
}

/// The observation window after a destroy: which watched threads returned from their syscall,
/// and whether it is time to stop watching. Times are CLOCK_MONOTONIC ns.
#[derive(Clone, Debug)]
pub struct Observation {
    tids: Vec<u32>,
    returns: HashMap<u32, Return>,
    /// When the destroy started (before the first socket was destroyed).
    pub destroyed_at_ns: u64,
    until_ns: u64,
}

impl Observation {
    /// Watches the threads of `waiters` (each once) for `window_ns` from `destroyed_at_ns`.
    pub fn new(waiters: &[Waiter], destroyed_at_ns: u64, window_ns: u64) -> Self {
        let mut tids: Vec<u32> = waiters.iter().map(|w| w.tid).collect();
        tids.sort_unstable();
        tids.dedup();
        Observation { tids, returns: HashMap::new(), destroyed_at_ns, until_ns: destroyed_at_ns.saturating_add(window_ns) }
    }

    /// The thread ids to watch (sorted, unique).
    pub fn tids(&self) -> &[u32] {
        &self.tids
    }

    /// Records the first return of `tid` seen (later ones of the same thread are other calls).
    pub fn saw(&mut self, tid: u32, r: Return) {
        if self.tids.contains(&tid) {
            self.returns.entry(tid).or_insert(r);
        }
    }

    /// True when every watched thread returned, or the window ended at `now_ns`.
    pub fn done(&self, now_ns: u64) -> bool {
        self.returns.len() == self.tids.len() || now_ns >= self.until_ns
    }

    /// ns left in the window at `now_ns`.
    pub fn left_ns(&self, now_ns: u64) -> u64 {
        self.until_ns.saturating_sub(now_ns)
    }

    /// The returns seen, by tid.
    pub fn returns(&self) -> &HashMap<u32, Return> {
        &self.returns
    }
}

/// A waiter and what it did within the observation window.
#[derive(Clone, Debug, Serialize)]
pub struct WaiterReport {
    /// The waiter.
    #[serde(flatten)]
    pub waiter: Waiter,
    /// It returned from its syscall within the window.
    pub woke: bool,
    /// Milliseconds from the destroy to the return (negative: it returned before the destroy
    /// of its socket, for another reason).
    pub woke_ms: Option<f64>,
    /// The syscall's return value.
    pub ret: Option<i64>,
    /// `-ret` when negative (103 = `ECONNABORTED`).
    pub errno: Option<i32>,
    /// Name of `errno`.
    pub errno_name: Option<String>,
    /// How the return was seen: `raw_syscalls:sys_exit`, or `none` (dry run / not observed).
    pub observed_by: &'static str,
}

/// One socket of the report.
#[derive(Clone, Debug, Serialize)]
pub struct SocketReport {
    /// Socket inode.
    pub inode: SockInode,
    /// Socket cookie (`bpf_get_socket_cookie()` in the socket iterator, the value
    /// `sock_gen_cookie()` gives sock_diag), None when the iterator gave none.
    pub cookie: Option<u64>,
    /// Netns inode of the socket.
    pub netns: NetnsIno,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// TCP state or `UNCONN`/`ESTABLISHED` for UDP.
    pub state: &'static str,
    /// `ADDR:PORT`.
    pub local: String,
    /// `ADDR:PORT` (`*:*` when not connected).
    pub remote: String,
    /// `sk_bound_dev_if` (0: none).
    pub bound_dev_if: u32,
    /// Processes holding an fd to it.
    pub owners: Vec<Owner>,
    /// Its health, or null.
    pub stranded: Option<Stranded>,
    /// The selectors it matched.
    pub selected_by: Vec<&'static str>,
    /// The socket was destroyed now.
    pub destroyed: bool,
    /// `destroyed`, `gone`, `failed` or `would_destroy`.
    pub result: &'static str,
    /// Mechanism used, when one ran.
    pub via: Option<Via>,
    /// Why it was not destroyed.
    pub error: Option<String>,
    /// Threads that waited on it.
    pub waiters: Vec<WaiterReport>,
}

/// The whole `abort` report.
#[derive(Clone, Debug, Serialize)]
pub struct AbortReport {
    /// `--dry-run`.
    pub dry_run: bool,
    /// Netns inode of the sockets.
    pub netns: NetnsIno,
    /// Mechanism chosen for the run.
    pub via: Option<Via>,
    /// Why a better mechanism was not used.
    pub refused: Vec<String>,
    /// Observation window, ms.
    pub observe_ms: u64,
    /// Per socket.
    pub sockets: Vec<SocketReport>,
    /// Matched but kept (TCP LISTEN not named by inode).
    pub skipped: Vec<Skipped>,
    /// Sockets destroyed.
    pub destroyed: usize,
    /// Sockets that went away before the destroy.
    pub gone: usize,
    /// Sockets that could not be destroyed.
    pub failed: usize,
    /// `SIGINT`/`SIGTERM` when the observation was cut short.
    pub interrupted: Option<crate::kernel::signals::Stop>,
}

/// Builds the report from the targets, outcomes, waiters and the returns seen.
/// `destroyed_at_ns` is CLOCK_MONOTONIC when the destroy ran; `returns` is keyed by tid.
#[allow(clippy::too_many_arguments)]
pub fn report(
    netns: NetnsIno,
    dry_run: bool,
    via: Option<Via>,
    refused: Vec<String>,
    observe_ms: u64,
    targets: &[Target],
    outcomes: &[Outcome],
    waiters: &[Waiter],
    returns: &HashMap<u32, Return>,
    destroyed_at_ns: u64,
    skipped: Vec<Skipped>,
) -> AbortReport {
    let mut sockets = Vec::new();
    for (t, o) in targets.iter().zip(outcomes) {
        let s = &t.socket;
        let (result, destroyed, used, error) = match o {
            Outcome::WouldDestroy => ("would_destroy", false, None, None),
            Outcome::Destroyed(v) => ("destroyed", true, Some(*v), None),
            Outcome::Gone(v) => ("gone", false, Some(*v), None),
            Outcome::Failed(v, e) => ("failed", false, *v, Some(e.clone())),
        };
        let ws = waiters
            .iter()
            .filter(|w| w.socket == s.inode)
            .map(|w| {
                let r = returns.get(&w.tid);
                let errno = r.and_then(|r| (r.ret < 0).then_some((-r.ret) as i32));
                WaiterReport {
                    waiter: w.clone(),
                    woke: r.is_some(),
                    woke_ms: r.map(|r| (r.ts_ns as i128 - destroyed_at_ns as i128) as f64 / 1e6),
                    ret: r.map(|r| r.ret),
                    errno,
                    errno_name: errno.map(errno_name),
                    observed_by: if dry_run || matches!(o, Outcome::Failed(..)) { "none" } else { "raw_syscalls:sys_exit" },
                }
            })
            .collect();
        let remote = if s.remote_port == 0 && s.remote_addr.is_unspecified() { "*:*".to_string() } else { endpoint(s.remote_addr, s.remote_port) };
        sockets.push(SocketReport {
            inode: s.inode,
            cookie: (s.cookie != 0).then_some(s.cookie),
            netns: s.netns,
            protocol: s.protocol,
            state: s.state,
            local: endpoint(s.local_addr, s.local_port),
            remote,
            bound_dev_if: s.bound_dev_if,
            owners: s.owners.clone(),
            stranded: t.stranded.clone(),
            selected_by: t.because.clone(),
            destroyed,
            result,
            via: used,
            error,
            waiters: ws,
        });
    }
    let count = |r: &str| sockets.iter().filter(|s| s.result == r).count();
    AbortReport {
        dry_run,
        netns,
        via,
        refused,
        observe_ms,
        destroyed: count("destroyed"),
        gone: count("gone"),
        failed: count("failed"),
        sockets,
        skipped,
        interrupted: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use ifsock_common::{sock_flags, SockRecord};

    use super::*;
    use crate::model::link::{AddrTable, Link};

    fn sock(ino: u64, laddr: [u8; 4], bound: u32, proto: u8, state: u8, owner: Option<u32>) -> Socket {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&laddr);
        let rec = SockRecord {
            sk: ino, cookie: ino, ino, netns: 7, uid: 0, bound_dev_if: bound, family: 2, protocol: proto, state,
            lport: 5000, rport: 0, flags: sock_flags::PKTINFO, laddr: raw, raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        let mut s = Socket::from_record(&rec);
        if let Some(pid) = owner {
            s.owners.push(Owner { pid, comm: "srv".into(), fd: 3 });
        }
        s
    }

    fn link(ifindex: u32, name: &str, up: bool, addr: Option<[u8; 4]>) -> Link {
        Link {
            ifindex: IfIndex(ifindex),
            name: name.into(),
            flags: if up { libc::IFF_UP as u32 } else { 0 },
            addrs: addr.map(std::net::IpAddr::from).into_iter().collect::<BTreeSet<_>>(),
        }
    }

    const NS: NetnsIno = NetnsIno(7);
    const SCOPE: &[NetnsIno] = &[NS];

    /// The health the view feeds: `model::stranded::health` against a snapshot without
    /// address details and without seen deletions.
    fn health(links: &[Link]) -> impl Fn(&Socket) -> Option<Stranded> + '_ {
        move |s| stranded::health(s, links, &AddrTable::default(), &[])
    }

    #[test]
    fn selection_without_selector_or_with_pid_alone_is_refused() {
        let socks = vec![sock(10, [0; 4], 0, 17, 7, Some(1))];
        let none = |_: &Socket| None;
        assert_eq!(select(&socks, SCOPE, &Selector::default(), &[], none).unwrap_err(), SelectError::NoSelector);
        let sel = Selector { pid: Some(1), ..Default::default() };
        assert_eq!(select(&socks, SCOPE, &sel, &[], none).unwrap_err(), SelectError::PidAlone);
    }

    #[test]
    fn unknown_inode_and_other_netns_inode_are_errors() {
        let mut other = sock(11, [0; 4], 0, 17, 7, None);
        other.netns = NetnsIno(8);
        let socks = vec![sock(10, [0; 4], 0, 17, 7, None), other];
        let sel = Selector { inodes: vec![SockInode(99)], ..Default::default() };
        assert_eq!(select(&socks, SCOPE, &sel, &[], |_| None).unwrap_err(), SelectError::NoSuchInode(SockInode(99), "netns 7".into()));
        let sel = Selector { inodes: vec![SockInode(11)], ..Default::default() };
        assert!(matches!(select(&socks, SCOPE, &sel, &[], |_| None), Err(SelectError::NoSuchInode(..))));
    }

    #[test]
    fn stranded_iface_selects_exactly_that_interfaces_dead_sockets() {
        let links = vec![link(4, "x", false, None), link(5, "y", true, Some([10, 0, 0, 1])), link(6, "z", false, None)];
        let socks = vec![
            sock(10, [0; 4], 4, 17, 7, Some(1)),        // on x, x down: selected
            sock(11, [10, 0, 0, 1], 0, 17, 7, Some(1)), // healthy on y
            sock(12, [0; 4], 6, 17, 7, Some(1)),        // stranded, but on z
            sock(13, [0; 4], 4, 6, 10, Some(1)),        // LISTEN on x: kept
        ];
        let sel = Selector { stranded: true, iface: Some(("x".into(), vec![(NS, IfIndex(4))])), ..Default::default() };
        let (t, skipped) = select(&socks, SCOPE, &sel, &[], health(&links)).unwrap();
        assert_eq!(t.iter().map(|t| t.socket.inode.0).collect::<Vec<_>>(), vec![10]);
        assert_eq!(t[0].because, vec!["stranded", "iface"]);
        assert_eq!(skipped.iter().map(|s| s.inode.0).collect::<Vec<_>>(), vec![13]);
        // Named by inode, a LISTEN socket is destroyed.
        let sel = Selector { inodes: vec![SockInode(13)], ..Default::default() };
        assert_eq!(select(&socks, SCOPE, &sel, &[], health(&links)).unwrap().0.len(), 1);
    }

    #[test]
    fn selectors_combine_as_and_and_empty_results_are_errors() {
        let links = vec![link(4, "x", false, None)];
        let socks = vec![sock(10, [0; 4], 4, 17, 7, Some(1)), sock(11, [0; 4], 4, 17, 7, Some(2))];
        let sel = Selector { stranded: true, pid: Some(2), ..Default::default() };
        let (t, _) = select(&socks, SCOPE, &sel, &[], health(&links)).unwrap();
        assert_eq!(t.iter().map(|t| t.socket.inode.0).collect::<Vec<_>>(), vec![11]);
        let sel = Selector { inodes: vec![SockInode(10)], pid: Some(2), ..Default::default() };
        assert!(matches!(select(&socks, SCOPE, &sel, &[], health(&links)), Err(SelectError::NothingMatched(..))));
        let sel = Selector { stranded: true, ..Default::default() };
        assert!(matches!(select(&socks, SCOPE, &sel, &[], |_| None), Err(SelectError::NothingMatched(..))));
    }

    fn blocked(tid: u32, fd_socket: Option<u64>) -> BlockedThread {
        BlockedThread {
            pid: 100, tid, comm: "rx".into(), syscall: libc::SYS_recvmsg as u64, fd: 3,
            fd_socket: fd_socket.map(SockInode), fd_open: fd_socket.is_some(), netns: NS, blocked_ns: None,
        }
    }

    #[test]
    fn waiters_by_open_fd_or_inferred_only_when_unambiguous() {
        let target = sock(10, [0; 4], 0, 17, 7, None);
        let owned = sock(11, [0; 4], 0, 17, 7, Some(1));
        let all = vec![target.clone(), owned.clone()];
        let w = waiters_of(std::slice::from_ref(&target), &all, &[blocked(200, None), blocked(201, Some(11))]);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].tid, w[0].certainty, w[0].syscall), (200, "inferred", "recvmsg"));
        // A second ownerless socket makes the closed fd ambiguous: no waiter is claimed.
        let all = vec![target.clone(), sock(12, [0; 4], 0, 17, 7, None)];
        assert!(waiters_of(std::slice::from_ref(&target), &all, &[blocked(200, None)]).is_empty());
        let w = waiters_of(std::slice::from_ref(&owned), std::slice::from_ref(&owned), &[blocked(201, Some(11))]);
        assert_eq!(w[0].certainty, "fd");
        // A closed fd number reused by a socket of another netns is not evidence.
        let mut elsewhere = blocked(202, Some(11));
        elsewhere.netns = NetnsIno(8);
        assert!(waiters_of(std::slice::from_ref(&owned), std::slice::from_ref(&owned), &[elsewhere]).is_empty());
        // recvmsg on an fd that now points at a pipe (reused after close): treated as closed.
        let mut reused = blocked(203, None);
        reused.fd_open = true;
        let all = vec![target.clone(), sock(11, [0; 4], 0, 17, 7, Some(1))];
        assert_eq!(waiters_of(std::slice::from_ref(&target), &all, &[reused.clone()])[0].certainty, "inferred");
        reused.syscall = 0; // read(2) on an open non-socket fd: a pipe reader, not a waiter
        assert!(waiters_of(std::slice::from_ref(&target), &all, &[reused]).is_empty());
    }

    #[test]
    fn report_gives_woke_ms_errno_and_counts() {
        let t = |ino| Target { socket: sock(ino, [0; 4], 0, 17, 7, None), stranded: None, because: vec!["inode"] };
        let targets = vec![t(10), t(11), t(12)];
        let waiter = Waiter { socket: SockInode(10), pid: 100, tid: 200, comm: "rx".into(), syscall: "recvmsg", via: "recv", fd: 3, epfd: None, certainty: "inferred" };
        let returns = HashMap::from([(200, Return { ts_ns: 1_500_000, ret: -103, nr: 47 })]);
        let outcomes = vec![Outcome::Destroyed(Via::SockDiag), Outcome::Gone(Via::SockDiag), Outcome::Failed(Some(Via::SockDiag), "EPERM".into())];
        let r = report(NS, false, Some(Via::SockDiag), vec![], 500, &targets, &outcomes, &[waiter], &returns, 1_000_000, vec![]);
        assert_eq!((r.destroyed, r.gone, r.failed), (1, 1, 1));
        let s = &r.sockets[0];
        assert!(s.destroyed);
        assert_eq!(s.cookie, Some(10), "the iterator's cookie");
        assert_eq!(s.remote, "*:*");
        let w = &s.waiters[0];
        assert!(w.woke);
        assert_eq!(w.woke_ms, Some(0.5));
        assert_eq!(w.errno, Some(103));
        assert_eq!(w.errno_name.as_deref(), Some("ECONNABORTED"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["sockets"][0]["via"], "sock_diag");
        assert_eq!(json["sockets"][0]["waiters"][0]["tid"], 200);
        assert_eq!(json["sockets"][1]["result"], "gone");
    }

    #[test]
    fn indexed_epoll_and_poll_waiters_join_receivers_once() {
        let sw = |tid, via, fd: Option<u32>, epfd| stranded::Waiter {
            pid: 100, tid, comm: "loop".into(), syscall: "epoll_wait", via, fd, epfd, fds: None, reason: None, source: stranded::WaiterSource::Proc,
        };
        let recv = Waiter { socket: SockInode(10), pid: 100, tid: 200, comm: "rx".into(), syscall: "recvmsg", via: "recv", fd: 3, epfd: None, certainty: "fd" };
        let mut out = vec![recv];
        let found = [
            sw(200, stranded::Via::Recv, Some(3), None),    // the same receiver: not twice
            sw(199, stranded::Via::Recv, Some(3), None),    // a receive the fd table alone ties: not trusted
            sw(201, stranded::Via::Epoll, Some(3), Some(4)), // epoll on it
            sw(202, stranded::Via::Poll, Some(3), None),
            sw(203, stranded::Via::Unknown, None, None),     // untied wait: not claimed
        ];
        add_indexed(&mut out, SockInode(10), &found);
        let got: Vec<_> = out.iter().map(|w| (w.tid, w.via, w.epfd)).collect();
        assert_eq!(got, vec![(200, "recv", None), (201, "epoll", Some(4)), (202, "poll", None)]);
    }

    #[test]
    fn observation_ends_when_all_returned_or_window_over() {
        let w = |tid| Waiter { socket: SockInode(10), pid: 1, tid, comm: "x".into(), syscall: "epoll_wait", via: "epoll", fd: 3, epfd: Some(4), certainty: "fd" };
        let mut o = Observation::new(&[w(5), w(6), w(5)], 1_000, 500);
        assert_eq!(o.tids(), &[5, 6]);
        assert!(!o.done(1_100));
        o.saw(5, Return { ts_ns: 1_050, ret: 1, nr: 232 });
        o.saw(5, Return { ts_ns: 1_060, ret: -4, nr: 232 });
        o.saw(9, Return { ts_ns: 1_060, ret: 0, nr: 0 });
        assert_eq!(o.returns()[&5].ret, 1, "the first return is the wake-up");
        assert!(!o.done(1_100));
        assert!(o.done(1_500), "window over");
        assert_eq!(o.left_ns(1_200), 300);
        o.saw(6, Return { ts_ns: 1_070, ret: -103, nr: 47 });
        assert!(o.done(1_100), "all returned");
    }

    #[test]
    fn scope_holds_several_namespaces_and_iface_is_per_netns() {
        let links = vec![link(4, "x", false, None)];
        let mut other = sock(11, [0; 4], 4, 17, 7, Some(1));
        other.netns = NetnsIno(8);
        let socks = vec![sock(10, [0; 4], 4, 17, 7, Some(1)), other];
        let sel = Selector { stranded: true, ..Default::default() };
        let (t, _) = select(&socks, &[NS, NetnsIno(8)], &sel, &[], health(&links)).unwrap();
        assert_eq!(t.len(), 2);
        // ifindex 4 of netns 7 is not ifindex 4 of netns 8.
        let sel = Selector { stranded: true, iface: Some(("x".into(), vec![(NetnsIno(8), IfIndex(4))])), ..Default::default() };
        let (t, _) = select(&socks, &[NS, NetnsIno(8)], &sel, &[], health(&links)).unwrap();
        assert_eq!(t.iter().map(|t| t.socket.inode.0).collect::<Vec<_>>(), vec![11]);
        let (t, _) = select(&socks, SCOPE, &Selector { stranded: true, ..Default::default() }, &[], health(&links)).unwrap();
        assert_eq!(t.len(), 1, "without the other netns in scope its sockets are never touched");
    }
}
