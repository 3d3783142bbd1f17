//! `ifsock watch`: a live stream of interface changes with the sockets tied to the interface
//! at that moment and the task that caused the change.
//!
//! Start-up race (seed 004): we subscribe to the rtnetlink groups *before* dumping, so a change
//! that happens during the dump is queued on the subscription and applied on top of the dump.
//! Loss (seed 002): `ENOBUFS` triggers an immediate re-dump and diff (`source: resync`); a
//! periodic re-dump (`--reconcile-every`) catches silent loss (`source: reconcile`).
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tokio::sync::mpsc;

use super::hung::{self, HungReceiver};
use crate::{
    cli::parse_duration,
    model::tie::{self, TiedSocket},
    probes::snapshot,
    render::{clock, fmt, fmt::errno_name, json_line, unix_ns, unix_ns_of},
};
use crate::{
    kernel::{
        netlink::{self, Received, Subscription},
        netns::{self, NetnsHandle},
    },
    model::{
        event::{Cause, CauseTracker},
        ids::{IfIndex, NetnsIno, SockInode},
        link::{Change, ChangeKind, Link, LinkTable},
        sock_error::{protocol_name, CurrentTask, InodeSource, SockError, SockErrorProbe},
        socket::Socket,
    },
    probes::{events::Event, select, Counters, Probes, SockErrorAttach},
};

/// Options of `watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Only events of this interface (by current or previous name).
    #[arg(long)]
    pub iface: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Receive buffer of the rtnetlink subscription socket, bytes (kernel default if unset).
    #[arg(long)]
    pub rcvbuf: Option<usize>,
    /// Re-dump and diff this often to catch silently lost events (0 = off).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub reconcile_every: Duration,
    /// Do not attach socket snapshots to events (cheaper under bursts).
    #[arg(long)]
    pub no_sockets: bool,
    /// Stop after this many change events (for scripts and tests).
    #[arg(long)]
    pub count: Option<u64>,
    /// Use this probe set for the device and receive paths instead of the best one allowed
    /// (fentry, kprobe, tracepoint); refused with the kernel's reason if it cannot load.
    #[arg(long, value_enum)]
    pub probe_set: Option<select::ProbeSet>,
    /// Follow every network namespace (named ones under /run/netns and those of running
    /// processes), including namespaces created and destroyed while running.
    #[arg(long)]
    pub all_netns: bool,
    /// Raise `receiver_stranded` again when a receiver is still blocked this long after the
    /// down/delete that stranded it.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub stranded_after: Duration,
    /// Observe kernel-reported socket errors with this program instead of the best one that
    /// loads (tp_btf, then tracepoint).
    #[arg(long, value_enum)]
    pub sock_error_probe: Option<SockErrorProbe>,
}

/// A receiver stranded by a change, followed until it wakes or passes `--stranded-after`.
struct Stranded {
    tid: u32,
    change: Change,
    /// When the change stranded it: the threshold counts from here.
    since: Instant,
    threshold_reported: bool,
}

/// `receiver_stranded` event: a task blocked receiving on a socket tied to an interface that
/// went down or was deleted (`phase`: `interface_change`, then `threshold`).
#[derive(Debug, Serialize)]
pub struct StrandedEvent {
    /// `"receiver_stranded"`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// `interface_change` (raised with the change) or `threshold` (still blocked after `--stranded-after`).
    pub phase: &'static str,
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// The change that stranded it.
    pub change: Change,
    /// The receiver.
    pub receiver: HungReceiver,
}

/// `socket_error` event: the kernel reported an error on a socket of a followed netns
/// (`sock:inet_sk_error_report`); the application sees it at its next call on the socket.
#[derive(Debug, Serialize)]
pub struct SockErrorLine {
    /// `"socket_error"`.
    #[serde(rename = "type")]
    pub ty: &'static str,
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
    /// The line for a report placed in `netns`; `matched` is the snapshot socket a classic
    /// report was matched to.
    fn new(e: &SockError, netns: NetnsIno, netns_name: Option<String>, matched: Option<&Socket>, links: &LinkTable) -> Self {
        let (inode, inode_source, bound_dev_if) = match matched {
            Some(s) => ((s.inode.0 != 0).then_some(s.inode), Some(InodeSource::Snapshot), s.bound_dev_if),
            None => (e.inode, e.inode.map(|_| InodeSource::Sk), e.bound_dev_if),
        };
        SockErrorLine {
            ty: "socket_error",
            ts_unix_ns: unix_ns_of(e.ts_ns),
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

    /// One human-readable line.
    fn human(&self) -> String {
        let mut line = format!(
            "{} {:<15} {} (errno {}) {}{} {} -> {} inode {}",
            clock(self.ts_unix_ns),
            "socket_error",
            self.error,
            self.errno,
            self.protocol.as_deref().unwrap_or("ip"),
            self.family,
            self.local,
            self.remote,
            self.inode.map_or("-".to_string(), |i| i.to_string()),
        );
        if self.inode_source == Some(InodeSource::Snapshot) {
            line.push_str(" (matched by address)");
        }
        if self.bound_dev_if != 0 {
            line.push_str(&format!(" dev {} {}", self.bound_dev_if, self.bound_dev_name.as_deref().unwrap_or("?")));
        }
        line.push_str(&format!(" netns {}; current task {}[{}]", self.netns, self.task.comm, self.task.pid));
        line
    }
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
}

/// One watch event (JSON field names match the table).
#[derive(Debug, Serialize)]
pub struct WatchEvent {
    /// `"change"`.
    #[serde(rename = "type")]
    pub ty: &'static str,
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
    /// Task that requested it (syscall tracepoint evidence), if one did.
    pub cause: Option<Cause>,
    /// The kernel device probe that saw it (fentry/kprobe sets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelEvidence>,
    /// Sockets tied to the interface at that moment (for a deletion: those tied to it when it went).
    pub sockets: Vec<TiedSocket>,
}

/// A device close/unregister seen at the kernel function.
#[derive(Clone, Debug, Serialize)]
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
    fn from_event(e: &crate::model::kernel_event::KernelDeviceEvent) -> Self {
        KernelEvidence {
            reason: e.reason.as_str(),
            via: e.via.as_str(),
            pid: e.pid,
            tid: e.tid,
            comm: e.comm.clone(),
            ts_ns: e.ts_ns,
            key: (e.netns, e.ifindex),
        }
    }
}

/// Counters shown on exit and in the `counters` line.
#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct WatchCounters {
    /// rtnetlink datagrams received.
    pub netlink_messages: u64,
    /// Change events emitted.
    pub events: u64,
    /// `ENOBUFS` on the subscription socket.
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
    /// eBPF-side counters.
    #[serde(flatten)]
    pub bpf: Counters,
}

/// One followed network namespace.
struct NsState {
    ino: NetnsIno,
    name: Option<String>,
    /// `None`: ifsock's own netns (no setns needed).
    handle: Option<NetnsHandle>,
    rtnl: rtnetlink::Handle,
    table: LinkTable,
    /// Addresses removed recently, per ifindex: on unregister the kernel sends `RTM_DELADDR`
    /// before `RTM_DELLINK`, and sockets bound to those addresses belong to the deleted link.
    removed_addrs: HashMap<IfIndex, Vec<(IpAddr, Instant)>>,
    /// Links deleted during this run (for ties of receivers on deleted interfaces).
    deleted: Vec<Link>,
    /// Sockets of the current batch (taken once per batch, lazily).
    batch_sockets: Option<Vec<Socket>>,
    _reader: AbortOnDrop,
}

/// Aborts a spawned task when dropped (a netns that goes away takes its reader with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a removed address still ties sockets to its (now deleted) interface.
const REMOVED_ADDR_MEMORY: Duration = Duration::from_secs(2);
/// How long a `moved_out` waits for the matching arrival in another followed netns.
const MOVE_PAIRING: Duration = Duration::from_secs(5);

type NetlinkMsg = (NetnsIno, Result<Received>);

/// Opens a follower for one netns: subscription first, then the dump (see the module docs).
async fn open_ns(handle: Option<NetnsHandle>, rcvbuf: Option<usize>, tx: mpsc::UnboundedSender<NetlinkMsg>) -> Result<NsState> {
    let (ino, name) = match &handle {
        Some(h) => (h.ino, h.name.clone()),
        None => {
            let ino = netns::current_ino()?;
            (ino, netns::named().into_iter().find(|(_, i)| *i == ino).map(|(n, _)| n))
        }
    };
    let rt = tokio::runtime::Handle::current();
    let open = move || -> Result<_> {
        let _guard = rt.enter();
        let sub = Subscription::open(rcvbuf)?;
        let (conn, rtnl, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
        Ok((sub, conn, rtnl))
    };
    let (mut sub, conn, rtnl) = match &handle {
        None => open()?,
        Some(h) => h.run(open)??,
    };
    tokio::spawn(conn);
    let reader = tokio::spawn(async move {
        loop {
            let r = sub.recv().await;
            if let Ok(Received::Overrun) = r {
                // Messages queued before the re-dump are older than it: drop them.
                sub.discard_pending();
            }
            let stop = r.is_err();
            if tx.send((ino, r)).is_err() || stop {
                break;
            }
        }
    });
    let table = LinkTable::from_links(netlink::dump_links(&rtnl).await.with_context(|| format!("dumping links of netns {ino}"))?);
    Ok(NsState {
        ino,
        name,
        handle,
        rtnl,
        table,
        removed_addrs: HashMap::new(),
        deleted: Vec::new(),
        batch_sockets: None,
        _reader: AbortOnDrop(reader),
    })
}

struct Watcher {
    args: WatchArgs,
    all_netns: bool,
    spaces: BTreeMap<NetnsIno, NsState>,
    probes: Probes,
    causes: CauseTracker,
    counters: WatchCounters,
    /// Receivers stranded and still followed.
    stranded: Vec<Stranded>,
    /// Downs/deletes whose stranded receivers are yet to be looked up: one lookup per tick
    /// serves them all, so a burst of 1,000 deletions costs one scan, not 1,000.
    pending_strands: Vec<Change>,
    /// Receive tracking is attached.
    recv_tracking: bool,
    /// `moved_out` changes waiting for their arrival elsewhere: (name, from netns, when).
    moves: Vec<(String, NetnsIno, Instant)>,
    tx: mpsc::UnboundedSender<NetlinkMsg>,
    /// Recent kernel device events, matched to rtnetlink changes.
    kernel_events: std::collections::VecDeque<KernelEvidence>,
    /// Socket errors of the current ring-buffer batch, printed by [`Watcher::flush_sock_errors`].
    pending_sock_errors: Vec<SockError>,
}

/// Runs `watch` until Ctrl-C (or `--count` events).
///
/// # Errors
/// Probe loading, netlink subscription or dump failures.
pub async fn run(args: WatchArgs) -> Result<()> {
    let mut probes = Probes::load(u64::MAX)?;
    let selection = probes.attach_device(args.probe_set)?;
    if let Err(e) = probes.attach_link_requests() {
        tracing::warn!("link-request tracepoints unavailable, events will carry no cause: {e:#}");
    }
    let recv_selection = match probes.attach_recv(args.probe_set) {
        Ok(sel) => Some(sel),
        Err(e) if args.probe_set.is_some() => return Err(e.context("attaching the receive probes")),
        Err(e) => {
            tracing::warn!("receive probes unavailable, no receiver_stranded events: {e:#}");
            None
        }
    };
    let recv_tracking = recv_selection.is_some();
    // Socket errors are extra evidence: without them watch still follows interfaces.
    let sock_errors: Result<SockErrorAttach, String> = match probes.attach_sock_errors_with(args.sock_error_probe) {
        Ok(a) => Ok(a),
        Err(e) if args.sock_error_probe.is_some() => return Err(e.context("--sock-error-probe")),
        Err(e) => {
            tracing::warn!("socket errors unavailable, no socket_error events: {e:#}");
            Err(format!("{e:#}"))
        }
    };
    let mut events = probes.events()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<NetlinkMsg>();
    let mut w = Watcher {
        all_netns: args.all_netns,
        args,
        spaces: BTreeMap::new(),
        probes,
        causes: CauseTracker::default(),
        counters: WatchCounters::default(),
        stranded: Vec::new(),
        pending_strands: Vec::new(),
        recv_tracking,
        moves: Vec::new(),
        tx,
        kernel_events: std::collections::VecDeque::new(),
        pending_sock_errors: Vec::new(),
    };
    if w.all_netns {
        w.discover(false).await?;
    } else {
        let ns = open_ns(None, w.args.rcvbuf, w.tx.clone()).await?;
        w.spaces.insert(ns.ino, ns);
    }
    let links: usize = w.spaces.values().map(|n| n.table.links().count()).sum();
    let spaces: Vec<NetnsIno> = w.spaces.keys().copied().collect();
    let (sock_error_probe, sock_errors_refused) = match &sock_errors {
        Ok(a) => (Some(a.probe), a.tp_btf_refused.clone().map(|r| format!("tp_btf: {r}"))),
        Err(e) => (None, Some(e.clone())),
    };
    if w.args.json {
        json_line(&serde_json::json!({"type": "ready", "netns": spaces, "probe_set": selection, "recv_probe_set": recv_selection, "links": links, "recv_tracking": w.recv_tracking, "sock_errors": sock_error_probe, "sock_errors_refused": sock_errors_refused}))?;
    } else {
        let recv = recv_selection.as_ref().map_or("receive path: untraced".to_string(), |s| format!("receive path: {s}"));
        let sock_errors = match (sock_error_probe, &sock_errors_refused) {
            (Some(p), None) => format!("socket errors: {p}"),
            (Some(p), Some(why)) => format!("socket errors: {p} ({why})"),
            (None, Some(why)) => format!("socket errors unavailable: {why}"),
            (None, None) => "socket errors unavailable".to_string(),
        };
        eprintln!("watching {} netns ({links} links): device path: {selection}; {recv}; {sock_errors} (Ctrl-C to stop)", spaces.len());
    }
    let mut reconcile = (!w.args.reconcile_every.is_zero()).then(|| {
        let mut t = tokio::time::interval(w.args.reconcile_every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    if let Some(t) = reconcile.as_mut() {
        t.tick().await;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut stranded_tick = tokio::time::interval(Duration::from_millis(250));
    // Namespaces come and go: /run/netns and /proc/*/ns/net are re-read every second.
    let mut discovery = tokio::time::interval(Duration::from_secs(1));
    loop {
        w.flush_sock_errors()?;
        if w.args.count.is_some_and(|c| w.counters.events >= c) {
            break;
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = stranded_tick.tick(), if !w.stranded.is_empty() || !w.pending_strands.is_empty() => w.follow_stranded()?,
            _ = discovery.tick(), if w.all_netns => w.discover(true).await?,
            batch = events.next_batch() => {
                for ev in batch? { w.on_bpf_event(ev); }
            }
            msg = rx.recv() => {
                let Some((ino, received)) = msg else { break };
                // Evidence is written at syscall entry, before the kernel acts: drain it first.
                for ev in events.drain() { w.on_bpf_event(ev); }
                w.flush_sock_errors()?;
                w.on_netlink(ino, received).await?;
            }
            _ = async { match reconcile.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => {
                w.counters.reconciles += 1;
                for ino in w.spaces.keys().copied().collect::<Vec<_>>() {
                    let n = w.redump(ino, Source::Reconcile).await?;
                    w.counters.reconcile_changes += n;
                }
            }
        }
    }
    for ev in events.drain() {
        w.on_bpf_event(ev);
    }
    w.flush_sock_errors()?;
    match w.probes.counters() {
        Ok(c) => w.counters.bpf = c,
        Err(e) => tracing::warn!("eBPF counters unavailable (ringbuf_drops/link_requests below are not read): {e:#}"),
    }
    if w.args.json {
        for ns in w.spaces.values() {
            let links: Vec<_> = ns.table.links().map(|l| serde_json::json!({"ifindex": l.ifindex, "name": l.name, "flags": l.flags})).collect();
            json_line(&serde_json::json!({"type": "state", "netns": ns.ino, "netns_name": ns.name, "links": links}))?;
        }
        json_line(&serde_json::json!({"type": "counters", "counters": w.counters}))?;
    }
    let c = w.counters;
    eprintln!(
        "counters: netlink_messages={} events={} enobufs={} resyncs={} resync_changes={} reconciles={} reconcile_changes={} ringbuf_drops={} link_requests={} socket_errors={} socket_errors_unmatched={}",
        c.netlink_messages, c.events, c.enobufs, c.resyncs, c.resync_changes, c.reconciles, c.reconcile_changes, c.bpf.ringbuf_drops, c.bpf.link_requests, c.socket_errors, c.socket_errors_unmatched
    );
    Ok(())
}

/// The link as it was before `u` (for deletions: its name and addresses).
fn prior_link(table: &LinkTable, u: &crate::model::link::Update) -> Option<Link> {
    use crate::model::link::Update::*;
    let ifindex = match u {
        NewLink { ifindex, .. } | DelLink { ifindex, .. } | NewAddr { ifindex, .. } | DelAddr { ifindex, .. } => *ifindex,
    };
    table.get(ifindex).cloned()
}

impl Watcher {
    fn on_bpf_event(&mut self, ev: Event) {
        match ev {
            Event::LinkRequest(r) => self.causes.push(r),
            Event::Device(d) => {
                let e = KernelEvidence::from_event(&d);
                while self.kernel_events.front().is_some_and(|o| o.ts_ns + crate::model::event::CAUSE_WINDOW_NS < e.ts_ns) {
                    self.kernel_events.pop_front();
                }
                self.kernel_events.push_back(e);
            }
            Event::SockError(e) => self.pending_sock_errors.push(e),
            _ => {}
        }
    }

    /// Prints the pending socket errors of followed namespaces. Reports from the classic
    /// tracepoint name no socket: one snapshot per followed netns serves the whole batch, and
    /// a report is placed only where exactly one socket matches it.
    fn flush_sock_errors(&mut self) -> Result<()> {
        if self.pending_sock_errors.is_empty() {
            return Ok(());
        }
        let mut snapshots: BTreeMap<NetnsIno, Vec<Socket>> = BTreeMap::new();
        for e in std::mem::take(&mut self.pending_sock_errors) {
            let placed = match e.netns {
                Some(ino) => self.spaces.contains_key(&ino).then_some((ino, None)),
                None => {
                    let mut found: Vec<(NetnsIno, Socket)> = Vec::new();
                    for (ino, ns) in &self.spaces {
                        if !snapshots.contains_key(ino) {
                            let sockets = snapshot::sockets(&mut self.probes, ns.handle.as_ref()).unwrap_or_else(|err| {
                                tracing::warn!("socket snapshot of netns {ino} failed: {err:#}");
                                Vec::new()
                            });
                            snapshots.insert(*ino, sockets);
                        }
                        if let Some(s) = snapshots.get(ino).and_then(|s| e.match_socket(s)) {
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
            let Some(ns) = self.spaces.get(&ino) else { continue };
            let line = SockErrorLine::new(&e, ino, ns.name.clone(), matched.as_ref(), &ns.table);
            if let Some(name) = &self.args.iface {
                let Some(link) = ns.table.links().find(|l| &l.name == name) else { continue };
                let addrs: Vec<IpAddr> = link.addrs.iter().copied().collect();
                if line.bound_dev_if != link.ifindex.0 && !e.local_in(&addrs) {
                    continue;
                }
            }
            self.counters.socket_errors += 1;
            if self.args.json {
                json_line(&line)?;
            } else {
                println!("{}", line.human());
            }
        }
        Ok(())
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

    /// Follows namespaces that appeared and drops those that are gone. `announce`: emit
    /// `netns_added` / `netns_removed` and the links found in a new one (`source: discovery`).
    async fn discover(&mut self, announce: bool) -> Result<()> {
        let present = netns::all();
        let inos: Vec<NetnsIno> = present.iter().map(|h| h.ino).collect();
        let gone: Vec<NetnsIno> = self.spaces.keys().copied().filter(|i| !inos.contains(i)).collect();
        for ino in gone {
            if let Some(ns) = self.spaces.remove(&ino) {
                if announce {
                    self.print_netns("netns_removed", &ns)?;
                }
            }
        }
        for h in present {
            if self.spaces.contains_key(&h.ino) {
                continue;
            }
            let ino = h.ino;
            match open_ns(Some(h), self.args.rcvbuf, self.tx.clone()).await {
                Ok(mut ns) => {
                    if announce {
                        self.print_netns("netns_added", &ns)?;
                        let links: Vec<Link> = ns.table.links().cloned().collect();
                        ns.table = LinkTable::default();
                        let changes = ns.table.diff_and_replace(links);
                        self.spaces.insert(ino, ns);
                        for c in changes {
                            self.emit(ino, c, Source::Discovery, None)?;
                        }
                    } else {
                        self.spaces.insert(ino, ns);
                    }
                }
                // A namespace can vanish between listing and opening.
                Err(e) => tracing::debug!("netns {ino} not followed: {e:#}"),
            }
        }
        Ok(())
    }

    fn print_netns(&self, what: &str, ns: &NsState) -> Result<()> {
        if self.args.json {
            return json_line(&serde_json::json!({"type": what, "ts_unix_ns": unix_ns(), "netns": ns.ino, "netns_name": ns.name}));
        }
        println!("{} {what} {}{}", clock(unix_ns()), ns.ino, ns.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default());
        Ok(())
    }

    async fn on_netlink(&mut self, ino: NetnsIno, received: Result<Received>) -> Result<()> {
        let Some(ns) = self.spaces.get_mut(&ino) else { return Ok(()) };
        ns.batch_sockets = None;
        match received? {
            Received::Updates(updates) => {
                self.counters.netlink_messages += 1;
                for u in updates {
                    let Some(ns) = self.spaces.get_mut(&ino) else { break };
                    let prior = prior_link(&ns.table, &u);
                    let changes = ns.table.apply(u);
                    for c in changes {
                        self.emit(ino, c, Source::Netlink, prior.as_ref())?;
                    }
                }
            }
            Received::Overrun => {
                self.counters.enobufs += 1;
                self.counters.resyncs += 1;
                tracing::warn!("rtnetlink ENOBUFS in netns {ino}: events were lost, re-dumping");
                let n = self.redump(ino, Source::Resync).await?;
                self.counters.resync_changes += n;
            }
        }
        Ok(())
    }

    async fn redump(&mut self, ino: NetnsIno, source: Source) -> Result<u64> {
        let Some(ns) = self.spaces.get_mut(&ino) else { return Ok(0) };
        ns.batch_sockets = None;
        let fresh = netlink::dump_links(&ns.rtnl).await.context("re-dumping links")?;
        let before: Vec<Link> = ns.table.links().cloned().collect();
        let changes = ns.table.diff_and_replace(fresh);
        let n = changes.len() as u64;
        for c in changes {
            let prior = before.iter().find(|l| l.ifindex == c.ifindex).cloned();
            self.emit(ino, c, source, prior.as_ref())?;
        }
        Ok(n)
    }

    fn wanted(&self, c: &Change) -> bool {
        match &self.args.iface {
            None => true,
            Some(name) => &c.name == name || c.old_name.as_ref() == Some(name),
        }
    }

    fn emit(&mut self, ino: NetnsIno, mut change: Change, source: Source, prior: Option<&Link>) -> Result<()> {
        let Some(ns) = self.spaces.get_mut(&ino) else { return Ok(()) };
        if change.kind == ChangeKind::AddressRemoved {
            if let Some(addr) = change.address {
                let now = Instant::now();
                let list = ns.removed_addrs.entry(change.ifindex).or_default();
                list.retain(|(_, at)| now.duration_since(*at) < REMOVED_ADDR_MEMORY);
                list.push((addr, now));
            }
        }
        if matches!(change.kind, ChangeKind::Deleted | ChangeKind::MovedOut) {
            if let Some(link) = prior {
                ns.deleted.push(link.clone());
                if ns.deleted.len() > 1024 {
                    ns.deleted.remove(0);
                }
            }
        }
        let mut from_netns = None;
        let now = Instant::now();
        self.moves.retain(|(_, _, at)| now.duration_since(*at) < MOVE_PAIRING);
        match change.kind {
            ChangeKind::MovedOut => self.moves.push((change.name.clone(), ino, now)),
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
            return Ok(());
        }
        self.counters.events += 1;
        let kernel = self.kernel_evidence(ino, &change);
        let source = if source == Source::Netlink && kernel.is_some() { Source::KernelNetlink } else { source };
        let cause = self.causes.cause_of(&change, ino).or_else(|| {
            kernel.as_ref().map(|k| Cause {
                pid: k.pid,
                tid: k.tid,
                comm: k.comm.clone(),
                request: "none (kernel context)",
                evidence: if k.via == "fentry" { "fentry:device" } else { "kprobe:device" },
            })
        });
        let sockets = if self.args.no_sockets || matches!(change.kind, ChangeKind::AddressAdded | ChangeKind::AddressRemoved) {
            Vec::new()
        } else {
            self.sockets_for(ino, &change, prior)
        };
        let strands = matches!(change.kind, ChangeKind::Down | ChangeKind::Deleted | ChangeKind::MovedOut);
        let netns_name = self.spaces.get(&ino).and_then(|n| n.name.clone());
        let ev = WatchEvent { ty: "change", ts_unix_ns: unix_ns(), source, netns: ino, netns_name, from_netns, change, cause, kernel, sockets };
        if self.args.json {
            json_line(&ev)?;
        } else {
            print_human(&ev);
        }
        if strands && self.recv_tracking {
            self.pending_strands.push(ev.change);
        }
        Ok(())
    }

    fn hung_context(&self) -> hung::Context {
        let mut ctx = hung::Context::default();
        for (ino, ns) in &self.spaces {
            ctx.links.insert(*ino, ns.table.links().cloned().collect());
            ctx.deleted.insert(*ino, ns.deleted.clone());
        }
        ctx
    }

    /// Raises `receiver_stranded` for receivers on the interfaces of pending downs/deletes, and
    /// again for followed ones still blocked `--stranded-after` after their stranding; forgets
    /// those that woke. One receiver scan per call.
    fn follow_stranded(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending_strands);
        // Nothing in a receive at all (no recorded entry, no blocked thread): nothing to scan.
        let blocked = crate::kernel::procfs::blocked_receivers(None);
        if self.stranded.is_empty() && blocked.is_empty() && self.probes.inflight()?.is_empty() {
            return Ok(());
        }
        let ctx = self.hung_context();
        let receivers = hung::collect_from(&mut self.probes, &ctx, Duration::ZERO, None, blocked)?;
        for change in &pending {
            for r in &receivers {
                // The change must agree with what the scan sees now (a down followed by a delete
                // in the same tick strands by the delete).
                let agrees = |state: hung::IfaceState| match change.kind {
                    ChangeKind::Deleted | ChangeKind::MovedOut => state == hung::IfaceState::Deleted,
                    ChangeKind::Down => state == hung::IfaceState::Down,
                    _ => false,
                };
                // And this change's interface must be the one that strands it: a wildcard
                // IP_PKTINFO receiver stranded by a deleted veth is not stranded by its peer's down.
                let pktinfo = r.socket.as_ref().is_some_and(|s| s.pktinfo);
                let hit = r.interfaces.iter().any(|t| t.ifindex == change.ifindex && agrees(t.state) && hung::tie_strands(pktinfo, t));
                if !hit || self.stranded.iter().any(|s| s.tid == r.tid) {
                    continue;
                }
                self.stranded.push(Stranded { tid: r.tid, change: change.clone(), since: Instant::now(), threshold_reported: false });
                self.print_stranded("interface_change", change.clone(), r.clone())?;
            }
        }
        let mut keep = Vec::new();
        for mut s in std::mem::take(&mut self.stranded) {
            let Some(r) = receivers.iter().find(|r| r.tid == s.tid) else { continue };
            if !s.threshold_reported && s.since.elapsed() >= self.args.stranded_after {
                s.threshold_reported = true;
                self.print_stranded("threshold", s.change.clone(), r.clone())?;
            }
            keep.push(s);
        }
        self.stranded = keep;
        Ok(())
    }

    fn print_stranded(&self, phase: &'static str, change: Change, receiver: HungReceiver) -> Result<()> {
        if self.args.json {
            return json_line(&StrandedEvent { ty: "receiver_stranded", phase, ts_unix_ns: unix_ns(), change, receiver });
        }
        println!(
            "{} receiver_stranded ({phase}) {}[{}] tid {} {} fd {}{} blocked {} on {} ({}, {:?})",
            clock(unix_ns()),
            receiver.comm,
            receiver.pid,
            receiver.tid,
            receiver.syscall,
            receiver.fd.map_or("?".into(), |f| f.to_string()),
            if receiver.fd_open { "" } else { " (closed)" },
            receiver.blocked_ns.map_or("?".into(), crate::render::human_ns),
            change.name,
            change.kind.name(),
            receiver.certainty,
        );
        Ok(())
    }

    /// Sockets tied to the changed interface: for a deletion the interface is gone, so its last
    /// known addresses (from `prior` and recent `RTM_DELADDR`s) and its old ifindex (still in
    /// `sk_bound_dev_if`) are used.
    fn sockets_for(&mut self, ino: NetnsIno, change: &Change, prior: Option<&Link>) -> Vec<TiedSocket> {
        let Some(ns) = self.spaces.get_mut(&ino) else { return Vec::new() };
        if ns.batch_sockets.is_none() {
            match snapshot::sockets(&mut self.probes, ns.handle.as_ref()) {
                Ok(s) => ns.batch_sockets = Some(s),
                Err(e) => {
                    tracing::warn!("socket snapshot failed: {e:#}");
                    return Vec::new();
                }
            }
        }
        let sockets = ns.batch_sockets.as_deref().unwrap_or_default();
        let current = ns.table.get(change.ifindex);
        let mut addrs: Vec<IpAddr> = current.or(prior).map(|l| l.addrs.iter().copied().collect()).unwrap_or_default();
        if matches!(change.kind, ChangeKind::Deleted | ChangeKind::MovedOut) {
            let now = Instant::now();
            if let Some(removed) = ns.removed_addrs.remove(&change.ifindex) {
                addrs.extend(removed.into_iter().filter(|(_, at)| now.duration_since(*at) < REMOVED_ADDR_MEMORY).map(|(a, _)| a));
            }
        }
        let links: Vec<Link> = ns.table.links().cloned().collect();
        tie::tied_to(sockets, ino, change.ifindex, &change.name, &addrs, &links)
    }
}

fn print_human(ev: &WatchEvent) {
    let c = &ev.change;
    let mut line = format!("{} {:<15} ifindex {:<4} {}", clock(ev.ts_unix_ns), c.kind.name(), c.ifindex, c.name);
    if let Some(old) = &c.old_name {
        line.push_str(&format!(" (was {old})"));
    }
    if let Some(old) = c.old_ifindex {
        line.push_str(&format!(" (was ifindex {old})"));
    }
    if let Some(a) = c.address {
        line.push_str(&format!(" {a}"));
    }
    if ev.source != Source::Netlink {
        line.push_str(&format!(" [{}]", serde_json::to_value(ev.source).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()));
    }
    if let Some(cause) = &ev.cause {
        line.push_str(&format!(" by {}[{}] {}", cause.comm, cause.pid, cause.request));
    }
    let bound: Vec<&TiedSocket> = ev.sockets.iter().filter(|s| !matches!(s.binding, Some(crate::model::socket::Binding::Wildcard))).collect();
    let wildcard = ev.sockets.len() - bound.len();
    if !ev.sockets.is_empty() {
        line.push_str(&format!("; sockets: {} bound, {} wildcard", bound.len(), wildcard));
    }
    println!("{line}");
    for s in bound {
        println!(
            "    {:?} {:<8} {}:{} inode {} {}",
            s.socket.protocol,
            fmt::binding(s.binding),
            s.socket.local_addr,
            s.socket.local_port,
            s.socket.inode,
            fmt::owners(&s.socket.owners, "no owner")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn report(via: u32, bound_dev_if: u32) -> SockError {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut comm = [0u8; 16];
        comm[..9].copy_from_slice(b"swapper/1");
        SockError::from_event(&ifsock_common::SockErrorEvent {
            kind: ifsock_common::EventKind::SockError as u32, error: 111, ts_ns: 0, sk: 0x1000, ino: 4242,
            netns: 4026532177, bound_dev_if, family: 2, protocol: 17, lport: 40000, rport: 9, laddr: addr, raddr: addr,
            pid: 0, tid: 0, comm, via, _pad: 0,
        })
    }

    #[test]
    fn socket_error_lines_carry_errno_name_endpoints_and_inode() {
        let links = LinkTable::from_links([Link { ifindex: IfIndex(3), name: "veth-a".into(), flags: 0, addrs: BTreeSet::new() }]);
        let line = SockErrorLine::new(&report(ifsock_common::sock_error_via::TP_BTF, 3), NetnsIno(4026532177), Some("demo".into()), None, &links);
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["type"], "socket_error");
        assert_eq!((v["error"].as_str(), v["errno"].as_i64()), (Some("ECONNREFUSED"), Some(111)));
        assert_eq!((v["netns"].as_u64(), v["inode"].as_u64()), (Some(4026532177), Some(4242)));
        assert_eq!((v["local"].as_str(), v["remote"].as_str()), (Some("127.0.0.1:40000"), Some("127.0.0.1:9")));
        assert_eq!((v["bound_dev_if"].as_u64(), v["bound_dev_name"].as_str()), (Some(3), Some("veth-a")));
        assert_eq!((v["via"].as_str(), v["inode_source"].as_str(), v["protocol"].as_str()), (Some("tp_btf"), Some("sk"), Some("udp")));
        assert_eq!(v["task"]["comm"], "swapper/1");
        let human = line.human();
        assert!(
            human.ends_with("socket_error    ECONNREFUSED (errno 111) udp4 127.0.0.1:40000 -> 127.0.0.1:9 inode 4242 dev 3 veth-a netns 4026532177; current task swapper/1[0]"),
            "{human}"
        );
    }

    #[test]
    fn classic_reports_take_inode_and_device_from_the_matched_socket() {
        let e = report(ifsock_common::sock_error_via::TRACEPOINT, 0);
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let s = Socket::from_record(&ifsock_common::SockRecord {
            sk: 1, cookie: 1, ino: 99, netns: 7, uid: 0, bound_dev_if: 5, family: 2, protocol: 17, state: 1, lport: 40000, rport: 9,
            flags: 0, laddr: addr, raddr: addr, rx_queue: 0, drops: 0,
        });
        let line = SockErrorLine::new(&e, NetnsIno(7), None, Some(&s), &LinkTable::default());
        assert_eq!((line.inode, line.inode_source, line.bound_dev_if), (Some(SockInode(99)), Some(InodeSource::Snapshot), 5));
        assert!(line.human().contains("inode 99 (matched by address) dev 5 ?"), "{}", line.human());
    }
}
