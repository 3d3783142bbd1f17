//! The agent's socket snapshot of one netns, judged: a gauge row per socket and per blocked
//! receiver for the metrics, and the sockets whose health changed since the last snapshot
//! (for `socket_stranded` / `socket_recovered` journal lines). No I/O: the agent reads the
//! sockets, the links and the sockets its blocked receivers wait on, and hands them in.
use std::{collections::BTreeSet, net::IpAddr};

use serde::Serialize;

use crate::{
    engine::{
        health::{HealthChange, HealthTracker},
        metrics::{NetnsSnapshot, SocketRow},
    },
    kernel::cgroup::Attribution,
    model::{
        ids::{NetnsIno, SockInode},
        link::{Change, Dump, Link, IFA_F_TENTATIVE, IFF_UP},
        socket::{binding_name, Socket},
        stranded::{SocketHealthEvent, Stranded},
        tie::{self, TiedSocket},
    },
};

/// A task's pid with its container attribution (`kernel::cgroup::of_pid`, `/proc/PID/cgroup`).
#[derive(Clone, Debug, Serialize)]
pub struct Attributed {
    /// Thread-group id.
    pub pid: u32,
    /// cgroup, container and pod.
    #[serde(flatten)]
    pub attribution: Attribution,
}

/// The journal line of a socket health change: watch's `socket_stranded` / `socket_recovered`
/// payload ([`SocketHealthEvent`]) plus the cgroups of the socket's owners and waiters.
#[derive(Clone, Debug, Serialize)]
pub struct SocketHealthLine {
    /// `socket_stranded` or `socket_recovered`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// The record as `watch` spells it.
    #[serde(flatten)]
    pub event: SocketHealthEvent,
    /// The owners' cgroups, one per pid.
    pub owner_cgroups: Vec<Attributed>,
    /// The waiters' cgroups, one per pid.
    pub waiter_cgroups: Vec<Attributed>,
}

/// A socket whose health changed at this snapshot.
#[derive(Clone, Debug)]
pub struct Changed {
    /// `socket_stranded`, `socket_recovered` or `socket_still_stranded`.
    pub ty: &'static str,
    /// The socket, tied as in the gauges.
    pub tied: TiedSocket,
    /// What it is stranded by now, or was stranded by before it recovered.
    pub by: Stranded,
    /// Its health now (`None`: healthy).
    pub now: Option<Stranded>,
    /// `socket_still_stranded`: the kind of the change that did not cure it.
    pub cause: Option<&'static str>,
}

/// Whether the records taken so far (`taken`: the engine's links after the changes it has
/// emitted) describe the interfaces a judgement would read from `dump`: the same ifindexes,
/// names, `IFF_UP` and addresses. When they differ, the kernel has changed and its rtnetlink
/// notifications (queued on the subscription at the same moment, `rtnl_notify()`) are still on
/// their way: a health line judged now would be journaled before the `change` lines that
/// explain it (a `socket_stranded address_gone` ahead of its `address_removed` and `deleted`).
/// Left out, because the kernel notifies them later than a dump shows them: carrier
/// (`IFF_LOWER_UP`, `IFF_RUNNING`; linkwatch notifies up to a second later,
/// `linkwatch_fire_event()`) and IPv6 addresses still in DAD (`IFA_F_TENTATIVE`; their
/// `RTM_NEWADDR` comes when DAD ends, `addrconf_dad_completed()`, 1–2 s after the link is up).
pub fn caught_up<'a>(taken: impl IntoIterator<Item = &'a Link>, dump: &Dump) -> bool {
    let settled = |l: &Link| -> BTreeSet<IpAddr> {
        l.addrs.iter().copied().filter(|a| dump.addrs.get(l.ifindex, *a).is_none_or(|i| i.flags & IFA_F_TENTATIVE == 0)).collect()
    };
    let key = |l: &Link| (l.ifindex, l.name.clone(), l.flags & IFF_UP, settled(l));
    let mut taken: Vec<_> = taken.into_iter().map(key).collect();
    let mut fresh: Vec<_> = dump.links.iter().map(key).collect();
    taken.sort();
    fresh.sort();
    taken == fresh
}

/// Judges one netns's snapshot: `sockets` (read before `dump`), `receiving` (one entry per
/// blocked receiver: the inode of the socket it waits on, whatever its source; entries of
/// other namespaces match no socket here), at `now_unix_ns`. Updates `health`'s memory of each
/// socket's state. `label` names the netns in the gauges (its inode when `None`).
pub fn judge(health: &mut HealthTracker, ino: NetnsIno, label: Option<&str>, sockets: &[Socket], dump: &Dump, receiving: &[SockInode], now_unix_ns: u64) -> (NetnsSnapshot, Vec<Changed>) {
    judge_after(health, ino, label, sockets, dump, receiving, now_unix_ns, &[])
}

/// As [`judge`], after the interface changes `seen` of this netns since the last snapshot: a
/// socket still stranded after a change that could have cured it (its interface recreated or
/// up, its address back) is reported once as `socket_still_stranded`
/// ([`HealthTracker::still_stranded`]), with that change's kind in `cause`.
#[allow(clippy::too_many_arguments)] // judge's inputs plus the changes seen
pub fn judge_after(health: &mut HealthTracker, ino: NetnsIno, label: Option<&str>, sockets: &[Socket], dump: &Dump, receiving: &[SockInode], now_unix_ns: u64, seen: &[Change]) -> (NetnsSnapshot, Vec<Changed>) {
    let mut snap = NetnsSnapshot { netns: label.map_or_else(|| ino.to_string(), str::to_string), ..NetnsSnapshot::default() };
    let tied = tie::each_once(sockets, ino, &dump.links);
    for t in &tied {
        let h = health.assess(&t.socket, &dump.links, &dump.addrs);
        snap.sockets.push(SocketRow {
            ifname: t.ifname.clone().unwrap_or_default(),
            binding: binding_name(t.binding),
            protocol: t.socket.protocol.name(),
            stranded: h.as_ref().map(|s| (s.ifname.clone().unwrap_or_default(), s.reason.name())),
        });
        let n = receiving.iter().filter(|&&i| i == t.socket.inode).count();
        snap.blocked_receivers.extend(std::iter::repeat_n(h.is_some(), n));
    }
    let mut changed = Vec::new();
    let updates = health.update(ino, sockets, &dump.links, &dump.addrs, now_unix_ns);
    let seen: Vec<&Change> = seen.iter().collect();
    let still = health.still_stranded(ino, &seen, &updates, sockets, &dump.links, &dump.addrs);
    for change in updates {
        let (ty, socket, by) = match change {
            HealthChange::Stranded { socket, stranded } => ("socket_stranded", socket, stranded),
            HealthChange::Recovered { socket, was } => ("socket_recovered", socket, was),
        };
        let Some(t) = tied.iter().find(|t| t.socket.inode == socket.inode && t.socket.sk == socket.sk) else { continue };
        let now = health.assess(&socket, &dump.links, &dump.addrs);
        changed.push(Changed { ty, tied: t.clone(), by, now, cause: None });
    }
    for (socket, st, cause) in still {
        let Some(t) = tied.iter().find(|t| t.socket.inode == socket.inode && t.socket.sk == socket.sk) else { continue };
        changed.push(Changed { ty: "socket_still_stranded", tied: t.clone(), by: st.clone(), now: Some(st), cause: Some(cause) });
    }
    (snap, changed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use ifsock_common::SockRecord;

    use super::*;
    use crate::model::{
        ids::{IfIndex, SockInode},
        link::{Link, IFF_UP},
    };

    const NS: NetnsIno = NetnsIno(7);

    fn sock(ino: u64, laddr: [u8; 4], bound: u32) -> Socket {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&laddr);
        Socket::from_record(&SockRecord {
            sk: ino, cookie: ino, ino, netns: NS.0, uid: 0, bound_dev_if: bound, family: 2, protocol: 17, state: 7,
            lport: 53, rport: 0, flags: 0, laddr: raw, raddr: [0; 16], rx_queue: 0, drops: 0,
        })
    }

    #[test]
    fn a_dump_ahead_of_the_taken_changes_is_not_caught_up() {
        let fresh = dump(true);
        assert!(caught_up(&fresh.links, &fresh), "the same links");
        let mut carrier = fresh.links.clone();
        carrier[0].flags |= 0x10000;
        assert!(caught_up(&carrier, &fresh), "carrier is notified late by linkwatch: not compared");
        let mut with_addr = fresh.links.clone();
        with_addr[0].addrs.insert("10.78.0.2".parse().unwrap());
        assert!(!caught_up(&with_addr, &fresh), "an address removal not yet taken");
        assert!(!caught_up(&dump(false).links, &fresh), "an up not yet taken");
        assert!(!caught_up(&fresh.links, &Dump::default()), "a deletion not yet taken");
        let mut dad = dump(true);
        let link_local: std::net::IpAddr = "fe80::1".parse().unwrap();
        dad.links[0].addrs.insert(link_local);
        dad.addrs.insert(IfIndex(5), link_local, crate::model::link::AddrInfo { flags: crate::model::link::IFA_F_TENTATIVE, prefix_len: 64, scope: 253 });
        assert!(caught_up(&fresh.links, &dad), "an address in DAD is notified when DAD ends: not compared");
    }

    fn dump(up: bool) -> Dump {
        let addrs: BTreeSet<std::net::IpAddr> = ["10.78.0.1".parse().unwrap()].into();
        Dump { links: vec![Link { ifindex: IfIndex(5), name: "veth0".into(), flags: if up { IFF_UP } else { 0 }, addrs }], ..Dump::default() }
    }

    #[test]
    fn gauges_have_one_row_per_socket_and_count_receivers_blocked_on_stranded_ones() {
        let sockets = vec![sock(1, [0; 4], 5), sock(2, [10, 78, 0, 1], 0), sock(3, [0; 4], 0)];
        let mut health = HealthTracker::new();
        let (snap, _) = judge(&mut health, NS, Some("blue"), &sockets, &dump(false), &[SockInode(1), SockInode(1), SockInode(2), SockInode(99)], 0);
        assert_eq!(snap.netns, "blue");
        let rows: Vec<_> = snap.sockets.iter().map(|r| (r.ifname.as_str(), r.binding, r.protocol, r.stranded.clone())).collect();
        assert_eq!(
            rows,
            vec![("veth0", "device", "udp", Some(("veth0".to_string(), "device_down"))), ("veth0", "address", "udp", None), ("", "wildcard", "udp", None)]
        );
        // Two receivers on the stranded socket, one on the healthy one; the fourth's socket is
        // not in this netns.
        assert_eq!(snap.blocked_receivers, vec![true, true, false]);
        let (snap, _) = judge(&mut health, NS, None, &sockets, &dump(false), &[], 0);
        assert_eq!(snap.netns, "7", "unnamed: the inode");
    }

    #[test]
    fn health_changes_are_reported_once_with_what_stranded_the_socket() {
        let sockets = vec![sock(1, [0; 4], 5)];
        let mut health = HealthTracker::new();
        let (_, c) = judge(&mut health, NS, None, &sockets, &dump(true), &[], 100);
        assert!(c.is_empty(), "healthy: {c:?}");
        let (_, c) = judge(&mut health, NS, None, &sockets, &dump(false), &[], 200);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].ty, c[0].by.reason.name(), c[0].by.since_unix_ns), ("socket_stranded", "device_down", Some(200)));
        assert!(c[0].now.is_some());
        assert_eq!(c[0].tied.ifname.as_deref(), Some("veth0"));
        let (_, c) = judge(&mut health, NS, None, &sockets, &dump(false), &[], 300);
        assert!(c.is_empty(), "still stranded, nothing new: {c:?}");
        let (_, c) = judge(&mut health, NS, None, &sockets, &dump(true), &[], 400);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].ty, c[0].by.reason.name()), ("socket_recovered", "device_down"));
        assert!(c[0].now.is_none());
    }

    #[test]
    fn a_recreate_that_does_not_cure_a_socket_is_reported_once_as_still_stranded() {
        use crate::model::{link::ChangeKind, stranded::SeenDeletion};
        let sockets = vec![sock(1, [0; 4], 5), sock(2, [10, 78, 0, 1], 0)];
        let mut health = HealthTracker::new();
        judge(&mut health, NS, None, &sockets, &dump(true), &[], 100);
        health.saw_deletion(SeenDeletion { netns: NS, ifindex: IfIndex(5), name: "veth0".into(), at_unix_ns: 150 });
        let (_, c) = judge(&mut health, NS, None, &sockets, &Dump::default(), &[], 200);
        assert_eq!(c.iter().map(|c| (c.ty, c.by.reason.name())).collect::<Vec<_>>(), vec![("socket_stranded", "device_deleted"), ("socket_stranded", "address_gone")]);
        // veth0 again, as ifindex 9, with its address: the address-bound socket recovers, the
        // device-bound one still names ifindex 5.
        let mut again = dump(true);
        again.links[0].ifindex = IfIndex(9);
        let recreated = Change { kind: ChangeKind::Recreated, ifindex: IfIndex(9), name: "veth0".into(), old_name: None, old_ifindex: Some(IfIndex(5)), address: None };
        let (_, c) = judge_after(&mut health, NS, None, &sockets, &again, &[], 300, std::slice::from_ref(&recreated));
        let got: Vec<_> = c.iter().map(|c| (c.ty, c.tied.socket.inode.0, c.cause)).collect();
        assert_eq!(got, vec![("socket_recovered", 2, None), ("socket_still_stranded", 1, Some("recreated"))]);
        assert_eq!((c[1].by.ifname.as_deref(), c[1].by.now_ifindex), (Some("veth0"), Some(IfIndex(9))));
        let (_, c) = judge_after(&mut health, NS, None, &sockets, &again, &[], 400, &[Change { kind: ChangeKind::Up, ..recreated }]);
        assert!(c.is_empty(), "said once: {c:?}");
    }
}
