//! The `sockets` table (its JSON is [`crate::model::stranded::SocketReport`] as serde writes it).
use std::collections::HashMap;

use anyhow::Result;

use super::fmt;
use crate::model::{ids::NetnsIno, stranded::SocketReport, tie::TiedSocket};

/// What a `sockets` run searched: said in the summary and when nothing matched.
#[derive(Clone, Debug, Default)]
pub struct Searched {
    /// Namespaces searched by inode, with the name under /run/netns when there is one.
    pub netns: Vec<(NetnsIno, Option<String>)>,
    /// The filters given, as typed (`--iface eth0`, `--stranded`).
    pub filters: Vec<String>,
}

impl Searched {
    /// `netns 4026531833 (blue)`, or `3 netns` when more than one.
    pub fn scope(&self) -> String {
        match self.netns.as_slice() {
            [(ino, Some(name))] => format!("netns {name} ({ino})"),
            [(ino, None)] => format!("netns {ino}"),
            many => format!("{} netns", many.len()),
        }
    }

    /// The netns column's text: the name when there is one, else the inode.
    fn netns_label(&self, ino: NetnsIno) -> String {
        let names: HashMap<NetnsIno, &String> = self.netns.iter().filter_map(|(i, n)| n.as_ref().map(|n| (*i, n))).collect();
        names.get(&ino).map_or_else(|| ino.to_string(), |n| (*n).clone())
    }
}

/// Prints socket reports: a table, then a summary (`7 sockets, 1 stranded in netns blue
/// (4026532000)`); or, when there are none, `no sockets found in … (filters: …)` instead of a
/// bare header.
///
/// By default the table fits 120 columns ([`super::WIDTH`]): NETNS is the name when there is
/// one (and only shown when more than one netns was searched; the summary names it), IFACE the name (`ifindex N` without one), IFINDEX and PKTINFO are left out, OWNERS and
/// WAITERS show the first and a count (`unbound[12]/fd3,…+2`), and the widest of NETNS, IFACE,
/// LOCAL, REMOTE, OWNERS and WAITERS are cut with `…` if still too wide (addresses in the
/// middle, so that the port stays). `--wide` prints every
/// column whole ([`WIDE_HEADER`], the NETNS inode, then STATUS and WAITERS).
///
/// # Errors
/// Writing to stdout failed (see [`super::out`]).
pub fn table(rows: &[SocketReport], searched: &Searched) -> Result<()> {
    if rows.is_empty() {
        return super::line(&none_found(searched));
    }
    if super::wide() {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let mut c = cells(&r.tied);
                c.push(super::health::status(r));
                c.push(super::health::waiters(&r.waiters));
                c
            })
            .collect();
        let mut header = WIDE_HEADER.to_vec();
        header.extend(["STATUS", "WAITERS"]);
        let alert = header.len() - 2;
        super::table_fit(&header, &cells, &super::Fit { shrink: &[], middle: &[], alert: Some(alert) })?;
    } else {
        // One netns: it is named in the summary, not on every row.
        let skip = usize::from(searched.netns.len() <= 1);
        let cells: Vec<Vec<String>> = rows.iter().map(|r| narrow_cells(r, searched).split_off(skip)).collect();
        let shrink: Vec<(usize, usize)> = SHRINK.iter().filter(|(i, _)| *i >= skip).map(|&(i, keep)| (i - skip, keep)).collect();
        let fit = super::Fit { shrink: &shrink, middle: &[4 - skip, 5 - skip], alert: Some(8 - skip) };
        super::table_fit(&HEADER[skip..], &cells, &fit)?;
    }
    super::line(&summary(rows, searched))
}

/// `7 sockets, 1 stranded in netns blue (4026532000)`.
pub fn summary(rows: &[SocketReport], searched: &Searched) -> String {
    let stranded = rows.iter().filter(|r| r.stranded.is_some()).count();
    format!("{}, {stranded} stranded in {}", super::count(rows.len(), "socket", "sockets"), searched.scope())
}

/// `no sockets found in netns 4026531833 (filters: --iface eth0, --stranded)`.
pub fn none_found(searched: &Searched) -> String {
    let filters = if searched.filters.is_empty() { String::new() } else { format!(" (filters: {})", searched.filters.join(", ")) };
    format!("no sockets found in {}{filters}", searched.scope())
}

/// The columns of the default (120-column) `sockets` table.
pub const HEADER: [&str; 11] = ["NETNS", "IFACE", "BINDING", "PROTO", "LOCAL", "REMOTE", "STATE", "INODE", "STATUS", "OWNERS", "WAITERS"];

/// The columns cut to fit, least needed first, with the width each keeps as long as possible:
/// an IPv4 or v4-mapped endpoint (`[::ffff:255.255.255.255]:65535`, 30) stays whole while
/// waiters, owners and names are cut.
const SHRINK: [(usize, usize); 6] = [(10, 16), (9, 16), (0, 12), (1, 15), (5, 22), (4, 30)];

/// One row of the default table ([`HEADER`]).
fn narrow_cells(r: &SocketReport, searched: &Searched) -> Vec<String> {
    let t = &r.tied;
    let s = &t.socket;
    let iface = match (&t.ifname, t.ifindex) {
        (Some(n), _) => n.clone(),
        (None, Some(i)) => format!("ifindex {i}"),
        (None, None) => "-".into(),
    };
    let waiters: Vec<String> = r.waiters.iter().map(|w| super::health::waiters(std::slice::from_ref(w))).collect();
    vec![
        searched.netns_label(s.netns),
        iface,
        fmt::binding(t.binding).to_string(),
        fmt::proto_family(s),
        fmt::local(s),
        fmt::endpoint(&s.remote_addr, s.v4_mapped, s.remote_port),
        s.state.to_string(),
        s.inode.to_string(),
        super::health::status(r),
        first_and_count(&s.owners.iter().map(fmt::owner).collect::<Vec<_>>()),
        first_and_count(&waiters),
    ]
}

/// The first item, then `,…+N` for the N others: `unbound[12]/fd3,…+2`; `-` when empty.
pub fn first_and_count(items: &[String]) -> String {
    match items {
        [] => "-".into(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first},…+{}", rest.len()),
    }
}

/// The socket columns of the `--wide` table.
pub const WIDE_HEADER: [&str; 11] = ["NETNS", "IFINDEX", "IFACE", "BINDING", "PROTO", "LOCAL", "REMOTE", "STATE", "INODE", "PKTINFO", "OWNERS"];

/// The socket columns of one tied socket, as `--wide` prints them ([`WIDE_HEADER`]).
pub fn cells(r: &TiedSocket) -> Vec<String> {
    let s = &r.socket;
    let owners = fmt::owners(&s.owners, "-");
    vec![
        s.netns.to_string(),
        r.ifindex.map_or("-".into(), |i| i.to_string()),
        r.ifname.clone().unwrap_or_else(|| "-".into()),
        fmt::binding(r.binding).to_string(),
        fmt::proto_family(s),
        fmt::local(s),
        fmt::endpoint(&s.remote_addr, s.v4_mapped, s.remote_port),
        s.state.to_string(),
        s.inode.to_string(),
        if s.pktinfo { "yes".into() } else { "no".into() },
        owners,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        ids::IfIndex,
        socket::{Binding, Owner, Socket},
        stranded::{StrandReason, Stranded},
    };
    use ifsock_common::SockRecord;

    fn report(ino: u64, port: u16, owners: usize, stranded: bool) -> SocketReport {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[10, 1, 0, 1]);
        let rec = SockRecord {
            sk: 1, cookie: ino, ino, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 17,
            state: 7, lport: port, rport: 0, flags: 0, laddr: raw, raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        let mut socket = Socket::from_record(&rec);
        socket.owners = (0..owners).map(|fd| Owner { pid: 10, comm: "unbound".into(), fd: 3 + fd as u32 }).collect();
        let tied = TiedSocket { ifindex: Some(IfIndex(2)), ifname: Some("veth0".into()), binding: Some(Binding::Address), bound_dev_name: None, socket };
        let stranded = stranded.then(|| Stranded { reason: StrandReason::AddressGone, ifindex: Some(IfIndex(2)), ifname: Some("veth0".into()), address: None, since_unix_ns: None, now_ifindex: None });
        SocketReport { tied, stranded, waiters: Vec::new() }
    }

    #[test]
    fn one_netns_is_named_in_the_summary_owners_show_the_first_and_a_count() {
        let searched = Searched { netns: vec![(NetnsIno(7), Some("blue".into()))], filters: vec![] };
        let rows = [report(100, 53, 3, false), report(101, 54, 1, true)];
        assert_eq!(summary(&rows, &searched), "2 sockets, 1 stranded in netns blue (7)");
        let cells = narrow_cells(&rows[0], &searched);
        assert_eq!(cells.len(), HEADER.len());
        assert_eq!(cells, ["blue", "veth0", "address", "udp4", "10.1.0.1:53", "0.0.0.0:0", "UNCONN", "100", "ok", "unbound[10]/fd3,…+2", "-"]);
        assert_eq!(narrow_cells(&rows[1], &searched)[8], "address_gone");
        assert_eq!(first_and_count(&[]), "-");
        let none = Searched { netns: vec![(NetnsIno(7), None)], filters: vec!["--iface eth0".into(), "--stranded".into()] };
        assert_eq!(none_found(&none), "no sockets found in netns 7 (filters: --iface eth0, --stranded)");
        let many = Searched { netns: vec![(NetnsIno(7), None), (NetnsIno(8), None)], filters: vec![] };
        assert_eq!(none_found(&many), "no sockets found in 2 netns");
        // The wide cells are today's columns, one per WIDE_HEADER entry.
        assert_eq!(cells_len(&rows[0]), WIDE_HEADER.len());
    }

    fn cells_len(r: &SocketReport) -> usize {
        cells(&r.tied).len()
    }
}
