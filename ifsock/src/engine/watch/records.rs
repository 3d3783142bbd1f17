//! The records `watch` emits ([`WatchRecord`] and its parts), serialised as the JSON lines
//! `watch --json` prints; the human renderer reads the same fields.
use std::net::SocketAddr;

use serde::Serialize;

use crate::{
    model::{
        event::Cause,
        ids::{IfIndex, NetnsIno, SockInode},
        link::{Change, LinkTable},
        receiver::HungReceiver,
        sock_error::{protocol_name, CurrentTask, InodeSource, SockError, SockErrorProbe},
        socket::Socket,
        stranded::SocketHealthEvent,
        sys::errno_name,
        tie::TiedSocket,
    },
    probes::{select::Selection, Counters},
};

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
    /// Later changes of the same interface in the same burst whose socket list was the same
    /// (e.g. `carrier_down` and `deleted` after `down`): one list per burst, not one per change.
    /// Omitted when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<AlsoChange>,
}

/// A change whose sockets a [`ChangeSocketsEvent`] of an earlier change of the same burst
/// already lists: `{event, change_ts_unix_ns}`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AlsoChange {
    /// The change's kind.
    pub event: &'static str,
    /// `ts_unix_ns` of its change record.
    pub change_ts_unix_ns: u64,
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
    /// A socket a change stranded (address gone, device down or deleted), with its waiters.
    SocketStranded(SocketHealthEvent),
    /// A socket stranded before is healthy again; `reason` is what it was stranded by.
    SocketRecovered(SocketHealthEvent),
    /// After a change that could have cured it (its interface recreated or up, an address
    /// back), a socket of that interface or address is still stranded; `verdict` says why and
    /// what to do.
    SocketStillStranded(SocketHealthEvent),
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
