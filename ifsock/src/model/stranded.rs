//! Socket health: whether a socket can still receive what it was bound for, and who waits on it.
//!
//! A socket is *stranded* when the kernel keeps it open but nothing will ever arrive on it: its
//! local address is on no interface, or the device it is bound to is down or gone. The owner is
//! not told (no error on the socket, no wake-up), so a server that waits in `epoll_wait`/`poll`
//! sleeps on forever. [`health`] decides this from one snapshot (sockets + links + address
//! details); `engine::health` tracks it across changes for `watch`.
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use super::{
    ids::{IfIndex, NetnsIno},
    link::{AddrTable, Link, IFF_LOOPBACK},
    socket::Socket,
    tie::TiedSocket,
};

/// Why a socket is stranded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrandReason {
    /// Bound to a specific local address that no interface of its netns holds (usable) now.
    AddressGone,
    /// `sk_bound_dev_if` names an interface without `IFF_UP`.
    DeviceDown,
    /// `sk_bound_dev_if` names no existing interface.
    DeviceDeleted,
}

impl StrandReason {
    /// The snake_case name used in JSON and in the STATUS column.
    pub fn name(self) -> &'static str {
        match self {
            StrandReason::AddressGone => "address_gone",
            StrandReason::DeviceDown => "device_down",
            StrandReason::DeviceDeleted => "device_deleted",
        }
    }
}

/// The `stranded` object of a socket row: `{reason, ifindex, ifname, now_ifindex, address,
/// since_unix_ns}`, fields `null` where unknown (a snapshot does not know since when, nor which
/// interface held a vanished address). For `device_deleted`, `ifname` is the deleted ifindex's
/// last name when a watcher or the journal saw it go, and `now_ifindex` the ifindex that name has
/// now (the interface was recreated; the socket still names the old one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stranded {
    /// Why.
    pub reason: StrandReason,
    /// The interface involved: the bound device, the deleted interface, or the one that last held
    /// the address (when a watcher saw it).
    pub ifindex: Option<IfIndex>,
    /// Its name, when known.
    pub ifname: Option<String>,
    /// `device_deleted` only: the ifindex an interface named `ifname` has now in the socket's
    /// netns (recreated under the same name), else `None`.
    pub now_ifindex: Option<IfIndex>,
    /// The socket's local address when it is specific (None for wildcard sockets).
    pub address: Option<IpAddr>,
    /// When the change that stranded it was seen, in ns since the Unix epoch (None from a
    /// snapshot).
    pub since_unix_ns: Option<u64>,
}

/// An interface deletion a running watcher (or the journal) saw (`RTM_DELLINK` without
/// `IFLA_NEW_NETNSID`): it names a deleted ifindex that a `device_deleted` socket still holds
/// (the kernel forgets the name with the device). It never strands a socket by itself: a wildcard
/// socket, with or without IP_PKTINFO, still receives on every other interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenDeletion {
    /// The netns it was deleted from.
    pub netns: NetnsIno,
    /// Its ifindex.
    pub ifindex: IfIndex,
    /// Its name.
    pub name: String,
    /// When it was seen, ns since the Unix epoch.
    pub at_unix_ns: u64,
}

/// Whether `addr` is held (usable) by `link`: listed on it and neither tentative nor DAD-failed,
/// or covered by a prefix the kernel treats as local on it (all of `127.0.0.0/8` on loopback,
/// the subnet broadcast of an IPv4 prefix).
fn held_by(link: &Link, addrs: &AddrTable, addr: IpAddr) -> bool {
    if link.addrs.contains(&addr) {
        return addrs.usable(link.ifindex, addr);
    }
    let IpAddr::V4(want) = addr else { return false };
    link.addrs.iter().any(|&a| {
        let (IpAddr::V4(have), Some(info)) = (a, addrs.get(link.ifindex, a)) else { return false };
        let len = u32::from(info.prefix_len.min(32));
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let same_net = u32::from(have) & mask == u32::from(want) & mask;
        let loopback_prefix = link.flags & IFF_LOOPBACK != 0;
        let broadcast = len <= 30 && u32::from(want) | mask == u32::MAX;
        same_net && (loopback_prefix || broadcast)
    })
}

/// Addresses a socket may be bound to without any interface holding them: multicast groups and
/// the limited broadcast. Such sockets are never `address_gone`.
fn needs_no_holder(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_multicast() || v4 == Ipv4Addr::BROADCAST,
        IpAddr::V6(v6) => v6.is_multicast(),
    }
}

/// IPv6 link-local (`fe80::/10`): only meaningful on one interface, named by the bind's scope id,
/// which `inet6_bind()` stores in `sk_bound_dev_if`.
fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The health of `socket` in a netns whose links (with addresses) are `links` and whose address
/// details are `addrs`; `seen_deleted` are deletions seen in that netns (empty for a plain
/// snapshot), used only to name a deleted bound device. Returns `None` for a healthy socket.
///
/// Order: the bound device first (`device_deleted`, `device_down`; a link-local address must be
/// held by that device), then the specific local address (`address_gone`: no interface of the
/// netns holds it). A wildcard socket without a bound device is never stranded: deleting one
/// interface leaves it receiving on the others (IP_PKTINFO only tells the owner which one).
/// Local addresses arrive v4-mapped-as-IPv4 ([`Socket::from_record`]), so a `::ffff:10.0.0.1`
/// bind is matched against IPv4 addresses. `since_unix_ns` is left `None`: the caller knows when.
pub fn health(socket: &Socket, links: &[Link], addrs: &AddrTable, seen_deleted: &[SeenDeletion]) -> Option<Stranded> {
    let local = socket.local_addr;
    let specific = (!local.is_unspecified()).then_some(local);
    let stranded = |reason, link: Option<(IfIndex, Option<String>)>| {
        let (ifindex, ifname) = link.map_or((None, None), |(i, n)| (Some(i), n));
        Some(Stranded { reason, ifindex, ifname, now_ifindex: None, address: specific, since_unix_ns: None })
    };
    if socket.bound_dev_if != 0 {
        let ifindex = IfIndex(socket.bound_dev_if);
        let Some(dev) = links.iter().find(|l| l.ifindex == ifindex) else {
            let name = last_name(seen_deleted, socket.netns, ifindex);
            let mut st = stranded(StrandReason::DeviceDeleted, Some((ifindex, name.map(str::to_string))));
            if let (Some(st), Some(n)) = (st.as_mut(), name) {
                st.now_ifindex = links.iter().find(|l| l.name == n).map(|l| l.ifindex);
            }
            return st;
        };
        if !dev.is_up() {
            return stranded(StrandReason::DeviceDown, Some((ifindex, Some(dev.name.clone()))));
        }
        if let Some(a) = specific.filter(|&a| is_link_local(a)) {
            if !held_by(dev, addrs, a) {
                return stranded(StrandReason::AddressGone, Some((ifindex, Some(dev.name.clone()))));
            }
            return None;
        }
    }
    if let Some(a) = specific {
        if !needs_no_holder(a) && !links.iter().any(|l| held_by(l, addrs, a)) {
            return stranded(StrandReason::AddressGone, None);
        }
        return None;
    }
    None
}

/// The last name `ifindex` had in `netns` among `seen` deletions (the latest one wins).
pub fn last_name(seen: &[SeenDeletion], netns: NetnsIno, ifindex: IfIndex) -> Option<&str> {
    seen.iter().filter(|d| d.netns == netns && d.ifindex == ifindex).max_by_key(|d| d.at_unix_ns).map(|d| d.name.as_str())
}

/// How a waiting thread is tied to a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Blocked in a receive syscall (`read`, `recvfrom`, `recvmsg`, `recvmmsg`) on the socket's fd.
    Recv,
    /// In `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an epoll instance (possibly nested) whose
    /// interest list holds the socket.
    Epoll,
    /// In `poll`/`ppoll` with the socket's fd in its `pollfd` array.
    Poll,
    /// In `select`/`pselect6` with the socket's fd in one of its `fd_set`s.
    Select,
    /// Waiting in a way that could not be tied to one socket (io_uring, a set that changed while
    /// it was read, an fd table that could not be read); `reason` says which.
    Unknown,
}

impl Via {
    /// The snake_case name used in JSON and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Via::Recv => "recv",
            Via::Epoll => "epoll",
            Via::Poll => "poll",
            Via::Select => "select",
            Via::Unknown => "unknown",
        }
    }
}

/// Where a waiter was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaiterSource {
    /// On the socket's own wait queue (`sk->sk_wq->wait`), read by the waiter walk: exact,
    /// whatever ifsock was doing before and whether the fd is still open.
    WaitQueue,
    /// From the `/proc` pass (`/proc/TID/syscall`, fdinfo, the poll/select sets in the task's
    /// memory): the fallback where kallsyms addresses are hidden or the walk was refused.
    Proc,
}

/// One thread waiting on a socket now (`waiters[]` of a socket row):
/// `{pid, tid, comm, syscall, via, fd, epfd}`, plus `fds` (only for a `poll`/`select` whose set
/// could not be read: `null`) and `reason` (only when the tie is uncertain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Waiter {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread command (`/proc/PID/task/TID/stat` comm).
    pub comm: String,
    /// Syscall name (`epoll_wait`, `ppoll`, `pselect6`, `recvmsg`, …).
    pub syscall: &'static str,
    /// How it waits on the socket.
    pub via: Via,
    /// The socket's fd in the waiter's process (for epoll: the `tfd` registered in the
    /// innermost epoll instance); None when unknown.
    pub fd: Option<u32>,
    /// The epoll fd the thread waits in (`epoll` only).
    pub epfd: Option<u32>,
    /// `poll`/`select` only: `Some(None)` (JSON `null`) when the set could not be read from the
    /// task's memory; omitted otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<Option<Vec<u32>>>,
    /// Why the tie is uncertain (unreadable memory, io_uring, set changed between reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where it was found.
    pub source: WaiterSource,
}

/// One row of `sockets --json` (and the `socket` object of watch's `socket_stranded`): the tied
/// socket's fields, then `stranded` (`null` when healthy) and `waiters` (possibly empty).
#[derive(Clone, Debug, Serialize)]
pub struct SocketReport {
    /// The socket and its tie (flattened: today's `sockets --json` fields).
    #[serde(flatten)]
    pub tied: TiedSocket,
    /// Health.
    pub stranded: Option<Stranded>,
    /// Threads waiting on it now.
    pub waiters: Vec<Waiter>,
}

impl SocketReport {
    /// `ok`, or the strand reason (the STATUS column).
    pub fn status(&self) -> &'static str {
        self.stranded.as_ref().map_or("ok", |s| s.reason.name())
    }
}

/// The payload of watch's `socket_stranded` and `socket_recovered` records (the `type` tag is
/// added by the record enum): `{ts_unix_ns, netns, netns_name, reason, ifindex, ifname, now_ifindex, address,
/// cause, socket: {…a sockets --json row…}, waiters: […]}`. For `socket_recovered`, `reason`,
/// `ifindex`, `ifname` and `address` are those it was stranded by.
#[derive(Clone, Debug, Serialize)]
pub struct SocketHealthEvent {
    /// When the change was seen, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// The socket's netns inode.
    pub netns: NetnsIno,
    /// Its name under /run/netns, if any.
    pub netns_name: Option<String>,
    /// Why it is (or was) stranded.
    pub reason: StrandReason,
    /// Interface involved (see [`Stranded::ifindex`]).
    pub ifindex: Option<IfIndex>,
    /// Its name.
    pub ifname: Option<String>,
    /// `device_deleted` only: the ifindex an interface named `ifname` has now (see
    /// [`Stranded::now_ifindex`]).
    pub now_ifindex: Option<IfIndex>,
    /// The socket's specific local address, if any.
    pub address: Option<IpAddr>,
    /// The change that caused it (the watcher's change kind, e.g. `deleted`, `down`,
    /// `address_removed`), when known.
    pub cause: Option<String>,
    /// The socket row (with `stranded` as it is now: `null` after recovery).
    pub socket: SocketReport,
    /// The threads waiting on it (the same list as `socket.waiters`, at top level for
    /// consumers that only read this).
    pub waiters: Vec<Waiter>,
    /// Which socket is still stranded, why, and the next step ([`verdict`]): on every
    /// `socket_still_stranded`, and on a `socket_stranded` whose interface name already has a
    /// new ifindex (deleted and recreated in one burst: no later change will cure it); omitted
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

/// The verdict on a socket still stranded after a change that could have cured it (an
/// interface recreated or up, an address back), with the next step:
/// `python3[15300]/fd3 is still bound to deleted ifindex 3 (uxv0; uxv0 is now ifindex 4):
/// restart it, or `ifsock abort --inode 812``. `None` for a healthy socket.
pub fn verdict(r: &SocketReport) -> Option<String> {
    let st = r.stranded.as_ref()?;
    let s = &r.tied.socket;
    let who = s.owners.first().map_or_else(|| format!("socket inode {} (no owner)", s.inode), |o| format!("{}[{}]/fd{}", o.comm, o.pid, o.fd));
    let abort = format!("`ifsock abort --inode {}`", s.inode);
    Some(match st.reason {
        StrandReason::DeviceDeleted => {
            let i = st.ifindex.map_or_else(|| s.bound_dev_if.to_string(), |i| i.to_string());
            let name = match (&st.ifname, st.now_ifindex) {
                (Some(n), Some(now)) => format!(" ({n}; {n} is now ifindex {now})"),
                (Some(n), None) => format!(" ({n})"),
                _ => String::new(),
            };
            format!("{who} is still bound to deleted ifindex {i}{name}: restart it, or {abort}")
        }
        StrandReason::DeviceDown => {
            let dev = st.ifname.clone().unwrap_or_else(|| format!("ifindex {}", s.bound_dev_if));
            format!("{who} is bound to {dev}, which is still down: `ip link set {dev} up`, or restart it, or {abort}")
        }
        StrandReason::AddressGone => {
            let a = st.address.map_or_else(|| s.local_addr.to_string(), |a| a.to_string());
            format!("{who} is still bound to {a}, which no interface holds: add the address back, or restart it, or {abort}")
        }
    })
}

impl SocketHealthEvent {
    /// Builds the record from what the socket is (or was) stranded by and its fresh report.
    pub fn new(by: &Stranded, socket: SocketReport, ts_unix_ns: u64, netns_name: Option<String>, cause: Option<String>) -> Self {
        SocketHealthEvent {
            ts_unix_ns,
            netns: socket.tied.socket.netns,
            netns_name,
            reason: by.reason,
            ifindex: by.ifindex,
            ifname: by.ifname.clone(),
            now_ifindex: by.now_ifindex,
            address: by.address,
            cause,
            waiters: socket.waiters.clone(),
            // Recreated already (the name has a new ifindex): the stranding is the verdict.
            verdict: if by.reason == StrandReason::DeviceDeleted && by.now_ifindex.is_some() { verdict(&socket) } else { None },
            socket,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, net::Ipv6Addr};

    use ifsock_common::{sock_flags, SockRecord};

    use super::*;
    use crate::model::link::{AddrInfo, IFA_F_DADFAILED, IFA_F_OPTIMISTIC, IFA_F_TENTATIVE, IFF_UP};

    const NS: NetnsIno = NetnsIno(7);

    fn sock(family: u16, protocol: u8, laddr: [u8; 16], bound: u32, pktinfo: bool) -> Socket {
        let rec = SockRecord {
            sk: 1, cookie: 1, ino: 42, netns: NS.0, uid: 0, bound_dev_if: bound, family, protocol,
            state: if protocol == 6 { 10 } else { 7 }, lport: 53, rport: 0,
            flags: if pktinfo { sock_flags::PKTINFO } else { 0 }, laddr, raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        Socket::from_record(&rec)
    }
    fn v4(a: [u8; 4], bound: u32) -> Socket {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&a);
        sock(2, 17, raw, bound, false)
    }
    fn v6(a: Ipv6Addr, bound: u32) -> Socket {
        sock(10, 17, a.octets(), bound, false)
    }
    fn link(i: u32, name: &str, flags: u32, addrs: &[IpAddr]) -> Link {
        Link { ifindex: IfIndex(i), name: name.into(), flags, addrs: addrs.iter().copied().collect::<BTreeSet<_>>() }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn world() -> (Vec<Link>, AddrTable) {
        let links = vec![
            link(1, "lo", IFF_UP | IFF_LOOPBACK, &[ip("127.0.0.1"), ip("::1")]),
            link(5, "veth0", IFF_UP, &[ip("10.78.0.1"), ip("fd00::1"), ip("fe80::1")]),
            link(6, "veth1", 0, &[ip("10.79.0.1")]),
        ];
        let mut t = AddrTable::default();
        t.insert(IfIndex(1), ip("127.0.0.1"), AddrInfo { flags: 0, prefix_len: 8, scope: 254 });
        t.insert(IfIndex(5), ip("10.78.0.1"), AddrInfo { flags: 0, prefix_len: 24, scope: 0 });
        t.insert(IfIndex(5), ip("fe80::1"), AddrInfo { flags: 0, prefix_len: 64, scope: 253 });
        (links, t)
    }
    fn reason(s: &Socket, links: &[Link], t: &AddrTable) -> Option<StrandReason> {
        health(s, links, t, &[]).map(|h| h.reason)
    }

    #[test]
    fn healthy_sockets_on_live_interfaces_are_never_stranded() {
        let (links, t) = world();
        for s in [
            v4([10, 78, 0, 1], 0),
            v4([0, 0, 0, 0], 0),
            v4([0, 0, 0, 0], 5),
            v4([10, 78, 0, 1], 5),
            v4([127, 0, 0, 1], 0),
            v4([127, 0, 0, 53], 0),
            v4([10, 78, 0, 255], 0),
            v4([224, 0, 0, 251], 0),
            v4([255, 255, 255, 255], 0),
            v6(ip6("fd00::1"), 0),
            v6(ip6("::"), 0),
            v6(ip6("::1"), 0),
            v6(ip6("fe80::1"), 5),
            v6(ip6("ff02::fb"), 0),
            v6(ip6("::ffff:10.78.0.1"), 0),
            sock(2, 6, [0; 16], 0, true),
        ] {
            assert_eq!(reason(&s, &links, &t), None, "{s:?}");
        }
        let mut wild = v4([0, 0, 0, 0], 0);
        wild.pktinfo = true;
        assert_eq!(reason(&wild, &links, &t), None, "a snapshot alone never guesses interface_deleted");
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn address_gone_for_ipv4_ipv6_and_v4_mapped() {
        let (links, t) = world();
        let h = health(&v4([10, 78, 0, 2], 0), &links, &t, &[]).unwrap();
        assert_eq!(h, Stranded { reason: StrandReason::AddressGone, ifindex: None, ifname: None, now_ifindex: None, address: Some(ip("10.78.0.2")), since_unix_ns: None });
        assert_eq!(reason(&v6(ip6("fd00::2"), 0), &links, &t), Some(StrandReason::AddressGone));
        let mapped = health(&v6(ip6("::ffff:10.78.0.2"), 0), &links, &t, &[]).unwrap();
        assert_eq!(mapped.address, Some(ip("10.78.0.2")), "v4-mapped is matched and shown as IPv4");
        // TCP listeners are judged the same way.
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[10, 78, 0, 9]);
        assert_eq!(reason(&sock(2, 6, raw, 0, false), &links, &t), Some(StrandReason::AddressGone));
        // A device-bound socket whose (global) address left every interface.
        assert_eq!(reason(&v4([10, 78, 0, 2], 5), &links, &t), Some(StrandReason::AddressGone));
    }

    #[test]
    fn tentative_and_dad_failed_addresses_are_not_held() {
        let (links, mut t) = world();
        for flags in [IFA_F_TENTATIVE, IFA_F_DADFAILED] {
            t.insert(IfIndex(5), ip("fd00::1"), AddrInfo { flags, prefix_len: 64, scope: 0 });
            assert_eq!(reason(&v6(ip6("fd00::1"), 0), &links, &t), Some(StrandReason::AddressGone), "flags {flags:#x}");
        }
        t.insert(IfIndex(5), ip("fd00::1"), AddrInfo { flags: 0x80, prefix_len: 64, scope: 0 });
        assert_eq!(reason(&v6(ip6("fd00::1"), 0), &links, &t), None, "IFA_F_PERMANENT is fine");
        t.insert(IfIndex(5), ip("fd00::1"), AddrInfo { flags: IFA_F_TENTATIVE | IFA_F_OPTIMISTIC, prefix_len: 64, scope: 0 });
        assert_eq!(reason(&v6(ip6("fd00::1"), 0), &links, &t), None, "optimistic DAD addresses are usable");
    }

    #[test]
    fn link_local_is_held_only_by_its_scope_device() {
        let (mut links, t) = world();
        links[2].flags = IFF_UP;
        let h = health(&v6(ip6("fe80::1"), 6), &links, &t, &[]).unwrap();
        assert_eq!((h.reason, h.ifindex, h.ifname.as_deref()), (StrandReason::AddressGone, Some(IfIndex(6)), Some("veth1")));
        links[1].addrs.remove(&ip("fe80::1"));
        assert_eq!(reason(&v6(ip6("fe80::1"), 5), &links, &t), Some(StrandReason::AddressGone));
    }

    #[test]
    fn device_down_and_device_deleted_name_the_device() {
        let (links, t) = world();
        let h = health(&v4([0, 0, 0, 0], 6), &links, &t, &[]).unwrap();
        assert_eq!((h.reason, h.ifindex, h.ifname.as_deref(), h.address), (StrandReason::DeviceDown, Some(IfIndex(6)), Some("veth1"), None));
        let h = health(&v6(ip6("::"), 99), &links, &t, &[]).unwrap();
        assert_eq!((h.reason, h.ifindex, h.ifname), (StrandReason::DeviceDeleted, Some(IfIndex(99)), None));
        assert_eq!(reason(&v6(ip6("fe80::1"), 99), &links, &t), Some(StrandReason::DeviceDeleted));
    }

    #[test]
    fn a_deletion_never_strands_a_wildcard_socket_and_names_a_deleted_bound_device() {
        let (mut links, t) = world();
        let seen = [
            SeenDeletion { netns: NS, ifindex: IfIndex(8), name: "old".into(), at_unix_ns: 1 },
            SeenDeletion { netns: NS, ifindex: IfIndex(9), name: "eth9".into(), at_unix_ns: 2 },
            SeenDeletion { netns: NetnsIno(99), ifindex: IfIndex(10), name: "elsewhere".into(), at_unix_ns: 3 },
        ];
        for pktinfo in [false, true] {
            let mut wild = v4([0, 0, 0, 0], 0);
            wild.pktinfo = pktinfo;
            assert_eq!(health(&wild, &links, &t, &seen), None, "pktinfo {pktinfo}: still receives on the other interfaces");
            let mut six = v6(ip6("::"), 0);
            six.pktinfo = pktinfo;
            assert_eq!(health(&six, &links, &t, &seen), None);
        }
        assert_eq!(health(&v4([10, 78, 0, 1], 0), &links, &t, &seen), None, "address-bound sockets on live addresses stay healthy");
        let h = health(&v4([0, 0, 0, 0], 9), &links, &t, &seen).unwrap();
        assert_eq!((h.reason, h.ifindex, h.ifname.as_deref(), h.now_ifindex), (StrandReason::DeviceDeleted, Some(IfIndex(9)), Some("eth9"), None));
        links.push(link(11, "eth9", IFF_UP, &[]));
        let h = health(&v4([0, 0, 0, 0], 9), &links, &t, &seen).unwrap();
        assert_eq!((h.ifname.as_deref(), h.now_ifindex), (Some("eth9"), Some(IfIndex(11))), "recreated under the same name");
        let h = health(&v4([0, 0, 0, 0], 10), &links, &t, &seen).unwrap();
        assert_eq!(h.ifname, None, "a deletion in another netns names nothing here");
        let v = serde_json::to_value(&h).unwrap();
        assert!(v["now_ifindex"].is_null() && v["ifname"].is_null(), "{v}");
    }

    #[test]
    fn report_status_and_json_shape() {
        let (links, t) = world();
        let s = v4([10, 78, 0, 2], 0);
        let tied = crate::model::tie::each_once(std::slice::from_ref(&s), NS, &links).remove(0);
        let r = SocketReport { stranded: health(&s, &links, &t, &[]), tied, waiters: vec![] };
        assert_eq!(r.status(), "address_gone");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["stranded"]["reason"], "address_gone");
        assert!(v["stranded"]["since_unix_ns"].is_null());
        assert_eq!(v["local_port"], 53);
        assert_eq!(v["waiters"], serde_json::json!([]));
        let w = Waiter { pid: 1, tid: 2, comm: "x".into(), syscall: "ppoll", via: Via::Poll, fd: None, epfd: None, fds: Some(None), reason: Some("EPERM".into()), source: WaiterSource::Proc };
        let v = serde_json::to_value(&w).unwrap();
        assert!(v.get("fds").is_some_and(|f| f.is_null()), "{v}");
        let w = Waiter { fds: None, reason: None, ..w };
        let v = serde_json::to_value(&w).unwrap();
        assert!(v.get("fds").is_none() && v.get("reason").is_none(), "{v}");
    }

    #[test]
    fn a_device_deleted_socket_whose_name_is_back_carries_its_verdict_at_once() {
        let (links, _) = world();
        let s = v4([0, 0, 0, 0], 3);
        let tied = crate::model::tie::each_once(std::slice::from_ref(&s), NS, &links).remove(0);
        let by = |now_ifindex| Stranded { reason: StrandReason::DeviceDeleted, ifindex: Some(IfIndex(3)), ifname: Some("uxv0".into()), now_ifindex, address: None, since_unix_ns: None };
        let report = |b: &Stranded| SocketReport { stranded: Some(b.clone()), tied: tied.clone(), waiters: vec![] };
        // Deleted and recreated in one burst: no later change can cure it, so the stranding says so.
        let b = by(Some(IfIndex(5)));
        let e = SocketHealthEvent::new(&b, report(&b), 1, None, Some("deleted".into()));
        let v = e.verdict.unwrap_or_default();
        assert!(v.contains("is still bound to deleted ifindex 3 (uxv0; uxv0 is now ifindex 5)") && v.contains("`ifsock abort --inode"), "{v}");
        // Only deleted: a recreate may still come (and gets its socket_still_stranded verdict).
        let b = by(None);
        assert_eq!(SocketHealthEvent::new(&b, report(&b), 1, None, None).verdict, None);
    }
}
