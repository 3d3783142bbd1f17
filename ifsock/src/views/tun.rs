//! `ifsock tun [IFACE]`: every tun/tap device of the netns, its flags, every fd attached to it
//! with its queue's index, state and backlog, and a warning for an attached queue that fills up
//! with nobody reading it (seed 001: a queue left attached by a process that never reads, so the
//! kernel steers part of the traffic into it).

use anyhow::{bail, Context as _, Result};

use crate::{
    args::TunArgs,
    render::{json_line, line, table},
};
use crate::{
    kernel::{netlink, netns},
    model::tun::{self, QueueState, TunDevice, TunFlags},
    probes::Probes,
};

/// One `--json` line: a device with the interval its backlogs were compared over.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    interval_ms: u64,
    #[serde(flatten)]
    device: &'a TunDevice,
}

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
                None => bail!("unknown interface {name:?}: no such interface in this network namespace (try --netns NAME)"),
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
    if args.json {
        for device in &devices {
            json_line(&JsonLine { ty: "tun", interval_ms: args.interval.as_millis() as u64, device })?;
        }
        return Ok(());
    }
    if devices.is_empty() {
        line(&format!("no tun/tap devices in netns {netns}"))?;
    }
    for d in &devices {
        print_device(d)?;
    }
    Ok(())
}

fn print_device(d: &TunDevice) -> Result<()> {
    let f = &d.flags;
    let mut flags = vec![f.mode.map_or("?".to_string(), |m| format!("{m:?}").to_lowercase())];
    for (on, name) in [(f.multi_queue, "multi_queue"), (f.persist, "persist"), (f.vnet_hdr, "vnet_hdr"), (f.no_pi, "no_pi")] {
        if on {
            flags.push(name.to_string());
        }
    }
    let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    line(&format!(
        "{} ifindex {} netns {}: {} {}{}; owner {} group {}; queues {} attached, {} detached; {} fd(s)",
        d.name,
        d.ifindex,
        d.netns,
        flags.join(","),
        if d.up { "up" } else { "down" },
        if d.carrier { ",carrier" } else { ",no-carrier" },
        id(d.owner),
        id(d.group),
        d.numqueues,
        d.numdisabled,
        d.fds.len()
    ))?;
    if !d.fds.is_empty() {
        let rows: Vec<Vec<String>> = d
            .fds
            .iter()
            .map(|fd| {
                vec![
                    format!("  {}", fd.pid),
                    fd.comm.clone(),
                    fd.fd.to_string(),
                    fd.queue.map_or("-".into(), |q| q.to_string()),
                    match fd.state {
                        QueueState::Attached => "attached".into(),
                        QueueState::Detached => "detached".into(),
                    },
                    match fd.backlog_before {
                        Some(b) => format!("{b}→{}", fd.backlog),
                        None => fd.backlog.to_string(),
                    },
                    fd.ring_size.to_string(),
                ]
            })
            .collect();
        table(&["  PID", "COMM", "FD", "QUEUE", "STATE", "BACKLOG", "RING"], &rows)?;
    }
    for w in &d.warnings {
        line(&format!("warning: {}", w.message))?;
    }
    Ok(())
}
