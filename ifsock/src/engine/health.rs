//! Socket health over time: which sockets a change stranded and which recovered.
//!
//! No I/O: the caller feeds each netns's fresh sockets, links and address details after a change
//! (and the deletions it saw), with a clock value; [`HealthTracker::update`] returns one
//! [`HealthChange`] per socket whose health changed, so `watch` can emit `socket_stranded` /
//! `socket_recovered` in the same tick as the change. Sockets that were already stranded when
//! tracking began are recorded by [`HealthTracker::prime`] without a change.
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::model::{
    ids::{IfIndex, NetnsIno, SockInode},
    link::{AddrTable, Change, ChangeKind, Link},
    socket::Socket,
    stranded::{health, SeenDeletion, SocketReport, StrandReason, Stranded, Via, Waiter},
};

/// A socket's identity across snapshots: its netns, inode and kernel address (an inode alone
/// is 0 for sockets without a `struct socket`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key(NetnsIno, SockInode, u64);

fn key(s: &Socket) -> Key {
    Key(s.netns, s.inode, s.sk)
}

/// A health transition of one socket.
#[derive(Clone, Debug)]
pub enum HealthChange {
    /// Healthy (or stranded for another reason) before, stranded now.
    Stranded {
        /// The socket as in the fresh snapshot.
        socket: Socket,
        /// Why, with `since_unix_ns` set to the clock value of the update.
        stranded: Stranded,
    },
    /// Stranded before, healthy now.
    Recovered {
        /// The socket as in the fresh snapshot.
        socket: Socket,
        /// What it was stranded by.
        was: Stranded,
    },
}

/// How many deleted ifindexes a tracker remembers the names of (oldest forgotten first); a
/// socket bound to a deletion older than that shows its ifindex without a name.
pub const MAX_DELETIONS: usize = 4096;

/// Last known health per socket and the deletions seen per netns.
#[derive(Clone, Debug, Default)]
pub struct HealthTracker {
    stranded: HashMap<Key, Stranded>,
    deletions: Vec<SeenDeletion>,
    /// Last interface seen holding each address, to name it in `address_gone` once it is gone.
    holders: HashMap<(NetnsIno, std::net::IpAddr), (IfIndex, String)>,
    /// The name of each interface in the links last seen per netns (bounded by them).
    names: HashMap<(NetnsIno, IfIndex), String>,
    /// Sockets already given a still-stranded verdict for their current stranding: said once,
    /// not after each later change of the same interface.
    verdicts: HashSet<(Key, StrandReason)>,
}

impl HealthTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a deletion a watcher saw (`RTM_DELLINK`, not a move): it names the deleted
    /// ifindex for sockets still bound to it (`device_deleted`), from the next
    /// [`update`](Self::update). It strands nothing by itself. The newest
    /// [`MAX_DELETIONS`] are kept (a container host deletes veths all day).
    pub fn saw_deletion(&mut self, deletion: SeenDeletion) {
        self.deletions.retain(|d| !(d.netns == deletion.netns && d.ifindex == deletion.ifindex));
        if self.deletions.len() >= MAX_DELETIONS {
            self.deletions.remove(0);
        }
        self.deletions.push(deletion);
    }

    /// Forgets the deletions of `netns` (the namespace is gone).
    pub fn forget_netns(&mut self, netns: NetnsIno) {
        self.deletions.retain(|d| d.netns != netns);
    }

    /// Deletions currently remembered (for the caller's own display).
    pub fn deletions(&self) -> &[SeenDeletion] {
        &self.deletions
    }

    /// The current health of one socket given the netns's `links` and `addrs`, with the
    /// deletions this tracker saw (what `sockets` would show while a watcher runs).
    pub fn assess(&self, socket: &Socket, links: &[Link], addrs: &AddrTable) -> Option<Stranded> {
        let mut h = health(socket, links, addrs, &self.deletions)?;
        let prev = self.stranded.get(&key(socket)).filter(|p| p.reason == h.reason);
        if let Some(prev) = prev {
            h.since_unix_ns = prev.since_unix_ns;
        }
        // A deleted device whose deletion record has not reached us yet (the dump that shows
        // it gone can be newer than the events processed): its name from the last links seen,
        // or from the judgement before.
        if h.reason == StrandReason::DeviceDeleted && h.ifname.is_none() {
            let name = prev.and_then(|p| p.ifname.clone()).or_else(|| h.ifindex.and_then(|i| self.names.get(&(socket.netns, i)).cloned()));
            if let Some(n) = name {
                h.now_ifindex = links.iter().find(|l| l.name == n).map(|l| l.ifindex);
                h.ifname = Some(n);
            }
        }
        if h.reason == StrandReason::AddressGone && h.ifindex.is_none() {
            if let Some((i, n)) = h.address.and_then(|a| self.holders.get(&(socket.netns, a))) {
                h.ifindex = Some(*i);
                h.ifname = Some(n.clone());
            }
        }
        Some(h)
    }

    fn remember_holders(&mut self, netns: NetnsIno, links: &[Link]) {
        self.names.retain(|k, _| k.0 != netns || links.iter().any(|l| l.ifindex == k.1));
        for l in links {
            self.names.insert((netns, l.ifindex), l.name.clone());
        }
        for l in links {
            for a in &l.addrs {
                self.holders.insert((netns, *a), (l.ifindex, l.name.clone()));
            }
        }
    }

    /// Records the health of `sockets` (of `netns`) as the starting point without reporting
    /// changes; sockets stranded already get `since_unix_ns: None` (stranded before we looked).
    pub fn prime(&mut self, netns: NetnsIno, sockets: &[Socket], links: &[Link], addrs: &AddrTable) {
        self.remember_holders(netns, links);
        self.stranded.retain(|k, _| k.0 != netns);
        for s in sockets.iter().filter(|s| s.netns == netns) {
            if let Some(h) = health(s, links, addrs, &self.deletions) {
                self.stranded.insert(key(s), h);
            }
        }
    }

    /// Compares the fresh state of `netns` with the last one and returns what changed: one
    /// [`HealthChange::Stranded`] per socket newly stranded (or stranded for a new reason), one
    /// [`HealthChange::Recovered`] per socket healthy again. `now_unix_ns` becomes the
    /// `since_unix_ns` of new strandings. Sockets that disappeared (closed) are forgotten
    /// without a change; sockets of other netns are untouched.
    pub fn update(&mut self, netns: NetnsIno, sockets: &[Socket], links: &[Link], addrs: &AddrTable, now_unix_ns: u64) -> Vec<HealthChange> {
        let mut out = Vec::new();
        let mut fresh: HashMap<Key, Stranded> = HashMap::new();
        for s in sockets.iter().filter(|s| s.netns == netns) {
            let k = key(s);
            let before = self.stranded.get(&k);
            match self.assess(s, links, addrs) {
                Some(mut h) => {
                    if before.is_none_or(|b| b.reason != h.reason) {
                        h.since_unix_ns = Some(now_unix_ns);
                        out.push(HealthChange::Stranded { socket: s.clone(), stranded: h.clone() });
                    }
                    fresh.insert(k, h);
                }
                None => {
                    if let Some(was) = before {
                        out.push(HealthChange::Recovered { socket: s.clone(), was: was.clone() });
                    }
                }
            }
        }
        self.stranded.retain(|k, _| k.0 != netns);
        self.stranded.extend(fresh);
        self.remember_holders(netns, links);
        for c in &out {
            let (HealthChange::Stranded { socket, .. } | HealthChange::Recovered { socket, .. }) = c;
            let k = key(socket);
            self.verdicts.retain(|(v, _)| *v != k);
        }
        out
    }

    /// After [`update`](Self::update): the sockets of `netns` a cure-like change among
    /// `changes_seen` (created, recreated, up, moved in, address added) was about (bound to its
    /// ifindex or the ifindex it replaced, its name, or its address) and that are still stranded
    /// after it, each with that change's kind; once per socket and stranding. Sockets whose
    /// health just changed (`changes`, the result of `update`) are left out: they have their
    /// record.
    pub fn still_stranded(&mut self, netns: NetnsIno, changes_seen: &[&Change], changes: &[HealthChange], sockets: &[Socket], links: &[Link], addrs: &AddrTable) -> Vec<(Socket, Stranded, &'static str)> {
        let cures: Vec<&Change> = changes_seen
            .iter()
            .copied()
            .filter(|c| matches!(c.kind, ChangeKind::Created | ChangeKind::Recreated | ChangeKind::Up | ChangeKind::MovedIn | ChangeKind::AddressAdded))
            .collect();
        if cures.is_empty() {
            return Vec::new();
        }
        let changed: HashSet<Key> = changes.iter().map(|h| match h {
            HealthChange::Stranded { socket, .. } | HealthChange::Recovered { socket, .. } => key(socket),
        }).collect();
        let mut out = Vec::new();
        for s in sockets.iter().filter(|s| s.netns == netns && !changed.contains(&key(s))) {
            let Some(st) = self.assess(s, links, addrs) else { continue };
            let by_index = |c: &&&Change| st.ifindex == Some(c.ifindex) || (c.old_ifindex.is_some() && st.ifindex == c.old_ifindex);
            let by_name = |c: &&&Change| c.address.is_none() && st.ifname.as_deref() == Some(c.name.as_str());
            let by_addr = |c: &&&Change| st.address.is_some() && st.address == c.address;
            // The link change (by ifindex, then name) over an address change of the same interface.
            let about = cures.iter().rev().find(by_index).or_else(|| cures.iter().rev().find(by_name)).or_else(|| cures.iter().rev().find(by_addr));
            if let Some(c) = about {
                if self.verdicts.insert((key(s), st.reason)) {
                    out.push((s.clone(), st, c.kind.name()));
                }
            }
        }
        out
    }
}

/// A thread whose wait includes a stranded socket without being a receive call on it: an event
/// loop (epoll, poll, select, or an unresolved wait) that will never be woken by that socket.
/// `hung` lists these apart from receivers blocked in a receive syscall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventLoopWaiter {
    /// The waiting thread (`via` says how it waits).
    #[serde(flatten)]
    pub waiter: Waiter,
    /// The stranded socket's inode.
    pub inode: SockInode,
    /// Its netns.
    pub netns: NetnsIno,
    /// `tcp`, `udp`, … (`sk_protocol`).
    pub protocol: crate::model::socket::Protocol,
    /// Its local address.
    pub local_addr: std::net::IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Why the socket is stranded.
    pub stranded: Stranded,
}

/// The event-loop waiters of every stranded socket in `reports` (waiters with `via` other than
/// `recv`; those are receivers, already covered by `hung`'s receive-call logic), ordered by
/// (pid, tid, inode). A thread waiting on several stranded sockets appears once per socket.
pub fn event_loop_waiters(reports: &[SocketReport]) -> Vec<EventLoopWaiter> {
    let mut out: Vec<EventLoopWaiter> = reports
        .iter()
        .filter_map(|r| Some((r, r.stranded.as_ref()?)))
        .flat_map(|(r, st)| {
            let s = &r.tied.socket;
            r.waiters.iter().filter(|w| w.via != Via::Recv).map(move |w| EventLoopWaiter {
                waiter: w.clone(),
                inode: s.inode,
                netns: s.netns,
                protocol: s.protocol,
                local_addr: s.local_addr,
                local_port: s.local_port,
                stranded: st.clone(),
            })
        })
        .collect();
    out.sort_by_key(|e| (e.waiter.pid, e.waiter.tid, e.inode));
    out
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, net::IpAddr};

    use ifsock_common::{sock_flags, SockRecord};

    use super::*;
    use crate::model::link::IFF_UP;

    const NS: NetnsIno = NetnsIno(7);

    fn sock(sk: u64, laddr: [u8; 4], bound: u32, pktinfo: bool) -> Socket {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&laddr);
        Socket::from_record(&SockRecord {
            sk, cookie: sk, ino: sk + 100, netns: NS.0, uid: 0, bound_dev_if: bound, family: 2, protocol: 17, state: 7,
            lport: 53, rport: 0, flags: if pktinfo { sock_flags::PKTINFO } else { 0 }, laddr: raw,
            raddr: [0; 16], rx_queue: 0, drops: 0,
        })
    }
    fn veth(up: bool, with_addr: bool) -> Vec<Link> {
        let addrs: BTreeSet<IpAddr> = if with_addr { ["10.78.0.1".parse().unwrap()].into() } else { BTreeSet::new() };
        vec![Link { ifindex: IfIndex(5), name: "veth0".into(), flags: if up { IFF_UP } else { 0 }, addrs }]
    }
    fn kinds(c: &[HealthChange]) -> Vec<(&'static str, u64, Option<StrandReason>)> {
        c.iter()
            .map(|c| match c {
                HealthChange::Stranded { socket, stranded } => ("stranded", socket.sk, Some(stranded.reason)),
                HealthChange::Recovered { socket, .. } => ("recovered", socket.sk, None),
            })
            .collect()
    }

    #[test]
    fn deletion_strands_address_bound_once_and_names_the_last_holder() {
        let t = AddrTable::default();
        let socks = vec![sock(1, [10, 78, 0, 1], 0, false), sock(2, [0, 0, 0, 0], 0, false)];
        let mut h = HealthTracker::new();
        h.prime(NS, &socks, &veth(true, true), &t);
        assert!(h.update(NS, &socks, &veth(true, true), &t, 10).is_empty(), "nothing changed, nothing reported");
        let c = h.update(NS, &socks, &[], &t, 20);
        assert_eq!(kinds(&c), vec![("stranded", 1, Some(StrandReason::AddressGone))]);
        let HealthChange::Stranded { stranded, .. } = &c[0] else { unreachable!() };
        assert_eq!((stranded.ifindex, stranded.ifname.as_deref(), stranded.since_unix_ns), (Some(IfIndex(5)), Some("veth0"), Some(20)));
        assert!(h.update(NS, &socks, &[], &t, 30).is_empty(), "once per socket per change");
        assert_eq!(h.assess(&socks[0], &[], &t).and_then(|s| s.since_unix_ns), Some(20), "since keeps the first sighting");
        let c = h.update(NS, &socks, &veth(true, true), &t, 40);
        assert_eq!(kinds(&c), vec![("recovered", 1, None)]);
    }

    #[test]
    fn device_down_then_up_recovers_and_reason_changes_are_reported() {
        let t = AddrTable::default();
        let socks = vec![sock(3, [0, 0, 0, 0], 5, false)];
        let mut h = HealthTracker::new();
        h.prime(NS, &socks, &veth(true, true), &t);
        assert_eq!(kinds(&h.update(NS, &socks, &veth(false, true), &t, 1)), vec![("stranded", 3, Some(StrandReason::DeviceDown))]);
        assert_eq!(kinds(&h.update(NS, &socks, &[], &t, 2)), vec![("stranded", 3, Some(StrandReason::DeviceDeleted))]);
        assert_eq!(kinds(&h.update(NS, &socks, &veth(true, false), &t, 3)), vec![("recovered", 3, None)]);
    }

    #[test]
    fn seen_deletion_strands_no_wildcard_and_names_the_deleted_device_after_recreate() {
        let t = AddrTable::default();
        let socks = vec![sock(4, [0, 0, 0, 0], 0, true), sock(5, [0, 0, 0, 0], 0, false), sock(6, [0, 0, 0, 0], 5, false)];
        let mut h = HealthTracker::new();
        h.prime(NS, &socks, &veth(true, true), &t);
        h.saw_deletion(SeenDeletion { netns: NS, ifindex: IfIndex(5), name: "veth0".into(), at_unix_ns: 5 });
        let c = h.update(NS, &socks, &[], &t, 5);
        assert_eq!(kinds(&c), vec![("stranded", 6, Some(StrandReason::DeviceDeleted))], "wildcards stay healthy");
        let again = vec![Link { ifindex: IfIndex(6), ..veth(true, true).remove(0) }];
        assert!(h.update(NS, &socks, &again, &t, 6).is_empty(), "recreated with a new ifindex: nothing recovers");
        let st = h.assess(&socks[2], &again, &t).unwrap();
        assert_eq!((st.ifindex, st.ifname.as_deref(), st.now_ifindex), (Some(IfIndex(5)), Some("veth0"), Some(IfIndex(6))));
        for i in 0..MAX_DELETIONS as u32 {
            h.saw_deletion(SeenDeletion { netns: NS, ifindex: IfIndex(100 + i), name: format!("v{i}"), at_unix_ns: 7 });
        }
        assert_eq!(h.deletions().len(), MAX_DELETIONS, "bounded");
        assert!(!h.deletions().iter().any(|d| d.ifindex == IfIndex(5)), "the oldest deletion is forgotten first");
        assert_eq!(h.assess(&socks[2], &again, &t).unwrap().ifname.as_deref(), Some("veth0"), "a socket still stranded keeps the name it was judged with");
        h.forget_netns(NS);
        assert!(h.deletions().is_empty());
    }

    #[test]
    fn a_device_seen_gone_before_its_deletion_record_keeps_its_last_name() {
        let t = AddrTable::default();
        let socks = vec![sock(3, [0, 0, 0, 0], 5, false)];
        let mut h = HealthTracker::new();
        h.prime(NS, &socks, &veth(true, true), &t);
        let c = h.update(NS, &socks, &[], &t, 1);
        let HealthChange::Stranded { stranded, .. } = &c[0] else { panic!("{c:?}") };
        assert_eq!((stranded.reason, stranded.ifname.as_deref()), (StrandReason::DeviceDeleted, Some("veth0")), "named from the links seen before");
        assert!(h.update(NS, &socks, &[], &t, 2).is_empty());
        assert_eq!(h.assess(&socks[0], &[], &t).and_then(|s| s.ifname).as_deref(), Some("veth0"), "and keeps it");
    }

    #[test]
    fn event_loop_waiters_are_those_of_stranded_sockets_except_receivers() {
        let t = AddrTable::default();
        let socks = [sock(7, [10, 78, 0, 1], 0, false), sock(8, [10, 78, 0, 1], 0, false), sock(9, [127, 0, 0, 1], 0, false)];
        let w = |tid, via| Waiter { pid: 1, tid, comm: "srv".into(), syscall: "epoll_wait", via, fd: Some(3), epfd: Some(4), fds: None, reason: None, source: crate::model::stranded::WaiterSource::Proc };
        let reports: Vec<SocketReport> = socks
            .iter()
            .map(|s| {
                let tied = crate::model::tie::each_once(std::slice::from_ref(s), NS, &[]).remove(0);
                let stranded = if s.sk == 9 { None } else { health(s, &[], &t, &[]) };
                SocketReport { tied, stranded, waiters: vec![w(2, Via::Epoll), w(3, Via::Recv), w(1, Via::Poll)] }
            })
            .collect();
        let rows = event_loop_waiters(&reports);
        let got: Vec<(u32, u64)> = rows.iter().map(|r| (r.waiter.tid, r.inode.0)).collect();
        assert_eq!(got, vec![(1, 107), (1, 108), (2, 107), (2, 108)], "recv waiters and healthy sockets are left out");
        assert!(rows.iter().all(|r| r.stranded.reason == StrandReason::AddressGone));
        let v = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!((v["via"].as_str(), v["stranded"]["reason"].as_str()), (Some("poll"), Some("address_gone")));
    }

    #[test]
    fn already_stranded_at_start_is_not_reported_and_closed_sockets_are_forgotten() {
        let t = AddrTable::default();
        let socks = vec![sock(6, [10, 9, 9, 9], 0, false)];
        let mut h = HealthTracker::new();
        h.prime(NS, &socks, &veth(true, true), &t);
        assert!(h.update(NS, &socks, &veth(true, true), &t, 1).is_empty());
        assert!(h.update(NS, &[], &veth(true, true), &t, 2).is_empty(), "a closed socket is not 'recovered'");
        let other = NetnsIno(8);
        assert!(h.update(other, &socks, &[], &t, 3).is_empty(), "sockets of another netns are not judged");
    }
}
