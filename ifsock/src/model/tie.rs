//! The tie between a socket and an interface: by device (`SO_BINDTODEVICE`), by one of the
//! interface's addresses, or as a wildcard listener.
use std::net::IpAddr;

use serde::Serialize;

use super::{
    ids::{IfIndex, NetnsIno},
    link::Link,
    socket::{Binding, Socket},
};

/// A socket with how it is tied to one interface (or to none).
#[derive(Clone, Debug, Serialize)]
pub struct TiedSocket {
    /// ifindex of the interface, if tied.
    pub ifindex: Option<IfIndex>,
    /// Name of the interface, if tied.
    pub ifname: Option<String>,
    /// How (`device`, `address`, `wildcard`), or `none`.
    pub binding: Option<Binding>,
    /// Name of `bound_dev_if` when set (None if unknown, e.g. deleted).
    pub bound_dev_name: Option<String>,
    /// The socket.
    #[serde(flatten)]
    pub socket: Socket,
}

/// Sockets tied to one interface (with its addresses) in `netns`, cloned from `sockets`
/// (callers that keep the snapshot; [`Ties`] moves them instead).
pub fn tied_to(
    sockets: &[Socket],
    netns: NetnsIno,
    ifindex: IfIndex,
    name: &str,
    addrs: &[IpAddr],
    links: &[Link],
) -> Vec<TiedSocket> {
    sockets
        .iter()
        .filter(|s| s.binding_to(netns, ifindex, addrs).is_some())
        .cloned()
        .filter_map(|s| tie_to(s, netns, ifindex, name, addrs, links))
        .collect()
}

fn tie_to(s: Socket, netns: NetnsIno, ifindex: IfIndex, name: &str, addrs: &[IpAddr], links: &[Link]) -> Option<TiedSocket> {
    let binding = s.binding_to(netns, ifindex, addrs)?;
    Some(TiedSocket {
        ifindex: Some(ifindex),
        ifname: Some(name.to_string()),
        binding: Some(binding),
        bound_dev_name: bound_name(&s, links, Some((ifindex, name))),
        socket: s,
    })
}

fn bound_name(s: &Socket, links: &[Link], known: Option<(IfIndex, &str)>) -> Option<String> {
    if s.bound_dev_if == 0 {
        return None;
    }
    if let Some((i, n)) = known {
        if i.0 == s.bound_dev_if {
            return Some(n.to_string());
        }
    }
    links.iter().find(|l| l.ifindex.0 == s.bound_dev_if).map(|l| l.name.clone())
}

/// Every socket once, tied to the interface it is most specifically bound to: its device,
/// the interface holding its address, or none; wildcard sockets have no single interface.
/// Clones from `sockets`; [`Ties`] moves them instead.
pub fn each_once(sockets: &[Socket], netns: NetnsIno, links: &[Link]) -> Vec<TiedSocket> {
    let tables = addr_lists(links);
    sockets.iter().filter(|s| s.netns == netns).map(|s| tie_once(s.clone(), netns, links, &tables)).collect()
}

/// How one netns's sockets are tied, decided one socket at a time (for callers that sort many
/// sockets before they need the [`TiedSocket`]s, and so hold each socket once): every socket
/// once ([`each_once`]), or only those tied to one interface ([`tied_to`]).
#[derive(Debug, Clone)]
pub struct Ties {
    netns: NetnsIno,
    links: Vec<Link>,
    addrs: Vec<Vec<IpAddr>>,
    /// `Some`: only sockets tied to this interface (ifindex, name, its addresses).
    only: Option<(IfIndex, String, Vec<IpAddr>)>,
    /// Deleted ifindexes (with their last name, when the journal knows it) whose
    /// device-bound sockets are listed too, under that ifindex: `--iface NAME` for every
    /// ifindex NAME had, `--ifindex N` for a deleted N.
    deleted: Vec<(IfIndex, Option<String>)>,
    /// List only the sockets bound to a `deleted` ifindex (`--ifindex N`, N deleted).
    deleted_only: bool,
}

impl Ties {
    /// Every socket of `netns` once, as [`each_once`].
    pub fn each_once(netns: NetnsIno, links: Vec<Link>) -> Self {
        Self { netns, addrs: addr_lists(&links), links, only: None, deleted: Vec::new(), deleted_only: false }
    }

    /// Only the sockets tied to `ifindex` (named `name`, holding `addrs`), as [`tied_to`].
    pub fn to_interface(netns: NetnsIno, ifindex: IfIndex, name: &str, addrs: &[IpAddr], links: Vec<Link>) -> Self {
        Self { netns, addrs: addr_lists(&links), links, only: Some((ifindex, name.to_string(), addrs.to_vec())), deleted: Vec::new(), deleted_only: false }
    }

    /// Only the sockets still bound (`sk_bound_dev_if`) to one of the `deleted` ifindexes, each
    /// named by its last name when known (`--ifindex N` for a deleted N).
    pub fn to_deleted(netns: NetnsIno, deleted: Vec<(IfIndex, Option<String>)>, links: Vec<Link>) -> Self {
        Self { netns, addrs: addr_lists(&links), links, only: None, deleted, deleted_only: true }
    }

    /// Also lists the sockets still bound to one of the `deleted` ifindexes (an interface
    /// that had the name `--iface` asks for before it was deleted and recreated).
    pub fn and_deleted(mut self, deleted: Vec<(IfIndex, Option<String>)>) -> Self {
        self.deleted = deleted;
        self
    }

    fn deleted_of(&self, s: &Socket) -> Option<&(IfIndex, Option<String>)> {
        (s.netns == self.netns && s.bound_dev_if != 0).then(|| self.deleted.iter().find(|(i, _)| i.0 == s.bound_dev_if)).flatten()
    }

    /// `None` when `s` is not listed; otherwise the ifindex its row will carry (`None`: tied to
    /// no single interface). Equal to the `ifindex` of [`Ties::tie`]'s result.
    pub fn ifindex_of(&self, s: &Socket) -> Option<Option<IfIndex>> {
        if let Some((i, _)) = self.deleted_of(s) {
            return Some(Some(*i));
        }
        if self.deleted_only {
            return None;
        }
        match &self.only {
            Some((ifindex, _, addrs)) => s.binding_to(self.netns, *ifindex, addrs).map(|_| Some(*ifindex)),
            None if s.netns != self.netns => None,
            None => Some(
                self.links
                    .iter()
                    .zip(&self.addrs)
                    .find_map(|(l, a)| match s.binding_to(self.netns, l.ifindex, a)? {
                        Binding::Wildcard => None,
                        _ => Some(l.ifindex),
                    })
                    // Bound to a device no link has now (deleted): its row carries that ifindex.
                    .or((s.bound_dev_if != 0).then_some(IfIndex(s.bound_dev_if))),
            ),
        }
    }

    /// The row of a listed socket ([`Ties::ifindex_of`] is `Some`), moving it.
    pub fn tie(&self, s: Socket) -> Option<TiedSocket> {
        if let Some((i, name)) = self.deleted_of(&s) {
            let (ifindex, ifname) = (*i, name.clone());
            return Some(TiedSocket { ifindex: Some(ifindex), bound_dev_name: ifname.clone(), ifname, binding: Some(Binding::Device), socket: s });
        }
        if self.deleted_only {
            return None;
        }
        match &self.only {
            Some((ifindex, name, addrs)) => tie_to(s, self.netns, *ifindex, name, addrs, &self.links),
            None if s.netns != self.netns => None,
            None => Some(tie_once(s, self.netns, &self.links, &self.addrs)),
        }
    }
}

/// Each link's addresses as a slice, built once per snapshot rather than once per socket and link.
fn addr_lists(links: &[Link]) -> Vec<Vec<IpAddr>> {
    links.iter().map(|l| l.addrs.iter().copied().collect()).collect()
}

fn tie_once(s: Socket, netns: NetnsIno, links: &[Link], addrs: &[Vec<IpAddr>]) -> TiedSocket {
    let tie = links.iter().zip(addrs).find_map(|(l, a)| match s.binding_to(netns, l.ifindex, a)? {
        Binding::Wildcard => None,
        b => Some((l, b)),
    });
    let (ifindex, ifname, binding) = match tie {
        Some((l, b)) => (Some(l.ifindex), Some(l.name.clone()), Some(b)),
        None if s.bound_dev_if == 0 && s.local_addr.is_unspecified() => (None, None, s.binding_to(netns, IfIndex(0), &[])),
        // `SO_BINDTODEVICE` to an ifindex no link has now (deleted): still tied to it by device,
        // under that ifindex (its name is gone with it: `sk_bound_dev_if` is all the kernel keeps).
        None if s.bound_dev_if != 0 => (Some(IfIndex(s.bound_dev_if)), None, Some(Binding::Device)),
        None => (None, None, None),
    };
    TiedSocket { ifindex, ifname, binding, bound_dev_name: bound_name(&s, links, None), socket: s }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, net::Ipv4Addr};

    use ifsock_common::SockRecord;

    use super::*;
    use crate::model::socket::Owner;

    const NS: NetnsIno = NetnsIno(7);

    fn udp(laddr: [u8; 4], bound: u32, port: u16) -> Socket {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&laddr);
        let rec = SockRecord {
            sk: 1, cookie: port as u64, ino: port as u64, netns: NS.0, uid: 0, bound_dev_if: bound, family: 2, protocol: 17,
            state: 7, lport: port, rport: 0, flags: 0, laddr: raw, raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        let mut s = Socket::from_record(&rec);
        s.owners = vec![Owner { pid: 10, comm: "serv".into(), fd: port as u32 }];
        s
    }

    fn link(i: u32, name: &str, addr: [u8; 4]) -> Link {
        Link { ifindex: IfIndex(i), name: name.into(), flags: 0, addrs: BTreeSet::from([IpAddr::V4(Ipv4Addr::from(addr))]) }
    }

    fn json(rows: &[TiedSocket]) -> serde_json::Value {
        serde_json::to_value(rows).unwrap()
    }

    #[test]
    fn deciding_one_socket_at_a_time_ties_exactly_like_borrowing_the_snapshot() {
        let links = [link(2, "a", [10, 1, 0, 1]), link(3, "b", [10, 2, 0, 1])];
        let sockets = vec![udp([10, 1, 0, 1], 0, 1), udp([10, 2, 0, 1], 0, 2), udp([0, 0, 0, 0], 3, 3), udp([0, 0, 0, 0], 0, 4), udp([10, 9, 0, 1], 0, 5), udp([0, 0, 0, 0], 9, 7)];
        let borrowed = each_once(&sockets, NS, &links);
        let ties: Vec<_> = borrowed.iter().map(|t| (t.socket.local_port, t.ifname.clone(), t.binding)).collect();
        assert_eq!(
            ties,
            vec![
                (1, Some("a".into()), Some(Binding::Address)),
                (2, Some("b".into()), Some(Binding::Address)),
                (3, Some("b".into()), Some(Binding::Device)),
                (4, None, Some(Binding::Wildcard)),
                (5, None, None),
                // SO_BINDTODEVICE to ifindex 9, which no link has (deleted): tied by device to it.
                (7, None, Some(Binding::Device)),
            ]
        );
        let lazy = |ties: &Ties, sockets: &[Socket]| -> Vec<TiedSocket> {
            sockets
                .iter()
                .filter_map(|s| {
                    let ifindex = ties.ifindex_of(s)?;
                    let row = ties.tie(s.clone()).expect("listed by ifindex_of");
                    assert_eq!(row.ifindex, ifindex, "the sort key's ifindex is the row's");
                    Some(row)
                })
                .collect()
        };
        assert_eq!(json(&borrowed), json(&lazy(&Ties::each_once(NS, links.to_vec()), &sockets)));
        let mut elsewhere = udp([10, 1, 0, 1], 0, 6);
        elsewhere.netns = NetnsIno(8);
        assert!(Ties::each_once(NS, links.to_vec()).ifindex_of(&elsewhere).is_none(), "another netns's socket is not listed");
        let addrs: Vec<IpAddr> = links[1].addrs.iter().copied().collect();
        let to_b = tied_to(&sockets, NS, IfIndex(3), "b", &addrs, &links);
        assert_eq!(to_b.iter().map(|t| t.socket.local_port).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(to_b[1].bound_dev_name.as_deref(), Some("b"));
        assert_eq!(json(&to_b), json(&lazy(&Ties::to_interface(NS, IfIndex(3), "b", &addrs, links.to_vec()), &sockets)));
    }
}
