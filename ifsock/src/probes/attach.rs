//! Attaching programs: one attach-with-rollback for entry/exit pairs on a kernel function
//! (fentry/fexit, kprobe/kretprobe), the typed record of what is attached, why the kernel
//! refused a probe (read from the errno it returned), and the [`Probes`] methods that attach
//! each probe group with its fallback (device path, receive path, link requests, send errors,
//! a whole [`plan::Plan`]).
use std::fmt;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{FEntry, FExit, KProbe, Program, ProgramError, TracePoint},
    Btf, Ebpf,
};
use serde::Serialize;

use super::{load::parsed_btf, plan, select, ProbeSet, Probes, Selection};
use crate::kernel::system;

/// A kind of attach point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// Classic tracepoint (`category:name`, tracefs `events/` id).
    Tracepoint,
    /// BTF-typed raw tracepoint (`tp_btf/<name>`).
    TpBtf,
    /// BTF trampoline at a kernel function's entry.
    Fentry,
    /// BTF trampoline at a kernel function's return.
    Fexit,
    /// kprobe at a kernel function's entry.
    Kprobe,
    /// kretprobe at a kernel function's return.
    Kretprobe,
}

/// One attached program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// Kind of attach point.
    pub kind: ProbeKind,
    /// Where: `category:name` for tracepoints, the tracepoint name for tp_btf, the kernel
    /// function for fentry/fexit/kprobe/kretprobe.
    pub target: String,
    /// Program name in the eBPF object.
    pub program: &'static str,
}

impl fmt::Display for Attached {
    /// `syscalls:sys_enter_read`, `tp_btf:inet_sk_error_report`, `fentry:__skb_recv_udp`,
    /// `kretprobe:__skb_recv_udp` (the strings `doctor` and the banners print).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            ProbeKind::Tracepoint => return f.write_str(&self.target),
            ProbeKind::TpBtf => "tp_btf",
            ProbeKind::Fentry => "fentry",
            ProbeKind::Fexit => "fexit",
            ProbeKind::Kprobe => "kprobe",
            ProbeKind::Kretprobe => "kretprobe",
        };
        write!(f, "{prefix}:{}", self.target)
    }
}

/// Serialised as its [`Display`](fmt::Display) string, as the JSON `probes` lists always were.
impl Serialize for Attached {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A program that attaches to a kernel function by name, as entry or exit.
pub(crate) trait FnProgram
where
    for<'a> &'a mut Self: TryFrom<&'a mut Program, Error = ProgramError>,
{
    /// Handle of one attachment.
    type LinkId;
    /// Loads the program for `function` unless already loaded.
    fn load_for(&mut self, function: &str, btf: &Btf) -> Result<(), ProgramError>;
    /// Attaches it to `function`.
    fn attach_to(&mut self, function: &str) -> Result<Self::LinkId, ProgramError>;
    /// Detaches one attachment.
    fn detach_link(&mut self, id: Self::LinkId) -> Result<(), ProgramError>;
}

/// fentry and fexit load against a BTF function and attach without arguments.
macro_rules! trampoline_program {
    ($ty:ty, $link:ty) => {
        impl FnProgram for $ty {
            type LinkId = $link;
            fn load_for(&mut self, function: &str, btf: &Btf) -> Result<(), ProgramError> {
                if self.fd().is_ok() {
                    return Ok(());
                }
                self.load(function, btf)
            }
            fn attach_to(&mut self, _function: &str) -> Result<Self::LinkId, ProgramError> {
                self.attach()
            }
            fn detach_link(&mut self, id: Self::LinkId) -> Result<(), ProgramError> {
                self.detach(id)
            }
        }
    };
}
trampoline_program!(FEntry, aya::programs::fentry::FEntryLinkId);
trampoline_program!(FExit, aya::programs::fexit::FExitLinkId);

impl FnProgram for KProbe {
    type LinkId = aya::programs::kprobe::KProbeLinkId;
    fn load_for(&mut self, _function: &str, _btf: &Btf) -> Result<(), ProgramError> {
        if self.fd().is_ok() {
            return Ok(());
        }
        self.load()
    }
    fn attach_to(&mut self, function: &str) -> Result<Self::LinkId, ProgramError> {
        self.attach(function, 0)
    }
    fn detach_link(&mut self, id: Self::LinkId) -> Result<(), ProgramError> {
        self.detach(id)
    }
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    for<'b> &'b mut P: TryFrom<&'b mut Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    Ok(prog.try_into()?)
}

/// An entry program and, optionally, the exit program that must run with it.
pub(crate) struct Pair {
    /// Entry program name and kind.
    pub entry: (&'static str, ProbeKind),
    /// Exit program name and kind.
    pub exit: Option<(&'static str, ProbeKind)>,
}

/// Attaches `pair` to `function`: the entry first, then the exit. When the exit fails the entry
/// is detached again, so an entry never runs without its exit (an in-flight record nobody
/// removes). Returns what was attached, exit first.
///
/// # Errors
/// Loading or attaching either program failed; the chain holds the kernel's errno.
pub(crate) fn attach_pair<En, Ex>(ebpf: &mut Ebpf, btf: &Btf, pair: &Pair, function: &str) -> Result<Vec<Attached>>
where
    En: FnProgram,
    Ex: FnProgram,
    for<'a> &'a mut En: TryFrom<&'a mut Program, Error = ProgramError>,
    for<'a> &'a mut Ex: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let (entry, entry_kind) = pair.entry;
    let prog = program::<En>(ebpf, entry)?;
    prog.load_for(function, btf).with_context(|| format!("loading {entry_kind:?} {entry} for {function}"))?;
    let link = prog.attach_to(function).with_context(|| format!("attaching {entry_kind:?} {entry} to {function}"))?;
    let mut done = Vec::new();
    if let Some((exit, exit_kind)) = pair.exit {
        let attached = program::<Ex>(ebpf, exit).and_then(|p| {
            p.load_for(function, btf).with_context(|| format!("loading {exit_kind:?} {exit} for {function}"))?;
            p.attach_to(function).with_context(|| format!("attaching {exit_kind:?} {exit} to {function}"))?;
            Ok(())
        });
        if let Err(e) = attached {
            if let Err(d) = program::<En>(ebpf, entry).and_then(|p| Ok(p.detach_link(link)?)) {
                tracing::warn!("detaching {entry} from {function} after its exit program failed: {d:#}");
            }
            return Err(e);
        }
        done.push(Attached { kind: exit_kind, target: function.to_string(), program: exit });
    }
    done.push(Attached { kind: entry_kind, target: function.to_string(), program: entry });
    Ok(done)
}

/// The errno behind a failed load or attach: the first `std::io::Error` in the chain, as aya
/// wraps it (`ProgramError::LoadError { io_error }`, `SyscallError { io_error }`, tracefs
/// `FileError`s).
pub fn errno(e: &anyhow::Error) -> Option<i32> {
    e.chain().find_map(|c| {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        match c.downcast_ref::<ProgramError>()? {
            ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
            ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
            _ => None,
        }
    })
}

/// The kprobe PMU's type file: present when `perf_event_open` can create kprobes.
pub(crate) const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Whether aya can attach a kprobe at all: through the kprobe PMU or, without it, through
/// tracefs `kprobe_events` (its legacy path). Neither: every kprobe attach fails with ENOENT.
pub(crate) fn kprobes_attachable() -> bool {
    super::exists(KPROBE_PMU) || super::exists(&format!("{}/kprobe_events", system::TRACEFS))
}

/// Kernel-internal `ENOTSUPP` (include/linux/errno.h), returned to userspace by some BPF paths.
const ENOTSUPP: i32 = 524;

/// A short reason for a refused probe, from its errno: `EPERM (lockdown=integrity)`,
/// `ENOENT (no kprobe PMU: …)`, `ENOTSUPP`; the first line of the message when no errno is
/// in the chain (a program missing from the object, a format check).
pub fn refusal(e: &anyhow::Error) -> String {
    let lockdown = system::lockdown();
    let kprobe_pmu = super::exists(KPROBE_PMU);
    refusal_of(errno(e), lockdown.as_deref(), kprobe_pmu).unwrap_or_else(|| {
        format!("{e:#}").lines().next().unwrap_or("refused").to_string()
    })
}

/// [`refusal`] from its inputs: the errno, the lockdown mode
/// (`/sys/kernel/security/lockdown`) and whether the kprobe PMU exists.
fn refusal_of(errno: Option<i32>, lockdown: Option<&str>, kprobe_pmu: bool) -> Option<String> {
    let name = match errno? {
        ENOTSUPP | libc::EOPNOTSUPP => "ENOTSUPP".to_string(),
        n => match nix::errno::Errno::from_raw(n) {
            nix::errno::Errno::UnknownErrno => format!("errno {n}"),
            _ => crate::model::sys::errno_name(n),
        },
    };
    Some(match (name.as_str(), lockdown) {
        ("EPERM", Some(l)) if l != "none" => format!("EPERM (lockdown={l})"),
        ("ENOENT", _) if !kprobe_pmu => "ENOENT (no kprobe PMU: /sys/bus/event_source/devices/kprobe/type missing)".to_string(),
        _ => name,
    })
}

/// A kernel function to probe: BTF names to try (newest first) and the programs per set.
struct FnTarget {
    what: &'static str,
    candidates: &'static [&'static str],
    fentry: Pair,
    kprobe: Pair,
}

const fn fentry(entry: &'static str, exit: Option<&'static str>) -> Pair {
    Pair {
        entry: (entry, ProbeKind::Fentry),
        exit: match exit {
            Some(x) => Some((x, ProbeKind::Fexit)),
            None => None,
        },
    }
}

const fn kprobe(entry: &'static str, exit: Option<&'static str>) -> Pair {
    Pair {
        entry: (entry, ProbeKind::Kprobe),
        exit: match exit {
            Some(x) => Some((x, ProbeKind::Kretprobe)),
            None => None,
        },
    }
}

impl Probes {
    /// Attaches a tracepoint program to `category:name`. Several attachments of one program are fine.
    ///
    /// # Errors
    /// The tracepoint does not exist on this kernel, or the program was refused.
    pub fn attach_tracepoint(&mut self, program: &'static str, category: &str, name: &str) -> Result<()> {
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().with_context(|| format!("loading {program}"))?;
        }
        prog.attach(category, name).with_context(|| format!("attaching {program} to {category}:{name}"))?;
        self.attached.push(Attached { kind: ProbeKind::Tracepoint, target: format!("{category}:{name}"), program });
        Ok(())
    }

    /// Attaches the device-path probes (close and unregister), each with its own fallback:
    /// fentry, then kprobe (unless `forced` names one set). Target functions are resolved from
    /// the running kernel's BTF, not from its version. Returns the set in use and, for every
    /// better set, why it was refused.
    ///
    /// # Errors
    /// A forced set that this kernel refuses.
    pub fn attach_device(&mut self, forced: Option<ProbeSet>) -> Result<Selection> {
        let targets = [
            FnTarget {
                what: "close",
                candidates: &["netif_close_many", "dev_close_many", "__dev_close_many"],
                fentry: fentry("dev_fentry_close_many", None),
                kprobe: kprobe("dev_kprobe_close_many", None),
            },
            FnTarget {
                what: "unregister",
                candidates: &["unregister_netdevice_queue"],
                fentry: fentry("dev_fentry_unregister", None),
                kprobe: kprobe("dev_kprobe_unregister", None),
            },
        ];
        let (selection, _) = self.attach_functions(&targets, forced)?;
        tracing::info!("device path: {selection}");
        Ok(selection)
    }

    /// Attaches receive tracking, each function with its own fallback (fentry/fexit, then
    /// kprobe/kretprobe) on `__skb_recv_udp`, `__skb_recv_datagram` and
    /// `__skb_wait_for_more_packets`. When any of them cannot be probed (or `forced` is
    /// [`ProbeSet::Tracepoint`]) the tracepoint set is attached too:
    /// `syscalls:sys_{enter,exit}_{recvmsg,recvfrom,recvmmsg,read}`.
    ///
    /// # Errors
    /// A forced set this kernel refuses, or a syscall tracepoint that cannot attach.
    pub fn attach_recv(&mut self, forced: Option<ProbeSet>) -> Result<Selection> {
        let targets = [
            FnTarget {
                what: "UDP receive",
                candidates: &["__skb_recv_udp"],
                fentry: fentry("recv_fentry_udp", Some("recv_fexit_udp")),
                kprobe: kprobe("recv_kprobe_udp", Some("recv_kretprobe_func")),
            },
            FnTarget {
                what: "datagram receive",
                candidates: &["__skb_recv_datagram"],
                fentry: fentry("recv_fentry_dgram", Some("recv_fexit_dgram")),
                kprobe: kprobe("recv_kprobe_dgram", Some("recv_kretprobe_func")),
            },
            FnTarget {
                what: "datagram wait",
                candidates: &["__skb_wait_for_more_packets"],
                fentry: fentry("recv_fentry_wait", Some("recv_fexit_wait")),
                kprobe: kprobe("recv_kprobe_wait", Some("recv_kretprobe_wait")),
            },
        ];
        let (selection, all_covered) = self.attach_functions(&targets, forced)?;
        if !all_covered {
            for sc in ["recvmsg", "recvfrom", "recvmmsg", "read"] {
                self.attach_tracepoint("recv_exit", "syscalls", &format!("sys_exit_{sc}"))?;
                let enter = if sc == "read" { "recv_enter_read" } else { "recv_enter" };
                self.attach_tracepoint(enter, "syscalls", &format!("sys_enter_{sc}"))?;
            }
        }
        tracing::info!("receive path: {selection}");
        Ok(selection)
    }

    /// Attaches each target with its own fallback (fentry, then kprobe, unless `forced`).
    /// Returns the selection (the weakest set in use, with why each better one was refused)
    /// and whether every target got a kernel-function probe.
    ///
    /// # Errors
    /// `forced` names fentry or kprobe and some target could not be attached with it.
    fn attach_functions(&mut self, targets: &[FnTarget], forced: Option<ProbeSet>) -> Result<(Selection, bool)> {
        let kbtf = crate::kernel::btf::KernelBtf::load(&[])?;
        let mut fentry_err: Option<String> = None;
        let mut kprobe_err: Option<String> = None;
        let mut outcomes = Vec::new();
        for t in targets {
            let Some(function) = t.candidates.iter().copied().find(|f| kbtf.has_function(f)) else {
                let why = format!("no {} function ({}) in this kernel's BTF", t.what, t.candidates.join("/"));
                fentry_err.get_or_insert(why.clone());
                kprobe_err.get_or_insert(why);
                self.unavailable.push((t.candidates.join("/"), "not in BTF".into()));
                outcomes.push(None);
                continue;
            };
            if forced.is_none() || forced == Some(ProbeSet::Fentry) {
                match self.attach_fentry_pair(&t.fentry, function) {
                    Ok(()) => {
                        outcomes.push(Some(ProbeSet::Fentry));
                        continue;
                    }
                    Err(e) => {
                        fentry_err.get_or_insert(refusal(&e));
                    }
                }
            }
            if forced.is_none() || forced == Some(ProbeSet::Kprobe) {
                match self.attach_kprobe_pair(&t.kprobe, function) {
                    Ok(()) => {
                        outcomes.push(Some(ProbeSet::Kprobe));
                        continue;
                    }
                    Err(e) => {
                        kprobe_err.get_or_insert(refusal(&e));
                    }
                }
            }
            outcomes.push(None);
        }
        let uncovered = outcomes.iter().any(Option::is_none);
        if let Some(set @ (ProbeSet::Fentry | ProbeSet::Kprobe)) = forced {
            if uncovered {
                let why = if set == ProbeSet::Fentry { fentry_err } else { kprobe_err };
                return Err(anyhow!("probe set {} was forced but this kernel refuses it: {}", set.name(), why.unwrap_or_default()));
            }
        }
        let caps = select::combine(&outcomes, fentry_err, kprobe_err);
        let selection = select::select(&caps, forced).map_err(anyhow::Error::msg)?;
        Ok((selection, !uncovered))
    }

    fn attach_fentry_pair(&mut self, pair: &Pair, function: &str) -> Result<()> {
        let done = attach_pair::<FEntry, FExit>(&mut self.ebpf, parsed_btf(&mut self.btf)?, pair, function)?;
        self.attached.extend(done);
        Ok(())
    }

    fn attach_kprobe_pair(&mut self, pair: &Pair, function: &str) -> Result<()> {
        // Where the attach must fail, the program is not loaded first: verifying
        // `dev_kprobe_close_many` alone was ~0.45 s of `watch`'s start-up on 6.18 (410,299
        // instructions), only to be refused.
        if !kprobes_attachable() {
            let why = format!("kprobe {} for {function}: no kprobe PMU ({}) and no {}/kprobe_events; not loaded", pair.entry.0, KPROBE_PMU, system::TRACEFS);
            return Err(anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT)).context(why));
        }
        let done = attach_pair::<KProbe, KProbe>(&mut self.ebpf, parsed_btf(&mut self.btf)?, pair, function)?;
        self.attached.extend(done);
        Ok(())
    }

    /// Attaches the syscall tracepoints that name the task behind a link change
    /// (`sys_enter_sendmsg`, `sys_enter_sendto` for netlink, `sys_enter_ioctl` for SIOCSIFFLAGS).
    pub fn attach_link_requests(&mut self) -> Result<()> {
        self.attach_tracepoint("link_enter_sendmsg", "syscalls", "sys_enter_sendmsg")?;
        self.attach_tracepoint("link_enter_sendto", "syscalls", "sys_enter_sendto")?;
        self.attach_tracepoint("link_enter_ioctl", "syscalls", "sys_enter_ioctl")
    }

    /// Attaches the link-request probes inside the kernel: the rtnetlink link handlers
    /// (`rtnl_newlink`, `rtnl_dellink`, `rtnl_setlink`) and `dev_ioctl`, each fentry, else
    /// kprobe. They run only on link requests, unlike the syscall tracepoints of
    /// [`Probes::attach_link_requests`], which run on every `sendmsg`/`sendto`/`ioctl`.
    ///
    /// # Errors
    /// Some handler could be probed by neither set (lockdown, no kprobes, not in BTF); the
    /// handlers already attached stay (they cost nothing between requests).
    pub fn attach_link_request_handlers(&mut self) -> Result<Selection> {
        let targets = [
            FnTarget { what: "rtnetlink newlink", candidates: &["rtnl_newlink"], fentry: fentry("link_fentry_newlink", None), kprobe: kprobe("link_kprobe_rtnl", None) },
            FnTarget { what: "rtnetlink dellink", candidates: &["rtnl_dellink"], fentry: fentry("link_fentry_dellink", None), kprobe: kprobe("link_kprobe_rtnl", None) },
            FnTarget { what: "rtnetlink setlink", candidates: &["rtnl_setlink"], fentry: fentry("link_fentry_setlink", None), kprobe: kprobe("link_kprobe_rtnl", None) },
            FnTarget { what: "device ioctl", candidates: &["dev_ioctl"], fentry: fentry("link_fentry_dev_ioctl", None), kprobe: kprobe("link_kprobe_dev_ioctl", None) },
        ];
        let (selection, all_covered) = self.attach_functions(&targets, None)?;
        if !all_covered {
            let why: Vec<String> = selection.refused.iter().map(|(set, why)| format!("{}: {why}", set.name())).collect();
            return Err(anyhow!("the link-request handlers cannot be probed with fentry or kprobe ({})", why.join("; ")));
        }
        tracing::info!("link-request handlers: {selection}");
        Ok(selection)
    }

    /// Attaches send-error tracking (`sys_enter/exit_{sendto,sendmsg}`).
    pub fn attach_send_errors(&mut self) -> Result<()> {
        for sc in ["sendto", "sendmsg"] {
            self.attach_tracepoint("send_exit", "syscalls", &format!("sys_exit_{sc}"))?;
            self.attach_tracepoint("send_enter", "syscalls", &format!("sys_enter_{sc}"))?;
        }
        Ok(())
    }

    /// Attaches the groups of `plan` in order with the one warn-or-fail policy of
    /// [`plan::apply`]: a required or forced group that fails is an error; an optional one is
    /// warned about once and recorded in [`Probes::unavailable`].
    ///
    /// # Errors
    /// A required or forced group failed (the chain holds the kernel's reason).
    pub fn apply(&mut self, plan: &plan::Plan, forced: plan::Forced) -> Result<plan::Applied> {
        use plan::{Group, Outcome};
        let applied = plan::apply(plan, forced, |group| match group {
            Group::Device => self.attach_device(forced.probe_set).map(Outcome::Selection),
            Group::Recv => self.attach_recv(forced.probe_set).map(Outcome::Selection),
            Group::LinkRequests => self.attach_link_requests().map(|()| Outcome::Done),
            Group::LinkRequestHandlers => self.attach_link_request_handlers().map(|_| Outcome::Done),
            Group::SendErrors => self.attach_send_errors().map(|()| Outcome::Done),
            Group::SockErrors => self.attach_sock_errors_with(forced.sock_error_probe).map(Outcome::SockErrors),
            Group::Iterators => self.load_iterators().map(|()| Outcome::Done),
        })?;
        for s in &applied.skipped {
            self.unavailable.push((s.group.to_string(), s.reason.clone()));
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_probes_print_as_the_banner_strings() {
        let a = |kind, target: &str| Attached { kind, target: target.into(), program: "p" }.to_string();
        assert_eq!(a(ProbeKind::Tracepoint, "syscalls:sys_enter_read"), "syscalls:sys_enter_read");
        assert_eq!(a(ProbeKind::TpBtf, "inet_sk_error_report"), "tp_btf:inet_sk_error_report");
        assert_eq!(a(ProbeKind::Fexit, "__skb_recv_udp"), "fexit:__skb_recv_udp");
        assert_eq!(a(ProbeKind::Kretprobe, "__skb_recv_udp"), "kretprobe:__skb_recv_udp");
        let json = serde_json::to_string(&[Attached { kind: ProbeKind::Fentry, target: "f".into(), program: "p" }]).unwrap();
        assert_eq!(json, r#"["fentry:f"]"#);
    }

    #[test]
    fn refusals_come_from_the_errno_not_the_message() {
        assert_eq!(refusal_of(Some(libc::EPERM), Some("integrity"), true).as_deref(), Some("EPERM (lockdown=integrity)"));
        assert_eq!(refusal_of(Some(libc::EPERM), Some("none"), true).as_deref(), Some("EPERM"));
        assert!(refusal_of(Some(libc::ENOENT), None, false).unwrap().contains("no kprobe PMU"));
        assert_eq!(refusal_of(Some(libc::ENOENT), None, true).as_deref(), Some("ENOENT"));
        assert_eq!(refusal_of(Some(524), None, true).as_deref(), Some("ENOTSUPP"));
        assert_eq!(refusal_of(Some(libc::E2BIG), None, true).as_deref(), Some("E2BIG"));
        assert_eq!(refusal_of(None, Some("integrity"), false), None);
        // An errno wrapped the way aya wraps it, under anyhow context, is found.
        let io = std::io::Error::from_raw_os_error(libc::EPERM);
        let e = anyhow::Error::from(ProgramError::SyscallError(aya::sys::SyscallError { call: "bpf_link_create", io_error: io }))
            .context("attaching fentry on f");
        assert_eq!(errno(&e), Some(libc::EPERM));
        assert_eq!(errno(&anyhow!("Operation not permitted")), None, "message text is not sniffed");
    }
}
