//! `sockets`: the join of each netns's socket snapshot with its links, in table order, each
//! row judged (stranded or not) and given its waiters. No I/O: the view hands in what it read
//! per netns and a waiter index.
//!
//! Memory: each netns's sockets are held once; the rows are sorted by key alone, and a socket
//! is moved into its row only when that row is produced (at 100k sockets, holding every row
//! as well as every socket was ~20 MB more, and the sort moved 192-byte rows).
use std::net::IpAddr;

use crate::{
    kernel::waiters::WaiterIndex,
    model::{
        ids::{IfIndex, NetnsIno, SockInode},
        link::{AddrTable, Link},
        socket::Socket,
        stranded::{health, SeenDeletion, SocketReport},
        tie::Ties,
    },
};

/// The order of `sockets` rows: netns, ifindex (untied first), protocol, local port and
/// address, inode, cookie (unique per socket).
type RowKey = (NetnsIno, Option<IfIndex>, u8, u16, IpAddr, SockInode, u64);

fn row_key(s: &Socket, ifindex: Option<IfIndex>) -> RowKey {
    (s.netns, ifindex, s.protocol as u8, s.local_port, s.local_addr, s.inode, s.cookie)
}

/// The interface `--iface NAME` or `--ifindex N` names among `links`, if any.
pub fn target<'a>(links: &'a [Link], iface: Option<&str>, ifindex: Option<u32>) -> Option<&'a Link> {
    match (iface, ifindex) {
        (Some(name), _) => links.iter().find(|l| l.name == name),
        (None, Some(i)) => links.iter().find(|l| l.ifindex == IfIndex(i)),
        (None, None) => None,
    }
}

/// The rows of every netns added so far, keyed for the table order.
#[derive(Default)]
pub struct Join {
    held: Vec<(Ties, Vec<Option<Socket>>)>,
    keys: Vec<(RowKey, u32, u32)>,
    tables: Vec<(NetnsIno, Vec<Link>, AddrTable)>,
    /// Deletions read from the journal: they name the ifindex of a `device_deleted` socket.
    seen: Vec<SeenDeletion>,
}

impl Join {
    /// Adds one netns: its sockets as `ties` ties them (`None`: the netns has no row, e.g.
    /// `--iface` names no interface there), and the links and addresses read *after* the
    /// sockets (a socket bound to an address the later dump lacks lost it: stranded).
    pub fn add(&mut self, netns: NetnsIno, ties: Option<Ties>, sockets: Vec<Socket>, links: Vec<Link>, addrs: AddrTable) {
        if let Some(ties) = ties {
            let space = self.held.len() as u32;
            for (i, s) in sockets.iter().enumerate() {
                if let Some(ifindex) = ties.ifindex_of(s) {
                    self.keys.push((row_key(s, ifindex), space, i as u32));
                }
            }
            self.held.push((ties, sockets.into_iter().map(Some).collect()));
        }
        self.tables.push((netns, links, addrs));
    }

    /// Adds deletions the journal recorded (any netns), to name deleted bound devices.
    pub fn add_deletions(&mut self, seen: Vec<SeenDeletion>) {
        self.seen.extend(seen);
    }

    /// No row at all (then no waiter pass is worth taking).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The rows in table order, each judged against its netns's links and addresses and given
    /// its waiters from `waiters`; only stranded ones with `stranded_only`.
    pub fn into_reports(mut self, waiters: &WaiterIndex, stranded_only: bool) -> impl Iterator<Item = SocketReport> + '_ {
        // Unstable (no merge buffer) on a key that is unique per socket, so the order is still
        // the same from run to run.
        self.keys.sort_unstable_by_key(|k| k.0);
        let Join { mut held, keys, tables, seen } = self;
        let empty = AddrTable::default();
        keys.into_iter()
            .filter_map(move |(_, space, i)| {
                let (ties, sockets) = held.get_mut(space as usize)?;
                ties.tie(sockets.get_mut(i as usize)?.take()?)
            })
            .map(move |tied| {
                let (links, addrs) = tables.iter().find(|(ino, _, _)| *ino == tied.socket.netns).map_or((&[][..], &empty), |(_, l, a)| (&l[..], a));
                let stranded = health(&tied.socket, links, addrs, &seen);
                waiters.report(tied, stranded)
            })
            .filter(move |r| !stranded_only || r.stranded.is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use ifsock_common::SockRecord;

    use super::*;
    use crate::model::{link::IFF_UP, socket::Binding};

    fn sock(netns: u32, ino: u64, laddr: [u8; 4], port: u16, bound: u32, protocol: u8) -> Socket {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&laddr);
        Socket::from_record(&SockRecord {
            sk: ino, cookie: ino, ino, netns, uid: 0, bound_dev_if: bound, family: 2, protocol, state: 7,
            lport: port, rport: 0, flags: 0, laddr: raw, raddr: [0; 16], rx_queue: 0, drops: 0,
        })
    }

    fn link(ifindex: u32, name: &str, up: bool, addr: Option<&str>) -> Link {
        let addrs: BTreeSet<IpAddr> = addr.map(|a| a.parse().unwrap()).into_iter().collect();
        Link { ifindex: IfIndex(ifindex), name: name.into(), flags: if up { IFF_UP } else { 0 }, addrs }
    }

    fn links() -> Vec<Link> {
        vec![link(1, "lo", true, Some("127.0.0.1")), link(5, "veth0", false, Some("10.78.0.1"))]
    }

    #[test]
    fn rows_come_in_netns_ifindex_protocol_port_order_with_untied_sockets_first() {
        let mut j = Join::default();
        for ns in [9u32, 7] {
            let sockets = vec![
                sock(ns, u64::from(ns) * 10 + 1, [10, 78, 0, 1], 53, 0, 17),
                sock(ns, u64::from(ns) * 10 + 2, [0, 0, 0, 0], 68, 0, 17),
                sock(ns, u64::from(ns) * 10 + 3, [127, 0, 0, 1], 80, 0, 6),
                sock(ns, u64::from(ns) * 10 + 4, [10, 78, 0, 1], 22, 0, 6),
            ];
            j.add(NetnsIno(ns), Some(Ties::each_once(NetnsIno(ns), links())), sockets, links(), AddrTable::default());
        }
        assert!(!j.is_empty());
        let rows: Vec<_> = j.into_reports(&WaiterIndex::default(), false).map(|r| (r.tied.socket.netns.0, r.tied.ifindex.map(|i| i.0), r.tied.socket.local_port)).collect();
        assert_eq!(
            rows,
            vec![(7, None, 68), (7, Some(1), 80), (7, Some(5), 22), (7, Some(5), 53), (9, None, 68), (9, Some(1), 80), (9, Some(5), 22), (9, Some(5), 53)],
            "tcp (6) before udp (17) on one interface"
        );
    }

    #[test]
    fn an_interface_filter_keeps_its_sockets_and_stranded_only_keeps_the_stranded() {
        let l = links();
        let veth = target(&l, Some("veth0"), None).unwrap();
        assert_eq!(target(&l, None, Some(1)).map(|l| l.name.as_str()), Some("lo"));
        assert!(target(&l, Some("eth9"), None).is_none());
        let ties = Ties::to_interface(NetnsIno(7), veth.ifindex, &veth.name, &veth.addrs.iter().copied().collect::<Vec<_>>(), l.clone());
        let sockets = vec![sock(7, 1, [10, 78, 0, 1], 53, 0, 17), sock(7, 2, [127, 0, 0, 1], 80, 0, 6), sock(7, 3, [0, 0, 0, 0], 67, 5, 17)];
        let mut j = Join::default();
        j.add(NetnsIno(7), Some(ties), sockets.clone(), l.clone(), AddrTable::default());
        let rows: Vec<_> = j.into_reports(&WaiterIndex::default(), false).collect();
        let got: Vec<_> = rows.iter().map(|r| (r.tied.socket.inode.0, r.tied.binding)).collect();
        assert_eq!(got, vec![(1, Some(Binding::Address)), (3, Some(Binding::Device))], "the lo socket is not veth0's");
        // veth0 is down: its device-bound socket is stranded; its address is still there.
        let judged: Vec<_> = rows.iter().map(|r| r.stranded.as_ref().map(|s| s.reason.name())).collect();
        assert_eq!(judged, vec![None, Some("device_down")]);

        let mut j = Join::default();
        let mut all = sockets;
        all.push(sock(7, 4, [10, 99, 0, 1], 53, 0, 17));
        j.add(NetnsIno(7), Some(Ties::each_once(NetnsIno(7), l.clone())), all, l, AddrTable::default());
        let stranded: Vec<_> = j.into_reports(&WaiterIndex::default(), true).map(|r| (r.tied.socket.inode.0, r.stranded.map(|s| s.reason.name()))).collect();
        assert_eq!(stranded, vec![(4, Some("address_gone")), (3, Some("device_down"))], "the address no interface holds is untied, so first");
    }

    #[test]
    fn a_deleted_ifindex_lists_only_its_bound_sockets_named_from_the_journal() {
        let l = vec![link(1, "lo", true, Some("127.0.0.1")), link(9, "veth0", true, Some("10.78.0.1"))];
        // veth0 was ifindex 5, deleted and recreated as 9.
        let sockets = vec![sock(7, 1, [0, 0, 0, 0], 53, 5, 17), sock(7, 2, [0, 0, 0, 0], 54, 0, 17), sock(7, 3, [10, 78, 0, 1], 55, 0, 17), sock(7, 4, [0, 0, 0, 0], 56, 6, 17)];
        let seen = vec![SeenDeletion { netns: NetnsIno(7), ifindex: IfIndex(5), name: "veth0".into(), at_unix_ns: 1 }];
        let mut j = Join::default();
        j.add(NetnsIno(7), Some(Ties::to_deleted(NetnsIno(7), vec![(IfIndex(5), Some("veth0".into()))], l.clone())), sockets.clone(), l.clone(), AddrTable::default());
        j.add_deletions(seen.clone());
        let rows: Vec<_> = j.into_reports(&WaiterIndex::default(), false).collect();
        assert_eq!(rows.iter().map(|r| r.tied.socket.inode.0).collect::<Vec<_>>(), vec![1], "only the socket bound to the deleted ifindex");
        let st = rows[0].stranded.as_ref().unwrap();
        assert_eq!((st.reason.name(), st.ifindex, st.ifname.as_deref(), st.now_ifindex), ("device_deleted", Some(IfIndex(5)), Some("veth0"), Some(IfIndex(9))));
        assert_eq!((rows[0].tied.ifindex, rows[0].tied.ifname.as_deref()), (Some(IfIndex(5)), Some("veth0")));
        // --iface veth0: the live interface's sockets and the one bound to its old ifindex.
        let veth = target(&l, Some("veth0"), None).unwrap();
        let ties = Ties::to_interface(NetnsIno(7), veth.ifindex, &veth.name, &veth.addrs.iter().copied().collect::<Vec<_>>(), l.clone()).and_deleted(vec![(IfIndex(5), Some("veth0".into()))]);
        let mut j = Join::default();
        j.add(NetnsIno(7), Some(ties), sockets, l.clone(), AddrTable::default());
        j.add_deletions(seen);
        let mut got: Vec<_> = j.into_reports(&WaiterIndex::default(), true).map(|r| r.tied.socket.inode.0).collect();
        got.sort();
        assert_eq!(got, vec![1], "--stranded --iface veth0 selects the dead one");
    }

    #[test]
    fn a_netns_without_ties_adds_no_row() {
        let mut j = Join::default();
        j.add(NetnsIno(7), None, vec![sock(7, 1, [127, 0, 0, 1], 53, 0, 17)], links(), AddrTable::default());
        assert!(j.is_empty());
        assert_eq!(j.into_reports(&WaiterIndex::default(), false).count(), 0);
    }
}
