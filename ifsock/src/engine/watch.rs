//! The `watch` correlator: link tables per netns, live-versus-diff classification, move
//! pairing, removed-address memory, cause attribution (requests, veth peers, kernel device
//! probes), socket-error placement, stranded-receiver and socket-health bookkeeping, counters.
//!
//! No I/O: the view hands in netlink updates and dumps, decoded kernel events, socket
//! snapshots (through [`SocketSource`], asked for only when a change needs them), receiver
//! scans, waiter lookups ([`WaiterLookup`]), and the clock ([`Now`]); the engine returns
//! [`WatchRecord`]s for the renderer.
//!
//! Socket health (`socket_stranded` / `socket_recovered`) runs in two steps so that the costly
//! parts are paid only when needed: changes that may move a socket's health are queued per netns
//! ([`WatchEngine::health_due`]); the view then hands in fresh address details
//! ([`WatchEngine::on_health`], which judges every socket of the netns before and after the
//! queued changes), and only if some socket changed health does it take one waiter pass over
//! `/proc` for all of them ([`WatchEngine::wants_waiters`], [`WatchEngine::flush_health`]).
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

use super::{
    health::{HealthChange, HealthTracker},
    receivers,
};
use crate::{
    model::{
        receiver::{tie_strands, HungReceiver, IfaceState},
        event::{Cause, CauseTracker, LinkRequest, CAUSE_WINDOW_NS},
        ids::{IfIndex, NetnsIno, SockInode},
        link::{AddrTable, Change, ChangeKind, Dump, Link, LinkTable, Update},
        sock_error::{protocol_name, CurrentTask, InodeSource, SockError, SockErrorProbe},
        socket::Socket,
        stranded::{SeenDeletion, SocketHealthEvent, SocketReport, StrandReason, Stranded as SocketStranded, Waiter},
        sys::errno_name,
        tie::{self, TiedSocket},
    },
    probes::{select::Selection, Counters},
};

/// How long a removed address still ties sockets to its (now deleted) interface: on
/// unregister the kernel sends `RTM_DELADDR` before `RTM_DELLINK`.
pub const REMOVED_ADDR_MEMORY: Duration = Duration::from_secs(2);
/// How long a `moved_out` waits for the matching arrival in another followed netns.
pub const MOVE_PAIRING: Duration = Duration::from_secs(5);
/// Deleted links remembered per netns (for the ties of receivers on deleted interfaces).
const DELETED_LINKS: usize = 1024;

/// The clock, read by the caller once per input.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// For the engine's own windows (address memory, move pairing, stranded threshold).
    pub at: Instant,
    /// CLOCK_MONOTONIC ns, the clock of the eBPF records' `ts_ns` (cause window).
    pub mono_ns: u64,
    /// Wall clock, ns since the Unix epoch (record timestamps).
    pub unix_ns: u64,
}

impl Now {
    /// Wall-clock ns of a CLOCK_MONOTONIC timestamp from the eBPF side.
    pub fn unix_ns_of(&self, mono_ns: u64) -> u64 {
        self.unix_ns.saturating_sub(self.mono_ns.saturating_sub(mono_ns))
    }
}

/// Where the engine gets the sockets of a netns when a change needs them (BPF iterators in
/// the view, a fixed list in tests). Per netns and burst: at most [`FILTERED_PER_BURST`]
/// filtered snapshots, then at most one full one.
pub trait SocketSource {
    /// Sockets of `netns` with owners.
    ///
    /// # Errors
    /// The snapshot failed; the change is then reported without sockets.
    fn sockets(&mut self, netns: NetnsIno) -> Result<Vec<Socket>>;

    /// A superset of the sockets of `netns` that may be tied to any of `ifindexes` (bound to
    /// one by device, to one of `addrs`, or to the wildcard), with owners: what one change
    /// needs, without a full snapshot (the view filters in the kernel; at most
    /// [`ifsock_common::SOCK_FILTER_IFINDEXES`] interfaces are asked at once). The engine ties
    /// exactly afterwards. The default is every socket of `netns`.
    ///
    /// # Errors
    /// As [`SocketSource::sockets`].
    fn sockets_tied(&mut self, netns: NetnsIno, ifindexes: &[IfIndex], addrs: &[IpAddr]) -> Result<Vec<Socket>> {
        let _ = (ifindexes, addrs);
        self.sockets(netns)
    }
}

/// Filtered snapshots ([`SocketSource::sockets_tied`]) one netns may take within one burst
/// (datagrams read back to back, see [`WatchEngine::more_queued`]) before the engine takes one
/// full snapshot that serves the rest of the burst: a lone change costs a filtered walk, a
/// burst of 1,000 changes at most this many walks and one full snapshot.
pub const FILTERED_PER_BURST: u32 = 4;

/// Longest a burst lasts: input that never pauses still gets fresh snapshots this often (a
/// socket bound during a long stream of changes is seen within this bound).
pub const MAX_BURST: Duration = Duration::from_secs(1);

/// Who waits on a socket now (the view's one `/proc` pass, `kernel::waiters::WaiterIndex`; a
/// fixed list in tests).
pub trait WaiterLookup {
    /// The threads waiting on `socket` (`waiters[]` of its row).
    fn waiters_of(&self, socket: &Socket) -> Vec<Waiter>;
}

impl WaiterLookup for crate::kernel::waiters::WaiterIndex {
    fn waiters_of(&self, socket: &Socket) -> Vec<Waiter> {
        self.for_socket(socket)
    }
}

/// What the engine reports and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// Only changes of this interface (current or previous name) and socket errors on it.
    pub iface: Option<String>,
    /// Attach tied sockets to changes and follow socket health (`socket_stranded`,
    /// `socket_recovered`); `--no-sockets` turns both off.
    pub sockets: bool,
    /// Receive tracking is attached: downs/deletes are followed for stranded receivers.
    pub recv_tracking: bool,
    /// A stranded receiver still blocked this long after its stranding is reported again.
    pub stranded_after: Duration,
    /// Print each change before its sockets are read (the default; false with
    /// `--sockets-inline`): the change record
    /// has `sockets_follow: true` and no sockets, and a [`WatchRecord::ChangeSockets`] record
    /// follows from [`WatchEngine::flush_change_sockets`].
    pub sockets_after: bool,
}

/// Where a change was learned.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A live rtnetlink notification.
    Netlink,
    /// A live rtnetlink notification confirmed by a kernel device probe (fentry/kprobe sets).
    #[serde(rename = "kernel+netlink")]
    KernelNetlink,
    /// A re-dump after `ENOBUFS`.
    Resync,
    /// The periodic reconcile re-dump.
    Reconcile,
    /// Links found in a namespace that appeared while watching (`--all-netns`).
    Discovery,
    /// The namespace holding the interface went away (its interfaces go with it).
    NetnsRemoved,
}

impl Source {
    /// The JSON spelling (`kernel+netlink`, `netns_removed`).
    pub fn name(self) -> &'static str {
        match self {
            Source::Netlink => "netlink",
            Source::KernelNetlink => "kernel+netlink",
            Source::Resync => "resync",
            Source::Reconcile => "reconcile",
            Source::Discovery => "discovery",
            Source::NetnsRemoved => "netns_removed",
        }
    }
}

/// A device close/unregister seen at the kernel function (fentry/kprobe device probes).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KernelEvidence {
    /// `close` or `unregister`.
    pub reason: &'static str,
    /// `fentry` or `kprobe`.
    pub via: &'static str,
    /// Current task's thread-group id when the kernel ran the function.
    pub pid: u32,
    /// Current task's thread id.
    pub tid: u32,
    /// Current task's command.
    pub comm: String,
    /// CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub ts_ns: u64,
    /// Device netns and ifindex.
    #[serde(skip)]
    pub key: (NetnsIno, IfIndex),
}

impl KernelEvidence {
    /// From the device probe's record (`netif_close_many`/`dev_close_many`, `unregister_netdevice_queue`).
    pub fn from_event(e: &crate::model::kernel_event::KernelDeviceEvent) -> Self {
        use crate::model::kernel_event::{DeviceReason, ProbeVia};
        KernelEvidence {
            reason: if e.reason == DeviceReason::Close { "close" } else { "unregister" },
            via: if e.via == ProbeVia::Fentry { "fentry" } else { "kprobe" },
            pid: e.pid,
            tid: e.tid,
            comm: e.comm.clone(),
            ts_ns: e.ts_ns,
            key: (e.netns, e.ifindex),
        }
    }
}

/// A decoded kernel event the engine correlates.
#[derive(Clone, Debug)]
pub enum KernelInput {
    /// A task's link request (syscall tracepoints), a candidate cause.
    LinkRequest(LinkRequest),
    /// A device close/unregister at the kernel function.
    Device(KernelEvidence),
    /// The kernel reported an error on a socket (`sock:inet_sk_error_report`).
    SockError(SockError),
}

/// `ready`: subscribed and dumped; what is traced and how.
#[derive(Clone, Debug, Serialize)]
pub struct Ready {
    /// Followed namespaces.
    pub netns: Vec<NetnsIno>,
    /// Device-path probe set.
    pub probe_set: Selection,
    /// Receive-path probe set (null: no receive tracking).
    pub recv_probe_set: Option<Selection>,
    /// Links known at start.
    pub links: usize,
    /// `receiver_stranded` events are possible.
    pub recv_tracking: bool,
    /// Socket-error probe in use.
    pub sock_errors: Option<SockErrorProbe>,
    /// Why the better (or every) socket-error probe was refused.
    pub sock_errors_refused: Option<String>,
    /// Effective receive buffer of the rtnetlink subscription, bytes (`getsockopt(SO_RCVBUF)`:
    /// the kernel doubles the request for bookkeeping and applies its minimum).
    pub rcvbuf: Option<u64>,
}

/// `change`: one interface change (JSON field names match the table).
#[derive(Clone, Debug, Serialize)]
pub struct ChangeEvent {
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// Where it was learned.
    pub source: Source,
    /// Netns inode.
    pub netns: NetnsIno,
    /// Netns name under /run/netns, when it has one.
    pub netns_name: Option<String>,
    /// For `moved_in`: the followed netns it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_netns: Option<NetnsIno>,
    /// The change.
    #[serde(flatten)]
    pub change: Change,
    /// Task that requested it, if one did.
    pub cause: Option<Cause>,
    /// The kernel device probe that saw it (fentry/kprobe sets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelEvidence>,
    /// Sockets tied to the interface at that moment (for a deletion: those tied to it when it
    /// went); empty when `sockets_follow`.
    pub sockets: Vec<TiedSocket>,
    /// Sockets after the change (the default): the sockets were not read yet; a `change_sockets` record with the
    /// same `netns`, `ifindex`, `event` and `ts_unix_ns` (as `change_ts_unix_ns`) follows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sockets_follow: bool,
}

/// `change_sockets` (the default, not `--sockets-inline`): the sockets of a change printed before they were read.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeSocketsEvent {
    /// When the sockets were read, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// `ts_unix_ns` of the change record these belong to.
    pub change_ts_unix_ns: u64,
    /// Netns inode.
    pub netns: NetnsIno,
    /// Netns name under /run/netns, when it has one.
    pub netns_name: Option<String>,
    /// The change's kind (`deleted`, `down`, …).
    pub event: &'static str,
    /// The change's ifindex.
    pub ifindex: IfIndex,
    /// The change's interface name.
    pub name: String,
    /// Sockets tied to the interface when they were read (same rules as a change's `sockets`).
    pub sockets: Vec<TiedSocket>,
}

/// `receiver_stranded`: a task blocked receiving on a socket tied to an interface that went
/// down or was deleted.
#[derive(Clone, Debug, Serialize)]
pub struct StrandedEvent {
    /// `interface_change` (raised with the change) or `threshold` (still blocked after `--stranded-after`).
    pub phase: &'static str,
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// The change that stranded it.
    pub change: Change,
    /// The receiver.
    pub receiver: HungReceiver,
}

/// `socket_error`: the kernel reported an error on a socket of a followed netns
/// (`sock:inet_sk_error_report`); the application sees it at its next call on the socket.
#[derive(Clone, Debug, Serialize)]
pub struct SockErrorLine {
    /// Wall-clock time of the report, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// Netns inode of the socket.
    pub netns: NetnsIno,
    /// Netns name under /run/netns, when it has one.
    pub netns_name: Option<String>,
    /// Socket inode (`socket:[N]`); null when the socket has no `struct socket` (orphaned TCP).
    pub inode: Option<SockInode>,
    /// `sk` (read from the socket) or `snapshot` (classic tracepoint: matched by family, local
    /// port and address).
    pub inode_source: Option<InodeSource>,
    /// errno name (`ECONNREFUSED`).
    pub error: String,
    /// errno (`sk->sk_err`).
    pub errno: i32,
    /// `tcp`, `udp`, … (`sk_protocol`); null when unknown.
    pub protocol: Option<String>,
    /// 4 or 6.
    pub family: u8,
    /// Local address:port.
    pub local: SocketAddr,
    /// Remote address:port (`0.0.0.0:0` when not connected).
    pub remote: SocketAddr,
    /// `sk_bound_dev_if` (0: not bound to a device).
    pub bound_dev_if: u32,
    /// Its name, when the interface exists.
    pub bound_dev_name: Option<String>,
    /// `tp_btf` or `tracepoint`.
    pub via: SockErrorProbe,
    /// The task current when the kernel reported it: often softirq context, so possibly unrelated.
    pub task: CurrentTask,
}

impl SockErrorLine {
    /// The line for a report placed in `netns` at wall-clock `ts_unix_ns`; `matched` is the
    /// snapshot socket a classic report was matched to.
    pub fn new(e: &SockError, ts_unix_ns: u64, netns: NetnsIno, netns_name: Option<String>, matched: Option<&Socket>, links: &LinkTable) -> Self {
        let (inode, inode_source, bound_dev_if) = match matched {
            Some(s) => ((s.inode.0 != 0).then_some(s.inode), Some(InodeSource::Snapshot), s.bound_dev_if),
            None => (e.inode, e.inode.map(|_| InodeSource::Sk), e.bound_dev_if),
        };
        SockErrorLine {
            ts_unix_ns,
            netns,
            netns_name,
            inode,
            inode_source,
            error: errno_name(e.errno),
            errno: e.errno,
            protocol: protocol_name(e.protocol),
            family: e.family,
            local: e.local,
            remote: e.remote,
            bound_dev_if,
            bound_dev_name: (bound_dev_if != 0).then(|| links.get(IfIndex(bound_dev_if))).flatten().map(|l| l.name.clone()),
            via: e.via,
            task: e.task.clone(),
        }
    }
}

/// `netns_added`: a namespace appeared (`--all-netns`).
#[derive(Clone, Debug, Serialize)]
pub struct NetnsRecord {
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// Netns inode.
    pub netns: NetnsIno,
    /// Name under /run/netns, when it has one.
    pub netns_name: Option<String>,
}

/// What the view found out about a namespace that is no longer reachable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// The namespace still existed when its removal was noticed (ifsock or others held it).
    pub still_exists: bool,
    /// ifsock's own handle, sockets or threads were keeping it alive; released now.
    pub held_by_ifsock: bool,
    /// Other processes whose threads are in it (they keep it alive after ifsock lets go).
    pub other_holders: Vec<u32>,
}

/// `netns_removed`: a followed namespace is no longer reachable (its name under /run/netns
/// was removed and no process is in it, or it was destroyed).
#[derive(Clone, Debug, Serialize)]
pub struct NetnsRemovedRecord {
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// Netns inode.
    pub netns: NetnsIno,
    /// Name it had under /run/netns, when it had one.
    pub netns_name: Option<String>,
    /// It still existed when noticed: only because something held it.
    pub still_exists: bool,
    /// ifsock was holding it (namespace file, netlink sockets, its own threads); ifsock lets it
    /// go now, so it is destroyed unless `other_holders` keep it.
    pub held_by_ifsock: bool,
    /// pids of other processes inside it.
    pub other_holders: Vec<u32>,
    /// Interfaces it held (each reported as `deleted`, `source: netns_removed`).
    pub links: usize,
}

/// One link of the final `state` line.
#[derive(Clone, Debug, Serialize)]
pub struct StateLink {
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name.
    pub name: String,
    /// `ifi_flags`.
    pub flags: u32,
}

/// `state`: the link table of one followed netns on exit.
#[derive(Clone, Debug, Serialize)]
pub struct StateRecord {
    /// Netns inode.
    pub netns: NetnsIno,
    /// Name under /run/netns, when it has one.
    pub netns_name: Option<String>,
    /// Links as last known.
    pub links: Vec<StateLink>,
}

/// Counters shown on exit (`counters` line).
#[derive(Debug, Default, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct WatchCounters {
    /// rtnetlink datagrams received.
    pub netlink_messages: u64,
    /// Change events emitted.
    pub events: u64,
    /// `ENOBUFS` on the subscription socket (the kernel dropped notifications for it).
    pub enobufs: u64,
    /// Re-dumps after `ENOBUFS`.
    pub resyncs: u64,
    /// Changes found by resync re-dumps.
    pub resync_changes: u64,
    /// Periodic reconciles run.
    pub reconciles: u64,
    /// Changes found only by reconcile (missed events).
    pub reconcile_changes: u64,
    /// `socket_error` events emitted.
    pub socket_errors: u64,
    /// Socket errors from the classic tracepoint that matched no single socket of a followed netns.
    pub socket_errors_unmatched: u64,
    /// eBPF-side counters (absent when they could not be read).
    #[serde(flatten)]
    pub bpf: Option<Counters>,
}

/// `counters`: on exit.
#[derive(Clone, Debug, Serialize)]
pub struct CountersRecord {
    /// The counters.
    pub counters: WatchCounters,
}

/// Everything `watch` prints, one JSON object per record (`type` is the variant's snake_case name).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchRecord {
    /// Subscribed and dumped.
    Ready(Ready),
    /// An interface change.
    Change(ChangeEvent),
    /// The sockets of a change printed before they were read (the default, not `--sockets-inline`).
    ChangeSockets(ChangeSocketsEvent),
    /// A receiver stranded by a change.
    ReceiverStranded(StrandedEvent),
    /// A socket a change stranded (address gone, device down or deleted, a wildcard IP_PKTINFO
    /// socket's interface deleted), with its waiters.
    SocketStranded(SocketHealthEvent),
    /// A socket stranded before is healthy again; `reason` is what it was stranded by.
    SocketRecovered(SocketHealthEvent),
    /// A kernel-reported socket error.
    SocketError(SockErrorLine),
    /// A namespace appeared.
    NetnsAdded(NetnsRecord),
    /// A namespace is no longer reachable.
    NetnsRemoved(NetnsRemovedRecord),
    /// Final link table of one netns.
    State(StateRecord),
    /// Final counters.
    Counters(CountersRecord),
}

/// A receiver stranded by a change, followed until it wakes or passes `stranded_after`.
#[derive(Debug)]
struct Stranded {
    tid: u32,
    change: Change,
    /// When the change stranded it: the threshold counts from here.
    since: Instant,
    threshold_reported: bool,
}

/// One followed netns.
#[derive(Debug, Default)]
struct Space {
    name: Option<String>,
    table: LinkTable,
    /// Addresses removed recently, per ifindex (`RTM_DELADDR` comes before `RTM_DELLINK`).
    removed_addrs: HashMap<IfIndex, Vec<(IpAddr, Instant)>>,
    /// Links deleted or moved out during this run, newest last.
    deleted: VecDeque<Link>,
    /// Every socket of the current burst (asked for once, lazily, after
    /// [`FILTERED_PER_BURST`] filtered snapshots).
    batch_sockets: Option<Vec<Socket>>,
    /// Filtered snapshots taken in the current burst.
    filtered_in_burst: u32,
    /// When the current burst started.
    burst_since: Option<Instant>,
    /// The last filtered snapshot of this burst and its scope (ifindexes, addresses): a later
    /// change of the burst whose scope it covers (the veth peer's deletion, the health
    /// judgement after both) reuses it instead of walking again.
    burst_filtered: Option<BurstWalk>,
    /// Address details as of the last dump (live `RTM_NEWADDR`s carry no flags here).
    addrs: AddrTable,
    /// Links and address details before the first queued health change: every socket is judged
    /// against this and against the table after the changes, so the tracker needs no snapshot at
    /// start and a socket stranded before the changes is not reported again.
    health_before: Option<(Vec<Link>, AddrTable)>,
    /// Changes since `health_before` that may move socket health, with when they were seen.
    health_pending: Vec<(Change, u64)>,
}

/// A filtered snapshot of one burst: its scope (ifindexes, addresses) and the sockets admitted.
type BurstWalk = (Vec<IfIndex>, Vec<IpAddr>, Arc<Vec<Socket>>);

/// Whether a change can strand or recover a socket.
fn moves_health(kind: ChangeKind) -> bool {
    matches!(
        kind,
        ChangeKind::Created | ChangeKind::Deleted | ChangeKind::Recreated | ChangeKind::MovedOut | ChangeKind::MovedIn | ChangeKind::Up | ChangeKind::Down | ChangeKind::AddressAdded | ChangeKind::AddressRemoved
    )
}

/// The queued change that caused a health transition: the latest one naming the interface or
/// address involved (a deletion over the `RTM_DELADDR` the kernel sends just before it).
fn health_cause<'a>(pending: &'a [(Change, u64)], st: &SocketStranded, recovered: bool) -> Option<&'a Change> {
    let fits = |c: &Change| {
        let same_if = st.ifindex == Some(c.ifindex);
        let same_addr = st.address.is_some() && c.address == st.address;
        if recovered {
            return match c.kind {
                ChangeKind::Up | ChangeKind::Created | ChangeKind::Recreated | ChangeKind::MovedIn => same_if || st.ifname.as_deref() == Some(c.name.as_str()),
                ChangeKind::AddressAdded => same_addr,
                _ => false,
            };
        }
        match st.reason {
            StrandReason::DeviceDown => c.kind == ChangeKind::Down && same_if,
            StrandReason::DeviceDeleted | StrandReason::InterfaceDeleted => matches!(c.kind, ChangeKind::Deleted | ChangeKind::MovedOut) && same_if,
            StrandReason::AddressGone => (c.kind == ChangeKind::AddressRemoved && same_addr) || (matches!(c.kind, ChangeKind::Deleted | ChangeKind::MovedOut | ChangeKind::Down) && same_if),
        }
    };
    pending.iter().rev().map(|(c, _)| c).find(|c| fits(c))
}

/// A health transition judged by [`WatchEngine::on_health`], waiting for its waiters.
#[derive(Debug)]
struct HealthReady {
    netns: NetnsIno,
    change: HealthChange,
    cause: Option<String>,
    links: Vec<Link>,
}

/// A receiver scan in progress ([`WatchEngine::begin_receiver_scan`]): how many of the pending
/// downs/deletes it covers (the oldest ones, in arrival order).
#[derive(Debug, Clone, Copy)]
pub struct ReceiverScan {
    covers: usize,
}

/// The correlator behind `watch`.
#[derive(Debug)]
pub struct WatchEngine {
    config: Config,
    spaces: BTreeMap<NetnsIno, Space>,
    causes: CauseTracker,
    /// Recent kernel device events, matched to rtnetlink changes.
    kernel_events: VecDeque<KernelEvidence>,
    /// `moved_out` changes waiting for their arrival elsewhere: (name, from netns, when).
    moves: Vec<(String, NetnsIno, Instant)>,
    stranded: Vec<Stranded>,
    /// Downs/deletes whose stranded receivers are yet to be looked up: one receiver scan
    /// serves them all, so a burst of 1,000 deletions costs one scan, not 1,000.
    pending_strands: Vec<Change>,
    pending_sock_errors: Vec<SockError>,
    health: HealthTracker,
    health_ready: Vec<HealthReady>,
    counters: WatchCounters,
    /// The view said more input was queued after the last datagram: the burst goes on and
    /// its snapshot stays valid.
    continuing: bool,
    /// Sockets after the change (the default): changes printed whose sockets are still to be read (netns, change,
    /// the link before it, the change record's `ts_unix_ns`).
    sockets_due: Vec<(NetnsIno, Change, Option<Link>, u64)>,
}

impl WatchEngine {
    /// An engine following no netns yet.
    pub fn new(config: Config) -> Self {
        WatchEngine {
            config,
            spaces: BTreeMap::new(),
            causes: CauseTracker::default(),
            kernel_events: VecDeque::new(),
            moves: Vec::new(),
            stranded: Vec::new(),
            pending_strands: Vec::new(),
            pending_sock_errors: Vec::new(),
            health: HealthTracker::new(),
            health_ready: Vec::new(),
            counters: WatchCounters::default(),
            continuing: false,
            sockets_due: Vec::new(),
        }
    }

    /// Tells the engine whether more input is queued after the datagram just handed to
    /// [`on_updates`](Self::on_updates) (`true`: the burst goes on, and the sockets read for
    /// it serve the next datagram too, for at most [`MAX_BURST`]; `false`: the next datagram
    /// starts a new burst, with fresh snapshots). Without calls every datagram is its own burst.
    pub fn more_queued(&mut self, more: bool) {
        self.continuing = more;
    }

    fn start_burst(space: &mut Space, at: Instant) {
        space.batch_sockets = None;
        space.filtered_in_burst = 0;
        space.burst_filtered = None;
        space.burst_since = Some(at);
    }

    /// The counters so far.
    pub fn counters(&self) -> WatchCounters {
        self.counters
    }

    /// Followed namespaces.
    pub fn netns(&self) -> Vec<NetnsIno> {
        self.spaces.keys().copied().collect()
    }

    /// `netns` is followed.
    pub fn follows(&self, netns: NetnsIno) -> bool {
        self.spaces.contains_key(&netns)
    }

    /// Links known in every followed netns.
    pub fn link_count(&self) -> usize {
        self.spaces.values().map(|s| s.table.links().count()).sum()
    }

    /// Starts following `netns` from its first dump. `announce` (a namespace that appeared
    /// while watching): emit `netns_added` and every link as a change (`source: discovery`).
    pub fn add_netns(&mut self, netns: NetnsIno, name: Option<String>, dump: Dump, announce: bool, now: &Now, src: &mut dyn SocketSource) -> Vec<WatchRecord> {
        let mut out = Vec::new();
        if !announce {
            let mut table = LinkTable::from_links(dump.links);
            table.set_peers(dump.peers);
            self.spaces.insert(netns, Space { name, table, addrs: dump.addrs, ..Default::default() });
            return out;
        }
        out.push(WatchRecord::NetnsAdded(NetnsRecord { ts_unix_ns: now.unix_ns, netns, netns_name: name.clone() }));
        let mut space = Space { name, addrs: dump.addrs, ..Default::default() };
        let changes = space.table.diff_and_replace(dump.links);
        space.table.set_peers(dump.peers);
        self.spaces.insert(netns, space);
        for c in changes {
            self.emit(netns, c, Source::Discovery, None, now, src, &mut out);
        }
        out
    }

    /// Stops following `netns`: every interface it held is reported `deleted`
    /// (`source: netns_removed`), then `netns_removed` once. The view releases its handle and
    /// sockets right after.
    pub fn remove_netns(&mut self, netns: NetnsIno, removal: Removal, now: &Now) -> Vec<WatchRecord> {
        let mut out = Vec::new();
        let Some(space) = self.spaces.get(&netns) else { return out };
        let links: Vec<Link> = space.table.links().cloned().collect();
        let name = space.name.clone();
        for l in &links {
            let change = Change { kind: ChangeKind::Deleted, ifindex: l.ifindex, name: l.name.clone(), old_name: None, old_ifindex: None, address: None };
            self.emit(netns, change, Source::NetnsRemoved, Some(l), now, &mut NoSockets, &mut out);
        }
        self.spaces.remove(&netns);
        out.push(WatchRecord::NetnsRemoved(NetnsRemovedRecord {
            ts_unix_ns: now.unix_ns,
            netns,
            netns_name: name,
            still_exists: removal.still_exists,
            held_by_ifsock: removal.held_by_ifsock,
            other_holders: removal.other_holders,
            links: links.len(),
        }));
        out
    }

    /// Records a kernel event. Requests and device events are evidence for changes that
    /// follow; socket errors wait for [`WatchEngine::flush_sock_errors`].
    pub fn on_kernel(&mut self, input: KernelInput) {
        match input {
            KernelInput::LinkRequest(r) => self.causes.push(r),
            KernelInput::Device(e) => {
                while self.kernel_events.front().is_some_and(|o| o.ts_ns + CAUSE_WINDOW_NS < e.ts_ns) {
                    self.kernel_events.pop_front();
                }
                self.kernel_events.push_back(e);
            }
            KernelInput::SockError(e) => self.pending_sock_errors.push(e),
        }
    }

    /// Applies one live datagram's updates in `netns` (`source: netlink`).
    pub fn on_updates(&mut self, netns: NetnsIno, updates: Vec<Update>, now: &Now, src: &mut dyn SocketSource) -> Vec<WatchRecord> {
        let mut out = Vec::new();
        let Some(space) = self.spaces.get_mut(&netns) else { return out };
        let continuing = std::mem::take(&mut self.continuing);
        if !continuing || space.burst_since.is_none_or(|t| now.at.duration_since(t) >= MAX_BURST) {
            Self::start_burst(space, now.at);
        }
        self.counters.netlink_messages += 1;
        for u in updates {
            let Some(space) = self.spaces.get_mut(&netns) else { break };
            let prior = space.table.get(update_ifindex(&u)).cloned();
            for c in space.table.apply(u) {
                self.emit(netns, c, Source::Netlink, prior.as_ref(), now, src, &mut out);
            }
        }
        out
    }

    /// The subscription of `netns` overflowed (`ENOBUFS`): counted; the view re-dumps and
    /// hands the dump to [`WatchEngine::on_dump`] with `Source::Resync`.
    pub fn on_overrun(&mut self, _netns: NetnsIno) {
        self.counters.enobufs += 1;
        self.counters.resyncs += 1;
    }

    /// A periodic reconcile starts (one per tick, whatever the number of namespaces).
    pub fn on_reconcile(&mut self) {
        self.counters.reconciles += 1;
    }

    /// Compares a re-dump of `netns` with the table and reports the differences as the
    /// changes that must have happened (`source`: `resync` or `reconcile`).
    pub fn on_dump(&mut self, netns: NetnsIno, dump: Dump, source: Source, now: &Now, src: &mut dyn SocketSource) -> Vec<WatchRecord> {
        let mut out = Vec::new();
        let Some(space) = self.spaces.get_mut(&netns) else { return out };
        Self::start_burst(space, now.at);
        let before: Vec<Link> = space.table.links().cloned().collect();
        if space.health_before.is_none() {
            space.health_before = Some((before.clone(), space.addrs.clone()));
        }
        space.addrs = dump.addrs;
        let changes = space.table.diff_and_replace(dump.links);
        // Every link the dump lost is gone before any change is attributed: the veth peer of
        // the first deletion may be the second.
        for c in changes.iter().filter(|c| c.kind == ChangeKind::Deleted) {
            if let Some(l) = before.iter().find(|l| l.ifindex == c.ifindex) {
                remember_gone(space, l);
            }
        }
        let n = changes.len() as u64;
        for c in changes {
            let prior = before.iter().find(|l| l.ifindex == c.ifindex).cloned();
            self.emit(netns, c, source, prior.as_ref(), now, src, &mut out);
        }
        // The old pairs served the attribution above; the dump's are current.
        if let Some(space) = self.spaces.get_mut(&netns) {
            space.table.set_peers(dump.peers);
        }
        match source {
            Source::Resync => self.counters.resync_changes += n,
            Source::Reconcile => self.counters.reconcile_changes += n,
            _ => {}
        }
        out
    }

    fn wanted(&self, c: &Change) -> bool {
        match &self.config.iface {
            None => true,
            Some(name) => &c.name == name || c.old_name.as_ref() == Some(name),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(&mut self, ino: NetnsIno, mut change: Change, source: Source, prior: Option<&Link>, now: &Now, src: &mut dyn SocketSource, out: &mut Vec<WatchRecord>) {
        let Some(space) = self.spaces.get_mut(&ino) else { return };
        if change.kind == ChangeKind::AddressRemoved {
            if let Some(addr) = change.address {
                let list = space.removed_addrs.entry(change.ifindex).or_default();
                list.retain(|(_, at)| now.at.duration_since(*at) < REMOVED_ADDR_MEMORY);
                list.push((addr, now.at));
            }
        }
        if matches!(change.kind, ChangeKind::Deleted | ChangeKind::MovedOut) {
            if let Some(link) = prior {
                remember_gone(space, link);
            }
        }
        let mut from_netns = None;
        self.moves.retain(|(_, _, at)| now.at.duration_since(*at) < MOVE_PAIRING);
        match change.kind {
            ChangeKind::MovedOut => self.moves.push((change.name.clone(), ino, now.at)),
            ChangeKind::Created | ChangeKind::Recreated => {
                if let Some(pos) = self.moves.iter().position(|(n, from, _)| *n == change.name && *from != ino) {
                    from_netns = Some(self.moves.remove(pos).1);
                    change.kind = ChangeKind::MovedIn;
                    change.old_ifindex = None;
                }
            }
            _ => {}
        }
        if !self.wanted(&change) {
            return;
        }
        self.counters.events += 1;
        let gone = source == Source::NetnsRemoved;
        // A namespace found while watching has no "before": its sockets are judged from its next change.
        // A brand-new interface can move no socket's health unless an interface of its name
        // was deleted before (IP_PKTINFO wildcards recover): no socket can be bound to an
        // ifindex before it exists, and its addresses come as changes of their own.
        let deleted_before = self.health.deletions().iter().any(|d| d.netns == ino && d.name == change.name)
            || self.spaces.get(&ino).is_some_and(|s| s.health_pending.iter().any(|(c, _)| c.kind == ChangeKind::Deleted && c.name == change.name));
        let fresh = change.kind == ChangeKind::Created && !deleted_before;
        if self.config.sockets && !gone && source != Source::Discovery && moves_health(change.kind) && !fresh {
            if let Some(space) = self.spaces.get_mut(&ino) {
                if space.health_before.is_none() {
                    // `prior` is this link before the update; every other link is unchanged yet.
                    let mut links: Vec<Link> = space.table.links().filter(|l| l.ifindex != change.ifindex).cloned().collect();
                    links.extend(prior.cloned());
                    space.health_before = Some((links, space.addrs.clone()));
                }
                space.health_pending.push((change.clone(), now.unix_ns));
            }
        }
        let kernel = if gone { None } else { self.kernel_evidence(ino, &change) };
        let source = if source == Source::Netlink && kernel.is_some() { Source::KernelNetlink } else { source };
        let cause = if gone { None } else { self.cause(ino, &change, now) }.or_else(|| {
            kernel.as_ref().map(|k| Cause {
                pid: k.pid,
                tid: k.tid,
                comm: k.comm.clone(),
                request: "none (kernel context)",
                evidence: if k.via == "fentry" { "fentry:device" } else { "kprobe:device" }.to_string(),
            })
        });
        let wants_sockets = !gone && self.config.sockets && !matches!(change.kind, ChangeKind::AddressAdded | ChangeKind::AddressRemoved);
        let sockets_follow = wants_sockets && self.config.sockets_after;
        let sockets = if !wants_sockets || sockets_follow {
            Vec::new()
        } else {
            self.sockets_for(ino, &change, prior, now, src)
        };
        if sockets_follow {
            self.sockets_due.push((ino, change.clone(), prior.cloned(), now.unix_ns));
        }
        let strands = !gone && matches!(change.kind, ChangeKind::Down | ChangeKind::Deleted | ChangeKind::MovedOut);
        if strands && self.config.recv_tracking {
            self.pending_strands.push(change.clone());
        }
        let netns_name = self.spaces.get(&ino).and_then(|n| n.name.clone());
        out.push(WatchRecord::Change(ChangeEvent { ts_unix_ns: now.unix_ns, source, netns: ino, netns_name, from_netns, change, cause, kernel, sockets, sockets_follow }));
    }

    /// The request behind `change`: one naming the interface, else one that made or deleted
    /// the other end of its veth pair (one `RTM_DELLINK`/`RTM_NEWLINK` acts on both ends).
    fn cause(&self, ino: NetnsIno, change: &Change, now: &Now) -> Option<Cause> {
        if let Some(c) = self.causes.cause_of(change, ino, now.mono_ns) {
            return Some(c);
        }
        let space = self.spaces.get(&ino)?;
        match change.kind {
            ChangeKind::Deleted | ChangeKind::Down | ChangeKind::CarrierDown => {
                let peer = space.table.peer_of(change.ifindex)?;
                let name = space
                    .table
                    .get(peer)
                    .map(|l| l.name.clone())
                    .or_else(|| space.deleted.iter().rev().find(|l| l.ifindex == peer).map(|l| l.name.clone()))?;
                let other = Change { ifindex: peer, name, old_name: None, ..change.clone() };
                let mut c = self.causes.cause_of(&other, ino, now.mono_ns)?;
                c.evidence = format!("peer of {peer}");
                Some(c)
            }
            ChangeKind::Created | ChangeKind::Recreated => {
                let (mut c, other_name) = self.causes.peer_creation(change, ino, now.mono_ns)?;
                let other = other_name.as_deref().and_then(|n| space.table.links().find(|l| l.name == n).map(|l| l.ifindex)).or_else(|| space.table.peer_of(change.ifindex));
                // veth_newlink() registers the peer first: when its notification arrives the
                // other end has no ifindex yet, so it is named.
                c.evidence = match (other, other_name) {
                    (Some(i), _) => format!("peer of {i}"),
                    (None, Some(n)) => format!("peer of {n}"),
                    (None, None) => "peer".to_string(),
                };
                Some(c)
            }
            _ => None,
        }
    }

    /// The kernel probe event behind a down/delete/move of (netns, ifindex), if one fired.
    fn kernel_evidence(&self, ino: NetnsIno, change: &Change) -> Option<KernelEvidence> {
        let reason = match change.kind {
            ChangeKind::Deleted | ChangeKind::MovedOut => "unregister",
            ChangeKind::Down | ChangeKind::CarrierDown => "close",
            _ => return None,
        };
        self.kernel_events.iter().rev().find(|e| e.key == (ino, change.ifindex) && e.reason == reason).cloned()
    }

    /// Sockets tied to the changed interface: for a deletion the interface is gone, so its last
    /// known addresses (from `prior` and recent `RTM_DELADDR`s) and its old ifindex (still in
    /// `sk_bound_dev_if`) are used.
    fn sockets_for(&mut self, ino: NetnsIno, change: &Change, prior: Option<&Link>, now: &Now, src: &mut dyn SocketSource) -> Vec<TiedSocket> {
        let Some(space) = self.spaces.get_mut(&ino) else { return Vec::new() };
        let current = space.table.get(change.ifindex);
        let mut addrs: Vec<IpAddr> = current.or(prior).map(|l| l.addrs.iter().copied().collect()).unwrap_or_default();
        if matches!(change.kind, ChangeKind::Deleted | ChangeKind::MovedOut) {
            if let Some(removed) = space.removed_addrs.remove(&change.ifindex) {
                addrs.extend(removed.into_iter().filter(|(_, at)| now.at.duration_since(*at) < REMOVED_ADDR_MEMORY).map(|(a, _)| a));
            }
        }
        let links: Vec<Link> = space.table.links().cloned().collect();
        // One request acts on both ends of a veth pair: the walk covers the peer too, so its
        // change (next in the burst) needs no walk of its own.
        let mut scope = vec![change.ifindex];
        let mut scope_addrs = addrs.clone();
        if let Some(peer) = space.table.peer_of(change.ifindex).filter(|p| *p != change.ifindex) {
            scope.push(peer);
            scope_addrs.extend(space.table.get(peer).into_iter().flat_map(|l| l.addrs.iter().copied()));
        }
        let filtered;
        let sockets: &[Socket] = match Self::burst_sockets(space, ino, &scope, &scope_addrs, src) {
            Ok(Some(s)) => {
                filtered = s;
                &filtered
            }
            Ok(None) => space.batch_sockets.as_deref().unwrap_or_default(),
            Err(e) => {
                tracing::warn!("socket snapshot of netns {ino} failed, change reported without sockets: {e:#}");
                return Vec::new();
            }
        };
        tie::tied_to(sockets, ino, change.ifindex, &change.name, &addrs, &links)
    }

    /// The sockets a change of `ifindexes` (holding `addrs`) in this burst needs:
    /// `Some(filtered)`: the burst's last filtered snapshot when its scope covers this one,
    /// else a new one ([`SocketSource::sockets_tied`]) while the burst has taken fewer than
    /// [`FILTERED_PER_BURST`] and the interfaces fit one kernel filter; or `None`: every
    /// socket, in `space.batch_sockets` (read now if this burst has none yet).
    fn burst_sockets(space: &mut Space, ino: NetnsIno, ifindexes: &[IfIndex], addrs: &[IpAddr], src: &mut dyn SocketSource) -> Result<Option<Arc<Vec<Socket>>>> {
        if space.batch_sockets.is_some() {
            return Ok(None);
        }
        if let Some((ifs, held, sockets)) = &space.burst_filtered {
            if ifindexes.iter().all(|i| ifs.contains(i)) && addrs.iter().all(|a| held.contains(a)) {
                return Ok(Some(sockets.clone()));
            }
        }
        if space.filtered_in_burst < FILTERED_PER_BURST && ifindexes.len() <= ifsock_common::SOCK_FILTER_IFINDEXES {
            space.filtered_in_burst += 1;
            let sockets = Arc::new(src.sockets_tied(ino, ifindexes, addrs)?);
            space.burst_filtered = Some((ifindexes.to_vec(), addrs.to_vec(), sockets.clone()));
            return Ok(Some(sockets));
        }
        space.batch_sockets = Some(src.sockets(ino)?);
        Ok(None)
    }

    /// Sockets after the change (the default): reads the sockets of the changes already printed (in their order,
    /// one filtered walk per burst where it covers them, as for change lines) and returns one
    /// [`WatchRecord::ChangeSockets`] per change. Call after the change records are written.
    pub fn flush_change_sockets(&mut self, now: &Now, src: &mut dyn SocketSource) -> Vec<WatchRecord> {
        let mut out = Vec::new();
        for (ino, change, prior, change_ts) in std::mem::take(&mut self.sockets_due) {
            if !self.spaces.contains_key(&ino) {
                continue;
            }
            let sockets = self.sockets_for(ino, &change, prior.as_ref(), now, src);
            let netns_name = self.spaces.get(&ino).and_then(|s| s.name.clone());
            out.push(WatchRecord::ChangeSockets(ChangeSocketsEvent {
                ts_unix_ns: now.unix_ns,
                change_ts_unix_ns: change_ts,
                netns: ino,
                netns_name,
                event: change.kind.name(),
                ifindex: change.ifindex,
                name: change.name,
                sockets,
            }));
        }
        out
    }

    /// Namespaces with queued changes that may have stranded or recovered sockets: for each the
    /// view calls [`on_health`](Self::on_health) with fresh address details.
    pub fn health_due(&self) -> Vec<NetnsIno> {
        self.spaces.iter().filter(|(_, s)| !s.health_pending.is_empty()).map(|(i, _)| *i).collect()
    }

    /// Judges the sockets of `netns` the queued changes can move (tied to one of their
    /// interfaces or addresses, or wildcard) against the links before and after them
    /// (`addrs`: address details of a fresh `RTM_GETADDR` dump, `None` if it failed: the last
    /// known ones are kept). Sockets come from the burst's snapshot when it covers them, else
    /// a filtered one is asked of `src` (every socket when more than
    /// [`ifsock_common::SOCK_FILTER_IFINDEXES`] interfaces changed). Returns how many sockets changed health (stranded or
    /// recovered); their records wait for [`flush_health`](Self::flush_health).
    pub fn on_health(&mut self, netns: NetnsIno, addrs: Option<AddrTable>, now: &Now, src: &mut dyn SocketSource) -> usize {
        let Some(space) = self.spaces.get_mut(&netns) else { return 0 };
        let pending = std::mem::take(&mut space.health_pending);
        let before = space.health_before.take();
        if let Some(a) = addrs {
            space.addrs = a;
        }
        let Some((links_before, addrs_before)) = before else { return 0 };
        // Only sockets tied to an interface the changes touched can change health (bound to
        // it or to one of its addresses before or after, or wildcard): a filtered snapshot
        // of those serves, unless the burst already holds every socket.
        let mut ifindexes: Vec<IfIndex> = Vec::new();
        let mut scope_addrs: Vec<IpAddr> = Vec::new();
        for (c, _) in &pending {
            if !ifindexes.contains(&c.ifindex) {
                ifindexes.push(c.ifindex);
            }
            scope_addrs.extend(c.address);
        }
        for l in links_before.iter().chain(space.table.links()).filter(|l| ifindexes.contains(&l.ifindex)) {
            scope_addrs.extend(l.addrs.iter().copied());
        }
        let filtered = match Self::burst_sockets(space, netns, &ifindexes, &scope_addrs, src) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("socket snapshot of netns {netns} failed, socket health not judged: {e:#}");
                return 0;
            }
        };
        let sockets: &[Socket] = match &filtered {
            Some(s) => s,
            None => space.batch_sockets.as_deref().unwrap_or_default(),
        };
        let links: Vec<Link> = space.table.links().cloned().collect();
        let addrs_now = space.addrs.clone();
        // Deletions the queued changes saw count only after the "before" judgement.
        self.health.prime(netns, sockets, &links_before, &addrs_before);
        for (c, at) in &pending {
            match c.kind {
                ChangeKind::Deleted => self.health.saw_deletion(SeenDeletion { netns, ifindex: c.ifindex, name: c.name.clone(), at_unix_ns: *at }),
                ChangeKind::Created | ChangeKind::Recreated | ChangeKind::MovedIn => self.health.saw_creation(netns, &c.name),
                _ => {}
            }
        }
        let changes = self.health.update(netns, sockets, &links, &addrs_now, now.unix_ns);
        let before_ready = self.health_ready.len();
        for mut change in changes {
            let (st, recovered) = match &mut change {
                HealthChange::Stranded { stranded, .. } => (stranded, false),
                HealthChange::Recovered { was, .. } => (was, true),
            };
            let fitting = health_cause(&pending, st, recovered);
            // With --iface only transitions one of its changes explains are reported (another
            // interface's change may have been applied in the same burst).
            if fitting.is_none() && self.config.iface.is_some() {
                continue;
            }
            let cause = fitting.or(pending.last().map(|(c, _)| c));
            if let Some(c) = cause.filter(|c| st.ifindex.is_none_or(|i| i == c.ifindex) && (st.ifindex.is_some() || c.address.is_some_and(|a| st.address == Some(a)))) {
                // The change names the interface a snapshot could not (an address that came back
                // names where; a deleted device its name).
                st.ifindex = Some(c.ifindex);
                st.ifname.get_or_insert_with(|| c.name.clone());
            }
            let cause = cause.map(|c| c.kind.name().to_string());
            self.health_ready.push(HealthReady { netns, change, cause, links: links.clone() });
        }
        self.health_ready.len() - before_ready
    }

    /// Some socket changed health: one waiter pass is due before [`flush_health`](Self::flush_health).
    pub fn wants_waiters(&self) -> bool {
        !self.health_ready.is_empty()
    }

    /// The `socket_stranded` / `socket_recovered` records judged by [`on_health`](Self::on_health),
    /// each with the socket's row (its tie, health now, and waiters from `waiters`).
    pub fn flush_health(&mut self, waiters: &dyn WaiterLookup, now: &Now) -> Vec<WatchRecord> {
        let mut out = Vec::new();
        for r in std::mem::take(&mut self.health_ready) {
            let name = self.spaces.get(&r.netns).and_then(|s| s.name.clone());
            let (socket, by, now_stranded, recovered) = match r.change {
                HealthChange::Stranded { socket, stranded } => (socket, stranded.clone(), Some(stranded), false),
                HealthChange::Recovered { socket, was } => (socket, was, None, true),
            };
            let w = waiters.waiters_of(&socket);
            let Some(tied) = tie::each_once(std::slice::from_ref(&socket), r.netns, &r.links).pop() else { continue };
            let report = SocketReport { tied, stranded: now_stranded, waiters: w };
            let event = SocketHealthEvent::new(&by, report, now.unix_ns, name, r.cause);
            out.push(if recovered { WatchRecord::SocketRecovered(event) } else { WatchRecord::SocketStranded(event) });
        }
        out
    }

    /// Places the pending socket errors in followed namespaces. Reports from the classic
    /// tracepoint name no socket: one snapshot per followed netns serves the whole batch, and
    /// a report is placed only where exactly one socket matches it (else it is counted in
    /// `socket_errors_unmatched`).
    pub fn flush_sock_errors(&mut self, now: &Now, src: &mut dyn SocketSource) -> Vec<WatchRecord> {
        let mut out = Vec::new();
        if self.pending_sock_errors.is_empty() {
            return out;
        }
        let mut snapshots: BTreeMap<NetnsIno, Vec<Socket>> = BTreeMap::new();
        for e in std::mem::take(&mut self.pending_sock_errors) {
            let placed = match e.netns {
                Some(ino) => self.spaces.contains_key(&ino).then_some((ino, None)),
                None => {
                    let mut found: Vec<(NetnsIno, Socket)> = Vec::new();
                    for ino in self.spaces.keys() {
                        let sockets = snapshots.entry(*ino).or_insert_with(|| {
                            src.sockets(*ino).unwrap_or_else(|err| {
                                tracing::warn!("socket snapshot of netns {ino} failed: {err:#}");
                                Vec::new()
                            })
                        });
                        if let Some(s) = e.match_socket(sockets) {
                            found.push((*ino, s.clone()));
                        }
                    }
                    if found.len() == 1 {
                        found.pop().map(|(ino, s)| (ino, Some(s)))
                    } else {
                        self.counters.socket_errors_unmatched += 1;
                        None
                    }
                }
            };
            let Some((ino, matched)) = placed else { continue };
            let Some(space) = self.spaces.get(&ino) else { continue };
            let line = SockErrorLine::new(&e, now.unix_ns_of(e.ts_ns), ino, space.name.clone(), matched.as_ref(), &space.table);
            if let Some(name) = &self.config.iface {
                let Some(link) = space.table.links().find(|l| &l.name == name) else { continue };
                let addrs: Vec<IpAddr> = link.addrs.iter().copied().collect();
                if line.bound_dev_if != link.ifindex.0 && !e.local_in(&addrs) {
                    continue;
                }
            }
            self.counters.socket_errors += 1;
            out.push(WatchRecord::SocketError(line));
        }
        out
    }

    /// A receiver scan is due: changes wait for one, or stranded receivers are followed.
    pub fn wants_receiver_scan(&self) -> bool {
        !self.pending_strands.is_empty() || !self.stranded.is_empty()
    }

    /// Stranded receivers are being followed (the scan must run even if nothing looks blocked,
    /// to see them wake).
    pub fn following_stranded(&self) -> bool {
        !self.stranded.is_empty()
    }

    /// Links and deleted links of every followed netns, for the receiver scan's ties.
    pub fn receiver_context(&self) -> receivers::Context {
        let mut ctx = receivers::Context::default();
        for (ino, s) in &self.spaces {
            ctx.links.insert(*ino, s.table.links().cloned().collect());
            ctx.deleted.insert(*ino, s.deleted.iter().cloned().collect());
        }
        ctx
    }

    /// A receiver scan that starts now and ends later, off the event loop: the links for its
    /// ties ([`Self::receiver_context`]) and the pending downs/deletes it can judge, which are
    /// those already pending. Hand its result to [`Self::on_scanned_receivers`]; a change that
    /// arrives meanwhile waits for the next scan (this one's links do not show it).
    pub fn begin_receiver_scan(&self) -> (receivers::Context, ReceiverScan) {
        (self.receiver_context(), ReceiverScan { covers: self.pending_strands.len() })
    }

    /// Takes one receiver scan made now, covering every pending change
    /// ([`Self::on_scanned_receivers`]).
    pub fn on_receivers(&mut self, receivers: &[HungReceiver], now: &Now) -> Vec<WatchRecord> {
        let scan = ReceiverScan { covers: self.pending_strands.len() };
        self.on_scanned_receivers(scan, receivers, now)
    }

    /// Takes one receiver scan (done by the view with the receivers code): raises
    /// `receiver_stranded` for receivers on the interfaces of the pending downs/deletes `scan`
    /// covers, and again for followed ones still blocked `stranded_after` after their
    /// stranding; forgets those that woke (absent from the scan).
    pub fn on_scanned_receivers(&mut self, scan: ReceiverScan, receivers: &[HungReceiver], now: &Now) -> Vec<WatchRecord> {
        let mut out = Vec::new();
        let covered: Vec<Change> = self.pending_strands.drain(..scan.covers.min(self.pending_strands.len())).collect();
        for change in covered {
            for r in receivers {
                // The change must agree with what the scan sees now (a down followed by a delete
                // in the same tick strands by the delete).
                let agrees = |state: IfaceState| match change.kind {
                    ChangeKind::Deleted | ChangeKind::MovedOut => state == IfaceState::Deleted,
                    ChangeKind::Down => state == IfaceState::Down,
                    _ => false,
                };
                // And this change's interface must be the one that strands it: a wildcard
                // IP_PKTINFO receiver stranded by a deleted veth is not stranded by its peer's down.
                let pktinfo = r.socket.as_ref().is_some_and(|s| s.pktinfo);
                let hit = r.interfaces.iter().any(|t| t.ifindex == change.ifindex && agrees(t.state) && tie_strands(pktinfo, t));
                if !hit || self.stranded.iter().any(|s| s.tid == r.tid) {
                    continue;
                }
                self.stranded.push(Stranded { tid: r.tid, change: change.clone(), since: now.at, threshold_reported: false });
                out.push(WatchRecord::ReceiverStranded(StrandedEvent { phase: "interface_change", ts_unix_ns: now.unix_ns, change: change.clone(), receiver: r.clone() }));
            }
        }
        let mut keep = Vec::new();
        for mut s in std::mem::take(&mut self.stranded) {
            let Some(r) = receivers.iter().find(|r| r.tid == s.tid) else { continue };
            if !s.threshold_reported && now.at.duration_since(s.since) >= self.config.stranded_after {
                s.threshold_reported = true;
                out.push(WatchRecord::ReceiverStranded(StrandedEvent { phase: "threshold", ts_unix_ns: now.unix_ns, change: s.change.clone(), receiver: r.clone() }));
            }
            keep.push(s);
        }
        self.stranded = keep;
        out
    }

    /// The records printed on exit: the link table of each followed netns, then the counters
    /// (`bpf`: the eBPF-side counters, `None` when they could not be read).
    pub fn finish(&mut self, bpf: Option<Counters>) -> Vec<WatchRecord> {
        self.counters.bpf = bpf;
        let mut out: Vec<WatchRecord> = self
            .spaces
            .iter()
            .map(|(ino, s)| {
                WatchRecord::State(StateRecord {
                    netns: *ino,
                    netns_name: s.name.clone(),
                    links: s.table.links().map(|l| StateLink { ifindex: l.ifindex, name: l.name.clone(), flags: l.flags }).collect(),
                })
            })
            .collect();
        out.push(WatchRecord::Counters(CountersRecord { counters: self.counters }));
        out
    }
}

/// A netns that is going away has no sockets to snapshot.
struct NoSockets;
impl SocketSource for NoSockets {
    fn sockets(&mut self, netns: NetnsIno) -> Result<Vec<Socket>> {
        anyhow::bail!("netns {netns} is gone")
    }
}

/// Adds a deleted or moved-out link to the memory of `space` (once; the oldest goes first).
fn remember_gone(space: &mut Space, link: &Link) {
    if space.deleted.contains(link) {
        return;
    }
    space.deleted.push_back(link.clone());
    if space.deleted.len() > DELETED_LINKS {
        space.deleted.pop_front();
    }
}

fn update_ifindex(u: &Update) -> IfIndex {
    match u {
        Update::NewLink { ifindex, .. } | Update::DelLink { ifindex, .. } | Update::NewAddr { ifindex, .. } | Update::DelAddr { ifindex, .. } => *ifindex,
    }
}

#[cfg(test)]
mod tests;
