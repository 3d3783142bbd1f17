//! `ifsock sockets`: which sockets are tied to which interface, with owners.
use std::net::IpAddr;

use anyhow::{bail, Result};

use crate::{
    args::SocketsArgs,
    kernel::{netlink, waiters::WaiterIndex},
    model::{
        link::{AddrTable, Link},
        stranded::{health, SocketReport},
        ids::{NetnsIno, SockInode},
        socket::Socket,
        tie::Ties,
    },
    probes::snapshot,
    render::{self, json_line},
};
use crate::{
    kernel::netns::{self, NetnsHandle},
    model::ids::IfIndex,
    probes::Probes,
};

/// Runs `sockets`.
///
/// # Errors
/// Unknown interface (in every namespace searched), or probe/netlink failures.
pub async fn run(args: SocketsArgs) -> Result<()> {
    let mut probes = Probes::load_for_snapshots()?;
    let spaces: Vec<Option<NetnsHandle>> =
        if args.all_netns { netns::all().into_iter().map(Some).collect() } else { vec![None] };
    let own = netns::current_ino()?;
    // Each netns's sockets, held once: the rows are sorted by key alone, and a socket is moved
    // into its row only when that row is written (at 100k sockets, holding every row as well
    // as every socket was ~20 MB more, and the sort moved 192-byte rows).
    let mut held: Vec<(Ties, Vec<Option<Socket>>)> = Vec::new();
    let mut keys: Vec<(RowKey, u32, u32)> = Vec::new();
    let mut found_iface = false;
    let mut addr_tables: Vec<(crate::model::ids::NetnsIno, Vec<Link>, AddrTable)> = Vec::new();
    for ns in &spaces {
        let ino = ns.as_ref().map_or(own, |h| h.ino);
        let conn = netlink::connect_in(ns.as_ref())?;
        let filtered = args.iface.is_some() || args.ifindex.is_some();
        let sockets = if filtered {
            // The interface and its addresses are needed before the snapshot, for the filter
            // in the kernel; the links are dumped again after it (below). A socket bound to an
            // address added between the two dumps is missed: the same as if it had been bound
            // after the snapshot.
            let first = netlink::dump_links(&conn).await?;
            let Some(link) = target(&first, &args) else { continue };
            let addrs: Vec<IpAddr> = link.addrs.iter().copied().collect();
            snapshot::sockets_maybe_tied(&mut probes, ns.as_ref(), link.ifindex, &addrs)?
        } else {
            snapshot::sockets(&mut probes, ns.as_ref())?
        };
        // Sockets before links: a socket seen bound to an address that the later dump does not
        // hold lost it after the bind (stranded). The other order misjudges a socket bound
        // between the two reads to an address that just finished DAD.
        let (links, addrs) = netlink::dump_links_and_addrs(&conn).await?;
        let ties = match target(&links, &args) {
            Some(link) => {
                found_iface = true;
                let link_addrs: Vec<_> = link.addrs.iter().copied().collect();
                Some(Ties::to_interface(ino, link.ifindex, &link.name, &link_addrs, links.clone()))
            }
            None if !filtered => Some(Ties::each_once(ino, links.clone())),
            None => None,
        };
        if let Some(ties) = ties {
            let space = held.len() as u32;
            for (i, s) in sockets.iter().enumerate() {
                if let Some(ifindex) = ties.ifindex_of(s) {
                    keys.push((row_key(s, ifindex), space, i as u32));
                }
            }
            held.push((ties, sockets.into_iter().map(Some).collect()));
        }
        addr_tables.push((ino, links, addrs));
    }
    if (args.iface.is_some() || args.ifindex.is_some()) && !found_iface {
        let what = args.iface.clone().map_or_else(|| format!("ifindex {}", args.ifindex.unwrap_or(0)), |n| format!("interface {n:?}"));
        let scope = if args.all_netns { "any network namespace" } else { "this network namespace (try --all-netns or --netns NAME)" };
        bail!("unknown {what}: no such interface in {scope}");
    }
    // Unstable (no merge buffer) on a key that is unique per socket, so the order is still the
    // same from run to run.
    keys.sort_unstable_by_key(|k| k.0);
    // One pass over /proc for every row, after the socket snapshot: a waiter that appears later
    // is missed, never attributed to a socket that no longer exists.
    // No rows, no waiter to name: skip the pass (it reads the fd table of every waiting
    // process: 100k `readlink`s, ~0.7 s, for 100k sockets held by waiting processes).
    let waiters = if keys.is_empty() { WaiterIndex::default() } else { WaiterIndex::discover() };
    let empty = AddrTable::default();
    let reports = keys
        .into_iter()
        .filter_map(|(_, space, i)| {
            let (ties, sockets) = held.get_mut(space as usize)?;
            ties.tie(sockets.get_mut(i as usize)?.take()?)
        })
        .map(|tied| {
            let (links, addrs) = addr_tables
                .iter()
                .find(|(ino, _, _)| *ino == tied.socket.netns)
                .map_or((&[][..], &empty), |(_, l, a)| (&l[..], a));
            let stranded = health(&tied.socket, links, addrs, &[]);
            waiters.report(tied, stranded)
        })
        .filter(|r| !args.stranded || r.stranded.is_some());
    // One write per ~64 KiB instead of one per socket (stays per line on a terminal).
    let out = render::buffered();
    if args.json {
        // Streamed: each report is written and dropped, so no second copy of every row is held.
        for row in reports {
            json_line(&row)?;
        }
    } else {
        // The table needs every row for its column widths.
        render::sockets::table(&reports.collect::<Vec<SocketReport>>())?;
    }
    out.finish()
}

/// The order of `sockets` rows: netns, ifindex (untied first), protocol, local port and
/// address, inode, cookie (unique per socket).
type RowKey = (NetnsIno, Option<IfIndex>, u8, u16, IpAddr, SockInode, u64);

fn row_key(s: &Socket, ifindex: Option<IfIndex>) -> RowKey {
    (s.netns, ifindex, s.protocol as u8, s.local_port, s.local_addr, s.inode, s.cookie)
}

/// The interface `--iface`/`--ifindex` names among `links`, if any.
fn target<'a>(links: &'a [Link], args: &SocketsArgs) -> Option<&'a Link> {
    match (&args.iface, args.ifindex) {
        (Some(name), _) => links.iter().find(|l| &l.name == name),
        (None, Some(i)) => links.iter().find(|l| l.ifindex == IfIndex(i)),
        (None, None) => None,
    }
}
