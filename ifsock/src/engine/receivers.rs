//! The receivers correlator behind `hung` and watch's `receiver_stranded`: joins threads asleep
//! on a socket's wait queue (the waiter walk), in-flight receive records (probes, only with
//! `--record-receives`), threads procfs shows blocked in a receive syscall, the sockets of the
//! snapshots and the link tables into [`HungReceiver`] rows, each with how surely its socket is
//! known and whether an interface change strands it.
//!
//! No I/O: the two task facts it needs on demand (is a thread alive, what does an fd point at)
//! come through [`TaskSource`]; everything else is a value in [`Inputs`], the clock included.
//!
//! Evidence, strongest first: the thread is on the socket's wait queue, or a probe recorded the
//! socket when the receive started (`exact`); the syscall's fd still points at a socket
//! (`current_fd`); the only ownerless socket in the task's netns (`inferred`, only when the
//! wait queues could not be read). An inference is never shown as a fact. A thread is one row:
//! a probe record and a wait-queue entry of the same thread make one row (the probe's start
//! time, the queue's `source`), and procfs adds only threads neither saw.
//!
//! Threads that wait for a socket elsewhere (epoll, poll, select: `kernel::waiters`) are listed
//! apart, by `engine::health::event_loop_waiters`.
use std::collections::{HashMap, HashSet};

use crate::{
    model::{
        ids::{IfIndex, NetnsIno, SockInode},
        link::Link,
        kernel_event::{ProbeVia, RecvEntry},
        receiver::{stranded, ties, BlockedSince, BlockedThread, Certainty, HungReceiver, IfaceState, IfaceTie, InFlight, QueuedReceiver, ReceiverSource, TaskSource},
        socket::{Binding, Socket},
        sys::recv_syscall_name as syscall_name,
    },
};

/// Interfaces per netns: what receivers' sockets are tied to.
#[derive(Default, Clone, Debug)]
pub struct Context {
    /// Links of each netns (current).
    pub links: HashMap<NetnsIno, Vec<Link>>,
    /// Interfaces deleted while this run watched, per netns (with their last addresses).
    pub deleted: HashMap<NetnsIno, Vec<Link>>,
}

impl Context {
    /// Interfaces `socket` is tied to, in its own netns.
    pub fn ties(&self, socket: &Socket) -> Vec<IfaceTie> {
        let current = self.links.get(&socket.netns).map(Vec::as_slice).unwrap_or_default();
        let deleted = self.deleted.get(&socket.netns).map(Vec::as_slice).unwrap_or_default();
        ties(socket, current, deleted)
    }
}

/// Which namespaces' receivers to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsFilter {
    /// Every namespace (`--all-netns`, and watch).
    All,
    /// Only receivers whose [`HungReceiver::netns`] is this one: the socket's netns when the
    /// socket is known, else the thread's.
    Only(NetnsIno),
}

/// Which receivers to keep.
#[derive(Clone, Copy, Debug)]
pub struct Filter {
    /// Blocked at least this long (ns); receivers whose blocked time is unknown are kept.
    pub min_blocked_ns: u64,
    /// Only this process (thread-group id).
    pub pid: Option<u32>,
    /// Only this netns.
    pub netns: NetnsFilter,
}

impl Filter {
    /// Everything (watch: its own thresholds come later).
    pub const ALL: Filter = Filter { min_blocked_ns: 0, pid: None, netns: NetnsFilter::All };
}

/// One scan's inputs.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Threads asleep in a receive on a socket's wait queue (the waiter walk).
    pub queued: &'a [QueuedReceiver],
    /// Whether the wait queues of the scanned namespaces were read (`queued` is the whole
    /// answer for their UDP and TCP sockets); false: the `/proc` fallback, inference allowed.
    pub walked: bool,
    /// In-flight receives recorded by the probes (empty without `--record-receives`).
    pub inflight: &'a [InFlight],
    /// Threads procfs shows blocked in a receive syscall.
    pub blocked: &'a [BlockedThread],
    /// Sockets of every netns scanned (see [`namespaces_to_scan`]).
    pub sockets: &'a [Socket],
    /// Links per netns.
    pub ctx: &'a Context,
    /// "Now" on CLOCK_MONOTONIC (ns), the clock of [`InFlight::since_ns`].
    pub now_ns: u64,
}

/// Namespaces other than `own` whose sockets a scan needs: those of threads in a receive (a
/// receiver's socket lives in its thread's netns unless it was created before a `setns`).
pub fn namespaces_to_scan(inflight: &[InFlight], blocked: &[BlockedThread], own: NetnsIno) -> Vec<NetnsIno> {
    let mut out: Vec<NetnsIno> = inflight.iter().map(|e| e.netns).chain(blocked.iter().map(|b| b.netns)).filter(|n| *n != own).collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a scan filtered by `filter` needs the sockets of other namespaces, given the inodes
/// `known` from the caller's (`own`) snapshot. Listing every netns: always. Filtered on `own`:
/// only for a thread of `own` whose socket is not there (made in another netns before a
/// `setns`), which would otherwise count as ours; foreign threads on sockets of `own` are
/// found in `own`'s snapshot.
pub fn needs_foreign_sockets(filter: &Filter, own: NetnsIno, inflight: &[InFlight], blocked: &[BlockedThread], known: &HashSet<SockInode>) -> bool {
    match filter.netns {
        NetnsFilter::All => true,
        NetnsFilter::Only(_) => {
            inflight.iter().any(|e| e.netns == own && !known.contains(&e.ino))
                || blocked.iter().any(|b| b.netns == own && b.fd_socket.is_some_and(|i| !known.contains(&i)))
        }
    }
}

/// Every receiver that passes `filter`, longest blocked first.
pub fn receivers(input: &Inputs<'_>, filter: &Filter, tasks: &impl TaskSource) -> Vec<HungReceiver> {
    let by_ino: HashMap<SockInode, &Socket> = input.sockets.iter().filter(|s| s.inode.0 != 0).map(|s| (s.inode, s)).collect();
    let (mut out, mut seen) = from_inflight(input, &by_ino, filter, tasks);
    out.extend(from_queued(input, &by_ino, filter, tasks, &mut seen));
    out.extend(from_blocked(input, &by_ino, filter, &seen));
    out.retain(|r| match filter.netns {
        NetnsFilter::All => true,
        NetnsFilter::Only(ns) => r.netns == ns,
    });
    out.sort_by(|a, b| b.blocked_ns.cmp(&a.blocked_ns).then(a.tid.cmp(&b.tid)));
    out
}

/// Rows from in-flight records (`exact`), and every tid a record covers (listed or below the
/// threshold), so that the procfs rows of the same threads are not added again.
pub fn from_inflight(
    input: &Inputs<'_>,
    by_ino: &HashMap<SockInode, &Socket>,
    filter: &Filter,
    tasks: &impl TaskSource,
) -> (Vec<HungReceiver>, HashSet<u32>) {
    let by_tid: HashMap<u32, &BlockedThread> = input.blocked.iter().map(|b| (b.tid, b)).collect();
    let on_queue: HashSet<(u32, SockInode)> = input.queued.iter().map(|q| (q.tid, q.ino)).collect();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for e in input.inflight {
        if filter.pid.is_some_and(|p| p != e.pid) || !tasks.thread_alive(e.pid, e.tid) {
            continue;
        }
        let proc_view = by_tid.get(&e.tid).copied();
        let queued = on_queue.contains(&(e.tid, e.ino));
        // A kretprobe can miss a return (its instance pool is bounded), leaving a record behind
        // a thread that is no longer receiving: trust a kprobe record only while procfs or the
        // socket's wait queue agrees.
        if e.via == ProbeVia::Kprobe && proc_view.is_none() && !queued {
            continue;
        }
        seen.insert(e.tid);
        let blocked_ns = input.now_ns.saturating_sub(e.since_ns);
        if blocked_ns < filter.min_blocked_ns {
            continue;
        }
        let (syscall, fd) = match (e.syscall_name(), e.fd, proc_view) {
            (Some(sc), Some(fd), _) => (sc, Some(fd)),
            (_, _, Some(b)) => (syscall_name(b.syscall), Some(b.fd)),
            _ => ("?", None),
        };
        let socket = by_ino.get(&e.ino).map(|s| (*s).clone());
        let interfaces = socket.as_ref().map(|s| input.ctx.ties(s)).unwrap_or_default();
        let probe = e.probe_name();
        let evidence = match e.entry {
            RecvEntry::Syscall => {
                format!("socket inode {} resolved from fd {} at {syscall} entry ({probe})", e.ino, fd.map_or("?".into(), |f| f.to_string()))
            }
            _ => format!("socket inode {} from the struct sock argument of {probe}", e.ino),
        };
        let evidence = if queued { format!("{evidence}; on its wait queue now") } else { evidence };
        out.push(HungReceiver {
            pid: e.pid,
            tid: e.tid,
            comm: e.comm.clone(),
            syscall,
            fd,
            fd_open: fd.is_some_and(|fd| tasks.fd_socket(e.pid, fd) == Some(e.ino)),
            blocked_ns: Some(blocked_ns),
            blocked_source: if e.entry == RecvEntry::Syscall { "syscall_entry" } else { "function_entry" },
            blocked_since_source: BlockedSince::RecvProbe,
            source: if queued { ReceiverSource::WaitQueue } else { ReceiverSource::RecvProbe },
            probe: Some(probe),
            in_wait: (e.via != ProbeVia::Tracepoint).then_some(e.wait_since_ns.is_some()),
            certainty: Certainty::Exact,
            evidence,
            orphaned: socket.as_ref().is_some_and(|s| s.owners.is_empty()),
            netns: socket.as_ref().map_or(e.netns, |s| s.netns),
            stranded: socket.as_ref().is_some_and(|s| stranded(s, &interfaces)),
            socket,
            candidates: Vec::new(),
            interfaces,
        });
    }
    (out, seen)
}

/// Rows from threads on a socket's wait queue that no in-flight record covers (`exact`, blocked
/// time from the scheduler); their tids join `seen`.
pub fn from_queued(
    input: &Inputs<'_>,
    by_ino: &HashMap<SockInode, &Socket>,
    filter: &Filter,
    tasks: &impl TaskSource,
    seen: &mut HashSet<u32>,
) -> Vec<HungReceiver> {
    let by_tid: HashMap<u32, &BlockedThread> = input.blocked.iter().map(|b| (b.tid, b)).collect();
    let mut out = Vec::new();
    for q in input.queued {
        if filter.pid.is_some_and(|p| p != q.pid) || !seen.insert(q.tid) {
            continue;
        }
        let proc_view = by_tid.get(&q.tid).copied();
        let blocked_ns = proc_view.and_then(|b| b.blocked_ns).or(q.blocked_ns);
        if blocked_ns.is_some_and(|n| n < filter.min_blocked_ns) {
            continue;
        }
        let socket = by_ino.get(&q.ino).map(|s| (*s).clone());
        let interfaces = socket.as_ref().map(|s| input.ctx.ties(s)).unwrap_or_default();
        let fd_open = q.fd.is_some_and(|fd| tasks.fd_socket(q.pid, fd) == Some(q.ino));
        let fd_text = q.fd.map_or("?".into(), |f| f.to_string());
        out.push(HungReceiver {
            pid: q.pid,
            tid: q.tid,
            comm: q.comm.clone(),
            syscall: q.syscall,
            fd: q.fd,
            fd_open,
            blocked_ns,
            blocked_source: "sched_exec_start",
            blocked_since_source: BlockedSince::Scheduler,
            source: ReceiverSource::WaitQueue,
            probe: None,
            in_wait: None,
            certainty: Certainty::Exact,
            evidence: format!(
                "asleep in {} (fd {fd_text}{}) on the wait queue of socket:[{}] (sk->sk_wq->wait)",
                q.syscall,
                if fd_open { "" } else { ", closed" },
                q.ino
            ),
            orphaned: socket.as_ref().is_some_and(|s| s.owners.is_empty()),
            netns: socket.as_ref().map_or(q.netns, |s| s.netns),
            stranded: socket.as_ref().is_some_and(|s| stranded(s, &interfaces)),
            socket,
            candidates: Vec::new(),
            interfaces,
        });
    }
    out
}

/// Rows from procfs-only threads (no in-flight record, on no walked wait queue): `current_fd`,
/// `inferred` (only without the walk), `ambiguous` or `unknown`.
pub fn from_blocked(input: &Inputs<'_>, by_ino: &HashMap<SockInode, &Socket>, filter: &Filter, seen: &HashSet<u32>) -> Vec<HungReceiver> {
    let mut out = Vec::new();
    for b in input.blocked {
        if seen.contains(&b.tid) || filter.pid.is_some_and(|p| p != b.pid) || b.blocked_ns.is_some_and(|n| n < filter.min_blocked_ns) {
            continue;
        }
        let name = syscall_name(b.syscall);
        let (socket, certainty, evidence, candidates) = match b.fd_socket {
            Some(ino) => (
                by_ino.get(&ino).map(|s| (*s).clone()),
                Certainty::CurrentFd,
                format!("/proc/{}/task/{}/syscall: {name} on fd {}; fd {} → socket:[{}] now", b.pid, b.tid, b.fd, b.fd, ino.0),
                Vec::new(),
            ),
            // The thread would be on its socket's queue if that were a UDP or TCP socket of a
            // walked netns: an ownerless socket there is someone else's.
            None if input.walked => (
                None,
                Certainty::Unknown,
                format!(
                    "fd {} is closed and the thread is on no UDP or TCP socket's wait queue in netns {} (a socket of another kind, or one made in another netns)",
                    b.fd, b.netns
                ),
                Vec::new(),
            ),
            None => {
                // A listening TCP socket has no fd-less reader; it is never the lost one.
                let orphans: Vec<&Socket> = input
                    .sockets
                    .iter()
                    .filter(|s| s.netns == b.netns && s.owners.is_empty() && s.inode.0 != 0 && s.state != "LISTEN")
                    .collect();
                match orphans.as_slice() {
                    [one] => (
                        Some((*one).clone()),
                        Certainty::Inferred,
                        format!("fd {} is closed; socket:[{}] is the only socket without an fd in netns {} (inference, not a record)", b.fd, one.inode, b.netns),
                        Vec::new(),
                    ),
                    [] => (None, Certainty::Unknown, format!("fd {} is closed and no ownerless socket exists in netns {}", b.fd, b.netns), Vec::new()),
                    many => (
                        None,
                        Certainty::Ambiguous,
                        format!("fd {} is closed; {} ownerless sockets in netns {} could be it", b.fd, many.len(), b.netns),
                        many.iter().map(|s| s.inode).collect(),
                    ),
                }
            }
        };
        let interfaces = socket.as_ref().map(|s| input.ctx.ties(s)).unwrap_or_default();
        out.push(HungReceiver {
            pid: b.pid,
            tid: b.tid,
            comm: b.comm.clone(),
            syscall: name,
            fd: Some(b.fd),
            fd_open: b.fd_socket.is_some(),
            blocked_ns: b.blocked_ns,
            blocked_source: "sched_exec_start",
            blocked_since_source: BlockedSince::Scheduler,
            source: ReceiverSource::Proc,
            probe: None,
            in_wait: None,
            certainty,
            evidence,
            orphaned: socket.as_ref().is_some_and(|s| s.owners.is_empty()),
            netns: socket.as_ref().map_or(b.netns, |s| s.netns),
            stranded: socket.as_ref().is_some_and(|s| stranded(s, &interfaces)),
            socket,
            candidates,
            interfaces,
        });
    }
    out
}

/// An interface deletion recorded by a recorder that was already running (the agent's or
/// watch's journal, `journal::deletions_since`): the kernel keeps no trace of which interface a
/// wildcard socket last received on, so only such a record can name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedDeletion {
    /// Netns the interface was deleted from.
    pub netns: NetnsIno,
    /// Its ifindex.
    pub ifindex: IfIndex,
    /// Its name.
    pub ifname: String,
    /// When the recorder saw the deletion, ns since the Unix epoch.
    pub ts_unix_ns: u64,
}

/// How far before an estimated receive start a recorded deletion still counts, ns.
pub const ESTIMATED_START_SLACK_NS: u64 = 1_000_000_000;

/// Names deleted bound devices (a `deleted` tie without a name) from recorded deletions, and
/// notes recorded deletions on receivers, as information: a wildcard (no device, unspecified
/// address) IP_PKTINFO socket whose receiver has been blocked since before an interface of its
/// netns was deleted gets a `deleted` tie to that interface, and its evidence names `source`
/// (the journal directory). It is not `stranded`: it still receives on every other interface. Other receivers are left as they are: a device- or
/// address-bound socket already shows its tie, and a receive that began after the deletion was
/// not stranded by it. `now_unix_ns` and `blocked_ns` place the receive's start; when that
/// start is an estimate from the scheduler clock (`blocked_source: sched_exec_start`, measured
/// here to lag by up to ~0.2 s), a deletion up to [`ESTIMATED_START_SLACK_NS`] before it counts.
pub fn mark_recorded_deletions(rows: &mut [HungReceiver], deletions: &[RecordedDeletion], now_unix_ns: u64, source: &str) {
    // A device binding to a deleted ifindex: the kernel forgot its name, the journal did not.
    for r in rows.iter_mut() {
        let Some(netns) = r.socket.as_ref().map(|s| s.netns) else { continue };
        for t in r.interfaces.iter_mut().filter(|t| t.name.is_none() && t.state == IfaceState::Deleted) {
            if let Some(d) = deletions.iter().filter(|d| d.netns == netns && d.ifindex == t.ifindex).max_by_key(|d| d.ts_unix_ns) {
                t.name = Some(d.ifname.clone());
            }
        }
    }
    for r in rows.iter_mut() {
        let (Some(s), Some(blocked)) = (r.socket.as_ref(), r.blocked_ns) else { continue };
        if !(s.pktinfo && s.bound_dev_if == 0 && s.local_addr.is_unspecified()) {
            continue;
        }
        let slack = if r.blocked_since_source == BlockedSince::Scheduler { ESTIMATED_START_SLACK_NS } else { 0 };
        let started = now_unix_ns.saturating_sub(blocked).saturating_sub(slack);
        for d in deletions.iter().filter(|d| d.netns == s.netns && d.ts_unix_ns >= started) {
            if r.interfaces.iter().any(|t| t.ifindex == d.ifindex && t.state == IfaceState::Deleted) {
                continue;
            }
            r.interfaces.push(IfaceTie { ifindex: d.ifindex, name: Some(d.ifname.clone()), binding: Binding::Wildcard, state: IfaceState::Deleted });
            let after_ms = (i128::from(d.ts_unix_ns) - i128::from(started + slack)) / 1_000_000;
            r.evidence.push_str(&format!(
                "; {} (ifindex {}) deleted {after_ms} ms after this receive began{}: from the journal {source}",
                d.ifname,
                d.ifindex,
                if slack > 0 { " (start estimated)" } else { "" }
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        net::{IpAddr, Ipv4Addr},
    };

    use super::*;
    use crate::model::{
        ids::IfIndex,
        receiver::IfaceState,
        socket::{Binding, Owner, Protocol},
    };

    const NS: NetnsIno = NetnsIno(100);
    const OTHER: NetnsIno = NetnsIno(200);
    const S: u64 = 1_000_000_000;

    /// Fake procfs: live threads and fd → socket.
    #[derive(Default)]
    struct Tasks {
        alive: BTreeSet<u32>,
        fds: HashMap<(u32, u32), SockInode>,
    }
    impl TaskSource for Tasks {
        fn thread_alive(&self, _pid: u32, tid: u32) -> bool {
            self.alive.contains(&tid)
        }
        fn fd_socket(&self, pid: u32, fd: u32) -> Option<SockInode> {
            self.fds.get(&(pid, fd)).copied()
        }
    }

    fn sock(ino: u64, netns: NetnsIno, addr: [u8; 4], dev: u32, pktinfo: bool, owned: bool) -> Socket {
        Socket {
            cookie: 0,
            protocol: Protocol::Udp,
            family: 4,
            local_addr: IpAddr::V4(Ipv4Addr::from(addr)),
            local_port: 5000,
            remote_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            remote_port: 0,
            state: "UNCONN",
            inode: SockInode(ino),
            netns,
            uid: 0,
            bound_dev_if: dev,
            pktinfo,
            v4_mapped: false,
            rx_queue: 0,
            drops: 0,
            owners: if owned { vec![Owner { pid: 10, comm: "srv".into(), fd: 3 }] } else { Vec::new() },
            sk: ino,
        }
    }

    fn link(ifindex: u32, name: &str, addr: [u8; 4], up: bool) -> Link {
        Link {
            ifindex: IfIndex(ifindex),
            name: name.into(),
            flags: if up { crate::model::link::IFF_UP } else { 0 },
            addrs: [IpAddr::V4(Ipv4Addr::from(addr))].into_iter().collect(),
        }
    }

    /// How a fake receive was recorded: at the syscall, or at a kernel function.
    #[derive(Clone, Copy, PartialEq)]
    enum RecvProbe {
        Syscall,
        Fentry(&'static str),
        Kprobe(&'static str),
    }

    fn inflight(tid: u32, ino: u64, since_ns: u64, probe: RecvProbe) -> InFlight {
        let (via, entry) = match probe {
            RecvProbe::Syscall => (ProbeVia::Tracepoint, RecvEntry::Syscall),
            RecvProbe::Fentry(_) => (ProbeVia::Fentry, RecvEntry::SkbRecvUdp),
            RecvProbe::Kprobe(_) => (ProbeVia::Kprobe, RecvEntry::SkbRecvUdp),
        };
        let syscall = (probe == RecvProbe::Syscall).then_some(crate::model::sys::RECVMSG);
        InFlight {
            since_ns, sk: 0, ino: SockInode(ino), pid: 10, tid, fd: syscall.map(|_| 3), syscall, netns: NS, via, entry,
            wait_since_ns: None, waited_ns: 0, comm: "srv".into(),
        }
    }

    fn blocked(tid: u32, netns: NetnsIno, fd_socket: Option<u64>, blocked_ns: Option<u64>) -> BlockedThread {
        BlockedThread {
            pid: 10,
            tid,
            comm: "srv".into(),
            syscall: 47,
            fd: 3,
            fd_socket: fd_socket.map(SockInode),
            fd_open: fd_socket.is_some(),
            netns,
            blocked_ns,
        }
    }

    fn ctx(links: Vec<Link>, deleted: Vec<Link>) -> Context {
        Context { links: [(NS, links)].into(), deleted: [(NS, deleted)].into() }
    }

    fn run(inflight: &[InFlight], blocked: &[BlockedThread], sockets: &[Socket], ctx: &Context, filter: Filter, tasks: &Tasks) -> Vec<HungReceiver> {
        receivers(&Inputs { queued: &[], walked: false, inflight, blocked, sockets, ctx, now_ns: 100 * S }, &filter, tasks)
    }

    fn queued(tid: u32, ino: u64, blocked_ns: Option<u64>) -> QueuedReceiver {
        QueuedReceiver { pid: 10, tid, comm: "srv".into(), syscall: "recvmsg", fd: Some(3), ino: SockInode(ino), netns: NS, blocked_ns }
    }

    /// [`run`] with the wait queues read: `queued` is what they held.
    fn run_walked(queued: &[QueuedReceiver], inflight: &[InFlight], blocked: &[BlockedThread], sockets: &[Socket], filter: Filter, tasks: &Tasks) -> Vec<HungReceiver> {
        let c = ctx(vec![], vec![]);
        receivers(&Inputs { queued, walked: true, inflight, blocked, sockets, ctx: &c, now_ns: 100 * S }, &filter, tasks)
    }

    #[test]
    fn each_closed_fd_receiver_on_a_wait_queue_is_exact_on_its_own_socket() {
        // Seed 003 three times in one netns, ifsock started after: three ownerless sockets,
        // three threads whose fd 3 is closed. procfs alone could only say `ambiguous`.
        let socks: Vec<Socket> = (42..45).map(|i| sock(i, NS, [0, 0, 0, 0], 0, true, false)).collect();
        let procs = [blocked(11, NS, None, Some(5 * S)), blocked(12, NS, None, Some(6 * S)), blocked(13, NS, None, Some(7 * S))];
        let q = [queued(11, 42, None), queued(12, 43, None), queued(13, 44, None)];
        let rows = run_walked(&q, &[], &procs, &socks, Filter::ALL, &alive(&[11, 12, 13]));
        type Row = (u32, Option<u64>, Certainty, ReceiverSource, BlockedSince, Option<u64>, bool);
        let got: Vec<Row> = rows
            .iter()
            .map(|r| (r.tid, r.socket.as_ref().map(|s| s.inode.0), r.certainty, r.source, r.blocked_since_source, r.blocked_ns, r.fd_open))
            .collect();
        let exact = |tid, ino, b| (tid, Some(ino), Certainty::Exact, ReceiverSource::WaitQueue, BlockedSince::Scheduler, Some(b), false);
        assert_eq!(got, vec![exact(13, 44, 7 * S), exact(12, 43, 6 * S), exact(11, 42, 5 * S)], "one row per thread, longest first: {rows:#?}");
        assert!(rows.iter().all(|r| r.orphaned && r.evidence.contains("wait queue") && r.candidates.is_empty()));
        // Without the walk the same threads are an ambiguity, as before.
        let rows = run(&[], &procs, &socks, &ctx(vec![], vec![]), Filter::ALL, &alive(&[]));
        assert!(rows.iter().all(|r| r.certainty == Certainty::Ambiguous && r.source == ReceiverSource::Proc), "{rows:#?}");
    }

    #[test]
    fn a_recorded_receive_on_the_queue_is_one_row_with_the_probe_start() {
        let socks = [sock(42, NS, [0, 0, 0, 0], 0, false, true)];
        let rows = run_walked(&[queued(11, 42, Some(S))], &[inflight(11, 42, 90 * S, RecvProbe::Syscall)], &[blocked(11, NS, Some(42), Some(S))], &socks, Filter::ALL, &alive(&[11]));
        assert_eq!(rows.len(), 1, "{rows:#?}");
        let r = &rows[0];
        assert_eq!((r.certainty, r.source, r.blocked_since_source, r.blocked_ns), (Certainty::Exact, ReceiverSource::WaitQueue, BlockedSince::RecvProbe, Some(10 * S)));
        // A record the queue does not hold (the thread is between entry and sleep) keeps its source.
        let rows = run_walked(&[], &[inflight(11, 42, 90 * S, RecvProbe::Syscall)], &[], &socks, Filter::ALL, &alive(&[11]));
        assert_eq!(rows[0].source, ReceiverSource::RecvProbe);
    }

    #[test]
    fn with_the_walk_a_closed_fd_off_every_queue_is_never_inferred() {
        let socks = [sock(42, NS, [0, 0, 0, 0], 0, true, false)];
        let rows = run_walked(&[], &[], &[blocked(11, NS, None, Some(S))], &socks, Filter::ALL, &alive(&[]));
        assert_eq!((rows[0].certainty, rows[0].source), (Certainty::Unknown, ReceiverSource::Proc), "{rows:#?}");
        assert!(rows[0].socket.is_none() && rows[0].evidence.contains("no UDP or TCP socket's wait queue"));
        // An open fd to a socket the walk does not cover (a unix socket) stays `current_fd`.
        let rows = run_walked(&[], &[], &[blocked(11, NS, Some(77), Some(S))], &socks, Filter::ALL, &alive(&[]));
        assert_eq!(rows[0].certainty, Certainty::CurrentFd);
    }

    #[test]
    fn filters_apply_to_queued_receivers() {
        let socks = [sock(42, NS, [0, 0, 0, 0], 0, false, true)];
        let mut other = queued(12, 42, Some(9 * S));
        other.pid = 20;
        let q = [queued(11, 42, Some(S)), other, queued(13, 42, Some(5 * S)), queued(14, 42, None)];
        let tids = |f: Filter| -> Vec<u32> { run_walked(&q, &[], &[], &socks, f, &alive(&[])).iter().map(|r| r.tid).collect() };
        assert_eq!(tids(Filter { min_blocked_ns: 2 * S, ..Filter::ALL }), vec![12, 13, 14]);
        assert_eq!(tids(Filter { pid: Some(10), ..Filter::ALL }), vec![13, 11, 14]);
        assert_eq!(tids(Filter { netns: NetnsFilter::Only(OTHER), ..Filter::ALL }), Vec::<u32>::new());
    }

    fn alive(tids: &[u32]) -> Tasks {
        Tasks { alive: tids.iter().copied().collect(), ..Tasks::default() }
    }

    #[test]
    fn recorded_deletions_strand_only_wildcard_pktinfo_receivers_blocked_before_them() {
        let socks = vec![sock(42, NS, [0, 0, 0, 0], 0, true, false), sock(43, NS, [0, 0, 0, 0], 0, false, false)];
        let c = ctx(vec![], vec![]);
        let tasks = alive(&[11, 12]);
        let mut rows = run(
            &[inflight(11, 42, 90 * S, RecvProbe::Syscall), inflight(12, 43, 90 * S, RecvProbe::Syscall)],
            &[],
            &socks,
            &c,
            Filter::ALL,
            &tasks,
        );
        assert!(rows.iter().all(|r| !r.stranded), "a snapshot alone never guesses");
        // Blocked 10 s at unix time 1,000 s: the receive began at 990 s.
        let gone = |ts: u64, netns| RecordedDeletion { netns, ifindex: IfIndex(7), ifname: "foo0".into(), ts_unix_ns: ts };
        mark_recorded_deletions(&mut rows, &[gone(985 * S, NS), gone(995 * S, OTHER)], 1000 * S, "/j");
        assert!(rows.iter().all(|r| !r.stranded), "before the receive began, or another netns: not this receiver's");
        mark_recorded_deletions(&mut rows, &[gone(995 * S, NS), gone(996 * S, NS)], 1000 * S, "/j");
        let seed = rows.iter().find(|r| r.tid == 11).unwrap();
        assert!(!seed.stranded, "information only: a wildcard socket still receives on the others");
        assert_eq!(seed.interfaces.iter().filter(|t| t.ifindex == IfIndex(7) && t.state == IfaceState::Deleted).count(), 1, "one tie per interface");
        assert!(seed.evidence.contains("foo0 (ifindex 7) deleted 5000 ms after this receive began: from the journal /j"), "{}", seed.evidence);
        assert!(!rows.iter().find(|r| r.tid == 12).unwrap().stranded, "a wildcard socket without IP_PKTINFO still receives on the others");
        // A device tie to a deleted ifindex gets its last name.
        let mut bound = rows.iter().find(|r| r.tid == 11).unwrap().clone();
        bound.interfaces = vec![IfaceTie { ifindex: IfIndex(7), name: None, binding: Binding::Device, state: IfaceState::Deleted }];
        let mut one = vec![bound];
        mark_recorded_deletions(&mut one, &[gone(995 * S, NS)], 1000 * S, "/j");
        assert_eq!(one[0].interfaces[0].name.as_deref(), Some("foo0"));
    }

    #[test]
    fn probe_record_is_exact_and_fd_open_follows_the_fd_table() {
        let socks = [sock(42, NS, [0, 0, 0, 0], 0, true, true)];
        let mut tasks = alive(&[11]);
        tasks.fds.insert((10, 3), SockInode(42));
        let c = ctx(vec![link(2, "veth0", [10, 0, 0, 1], true)], vec![]);
        let rows = run(&[inflight(11, 42, 95 * S, RecvProbe::Syscall)], &[], &socks, &c, Filter::ALL, &tasks);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.certainty, r.syscall, r.fd, r.fd_open), (Certainty::Exact, "recvmsg", Some(3), true));
        assert_eq!(r.blocked_ns, Some(5 * S));
        assert_eq!(r.blocked_source, "syscall_entry");
        assert_eq!(r.probe.as_deref(), Some("tracepoint:syscalls:sys_enter_recvmsg"));
        assert!(!r.stranded && !r.orphaned);

        // The fd now points elsewhere (closed and reused): the record still names the socket.
        tasks.fds.insert((10, 3), SockInode(99));
        let rows = run(&[inflight(11, 42, 95 * S, RecvProbe::Syscall)], &[], &socks, &c, Filter::ALL, &tasks);
        assert_eq!((rows[0].certainty, rows[0].fd_open), (Certainty::Exact, false));
    }

    #[test]
    fn function_record_takes_the_fd_from_procfs_and_wins_over_it() {
        let socks = [sock(42, NS, [10, 0, 0, 1], 0, false, false)];
        let rows = run(
            &[inflight(11, 42, 90 * S, RecvProbe::Fentry("__skb_recv_udp"))],
            &[blocked(11, NS, None, Some(3 * S))],
            &socks,
            &ctx(vec![link(2, "veth0", [10, 0, 0, 1], true)], vec![]),
            Filter::ALL,
            &alive(&[11]),
        );
        assert_eq!(rows.len(), 1, "the procfs row of the same thread is not added again: {rows:?}");
        let r = &rows[0];
        assert_eq!((r.certainty, r.syscall, r.fd), (Certainty::Exact, "recvmsg", Some(3)));
        assert_eq!(r.blocked_source, "function_entry");
        assert!(r.orphaned, "no owner holds the socket");
    }

    #[test]
    fn kprobe_record_without_procfs_agreement_and_dead_threads_are_dropped() {
        let socks = [sock(42, NS, [0, 0, 0, 0], 0, false, true)];
        let c = ctx(vec![], vec![]);
        let rows = run(&[inflight(11, 42, 0, RecvProbe::Kprobe("__skb_recv_udp"))], &[], &socks, &c, Filter::ALL, &alive(&[11]));
        assert!(rows.is_empty(), "a stale kretprobe record: {rows:?}");
        let rows = run(&[inflight(11, 42, 0, RecvProbe::Syscall)], &[], &socks, &c, Filter::ALL, &alive(&[]));
        assert!(rows.is_empty(), "the thread is gone: {rows:?}");
    }

    #[test]
    fn procfs_certainty_current_fd_inferred_ambiguous_unknown() {
        let c = ctx(vec![], vec![]);
        let tasks = alive(&[]);
        let owned = sock(42, NS, [0, 0, 0, 0], 0, false, true);
        let orphan = sock(43, NS, [0, 0, 0, 0], 0, true, false);
        let orphan2 = sock(44, NS, [0, 0, 0, 0], 0, false, false);
        let elsewhere = sock(45, OTHER, [0, 0, 0, 0], 0, false, false);
        let mut listener = sock(46, NS, [0, 0, 0, 0], 0, false, false);
        listener.state = "LISTEN";

        let rows = run(&[], &[blocked(11, NS, Some(42), Some(2 * S))], std::slice::from_ref(&owned), &c, Filter::ALL, &tasks);
        assert_eq!((rows[0].certainty, rows[0].fd_open), (Certainty::CurrentFd, true));
        assert_eq!(rows[0].socket.as_ref().map(|s| s.inode), Some(SockInode(42)));

        let all = [owned.clone(), orphan.clone(), elsewhere.clone(), listener.clone()];
        let rows = run(&[], &[blocked(11, NS, None, Some(2 * S))], &all, &c, Filter::ALL, &tasks);
        assert_eq!(rows[0].certainty, Certainty::Inferred, "the only ownerless non-listening socket of its netns");
        assert_eq!(rows[0].socket.as_ref().map(|s| s.inode), Some(SockInode(43)));
        assert!(rows[0].evidence.contains("inference"));

        let rows = run(&[], &[blocked(11, NS, None, Some(2 * S))], &[orphan, orphan2, elsewhere.clone()], &c, Filter::ALL, &tasks);
        assert_eq!(rows[0].certainty, Certainty::Ambiguous);
        assert!(rows[0].socket.is_none());
        assert_eq!(rows[0].candidates, vec![SockInode(43), SockInode(44)]);

        let rows = run(&[], &[blocked(11, NS, None, Some(2 * S))], &[owned, elsewhere, listener], &c, Filter::ALL, &tasks);
        assert_eq!(rows[0].certainty, Certainty::Unknown);
        assert_eq!(rows[0].netns, NS, "no socket: the thread's netns");
    }

    #[test]
    fn stranded_by_down_device_and_by_deleted_address() {
        let c = ctx(vec![link(2, "veth0", [10, 0, 0, 1], false)], vec![link(3, "gone0", [10, 9, 0, 1], true)]);
        let tasks = alive(&[]);
        let dev = sock(42, NS, [0, 0, 0, 0], 2, false, true);
        let rows = run(&[], &[blocked(11, NS, Some(42), None)], &[dev], &c, Filter::ALL, &tasks);
        assert!(rows[0].stranded);
        assert_eq!(rows[0].interfaces, vec![IfaceTie { ifindex: IfIndex(2), name: Some("veth0".into()), binding: Binding::Device, state: IfaceState::Down }]);

        let addr = sock(43, NS, [10, 9, 0, 1], 0, false, true);
        let rows = run(&[], &[blocked(11, NS, Some(43), None)], &[addr], &c, Filter::ALL, &tasks);
        assert!(rows[0].stranded);
        assert_eq!(rows[0].interfaces[0].state, IfaceState::Deleted);
        assert_eq!(rows[0].interfaces[0].binding, Binding::Address);

        // A device binding to an ifindex nobody knows: deleted before we looked.
        let lost = sock(44, NS, [0, 0, 0, 0], 77, false, true);
        let rows = run(&[], &[blocked(11, NS, Some(44), None)], &[lost], &c, Filter::ALL, &tasks);
        assert!(rows[0].stranded);
        assert_eq!((rows[0].interfaces[0].ifindex, rows[0].interfaces[0].state), (IfIndex(77), IfaceState::Deleted));
    }

    #[test]
    fn wildcard_pktinfo_is_never_stranded_and_a_deleted_interface_is_only_noted() {
        let tasks = alive(&[]);
        let wild = sock(42, NS, [0, 0, 0, 0], 0, true, true);
        // The veth peer in this netns is down; nothing was deleted: not stranded.
        let c = ctx(vec![link(2, "vpeer", [10, 0, 0, 2], false), link(1, "lo", [127, 0, 0, 1], true)], vec![]);
        let rows = run(&[], &[blocked(11, NS, Some(42), None)], std::slice::from_ref(&wild), &c, Filter::ALL, &tasks);
        assert!(!rows[0].stranded, "a wildcard socket still receives on the other interfaces: {:?}", rows[0].interfaces);
        // Its interface was deleted while we watched: noted as a deleted tie, not stranded.
        let c = ctx(vec![link(2, "vpeer", [10, 0, 0, 2], false)], vec![link(3, "veth0", [10, 0, 0, 1], true)]);
        let rows = run(&[], &[blocked(11, NS, Some(42), None)], std::slice::from_ref(&wild), &c, Filter::ALL, &tasks);
        assert!(!rows[0].stranded);
        let deleted: Vec<_> = rows[0].interfaces.iter().filter(|t| t.state == IfaceState::Deleted).map(|t| t.ifindex).collect();
        assert_eq!(deleted, vec![IfIndex(3)]);
        // Without IP_PKTINFO the same deletion strands nothing.
        let plain = sock(42, NS, [0, 0, 0, 0], 0, false, true);
        let rows = run(&[], &[blocked(11, NS, Some(42), None)], &[plain], &c, Filter::ALL, &tasks);
        assert!(!rows[0].stranded);
    }

    #[test]
    fn min_blocked_filters_both_sources_and_keeps_unknown_durations() {
        let socks = [sock(42, NS, [0, 0, 0, 0], 0, false, true), sock(43, NS, [0, 0, 0, 0], 0, false, true)];
        let c = ctx(vec![], vec![]);
        let filter = Filter { min_blocked_ns: 2 * S, ..Filter::ALL };
        let rows = run(
            &[inflight(11, 42, 99 * S, RecvProbe::Syscall), inflight(12, 42, 90 * S, RecvProbe::Syscall)],
            &[blocked(11, NS, Some(42), Some(S)), blocked(13, NS, Some(43), Some(S)), blocked(14, NS, Some(43), None), blocked(15, NS, Some(43), Some(3 * S))],
            &socks,
            &c,
            filter,
            &alive(&[11, 12]),
        );
        let tids: Vec<u32> = rows.iter().map(|r| r.tid).collect();
        // 11: its record says 1 s (below), and procfs must not re-add it; 12: 10 s; 15: 3 s; 14: unknown.
        assert_eq!(tids, vec![12, 15, 14], "longest first, unknown last: {rows:?}");
    }

    #[test]
    fn pid_filter_applies_to_records_and_procfs() {
        let socks = [sock(42, NS, [0, 0, 0, 0], 0, false, true)];
        let mut other = blocked(21, NS, Some(42), None);
        other.pid = 20;
        let mut rec = inflight(22, 42, 0, RecvProbe::Syscall);
        rec.pid = 20;
        let rows = run(&[rec, inflight(11, 42, 0, RecvProbe::Syscall)], &[other, blocked(12, NS, Some(42), None)], &socks, &ctx(vec![], vec![]), Filter { pid: Some(10), ..Filter::ALL }, &alive(&[11, 22]));
        let tids: BTreeSet<u32> = rows.iter().map(|r| r.tid).collect();
        assert_eq!(tids, [11, 12].into());
    }

    #[test]
    fn netns_filter_uses_the_socket_netns_then_the_thread_netns() {
        // Thread in OTHER holding a socket of NS (made before a setns): belongs to NS.
        let socks = [sock(42, NS, [0, 0, 0, 0], 0, false, true), sock(43, OTHER, [0, 0, 0, 0], 0, false, true)];
        let threads = [blocked(11, OTHER, Some(42), None), blocked(12, NS, Some(43), None), blocked(13, OTHER, None, None), blocked(14, NS, None, None)];
        let c = ctx(vec![], vec![]);
        let tids = |f: NetnsFilter| -> BTreeSet<u32> {
            run(&[], &threads, &socks, &c, Filter { netns: f, ..Filter::ALL }, &alive(&[])).iter().map(|r| r.tid).collect()
        };
        assert_eq!(tids(NetnsFilter::Only(NS)), [11, 14].into());
        assert_eq!(tids(NetnsFilter::Only(OTHER)), [12, 13].into());
        assert_eq!(tids(NetnsFilter::Only(NetnsIno(999))), BTreeSet::new(), "a netns with no process lists nothing");
        assert_eq!(tids(NetnsFilter::All), [11, 12, 13, 14].into());
    }

    #[test]
    fn foreign_snapshots_only_when_a_local_thread_holds_an_unknown_socket() {
        let only = Filter { netns: NetnsFilter::Only(NS), ..Filter::ALL };
        let known: HashSet<SockInode> = [SockInode(42)].into();
        let here_known = [blocked(11, NS, Some(42), None)];
        let here_closed = [blocked(11, NS, None, None)];
        let here_unknown = [blocked(11, NS, Some(77), None)];
        let foreign = [blocked(11, OTHER, Some(77), None)];
        assert!(!needs_foreign_sockets(&only, NS, &[], &here_known, &known));
        assert!(!needs_foreign_sockets(&only, NS, &[], &here_closed, &known), "inference looks in the thread's own netns");
        assert!(needs_foreign_sockets(&only, NS, &[], &here_unknown, &known));
        assert!(!needs_foreign_sockets(&only, NS, &[], &foreign, &known), "a foreign thread on a foreign socket is not ours");
        assert!(needs_foreign_sockets(&only, NS, &[inflight(12, 77, 0, RecvProbe::Syscall)], &[], &known));
        assert!(needs_foreign_sockets(&Filter::ALL, NS, &[], &[], &known));
    }

    #[test]
    fn namespaces_to_scan_lists_each_foreign_netns_once() {
        let b = [blocked(11, OTHER, None, None), blocked(12, NS, None, None), blocked(13, OTHER, None, None)];
        let mut e = inflight(14, 1, 0, RecvProbe::Syscall);
        e.netns = NetnsIno(300);
        assert_eq!(namespaces_to_scan(&[e], &b, NS), vec![OTHER, NetnsIno(300)]);
    }
}
