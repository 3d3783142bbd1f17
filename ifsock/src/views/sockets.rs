//! `ifsock sockets`: which sockets are tied to which interface, with owners.
use anyhow::{bail, Result};

use crate::{
    model::tie::{self, TiedSocket},
    probes::snapshot,
    render::{json_line, table},
};
use crate::{
    kernel::netns::{self, NetnsHandle},
    model::ids::IfIndex,
    probes::Probes,
};

/// Options of `sockets`.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketsArgs {
    /// Only sockets tied to this interface (exact name).
    #[arg(long, conflicts_with = "ifindex")]
    pub iface: Option<String>,
    /// Only sockets tied to this ifindex.
    #[arg(long)]
    pub ifindex: Option<u32>,
    /// Every network namespace on the host (named ones and those of running processes).
    #[arg(long)]
    pub all_netns: bool,
    /// One JSON object per line (fields documented in README.md).
    #[arg(long)]
    pub json: bool,
}

/// Runs `sockets`.
///
/// # Errors
/// Unknown interface (in every namespace searched), or probe/netlink failures.
pub async fn run(args: SocketsArgs) -> Result<()> {
    let mut probes = Probes::load(u64::MAX)?;
    let spaces: Vec<Option<NetnsHandle>> =
        if args.all_netns { netns::all().into_iter().map(Some).collect() } else { vec![None] };
    let own = netns::current_ino()?;
    let mut rows: Vec<TiedSocket> = Vec::new();
    let mut found_iface = false;
    for ns in &spaces {
        let ino = ns.as_ref().map_or(own, |h| h.ino);
        let links = snapshot::links(ns.as_ref()).await?;
        let sockets = snapshot::sockets(&mut probes, ns.as_ref())?;
        let target = match (&args.iface, args.ifindex) {
            (Some(name), _) => links.iter().find(|l| &l.name == name),
            (None, Some(i)) => links.iter().find(|l| l.ifindex == IfIndex(i)),
            (None, None) => None,
        };
        match target {
            Some(link) => {
                found_iface = true;
                let addrs: Vec<_> = link.addrs.iter().copied().collect();
                rows.extend(tie::tied_to(&sockets, ino, link.ifindex, &link.name, &addrs, &links));
            }
            None if args.iface.is_none() && args.ifindex.is_none() => {
                rows.extend(tie::each_once(&sockets, ino, &links));
            }
            None => {}
        }
    }
    if (args.iface.is_some() || args.ifindex.is_some()) && !found_iface {
        let what = args.iface.clone().map_or_else(|| format!("ifindex {}", args.ifindex.unwrap_or(0)), |n| format!("interface {n:?}"));
        let scope = if args.all_netns { "any network namespace" } else { "this network namespace (try --all-netns or --netns NAME)" };
        bail!("unknown {what}: no such interface in {scope}");
    }
    rows.sort_by(|a, b| {
        (a.socket.netns, a.ifindex, a.socket.protocol as u8, a.socket.local_port)
            .cmp(&(b.socket.netns, b.ifindex, b.socket.protocol as u8, b.socket.local_port))
    });
    // One write per ~64 KiB instead of one per socket (stays per line on a terminal).
    let out = crate::render::buffered();
    if args.json {
        for row in &rows {
            json_line(row)?;
        }
    } else {
        print_table(&rows)?;
    }
    out.finish()
}

/// Prints tied sockets as a table (shared with `watch` and `teardown`).
///
/// # Errors
/// Writing to stdout failed (see [`crate::render::out`]).
pub fn print_table(rows: &[TiedSocket]) -> anyhow::Result<()> {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = &r.socket;
            let owners = crate::render::fmt::owners(&s.owners, "-");
            vec![
                s.netns.to_string(),
                r.ifindex.map_or("-".into(), |i| i.to_string()),
                r.ifname.clone().unwrap_or_else(|| "-".into()),
                crate::render::fmt::binding(r.binding).to_string(),
                format!("{:?}{}", s.protocol, s.family).to_lowercase(),
                format!("{}:{}", crate::render::fmt::addr(&s.local_addr, s.v4_mapped), s.local_port),
                format!("{}:{}", crate::render::fmt::addr(&s.remote_addr, s.v4_mapped), s.remote_port),
                s.state.to_string(),
                s.inode.to_string(),
                if s.pktinfo { "yes".into() } else { "no".into() },
                owners,
            ]
        })
        .collect();
    table(&["NETNS", "IFINDEX", "IFACE", "BINDING", "PROTO", "LOCAL", "REMOTE", "STATE", "INODE", "PKTINFO", "OWNERS"], &cells)
}
