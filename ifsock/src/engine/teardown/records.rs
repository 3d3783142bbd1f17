//! The teardown report ([`TeardownReport`]) and its parts: the steps ifsock took, and per socket
//! the send errors, kernel-reported errors and receivers it saw; serialised as `teardown --json`
//! prints them.
use std::net::IpAddr;

use serde::Serialize;

use crate::{
    engine::abort::AbortReport,
    kernel::signals::Stop,
    model::{
        ids::{IfIndex, NetnsIno},
        kernel_event::InFlight,
        receiver::ReceiverSource,
        socket::Socket,
        tie::TiedSocket,
        tun::TunFd,
    },
    probes::Counters,
};

/// (netns inode, socket inode): a socket, wherever it lives.
pub type SockKey = (NetnsIno, u64);

/// One netlink action ifsock took.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// When the request was sent, ms after the down request (0 for the down itself).
    pub at_ms: f64,
    /// When the kernel acknowledged it, ms after the down request.
    pub ack_ms: f64,
    /// The kernel accepted it.
    pub ok: bool,
    /// Error name and text when it did not (`ENODEV: No such device`).
    pub error: Option<String>,
}

/// What the kernel answered to a down or delete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Acknowledged.
    Ok,
    /// Refused with this errno (positive) and text (`ENODEV: No such device`).
    Refused {
        /// Positive errno of the `NLMSG_ERROR`, when the failure was one.
        errno: Option<i32>,
        /// Text for the report.
        error: String,
    },
}

impl StepOutcome {
    pub(super) fn vanished(&self) -> bool {
        matches!(self, StepOutcome::Refused { errno: Some(libc::ENODEV), .. })
    }
}

/// Failed sends by one thread on one fd, with one errno.
#[derive(Clone, Debug, Serialize)]
pub struct SendErrorsSeen {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task command.
    pub comm: String,
    /// fd the send used.
    pub fd: u32,
    /// errno (positive, from the syscall's `-errno` return).
    pub errno: i32,
    /// errno name (`ENETUNREACH`).
    pub error: String,
    /// How many sends failed this way during the observation.
    pub count: u64,
    /// First failure, ms after the down request (negative: before it).
    pub first_ms: f64,
    /// Last failure, ms after the down request.
    pub last_ms: f64,
}

/// Errors the kernel reported on one socket with one errno (`sk->sk_err` at
/// `sock:inet_sk_error_report`); the application sees each at its next call on the socket.
#[derive(Clone, Debug, Serialize)]
pub struct SockErrorsSeen {
    /// errno (positive, `sk->sk_err`).
    pub errno: i32,
    /// errno name (`ECONNREFUSED`).
    pub error: String,
    /// How many reports.
    pub count: u64,
    /// First report, ms after the down request (negative: before it).
    pub first_ms: f64,
    /// Last report, ms after the down request.
    pub last_ms: f64,
    /// Remote address:port of the socket at the first report (`0.0.0.0:0` when not connected).
    pub remote: std::net::SocketAddr,
}

/// A thread in a receive on a socket: the one shape every source is reduced to (a procfs scan
/// of `/proc/PID/task/TID/syscall`, an in-flight record (`INFLIGHT_SLOTS`/`INFLIGHT_RECV`), the entry inside a `RecvDone`
/// event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedRecv {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task command.
    pub comm: String,
    /// fd (None: a kernel-function probe knows the `struct sock`, not the fd).
    pub fd: Option<u32>,
    /// `read`, `recvfrom`, `recvmsg`, `recvmmsg`, or `?`.
    pub syscall: &'static str,
    /// The socket.
    pub sock: SockKey,
    /// Where it was found: the socket's wait queue, an in-flight record, or `/proc`.
    pub source: ReceiverSource,
}

impl BlockedRecv {
    /// From an in-flight record (a slot or `INFLIGHT_RECV` value, or the entry of a `RecvDone` event): the fd
    /// and syscall number are known for the tracepoint set only (`fd == NO_FD` otherwise).
    pub fn from_inflight(r: &InFlight) -> Self {
        BlockedRecv {
            pid: r.pid,
            tid: r.tid,
            comm: r.comm.clone(),
            fd: r.fd,
            syscall: r.syscall_name().unwrap_or("?"),
            sock: (r.netns, r.ino.0),
            source: ReceiverSource::RecvProbe,
        }
    }
}

/// A thread receiving on a socket, and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiverSeen {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task command.
    pub comm: String,
    /// fd it receives on (None: seen only by a kernel-function probe, which knows the
    /// `struct sock` but not the fd, after the thread left the syscall).
    pub fd: Option<u32>,
    /// `read`, `recvfrom`, `recvmsg`, `recvmmsg`; `?` when unknown.
    pub syscall: String,
    /// It was blocked when the down request was sent.
    pub blocked_at_down: bool,
    /// Its receive returned during grace at this time (ms after down), when traced.
    pub woke_ms: Option<f64>,
    /// Return value of that receive (bytes, or `-errno`).
    pub ret: Option<i64>,
    /// errno name when `ret` < 0.
    pub error: Option<String>,
    /// Still (or again) blocked in a receive on this socket at the end of grace.
    pub blocked_at_end: bool,
    /// Where it was first found: `wait_queue` (asleep on the socket's `sk->sk_wq->wait`, fd
    /// open or not), `recv_probe` (an in-flight record or a `RecvDone` event of the receive
    /// probes, `--record-receives`), `proc` (the `/proc` fallback).
    pub source: ReceiverSource,
}

impl ReceiverSeen {
    /// The one constructor: a receiver first seen as `b`, nothing known yet of its fate.
    pub(super) fn new(b: &BlockedRecv) -> Self {
        ReceiverSeen {
            pid: b.pid,
            tid: b.tid,
            comm: b.comm.clone(),
            fd: b.fd,
            syscall: b.syscall.to_string(),
            blocked_at_down: false,
            woke_ms: None,
            ret: None,
            error: None,
            blocked_at_end: false,
            source: b.source,
        }
    }
}

/// One socket tied to an interface and what it saw.
#[derive(Clone, Debug, Serialize)]
pub struct SocketSeen {
    /// The socket and its tie, as `sockets --json` prints them.
    #[serde(flatten)]
    pub tied: TiedSocket,
    /// Failed sends.
    pub send_errors: Vec<SendErrorsSeen>,
    /// Errors the kernel reported on the socket.
    pub socket_errors: Vec<SockErrorsSeen>,
    /// Receivers.
    pub receivers: Vec<ReceiverSeen>,
    /// Its inode was gone from the socket snapshot at the end of grace (every owner closed it).
    pub closed: bool,
    /// Threads waiting on it in an event loop at the end of grace (`poll`, `select`, `epoll`,
    /// or an unresolved wait; `/proc` waiter pass, `kernel::waiters`): waiting, not "no
    /// receiver". Receivers blocked in a receive call are in `receivers`.
    pub waiters: Vec<crate::model::stranded::Waiter>,
}

/// How another interface is bound up with the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The other end of a veth pair (`IFLA_LINK`, with `IFLA_LINK_NETNSID` when in another netns).
    VethPeer,
    /// A port of the target bridge (its `IFLA_MASTER` is the target).
    BridgePort,
    /// The bridge the target is a port of (the target's `IFLA_MASTER`).
    Master,
}

impl Relation {
    /// What the delete does to it: `veth_dellink()` unregisters the peer too; deleting a bridge
    /// releases its ports (`br_dev_delete()` → `del_nbp()`); deleting a port removes it from
    /// its master.
    pub fn fate(self) -> &'static str {
        match self {
            Relation::VethPeer => "deleted",
            Relation::BridgePort => "released",
            Relation::Master => "loses_port",
        }
    }
}

/// Another interface the delete takes with it or changes.
#[derive(Clone, Debug, Serialize)]
pub struct Companion {
    /// How it relates to the target.
    pub relation: Relation,
    /// `deleted`, `released` or `loses_port` (see [`Relation::fate`]).
    pub fate: &'static str,
    /// Its netns inode.
    pub netns: NetnsIno,
    /// Its netns name under /run/netns, when it has one.
    pub netns_name: Option<String>,
    /// ifindex in its netns.
    pub ifindex: IfIndex,
    /// Name.
    pub ifname: String,
    /// rtnetlink kind.
    pub kind: Option<String>,
    /// Sockets bound to it (device or address), with what they saw.
    pub sockets: Vec<SocketSeen>,
    /// It no longer exists after the teardown (`None`: not checked, e.g. a dry run).
    pub gone: Option<bool>,
}

/// A companion before the teardown, as the view found it.
#[derive(Clone, Debug)]
pub struct CompanionPlan {
    /// How it relates to the target.
    pub relation: Relation,
    /// Its netns inode.
    pub netns: NetnsIno,
    /// Its netns name, when it has one.
    pub netns_name: Option<String>,
    /// ifindex in its netns.
    pub ifindex: IfIndex,
    /// Name.
    pub ifname: String,
    /// rtnetlink kind.
    pub kind: Option<String>,
    /// Its tied sockets, split as for the target (listed, wildcard).
    pub sockets: Vec<TiedSocket>,
    /// Every socket of its netns (to place socket-error reports that carry no inode).
    pub netns_sockets: Vec<Socket>,
}

/// What the teardown left the target in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftState {
    /// Nothing was changed (dry run, refused, or the down failed).
    Untouched,
    /// Set down, not deleted (interrupted, or the delete failed).
    Down,
    /// Deleted by ifsock.
    Deleted,
    /// Vanished: deleted by someone else.
    Gone,
}

/// The report (one JSON object with `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct TeardownReport {
    /// `"teardown"`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Netns inode.
    pub netns: NetnsIno,
    /// Netns name under /run/netns, when it has one (as in `watch`'s records).
    pub netns_name: Option<String>,
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name.
    pub ifname: String,
    /// rtnetlink kind (`veth`, `tun`, …).
    pub kind: Option<String>,
    /// `IFF_UP` before teardown.
    pub was_up: bool,
    /// Addresses before teardown.
    pub addrs: Vec<IpAddr>,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Grace period, ms.
    pub grace_ms: u64,
    /// The down request (`None` in a dry run).
    pub down: Option<Step>,
    /// The delete request (`None` in a dry run, or when the interface vanished first).
    pub delete: Option<Step>,
    /// The interface disappeared without ifsock deleting it (ms after down; 0 = before down).
    pub vanished_ms: Option<f64>,
    /// The interface is gone at the end (deleted by ifsock, or vanished).
    pub gone: bool,
    /// Sockets bound to it (device or address), and wildcard sockets that saw errors.
    pub sockets: Vec<SocketSeen>,
    /// Wildcard sockets of the netns not listed (they saw nothing).
    pub wildcard_sockets: usize,
    /// Other interfaces the delete takes with it or changes (veth peer, bridge ports, master).
    pub companions: Vec<Companion>,
    /// For a tun/tap: the fds that hold it (from `iter/task_file`, `struct tun_file`).
    pub tun_holders: Vec<TunFd>,
    /// A SIGINT/SIGTERM ended the teardown early.
    pub interrupted: bool,
    /// Which signal, when interrupted.
    pub signal: Option<Stop>,
    /// Why the teardown failed, when it did.
    pub error: Option<String>,
    /// What the target was left in.
    pub state_left: LeftState,
    /// Command that undoes what was done, when the target was left down.
    pub restore: Option<String>,
    /// Command that completes the teardown, when the target was left down.
    pub finish: Option<String>,
    /// What could not be observed on this kernel, with the reason.
    pub unobserved: Vec<String>,
    /// eBPF counters (`ringbuf_drops` > 0 means events were lost).
    pub counters: Counters,
    /// `--abort-stranded`: the sockets destroyed after the delete (the dry run: those that would
    /// be), as `abort --json` reports them; null without `--abort-stranded` or when the step
    /// did not run (the delete did not happen).
    pub abort: Option<AbortReport>,
}
