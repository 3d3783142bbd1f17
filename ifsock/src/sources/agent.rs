//! The agent's event source (for `views/agent.rs`): the `watch --all-netns` pipeline (`engine::watch::WatchEngine` fed
//! by `sources/follow.rs`, the same follower code as `watch`), with what only a recorder
//! needs on top: every [`WatchRecord`] is journaled, records become metric inputs, and socket
//! snapshots (taken by the caller at most once per `SNAPSHOT_GAP` per changed netns, and at
//! reconcile) set the gauges and journal socket health changes judged by `model::stranded`
//! through `engine::health::HealthTracker`.
//!
//! Start-up race (seed 004): `follow::open_ns` subscribes before it dumps. Loss (seed 002):
//! `ENOBUFS` is counted (`Lost(NetlinkEnobufs, 1)`, `Resync`) and answered by a re-dump handed
//! to the engine as `Source::Resync`.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;

use crate::{
    engine::{
        health::HealthTracker,
        metrics::{Input, LostSource},
        snapshot::{self, Attributed, SocketHealthLine},
        watch::{Removal, Source, WatchEngine, WatchRecord},
    },
    kernel::{
        cgroup,
        netlink::{self, Received},
        netns::{self, NetnsHandle},
        procfs,
        waiters::WaiterIndex,
    },
    model::{
        ids::{NetnsIno, SockInode},
        link::{Change, ChangeKind},
        stranded::{SeenDeletion, SocketHealthEvent},
    },
    probes::Probes,
    sources::follow::{self, NetlinkMsg, NsIo, Snapshots},
};

/// Receive buffer of each netns's rtnetlink subscription, bytes. A recorder must keep up with
/// a burst of 1,000 changes (about 1 KiB each) without `ENOBUFS`; the kernel default
/// (`net.core.rmem_default`, ~208 KiB) overflows under one. Set with SO_RCVBUFFORCE when above
/// `net.core.rmem_max`; memory is only used while messages are queued.
const RCVBUF: usize = 8 << 20;

/// Longest wait of a snapshot for the changes that explain its dump (see [`Pipeline::snapshot`]):
/// notifications queued with the change arrive within milliseconds; this bound only keeps a
/// difference no notification resolves from stopping the gauges.
const CATCH_UP_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// What the pipeline hands the agent: journal lines and metric inputs, in order.
// A record is moved once from the engine into the journal writer; boxing it would add an
// allocation per record for no saving (the values live only until the batch is written).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Out {
    /// A record of the watch engine, journaled as `watch --json` prints it.
    Record(WatchRecord),
    /// A socket health change found at a snapshot.
    Health(Box<SocketHealthLine>),
    /// A metric input.
    Metric(Input),
}

/// Every followed netns: the watch engine, its per-netns I/O, and the health of their sockets.
pub struct Pipeline {
    engine: WatchEngine,
    spaces: BTreeMap<NetnsIno, NsIo>,
    health: HealthTracker,
    /// Namespaces changed since their last snapshot.
    dirty: BTreeSet<NetnsIno>,
    /// Changes that could cure a stranded socket (created, recreated, up, moved in, address
    /// added) per netns since its last snapshot: the snapshot says which sockets they did not.
    cures: BTreeMap<NetnsIno, Vec<Change>>,
    /// The label each netns was added with (the engine keeps its own copy for its records).
    labels: BTreeMap<NetnsIno, Option<String>>,
    tx: mpsc::UnboundedSender<NetlinkMsg>,
    /// Namespaces whose snapshot waits for the journal to catch up with their dump, since when.
    lagging: BTreeMap<NetnsIno, std::time::Instant>,
    /// Why the blocked-receiver gauge last came from the `/proc` pass (warned once per reason).
    gauge_fallback: Option<String>,
}

/// The netns label: its name under /run/netns, else `container:<id12>` of a task in it.
fn label_of(name: Option<String>, h: Option<&NetnsHandle>) -> Option<String> {
    if name.is_some() {
        return name;
    }
    let pid = h?.path.to_str()?.strip_prefix("/proc/")?.split('/').next()?.parse().ok()?;
    cgroup::of_pid(pid).container_id.map(|id| format!("container:{}", id.get(..12).unwrap_or(&id)))
}

fn attributed(mut pids: Vec<u32>) -> Vec<Attributed> {
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter().map(|pid| Attributed { pid, attribution: cgroup::of_pid(pid) }).collect()
}

impl Pipeline {
    /// A pipeline over `engine` whose subscription readers send to `tx`.
    pub fn new(engine: WatchEngine, tx: mpsc::UnboundedSender<NetlinkMsg>) -> Self {
        Pipeline { engine, spaces: BTreeMap::new(), health: HealthTracker::new(), dirty: BTreeSet::new(), cures: BTreeMap::new(), labels: BTreeMap::new(), tx, lagging: BTreeMap::new(), gauge_fallback: None }
    }

    /// How many namespaces are followed.
    pub fn followed(&self) -> usize {
        self.spaces.len()
    }

    /// The engine (for the receiver scan of `--receivers`).
    pub fn engine(&mut self) -> &mut WatchEngine {
        &mut self.engine
    }

    /// Turns engine records into journal lines and metric inputs; notes deletions for health.
    fn take(&mut self, records: Vec<WatchRecord>, out: &mut Vec<Out>) {
        for r in records {
            match &r {
                WatchRecord::Change(ev) => {
                    out.push(Out::Metric(Input::LinkEvent(ev.change.kind)));
                    if matches!(ev.change.kind, ChangeKind::Created | ChangeKind::Recreated | ChangeKind::Up | ChangeKind::MovedIn | ChangeKind::AddressAdded) {
                        self.cures.entry(ev.netns).or_default().push(ev.change.clone());
                    }
                    // Names the deleted ifindex for sockets still bound to it (model::stranded).
                    if ev.change.kind == ChangeKind::Deleted {
                        self.health.saw_deletion(SeenDeletion {
                            netns: ev.netns,
                            ifindex: ev.change.ifindex,
                            name: ev.change.name.clone(),
                            at_unix_ns: ev.ts_unix_ns,
                        });
                    }
                    self.dirty.insert(ev.netns);
                }
                WatchRecord::NetnsRemoved(n) => {
                    out.push(Out::Metric(Input::NetnsGone(n.netns)));
                    self.health.forget_netns(n.netns);
                    self.cures.remove(&n.netns);
                    self.dirty.remove(&n.netns);
                    self.lagging.remove(&n.netns);
                }
                WatchRecord::NetnsAdded(n) => {
                    self.dirty.insert(n.netns);
                }
                _ => {}
            }
            out.push(Out::Record(r));
        }
    }

    /// Follows namespaces that appeared (named ones under /run/netns and those of running
    /// processes) and drops those that are gone. Called at start (`announce: false`: no
    /// `netns_added` for what was there before), on every mount-table change and at reconcile.
    /// A named netns that cannot be opened yet (`ip netns add` creates the file before it
    /// bind-mounts the namespace on it) is picked up at the mount that follows.
    pub async fn discover(&mut self, probes: &mut Probes, announce: bool, out: &mut Vec<Out>) {
        let present = netns::all();
        let gone: Vec<NetnsIno> = self.engine.netns().into_iter().filter(|i| !present.iter().any(|h| h.ino == *i)).collect();
        for ino in gone {
            // Unreachable by name and by process: only our handle and sockets keep it.
            let removal = Removal { still_exists: true, held_by_ifsock: true, other_holders: Vec::new() };
            self.remove(ino, removal, out);
        }
        for h in present {
            if self.engine.follows(h.ino) {
                continue;
            }
            match follow::open_ns(Some(h), Some(RCVBUF), self.tx.clone()).await {
                Ok((ino, name, io, dump, _)) => {
                    let label = label_of(name, io.handle.as_ref());
                    self.spaces.insert(ino, io);
                    self.labels.insert(ino, label.clone());
                    let records = self.engine.add_netns(ino, label, dump, announce, &follow::now(), &mut Snapshots { probes, spaces: &self.spaces });
                    self.dirty.insert(ino);
                    self.take(records, out);
                }
                Err(e) => tracing::debug!("netns not followed (yet): {e:#}"),
            }
        }
    }

    fn remove(&mut self, ino: NetnsIno, removal: Removal, out: &mut Vec<Out>) {
        let records = self.engine.remove_netns(ino, removal, &follow::now());
        self.spaces.remove(&ino);
        self.labels.remove(&ino);
        self.dirty.remove(&ino);
        self.lagging.remove(&ino);
        self.take(records, out);
        // remove_netns reports nothing for a netns it did not follow; the gauges go anyway.
        out.push(Out::Metric(Input::NetnsGone(ino)));
    }

    /// Ring-buffer events (socket errors) for the engine, then the socket errors it can report.
    pub fn on_kernel(&mut self, events: Vec<crate::probes::events::Event>, probes: &mut Probes, out: &mut Vec<Out>) {
        events.into_iter().filter_map(follow::kernel_input).for_each(|i| self.engine.on_kernel(i));
        let records = self.engine.flush_sock_errors(&follow::now(), &mut Snapshots { probes, spaces: &self.spaces });
        self.take(records, out);
    }

    /// Applies one subscription message. A namespace whose reader failed (it was destroyed) is
    /// dropped.
    pub async fn on_netlink(&mut self, ino: NetnsIno, received: Result<Received>, probes: &mut Probes, out: &mut Vec<Out>) {
        if !self.engine.follows(ino) {
            return;
        }
        match received {
            Ok(Received::Updates(updates)) => {
                let records = self.engine.on_updates(ino, updates, &follow::now(), &mut Snapshots { probes, spaces: &self.spaces });
                self.take(records, out);
            }
            Ok(Received::Overrun) => {
                tracing::warn!("rtnetlink ENOBUFS in netns {ino}: events were lost, re-dumping");
                self.engine.on_overrun(ino);
                out.push(Out::Metric(Input::Lost(LostSource::NetlinkEnobufs, 1)));
                out.push(Out::Metric(Input::Resync));
                self.redump(ino, Source::Resync, probes, out).await;
            }
            Err(e) => {
                tracing::debug!("netns {ino}: subscription ended: {e:#}");
                self.remove(ino, Removal { still_exists: false, held_by_ifsock: false, other_holders: Vec::new() }, out);
            }
        }
    }

    async fn redump(&mut self, ino: NetnsIno, source: Source, probes: &mut Probes, out: &mut Vec<Out>) {
        let Some(io) = self.spaces.get(&ino) else { return };
        match netlink::dump(&io.rtnl).await {
            Ok(dump) => {
                let records = self.engine.on_dump(ino, dump, source, &follow::now(), &mut Snapshots { probes, spaces: &self.spaces });
                self.take(records, out);
            }
            Err(e) => {
                tracing::debug!("netns {ino}: re-dump failed, dropping it: {e:#}");
                self.remove(ino, Removal { still_exists: false, held_by_ifsock: false, other_holders: Vec::new() }, out);
            }
        }
    }

    /// The periodic reconcile: re-dumps every netns and marks all of them for a snapshot.
    pub async fn reconcile(&mut self, probes: &mut Probes, out: &mut Vec<Out>) {
        self.engine.on_reconcile();
        out.push(Out::Metric(Input::Reconcile));
        for ino in self.engine.netns() {
            self.redump(ino, Source::Reconcile, probes, out).await;
            if self.engine.follows(ino) {
                self.dirty.insert(ino);
            }
        }
    }

    /// Whether a netns changed since the last [`Pipeline::snapshot`].
    pub fn dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// One socket snapshot per netns changed since the last call (BPF socket iterator, a link
    /// and address dump, and the receivers on its sockets' wait queues): gauges for the metrics, and
    /// `socket_stranded` / `socket_recovered` lines for sockets whose health changed. A netns
    /// whose dump is ahead of the changes taken stays dirty and is judged at a later call, so
    /// that a health line is never journaled before the `change` lines that explain it.
    pub async fn snapshot(&mut self, probes: &mut Probes, out: &mut Vec<Out>) {
        if self.dirty.is_empty() {
            return;
        }
        // The full waiter index of every followed netns (for the journal line's waiters and
        // their cgroups) is built only when a socket's health changed; the gauge walks the
        // wait queues of each netns judged (`receivers_of`).
        let mut fallback: Option<Vec<SockInode>> = None;
        let mut waiters: Option<WaiterIndex> = None;
        let now = follow::now();
        for ino in std::mem::take(&mut self.dirty) {
            let Some(io) = self.spaces.get(&ino) else { continue };
            let dump = match netlink::dump(&io.rtnl).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("netns {ino}: link dump for the socket snapshot failed, gauges keep their last values: {e:#}");
                    continue;
                }
            };
            // Judged only once the journal holds the changes that explain this dump (see
            // `snapshot::caught_up`); their notifications are queued already and arrive with
            // the next batch, which retakes the snapshot. Bounded: a difference no notification
            // resolves (one this engine does not follow) is judged after `CATCH_UP_BOUND`.
            let taken = self.engine.links_of(ino).map(|l| snapshot::caught_up(l, &dump)).unwrap_or(true);
            if !taken {
                let since = *self.lagging.entry(ino).or_insert_with(std::time::Instant::now);
                if since.elapsed() < CATCH_UP_BOUND {
                    self.dirty.insert(ino);
                    continue;
                }
                tracing::debug!("netns {ino}: the link dump still differs from the changes taken after {CATCH_UP_BOUND:?}; judging it");
            }
            self.lagging.remove(&ino);
            let sockets = match crate::probes::snapshot::sockets(probes, io.handle.as_ref()).with_context(|| format!("socket snapshot of netns {ino}")) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("{e:#}; gauges keep their last values");
                    continue;
                }
            };
            let label = self.labels.get(&ino).cloned().flatten();
            let cures = self.cures.remove(&ino).unwrap_or_default();
            let receiving = receivers_of(probes, io.handle.as_ref(), &sockets, &mut fallback, &mut self.gauge_fallback);
            let (snap, changed) = snapshot::judge_after(&mut self.health, ino, label.as_deref(), &sockets, &dump, &receiving, now.unix_ns, &cures);
            for c in changed {
                let spaces = &self.spaces;
                let report = waiters.get_or_insert_with(|| super::waiters::index(&mut *probes, spaces.values().map(|io| io.handle.as_ref()))).report(c.tied, c.now);
                let owner_cgroups = attributed(report.tied.socket.owners.iter().map(|o| o.pid).collect());
                let waiter_cgroups = attributed(report.waiters.iter().map(|w| w.pid).collect());
                let mut event = SocketHealthEvent::new(&c.by, report, now.unix_ns, label.clone(), c.cause.map(str::to_string));
                if c.ty == "socket_still_stranded" {
                    event.verdict = crate::model::stranded::verdict(&event.socket);
                }
                out.push(Out::Health(Box::new(SocketHealthLine { ty: c.ty, event, owner_cgroups, waiter_cgroups })));
            }
            out.push(Out::Metric(Input::Snapshot(ino, snap)));
        }
    }
}

/// The blocked-receiver gauge's receivers in `netns` (`None`: the agent's own): one entry per
/// receiver, the inode of the socket it waits on. They come from the wait queues of `sockets`
/// (the waiter walk, as `hung`'s: [`super::receivers::receivers_on`]), which finds other
/// users' threads without `CAP_SYS_PTRACE`. Where the walk cannot run (`kernel.kptr_restrict`
/// hides kallsyms addresses, the verifier refused its programs,
/// `IFSOCK_WAITER_SOURCE=proc`), one `/proc` pass per snapshot (`fallback`, shared by its
/// namespaces) stands in: `/proc/PID/task/TID/syscall` and `fd/N`, which for another user's
/// thread need `CAP_SYS_PTRACE` (`ptrace_may_access()`); without it those are not counted. The
/// fallback's reason is warned once per reason (`warned`).
fn receivers_of(probes: &mut Probes, netns: Option<&NetnsHandle>, sockets: &[crate::model::socket::Socket], fallback: &mut Option<Vec<SockInode>>, warned: &mut Option<String>) -> Vec<SockInode> {
    match super::waiters::walk_only(probes, [netns]) {
        Ok(index) => {
            *warned = None;
            sockets.iter().flat_map(|s| super::receivers::receivers_on(&index, s).map(|_| s.inode)).collect()
        }
        Err(reason) => {
            if warned.as_deref() != Some(reason.as_str()) {
                tracing::warn!("blocked-receiver gauge from /proc (fallback; other users' threads need CAP_SYS_PTRACE): {reason}");
                *warned = Some(reason);
            }
            fallback.get_or_insert_with(|| procfs::blocked_receivers(None).into_iter().filter_map(|b| b.fd_socket).collect()).clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::watch::{ChangeEvent, Config, NetnsRemovedRecord},
        model::ids::IfIndex,
    };

    fn pipeline() -> Pipeline {
        let (tx, _rx) = mpsc::unbounded_channel();
        Pipeline::new(WatchEngine::new(Config { iface: None, sockets: false, recv_tracking: false, stranded_after: std::time::Duration::from_secs(5), sockets_after: false }), tx)
    }

    fn change(kind: ChangeKind, name: &str) -> WatchRecord {
        WatchRecord::Change(ChangeEvent {
            ts_unix_ns: 7,
            source: Source::Netlink,
            netns: NetnsIno(9),
            netns_name: Some("blue".into()),
            from_netns: None,
            change: Change { kind, ifindex: IfIndex(4), name: name.into(), old_name: None, old_ifindex: None, address: None },
            cause: None,
            kernel: None,
            sockets: Vec::new(),
            sockets_follow: false,
        })
    }

    #[test]
    fn every_record_is_journaled_and_changes_count_and_mark_a_snapshot() {
        let mut p = pipeline();
        let mut out = Vec::new();
        p.take(vec![change(ChangeKind::Deleted, "veth0")], &mut out);
        assert!(matches!(out[0], Out::Metric(Input::LinkEvent(ChangeKind::Deleted))), "{out:?}");
        assert!(matches!(&out[1], Out::Record(WatchRecord::Change(_))), "{out:?}");
        assert!(p.dirty(), "a change asks for a snapshot");
        assert_eq!(p.health.deletions().len(), 1, "a deletion names the deleted ifindex");
        assert_eq!(p.health.deletions()[0].name, "veth0");
        assert_eq!(p.health.deletions()[0].at_unix_ns, 7);
        p.take(vec![change(ChangeKind::Recreated, "veth0")], &mut out);
        assert_eq!(p.health.deletions().len(), 1, "the old ifindex stays named after a recreate");
    }

    #[test]
    fn a_removed_netns_drops_its_gauges_and_its_pending_snapshot() {
        let mut p = pipeline();
        let mut out = Vec::new();
        p.take(vec![change(ChangeKind::Up, "veth0")], &mut out);
        out.clear();
        let removed = NetnsRemovedRecord { ts_unix_ns: 8, netns: NetnsIno(9), netns_name: None, still_exists: false, held_by_ifsock: false, other_holders: Vec::new(), links: 0 };
        p.take(vec![WatchRecord::NetnsRemoved(removed)], &mut out);
        assert!(matches!(out[0], Out::Metric(Input::NetnsGone(NetnsIno(9)))), "{out:?}");
        assert!(matches!(&out[1], Out::Record(WatchRecord::NetnsRemoved(_))), "{out:?}");
        assert!(!p.dirty());
    }

    #[test]
    fn container_label_only_without_a_name() {
        assert_eq!(label_of(Some("blue".into()), None).as_deref(), Some("blue"));
        assert_eq!(label_of(None, None), None);
    }

    #[test]
    fn attributed_lists_each_pid_once() {
        let a = attributed(vec![3, 1, 3, 1]);
        assert_eq!(a.iter().map(|a| a.pid).collect::<Vec<_>>(), vec![1, 3]);
    }
}
