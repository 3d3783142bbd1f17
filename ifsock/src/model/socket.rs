//! Sockets as the iterators saw them, their owners, and how a socket is tied to an interface.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ifsock_common::{sock_flags, SockRecord, TaskFileRecord};
use serde::Serialize;

use super::ids::{comm_str, IfIndex, NetnsIno, SockInode};

/// Transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// IPPROTO_TCP
    Tcp,
    /// IPPROTO_UDP
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`: the JSON spelling, which every table, line and metric label uses too.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `device`, `address`, `wildcard`, or `none` for an untied socket: the JSON spelling, which
/// tables and metric labels use too.
pub fn binding_name(b: Option<Binding>) -> &'static str {
    match b {
        Some(Binding::Device) => "device",
        Some(Binding::Address) => "address",
        Some(Binding::Wildcard) => "wildcard",
        None => "none",
    }
}

/// `a.b.c.d:port` or `[v6]:port`: an endpoint as JSON fields (`abort`'s `local`/`remote`) spell it.
pub fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

/// How a socket is tied to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    /// `SO_BINDTODEVICE`: `sk_bound_dev_if` equals the interface's ifindex.
    Device,
    /// Bound to an address currently (or, for a deleted interface, last) on the interface.
    Address,
    /// Bound to 0.0.0.0 / :: without a device: receives on every interface of its netns.
    Wildcard,
}

/// A process holding the socket in its fd table (`iter/task_file`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// Thread-group id.
    pub pid: u32,
    /// Task command (`task_struct.comm`), shared by every owner record of the process.
    pub comm: std::sync::Arc<str>,
    /// File descriptor number.
    pub fd: u32,
}

/// One TCP/UDP socket from `iter/tcp` / `iter/udp`, joined with its owners.
///
/// TCP TIME_WAIT and NEW_SYN_RECV entries are mini sockets (`struct inet_timewait_sock`,
/// `struct request_sock`): only their `struct sock_common` fields are known; they have inode 0,
/// no owners, and zero `rx_queue`/`drops`.
#[derive(Clone, Debug, Serialize)]
pub struct Socket {
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// 4 or 6.
    pub family: u8,
    /// An IPv6 socket whose local (or remote) address is IPv4-mapped (`::ffff:a.b.c.d`): the
    /// address fields show the IPv4 address, matched as IPv4; tables show `[::ffff:a.b.c.d]`
    /// as `ss` does.
    pub v4_mapped: bool,
    /// Local address.
    pub local_addr: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address (unspecified when not connected).
    pub remote_addr: IpAddr,
    /// Remote port (0 when not connected).
    pub remote_port: u16,
    /// State name (`LISTEN`, `ESTABLISHED`, `TIME_WAIT`, `NEW_SYN_RECV`, `UNCONN` for
    /// unconnected UDP, …).
    pub state: &'static str,
    /// Socket inode (0: the kernel socket has no `struct socket`).
    pub inode: SockInode,
    /// Netns inode.
    pub netns: NetnsIno,
    /// Owner uid.
    pub uid: u32,
    /// `sk_bound_dev_if` (0 when not bound to a device).
    pub bound_dev_if: u32,
    /// IP_PKTINFO (IPv4) or IPV6_RECVPKTINFO (IPv6) is set.
    pub pktinfo: bool,
    /// Packets queued in `sk_receive_queue`.
    pub rx_queue: u32,
    /// `sk_drops`.
    pub drops: u32,
    /// Processes holding an fd to it (empty: no fd references it).
    pub owners: Vec<Owner>,
    /// Socket cookie (`bpf_get_socket_cookie()`, `sock_common.skc_cookie`): unique while the
    /// kernel runs, never reused; the same value `ss -e` prints as `sk:` (in hex).
    pub cookie: u64,
    /// Kernel address of the `struct sock` (correlation only; not serialised).
    #[serde(skip)]
    pub sk: u64,
}

const TCP_STATES: [&str; 13] = [
    "UNKNOWN", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV",
];

/// An address from a record: IPv4 in the first 4 bytes for `AF_INET`; v4-mapped IPv6 shown as IPv4.
pub(crate) fn addr(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == 2 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(*raw);
        match v6.to_ipv4_mapped() {
            Some(v4) if !v6.is_unspecified() => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    }
}

/// `::ffff:a.b.c.d` (not `::`, which `to_ipv4_mapped` leaves alone anyway).
fn is_v4_mapped(raw: &[u8; 16]) -> bool {
    Ipv6Addr::from(*raw).to_ipv4_mapped().is_some()
}

impl Socket {
    /// Decodes an iterator record (owners are joined later by [`join_owners`]).
    pub fn from_record(r: &SockRecord) -> Self {
        let protocol = if r.protocol == 6 { Protocol::Tcp } else { Protocol::Udp };
        let state = match (protocol, r.state) {
            (Protocol::Udp, 1) => "ESTABLISHED",
            (Protocol::Udp, _) => "UNCONN",
            (Protocol::Tcp, s) => TCP_STATES.get(s as usize).copied().unwrap_or("UNKNOWN"),
        };
        let pktinfo_flags = sock_flags::PKTINFO | sock_flags::RECVPKTINFO6;
        Socket {
            protocol,
            family: if r.family == 2 { 4 } else { 6 },
            v4_mapped: r.family != 2 && (is_v4_mapped(&r.laddr) || is_v4_mapped(&r.raddr)),
            local_addr: addr(r.family, &r.laddr),
            local_port: r.lport,
            remote_addr: addr(r.family, &r.raddr),
            remote_port: r.rport,
            state,
            inode: SockInode(r.ino),
            netns: NetnsIno(r.netns),
            uid: r.uid,
            bound_dev_if: r.bound_dev_if,
            pktinfo: r.flags & pktinfo_flags != 0,
            rx_queue: r.rx_queue,
            drops: r.drops,
            owners: Vec::new(),
            cookie: r.cookie,
            sk: r.sk,
        }
    }

    /// How this socket is tied to an interface with `ifindex` and `addrs` in netns `netns`, if at all.
    pub fn binding_to(&self, netns: NetnsIno, ifindex: IfIndex, addrs: &[IpAddr]) -> Option<Binding> {
        if self.netns != netns {
            return None;
        }
        if self.bound_dev_if != 0 {
            return (self.bound_dev_if == ifindex.0).then_some(Binding::Device);
        }
        if self.local_addr.is_unspecified() {
            // A TCP socket bound to the wildcard that is not listening is not a receiver.
            let listening = self.protocol == Protocol::Udp || self.state == "LISTEN";
            return listening.then_some(Binding::Wildcard);
        }
        addrs.contains(&self.local_addr).then_some(Binding::Address)
    }
}

/// The socket fds of tasks, as the owner join needs them: (inode, pid, fd, name) in 24 bytes
/// each, built record by record while `iter/task_file` is read ([`SocketFds::push`]), so the
/// 104-byte records are never held (at 100k sockets, 10 MB fewer). One `comm` allocation per
/// process and name rather than per fd (100k sockets of one process were 100k copies of its
/// name); keyed by the raw name too: tasks of one process that do not share an fd table are
/// visited apart and may carry other thread names.
#[derive(Default)]
pub struct SocketFds {
    fds: Vec<(u64, u32, u32, u32)>,
    names: Vec<std::sync::Arc<str>>,
    ids: std::collections::HashMap<(u32, [u8; ifsock_common::COMM_LEN]), u32>,
    /// The last (pid, name) seen and its id: the iterator visits a task's fds together.
    last: Option<((u32, [u8; ifsock_common::COMM_LEN]), u32)>,
}

impl SocketFds {
    /// Keeps `r` when it is a socket fd ([`ifsock_common::file_kind::SOCKET`]).
    pub fn push(&mut self, r: &TaskFileRecord) {
        if r.kind != ifsock_common::file_kind::SOCKET {
            return;
        }
        let key = (r.pid, r.comm);
        let id = match self.last {
            Some((k, id)) if k == key => id,
            _ => {
                let next = self.names.len() as u32;
                let id = *self.ids.entry(key).or_insert(next);
                if id == next {
                    self.names.push(comm_str(&r.comm).into());
                }
                self.last = Some((key, id));
                id
            }
        };
        self.fds.push((r.ino, r.pid, r.fd, id));
    }

    /// The socket fds among `records`.
    pub fn from_records(records: &[TaskFileRecord]) -> Self {
        let mut out = SocketFds::default();
        records.iter().for_each(|r| out.push(r));
        out
    }

    /// Number of socket fds kept.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// True when no socket fd was kept.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

/// Attaches owners to sockets by socket inode, from the socket fds of `iter/task_file`.
/// Owners come sorted by pid, then fd; each socket's list is allocated at its size.
pub fn join_owners(sockets: &mut [Socket], fds: SocketFds) {
    // The fds sorted by (inode, pid, fd) instead of a hash map of owner lists: at 100k sockets
    // the map's table and its lists (each allocated for four owners by `push`) were ~14 MB at
    // the command's peak.
    let SocketFds { fds: mut sorted, names, .. } = fds;
    sorted.sort_unstable();
    for s in sockets.iter_mut().filter(|s| s.inode.0 != 0) {
        let start = sorted.partition_point(|e| e.0 < s.inode.0);
        let held = sorted[start..].iter().take_while(|e| e.0 == s.inode.0);
        let n = held.clone().count();
        if n == 0 {
            continue;
        }
        let mut owners = Vec::with_capacity(n);
        owners.extend(held.map(|&(_, pid, fd, id)| Owner { pid, comm: names[id as usize].clone(), fd }));
        s.owners = owners;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(laddr: [u8; 4], bound: u32) -> Socket {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&laddr);
        let rec = SockRecord {
            sk: 1, cookie: 9, ino: 42, netns: 7, uid: 0, bound_dev_if: bound, family: 2, protocol: 17, state: 7,
            lport: 5000, rport: 0, flags: sock_flags::PKTINFO, laddr: raw, raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        Socket::from_record(&rec)
    }

    #[test]
    fn binding_kinds_follow_device_then_address_then_wildcard() {
        let addrs = [IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1))];
        let ns = NetnsIno(7);
        assert_eq!(udp([10, 9, 0, 1], 0).binding_to(ns, IfIndex(5), &addrs), Some(Binding::Address));
        assert_eq!(udp([0, 0, 0, 0], 5).binding_to(ns, IfIndex(5), &addrs), Some(Binding::Device));
        assert_eq!(udp([0, 0, 0, 0], 6).binding_to(ns, IfIndex(5), &addrs), None);
        assert_eq!(udp([0, 0, 0, 0], 0).binding_to(ns, IfIndex(5), &addrs), Some(Binding::Wildcard));
        assert_eq!(udp([10, 9, 0, 2], 0).binding_to(ns, IfIndex(5), &addrs), None);
        assert_eq!(udp([10, 9, 0, 1], 0).binding_to(NetnsIno(8), IfIndex(5), &addrs), None);
        assert!(udp([0, 0, 0, 0], 0).pktinfo);
    }

    #[test]
    fn v4_mapped_tcp6_keeps_family_6_and_matches_as_ipv4() {
        let mut laddr = [0u8; 16];
        laddr[10..12].copy_from_slice(&[0xff, 0xff]);
        laddr[12..].copy_from_slice(&[10, 253, 0, 1]);
        let rec = SockRecord {
            sk: 1, cookie: 0, ino: 42, netns: 7, uid: 0, bound_dev_if: 0, family: 10, protocol: 6, state: 10,
            lport: 8003, rport: 0, flags: 0, laddr, raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        let s = Socket::from_record(&rec);
        assert_eq!((s.family, s.v4_mapped), (6, true));
        assert_eq!(s.local_addr, IpAddr::V4(Ipv4Addr::new(10, 253, 0, 1)));
        let v6 = Socket::from_record(&SockRecord { laddr: [0; 16], ..rec });
        assert!(!v6.v4_mapped, "the wildcard :: is not v4-mapped");
        assert!(!udp([10, 9, 0, 1], 0).v4_mapped);
    }

    #[test]
    fn tcp_mini_sockets_keep_their_state_and_have_no_inode() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[127, 0, 0, 1]);
        let tw = SockRecord {
            sk: 2, cookie: 77, ino: 0, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 6, state: 6,
            lport: 43296, rport: 8020, flags: sock_flags::NO_SOCKET | sock_flags::MINI, laddr: raw, raddr: raw,
            rx_queue: 0, drops: 0,
        };
        let s = Socket::from_record(&tw);
        assert_eq!((s.state, s.inode, s.cookie, s.protocol), ("TIME_WAIT", SockInode(0), 77, Protocol::Tcp));
        let syn = Socket::from_record(&SockRecord { state: 12, ..tw });
        assert_eq!(syn.state, "NEW_SYN_RECV");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["cookie"], 77);
        assert_eq!(json["state"], "TIME_WAIT");
    }

    #[test]
    fn owners_join_by_inode() {
        let mut socks = vec![udp([0, 0, 0, 0], 0)];
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"serv");
        let f = TaskFileRecord {
            kind: ifsock_common::file_kind::SOCKET, pid: 10, tid: 10, fd: 3, ino: 42, comm, netns: 7,
            tun_ifindex: 0, tun_name: [0; 16], tun_flags: 0, tun_queue: 0, tun_detached: 0, tun_backlog: 0,
            tun_ring_size: 0, tun_numqueues: 0, tun_numdisabled: 0, tun_owner: 0, tun_group: 0, tun_netns: 0,
        };
        join_owners(&mut socks, SocketFds::from_records(&[f]));
        assert_eq!(socks[0].owners, vec![Owner { pid: 10, comm: "serv".into(), fd: 3 }]);
    }

    #[test]
    fn owners_are_sorted_by_pid_then_fd_sized_exactly_and_share_one_name_per_process() {
        let name = |n: &[u8]| {
            let mut comm = [0u8; 16];
            comm[..n.len()].copy_from_slice(n);
            comm
        };
        let file = |pid: u32, fd: u32, ino: u64, comm: [u8; 16], kind: u32| TaskFileRecord {
            kind, pid, tid: pid, fd, ino, comm, netns: 7, tun_ifindex: 0, tun_name: [0; 16], tun_flags: 0, tun_queue: 0,
            tun_detached: 0, tun_backlog: 0, tun_ring_size: 0, tun_numqueues: 0, tun_numdisabled: 0, tun_owner: 0, tun_group: 0,
            tun_netns: 0,
        };
        let sock = ifsock_common::file_kind::SOCKET;
        let mut other = udp([0, 0, 0, 0], 0);
        other.inode = SockInode(43);
        let mut socks = vec![udp([0, 0, 0, 0], 0), other, udp([0, 0, 0, 0], 0)];
        socks[2].inode = SockInode(0); // a mini socket: no owners
        let files = [
            file(20, 9, 42, name(b"b"), sock),
            file(10, 5, 42, name(b"a"), sock),
            file(10, 4, 42, name(b"a"), sock),
            file(10, 6, 43, name(b"a"), sock),
            file(10, 7, 42, name(b"a"), ifsock_common::file_kind::TUN),
            file(30, 1, 0, name(b"c"), sock),
        ];
        join_owners(&mut socks, SocketFds::from_records(&files));
        let fds: Vec<(u32, &str, u32)> = socks[0].owners.iter().map(|o| (o.pid, &*o.comm, o.fd)).collect();
        assert_eq!(fds, vec![(10, "a", 4), (10, "a", 5), (20, "b", 9)], "socket fds only, by pid then fd");
        assert_eq!(socks[0].owners.capacity(), 3);
        assert_eq!(socks[1].owners.iter().map(|o| o.fd).collect::<Vec<_>>(), vec![6]);
        assert!(std::sync::Arc::ptr_eq(&socks[0].owners[0].comm, &socks[1].owners[0].comm), "one name per process");
        assert!(socks[2].owners.is_empty(), "inode 0 is never joined");
    }
}
