//! `ifsock tun [IFACE]`: every tun/tap device of the netns (or of every netns, `--all-netns`), its flags, every fd attached to it
//! with its queue's index, state and backlog, and a warning for an attached queue that fills up
//! with nobody reading it (seed 001: a queue left attached by a process that never reads, so the
//! kernel steers part of the traffic into it).

use anyhow::{bail, Context as _, Result};

use crate::{
    args::TunArgs,
    render,
};
use crate::{
    kernel::{
        netlink,
        netns::{self, NetnsHandle},
    },
    model::{
        ids::NetnsIno,
        tun::{self, TunFlags, TunLink},
    },
    probes::Probes,
};

/// Runs `tun`.
///
/// # Errors
/// Unknown interface or one that is not tun/tap, probe loading or netlink failures.
pub async fn run(args: TunArgs) -> Result<()> {
    let mut probes = Probes::load_for_snapshots()?;
    let spaces: Vec<Option<NetnsHandle>> = if args.all_netns { netns::all().into_iter().map(Some).collect() } else { vec![None] };
    let own = netns::current_ino()?;
    // Per netns its tun links; every name seen, for an unknown IFACE's "did you mean".
    let mut per_ns: Vec<(NetnsIno, Vec<TunLink>)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut not_tun: Option<String> = None;
    for ns in &spaces {
        let ino = ns.as_ref().map_or(own, |h| h.ino);
        let handle = match netlink::connect_in(ns.as_ref()) {
            Ok(h) => h,
            // A namespace can vanish between listing and opening.
            Err(e) if args.all_netns => {
                tracing::debug!("netns {ino} skipped: {e:#}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut links = netlink::dump_tun_links(&handle).await?;
        if let Some(name) = &args.iface {
            links.retain(|l| &l.name == name);
            if links.is_empty() {
                let all = netlink::dump_links(&handle).await?;
                if let Some(l) = all.iter().find(|l| &l.name == name) {
                    let kind = netlink::link_kind(&handle, l.ifindex).await?.unwrap_or_else(|| "none".into());
                    not_tun = Some(format!("{name:?} (ifindex {}, netns {ino}) is not a tun/tap device (rtnetlink kind: {kind})", l.ifindex));
                }
                names.extend(all.into_iter().map(|l| l.name));
            }
        }
        per_ns.push((ino, links));
    }
    if let Some(name) = &args.iface {
        if per_ns.iter().all(|(_, l)| l.is_empty()) {
            if let Some(why) = not_tun {
                bail!("{why}");
            }
            let help = crate::model::names::unknown_help(name, names.iter().map(String::as_str));
            let scope = if args.all_netns { "any network namespace" } else { "this network namespace (try --all-netns or --netns NAME)" };
            bail!("unknown interface {name:?}: no such interface in {scope}; {help}");
        }
    }
    let before = if args.interval.is_zero() {
        None
    } else {
        let first = probes.tun_files().context("first task_file snapshot")?;
        tokio::time::sleep(args.interval).await;
        Some(first)
    };
    let after = probes.tun_files().context("task_file snapshot")?;
    let mut devices = Vec::new();
    for (ino, links) in &per_ns {
        let built = tun::build(links, *ino, before.as_deref(), &after);
        for (d, l) in built.iter().zip(links) {
            if let (Some(raw), Some(info)) = (d.tun_struct_flags, &l.info) {
                let (kernel, nl) = (TunFlags::from_tun_struct(raw), info.flags());
                if kernel != nl {
                    tracing::warn!("{}: tun_struct.flags {raw:#x} decode to {kernel:?} but IFLA_INFO_DATA says {nl:?}: BTF offsets may be wrong", d.name);
                }
            }
        }
        devices.extend(built);
    }
    let scope = if args.all_netns { format!("{} netns", per_ns.len()) } else { format!("netns {own}") };
    let names = netns::named().into_iter().map(|(n, ino)| (ino, n)).collect();
    render::tun::devices(&devices, &scope, &names, args.interval.as_millis() as u64, args.json)
}
