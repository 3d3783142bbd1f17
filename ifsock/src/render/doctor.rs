//! `doctor`: what this kernel allows and which probes load, as lines or one JSON object.
use anyhow::Result;
use serde::Serialize;

use super::{json_line, line};
use crate::{kernel::system, probes::select};

/// One probe (or mechanism) tried: whether it loaded, and the kernel's reason when not.
#[derive(Serialize)]
pub struct ProbeStatus {
    /// What was tried (`tracepoint syscalls:…`, `iter/udp, iter/tcp, iter/task_file`).
    pub probe: String,
    /// It loaded (and attached).
    pub loaded: bool,
    /// Why not.
    pub reason: Option<String>,
}

/// What `doctor` found: one JSON object, or the human lines.
#[derive(Serialize)]
pub struct Report {
    /// `uname -r`.
    pub kernel_release: String,
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// `/sys/kernel/security/lockdown` (the bracketed mode), when readable.
    pub lockdown: Option<String>,
    /// tracefs is mounted.
    pub tracefs_mounted: bool,
    /// bpffs is mounted.
    pub bpffs_mounted: bool,
    /// What ifsock mounted on this run.
    pub mounted_now: system::MountReport,
    /// Device path (close/unregister) set.
    pub probe_set: Option<select::Selection>,
    /// Receive path (`__skb_recv_udp`, `__skb_recv_datagram`, `__skb_wait_for_more_packets`) set.
    pub recv_probe_set: Option<select::Selection>,
    /// Every probe group tried.
    pub probes: Vec<ProbeStatus>,
    /// Socket destroy mechanisms (`abort`), in the order they are tried.
    pub socket_destroy: Vec<ProbeStatus>,
}

/// Prints the report: one JSON object with `json`, else one line per check and probe.
///
/// # Errors
/// Stdout closed ([`super::StdoutClosed`]).
pub fn print(report: &Report, json: bool) -> Result<()> {
    if json {
        return json_line(report);
    }
    line(&format!("kernel:    {}", report.kernel_release))?;
    line(&format!("BTF:       {}", if report.btf { "yes (/sys/kernel/btf/vmlinux)" } else { "MISSING: ifsock needs CONFIG_DEBUG_INFO_BTF=y" }))?;
    line(&format!("lockdown:  {}", report.lockdown.as_deref().unwrap_or("not available")))?;
    line(&format!("tracefs:   {}{}", if report.tracefs_mounted { "mounted" } else { "NOT mounted" }, if report.mounted_now.mounted_tracefs { " (mounted now by ifsock)" } else { "" }))?;
    line(&format!("bpffs:     {}{}", if report.bpffs_mounted { "mounted" } else { "NOT mounted" }, if report.mounted_now.mounted_bpffs { " (mounted now by ifsock)" } else { "" }))?;
    match &report.probe_set {
        Some(sel) => line(&format!("device path:  {sel}"))?,
        None => line("device path:  no probe set (the object did not load)")?,
    }
    match &report.recv_probe_set {
        Some(sel) => line(&format!("receive path: {sel}"))?,
        None => line("receive path: no probe set")?,
    }
    for p in &report.probes {
        match &p.reason {
            None => line(&format!("  ok      {}", p.probe))?,
            Some(r) => line(&format!("  refused {}: {r}", p.probe))?,
        }
    }
    print_destroy_mechanisms(&report.socket_destroy)
}


fn print_destroy_mechanisms(list: &[ProbeStatus]) -> Result<()> {
    line("socket destroy (abort), in order of use:")?;
    for p in list {
        match &p.reason {
            None => line(&format!("  ok      {}", p.probe))?,
            Some(r) => line(&format!("  refused {}: {r}", p.probe))?,
        }
    }
    Ok(())
}
