//! `tun`: one line and an fd table per device, or one JSON object per device.
use anyhow::Result;

use super::{json_line, line, table};
use std::collections::HashMap;

use crate::model::{
    ids::NetnsIno,
    tun::{QueueState, TunDevice},
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

/// Prints the devices: one `--json` object each (`type: tun`, `interval_ms`, the device's
/// fields), or [`device`] each (a line saying there are none in `scope`, `netns 4026531833` or
/// `3 netns`, when there are none).
///
/// # Errors
/// Stdout closed ([`super::StdoutClosed`]).
pub fn devices(devices: &[TunDevice], scope: &str, names: &HashMap<NetnsIno, String>, interval_ms: u64, json: bool) -> Result<()> {
    if json {
        for device in devices {
            json_line(&JsonLine { ty: "tun", interval_ms, device })?;
        }
        return Ok(());
    }
    if devices.is_empty() {
        line(&format!("no tun/tap devices in {scope}"))?;
    }
    for d in devices {
        device(d, names.get(&d.netns).map(String::as_str))?;
    }
    Ok(())
}

/// Prints one device: its line (with its netns's name when it has one), its fds as a table,
/// its warnings.
///
/// # Errors
/// Stdout closed ([`super::StdoutClosed`]).
pub fn device(d: &TunDevice, netns_name: Option<&str>) -> Result<()> {
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
        netns_name.map_or_else(|| d.netns.to_string(), |n| format!("{n} ({})", d.netns)),
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
