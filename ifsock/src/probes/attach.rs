//! Attaching programs: one attach-with-rollback for entry/exit pairs on a kernel function
//! (fentry/fexit, kprobe/kretprobe), the typed record of what is attached, and why the kernel
//! refused a probe, read from the errno it returned.
use std::fmt;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{FEntry, FExit, KProbe, Program, ProgramError},
    Btf, Ebpf,
};
use serde::Serialize;

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
