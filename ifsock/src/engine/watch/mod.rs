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
//!
//! Files: this one holds the inputs and the engine's state; `changes.rs` applies link updates
//! and dumps (classification, pairing, causes, tied sockets); `sockets.rs` judges socket health,
//! places socket errors and follows stranded receivers; `records.rs` holds the output records.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    health::{HealthChange, HealthTracker},
    receivers,
};
use crate::{
    model::{
        event::{CauseTracker, LinkRequest, CAUSE_WINDOW_NS},
        ids::{IfIndex, NetnsIno},
        link::{AddrTable, Change, ChangeKind, Dump, Link, LinkTable, Update},
        sock_error::SockError,
        socket::Socket,
        stranded::Waiter,
    },
    probes::Counters,
};

mod changes;
mod records;
mod sockets;

pub use records::*;
pub use sockets::ReceiverScan;

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
/// A health transition judged by [`WatchEngine::on_health`], waiting for its waiters.
#[derive(Debug)]
struct HealthReady {
    netns: NetnsIno,
    change: HealthChange,
    /// A `Stranded` change that is no change: the socket was stranded before and a change that
    /// could have cured it did not (`socket_still_stranded`).
    still: bool,
    cause: Option<String>,
    links: Vec<Link>,
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
    /// Each with the netns its interface is in: a receiver is stranded only by a change of
    /// its own socket's netns (ifindexes repeat across namespaces).
    pending_strands: Vec<(NetnsIno, Change)>,
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

    /// The links of `netns` as the changes taken so far left them (`None` when not followed):
    /// the state every record already emitted describes, which a fresh dump may be ahead of.
    pub fn links_of(&self, netns: NetnsIno) -> Option<impl Iterator<Item = &Link>> {
        self.spaces.get(&netns).map(|s| s.table.links())
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
        self.health.forget_netns(netns);
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
