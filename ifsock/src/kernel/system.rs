//! Privileges, lockdown mode, and the tracefs / bpffs mounts ifsock needs.
use std::{fs, path::Path};

use anyhow::{bail, Context as _, Result};

/// Where tracefs is mounted (classic tracepoints need it).
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Fails unless running as root (ifsock loads BPF programs and reads every task's fd table).
///
/// # Errors
/// Not root, with the fix.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("ifsock needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN): run it with sudo");
    }
    Ok(())
}

/// The active lockdown mode from `/sys/kernel/security/lockdown` (`none`, `integrity`,
/// `confidentiality`), or `None` when the file is absent.
pub fn lockdown() -> Option<String> {
    let text = fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    text.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
}

/// True when `path` is a mount point of filesystem type `fstype` (from /proc/self/mounts).
pub fn is_mounted(path: &str, fstype: &str) -> bool {
    procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map(|mi| mi.into_iter().any(|m| m.mount_point == Path::new(path) && m.fs_type == fstype))
        .unwrap_or(false)
}

/// What [`ensure_mounts`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MountReport {
    /// tracefs was mounted by this call.
    pub mounted_tracefs: bool,
    /// bpffs was mounted by this call.
    pub mounted_bpffs: bool,
}

/// Mounts tracefs at [`TRACEFS`] and bpffs at [`BPFFS`] when they are missing.
///
/// # Errors
/// The mount syscall failed (not root, or the kernel lacks the filesystem).
pub fn ensure_mounts() -> Result<MountReport> {
    use nix::mount::{mount, MsFlags};
    let mut report = MountReport::default();
    if !is_mounted(TRACEFS, "tracefs") {
        mount(Some("nodev"), TRACEFS, Some("tracefs"), MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting tracefs at {TRACEFS} (try: mount -t tracefs nodev {TRACEFS})"))?;
        report.mounted_tracefs = true;
        tracing::info!("mounted tracefs at {TRACEFS}");
    }
    // securityfs holds the lockdown mode; best effort (doctor and refusal reasons name it).
    if !is_mounted("/sys/kernel/security", "securityfs")
        && mount(Some("securityfs"), "/sys/kernel/security", Some("securityfs"), MsFlags::empty(), None::<&str>).is_ok()
    {
        tracing::info!("mounted securityfs at /sys/kernel/security");
    }
    if !is_mounted(BPFFS, "bpf") {
        mount(Some("bpf"), BPFFS, Some("bpf"), MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting bpffs at {BPFFS} (try: mount -t bpf bpf {BPFFS})"))?;
        report.mounted_bpffs = true;
        tracing::info!("mounted bpffs at {BPFFS}");
    }
    Ok(report)
}

/// Kernel release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}
