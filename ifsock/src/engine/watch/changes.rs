//! Link changes: live updates and re-dumps applied to the link tables, each change classified,
//! paired (moves between namespaces), attributed to its cause (a request, the veth peer's
//! request, a kernel device probe), and given the sockets tied to it (one filtered walk per
//! burst where it covers them).
use std::{net::IpAddr, sync::Arc};

use anyhow::Result;

use super::{
    remember_gone, update_ifindex, AlsoChange, ChangeEvent, ChangeSocketsEvent, KernelEvidence, Now, SocketSource, Source, Space,
    WatchEngine, WatchRecord, FILTERED_PER_BURST, MAX_BURST, MOVE_PAIRING, REMOVED_ADDR_MEMORY,
};
use crate::model::{
    event::Cause,
    ids::{IfIndex, NetnsIno},
    link::{Change, ChangeKind, Dump, Link, Update},
    socket::Socket,
    tie::{self, TiedSocket},
};

/// Whether a change can strand or recover a socket.
fn moves_health(kind: ChangeKind) -> bool {
    matches!(
        kind,
        ChangeKind::Created | ChangeKind::Deleted | ChangeKind::Recreated | ChangeKind::MovedOut | ChangeKind::MovedIn | ChangeKind::Up | ChangeKind::Down | ChangeKind::AddressAdded | ChangeKind::AddressRemoved
    )
}

impl WatchEngine {
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
    pub(super) fn emit(&mut self, ino: NetnsIno, mut change: Change, source: Source, prior: Option<&Link>, now: &Now, src: &mut dyn SocketSource, out: &mut Vec<WatchRecord>) {
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
            self.pending_strands.push((ino, change.clone()));
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
    pub(super) fn burst_sockets(space: &mut Space, ino: NetnsIno, ifindexes: &[IfIndex], addrs: &[IpAddr], src: &mut dyn SocketSource) -> Result<Option<Arc<Vec<Socket>>>> {
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
            // The same interface's earlier change of this burst listed the same sockets: name
            // this change there instead of repeating the list.
            let same = |a: &[crate::model::tie::TiedSocket], b: &[crate::model::tie::TiedSocket]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.socket.sk == y.socket.sk && x.socket.inode == y.socket.inode && x.binding == y.binding)
            };
            if let Some(WatchRecord::ChangeSockets(prev)) = out.last_mut() {
                if prev.netns == ino && prev.ifindex == change.ifindex && same(&prev.sockets, &sockets) {
                    prev.also.push(AlsoChange { event: change.kind.name(), change_ts_unix_ns: change_ts });
                    continue;
                }
            }
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
                also: Vec::new(),
            }));
        }
        out
    }
}
