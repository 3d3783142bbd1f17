//! `ifsock tun [IFACE]`: every tun/tap device of the netns, its flags, every fd attached to it
//! with its queue's index, state and backlog, and a warning for an attached queue that fills up
//! with nobody reading it (seed 001: a queue left attached by a process that never reads, so the
//! kernel steers part of the traffic into it).

use anyhow::{bail, Context as _, Result};

use crate::{
    args::TunArgs,
    render,
};
use crate::{
    kernel::{netlink, netns},
    model::tun::{self, TunFlags},
    probes::Probes,
};

/// Runs `tun`.
///
/// # Errors
/// Unknown interface or one that is not tun/tap, probe loading or netlink failures.
pub async fn run(args: TunArgs) -> Result<()> {
    let mut probes = Probes::load_for_snapshots()?;
    let handle = netlink::connect()?;
    let netns = netns::current_ino()?;
    let mut links = netlink::dump_tun_links(&handle).await?;
    if let Some(name) = &args.iface {
        links.retain(|l| &l.name == name);
        if links.is_empty() {
            let all = netlink::dump_links(&handle).await?;
            match all.iter().find(|l| &l.name == name) {
                Some(l) => {
                    let kind = netlink::link_kind(&handle, l.ifindex).await?.unwrap_or_else(|| "none".into());
                    bail!("{name:?} (ifindex {}) is not a tun/tap device (rtnetlink kind: {kind})", l.ifindex);
                }
                None => {
                    let help = crate::model::names::unknown_help(name, all.iter().map(|l| l.name.as_str()));
                    bail!("unknown interface {name:?}: no such interface in this network namespace (try --netns NAME); {help}")
                }
            }
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
    let devices = tun::build(&links, netns, before.as_deref(), &after);
    for (d, l) in devices.iter().zip(&links) {
        if let (Some(raw), Some(info)) = (d.tun_struct_flags, &l.info) {
            let (kernel, nl) = (TunFlags::from_tun_struct(raw), info.flags());
            if kernel != nl {
                tracing::warn!("{}: tun_struct.flags {raw:#x} decode to {kernel:?} but IFLA_INFO_DATA says {nl:?}: BTF offsets may be wrong", d.name);
            }
        }
    }
    render::tun::devices(&devices, netns, args.interval.as_millis() as u64, args.json)
}
