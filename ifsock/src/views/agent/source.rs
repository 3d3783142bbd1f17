//! The agent's event source — a STAND-IN, to be replaced at merge by `engine::watch`'s
//! `WatchEngine` (its `WatchRecord`s feed [`crate::journal::Journal::append`] and
//! [`crate::engine::metrics::Input`] the same way) and the local [`health`] check by
//! `model::stranded`.
//!
//! It follows the links and addresses of every netns (rtnetlink `RTNLGRP_LINK` and the two
//! address groups, one subscription per netns), and after each batch of changes takes one
//! socket snapshot per changed netns (`probes::snapshot::sockets`) to set the gauges and to
//! journal sockets that became stranded or recovered.
//!
//! Start-up race (seed 004): each netns is subscribed before it is dumped, so a change during
//! the dump is queued and applied on top of it. Loss (seed 002): `ENOBUFS` means a re-dump
//! and diff (counted as lost and as a resync).
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    engine::metrics::{Input, LostSource, NetnsSnapshot, SocketRow},
    kernel::{
        cgroup::{self, Attribution},
        netlink::{self, Received, Subscription},
        netns::{self, NetnsHandle},
        procfs::{self, BlockedThread},
    },
    model::{
        ids::{IfIndex, NetnsIno, SockInode},
        link::{Change, ChangeKind, Link, LinkTable},
        socket::{Protocol, Socket},
        tie::{self, TiedSocket},
    },
    probes::{snapshot, Probes},
    render::{fmt, unix_ns},
};

/// Why a socket cannot receive what it was bound for (the names of `model::stranded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Bound to a specific local address that no interface of its netns holds.
    AddressGone,
    /// `sk_bound_dev_if` names an interface without `IFF_UP`.
    DeviceDown,
    /// `sk_bound_dev_if` names no existing interface.
    DeviceDeleted,
}

impl Reason {
    /// The snake_case name (metric label and JSON).
    pub fn name(self) -> &'static str {
        match self {
            Reason::AddressGone => "address_gone",
            Reason::DeviceDown => "device_down",
            Reason::DeviceDeleted => "device_deleted",
        }
    }
}

/// The health of one socket: `(reason, ifindex, ifname)` of the interface involved, or `None`
/// when healthy. `last_holder` names the interface that last held an address (from the
/// netns's history: the kernel forgets it with the address); `deleted` the links gone.
pub fn health(
    s: &Socket,
    links: &[Link],
    last_holder: &HashMap<IpAddr, (IfIndex, String)>,
    deleted: &HashMap<IfIndex, String>,
) -> Option<(Reason, Option<IfIndex>, String)> {
    if s.bound_dev_if != 0 {
        let idx = IfIndex(s.bound_dev_if);
        return match links.iter().find(|l| l.ifindex == idx) {
            None => Some((Reason::DeviceDeleted, Some(idx), deleted.get(&idx).cloned().unwrap_or_default())),
            Some(l) if !l.is_up() => Some((Reason::DeviceDown, Some(idx), l.name.clone())),
            Some(_) => None,
        };
    }
    let addr = s.local_addr.to_canonical();
    // 127.0.0.0/8 and ::1 are local on `lo` as a whole, not as listed addresses.
    if addr.is_unspecified() || addr.is_loopback() {
        return None;
    }
    if links.iter().any(|l| l.addrs.iter().any(|a| a.to_canonical() == addr)) {
        return None;
    }
    let (ifindex, ifname) = last_holder.get(&addr).cloned().map_or((None, String::new()), |(i, n)| (Some(i), n));
    Some((Reason::AddressGone, ifindex, ifname))
}

/// A task's pid with its container attribution (`kernel::cgroup`).
#[derive(Clone, Debug, Serialize)]
pub struct Attributed {
    /// Thread-group id.
    pub pid: u32,
    /// cgroup, container and pod.
    #[serde(flatten)]
    pub attribution: Attribution,
}

/// A thread blocked receiving on the socket (`/proc/PID/task/TID/syscall`).
#[derive(Clone, Debug, Serialize)]
pub struct Waiter {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Command.
    pub comm: String,
    /// Syscall name.
    pub syscall: &'static str,
    /// Always `recv` here (epoll/poll/select waiters come with `kernel::waiters` at merge).
    pub via: &'static str,
    /// The fd it waits on.
    pub fd: u32,
    /// cgroup, container and pod of the task.
    #[serde(flatten)]
    pub attribution: Attribution,
}

/// `socket_stranded` / `socket_recovered`, the shape `watch` uses.
#[derive(Clone, Debug, Serialize)]
pub struct SocketHealthRecord {
    /// `socket_stranded` or `socket_recovered`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// When the change batch was seen, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// Netns inode.
    pub netns: NetnsIno,
    /// Netns label (name under /run/netns, else container, else null).
    pub netns_name: Option<String>,
    /// Why (for `socket_recovered`: the reason it had).
    pub reason: Reason,
    /// The interface involved.
    pub ifindex: Option<IfIndex>,
    /// Its name (`""` when unknown).
    pub ifname: String,
    /// The socket's specific local address, if it has one.
    pub address: Option<IpAddr>,
    /// The socket, as a `sockets --json` row.
    pub socket: TiedSocket,
    /// The owners' cgroups.
    pub owner_cgroups: Vec<Attributed>,
    /// Threads blocked receiving on it.
    pub waiters: Vec<Waiter>,
}

/// A link change, the shape of `watch --json`'s `change` lines.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeRecord {
    /// `"change"`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// `netlink`, `resync`, `reconcile` or `discovery`.
    pub source: &'static str,
    /// Netns inode.
    pub netns: NetnsIno,
    /// Netns label.
    pub netns_name: Option<String>,
    /// The change.
    #[serde(flatten)]
    pub change: Change,
}

/// `netns_added` / `netns_removed`.
#[derive(Clone, Debug, Serialize)]
pub struct NetnsRecord {
    /// The type.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// Netns inode.
    pub netns: NetnsIno,
    /// Netns label.
    pub netns_name: Option<String>,
}

/// What the source produces: records for the journal and inputs for the metrics.
#[derive(Debug)]
pub enum Out {
    /// A change.
    Change(ChangeRecord),
    /// A socket stranded or recovered.
    Health(SocketHealthRecord),
    /// A netns came or went.
    Netns(NetnsRecord),
    /// A metric input.
    Metric(Input),
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Ns {
    label: Option<String>,
    handle: Option<NetnsHandle>,
    rtnl: rtnetlink::Handle,
    table: LinkTable,
    last_holder: HashMap<IpAddr, (IfIndex, String)>,
    deleted: HashMap<IfIndex, String>,
    stranded: HashMap<SockInode, Reason>,
    dirty: bool,
    _reader: AbortOnDrop,
}

impl Ns {
    fn learn(&mut self) {
        for l in self.table.links() {
            for a in &l.addrs {
                self.last_holder.insert(a.to_canonical(), (l.ifindex, l.name.clone()));
            }
        }
    }
}

/// Messages from the per-netns subscription readers.
pub type NetlinkMsg = (NetnsIno, Result<Received>);

/// Every followed netns.
pub struct Follower {
    spaces: BTreeMap<NetnsIno, Ns>,
    tx: mpsc::UnboundedSender<NetlinkMsg>,
}

/// The netns label: its name under /run/netns, else `container:<id12>` of a task in it.
fn label_of(h: &NetnsHandle) -> Option<String> {
    if let Some(n) = &h.name {
        return Some(n.clone());
    }
    let pid = h.path.to_str()?.strip_prefix("/proc/")?.split('/').next()?.parse().ok()?;
    cgroup::of_pid(pid).container_id.map(|id| format!("container:{}", &id[..12]))
}

impl Follower {
    /// A follower sending subscription messages to `tx`.
    pub fn new(tx: mpsc::UnboundedSender<NetlinkMsg>) -> Self {
        Follower { spaces: BTreeMap::new(), tx }
    }

    /// How many namespaces are followed.
    pub fn followed(&self) -> usize {
        self.spaces.len()
    }

    async fn open(&self, h: NetnsHandle) -> Result<Ns> {
        let rt = tokio::runtime::Handle::current();
        let (mut sub, conn, rtnl) = h.run(move || -> Result<_> {
            let _guard = rt.enter();
            let sub = Subscription::open(None)?;
            let (conn, rtnl, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
            Ok((sub, conn, rtnl))
        })??;
        tokio::spawn(conn);
        let (ino, tx) = (h.ino, self.tx.clone());
        let reader = tokio::spawn(async move {
            loop {
                let r = sub.recv().await;
                if let Ok(Received::Overrun) = r {
                    sub.discard_pending();
                }
                let stop = r.is_err();
                if tx.send((ino, r)).is_err() || stop {
                    break;
                }
            }
        });
        let table = LinkTable::from_links(netlink::dump_links(&rtnl).await.with_context(|| format!("dumping links of netns {ino}"))?);
        let mut ns = Ns {
            label: label_of(&h),
            handle: Some(h),
            rtnl,
            table,
            last_holder: HashMap::new(),
            deleted: HashMap::new(),
            stranded: HashMap::new(),
            dirty: true,
            _reader: AbortOnDrop(reader),
        };
        ns.learn();
        Ok(ns)
    }

    /// Follows namespaces that appeared (named ones under /run/netns and those of running
    /// processes) and drops those that are gone. Called at start, on every mount-table change
    /// and at reconcile. A named netns that cannot be opened yet (`ip netns add` creates the
    /// file before it bind-mounts the namespace on it) is picked up at the mount that follows.
    pub async fn discover(&mut self, out: &mut Vec<Out>) {
        let present = netns::all();
        let inos: Vec<NetnsIno> = present.iter().map(|h| h.ino).collect();
        let gone: Vec<NetnsIno> = self.spaces.keys().copied().filter(|i| !inos.contains(i)).collect();
        for ino in gone {
            self.remove(ino, out);
        }
        for h in present {
            if self.spaces.contains_key(&h.ino) {
                continue;
            }
            let ino = h.ino;
            match self.open(h).await {
                Ok(ns) => {
                    out.push(Out::Netns(NetnsRecord { ty: "netns_added", ts_unix_ns: unix_ns(), netns: ino, netns_name: ns.label.clone() }));
                    self.spaces.insert(ino, ns);
                }
                Err(e) => tracing::debug!("netns {ino} not followed (yet): {e:#}"),
            }
        }
    }

    fn remove(&mut self, ino: NetnsIno, out: &mut Vec<Out>) {
        if let Some(ns) = self.spaces.remove(&ino) {
            out.push(Out::Netns(NetnsRecord { ty: "netns_removed", ts_unix_ns: unix_ns(), netns: ino, netns_name: ns.label }));
            out.push(Out::Metric(Input::NetnsGone(ino)));
        }
    }

    fn changes(&mut self, ino: NetnsIno, changes: Vec<Change>, source: &'static str, out: &mut Vec<Out>) {
        let Some(ns) = self.spaces.get_mut(&ino) else { return };
        for c in changes {
            if matches!(c.kind, ChangeKind::Deleted | ChangeKind::MovedOut) {
                ns.deleted.insert(c.ifindex, c.name.clone());
            }
            out.push(Out::Metric(Input::LinkEvent(c.kind)));
            out.push(Out::Change(ChangeRecord { ty: "change", ts_unix_ns: unix_ns(), source, netns: ino, netns_name: ns.label.clone(), change: c }));
        }
        ns.learn();
        ns.dirty = true;
    }

    /// Applies one subscription message. A namespace whose reader failed (it was destroyed)
    /// is dropped.
    pub async fn on_netlink(&mut self, ino: NetnsIno, received: Result<Received>, out: &mut Vec<Out>) {
        let Some(ns) = self.spaces.get_mut(&ino) else { return };
        match received {
            Ok(Received::Updates(updates)) => {
                let mut all = Vec::new();
                for u in updates {
                    all.extend(ns.table.apply(u));
                }
                self.changes(ino, all, "netlink", out);
            }
            Ok(Received::Overrun) => {
                tracing::warn!("rtnetlink ENOBUFS in netns {ino}: events were lost, re-dumping");
                out.push(Out::Metric(Input::Lost(LostSource::NetlinkEnobufs, 1)));
                out.push(Out::Metric(Input::Resync));
                self.redump(ino, "resync", out).await;
            }
            Err(e) => {
                tracing::debug!("netns {ino}: subscription ended: {e:#}");
                self.remove(ino, out);
            }
        }
    }

    async fn redump(&mut self, ino: NetnsIno, source: &'static str, out: &mut Vec<Out>) {
        let Some(ns) = self.spaces.get_mut(&ino) else { return };
        match netlink::dump_links(&ns.rtnl).await {
            Ok(fresh) => {
                let changes = ns.table.diff_and_replace(fresh);
                self.changes(ino, changes, source, out);
            }
            Err(e) => {
                tracing::debug!("netns {ino}: re-dump failed, dropping it: {e:#}");
                self.remove(ino, out);
            }
        }
    }

    /// The periodic reconcile: re-dumps every netns and marks all of them for a snapshot.
    pub async fn reconcile(&mut self, out: &mut Vec<Out>) {
        out.push(Out::Metric(Input::Reconcile));
        for ino in self.spaces.keys().copied().collect::<Vec<_>>() {
            self.redump(ino, "reconcile", out).await;
            if let Some(ns) = self.spaces.get_mut(&ino) {
                ns.dirty = true;
            }
        }
    }

    /// Whether a netns changed since the last [`Follower::snapshot`].
    pub fn dirty(&self) -> bool {
        self.spaces.values().any(|n| n.dirty)
    }

    /// One socket snapshot per netns changed since the last call: gauges for the metrics, and
    /// `socket_stranded` / `socket_recovered` for sockets whose health changed.
    pub fn snapshot(&mut self, probes: &mut Probes, out: &mut Vec<Out>) {
        if !self.spaces.values().any(|n| n.dirty) {
            return;
        }
        let blocked = procfs::blocked_receivers(None);
        let now = unix_ns();
        for (&ino, ns) in self.spaces.iter_mut().filter(|(_, n)| n.dirty) {
            ns.dirty = false;
            let sockets = match snapshot::sockets(probes, ns.handle.as_ref()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("netns {ino}: socket snapshot failed, gauges keep their last values: {e:#}");
                    continue;
                }
            };
            let links: Vec<Link> = ns.table.links().cloned().collect();
            let label = ns.label.clone().unwrap_or_else(|| ino.to_string());
            let mut snap = NetnsSnapshot { netns: label, ..NetnsSnapshot::default() };
            let mut stranded_now = HashMap::new();
            for t in tie::each_once(&sockets, ino, &links) {
                let h = health(&t.socket, &links, &ns.last_holder, &ns.deleted);
                snap.sockets.push(SocketRow {
                    ifname: t.ifname.clone().unwrap_or_default(),
                    binding: fmt::binding(t.binding),
                    protocol: match t.socket.protocol {
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                    },
                    stranded: h.as_ref().map(|(r, _, n)| (n.clone(), r.name())),
                });
                let waiting: Vec<&BlockedThread> = blocked.iter().filter(|b| b.fd_socket == Some(t.socket.inode)).collect();
                snap.blocked_receivers.extend(waiting.iter().map(|_| h.is_some()));
                let before = ns.stranded.get(&t.socket.inode).copied();
                let (ty, reason, ifindex, ifname) = match (&h, before) {
                    (Some((r, i, n)), b) if b != Some(*r) => ("socket_stranded", *r, *i, n.clone()),
                    (None, Some(r)) => ("socket_recovered", r, None, t.ifname.clone().unwrap_or_default()),
                    _ => {
                        if let Some((r, _, _)) = h {
                            stranded_now.insert(t.socket.inode, r);
                        }
                        continue;
                    }
                };
                if let Some((r, _, _)) = h {
                    stranded_now.insert(t.socket.inode, r);
                }
                let address = (!t.socket.local_addr.is_unspecified()).then_some(t.socket.local_addr);
                let mut pids: Vec<u32> = t.socket.owners.iter().map(|o| o.pid).collect();
                pids.sort_unstable();
                pids.dedup();
                let owner_cgroups = pids.into_iter().map(|pid| Attributed { pid, attribution: cgroup::of_pid(pid) }).collect();
                let waiters = waiting
                    .iter()
                    .map(|b| Waiter {
                        pid: b.pid,
                        tid: b.tid,
                        comm: b.comm.clone(),
                        syscall: procfs::syscall_name(b.syscall),
                        via: "recv",
                        fd: b.fd,
                        attribution: cgroup::of_pid(b.pid),
                    })
                    .collect();
                out.push(Out::Health(SocketHealthRecord {
                    ty,
                    ts_unix_ns: now,
                    netns: ino,
                    netns_name: ns.label.clone(),
                    reason,
                    ifindex,
                    ifname,
                    address,
                    socket: t,
                    owner_cgroups,
                    waiters,
                }));
            }
            // Closed sockets leave the map; addresses nobody holds or is bound to are forgotten.
            ns.stranded = stranded_now;
            let bound: std::collections::HashSet<IpAddr> = sockets.iter().map(|s| s.local_addr.to_canonical()).collect();
            let held: std::collections::HashSet<IpAddr> = links.iter().flat_map(|l| l.addrs.iter().map(|a| a.to_canonical())).collect();
            ns.last_holder.retain(|a, _| bound.contains(a) || held.contains(a));
            out.push(Out::Metric(Input::Snapshot(ino, snap)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::link::IFF_UP;

    fn sock(addr: &str, dev: u32) -> Socket {
        Socket {
            cookie: 0,
            v4_mapped: false,
            protocol: Protocol::Udp,
            family: 4,
            local_addr: addr.parse().unwrap(),
            local_port: 53,
            remote_addr: "0.0.0.0".parse().unwrap(),
            remote_port: 0,
            state: "UNCONN",
            inode: SockInode(1),
            netns: NetnsIno(1),
            uid: 0,
            bound_dev_if: dev,
            pktinfo: false,
            rx_queue: 0,
            drops: 0,
            owners: vec![],
            sk: 0,
        }
    }

    fn link(i: u32, name: &str, up: bool, addrs: &[&str]) -> Link {
        Link {
            ifindex: IfIndex(i),
            name: name.into(),
            flags: if up { IFF_UP } else { 0 },
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect::<BTreeSet<IpAddr>>(),
        }
    }

    #[test]
    fn address_gone_names_the_last_holder() {
        let mut holder = HashMap::new();
        holder.insert("10.1.0.1".parse().unwrap(), (IfIndex(5), "veth0".to_string()));
        let links = [link(1, "lo", true, &["127.0.0.1"])];
        let h = health(&sock("10.1.0.1", 0), &links, &holder, &HashMap::new());
        assert_eq!(h, Some((Reason::AddressGone, Some(IfIndex(5)), "veth0".into())));
        assert_eq!(health(&sock("10.1.0.2", 0), &links, &holder, &HashMap::new()), Some((Reason::AddressGone, None, String::new())));
    }

    #[test]
    fn healthy_sockets_are_never_stranded() {
        let links = [link(1, "lo", true, &["127.0.0.1"]), link(2, "veth0", true, &["10.1.0.1"])];
        let none = HashMap::new();
        for s in [sock("10.1.0.1", 0), sock("0.0.0.0", 0), sock("127.0.0.53", 0), sock("0.0.0.0", 2), sock("::ffff:10.1.0.1", 0)] {
            assert_eq!(health(&s, &links, &none, &HashMap::new()), None, "{s:?}");
        }
    }

    #[test]
    fn bound_device_down_or_deleted() {
        let links = [link(2, "veth0", false, &["10.1.0.1"])];
        let mut deleted = HashMap::new();
        deleted.insert(IfIndex(9), "gone0".to_string());
        let none = HashMap::new();
        assert_eq!(health(&sock("0.0.0.0", 2), &links, &none, &deleted), Some((Reason::DeviceDown, Some(IfIndex(2)), "veth0".into())));
        assert_eq!(health(&sock("0.0.0.0", 9), &links, &none, &deleted), Some((Reason::DeviceDeleted, Some(IfIndex(9)), "gone0".into())));
    }
}
