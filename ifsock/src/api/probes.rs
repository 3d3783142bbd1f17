//! [`Probes`] (feature `probes`): the privileged part, every socket of the netns from BPF
//! iterators, judged as [`SocketHealth`](super::SocketHealth) judges the caller's own.
use std::net::SocketAddr;

use serde::Serialize;

use super::Health;
use crate::{
    kernel::{caps, netlink, system},
    model::stranded::health,
    probes::snapshot,
};

/// Capabilities the eBPF object needs (bits and costs in [`crate::kernel::caps::USED`]):
/// loading programs and iterators (`CAP_BPF`, >= 5.8), reading kernel memory from them
/// (`CAP_PERFMON`), the socket iterators' netns (`CAP_NET_ADMIN`), and `setns`/mounting
/// bpffs and tracefs (`CAP_SYS_ADMIN`).
const NEEDED: [&str; 4] = ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"];

/// Why [`Probes::load`] failed; each names what is missing and how to get it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbesError {
    /// The process lacks capabilities the eBPF object needs (from `CapEff` in
    /// `/proc/self/status`), and ifsock loads only as root.
    #[error("missing capabilities: {} (run as root with them, e.g. sudo; the LinkWatcher and SocketHealth need none)", missing.join(", "))]
    MissingCapability {
        /// Their names (`CAP_BPF`, `CAP_PERFMON`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN`).
        missing: Vec<&'static str>,
    },
    /// Kernel lockdown (`/sys/kernel/security/lockdown`) in `confidentiality` mode forbids BPF
    /// reads of kernel memory, which every iterator program makes.
    #[error("kernel lockdown is {0}: BPF programs may not read kernel memory (boot with lockdown=integrity or none)")]
    Lockdown(String),
    /// The kernel refused the object or an iterator (no BTF, a verifier error…); the message
    /// says which.
    #[error("loading ifsock's eBPF object: {0}")]
    Load(String),
    /// The rtnetlink dump the judgement needs failed.
    #[error("rtnetlink: {0}")]
    Netlink(String),
}

/// One socket of the netns as the iterators saw it, with its health, serialised as
/// `{protocol, local, remote, inode, cookie, bound_dev_if, owners, health}`.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SocketSnapshot {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Local address and port (a v4-mapped IPv6 address shown as IPv4).
    pub local: SocketAddr,
    /// Remote address and port (unspecified, port 0, when not connected).
    pub remote: SocketAddr,
    /// Socket inode (`socket:[N]`; 0 for TCP mini sockets).
    pub inode: u64,
    /// Socket cookie (`SO_COOKIE`, `ss -e`'s `sk:` in hex).
    pub cookie: u64,
    /// `sk_bound_dev_if`, 0 when not bound to a device.
    pub bound_dev_if: u32,
    /// Processes holding it: `(pid, comm, fd)`.
    pub owners: Vec<(u32, String, u32)>,
    /// Its health now.
    pub health: Health,
}

/// The loaded eBPF object: snapshots of every socket, which the unprivileged API cannot see.
/// Needs root with the capabilities [`ProbesError::MissingCapability`] lists, BTF
/// (`/sys/kernel/btf/vmlinux`), and BPF iterators (Linux >= 5.9).
pub struct Probes {
    inner: crate::probes::Probes,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

impl Probes {
    /// Checks capabilities and lockdown, then loads the object (mounting bpffs and tracefs
    /// when missing). Takes a few ms; load once.
    ///
    /// # Errors
    /// [`ProbesError::MissingCapability`] naming each missing capability,
    /// [`ProbesError::Lockdown`] under `lockdown=confidentiality`, [`ProbesError::Load`] when
    /// the kernel refuses the object.
    pub fn load() -> Result<Self, ProbesError> {
        let eff = std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(caps::effective_of).unwrap_or(0);
        let held = caps::statuses(eff);
        let mut missing: Vec<&'static str> =
            NEEDED.into_iter().filter(|n| held.iter().any(|c| c.name == *n && !c.held)).collect();
        if missing.is_empty() && !nix::unistd::geteuid().is_root() {
            missing.push("uid 0");
        }
        if !missing.is_empty() {
            return Err(ProbesError::MissingCapability { missing });
        }
        if let Some(mode) = system::lockdown().filter(|m| m == "confidentiality") {
            return Err(ProbesError::Lockdown(mode));
        }
        let inner = crate::probes::Probes::load_for_snapshots().map_err(|e| ProbesError::Load(format!("{e:#}")))?;
        Ok(Probes { inner })
    }

    /// Every TCP and UDP socket of the current netns with owners and health: the iterators'
    /// snapshot, then a link dump (in that order, as `ifsock sockets` does: a socket whose
    /// address went after the snapshot is judged stranded, not missed).
    ///
    /// # Errors
    /// [`ProbesError::Load`] when an iterator fails, [`ProbesError::Netlink`] when the dump does.
    pub async fn sockets(&mut self) -> Result<Vec<SocketSnapshot>, ProbesError> {
        let sockets = snapshot::sockets(&mut self.inner, None).map_err(|e| ProbesError::Load(format!("{e:#}")))?;
        let rtnl = netlink::connect().map_err(|e| ProbesError::Netlink(format!("{e:#}")))?;
        let dump = netlink::dump(&rtnl).await.map_err(|e| ProbesError::Netlink(format!("{e:#}")))?;
        Ok(sockets
            .iter()
            .map(|s| SocketSnapshot {
                protocol: s.protocol.name(),
                local: SocketAddr::new(s.local_addr, s.local_port),
                remote: SocketAddr::new(s.remote_addr, s.remote_port),
                inode: s.inode.0,
                cookie: s.cookie,
                bound_dev_if: s.bound_dev_if,
                owners: s.owners.iter().map(|o| (o.pid, o.comm.to_string(), o.fd)).collect(),
                health: super::health::health_of(health(s, &dump.links, &dump.addrs, &[]).as_ref()),
            })
            .collect())
    }
}
