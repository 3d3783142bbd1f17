//! Receivers: threads blocked receiving on a socket, how surely the socket is known, and how it
//! is tied to interfaces (up, down or deleted). Pure types and logic; the facts come from the
//! sockets' wait queues (the waiter walk, `kernel::waiters`), `probes` (in-flight records, only
//! with `--record-receives`), `kernel::procfs` (blocked threads) and the snapshots.
use std::net::IpAddr;

use serde::Serialize;

use super::{
    ids::{IfIndex, NetnsIno, SockInode},
    link::Link,
    socket::{Binding, Socket},
};

/// How the receiver's socket is known.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Certainty {
    /// The thread is on the socket's own wait queue (`sk->sk_wq->wait`, read by the waiter
    /// walk), whether or not its fd is still open; or a probe recorded the socket when the
    /// receive started: the `struct sock *` argument of a kernel receive function
    /// (fentry/kprobe sets), or the fd resolved at syscall entry (tracepoints).
    Exact,
    /// The syscall's fd is still open and points at this socket (procfs).
    CurrentFd,
    /// The fd is closed; the socket is the only ownerless one in the task's netns (only when
    /// the wait queues could not be read: the `/proc` fallback).
    Inferred,
    /// The fd is closed and several ownerless sockets could be it (see `candidates`).
    Ambiguous,
    /// No socket could be tied to the receiver.
    Unknown,
}

impl Certainty {
    /// The spelling used by both the table and JSON (`current_fd`).
    pub fn name(self) -> &'static str {
        match self {
            Certainty::Exact => "exact",
            Certainty::CurrentFd => "current_fd",
            Certainty::Inferred => "inferred",
            Certainty::Ambiguous => "ambiguous",
            Certainty::Unknown => "unknown",
        }
    }
}

/// State of an interface a receiver's socket is tied to.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IfaceState {
    /// `IFF_UP` set.
    Up,
    /// `IFF_UP` clear.
    Down,
    /// Deleted (seen by this ifsock run, or an ifindex that no longer exists).
    Deleted,
}

impl IfaceState {
    /// `up`, `down`, `deleted` (the JSON spelling).
    pub fn name(self) -> &'static str {
        match self {
            IfaceState::Up => "up",
            IfaceState::Down => "down",
            IfaceState::Deleted => "deleted",
        }
    }
}

/// An interface a receiver's socket is tied to.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct IfaceTie {
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name, when known.
    pub name: Option<String>,
    /// How the socket is tied to it.
    pub binding: Binding,
    /// Its state.
    pub state: IfaceState,
}

/// Where a receiver's tie to its socket was found (JSON `source`).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverSource {
    /// On the socket's wait queue (`sk->sk_wq->wait`, the waiter walk): exact whatever ifsock
    /// was doing when the thread blocked and whether its fd is still open.
    WaitQueue,
    /// An in-flight record of the receive probes (`--record-receives`) and no wait-queue entry
    /// (the thread is in the receive but not asleep on the queue, or the walk is unavailable).
    RecvProbe,
    /// `/proc/PID/task/TID/syscall` and the fd table: the fallback where the walk cannot run
    /// (or a socket the walk does not cover: not UDP/TCP).
    Proc,
}

/// Where [`HungReceiver::blocked_ns`] comes from (JSON `blocked_since_source`).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlockedSince {
    /// The receive probes' timestamp of the receive's start (`--record-receives`): exact.
    RecvProbe,
    /// The scheduler: since the thread last ran (`se.exec_start`, `/proc/PID/task/TID/sched`),
    /// an estimate (a receive that woke and slept again without returning restarts it).
    Scheduler,
}

/// A thread asleep on a socket's wait queue in a receive (`recvfrom`, `recvmsg`, `recvmmsg`,
/// `read`) or an `accept`: a waiter of the waiter walk (`receiver_wake_function`,
/// `woken_wake_function`, `autoremove_wake_function`, whose `wait_queue_entry.private` is the
/// task), the input the receivers engine (`engine::receivers`) turns into `exact` rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedReceiver {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread command (`task_struct.comm`).
    pub comm: String,
    /// The syscall it sleeps in (its syscall number, read from the task's registers).
    pub syscall: &'static str,
    /// The fd it passed to that syscall (first argument, from its registers), open or not.
    pub fd: Option<u32>,
    /// Inode of the socket whose queue holds it.
    pub ino: SockInode,
    /// The netns that socket was walked in.
    pub netns: NetnsIno,
    /// Blocked time estimate from the scheduler, ns (see [`BlockedThread::blocked_ns`]).
    pub blocked_ns: Option<u64>,
}

/// Syscalls whose waiter on a socket's queue is a receiver (the others, sends and connects,
/// are not).
pub const QUEUED_RECEIVE_SYSCALLS: [&str; 6] = ["recvfrom", "recvmsg", "recvmmsg", "read", "accept", "accept4"];

/// One blocked receiver (a row of `hung`, the `receiver` of watch's `receiver_stranded`).
#[derive(Clone, Debug, Serialize)]
pub struct HungReceiver {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Command.
    pub comm: String,
    /// `recvmsg`, `recvfrom`, `recvmmsg`, `read`, or (wait-queue source) `accept`/`accept4`;
    /// `?` when unknown.
    pub syscall: &'static str,
    /// The fd passed to the syscall (None when the probe saw only the `struct sock` and the
    /// thread's `/proc/.../syscall` no longer shows it).
    pub fd: Option<u32>,
    /// Whether that fd still refers to the socket in the task's fd table.
    pub fd_open: bool,
    /// Blocked time in ns (None when it cannot be measured).
    pub blocked_ns: Option<u64>,
    /// Where `blocked_ns` comes from: `syscall_entry` (tracepoint timestamp), `function_entry`
    /// (entry of `__skb_recv_udp`/`__skb_recv_datagram`/`__skb_wait_for_more_packets`) or
    /// `sched_exec_start` (procfs estimate).
    pub blocked_source: &'static str,
    /// The same, in two words: `recv_probe` (exact start) or `scheduler` (estimate).
    pub blocked_since_source: BlockedSince,
    /// Where the receiver's tie to its socket was found.
    pub source: ReceiverSource,
    /// The probe that recorded the receive (`fentry:__skb_recv_udp`,
    /// `tracepoint:syscalls:sys_enter_recvmsg`, ...), None for procfs-only receivers.
    pub probe: Option<String>,
    /// Sleeping in `__skb_wait_for_more_packets` right now (kernel-function sets; None otherwise).
    pub in_wait: Option<bool>,
    /// How the socket is known.
    pub certainty: Certainty,
    /// The evidence, in words.
    pub evidence: String,
    /// No fd references the socket: only the blocked receive keeps it alive.
    pub orphaned: bool,
    /// The netns the receiver belongs to: its socket's (`sock_net(sk)->ns.inum`) when the
    /// socket is known, else the thread's (`/proc/PID/task/TID/ns/net` inode, or the task's
    /// netns recorded by the probe). `hung --netns` filters on this.
    pub netns: NetnsIno,
    /// The socket, when known.
    pub socket: Option<Socket>,
    /// Candidate socket inodes when `certainty` is `ambiguous`.
    pub candidates: Vec<SockInode>,
    /// Interfaces the socket is tied to (wildcard sockets: every interface of the netns).
    pub interfaces: Vec<IfaceTie>,
    /// An interface it is tied to by device or address is down or deleted. A wildcard socket is
    /// never stranded: a deleted interface among its ties is information only.
    pub stranded: bool,
}

/// A thread sleeping inside a receive syscall, from `/proc/PID/task/TID/{syscall,stat,sched}`
/// (read by `kernel::procfs::blocked_receivers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedThread {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread command (`stat` comm).
    pub comm: String,
    /// Syscall number (`syscall` field 1; name it with `kernel::procfs::syscall_name`).
    pub syscall: u64,
    /// First argument: the fd.
    pub fd: u32,
    /// The socket the fd refers to now (`/proc/PID/fd/N` → `socket:[INO]`), None if closed or not a socket.
    pub fd_socket: Option<SockInode>,
    /// Whether the fd is still open (to anything).
    pub fd_open: bool,
    /// The task's netns inode (`/proc/PID/task/TID/ns/net`).
    pub netns: NetnsIno,
    /// Blocked time estimate in ns: our own `se.exec_start` read on the CPU the thread last ran
    /// on, minus the thread's (both on that CPU's runqueue clock, `/proc/.../sched`,
    /// CONFIG_SCHED_DEBUG); None when unavailable.
    pub blocked_ns: Option<u64>,
}

pub use super::kernel_event::InFlight;

/// Interfaces `socket` is tied to, given its netns's `current` links and those `deleted` while
/// we watched. A device binding to an ifindex found in neither is reported as deleted.
pub fn ties(socket: &Socket, current: &[Link], deleted: &[Link]) -> Vec<IfaceTie> {
    let mut out = Vec::new();
    for (links, gone) in [(current, false), (deleted, true)] {
        for l in links {
            let addrs: Vec<IpAddr> = l.addrs.iter().copied().collect();
            if let Some(binding) = socket.binding_to(socket.netns, l.ifindex, &addrs) {
                let state = if gone {
                    IfaceState::Deleted
                } else if l.is_up() {
                    IfaceState::Up
                } else {
                    IfaceState::Down
                };
                out.push(IfaceTie { ifindex: l.ifindex, name: Some(l.name.clone()), binding, state });
            }
        }
    }
    if socket.bound_dev_if != 0 && !out.iter().any(|t| t.ifindex.0 == socket.bound_dev_if) {
        out.push(IfaceTie { ifindex: IfIndex(socket.bound_dev_if), name: None, binding: Binding::Device, state: IfaceState::Deleted });
    }
    out
}

/// Whether this one tie strands a socket: a device or address binding to an interface that is
/// not up. A wildcard tie never does, with or without IP_PKTINFO: the socket still receives on
/// every other interface and on a recreated one (`pktinfo` is kept for callers that say so).
pub fn tie_strands(_pktinfo: bool, t: &IfaceTie) -> bool {
    match t.binding {
        Binding::Device | Binding::Address => t.state != IfaceState::Up,
        Binding::Wildcard => false,
    }
}

/// Whether any of `ties` strands `socket` (see [`tie_strands`]).
pub fn stranded(socket: &Socket, ties: &[IfaceTie]) -> bool {
    ties.iter().any(|t| tie_strands(socket.pktinfo, t))
}

/// Task facts read on demand (procfs in production, a fake in tests).
pub trait TaskSource {
    /// Whether thread `tid` of process `pid` still exists (`/proc/PID/task/TID`).
    fn thread_alive(&self, pid: u32, tid: u32) -> bool;
    /// The socket fd `fd` of `pid` refers to now (`/proc/PID/fd/FD` → `socket:[INO]`); None
    /// when the fd is closed or is not a socket.
    fn fd_socket(&self, pid: u32, fd: u32) -> Option<SockInode>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certainty_has_one_spelling_in_table_and_json() {
        for c in [Certainty::Exact, Certainty::CurrentFd, Certainty::Inferred, Certainty::Ambiguous, Certainty::Unknown] {
            assert_eq!(serde_json::to_value(c).ok(), Some(serde_json::Value::from(c.name())));
        }
        assert_eq!(Certainty::CurrentFd.name(), "current_fd");
    }

    #[test]
    fn a_wildcard_tie_never_strands_even_with_pktinfo_after_a_deletion() {
        let tie = |binding, state| IfaceTie { ifindex: IfIndex(3), name: None, binding, state };
        assert!(!tie_strands(true, &tie(Binding::Wildcard, IfaceState::Deleted)));
        assert!(!tie_strands(true, &tie(Binding::Wildcard, IfaceState::Down)));
        assert!(!tie_strands(false, &tie(Binding::Wildcard, IfaceState::Deleted)));
        assert!(tie_strands(false, &tie(Binding::Device, IfaceState::Down)));
        assert!(tie_strands(false, &tie(Binding::Address, IfaceState::Deleted)));
        assert!(!tie_strands(false, &tie(Binding::Address, IfaceState::Up)));
    }
}
