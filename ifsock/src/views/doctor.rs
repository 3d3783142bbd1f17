//! `ifsock doctor`: what this kernel allows and which probes ifsock can use.
use anyhow::Result;

use crate::{
    args::DoctorArgs,
    render::{
        self,
        doctor::{ProbeStatus, Report},
    },
    kernel::system,
    probes::{
        plan::{self, Group},
        Probes, SockErrorProbe,
    },
};

/// Runs `doctor`: checks, mounts what is missing, and tries every probe.
///
/// # Errors
/// Only for output failures; every check failure is reported in the output instead.
pub async fn run(args: DoctorArgs) -> Result<()> {
    system::require_root()?;
    let mounted_now = system::ensure_mounts().unwrap_or_default();
    let mut probes_status = Vec::new();
    let mut selection = None;
    let mut recv_selection = None;
    // Every group through the one policy, all optional: a refusal is doctor's answer.
    let loaded = Probes::load(u64::MAX).and_then(|mut p| p.apply(&plan::DOCTOR_PATHS, plan::Forced::default()).map(|a| (p, a)));
    match loaded {
        Err(e) => probes_status.push(ProbeStatus { probe: "object".into(), loaded: false, reason: Some(format!("{e:#}")) }),
        Ok((mut probes, paths)) => {
            selection = paths.device.clone();
            recv_selection = paths.recv.clone();
            for s in &paths.skipped {
                probes_status.push(ProbeStatus { probe: s.group.to_string(), loaded: false, reason: Some(s.reason.clone()) });
            }
            for a in probes.attached.iter() {
                probes_status.push(ProbeStatus { probe: a.to_string(), loaded: true, reason: None });
            }
            let applied = probes.apply(&plan::DOCTOR_EVIDENCE, plan::Forced::default())?;
            let refusal = |g: Group| applied.skipped.iter().find(|s| s.group == g).map(|s| s.reason.clone());
            for (name, g) in [
                ("iter/udp, iter/tcp, iter/task_file", Group::Iterators),
                ("tracepoint syscalls:sys_enter_{sendmsg,sendto,ioctl} (link requests)", Group::LinkRequests),
                ("tracepoint syscalls:sys_{enter,exit}_{sendto,sendmsg} (send errors)", Group::SendErrors),
            ] {
                probes_status.push(ProbeStatus { probe: name.into(), loaded: applied.has(g), reason: refusal(g) });
            }
            // Where the agent's causes come from: these handlers, fentry or kprobe, cost nothing
            // between link requests; without them `agent --causes` needs the tracepoints above.
            let handlers = probes.attach_link_request_handlers();
            probes_status.push(ProbeStatus {
                probe: match &handlers {
                    Ok(sel) => format!("{} rtnl_{{new,del,set}}link, dev_ioctl (the agent's causes)", sel.chosen.name()),
                    Err(_) => "fentry/kprobe rtnl_{new,del,set}link, dev_ioctl (the agent's causes without --causes)".into(),
                },
                loaded: handlers.is_ok(),
                reason: handlers.err().map(|e| format!("{e:#}")),
            });
            // Where `waiters` come from: the sockets' wait queues, or the /proc pass (which
            // needs CAP_SYS_PTRACE to read other users' poll/select sets and fdinfo).
            let walk = crate::sources::waiters::usable(&mut probes);
            probes_status.push(ProbeStatus {
                probe: "waiter walk: iter/udp, iter/tcp over sk->sk_wq (waiters' source: wait_queue; else the /proc pass, which needs CAP_SYS_PTRACE)".into(),
                loaded: walk.is_ok(),
                reason: walk.err(),
            });
            match applied.sock_errors.clone().ok_or_else(|| refusal(Group::SockErrors).unwrap_or_default()) {
                Ok(a) => {
                    if let Some(why) = a.tp_btf_refused {
                        probes_status.push(ProbeStatus { probe: format!("{} (socket errors)", SockErrorProbe::TpBtf), loaded: false, reason: Some(why) });
                    }
                    probes_status.push(ProbeStatus { probe: format!("{} (socket errors)", a.probe), loaded: true, reason: None });
                    // The fallback, tried too so that its state is known before it is needed.
                    if a.probe == SockErrorProbe::TpBtf {
                        let forced = plan::Forced { sock_error_probe: Some(SockErrorProbe::Tracepoint), ..plan::Forced::default() };
                        let res = probes.apply(&plan::DOCTOR_SOCK_ERROR_FALLBACK, forced);
                        probes_status.push(ProbeStatus {
                            probe: format!("{} (socket errors fallback)", SockErrorProbe::Tracepoint),
                            loaded: res.is_ok(),
                            reason: res.err().map(|e| format!("{e:#}")),
                        });
                    }
                }
                Err(e) => probes_status.push(ProbeStatus {
                    probe: format!("{} or {} (socket errors)", SockErrorProbe::TpBtf, SockErrorProbe::Tracepoint),
                    loaded: false,
                    reason: Some(e),
                }),
            }
            // The groups left out are listed above with their own names.
            let groups: Vec<String> = paths.skipped.iter().chain(&applied.skipped).map(|s| s.group.to_string()).collect();
            for (name, why) in probes.unavailable.iter().filter(|(n, _)| !groups.contains(n)) {
                probes_status.push(ProbeStatus { probe: name.clone(), loaded: false, reason: Some(why.clone()) });
            }
            for (path, sel) in [("device path", &selection), ("receive path", &recv_selection)] {
                for (set, why) in sel.iter().flat_map(|s| s.refused.iter()) {
                    probes_status.push(ProbeStatus { probe: format!("{} set ({path})", set.name()), loaded: false, reason: Some(why.clone()) });
                }
            }
        }
    }
    let report = Report {
        kernel_release: system::kernel_release(),
        btf: std::path::Path::new(crate::kernel::btf::VMLINUX_BTF).exists(),
        lockdown: system::lockdown(),
        tracefs_mounted: system::is_mounted(system::TRACEFS, "tracefs"),
        bpffs_mounted: system::is_mounted(system::BPFFS, "bpf"),
        mounted_now,
        probe_set: selection,
        recv_probe_set: recv_selection,
        probes: probes_status,
        socket_destroy: destroy_mechanisms(),
        capabilities: crate::kernel::caps::current(),
        summary: String::new(),
    };
    let report = render::doctor::Report { summary: render::doctor::summary(&report), ..report };
    render::doctor::print(&report, args.json)
}

// ---- socket destroy mechanisms (`abort`) ----

/// Both `abort` mechanisms, tried safely: the kfunc iterator is loaded (not run), and
/// SOCK_DESTROY is sent for a tuple and cookie that match no socket.
fn destroy_mechanisms() -> Vec<ProbeStatus> {
    let kfunc = crate::probes::destroy::probe_kfunc();
    let diag = crate::kernel::sock_diag::probe_destroy();
    vec![
        ProbeStatus {
            probe: "bpf_sock_destroy() from iter/udp, iter/tcp (kfunc in BTF, program loads)".into(),
            loaded: kfunc.is_ok(),
            reason: kfunc.err().map(|e| format!("{e:#}")),
        },
        ProbeStatus {
            probe: "SOCK_DESTROY over NETLINK_SOCK_DIAG (answered ENOENT/ESTALE for a tuple matching nothing)".into(),
            loaded: diag.is_ok(),
            reason: diag.err(),
        },
    ]
}
