//! What the engine judges about sockets and receivers after changes: socket health
//! (`socket_stranded` / `socket_recovered`, two steps so that the waiter pass is paid only when
//! some socket changed), socket-error placement, and stranded receivers (`receiver_stranded`).
use std::{
    collections::BTreeMap,
    net::IpAddr,
};

use super::{
    receivers, HealthReady, Now, SockErrorLine, SocketSource, Stranded, StrandedEvent, WaiterLookup, WatchEngine,
    WatchRecord,
};
use crate::model::{
    ids::{IfIndex, NetnsIno},
    link::{AddrTable, Change, ChangeKind, Link},
    receiver::{tie_strands, HungReceiver, IfaceState},
    socket::Socket,
    stranded::{verdict, SeenDeletion, SocketHealthEvent, SocketReport, StrandReason, Stranded as SocketStranded},
    tie,
};
use crate::engine::health::HealthChange;

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
            StrandReason::DeviceDeleted => matches!(c.kind, ChangeKind::Deleted | ChangeKind::MovedOut) && same_if,
            StrandReason::AddressGone => (c.kind == ChangeKind::AddressRemoved && same_addr) || (matches!(c.kind, ChangeKind::Deleted | ChangeKind::MovedOut | ChangeKind::Down) && same_if),
        }
    };
    pending.iter().rev().map(|(c, _)| c).find(|c| fits(c))
}

/// A receiver scan in progress ([`WatchEngine::begin_receiver_scan`]): how many of the pending
/// downs/deletes it covers (the oldest ones, in arrival order).
#[derive(Debug, Clone, Copy)]
pub struct ReceiverScan {
    covers: usize,
}
impl WatchEngine {
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
            // A recreated interface's old ifindex: sockets still bound to it are judged (and
            // reported still stranded) too.
            for i in std::iter::once(c.ifindex).chain(c.old_ifindex) {
                if !ifindexes.contains(&i) {
                    ifindexes.push(i);
                }
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
            if c.kind == ChangeKind::Deleted {
                self.health.saw_deletion(SeenDeletion { netns, ifindex: c.ifindex, name: c.name.clone(), at_unix_ns: *at });
            }
        }
        let changes = self.health.update(netns, sockets, &links, &addrs_now, now.unix_ns);
        let before_ready = self.health_ready.len();
        let cures: Vec<&Change> = pending.iter().map(|(c, _)| c).filter(|c| self.config.iface.as_ref().is_none_or(|n| *n == c.name)).collect();
        let still = self.health.still_stranded(netns, &cures, &changes, sockets, &links, &addrs_now);

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
            self.health_ready.push(HealthReady { netns, change, still: false, cause, links: links.clone() });
        }
        for (socket, stranded, cause) in still {
            self.health_ready.push(HealthReady { netns, change: HealthChange::Stranded { socket, stranded }, still: true, cause: Some(cause.to_string()), links: links.clone() });
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
            let mut event = SocketHealthEvent::new(&by, report, now.unix_ns, name, r.cause);
            out.push(if recovered {
                WatchRecord::SocketRecovered(event)
            } else if r.still {
                event.verdict = verdict(&event.socket);
                WatchRecord::SocketStillStranded(event)
            } else {
                WatchRecord::SocketStranded(event)
            });
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
        let covered: Vec<(NetnsIno, Change)> = self.pending_strands.drain(..scan.covers.min(self.pending_strands.len())).collect();
        for (ino, change) in covered {
            // ifindexes repeat across namespaces: only a receiver on a socket of the change's
            // netns can be stranded by it.
            for r in receivers.iter().filter(|r| r.netns == ino) {
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
}
