//! `doctor`: what this kernel allows and which probes load, as lines or one JSON object.
use anyhow::Result;
use serde::Serialize;

use super::{json_line, line};
use crate::{
    kernel::{caps::CapStatus, system},
    probes::select,
};

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
    /// Each capability ifsock uses, held or not (the effective set, `/proc/self/status`
    /// `CapEff`), with what a missing one costs; `None` when the set could not be read.
    pub capabilities: Option<Vec<CapStatus>>,
    /// One line: what works on this kernel and what the user loses ([`summary`]; the last
    /// human line).
    pub summary: String,
}

/// One line from the checks: `summary: works: …; loses: …` (or `loses: nothing`), naming the
/// commands a missing piece affects and, for a probe set used in place of a refused better one,
/// the refused set with its short reason.
pub fn summary(r: &Report) -> String {
    if r.probes.iter().any(|p| p.probe == "object" && !p.loaded) {
        return "summary: nothing works: the eBPF object did not load (see the reason above); ifsock needs BTF and CAP_BPF/CAP_SYS_ADMIN".into();
    }
    // `EPERM (lockdown=integrity)` → `lockdown=integrity`.
    let short = |why: &str| why.split_once('(').and_then(|(_, r)| r.split_once(')')).map_or_else(|| why.to_string(), |(inner, _)| inner.to_string());
    let mut works = vec!["sockets".to_string()];
    let mut loses: Vec<String> = Vec::new();
    let mut refused_sets: Vec<String> = Vec::new();
    for (cmd, sel, lost) in [
        ("watch", &r.probe_set, "watch names no process behind a change (no device-path probes)"),
        ("hung", &r.recv_probe_set, "hung sees receivers from /proc only, start times estimated (no receive-path probes)"),
    ] {
        match sel {
            Some(sel) => {
                works.push(format!("{cmd} ({:?} set)", sel.chosen));
                for (set, why) in &sel.refused {
                    let t = format!("{set:?} ({})", short(why));
                    if !refused_sets.contains(&t) {
                        refused_sets.push(t);
                    }
                }
            }
            None => loses.push(lost.into()),
        }
    }
    match r.socket_destroy.iter().find(|p| p.loaded) {
        Some(p) => works.push(format!("abort ({})", p.probe.split(" (").next().unwrap_or(&p.probe))),
        None => loses.push("abort and teardown --abort-stranded (no socket destroy mechanism)".into()),
    }
    if !refused_sets.is_empty() {
        loses.push(format!("the better probe sets {} (the chosen set is used instead)", refused_sets.join(", ")));
    }
    let missing: Vec<&str> = r.capabilities.iter().flatten().filter(|c| !c.held).map(|c| c.name).collect();
    if !missing.is_empty() {
        loses.push(format!("what {} give (see capabilities above)", missing.join(", ")));
    }
    let refused: Vec<&str> = r.probes.iter().filter(|p| !p.loaded && !p.probe.contains(" set (")).map(|p| p.probe.as_str()).collect();
    if !refused.is_empty() {
        loses.push(format!("what these give: {}", refused.join(", ")));
    }
    let loses = if loses.is_empty() { "nothing".to_string() } else { loses.join("; ") };
    format!("summary: works: {}; loses: {loses}", works.join(", "))
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
    print_destroy_mechanisms(&report.socket_destroy)?;
    print_capabilities(report.capabilities.as_deref())?;
    line(&report.summary)
}


fn print_capabilities(caps: Option<&[CapStatus]>) -> Result<()> {
    let Some(caps) = caps else { return line("capabilities: unknown (no CapEff in /proc/self/status)") };
    line("capabilities (effective set):")?;
    for c in caps {
        match c.without {
            None => line(&format!("  have    {}: {}", c.name, c.used_for))?,
            Some(cost) => line(&format!("  MISSING {}: {cost}", c.name))?,
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(probe: &str, loaded: bool) -> ProbeStatus {
        ProbeStatus { probe: probe.into(), loaded, reason: (!loaded).then(|| "EPERM".into()) }
    }

    fn report(probes: Vec<ProbeStatus>, destroy: Vec<ProbeStatus>) -> Report {
        Report {
            kernel_release: "6.18".into(), btf: true, lockdown: None, tracefs_mounted: true, bpffs_mounted: true,
            mounted_now: system::MountReport::default(), probe_set: None, recv_probe_set: None, probes, socket_destroy: destroy,
            capabilities: None, summary: String::new(),
        }
    }

    #[test]
    fn the_summary_says_what_works_and_what_is_lost() {
        let r = report(vec![status("fentry dev_close", false), status("tracepoint net:netif_receive_skb", true)], vec![status("SOCK_DESTROY over NETLINK_SOCK_DIAG (x)", true)]);
        let s = summary(&r);
        assert!(s.starts_with("summary: works: sockets, abort (SOCK_DESTROY over NETLINK_SOCK_DIAG); loses: "), "{s}");
        assert!(s.contains("watch names no process behind a change") && s.ends_with("what these give: fentry dev_close"), "{s}");
        let mut r = report(vec![], vec![status("SOCK_DESTROY over NETLINK_SOCK_DIAG (x)", true)]);
        r.capabilities = Some(crate::kernel::caps::statuses(!(1u64 << 19)));
        assert!(summary(&r).ends_with("; what CAP_SYS_PTRACE give (see capabilities above)"), "{}", summary(&r));
        let r = report(vec![status("object", false)], vec![]);
        assert!(summary(&r).starts_with("summary: nothing works"), "{}", summary(&r));
    }
}
