//! `ifsock sockets`: which sockets are tied to which interface, with owners.
//!
//! Args → per netns a socket snapshot (BPF iterators) and a link dump → [`crate::engine::sockets`]
//! (join, order, health) and the waiter pass → [`crate::render::sockets`] or JSON lines.
use std::net::IpAddr;

use anyhow::{bail, Result};

use crate::{
    args::SocketsArgs,
    engine::sockets::{target, Join},
    kernel::{
        netlink,
        netns::{self, NetnsHandle},
        waiters::WaiterIndex,
    },
    model::{stranded::SocketReport, tie::Ties},
    probes::{snapshot, Probes},
    render::{self, json_line},
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
    let mut join = Join::default();
    let mut found_iface = false;
    let (iface, ifindex) = (args.iface.as_deref(), args.ifindex);
    let filtered = iface.is_some() || ifindex.is_some();
    for ns in &spaces {
        let ino = ns.as_ref().map_or(own, |h| h.ino);
        let conn = netlink::connect_in(ns.as_ref())?;
        let sockets = if filtered {
            // The interface and its addresses are needed before the snapshot, for the filter
            // in the kernel; the links are dumped again after it (below). A socket bound to an
            // address added between the two dumps is missed: the same as if it had been bound
            // after the snapshot.
            let first = netlink::dump_links(&conn).await?;
            let Some(link) = target(&first, iface, ifindex) else { continue };
            let addrs: Vec<IpAddr> = link.addrs.iter().copied().collect();
            snapshot::sockets_maybe_tied(&mut probes, ns.as_ref(), link.ifindex, &addrs)?
        } else {
            snapshot::sockets(&mut probes, ns.as_ref())?
        };
        // Sockets before links: a socket seen bound to an address that the later dump does not
        // hold lost it after the bind (stranded). The other order misjudges a socket bound
        // between the two reads to an address that just finished DAD.
        let (links, addrs) = netlink::dump_links_and_addrs(&conn).await?;
        let ties = match target(&links, iface, ifindex) {
            Some(link) => {
                found_iface = true;
                let link_addrs: Vec<_> = link.addrs.iter().copied().collect();
                Some(Ties::to_interface(ino, link.ifindex, &link.name, &link_addrs, links.clone()))
            }
            None if !filtered => Some(Ties::each_once(ino, links.clone())),
            None => None,
        };
        join.add(ino, ties, sockets, links, addrs);
    }
    if filtered && !found_iface {
        let what = args.iface.clone().map_or_else(|| format!("ifindex {}", args.ifindex.unwrap_or(0)), |n| format!("interface {n:?}"));
        let scope = if args.all_netns { "any network namespace" } else { "this network namespace (try --all-netns or --netns NAME)" };
        bail!("unknown {what}: no such interface in {scope}");
    }
    // One pass over /proc for every row, after the socket snapshot: a waiter that appears later
    // is missed, never attributed to a socket that no longer exists.
    // No rows, no waiter to name: skip the pass (it reads the fd table of every waiting
    // process: 100k `readlink`s, ~0.7 s, for 100k sockets held by waiting processes).
    // The waiter walk reads every socket's wait queue (kallsyms and BTF); `/proc` only as the
    // fallback it names.
    let waiters = if join.is_empty() { WaiterIndex::default() } else { crate::sources::waiters::index(&mut probes, spaces.iter().map(Option::as_ref)) };
    let reports = join.into_reports(&waiters, args.stranded);
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
