//! `ifsock sockets`: which sockets are tied to which interface, with owners.
//!
//! Args → per netns a socket snapshot (BPF iterators) and a link dump → [`crate::engine::sockets`]
//! (join, order, health) and the waiter pass → [`crate::render::sockets`] or JSON lines.
use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};

use crate::{
    args::SocketsArgs,
    engine::sockets::{target, Join},
    kernel::{
        netlink,
        netns::{self, NetnsHandle},
        waiters::WaiterIndex,
    },
    journal,
    model::{
        ids::{IfIndex, NetnsIno},
        stranded::{self, SocketReport},
        tie::Ties,
    },
    probes::{snapshot, Probes},
    render::{self, json_line},
    sources::receivers::journal_dir,
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
    // Every interface name seen, for the "did you mean" of an unknown --iface.
    let mut names: Vec<String> = Vec::new();
    let (iface, ifindex) = (args.iface.as_deref(), args.ifindex);
    let filtered = iface.is_some() || ifindex.is_some();
    let journal = journal_dir(args.journal.as_deref())?;
    for ns in &spaces {
        let ino = ns.as_ref().map_or(own, |h| h.ino);
        let conn = netlink::connect_in(ns.as_ref())?;
        // The names the journal saw deleted ifindexes go by: for `device_deleted` rows, and
        // for --iface (every ifindex the name had) and --ifindex (a deleted one).
        let seen = match &journal {
            Some(dir) => journal::seen_deletions(dir, ino).map_err(|e| anyhow!("reading the journal {}: {e}", dir.display()))?,
            None => Vec::new(),
        };
        let first = if filtered { netlink::dump_links(&conn).await? } else { Vec::new() };
        names.extend(first.iter().map(|l| l.name.clone()));
        let deleted: Vec<(IfIndex, Option<String>)> = match (iface, ifindex) {
            (Some(name), _) => journal::deleted_ifindexes_named(&seen, ino, name).into_iter().map(|i| (i, Some(name.to_string()))).collect(),
            (None, Some(i)) if !first.iter().any(|l| l.ifindex == IfIndex(i)) => {
                vec![(IfIndex(i), stranded::last_name(&seen, ino, IfIndex(i)).map(str::to_string))]
            }
            _ => Vec::new(),
        };
        let deleted: Vec<_> = deleted.into_iter().filter(|(i, _)| !first.iter().any(|l| l.ifindex == *i)).collect();
        let sockets = if filtered {
            // The interface and its addresses are needed before the snapshot, for the filter
            // in the kernel; the links are dumped again after it (below). A socket bound to an
            // address added between the two dumps is missed: the same as if it had been bound
            // after the snapshot.
            let live = target(&first, iface, ifindex);
            if live.is_none() && deleted.is_empty() {
                continue;
            }
            let mut ifindexes: Vec<IfIndex> = deleted.iter().map(|(i, _)| *i).collect();
            let addrs: Vec<IpAddr> = live.map(|l| l.addrs.iter().copied().collect()).unwrap_or_default();
            ifindexes.extend(live.map(|l| l.ifindex));
            snapshot::sockets_maybe_tied_any(&mut probes, ns.as_ref(), &ifindexes, &addrs)?
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
                Some(Ties::to_interface(ino, link.ifindex, &link.name, &link_addrs, links.clone()).and_deleted(deleted))
            }
            None if !filtered => Some(Ties::each_once(ino, links.clone())),
            // A deleted ifindex is known by a socket still bound to it (the kernel's own
            // evidence) or by the journal's name for it; else it is unknown, as a typo is.
            None if !deleted.is_empty() && (iface.is_some() || deleted.iter().any(|(i, name)| name.is_some() || sockets.iter().any(|s| s.bound_dev_if == i.0))) => {
                found_iface = true;
                if let Some((i, name)) = deleted.first().filter(|_| ifindex.is_some()) {
                    render::err_line(&render::health::deleted_ifindex_note(*i, ino, name.as_deref()));
                }
                Some(Ties::to_deleted(ino, deleted, links.clone()))
            }
            None => None,
        };
        join.add(ino, ties, sockets, links, addrs);
        join.add_deletions(seen);
    }
    if filtered && !found_iface {
        let what = args.iface.clone().map_or_else(|| format!("ifindex {}", args.ifindex.unwrap_or(0)), |n| format!("interface {n:?}"));
        let scope = if args.all_netns { "any network namespace" } else { "this network namespace (try --all-netns or --netns NAME)" };
        let help = crate::model::names::unknown_help(iface.unwrap_or(""), names.iter().map(String::as_str));
        bail!("unknown {what}: no such interface in {scope}; {help}");
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
        let names = netns::named();
        let name_of = |ino: NetnsIno| names.iter().find(|(_, i)| *i == ino).map(|(n, _)| n.clone());
        let netns = if args.all_netns { spaces.iter().flatten().map(|h| (h.ino, h.name.clone().or_else(|| name_of(h.ino)))).collect() } else { vec![(own, name_of(own))] };
        let mut filters = Vec::new();
        if let Some(n) = &args.iface {
            filters.push(format!("--iface {n}"));
        }
        if let Some(i) = args.ifindex {
            filters.push(format!("--ifindex {i}"));
        }
        if args.stranded {
            filters.push("--stranded".to_string());
        }
        let searched = render::sockets::Searched { netns, filters };
        render::sockets::table(&reports.collect::<Vec<SocketReport>>(), &searched)?;
    }
    out.finish()
}
